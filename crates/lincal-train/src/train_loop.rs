//! The training loop shared by SFT and reward modelling: seeded epoch order, gradient
//! accumulation, clipping, AdamW with a warmup schedule and evaluation, as the steps of a
//! [`TrainingRun`] (checkpoints with exact resume, metrics and progress).

use crate::config::TrainingConfig;
use crate::data::epoch_order;
use crate::distributed::Communicator;
use crate::error::{Result, TrainError};
use crate::optim::{LrSchedule, TrainableParams};
use crate::run::{RunOptions, TrainState};
use crate::training_run::{RunSteps, StepPlan, StepRecord, TrainSummary, TrainingRun};
use lincal_data::artifact::Manifest;
use lincal_model::CausalLm;
use lincal_model::model::Checkpoints;
use lincal_model::synchronize;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
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
    /// Examples in the eval set.
    fn eval_len(&self) -> usize;
    /// Eval metrics over the eval examples `examples`, as sums with the weight each is
    /// averaged over (`(name, sum, weight)`, named as in `metrics.jsonl`), so that the ranks
    /// of a data-parallel job can each take a share. The same names in the same order for
    /// any range, an empty one included.
    fn evaluate(&self, examples: Range<usize>) -> Result<Vec<EvalSum>>;
    /// Dropout (LoRA) on or off.
    fn set_training(&self, training: bool);
    /// Writes the trained model (weights already promoted to full precision) into `dir`.
    fn save_final(&mut self, dir: &Path) -> Result<()>;
}

/// One eval metric's sum over some examples and the weight it is averaged over.
pub(crate) struct EvalSum {
    pub name: &'static str,
    pub sum: f64,
    pub weight: f64,
}

/// The SFT and reward-model training loop: an [`Objective`]'s optimizer steps in a run.
pub(crate) struct TrainLoop {
    run: TrainingRun,
    optimizer: Optimizer,
}

/// The trained weights and how each step updates them.
struct Optimizer {
    config: TrainingConfig,
    params: TrainableParams,
    schedule: LrSchedule,
    device: Device,
    /// The data-parallel job: each rank takes its share of every step's units.
    comm: Arc<dyn Communicator>,
}

impl TrainLoop {
    /// Opens (or resumes) the run in `options.dir`. `train_units` and `data_sha256` describe
    /// the training data, which a resume must find unchanged.
    pub fn open(
        options: &RunOptions,
        manifest: Manifest,
        config: &TrainingConfig,
        mut params: TrainableParams,
        train_units: usize,
        data_sha256: String,
        device: Device,
    ) -> Result<Self> {
        if train_units == 0 {
            return Err(TrainError::NoData("training"));
        }
        let steps_per_epoch = train_units.div_ceil(config.batch_size) as u64;
        let total_steps = config
            .max_steps
            .unwrap_or_else(|| (config.epochs * steps_per_epoch as f64).ceil().max(1.0) as u64);
        let state = TrainState::new(
            total_steps,
            steps_per_epoch,
            train_units,
            data_sha256,
            config.seed,
        );
        let plan = StepPlan {
            units_per_step: config.batch_size,
            save_every: config.save_every,
            keep_checkpoints: config.keep_checkpoints,
            keep_checkpoints_after_finish: config.keep_checkpoints_after_finish,
            snapshot_every: 0,
            save_after: 0,
        };
        let run = TrainingRun::open(options, manifest, state, plan, &mut params)?;
        let schedule = LrSchedule::new(config.schedule, config.warmup_ratio, total_steps);
        Ok(TrainLoop {
            run,
            optimizer: Optimizer {
                config: config.clone(),
                params,
                schedule,
                device,
                comm: options.comm.clone(),
            },
        })
    }

    pub fn total_steps(&self) -> u64 {
        self.run.total_steps()
    }

