//! The command tree of `lincal`: `main.rs` parses it, and the pipeline runner dispatches its
//! stages through the same [`run`], so a stage does exactly what its command line does.

use crate::{
    bench, convert, data, distill, eval, generate, launch, pipeline, ppo, select, serve, train,
};
use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lincal",
    version,
    about = "Linguistically calibrated language models: train, generate, evaluate"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Convert a model from another format into a Hugging Face directory.
    Convert {
        #[command(subcommand)]
        format: convert::ConvertFormat,
    },
    /// Rebuild tuned weights from a published weight diff and its base model (SPEC section 7).
    Recover(convert::RecoverArgs),
    /// Generate text with a local model: one prompt streamed, or a JSONL file in batches.
    Generate(generate::GenerateArgs),
    /// Supervised fine-tuning (presets: lc_sft, factuality_sft, claude_distill, extract_answers).
    Sft(train::TrainArgs),
    /// Train a reward model (presets: forecast_probs, factuality).
    RewardModel(train::TrainArgs),
    /// Score texts with a reward model.
    Score(train::ScoreArgs),
    /// PPO: decision-based RL (preset lc_ppo) or Factuality RL (factuality_ppo).
    Ppo(ppo::PpoArgs),
    /// GRPO or RLOO, critic-free, on the same rewards (presets lc_grpo, factuality_grpo;
    /// `baseline = "grpo" | "dr_grpo" | "rloo"`).
    Grpo(ppo::PpoArgs),
    /// Run `sft` or `reward-model` data-parallel: one process per GPU over NCCL, rank 0
    /// writing the run (`lincal launch --gpus 8 -- sft ...`).
    Launch(launch::LaunchArgs),
    /// Checkpoint selection: evaluate the PPO snapshots with the best validation reward with a
    /// chosen reader and export the best.
    Select(Box<select::SelectArgs>),
    /// Teacher pipelines of the SFT data: open-ended queries, base-model samples, summaries.
    Distill {
        #[command(subcommand)]
        what: distill::DistillCommand,
    },
    /// Reader training labels from paragraphs: extracted answers, forecasts, 0/1 correctness.
    Label {
        #[command(subcommand)]
        what: distill::LabelCommand,
    },
    /// Question sources: fetch their pinned packages and build QA JSONL.
    Data {
        #[command(subcommand)]
        what: data::DataCommand,
    },
    /// Prompt templates.
    Prompts {
        #[command(subcommand)]
        what: data::PromptsCommand,
    },
    /// Evaluate calibration.
    Eval {
        #[command(subcommand)]
        what: eval::EvalCommand,
    },
    /// The whole pipeline as one run: init a config from a preset, run it, show its status.
    Pipeline {
        #[command(subcommand)]
        what: pipeline::PipelineCommand,
    },
    /// Serve a model over OpenAI's and Anthropic's HTTP APIs, with continuous batching.
    Serve(serve::ServeArgs),
    /// Measure speed.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Convert { format } => convert::convert(format),
        Command::Recover(args) => convert::recover(args),
        Command::Generate(args) => generate::run(args),
        Command::Sft(args) => train::sft(args),
        Command::RewardModel(args) => train::reward_model(args),
        Command::Score(args) => train::score(args),
        Command::Ppo(args) => ppo::run(args),
        Command::Grpo(args) => ppo::grpo(args),
        Command::Launch(args) => launch::run(args),
        Command::Select(args) => select::run(*args),
        Command::Distill { what } => distill::run_distill(what),
        Command::Label { what } => distill::run_label(what),
        Command::Data { what } => data::run_data(what),
        Command::Prompts { what } => data::run_prompts(what),
        Command::Eval { what } => eval::run(what),
        Command::Pipeline { what } => pipeline::run(what),
        Command::Serve(args) => serve::run(args),
        Command::Bench { what } => bench::run(what),
    }
}
