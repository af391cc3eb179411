//! `lincal select`: checkpoint selection among a PPO run's snapshots, as the paper chose its
//! LC RL model: the snapshots with the best validation reward (the surrogate reader's, logged
//! during training) are evaluated again with a chosen reader, and the best of them by a
//! proper scoring rule is exported with a report of every candidate.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use lincal_eval::RunResults;
use lincal_train::run::{Snapshot, snapshots};
use serde::{Deserialize, Serialize};

use crate::eval::{PolicyArgs, QaSetup, run_qa};

pub const SELECTION_JSON_FILE: &str = "selection.json";
pub const SELECTION_MD_FILE: &str = "selection.md";

#[derive(Args)]
pub struct SelectArgs {
    /// A PPO run directory whose `snapshots/` hold weights-only policies (PPO's
    /// `snapshot_every` and `save_after`).
    run_dir: PathBuf,
    /// How many snapshots to evaluate: those with the best validation reward.
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// What picks the winner among them on the evaluation (lower is better except accuracy).
    #[arg(long, value_enum, default_value_t = SelectBy::Brier)]
    by: SelectBy,
    /// Where the winning snapshot is copied (a Hugging Face model directory).
    #[arg(long)]
    export: PathBuf,
    /// The evaluation of each candidate: the questions (a validation split), reader, judge and
    /// settings of `lincal eval qa`. Its --out is the selection's folder: one run folder per
    /// candidate (`step-N/`), selection.json and selection.md.
    #[command(flatten)]
    setup: QaSetup,
}

/// The metric that picks the winner. Brier and log loss are proper scoring rules, as the LC
/// reward is (its log term), so they reward calibration and accuracy together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectBy {
    Brier,
    LogLoss,
    Ece,
    Accuracy,
}

impl SelectBy {
    fn value(self, results: &RunResults) -> f64 {
        let m = &results.metrics;
        match self {
            SelectBy::Brier => m.brier.value,
            SelectBy::LogLoss => m.log_loss.value,
            SelectBy::Ece => m.ece.value,
            SelectBy::Accuracy => m.accuracy.value,
        }
    }

    fn higher_is_better(self) -> bool {
        self == SelectBy::Accuracy
    }

    fn name(self) -> &'static str {
        match self {
            SelectBy::Brier => "Brier score",
            SelectBy::LogLoss => "log loss",
            SelectBy::Ece => "ECE",
            SelectBy::Accuracy => "accuracy",
        }
    }
}

/// One evaluated snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub step: u64,
    pub snapshot: PathBuf,
    /// The validation reward logged at the snapshot's step during training.
    pub eval_reward: f64,
    /// The evaluation's run folder (results.json, report.md).
    pub evaluation: PathBuf,
    pub accuracy: f64,
    pub ece: f64,
    pub brier: f64,
    pub log_loss: f64,
    /// The value of the selection metric.
    pub score: f64,
}

/// The content of `selection.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub run_dir: PathBuf,
    pub by: SelectBy,
    /// Snapshots in the run, and how many of them had a validation reward to rank by.
    pub snapshots: usize,
    pub ranked: usize,
    /// Best validation reward first.
    pub candidates: Vec<Candidate>,
    /// The winner's step.
    pub winner: u64,
    pub exported: PathBuf,
}

/// The `top` snapshots with the highest validation reward, best first (ties: the later step
/// first, as training went on). Snapshots of steps that were not evaluated cannot be ranked.
pub fn top_snapshots(all: &[Snapshot], top: usize) -> Vec<(Snapshot, f64)> {
    let mut ranked: Vec<(Snapshot, f64)> = all
        .iter()
        .filter_map(|s| s.eval_reward.map(|r| (s.clone(), r)))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.step.cmp(&a.0.step)));
    ranked.truncate(top);
    ranked
}

/// The index of the best candidate by `by` (the first of equals: the better validation
/// reward).
pub fn winner(candidates: &[Candidate], by: SelectBy) -> Option<usize> {
    let better = |a: f64, b: f64| {
        if by.higher_is_better() { a > b } else { a < b }
    };
    let mut best: Option<usize> = None;
    for (i, candidate) in candidates.iter().enumerate() {
        if best.is_none_or(|b| better(candidate.score, candidates[b].score)) {
            best = Some(i);
        }
    }
    best
}

