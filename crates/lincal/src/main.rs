//! The `lincal` command line: argument parsing only; the commands live in the `lincal` library.

use anyhow::{Context, Result};
use lincal::{bench, data, distill, eval, generate, ppo, train};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
        format: ConvertFormat,
    },
    /// Rebuild tuned weights from a published weight diff and its base model (SPEC section 7).
    Recover {
        /// The base model directory (Llama-2-7b-hf for the reference's models).
        #[arg(long)]
        base: PathBuf,
        /// The weight-diff directory (with model_sum.txt).
        #[arg(long)]
        diff: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Recover even without a matching model_sum.txt (the sum is still printed).
        #[arg(long)]
        skip_sum_check: bool,
    },
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

#[derive(Subcommand)]
enum ConvertFormat {
    /// llama.cpp GGUF (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) to safetensors, config and tokenizer.
    Gguf {
        input: PathBuf,
        output: PathBuf,
        /// Precision of the written weights.
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
        dtype: String,
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
        Command::Convert { format: ConvertFormat::Gguf { input, output, dtype } } => {
            let dtype = match dtype.as_str() {
                "f16" => lincal_model::gguf::OutputDtype::F16,
                "bf16" => lincal_model::gguf::OutputDtype::BF16,
                _ => lincal_model::gguf::OutputDtype::F32,
            };
            let summary = lincal_model::gguf::convert_to_hf(&input, &output, dtype)?;
            let types: Vec<String> = summary.quant_types.iter().map(|(t, n)| format!("{n} {t}")).collect();
            println!("{}: {} tensors ({}), {} parameters -> {}", input.display(), summary.tensors, types.join(", "), summary.parameters, output.display());
            Ok(())
        }
        Command::Recover { base, diff, out, skip_sum_check } => {
            let report = lincal_model::recover::recover(&base, &diff, &out, !skip_sum_check).with_context(|| format!("recovering {}", diff.display()))?;
            println!("{} tensors: {} base added, {} kept as stored ({})", report.tensors, report.added, report.kept.len(), report.kept.join(", "));
            match report.expected_sum {
                Some(expected) => println!("parameter sum {} (expected {expected})", report.parameter_sum),
                None => println!("parameter sum {} (no {} to check against)", report.parameter_sum, lincal_model::recover::SUM_FILE),
            }
            println!("wrote {}", out.display());
            Ok(())
        }
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