    /// Trains until the last step, or until `stop_at_step` steps are complete (a checkpoint is
    /// written there, so a later call resumes without loss). Finishing writes `final/`.
    pub fn train(
        &mut self,
        objective: &mut dyn Objective,
        stop_at_step: Option<u64>,
    ) -> Result<TrainSummary> {
        self.run.train(
            &mut ObjectiveSteps {
                optimizer: &mut self.optimizer,
                objective,
                order: None,
            },
            stop_at_step,
        )
    }
}

/// The steps of one `train` call.
struct ObjectiveSteps<'a> {
    optimizer: &'a mut Optimizer,
    objective: &'a mut dyn Objective,
    /// An epoch and its seeded order of the training units.
    order: Option<(u64, Vec<usize>)>,
}

impl RunSteps for ObjectiveSteps<'_> {
    fn step(&mut self, state: &TrainState, _run: &Path) -> Result<StepRecord> {
        let (batch_size, seed) = (self.optimizer.config.batch_size, self.optimizer.config.seed);
        let step = state.step;
        let epoch = step / state.steps_per_epoch;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.order = Some((epoch, epoch_order(state.train_units, seed, epoch)));
        }
        let offset = (step % state.steps_per_epoch) as usize * batch_size;
        let units = &self.order.as_ref().expect("set above").1;
        let units = &units[offset..(offset + batch_size).min(units.len())];
        let started = Instant::now();
        let (loss, tokens, lr, grad_norm) = self.optimizer.step(self.objective, units, step)?;
        synchronize(self.optimizer.device);
        let tokens_per_second = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        Ok(StepRecord {
            metrics: serde_json::json!({
                "epoch": (step + 1) as f64 / state.steps_per_epoch as f64,
                "loss": loss,
                "learning_rate": lr,
                "grad_norm": grad_norm,
                "tokens": tokens,
                "tokens_per_second": tokens_per_second,
            }),
            message: format!("loss {loss:.4}  lr {lr:.2e}  {tokens_per_second:.0} tok/s"),
        })
    }

    fn evaluates_after(&self, done: u64) -> bool {
        done.is_multiple_of(self.optimizer.config.eval_every)
    }

    fn evaluate(&mut self, _done: u64, _run: &Path) -> Result<Vec<(String, f64)>> {
        self.objective.set_training(false);
        let examples = self.objective.eval_len();
        if examples == 0 {
            return Ok(Vec::new());
        }
        // Each rank evaluates its share; the sums and weights are added over ranks.
        let comm = &self.optimizer.comm;
        let share = crate::distributed::share(examples, comm.world_size(), comm.rank());
        let sums = self.objective.evaluate(share)?;
        let mut totals: Vec<f64> = sums.iter().flat_map(|s| [s.sum, s.weight]).collect();
        if comm.world_size() > 1 {
            let mut reduced = Tensor::from_slice(&totals).to_device(self.optimizer.device);
            comm.all_reduce_sum(&mut reduced)?;
            totals = Vec::<f64>::try_from(&reduced.to_device(Device::Cpu))?;
        }
        Ok(sums
            .iter()
            .zip(totals.chunks(2))
            .map(|(s, total)| (s.name.to_string(), total[0] / total[1]))
            .collect())
    }

    fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        self.optimizer.params.save(dir)
    }

    fn save_final(&mut self, dir: &Path) -> Result<()> {
        self.optimizer.params.promote_to_masters()?;
        if self.optimizer.comm.rank() != 0 {
            return Ok(());
        }
        self.objective.save_final(dir)
    }
}

