//! The `lincal` command line: argument parsing only; the commands live in the `lincal` library.

use anyhow::Result;
use lincal::{bench, convert, data, distill, eval, generate, ppo, train};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lincal", version, about = "Linguistically calibrated language models: train, generate, evaluate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Measure speed.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

fn main() {
    if let Err(error) = run(Cli::parse()) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Convert { format } => convert::convert(format),
        Command::Recover(args) => convert::recover(args),
        Command::Generate(args) => generate::run(args),
        Command::Sft(args) => train::sft(args),
        Command::RewardModel(args) => train::reward_model(args),
        Command::Score(args) => train::score(args),
        Command::Ppo(args) => ppo::run(args),
        Command::Distill { what } => distill::run_distill(what),
        Command::Label { what } => distill::run_label(what),
        Command::Data { what } => data::run_data(what),
        Command::Prompts { what } => data::run_prompts(what),
        Command::Eval { what } => eval::run(what),
        Command::Bench { what } => bench::run(what),
    }
}
