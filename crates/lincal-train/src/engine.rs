//! The training loop shared by SFT and reward modelling: seeded epoch order, gradient
//! accumulation, clipping, AdamW with a warmup schedule, evaluation, checkpoints with exact
//! resume, metrics and progress.

use crate::config::TrainingConfig;
use crate::data::epoch_order;
use crate::error::{Result, TrainError};
use crate::optim::{LrSchedule, TrainableParams};
use crate::run::{Manifest, Opened, RunDir, RunOptions, TrainState};
use indicatif::{ProgressBar, ProgressStyle};
use lincal_model::CausalLm;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Tensor};

/// What a method plugs into the loop. Training data are "units" (examples, or packed rows)
/// addressed by index.
pub(crate) trait Objective {
    /// What the step loss is averaged over: target tokens for SFT, 1 per example for reward
    /// models. Averaging over the whole step (not per micro-batch) makes gradient
    /// accumulation equal to one large batch.
    fn weight(&self, unit: usize) -> f64;
    /// Forward and backward over one micro-batch: back-propagates the sum of its per-unit
    /// losses divided by `divisor`, and returns that sum (detached) and its real tokens.
    fn backward(&self, units: &[usize], divisor: f64) -> Result<(Tensor, usize)>;
    /// Eval-set metrics, named as they should appear in `metrics.jsonl`.
    fn evaluate(&self) -> Result<Vec<(&'static str, f64)>>;
    /// Dropout (LoRA) on or off.
    fn set_training(&self, training: bool);
    /// Writes the trained model (weights already promoted to full precision) into `dir`.
    fn save_final(&mut self, dir: &Path) -> Result<()>;
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
    /// Mean training loss of the last step run by this call.
    pub last_loss: Option<f64>,
    /// Metrics of the last evaluation run by this call.
    pub eval: Vec<(String, f64)>,
}

pub(crate) struct Engine {
    config: TrainingConfig,
    params: TrainableParams,
    schedule: LrSchedule,
    state: TrainState,
    run: Option<RunDir>,
    finished: Option<PathBuf>,
    resumed_from: Option<u64>,
    progress: bool,
    device: Device,
}

/// Waits for queued GPU work, so that wall-clock times measure it.
pub(crate) fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

impl Engine {
    /// Opens (or resumes) the run in `options.dir`. `train_units` and `data_sha256` describe
    /// the training data, which a resume must find unchanged.
    pub fn open(options: &RunOptions, manifest: Manifest, config: &TrainingConfig, mut params: TrainableParams, train_units: usize, data_sha256: String, device: Device) -> Result<Self> {
        if train_units == 0 {
            return Err(TrainError::NoData("training"));
        }
        let steps_per_epoch = train_units.div_ceil(config.batch_size) as u64;
        let total_steps = config.max_steps.unwrap_or_else(|| (config.epochs * steps_per_epoch as f64).ceil().max(1.0) as u64);
        let mut state = TrainState { step: 0, total_steps, steps_per_epoch, epoch: 0, epoch_offset: 0, train_units, data_sha256, seed: config.seed };
        let schedule = LrSchedule::new(config.schedule, config.warmup_ratio, total_steps);
        let opened = open_run(options, manifest, &mut state, &mut params)?;
        let resumed_from = opened.checkpoint.is_some().then_some(state.step);
        Ok(Engine { config: config.clone(), params, schedule, state, run: opened.run, finished: opened.finished, resumed_from, progress: options.progress, device })
    }

    pub fn total_steps(&self) -> u64 {
        self.state.total_steps
    }

    /// Trains until the last step, or until `stop_at_step` steps are complete (a checkpoint is
    /// written there, so a later call resumes without loss). Finishing writes `final/`.
    pub fn train(&mut self, objective: &mut dyn Objective, stop_at_step: Option<u64>) -> Result<TrainSummary> {
        let mut summary = TrainSummary { steps: self.state.step, total_steps: self.state.total_steps, final_dir: self.finished.clone(), resumed_from: self.resumed_from, last_loss: None, eval: Vec::new() };
        let Some(mut run) = self.run.take() else { return Ok(summary) };
        let outcome = self.run_steps(objective, &mut run, stop_at_step, &mut summary);
        if outcome.is_ok() && self.state.step == self.state.total_steps {
            self.params.promote_to_masters();
            let dir = run.save_final(|dir| objective.save_final(dir))?;
            self.finished = Some(dir.clone());
            summary.final_dir = Some(dir);
        } else {
            self.run = Some(run);
        }
        outcome.map(|()| summary)
    }