impl Optimizer {
    /// Forward and backward over the micro-batches of `units`, then one clipped AdamW update.
    /// Returns the step's mean loss, real tokens, learning rate and gradient norm.
    fn step(
        &mut self,
        objective: &mut dyn Objective,
        units: &[usize],
        step: u64,
    ) -> Result<(f64, usize, f64, f64)> {
        // The loss is averaged over the whole step's weight, on every rank, so that the
        // gradients summed over ranks are those of one process taking the whole step.
        let total_weight: f64 = units.iter().map(|&u| objective.weight(u)).sum();
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        let share = &units[crate::distributed::share(units.len(), world, rank)];
        let (loss_sum, tokens) = {
            // Dropout draws from libtorch's global generator; seeding it per step makes a
            // resumed run draw the same masks as an uninterrupted one, and holding its lock
            // over the passes keeps other threads (tests, or ranks as threads) from reseeding
            // it in between. It is released before any collective, which waits for the others.
            let _rng = lincal_model::lock_libtorch_rng();
            tch::manual_seed(self.config.seed.wrapping_add(step) as i64);
            objective.set_training(true);
            let mut loss_total: Option<Tensor> = None;
            let mut tokens = 0;
            for micro in share.chunks(self.config.micro_batch_size) {
                let (loss_sum, micro_tokens) = objective.backward(micro, total_weight)?;
                self.params.accumulate_grads();
                loss_total = Some(match loss_total {
                    Some(total) => total + loss_sum,
                    None => loss_sum,
                });
                tokens += micro_tokens;
            }
            (loss_total.map_or(0.0, |t| t.double_value(&[])), tokens)
        };
        let (loss_sum, tokens) = if world > 1 {
            let mut totals = Tensor::from_slice(&[loss_sum, tokens as f64]).to_device(self.device);
            self.comm.all_reduce_sum(&mut totals)?;
            (
                totals.double_value(&[0]),
                totals.double_value(&[1]) as usize,
            )
        } else {
            (loss_sum, tokens)
        };
        let loss = loss_sum / total_weight;
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                loss,
            });
        }
        let lr = self.config.learning_rate * self.schedule.factor(step);
        let grad_norm = self.params.step(lr, self.config.max_grad_norm)?;
        Ok((loss, tokens, lr, grad_norm))
    }
}

/// Runs `model` over a batch, turns its final hidden states into a loss sum with `loss_of`
/// and back-propagates that sum divided by `divisor`, with gradient checkpointing of the first
/// `recomputed` layers when set ([`crate::config::TrainingConfig::recomputed`]). Returns the
/// loss sum, detached.
pub(crate) fn backward_loss(
    model: &CausalLm,
    recomputed: Option<usize>,
    input_ids: &Tensor,
    positions: &Tensor,
    mask: Option<&Tensor>,
    divisor: f64,
    loss_of: impl FnOnce(&Tensor) -> Tensor,
) -> Tensor {
    let pass = TrainingPass::forward(model, recomputed, input_ids, positions, mask);
    let loss = loss_of(&pass.hidden);
    pass.backward(&(&loss / divisor));
    loss.detach()
}

/// A forward pass for training, to the final hidden states, with gradient checkpointing of
/// the first `recomputed` layers when set; [`TrainingPass::backward`] back-propagates a loss
/// computed from it.
pub(crate) struct TrainingPass<'a> {
    pub hidden: Tensor,
    model: &'a CausalLm,
    checkpoints: Option<Checkpoints>,
}

impl<'a> TrainingPass<'a> {
    pub fn forward(
        model: &'a CausalLm,
        recomputed: Option<usize>,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
    ) -> Self {
        let (hidden, checkpoints) = match recomputed {
            Some(recomputed) => {
                let (hidden, checkpoints) =
                    model.forward_checkpointed(input_ids, positions, mask, recomputed);
                (hidden, Some(checkpoints))
            }
            None => (model.forward(input_ids, positions, mask, None), None),
        };
        TrainingPass {
            hidden,
            model,
            checkpoints,
        }
    }

    /// Back-propagates `loss`, computed from the pass's `hidden` states, into every weight of
    /// the model that requires grad: the loss's graph first, then the recomputed layers.
    pub fn backward(self, loss: &Tensor) {
        loss.backward();
        if let Some(checkpoints) = self.checkpoints {
            self.model.backward_recomputed(checkpoints);
        }
    }
}
