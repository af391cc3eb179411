//! The lifecycle every training run shares, whatever the method: open a run directory or
//! resume it from its newest checkpoint, run steps (advancing the progress, logging metrics,
//! evaluating, writing checkpoints), and finish by writing `final/`. A method plugs in its
//! steps through [`RunSteps`]: the SFT and reward-model loop ([`crate::train_loop`]) and PPO
//! ([`crate::ppo`]).

use crate::error::{Result, TrainError};
use crate::optim::TrainableParams;
use crate::progress::ProgressLines;
use crate::run::{Opened, RunDir, RunOptions, TrainState};
use indicatif::{ProgressBar, ProgressStyle};
use lincal_data::artifact::Manifest;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a training method does at each step of a run; [`TrainingRun::train`] does the rest.
pub(crate) trait RunSteps {
    /// Runs the optimizer step that follows the `state.step` completed ones. `run` is the run
    /// directory, for files of the method's own (PPO's rollouts).
    fn step(&mut self, state: &TrainState, run: &Path) -> Result<StepRecord>;
    /// Whether to evaluate after `done` steps (the last step is always evaluated).
    fn evaluates_after(&self, done: u64) -> bool;
    /// Evaluates after `done` steps: the metrics for the `eval` record (none: nothing is
    /// logged), named as they should appear in `metrics.jsonl`.
    fn evaluate(&mut self, done: u64, run: &Path) -> Result<Vec<(String, f64)>>;
    /// Writes what a resume needs besides the progress (weights, optimizer state...) into a
    /// checkpoint directory.
    fn save_checkpoint(&self, dir: &Path) -> Result<()>;
    /// Writes the trained model into `dir` (`final/`).
    fn save_final(&mut self, dir: &Path) -> Result<()>;
    /// Writes a weights-only snapshot of the model as it is now into `dir`, leaving training
    /// as it was. Only methods whose plan asks for snapshots are called.
    fn save_snapshot(&self, _dir: &Path) -> Result<()> {
        Err(TrainError::config(
            "snapshot_every",
            "this trainer keeps no snapshots; leave it unset",
        ))
    }
}

/// What one step did.
pub(crate) struct StepRecord {
    /// A JSON object of the step's metrics, named as they should appear in `metrics.jsonl`.
    pub metrics: serde_json::Value,
    /// A short line for the progress bar.
    pub message: String,
}

/// How a run cuts its data into steps and how often it saves them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepPlan {
    /// Training units (examples, packed rows or prompts) each step consumes.
    pub units_per_step: usize,
    /// A checkpoint after every this many steps (and where a call stops early).
    pub save_every: u64,
    /// How many checkpoints are kept.
    pub keep_checkpoints: usize,
    /// Whether they stay once the run has finished.
    pub keep_checkpoints_after_finish: bool,
    /// A weights-only snapshot after every this many steps (0: none), from step `save_after`
    /// on; snapshots stay after the run.
    pub snapshot_every: u64,
    pub save_after: u64,
}

/// Where a `train` call left the run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// Optimizer steps completed, out of `total_steps`.
    pub steps: u64,
    pub total_steps: u64,
    /// The final model, once the run has finished.
    pub final_dir: Option<PathBuf>,
    /// The checkpoint step this call resumed from.
    pub resumed_from: Option<u64>,
    /// Metrics of the last step run by this call, named as in `metrics.jsonl` (empty when no
    /// step ran).
    pub last_step: Vec<(String, f64)>,
    /// Metrics of the last evaluation run by this call.
    pub eval: Vec<(String, f64)>,
}

