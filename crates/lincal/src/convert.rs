//! `lincal convert` (models from other formats) and `lincal recover` (the reference's models
//! from their published weight diffs).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ConvertFormat {
    /// llama.cpp GGUF (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) to safetensors, config and
    /// tokenizer.
    Gguf {
        input: PathBuf,
        output: PathBuf,
        /// Precision of the written weights.
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
        dtype: String,
    },
}

pub fn convert(format: ConvertFormat) -> Result<()> {
    let ConvertFormat::Gguf {
        input,
        output,
        dtype,
    } = format;
    let dtype = match dtype.as_str() {
        "f16" => lincal_gguf::OutputDtype::F16,
        "bf16" => lincal_gguf::OutputDtype::BF16,
        _ => lincal_gguf::OutputDtype::F32,
    };
    let summary = lincal_gguf::convert_to_hf(&input, &output, dtype)?;
    let types: Vec<String> = summary
        .quant_types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    println!(
        "{}: {} tensors ({}), {} parameters -> {}",
        input.display(),
        summary.tensors,
        types.join(", "),
        summary.parameters,
        output.display()
    );
    Ok(())
}

/// `lincal recover`: tuned weights from a weight diff and its base model (SPEC section 7).
#[derive(Args)]
pub struct RecoverArgs {
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
}

pub fn recover(args: RecoverArgs) -> Result<()> {
    let RecoverArgs {
        base,
        diff,
        out,
        skip_sum_check,
    } = args;
    let report = lincal_model::recover::recover(&base, &diff, &out, !skip_sum_check)
        .with_context(|| format!("recovering {}", diff.display()))?;
    println!(
        "{} tensors: {} base added, {} kept as stored ({})",
        report.tensors,
        report.added,
        report.kept.len(),
        report.kept.join(", ")
    );
    match report.expected_sum {
        Some(expected) => println!(
            "parameter sum {} (expected {expected})",
            report.parameter_sum
        ),
        None => println!(
            "parameter sum {} (no {} to check against)",
            report.parameter_sum,
            lincal_model::recover::SUM_FILE
        ),
    }
    println!("wrote {}", out.display());
    Ok(())
}
