//! A run directory: what a training stage reads and writes.
//!
//! ```text
//! run/
//!   manifest.json              stage, config, base model, inputs with sha256, lincal version,
//!                              start, resume and finish times (`lincal_data::artifact::Manifest`)
//!   metrics.jsonl              one JSON object per step (and per evaluation)
//!   events.out.tfevents.*      the same scalars for TensorBoard (one file per session)
//!   checkpoints/step-00000025/ params.safetensors, optimizer.safetensors, state.json
//!   snapshots/step-00000800/   PPO: weights-only policy snapshots in the Hugging Face layout,
//!                              kept after the run for checkpoint selection (`lincal select`)
//!   final/                     the trained model in the Hugging Face layout, with its tokenizer
//! ```
//! Every file and directory appears under its final name complete or not at all.

use crate::distributed::{Communicator, SingleProcess};
use crate::error::{Result, TrainError};
use crate::tensorboard::EventWriter;
use lincal_data::artifact::{InputFile, MANIFEST_FILE, Manifest, timestamp};
use lincal_data::lock::{LOCK_FILE, OutputLock};
use lincal_model::fsutil::{write_atomic, write_dir_atomic};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const FINAL_DIR: &str = "final";
pub const SNAPSHOTS_DIR: &str = "snapshots";
pub const STATE_FILE: &str = "state.json";

/// Where a run writes and what it reads, as given by the caller.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub dir: PathBuf,
    /// Data files the examples came from; their sha256 goes into the manifest and a resume
    /// with changed files is refused.
    pub input_files: Vec<PathBuf>,
    /// Show a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// The data-parallel job this process is one rank of ([`SingleProcess`] alone). Rank 0
    /// writes the run directory; the other ranks read it and join every collective.
    pub comm: Arc<dyn Communicator>,
}

impl RunOptions {
    /// Options for a run of one process in `dir`, without input files or progress bar.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RunOptions {
            dir: dir.into(),
            input_files: Vec::new(),
            progress: false,
            comm: Arc::new(SingleProcess),
        }
    }

    /// What a trainer checks before loading any model (minutes, for a large one): that it has
    /// `examples` to train on and that the run directory can be written (creating it; rank 0
    /// alone in a data-parallel job).
    pub fn check_before_loading(&self, examples: usize) -> Result<()> {
        if examples == 0 {
            return Err(TrainError::NoData("training"));
        }
        // Rank 0 writes the run directory (and alone probes it, so that ranks do not race).
        if self.comm.rank() != 0 {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| TrainError::io(&self.dir, e))?;
        let probe = self.dir.join(".lincal-write-check");
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| TrainError::io(&probe, e))
    }
}

/// Progress saved with each checkpoint. Data position and shuffling follow from `step`
/// (epoch = step / steps_per_epoch; each epoch's order is a seeded permutation), so these
/// fields are stored for checking that a resume continues the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed (also the scheduler's step).
    pub step: u64,
    pub total_steps: u64,
    pub steps_per_epoch: u64,
    pub epoch: u64,
    /// Training units (examples or packed rows) of the current epoch already consumed.
    pub epoch_offset: usize,
    pub train_units: usize,
    pub data_sha256: String,
    pub seed: u64,
}

impl TrainState {
    /// The state of a run that has not started.
    pub fn new(
        total_steps: u64,
        steps_per_epoch: u64,
        train_units: usize,
        data_sha256: String,
        seed: u64,
    ) -> Self {
        TrainState {
            step: 0,
            total_steps,
            steps_per_epoch,
            epoch: 0,
            epoch_offset: 0,
            train_units,
            data_sha256,
            seed,
        }
    }
}

pub struct RunDir {
    dir: PathBuf,
    /// `None` on the ranks of a data-parallel job other than 0: they read the directory and
    /// write nothing (see [`RunDir::follow`]).
    writer: Option<RunWriter>,
}

struct RunWriter {
    events: EventWriter,
    /// Held while the run writes: a second run on the directory is refused, naming this one.
    _lock: OutputLock,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        TrainError::run_dir(
            path,
            format!("is not valid ({e}); the run directory is damaged"),
        )
    })
}

/// What `RunDir::open` found.
pub enum Opened {
    /// A new run, or one to resume from the newest checkpoint (if any).
    Active(RunDir, Option<(PathBuf, TrainState)>),
    /// `final/` exists: the run already finished.
    Finished(PathBuf),
}

