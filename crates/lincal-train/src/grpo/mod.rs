//! Critic-free RL on the PPO rewards: GRPO and RLOO. Each step, as the algorithm reads:
//! 1. rollout: G responses to each of `prompts_per_step` prompts (every response from its own
//!    seed), scored by the [`Reward`] (the LC or Factuality reward, `scoring_rule` included),
//!    with the policy's and the reference's log-probs from forward passes;
//! 2. advantages: with the KL in the reward, each reward less β·Σ_t (log π − log π_ref); then
//!    the group comparison ([`advantages::group_advantages`]), one advantage per response for
//!    all its tokens;
//! 3. update: `epochs_per_rollout` passes over the responses in shuffled minibatches of
//!    `step_batch_size`, the clipped ratio loss (with β·k3 when the KL is in the loss) averaged
//!    as `loss_aggregation` says ([`loss::grpo_loss`]), one clipped AdamW step per minibatch.
//!
//! No value model is trained. The models, rollouts, rewards, LoRA mode (the reference is the
//! policy with its adapters off), evaluation and run lifecycle (exact resume, checkpoints,
//! snapshots, `final/`) are PPO's.

pub mod advantages;
pub mod bench;
pub mod config;
pub mod loss;

pub use advantages::{GROUP_STD_EPSILON, GroupBaseline, group_advantages};
pub use bench::bench_grpo;
pub use config::{GRPO_PRESETS, GrpoConfig, KlPlacement};
pub use loss::{GrpoLossInputs, GrpoLossStats, LossAggregation, grpo_loss, k3_kl};

use crate::config::Schedule;
use crate::error::Result;
use crate::memory::BatchPlan;
use crate::optim::{AdamWConfig, LrSchedule, TrainableParams};
use crate::ppo::models::row_index;
use crate::ppo::ranks::{Ranks, minibatches};
use crate::ppo::reward::{self, Reward, ScoreContext};
use crate::ppo::rollout::{RolloutPrompt, RolloutSettings, collect_rollouts};
use crate::ppo::{
    PpoDataReport, PpoModelPaths, PpoModels, PpoPrompt, RunPrompts, Stream, check_finite,
    check_ranks, load_rl_run, rl_step_record, rollout_lines, rollout_metrics, row_stats, row_sums,
    stream_seed, summed_kl, write_gathered_lines,
};
use crate::run::{RunOptions, TrainState};
use crate::training_run::{RunSteps, StepPlan, StepRecord, TrainSummary, TrainingRun};
use lincal_model::trace::TimedPart;
use std::ops::Range;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Trains a policy with GRPO or RLOO into a run directory.
pub struct GrpoTrainer {
    run: TrainingRun,
    steps: GrpoSteps,
    report: PpoDataReport,
    /// The batch sizes `auto_batch_sizes` chose.
    batch_plan: Option<BatchPlan>,
}

/// GRPO's side of a run: the learner, the reward and the prompts.
struct GrpoSteps {
    learner: GrpoLearner,
    reward: Box<dyn Reward>,
    prompts: RunPrompts,
    policy_dir: PathBuf,
}

/// The policy (with its reference) and its optimizer, and one GRPO step over them.
pub(crate) struct GrpoLearner {
    config: GrpoConfig,
    models: PpoModels,
    params: TrainableParams,
    schedule: LrSchedule,
    /// The data-parallel job: each rank takes whole groups of every step's responses.
    ranks: Ranks,
}

/// What one step did: its rollouts (this rank's share of the step's) and the whole step's
/// metrics, named as logged.
pub(crate) struct GrpoStepOutcome {
    pub rollouts: crate::ppo::rollout::Rollouts,
    /// The step's responses this rank rolled out.
    pub share: Range<usize>,
    pub kl_sums: Vec<f64>,
    pub metrics: Vec<(String, f64)>,
    pub update_seconds: f64,
}

impl GrpoTrainer {
    /// Loads the policy (and its reference) and the built-in reward of `config.rl_type`,
    /// tokenises the prompts and opens the run in `run.dir`, resuming from its newest
    /// checkpoint.
    pub fn new(
        paths: &PpoModelPaths,
        device: Device,
        config: &GrpoConfig,
        train: &[PpoPrompt],
        eval: &[PpoPrompt],
        run: &RunOptions,
    ) -> Result<Self> {
        Self::build(paths, device, config, None, train, eval, run)
    }