    fn run_steps(&mut self, objective: &mut dyn Objective, run: &mut RunDir, stop_at_step: Option<u64>, summary: &mut TrainSummary) -> Result<()> {
        let bar = self.progress_bar();
        let started = Instant::now();
        let mut order: Option<(u64, Vec<usize>)> = None;
        while self.state.step < self.state.total_steps && stop_at_step.is_none_or(|stop| self.state.step < stop) {
            let step = self.state.step;
            let epoch = step / self.state.steps_per_epoch;
            if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                order = Some((epoch, epoch_order(self.state.train_units, self.config.seed, epoch)));
            }
            let offset = (step % self.state.steps_per_epoch) as usize * self.config.batch_size;
            let units = &order.as_ref().expect("set above").1;
            let units = &units[offset..(offset + self.config.batch_size).min(units.len())];
            let step_started = Instant::now();
            let (loss, tokens, lr, grad_norm) = self.optimizer_step(objective, units, step)?;
            synchronize(self.device);
            let seconds = step_started.elapsed().as_secs_f64();
            self.state.step = step + 1;
            self.state.epoch = self.state.step / self.state.steps_per_epoch;
            self.state.epoch_offset = (self.state.step % self.state.steps_per_epoch) as usize * self.config.batch_size;
            summary.steps = self.state.step;
            summary.last_loss = Some(loss);
            let tokens_per_second = tokens as f64 / seconds.max(1e-9);
            run.log("train", &serde_json::json!({
                "step": self.state.step,
                "epoch": self.state.step as f64 / self.state.steps_per_epoch as f64,
                "loss": loss,
                "learning_rate": lr,
                "grad_norm": grad_norm,
                "tokens": tokens,
                "tokens_per_second": tokens_per_second,
                "elapsed_seconds": started.elapsed().as_secs_f64(),
            }))?;
            bar.set_position(self.state.step);
            bar.set_message(format!("loss {loss:.4}  lr {lr:.2e}  {tokens_per_second:.0} tok/s"));
            let last = self.state.step == self.state.total_steps;
            if self.state.step.is_multiple_of(self.config.eval_every) || last {
                objective.set_training(false);
                let metrics = objective.evaluate()?;
                let mut record = serde_json::json!({ "step": self.state.step });
                for (name, value) in &metrics {
                    record[*name] = (*value).into();
                }
                run.log("eval", &record)?;
                summary.eval = metrics.iter().map(|(n, v)| (n.to_string(), *v)).collect();
            }
            let stopping = stop_at_step == Some(self.state.step);
            if !last && (self.state.step.is_multiple_of(self.config.save_every) || stopping) {
                run.save_checkpoint(&self.state, self.config.keep_checkpoints, |dir| self.params.save(dir))?;
            }
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Forward and backward over the micro-batches of `units`, then one clipped AdamW update.
    /// Returns the step's mean loss, real tokens, learning rate and gradient norm.
    fn optimizer_step(&mut self, objective: &mut dyn Objective, units: &[usize], step: u64) -> Result<(f64, usize, f64, f64)> {
        // Dropout draws from libtorch's global generator; seeding it per step makes a resumed
        // run draw the same masks as an uninterrupted one.
        tch::manual_seed(self.config.seed.wrapping_add(step) as i64);
        objective.set_training(true);
        let total_weight: f64 = units.iter().map(|&u| objective.weight(u)).sum();
        let mut loss_total: Option<Tensor> = None;
        let mut tokens = 0;
        for micro in units.chunks(self.config.micro_batch_size) {
            let (loss_sum, micro_tokens) = objective.backward(micro, total_weight)?;
            self.params.accumulate_grads();
            loss_total = Some(match loss_total {
                Some(total) => total + loss_sum,
                None => loss_sum,
            });
            tokens += micro_tokens;
        }
        let loss = loss_total.map_or(0.0, |t| t.double_value(&[])) / total_weight;
        if !loss.is_finite() {
            return Err(TrainError::Diverged { step: step + 1, loss });
        }
        let lr = self.config.learning_rate * self.schedule.factor(step);
        let grad_norm = self.params.step(lr, self.config.max_grad_norm);
        Ok((loss, tokens, lr, grad_norm))
    }

    fn progress_bar(&self) -> ProgressBar {
        progress_bar(self.progress, self.state.step, self.state.total_steps)
    }
}

/// Runs `model` over a batch, turns its final hidden states into a loss sum with `loss_of`
/// and back-propagates that sum divided by `divisor`, with gradient checkpointing when
/// `checkpointing`. Returns the loss sum, detached.
pub(crate) fn backward_loss(model: &CausalLm, checkpointing: bool, input_ids: &Tensor, positions: &Tensor, mask: Option<&Tensor>, divisor: f64, loss_of: impl FnOnce(&Tensor) -> Tensor) -> Tensor {
    if checkpointing {
        let (hidden, checkpoints) = model.forward_checkpointed(input_ids, positions, mask);
        let loss = loss_of(&hidden);
        model.backward_checkpointed(&(&loss / divisor), checkpoints);
        loss.detach()
    } else {
        let loss = loss_of(&model.forward(input_ids, positions, mask, None));
        (&loss / divisor).backward();
        loss.detach()
    }
}

/// A step counter on stderr (hidden unless `enabled`).
pub(crate) fn progress_bar(enabled: bool, step: u64, total_steps: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total_steps).with_position(step);
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:30}] step {pos}/{len} (eta {eta}) {msg}").expect("valid template").progress_chars("=> "));
    bar
}