impl TrainSummary {
    /// A metric of the last step run by this call (`loss`, `reward`...).
    pub fn last(&self, name: &str) -> Option<f64> {
        self.last_step
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// A run directory opened for training, with the run's progress.
pub(crate) struct TrainingRun {
    state: TrainState,
    plan: StepPlan,
    /// `None` once the run has finished.
    dir: Option<RunDir>,
    finished: Option<PathBuf>,
    /// The checkpoint the run resumed from, and its step.
    resumed: Option<(PathBuf, u64)>,
    progress: bool,
}

impl TrainingRun {
    /// Opens (or resumes) the run in `options.dir` for `manifest`'s work (its inputs are
    /// `options.input_files`). `state` describes the run from its start: a resume checks that
    /// the newest checkpoint belongs to it, loads the checkpoint's weights and optimizer state
    /// into `params` and its progress into the run, and drops the metrics of steps it redoes.
    pub fn open(
        options: &RunOptions,
        manifest: Manifest,
        mut state: TrainState,
        plan: StepPlan,
        params: &mut TrainableParams,
    ) -> Result<Self> {
        // Rank 0 creates or checks the directory before the other ranks read it.
        let comm = &options.comm;
        let opened = if comm.rank() == 0 {
            Some(RunDir::open(options, manifest)?)
        } else {
            None
        };
        comm.barrier()?;
        let opened = match opened {
            Some(opened) => opened,
            None => RunDir::follow(options)?,
        };
        let (dir, finished, resumed) = match opened {
            Opened::Finished(dir) => {
                state.step = state.total_steps;
                (None, Some(dir), None)
            }
            Opened::Active(mut run, None) => {
                // Metrics of an attempt that died before its first checkpoint are dropped.
                run.rewind_to(0)?;
                (Some(run), None, None)
            }
            Opened::Active(mut run, Some((checkpoint, saved))) => {
                check_same_run(&checkpoint, &saved, &state)?;
                params.load(&checkpoint)?;
                run.rewind_to(saved.step)?;
                state = saved;
                if options.progress && comm.rank() == 0 {
                    eprintln!(
                        "resuming {} from step {} of {} (checkpoint {})",
                        options.dir.display(),
                        state.step,
                        state.total_steps,
                        checkpoint.display()
                    );
                }
                (Some(run), None, Some((checkpoint, state.step)))
            }
        };
        Ok(TrainingRun {
            state,
            plan,
            dir,
            finished,
            resumed,
            progress: options.progress && comm.rank() == 0,
        })
    }

    pub fn total_steps(&self) -> u64 {
        self.state.total_steps
    }

    /// The checkpoint the run resumed from, for state a method keeps beside the weights.
    pub fn checkpoint(&self) -> Option<&Path> {
        self.resumed.as_ref().map(|(path, _)| path.as_path())
    }

    /// Runs `steps` until the last step, or until `stop_at_step` steps are complete (a
    /// checkpoint is written there, so a later call resumes without loss). Finishing writes
    /// `final/`.
    pub fn train(
        &mut self,
        steps: &mut dyn RunSteps,
        stop_at_step: Option<u64>,
    ) -> Result<TrainSummary> {
        let mut summary = TrainSummary {
            steps: self.state.step,
            total_steps: self.state.total_steps,
            final_dir: self.finished.clone(),
            resumed_from: self.resumed.as_ref().map(|(_, step)| *step),
            last_step: Vec::new(),
            eval: Vec::new(),
        };
        let Some(mut run) = self.dir.take() else {
            return Ok(summary);
        };
        let outcome = self.run_steps(steps, &mut run, stop_at_step, &mut summary);
        if outcome.is_ok() && self.state.step == self.state.total_steps {
            let dir = run.save_final(|dir| steps.save_final(dir))?;
            if !self.plan.keep_checkpoints_after_finish {
                let freed = run.remove_checkpoints()?;
                if self.progress && freed > 0 {
                    eprintln!(
                        "removed the resume checkpoints ({:.1} GB; keep them with \
                         keep_checkpoints_after_finish = true); {} holds {:.1} GB",
                        freed as f64 / 1e9,
                        run.path().display(),
                        crate::run::disk_usage(run.path()) as f64 / 1e9
                    );
                }
            }
            self.finished = Some(dir.clone());
            summary.final_dir = Some(dir);
        } else {
            self.dir = Some(run);
        }
        outcome.map(|()| summary)
    }

    fn run_steps(
        &mut self,
        steps: &mut dyn RunSteps,
        run: &mut RunDir,
        stop_at_step: Option<u64>,
        summary: &mut TrainSummary,
    ) -> Result<()> {
        let bar = progress_bar(self.progress, self.state.step, self.state.total_steps);
        // Without a terminal the bar draws nothing: a line now and then says how it goes.
        let mut log_lines = ProgressLines::for_stderr(self.progress, self.state.step);
        let started = Instant::now();
        while self.state.step < self.state.total_steps
            && stop_at_step.is_none_or(|stop| self.state.step < stop)
        {
            let StepRecord {
                mut metrics,
                message,
            } = steps.step(&self.state, run.path())?;
            let done = self.advance();
            metrics["step"] = done.into();
            metrics["elapsed_seconds"] = started.elapsed().as_secs_f64().into();
            run.log("train", &metrics)?;
            summary.steps = done;
            summary.last_step = metrics
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(name, _)| name.as_str() != "step")
                .filter_map(|(name, value)| Some((name.clone(), value.as_f64()?)))
                .collect();
            bar.set_position(done);
            if log_lines.due(done, self.state.total_steps) {
                eprintln!(
                    "step {done}/{} {}, {}",
                    self.state.total_steps,
                    log_lines.rate(done, self.state.total_steps, "step"),
                    message
                );
            }
            bar.set_message(message);
            if steps.evaluates_after(done) || done == self.state.total_steps {
                let metrics = steps.evaluate(done, run.path())?;
                if !metrics.is_empty() {
                    let mut record = serde_json::json!({ "step": done });
                    for (name, value) in &metrics {
                        record[name] = (*value).into();
                    }
                    run.log("eval", &record)?;
                }
                summary.eval = metrics;
            }
            let snapshot_every = self.plan.snapshot_every;
            if snapshot_every > 0
                && done >= self.plan.save_after
                && done.is_multiple_of(snapshot_every)
            {
                run.save_snapshot(done, |dir| steps.save_snapshot(dir))?;
            }
            if self.is_checkpoint_step(stop_at_step) {
                run.save_checkpoint(&self.state, self.plan.keep_checkpoints, |dir| {
                    steps.save_checkpoint(dir)
                })?;
            }
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Counts one more completed step; returns the steps done.
    fn advance(&mut self) -> u64 {
        let state = &mut self.state;
        state.step += 1;
        state.epoch = state.step / state.steps_per_epoch;
        state.epoch_offset =
            (state.step % state.steps_per_epoch) as usize * self.plan.units_per_step;
        state.step
    }

    /// Whether the step just completed gets a checkpoint: every `save_every` steps and where
    /// this call stops early, but not the last step, which writes `final/` instead.
    fn is_checkpoint_step(&self, stop_at_step: Option<u64>) -> bool {
        let done = self.state.step;
        done < self.state.total_steps
            && (done.is_multiple_of(self.plan.save_every) || stop_at_step == Some(done))
    }
}

/// Refuses a resume whose data or step arithmetic differ from the checkpoint's.
fn check_same_run(checkpoint: &Path, saved: &TrainState, now: &TrainState) -> Result<()> {
    let differs = |what: &str, was: String, is: String| {
        TrainError::run_dir(
            checkpoint,
            format!(
                "was written with {what} {was}, but this run has {is}; \
                 resume with the same data and config, or train into a new directory"
            ),
        )
    };
    if saved.data_sha256 != now.data_sha256 || saved.train_units != now.train_units {
        return Err(differs(
            "training data",
            format!(
                "of {} units (sha256 {})",
                saved.train_units, saved.data_sha256
            ),
            format!("{} units (sha256 {})", now.train_units, now.data_sha256),
        ));
    }
    if (saved.total_steps, saved.steps_per_epoch, saved.seed)
        != (now.total_steps, now.steps_per_epoch, now.seed)
    {
        return Err(differs(
            "total_steps/steps_per_epoch/seed",
            format!(
                "{}/{}/{}",
                saved.total_steps, saved.steps_per_epoch, saved.seed
            ),
            format!("{}/{}/{}", now.total_steps, now.steps_per_epoch, now.seed),
        ));
    }
    if saved.step > saved.total_steps {
        return Err(TrainError::run_dir(
            checkpoint,
            format!(
                "claims step {} of {}; the checkpoint is damaged: delete it",
                saved.step, saved.total_steps
            ),
        ));
    }
    Ok(())
}

/// A step counter on stderr (hidden unless `enabled`).
fn progress_bar(enabled: bool, step: u64, total_steps: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total_steps).with_position(step);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] step {pos}/{len} (eta {eta}) {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}