impl RunDir {
    /// Opens `options.dir` for `manifest`'s work (its inputs, `options.input_files`, are
    /// hashed here): creates it (writing the manifest), or checks that an existing run was
    /// started with the same stage, config, base model and input contents, and records the
    /// resume. A run is finished once `final/` exists. The directory is locked (`lincal.lock`)
    /// while the run is open; a lock left by a process that no longer runs is taken over.
    pub fn open(options: &RunOptions, mut manifest: Manifest) -> Result<Opened> {
        let dir = &options.dir;
        let lock = OutputLock::dir(dir)?;
        if let Some(warning) = lock.takeover_warning() {
            eprintln!("{warning}");
        }
        manifest.inputs = options
            .input_files
            .iter()
            .map(|path| InputFile::hash(path))
            .collect::<Result<_, _>>()?;
        let manifest_path = dir.join(MANIFEST_FILE);
        if manifest_path.exists() {
            let stored = Manifest::read(dir)?;
            if !stored.same_run(&manifest) {
                return Err(TrainError::run_dir(
                    &manifest_path,
                    format!(
                        "holds a run that does not match this one: {}; \
                         resume with the same settings, or train into a new directory",
                        stored.difference(&manifest)
                    ),
                ));
            }
            if dir.join(FINAL_DIR).exists() {
                return Ok(Opened::Finished(dir.join(FINAL_DIR)));
            }
            manifest.started = stored.started;
            manifest.resumed = stored.resumed;
            manifest.resumed.push(timestamp());
        } else {
            let occupied = std::fs::read_dir(dir)
                .map(|mut entries| {
                    entries.any(|entry| entry.is_ok_and(|e| e.file_name() != LOCK_FILE))
                })
                .unwrap_or(false);
            if occupied {
                return Err(TrainError::run_dir(
                    dir,
                    "is not empty and holds no manifest.json, so it is not a lincal run; \
                     train into a new or empty directory",
                ));
            }
            std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        }
        manifest.write(dir)?;
        let latest = latest_checkpoint(dir)?
            .map(|path| Ok::<_, TrainError>((path.clone(), read_json(&path.join(STATE_FILE))?)))
            .transpose()?;
        let events = EventWriter::create(dir)?;
        Ok(Opened::Active(
            RunDir {
                dir: dir.clone(),
                writer: Some(RunWriter {
                    events,
                    _lock: lock,
                }),
            },
            latest,
        ))
    }

    /// What a rank other than 0 of a data-parallel job finds in `options.dir` once rank 0 has
    /// opened it: the checkpoint to resume from, or the finished run. The directory it returns
    /// writes nothing: its methods only call their `fill`, whose collectives every rank joins
    /// (the steps' own writes happen on rank 0 alone).
    pub fn follow(options: &RunOptions) -> Result<Opened> {
        let dir = &options.dir;
        if dir.join(FINAL_DIR).exists() {
            return Ok(Opened::Finished(dir.join(FINAL_DIR)));
        }
        let latest = latest_checkpoint(dir)?
            .map(|path| Ok::<_, TrainError>((path.clone(), read_json(&path.join(STATE_FILE))?)))
            .transpose()?;
        Ok(Opened::Active(
            RunDir {
                dir: dir.clone(),
                writer: None,
            },
            latest,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Drops metric records of steps after `step` (work that a resume redoes) and marks the
    /// restart for TensorBoard.
    pub fn rewind_to(&mut self, step: u64) -> Result<()> {
        let Some(writer) = &mut self.writer else {
            return Ok(());
        };
        let path = self.dir.join(METRICS_FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
            // A record cut by a crash mid-write is dropped with the rest.
            let kept: String = text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s <= step)
                })
                .map(|line| format!("{line}\n"))
                .collect();
            write_atomic(&path, kept.as_bytes())?;
        }
        writer.events.session_start(step + 1)
    }

