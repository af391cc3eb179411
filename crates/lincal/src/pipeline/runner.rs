//! The pipeline runner: walks a declared list of stages in order and decides, for each, whether
//! to run it, skip it or refuse it, from a record of what each stage was run with.
//!
//! A stage's fingerprint is the sha256 of its name, its settings (the config section that
//! decides its outputs) and the fingerprints of the stages it reads, so a change anywhere
//! upstream changes every stage below it. `DIR/pipeline.json` records, per stage, the
//! fingerprint it was started with and whether it finished:
//! - finished with the same fingerprint: skipped, without loading a model (unless its
//!   directory was removed: then it runs again);
//! - started with the same fingerprint but not finished (killed, or failed): run again, and the
//!   stage resumes from what its own directory holds (every stage resumes on its own);
//! - started or finished with another fingerprint: refused, naming the stage, unless the run is
//!   forced, which removes the stage's directory and runs it anew;
//! - never started: run.
//!
//! Nothing about a stage lives here but its place in the list: a [`Stage`] is a name, the names
//! of its inputs, its settings and a function.

use anyhow::{Context, Result, bail};
use lincal_model::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// The record of a pipeline directory.
pub const STATE_FILE: &str = "pipeline.json";

/// Runs (or resumes) a stage into its directory.
pub type StageFn<'a> = Box<dyn Fn(&Path) -> Result<()> + 'a>;

/// One step of the pipeline.
pub struct Stage<'a> {
    /// Also the name of its directory under the pipeline's.
    pub name: &'static str,
    /// Stages whose outputs it reads; they come earlier in the list.
    pub inputs: Vec<&'static str>,
    /// What decides its outputs (its config section, the teacher it uses...).
    pub settings: serde_json::Value,
    pub run: StageFn<'a>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub fingerprint: String,
    pub finished: bool,
    /// Wall-clock seconds of the runs that finished it (or of the attempts so far).
    pub seconds: f64,
}

/// `DIR/pipeline.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineState {
    pub stages: BTreeMap<String, StageRecord>,
}

impl PipelineState {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: not a pipeline record; it is damaged: \
                     remove it and rerun (finished stages then run again)",
                    path.display()
                )
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Ok(PipelineState::default())
            }
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        write_atomic(
            &path,
            serde_json::to_string_pretty(self).expect("json").as_bytes(),
        )
        .with_context(|| format!("writing {}", path.display()))
    }
}

/// Where a stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageStatus {
    Done,
    /// Started with these settings, not finished.
    Partial,
    Pending,
    /// Started or finished with other settings (or its inputs changed).
    Changed,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Done => "done",
            StageStatus::Partial => "partial",
            StageStatus::Pending => "pending",
            StageStatus::Changed => "changed",
        }
    }
}