    /// As [`Self::new`] with another reward.
    pub fn with_reward(
        paths: &PpoModelPaths,
        device: Device,
        config: &GrpoConfig,
        reward: Box<dyn Reward>,
        train: &[PpoPrompt],
        eval: &[PpoPrompt],
        run: &RunOptions,
    ) -> Result<Self> {
        Self::build(paths, device, config, Some(reward), train, eval, run)
    }

    fn build(
        paths: &PpoModelPaths,
        device: Device,
        config: &GrpoConfig,
        custom_reward: Option<Box<dyn Reward>>,
        train: &[PpoPrompt],
        eval: &[PpoPrompt],
        run: &RunOptions,
    ) -> Result<Self> {
        config.validate()?;
        run.check_before_loading(train.len())?;
        check_ranks(
            run.comm.world_size(),
            ("prompts_per_step", config.prompts_per_step),
            None,
        )?;
        // The manifest keeps the config as given; the run uses the planned batch sizes.
        let given = config;
        let (config, batch_plan) = &config.planned(paths, device, run.comm.world_size())?;
        let custom = custom_reward.is_some();
        let kind_of = |device| config.precision.kind(device);
        let (models, reward, prompts) = load_rl_run(
            paths,
            device,
            &config.model_settings(&kind_of),
            custom_reward,
            train,
            eval,
            (config.query_len, config.max_eval_prompts),
            ("prompts_per_step", config.prompts_per_step),
        )?;
        let report = prompts.report();
        let mut learner = GrpoLearner::new(config, models, Ranks::new(run.comm.clone(), device));
        let manifest = paths.manifest("grpo", given, custom);
        let kept = report.train_prompts;
        let state = TrainState::new(
            config.total_steps,
            (kept / config.prompts_per_step) as u64,
            kept,
            prompts.train.digest(train),
            config.seed,
        );
        let plan = StepPlan {
            units_per_step: config.prompts_per_step,
            save_every: config.save_every,
            keep_checkpoints: config.keep_checkpoints,
            keep_checkpoints_after_finish: config.keep_checkpoints_after_finish,
            snapshot_every: config.snapshot_every,
            save_after: config.save_after,
        };
        let training_run = TrainingRun::open(run, manifest, state, plan, &mut learner.params)?;
        Ok(GrpoTrainer {
            run: training_run,
            steps: GrpoSteps {
                learner,
                reward,
                prompts,
                policy_dir: paths.policy.clone(),
            },
            report,
            batch_plan: batch_plan.clone(),
        })
    }

    pub fn data_report(&self) -> &PpoDataReport {
        &self.report
    }

    /// The batch sizes `auto_batch_sizes` chose from free memory, if it is on.
    pub fn batch_plan(&self) -> Option<&BatchPlan> {
        self.batch_plan.as_ref()
    }

    pub fn total_steps(&self) -> u64 {
        self.run.total_steps()
    }

    /// Trains to the end (writing `final/`), or until `stop_at_step` steps are complete.
    pub fn train(&mut self, stop_at_step: Option<u64>) -> Result<TrainSummary> {
        self.run.train(&mut self.steps, stop_at_step)
    }
}

impl GrpoLearner {
    pub(crate) fn new(config: &GrpoConfig, models: PpoModels, ranks: Ranks) -> Self {
        let adam = AdamWConfig {
            beta1: config.adam_beta1,
            beta2: config.adam_beta2,
            eps: config.adam_epsilon,
            weight_decay: config.weight_decay,
        };
        let params = TrainableParams::sharded(
            models.trainable(),
            adam,
            config.precision.master_weights(),
            ranks.comm.clone(),
        );
        let schedule = LrSchedule {
            schedule: Schedule::Linear,
            warmup_steps: config.warmup_steps,
            total_steps: config.total_steps,
        };
        GrpoLearner {
            config: config.clone(),
            models,
            params,
            schedule,
            ranks,
        }
    }

    pub(crate) fn num_parameters(&self) -> i64 {
        self.params.num_parameters()
    }

    fn settings(&self) -> RolloutSettings {
        let c = &self.config;
        RolloutSettings {
            temperature: c.temperature,
            response_len: c.response_len,
            generation_batch_size: c.generation_batch_size,
            forward_batch_size: c.forward_batch_size,
            full_width: false,
            with_values: false,
        }
    }