    /// Appends one record to `metrics.jsonl` and its numeric fields (but `step`) to TensorBoard
    /// under `<group>/<name>`.
    pub fn log(&mut self, group: &str, record: &serde_json::Value) -> Result<()> {
        let Some(writer) = &mut self.writer else {
            return Ok(());
        };
        let path = self.dir.join(METRICS_FILE);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        writeln!(file, "{record}").map_err(|e| TrainError::io(&path, e))?;
        let step = record.get("step").and_then(|s| s.as_u64()).unwrap_or(0);
        let tags: Vec<(String, f64)> = record
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "step")
            .filter_map(|(k, v)| v.as_f64().map(|v| (format!("{group}/{k}"), v)))
            .collect();
        let tags: Vec<(&str, f64)> = tags.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        writer.events.scalars(step, &tags)
    }

    /// Writes a checkpoint directory atomically (`fill` writes the tensors) and keeps only
    /// the newest `keep`.
    pub fn save_checkpoint(
        &self,
        state: &TrainState,
        keep: usize,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let path = self
            .dir
            .join(CHECKPOINTS_DIR)
            .join(format!("step-{:08}", state.step));
        if self.writer.is_none() {
            fill(&path)?;
            return Ok(path);
        }
        write_dir(&path, |tmp| {
            fill(tmp)?;
            Ok(write_atomic(
                &tmp.join(STATE_FILE),
                serde_json::to_string_pretty(state)
                    .expect("json")
                    .as_bytes(),
            )?)
        })?;
        let all = checkpoints(&self.dir)?;
        for old in all.iter().take(all.len().saturating_sub(keep)) {
            std::fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
        }
        Ok(path)
    }

    /// Writes the weights-only snapshot of step `step` (`fill` writes the model) into
    /// `snapshots/step-N/`, atomically; a snapshot a killed run already wrote is replaced.
    pub fn save_snapshot(&self, step: u64, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let path = snapshot_dir(&self.dir, step);
        match self.writer {
            Some(_) => write_dir(&path, fill),
            None => fill(&path),
        }
    }

    /// Removes the resume checkpoints of a finished run; returns the bytes freed.
    pub fn remove_checkpoints(&self) -> Result<u64> {
        let dir = self.dir.join(CHECKPOINTS_DIR);
        if self.writer.is_none() || !dir.exists() {
            return Ok(0);
        }
        let bytes = disk_usage(&dir);
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        Ok(bytes)
    }

    /// Writes `final/` atomically; its presence marks the run finished. The manifest then
    /// records the time.
    pub fn save_final(&self, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        let path = self.dir.join(FINAL_DIR);
        if self.writer.is_none() {
            fill(&path)?;
            return Ok(path);
        }
        write_dir(&path, fill)?;
        let mut manifest = Manifest::read(&self.dir)?;
        manifest.finished = Some(timestamp());
        manifest.write(&self.dir)?;
        Ok(path)
    }
}

/// `write_dir_atomic` for a filler that fails with a `TrainError`.
fn write_dir(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut failure = None;
    let written = write_dir_atomic(path, |tmp| {
        fill(tmp).map_err(|e| {
            failure = Some(e);
            lincal_model::ModelError::Invalid(String::new())
        })
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(written?),
    }
}

/// Where the run in `run_dir` keeps its snapshot of step `step`.
pub fn snapshot_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(SNAPSHOTS_DIR).join(format!("step-{step:08}"))
}

/// A weights-only snapshot of a run and the validation reward logged at its step.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub step: u64,
    pub dir: PathBuf,
    /// `eval_reward` of the step's evaluation record in `metrics.jsonl` (the last one: a
    /// resumed run logs a step again); none when the step was not evaluated.
    pub eval_reward: Option<f64>,
}

/// The complete snapshots in `run_dir`, ascending by step.
pub fn snapshots(run_dir: &Path) -> Result<Vec<Snapshot>> {
    let root = run_dir.join(SNAPSHOTS_DIR);
    if !root.is_dir() {
        return Err(TrainError::run_dir(
            run_dir,
            format!(
                "has no {SNAPSHOTS_DIR}/ folder: give a PPO run directory trained with \
                 snapshot_every set (snapshots start at save_after)"
            ),
        ));
    }
    let metrics = run_dir.join(METRICS_FILE);
    let mut eval_rewards = std::collections::BTreeMap::new();
    if metrics.exists() {
        let text = std::fs::read_to_string(&metrics).map_err(|e| TrainError::io(&metrics, e))?;
        for (index, line) in text.lines().enumerate() {
            // A line torn by a kill is skipped; every complete record is one JSON object.
            let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
                if index + 1 < text.lines().count() {
                    return Err(TrainError::run_dir(
                        &metrics,
                        format!("line {} is not a JSON object", index + 1),
                    ));
                }
                continue;
            };
            if let (Some(step), Some(reward)) = (
                record.get("step").and_then(|s| s.as_u64()),
                record.get("eval_reward").and_then(|r| r.as_f64()),
            ) {
                eval_rewards.insert(step, reward);
            }
        }
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(|e| TrainError::io(&root, e))? {
        let dir = entry.map_err(|e| TrainError::io(&root, e))?.path();
        // `step-N.partial` directories are snapshots cut short by a crash.
        let step = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(step) = step {
            found.push(Snapshot {
                step,
                eval_reward: eval_rewards.get(&step).copied(),
                dir,
            });
        }
    }
    found.sort_by_key(|s| s.step);
    Ok(found)
}

/// Complete checkpoint directories, oldest first.
fn checkpoints(dir: &Path) -> Result<Vec<PathBuf>> {
    let root = dir.join(CHECKPOINTS_DIR);
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(|e| TrainError::io(&root, e))? {
        let path = entry.map_err(|e| TrainError::io(&root, e))?.path();
        // `step-N.partial` directories are checkpoints cut short by a crash.
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(step) = step.filter(|_| path.join(STATE_FILE).exists()) {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(checkpoints(dir)?.pop())
}

/// The bytes of the files under `path` (0 for what cannot be read).
pub fn disk_usage(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok())
                    .map(|entry| disk_usage(&entry.path()))
                    .sum()
            })
            .unwrap_or(0),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}