pub fn run(args: SelectArgs) -> Result<()> {
    if args.top == 0 {
        bail!("--top 0 evaluates nothing; give at least 1");
    }
    let all = snapshots(&args.run_dir)?;
    let ranked = top_snapshots(&all, args.top);
    if ranked.is_empty() {
        bail!(
            "{}: none of its {} snapshots has a validation reward in metrics.jsonl (snapshots \
             are ranked by the evaluation of their step: make snapshot_every a multiple of \
             eval_every, and give the run validation prompts)",
            args.run_dir.display(),
            all.len()
        );
    }
    let out = args.setup.run_out().to_path_buf();
    eprintln!(
        "evaluating {} of {} snapshots (best validation reward first): steps {}",
        ranked.len(),
        all.len(),
        ranked
            .iter()
            .map(|(s, _)| s.step.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut candidates = Vec::new();
    for (snapshot, eval_reward) in &ranked {
        let evaluation = out.join(format!("step-{:08}", snapshot.step));
        let policy = PolicyArgs::local(snapshot.dir.clone());
        let outcome = run_qa(&policy, &args.setup, &evaluation)
            .with_context(|| format!("evaluating the snapshot of step {}", snapshot.step))?;
        let m = &outcome.results.metrics;
        candidates.push(Candidate {
            step: snapshot.step,
            snapshot: snapshot.dir.clone(),
            eval_reward: *eval_reward,
            evaluation,
            accuracy: m.accuracy.value,
            ece: m.ece.value,
            brier: m.brier.value,
            log_loss: m.log_loss.value,
            score: args.by.value(&outcome.results),
        });
    }
    let best = winner(&candidates, args.by).expect("at least one candidate");
    let won = &candidates[best];
    lincal_model::fsutil::write_dir_atomic(&args.export, |tmp| copy_dir(&won.snapshot, tmp))
        .with_context(|| format!("exporting the winner to {}", args.export.display()))?;
    let selection = Selection {
        run_dir: args.run_dir.clone(),
        by: args.by,
        snapshots: all.len(),
        ranked: all.iter().filter(|s| s.eval_reward.is_some()).count(),
        winner: won.step,
        exported: args.export.clone(),
        candidates,
    };
    lincal_model::fsutil::write_atomic(
        &out.join(SELECTION_JSON_FILE),
        serde_json::to_string_pretty(&selection)?.as_bytes(),
    )?;
    lincal_model::fsutil::write_atomic(
        &out.join(SELECTION_MD_FILE),
        selection_markdown(&selection).as_bytes(),
    )?;
    println!(
        "step {} wins by {} ({:.4}); exported to {}; the candidates are in {}",
        selection.winner,
        args.by.name(),
        selection.candidates[best].score,
        args.export.display(),
        out.join(SELECTION_MD_FILE).display()
    );
    Ok(())
}

/// Copies the files of `from` (a snapshot: files only) into `to`.
fn copy_dir(from: &Path, to: &Path) -> lincal_model::Result<()> {
    let io = |path: &Path, e| lincal_model::ModelError::io(path, e);
    for entry in std::fs::read_dir(from).map_err(|e| io(from, e))? {
        let path = entry.map_err(|e| io(from, e))?.path();
        if path.is_file() {
            let target = to.join(path.file_name().expect("a file has a name"));
            std::fs::copy(&path, &target).map_err(|e| io(&path, e))?;
        }
    }
    Ok(())
}

fn selection_markdown(selection: &Selection) -> String {
    let mut out = format!(
        "# Checkpoint selection: {}\n\n{} snapshots, {} with a validation reward; the {} best \
         by it were evaluated, and the best of those by {} wins.\n\n",
        selection.run_dir.display(),
        selection.snapshots,
        selection.ranked,
        selection.candidates.len(),
        selection.by.name()
    );
    out += "| step | validation reward | accuracy | ECE | Brier score | log loss | evaluation |\n";
    out += "| ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";
    for c in &selection.candidates {
        let step = if c.step == selection.winner {
            format!("**{}** (winner)", c.step)
        } else {
            c.step.to_string()
        };
        writeln!(
            out,
            "| {step} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | [report](<step-{:08}/report.md>) |",
            c.eval_reward, c.accuracy, c.ece, c.brier, c.log_loss, c.step
        )
        .unwrap();
    }
    writeln!(
        out,
        "\nThe winner is exported to {}.",
        selection.exported.display()
    )
    .unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(step: u64, eval_reward: Option<f64>) -> Snapshot {
        Snapshot {
            step,
            dir: PathBuf::from(format!("snapshots/step-{step:08}")),
            eval_reward,
        }
    }

    fn candidate(step: u64, brier: f64, accuracy: f64) -> Candidate {
        Candidate {
            step,
            snapshot: PathBuf::new(),
            eval_reward: 0.0,
            evaluation: PathBuf::new(),
            accuracy,
            ece: 0.0,
            brier,
            log_loss: 0.0,
            score: brier,
        }
    }

    #[test]
    fn the_best_validation_rewards_are_ranked_first_and_unevaluated_steps_left_out() {
        let all = [
            snapshot(800, Some(1.0)),
            snapshot(810, None),
            snapshot(820, Some(3.0)),
            snapshot(840, Some(2.0)),
            snapshot(860, Some(3.0)),
        ];
        let steps: Vec<u64> = top_snapshots(&all, 3).iter().map(|(s, _)| s.step).collect();
        // 820 and 860 tie at 3.0: the later step first.
        assert_eq!(steps, [860, 820, 840]);
        assert_eq!(top_snapshots(&all, 10).len(), 4);
    }

    #[test]
    fn the_winner_is_the_best_score_in_the_metrics_direction() {
        let candidates = [
            candidate(860, 0.20, 0.5),
            candidate(820, 0.15, 0.4),
            candidate(840, 0.15, 0.6),
        ];
        // Lowest Brier: 820 and 840 tie, the first listed (better validation reward) wins.
        assert_eq!(winner(&candidates, SelectBy::Brier), Some(1));
        let by_accuracy: Vec<Candidate> = candidates
            .iter()
            .map(|c| Candidate {
                score: c.accuracy,
                ..c.clone()
            })
            .collect();
        assert_eq!(winner(&by_accuracy, SelectBy::Accuracy), Some(2));
        assert_eq!(winner(&[], SelectBy::Brier), None);
    }
}