    /// `epochs_per_rollout` passes over the step's `rows` responses in shuffled minibatches,
    /// one clipped AdamW step each; this rank passes over the minibatches' rows in its
    /// `share`, which `rollouts` holds. Returns the loss statistics, the learning rate and
    /// the last gradient norm.
    fn update(
        &mut self,
        rollouts: &crate::ppo::rollout::Rollouts,
        advantages: &Tensor,
        step: u64,
        (rows, share): (usize, &Range<usize>),
    ) -> Result<(GrpoLossStats, f64, f64)> {
        let c = &self.config;
        self.models.set_training(true);
        let device = self.models.policy.model.device();
        let mask = &rollouts.seqs.response_mask;
        let learning_rate = c.learning_rate * self.schedule.factor(step);
        let minibatch_seed = stream_seed(c.seed, Stream::Minibatches, step);
        let kl_in_loss = c.kl_placement == KlPlacement::Loss && c.kl_coef > 0.0;
        let (mut stats, mut grad_norm) = (GrpoLossStats::default(), 0.0);
        let passes = minibatches(
            rows,
            share,
            (minibatch_seed, c.epochs_per_rollout, c.step_batch_size),
        );
        for (pass, local) in passes.iter().enumerate() {
            let units = self.ranks.step_total(local, |rows| {
                c.loss_aggregation.units(
                    &mask.index_select(0, &row_index(rows, device)),
                    c.response_len,
                )
            })?;
            {
                let _rng = self.ranks.seed_dropout(c.seed, step, pass);
                for micro in local.chunks(c.micro_batch_size) {
                    let batch = rollouts.seqs.batch(micro);
                    let index = row_index(micro, device);
                    let pick = |t: &Tensor| t.index_select(0, &index);
                    let (policy_pass, logprobs) = batch.policy_training_pass(
                        &self.models.policy.model,
                        c.recomputed(),
                        c.temperature,
                    );
                    let ref_logprobs = pick(&rollouts.ref_logprobs);
                    let inputs = GrpoLossInputs {
                        logprobs: &logprobs,
                        old_logprobs: &pick(&rollouts.logprobs),
                        ref_logprobs: kl_in_loss.then_some(&ref_logprobs),
                        advantages: &pick(advantages),
                        mask: &pick(mask),
                    };
                    let (loss, micro_stats) =
                        grpo_loss(&inputs, c.cliprange, c.kl_coef, c.loss_aggregation);
                    let total = micro_stats.policy_loss + c.kl_coef * micro_stats.kl;
                    check_finite(&self.models, total, step, || micro_stats.tokens)?;
                    policy_pass.backward(&(loss / units));
                    self.params.accumulate_grads();
                    stats.accumulate(&micro_stats);
                }
            }
            grad_norm = self.params.step(learning_rate, c.max_grad_norm)?;
        }
        self.models.set_training(false);
        Ok((stats, learning_rate, grad_norm))
    }
}

