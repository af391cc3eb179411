//! `lincal eval ...`: calibration metrics and reports.

use anyhow::{Context, Result};
use clap::Subcommand;
use lincal_metrics::{BootstrapConfig, Binning, ReportConfig, compute_report, read_predictions_jsonl, write_reliability_diagram};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// All calibration metrics with bootstrap CIs from a predictions JSONL (`confidence` in
    /// [0, 1] or null for methods without confidence, `correct` true/false or 1/0).
    Metrics {
        predictions: PathBuf,
        /// 20 for QA, 40 for per-claim (biography) evaluation, as in the paper.
        #[arg(long, default_value_t = 20)]
        bins: usize,
        /// mass: equal-count bins dropping the N mod bins most confident (the reference);
        /// mass-all: equal-count bins keeping every example; width: equal-width bins.
        #[arg(long, default_value = "mass", value_parser = ["mass", "mass-all", "width"])]
        binning: String,
        #[arg(long, default_value_t = 10_000)]
        resamples: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory for metrics.json and the reliability diagram (default: beside the input).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Metrics { predictions, bins, binning, resamples, seed, out } => {
            let binning = match binning.as_str() {
                "mass-all" => Binning::EqualMassKeepAll,
                "width" => Binning::EqualWidth,
                _ => Binning::EqualMass,
            };
            let records = read_predictions_jsonl(&predictions)?;
            let config = ReportConfig { bins, binning, bootstrap: BootstrapConfig { resamples, seed, ..Default::default() } };
            let report = compute_report(&records, &config)?;
            println!("{}", report.to_table());
            let out = out.unwrap_or_else(|| predictions.parent().map(PathBuf::from).unwrap_or_default());
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let json_path = out.join("metrics.json");
            let tmp = out.join("metrics.json.tmp");
            std::fs::write(&tmp, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &json_path).with_context(|| format!("writing {}", json_path.display()))?;
            let title = format!("Reliability: {}", predictions.file_name().and_then(|n| n.to_str()).unwrap_or("predictions"));
            let plots = write_reliability_diagram(&report.reliability_bins, &title, &out.join("reliability"))?;
            println!("wrote {}, {} and {}", json_path.display(), plots.png.display(), plots.svg.display());
            Ok(())
        }
    }
}