/// Each stage's fingerprint, in order.
pub fn fingerprints(stages: &[Stage<'_>]) -> Result<Vec<String>> {
    let mut known: BTreeMap<&str, String> = BTreeMap::new();
    for stage in stages {
        let mut hasher = Sha256::new();
        hasher.update(stage.name.as_bytes());
        hasher.update(stage.settings.to_string().as_bytes());
        for input in &stage.inputs {
            let Some(fingerprint) = known.get(input) else {
                bail!(
                    "stage {} reads {input}, which does not come before it",
                    stage.name
                )
            };
            hasher.update(fingerprint.as_bytes());
        }
        if known
            .insert(stage.name, format!("{:x}", hasher.finalize()))
            .is_some()
        {
            bail!("stage {} is listed twice", stage.name);
        }
    }
    Ok(stages.iter().map(|s| known[s.name].clone()).collect())
}

/// Each stage's status in `dir`.
pub fn statuses(dir: &Path, stages: &[Stage<'_>]) -> Result<Vec<StageStatus>> {
    let state = PipelineState::read(dir)?;
    Ok(fingerprints(stages)?
        .into_iter()
        .zip(stages)
        .map(|(fingerprint, stage)| match state.stages.get(stage.name) {
            None => StageStatus::Pending,
            Some(record) if record.fingerprint != fingerprint => StageStatus::Changed,
            Some(record) if record.finished && dir.join(stage.name).is_dir() => StageStatus::Done,
            // A finished stage whose directory was removed runs again.
            Some(record) if record.finished => StageStatus::Pending,
            Some(_) => StageStatus::Partial,
        })
        .collect())
}

/// What [`run`] did to each stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub ran: Vec<&'static str>,
    pub skipped: Vec<&'static str>,
}

/// Runs the stages in order into `dir/NAME/`. `force` names stages whose directories may be
/// replaced when their settings changed (all of them with `["all"]`). `progress` receives each
/// line of the overall progress.
pub fn run(
    dir: &Path,
    stages: &[Stage<'_>],
    force: &[String],
    progress: &mut dyn FnMut(&str),
) -> Result<RunReport> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let fingerprints = fingerprints(stages)?;
    let mut state = PipelineState::read(dir)?;
    // Refuse before running anything: a changed stage in the middle would otherwise be found
    // only after the stages above it have run.
    for (stage, fingerprint) in stages.iter().zip(&fingerprints) {
        let forced = force.iter().any(|f| f == stage.name || f == "all");
        if let Some(record) = state
            .stages
            .get(stage.name)
            .filter(|r| &r.fingerprint != fingerprint)
            && !forced
        {
            let was = if record.finished {
                "finished"
            } else {
                "started"
            };
            bail!(
                "stage {} was {was} in {} with other settings or inputs; \
                 rerun with --force {} (its directory is replaced), or use a new output directory",
                stage.name,
                dir.join(stage.name).display(),
                stage.name
            );
        }
    }
    let started = Instant::now();
    let mut report = RunReport {
        ran: Vec::new(),
        skipped: Vec::new(),
    };
    let total = stages.len();
    for (index, (stage, fingerprint)) in stages.iter().zip(&fingerprints).enumerate() {
        let stage_dir = dir.join(stage.name);
        let record = state.stages.get(stage.name);
        // A finished stage whose directory was removed runs again.
        if record.is_some_and(|r| &r.fingerprint == fingerprint && r.finished) && stage_dir.is_dir()
        {
            report.skipped.push(stage.name);
            continue;
        }
        if record.is_some_and(|r| &r.fingerprint != fingerprint) {
            remove_dir(&stage_dir)?;
        }
        let done_seconds: f64 = state
            .stages
            .values()
            .filter(|r| r.finished)
            .map(|r| r.seconds)
            .sum();
        progress(&progress_line(
            index,
            total,
            stage.name,
            started.elapsed().as_secs_f64(),
            done_seconds,
            report.ran.len() + report.skipped.len(),
        ));
        let previous = record
            .filter(|r| &r.fingerprint == fingerprint)
            .map_or(0.0, |r| r.seconds);
        state.stages.insert(
            stage.name.to_string(),
            StageRecord {
                fingerprint: fingerprint.clone(),
                finished: false,
                seconds: previous,
            },
        );
        state.write(dir)?;
        let stage_started = Instant::now();
        let outcome = (stage.run)(&stage_dir)
            .with_context(|| format!("stage {} ({})", stage.name, stage_dir.display()));
        let record = state.stages.get_mut(stage.name).expect("inserted above");
        record.seconds += stage_started.elapsed().as_secs_f64();
        record.finished = outcome.is_ok();
        state.write(dir)?;
        outcome?;
        report.ran.push(stage.name);
    }
    progress(&format!(
        "pipeline: {total} of {total} stages done in {}",
        duration(started.elapsed().as_secs_f64())
    ));
    Ok(report)
}

/// `[k/n] NAME  elapsed 3m 10s, about 12m left`: the estimate is the mean time of the stages
/// finished so far (in this or earlier runs) times the stages left.
fn progress_line(
    index: usize,
    total: usize,
    name: &str,
    elapsed: f64,
    done_seconds: f64,
    done: usize,
) -> String {
    let mut line = format!(
        "pipeline [{}/{total}] {name}  elapsed {}",
        index + 1,
        duration(elapsed)
    );
    if done > 0 && done_seconds > 0.0 {
        line.push_str(&format!(
            ", about {} left",
            duration(done_seconds / done as f64 * (total - index) as f64)
        ));
    }
    line
}

fn duration(seconds: f64) -> String {
    let seconds = seconds.round() as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h {:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("removing {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A stage that writes `out.txt` holding its input's text plus its own tag, counting its runs;
    /// it fails while `fail` holds its name.
    fn stage<'a>(
        name: &'static str,
        inputs: Vec<&'static str>,
        tag: &str,
        runs: &'a RefCell<Vec<&'static str>>,
        fail: &'a RefCell<Option<&'static str>>,
    ) -> Stage<'a> {
        let tag = tag.to_string();
        let input = inputs.first().copied();
        Stage {
            name,
            inputs,
            settings: serde_json::json!({ "tag": tag }),
            run: Box::new(move |dir| {
                runs.borrow_mut().push(name);
                std::fs::create_dir_all(dir)?;
                if *fail.borrow() == Some(name) {
                    std::fs::write(dir.join("half.txt"), "half")?;
                    bail!("killed");
                }
                let before = match input {
                    Some(input) => {
                        std::fs::read_to_string(dir.parent().unwrap().join(input).join("out.txt"))?
                    }
                    None => String::new(),
                };
                std::fs::write(dir.join("out.txt"), format!("{before}{tag}"))?;
                Ok(())
            }),
        }
    }

    fn graph<'a>(
        tags: [&str; 3],
        runs: &'a RefCell<Vec<&'static str>>,
        fail: &'a RefCell<Option<&'static str>>,
    ) -> Vec<Stage<'a>> {
        vec![
            stage("a", vec![], tags[0], runs, fail),
            stage("b", vec!["a"], tags[1], runs, fail),
            stage("c", vec!["b"], tags[2], runs, fail),
        ]
    }

    #[test]
    fn finished_stages_are_skipped_failed_ones_resume_and_changed_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let runs = RefCell::new(Vec::new());
        let fail = RefCell::new(Some("b"));
        let mut lines = Vec::new();
        // A run that dies in b: a is done, b partial, c pending.
        let err = run(
            dir.path(),
            &graph(["1", "2", "3"], &runs, &fail),
            &[],
            &mut |l| lines.push(l.to_string()),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("stage b"), "{err:#}");
        assert_eq!(*runs.borrow(), ["a", "b"]);
        let status = statuses(dir.path(), &graph(["1", "2", "3"], &runs, &fail)).unwrap();
        assert_eq!(
            status,
            [
                StageStatus::Done,
                StageStatus::Partial,
                StageStatus::Pending
            ]
        );
        assert!(
            lines[0].starts_with("pipeline [1/3] a  elapsed"),
            "{lines:?}"
        );
        // The rerun does not redo a, resumes b (its directory kept) and runs c.
        *fail.borrow_mut() = None;
        runs.borrow_mut().clear();
        let report = run(
            dir.path(),
            &graph(["1", "2", "3"], &runs, &fail),
            &[],
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((report.ran, report.skipped), (vec!["b", "c"], vec!["a"]));
        assert!(
            dir.path().join("b/half.txt").exists(),
            "a resumed stage keeps its directory"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("c/out.txt")).unwrap(),
            "123"
        );
        // A third run does nothing.
        runs.borrow_mut().clear();
        let report = run(
            dir.path(),
            &graph(["1", "2", "3"], &runs, &fail),
            &[],
            &mut |_| {},
        )
        .unwrap();
        assert!(runs.borrow().is_empty() && report.skipped == ["a", "b", "c"]);
        // A finished stage whose directory was removed is pending and runs again.
        std::fs::remove_dir_all(dir.path().join("c")).unwrap();
        assert_eq!(
            statuses(dir.path(), &graph(["1", "2", "3"], &runs, &fail)).unwrap()[2],
            StageStatus::Pending
        );
        let report = run(
            dir.path(),
            &graph(["1", "2", "3"], &runs, &fail),
            &[],
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((report.ran, report.skipped), (vec!["c"], vec!["a", "b"]));
        runs.borrow_mut().clear();
        // Changing b's settings changes b and c: refused before anything runs...
        let err = run(
            dir.path(),
            &graph(["1", "X", "3"], &runs, &fail),
            &[],
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("stage b was finished in") && err.contains("--force b"),
            "{err}"
        );
        assert!(runs.borrow().is_empty());
        assert_eq!(
            statuses(dir.path(), &graph(["1", "X", "3"], &runs, &fail)).unwrap(),
            [
                StageStatus::Done,
                StageStatus::Changed,
                StageStatus::Changed
            ]
        );
        // ...and forced, both are replaced and a is kept.
        let report = run(
            dir.path(),
            &graph(["1", "X", "3"], &runs, &fail),
            &["all".to_string()],
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(report.ran, ["b", "c"]);
        assert!(
            !dir.path().join("b/half.txt").exists(),
            "a forced stage starts from an empty directory"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("c/out.txt")).unwrap(),
            "1X3"
        );
    }

    #[test]
    fn a_stage_must_come_after_its_inputs() {
        let runs = RefCell::new(Vec::new());
        let fail = RefCell::new(None);
        let stages = vec![
            stage("b", vec!["a"], "1", &runs, &fail),
            stage("a", vec![], "2", &runs, &fail),
        ];
        assert_eq!(
            fingerprints(&stages).unwrap_err().to_string(),
            "stage b reads a, which does not come before it"
        );
    }

    #[test]
    fn durations_read_as_a_person_writes_them() {
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(190.0), "3m 10s");
        assert_eq!(duration(7260.0), "2h 01m");
        assert_eq!(
            progress_line(2, 5, "sft", 65.0, 120.0, 2),
            "pipeline [3/5] sft  elapsed 1m 05s, about 3m 00s left"
        );
    }
}