impl GrpoLearner {
    /// One step on `inputs`, each prompt `group_size` times in a row, after `step` completed
    /// steps: rollouts, group advantages, the update; this rank takes its share of the groups.
    pub(crate) fn step(
        &mut self,
        reward: &mut dyn Reward,
        inputs: &[RolloutPrompt<'_>],
        step: u64,
    ) -> Result<GrpoStepOutcome> {
        let c = self.config.clone();
        let share = self.ranks.share(inputs.len(), c.group_size);
        let sampling = reward::row_seeds(stream_seed(c.seed, Stream::Sampling, step), inputs.len());
        let context = ScoreContext {
            seed: stream_seed(c.seed, Stream::Extraction, step),
            first_row: share.start,
            evaluation: false,
        };
        let rollouts = collect_rollouts(
            &self.models,
            reward,
            &inputs[share.clone()],
            &sampling[share.clone()],
            context,
            &self.settings(),
        )?;
        let (kl_sums, log_ratio_sums) = summed_kl(&rollouts);
        let mut rewards = rollouts.scores();
        if c.kl_placement == KlPlacement::Reward {
            for (reward, log_ratio) in rewards.iter_mut().zip(&log_ratio_sums) {
                *reward -= c.kl_coef * log_ratio;
            }
        }
        // Groups are whole on each rank: their advantages need no other rank.
        let advantages = group_advantages(&rewards, c.group_size, c.baseline)?;
        let device = self.models.policy.model.device();
        let advantages_tensor = Tensor::from_slice(&advantages)
            .to_kind(Kind::Float)
            .to_device(device);
        let part = TimedPart::start(c"update");
        let (stats, learning_rate, grad_norm) =
            self.update(&rollouts, &advantages_tensor, step, (inputs.len(), &share))?;
        let update_seconds = part.finish(device);
        let k3 = k3_kl(&rollouts.logprobs, &rollouts.ref_logprobs) * &rollouts.seqs.response_mask;
        // Groups whose rewards were all equal give no gradient: their share is worth watching.
        let flat_groups = rewards
            .chunks(c.group_size)
            .filter(|g| g.iter().all(|r| *r == g[0]))
            .count() as f64;
        let sums = self.ranks.sum(&[
            row_sums(&k3).iter().sum::<f64>(),
            advantages.iter().map(|a| a.abs()).sum::<f64>(),
            flat_groups,
            stats.policy_loss,
            stats.clipfrac,
            stats.approx_kl,
            stats.tokens,
        ])?;
        let n = inputs.len() as f64;
        let tokens = sums[6].max(1.0);
        let rows = self
            .ranks
            .gather_all(row_stats(&rollouts, &kl_sums, &log_ratio_sums))?;
        let mut metrics = rollout_metrics(&rows, "");
        metrics.extend([
            ("kl_k3".to_string(), sums[0] / n),
            ("advantage_abs".to_string(), sums[1] / n),
            (
                "flat_groups".to_string(),
                sums[2] / (inputs.len() / c.group_size) as f64,
            ),
            ("policy_loss".to_string(), sums[3] / tokens),
            ("policy_clipfrac".to_string(), sums[4] / tokens),
            ("approx_kl".to_string(), sums[5] / tokens),
            ("learning_rate".to_string(), learning_rate),
            ("grad_norm".to_string(), grad_norm),
            ("update_seconds".to_string(), update_seconds),
        ]);
        metrics.extend(rollouts.timing.metrics());
        Ok(GrpoStepOutcome {
            rollouts,
            share,
            kl_sums,
            metrics,
            update_seconds,
        })
    }
}

impl RunSteps for GrpoSteps {
    /// One step on the step's prompts, each `group_size` times; with `dump_rollouts` the
    /// responses go to `rollouts/step-N.jsonl`.
    fn step(&mut self, state: &TrainState, run: &Path) -> Result<StepRecord> {
        let step = state.step;
        let c = &self.learner.config;
        let rows = self
            .prompts
            .step_rows(c.prompts_per_step, c.seed, step, state.steps_per_epoch);
        // Each prompt G times, consecutively: a group.
        let group_rows: Vec<usize> = rows
            .iter()
            .flat_map(|&r| std::iter::repeat_n(r, c.group_size))
            .collect();
        let (inputs, prompts) = self.prompts.train_inputs(&group_rows);
        let outcome = self.learner.step(self.reward.as_mut(), &inputs, step)?;
        if self.learner.config.dump_rollouts {
            let lines = rollout_lines(
                &outcome.rollouts,
                &prompts[outcome.share.clone()],
                &outcome.kl_sums,
            );
            write_gathered_lines(&self.learner.ranks, run, "rollouts", step + 1, lines)?;
        }
        Ok(rl_step_record(
            &outcome.metrics,
            "kl_k3",
            outcome.update_seconds,
        ))
    }

    fn evaluates_after(&self, done: u64) -> bool {
        done == 1 || done.is_multiple_of(self.learner.config.eval_every)
    }

    fn evaluate(&mut self, step: u64, run: &Path) -> Result<Vec<(String, f64)>> {
        self.prompts.evaluate(
            &self.learner.models,
            self.reward.as_mut(),
            &self.learner.settings(),
            &self.learner.ranks,
            self.learner.config.seed,
            step,
            run,
        )
    }

    /// The policy weights and the optimizer state: all a resume needs.
    fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        self.learner.params.save(dir)
    }

    /// The policy (rank 0 writes).
    fn save_final(&mut self, dir: &Path) -> Result<()> {
        self.learner.params.promote_to_masters()?;
        if !self.learner.ranks.writes() {
            return Ok(());
        }
        self.learner
            .models
            .policy
            .save_causal_lm(dir, &self.policy_dir)
    }

    fn save_snapshot(&self, dir: &Path) -> Result<()> {
        match self.learner.ranks.writes() {
            true => self.learner.models.policy.save_snapshot(dir),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