/// A run directory opened for training.
pub(crate) struct OpenedRun {
    /// `None` when the run already finished.
    pub run: Option<RunDir>,
    pub finished: Option<PathBuf>,
    /// The checkpoint the run resumes from.
    pub checkpoint: Option<PathBuf>,
}

/// Opens (or resumes) the run in `options.dir`: a resume checks that the newest checkpoint
/// belongs to this run (`state` describes it), loads its weights and optimizer state into
/// `params` and its progress into `state`, and drops the metrics of steps it redoes.
pub(crate) fn open_run(options: &RunOptions, manifest: Manifest, state: &mut TrainState, params: &mut TrainableParams) -> Result<OpenedRun> {
    Ok(match RunDir::open(options, manifest)? {
        Opened::Finished(dir) => {
            state.step = state.total_steps;
            OpenedRun { run: None, finished: Some(dir), checkpoint: None }
        }
        Opened::Active(mut run, None) => {
            // Metrics of an attempt that died before its first checkpoint are dropped.
            run.rewind_to(0)?;
            OpenedRun { run: Some(run), finished: None, checkpoint: None }
        }
        Opened::Active(mut run, Some((checkpoint, saved))) => {
            check_same_run(&checkpoint, &saved, state)?;
            params.load(&checkpoint)?;
            run.rewind_to(saved.step)?;
            *state = saved;
            OpenedRun { run: Some(run), finished: None, checkpoint: Some(checkpoint) }
        }
    })
}

/// Refuses a resume whose data or step arithmetic differ from the checkpoint's.
fn check_same_run(checkpoint: &Path, saved: &TrainState, now: &TrainState) -> Result<()> {
    let differs = |what: &str, was: String, is: String| TrainError::run_dir(checkpoint, format!("was written with {what} {was}, but this run has {is}; resume with the same data and config, or train into a new directory"));
    if saved.data_sha256 != now.data_sha256 || saved.train_units != now.train_units {
        return Err(differs("training data", format!("of {} units (sha256 {})", saved.train_units, saved.data_sha256), format!("{} units (sha256 {})", now.train_units, now.data_sha256)));
    }
    if (saved.total_steps, saved.steps_per_epoch, saved.seed) != (now.total_steps, now.steps_per_epoch, now.seed) {
        return Err(differs("total_steps/steps_per_epoch/seed", format!("{}/{}/{}", saved.total_steps, saved.steps_per_epoch, saved.seed), format!("{}/{}/{}", now.total_steps, now.steps_per_epoch, now.seed)));
    }
    if saved.step > saved.total_steps {
        return Err(TrainError::run_dir(checkpoint, format!("claims step {} of {}; the checkpoint is damaged: delete it", saved.step, saved.total_steps)));
    }
    Ok(())
}
