//! PPO for decision-based RL (LC RL) and Factuality RL (SPEC 1.5-1.8, 2).
//!
//! Each PPO step is the algorithm, one named function per part:
//! 1. rollout ([`rollout`]): sample a response to each of `rollout_batch_size` prompts at
//!    temperature 0.7, score it with the [`Reward`], and compute the policy's and the
//!    reference's log-probs and the values by forward passes over query + response;
//! 2. advantages ([`advantages::estimate_advantages`]): −β·max(KL, 0) per token plus the
//!    sequence reward on the last real token, scale-only reward whitening, GAE (γ = λ = 1),
//!    advantage whitening;
//! 3. update: `epochs_per_rollout` passes over the rollouts in minibatches of
//!    `step_batch_size` (micro-batches accumulated), clipped policy and value losses
//!    ([`loss`]; they share no weights, so the policy's micro-batches run first, then the
//!    value model's, and only one model's activations are held at a time), one clipped AdamW
//!    step per minibatch; the learning rate follows a linear
//!    warmup and decay stepped once per PPO step, and the KL controller steps after.
//!
//! Deliberate differences from the reference:
//! - padded positions are left out of whitening and losses (`reference_padding = true`
//!   restores the reference's statistics over all `response_len` positions, SPEC 8 item 5);
//! - losses are averaged over the positions of the whole optimizer step rather than per
//!   micro-batch, so accumulation equals one large batch;
//! - AdamW is exact f32 rather than 8-bit (see [`crate::optim`]);
//! - extracted answers are parsed by `lincal_data::parse::parse_extracted_answers` (de-duplicated
//!   by normal form); an extraction that does not parse (e.g. empty) counts as no answer and
//!   shows in the `extraction_unparsed` metric, where the reference would forecast its raw text;
//! - queries are left-padded to the longest in the batch (at most `query_len`) and, unless
//!   `reference_padding`, responses to the longest response: with the padding masked, the
//!   same computation on fewer positions.
//!
//! The models are assembled in [`models`]. The run itself (opening or resuming its directory,
//! step bookkeeping, metrics, checkpoints, `final/`) is the lifecycle every trainer shares
//! (`crate::training_run`); this module supplies the steps. Only the policy is saved at the
//! end, as the reference does. Checkpoints hold policy, value, optimizer and KL-controller
//! state; the prompt order, sampling seeds and minibatch order are functions of the seed and
//! the step, so a resumed run continues exactly.
//!
//! ```text
//! run/
//!   manifest.json, metrics.jsonl, events.out.tfevents.*   as every run (see crate::run)
//!   rollouts/step-00000001.jsonl   query, response, reward and its terms, reader details
//!   eval/step-00000020.jsonl       the same for the validation prompts
//!   checkpoints/step-00000020/     params, optimizer, state.json, ppo_state.json
//!   final/                         the policy (HF layout, tokenizer; LoRA: merged + adapter/)
//! ```

pub mod advantages;
pub mod bench;
pub mod config;
pub mod loss;
pub mod models;
pub(crate) mod ranks;
pub mod reward;
pub mod rollout;
#[cfg(test)]
mod tests;

pub use bench::{RlBenchSteps, RlStepBench, bench_ppo, bench_ppo_step};
pub use config::{PPO_PRESETS, PpoConfig, RewardConfig, RlType, ScoringRule};
pub use models::{PpoModelPaths, PpoModels, ValueModel};
pub use reward::{
    BinaryCorrectnessReward, DecisionReward, Reward, RewardInput, RewardOutput, ScoreContext,
};
pub use rollout::{PpoPrompt, RolloutTiming};

use crate::config::Schedule;
use crate::data::epoch_order;
use crate::error::{Result, TrainError};
use crate::memory::BatchPlan;
use crate::optim::{AdamWConfig, LrSchedule, TrainableParams};
use crate::reward_model::RewardModel;
use crate::run::{RunOptions, TrainState};
use crate::training_run::{RunSteps, StepPlan, StepRecord, TrainSummary, TrainingRun};
use advantages::{
    AdvantageInputs, AdvantageSettings, KlController, estimate_advantages, kl_penalty,
};
use lincal_model::CausalLm;
use lincal_model::trace::TimedPart;
use loss::{LossStats, PolicyLossInputs, ValueLossInputs, summed_policy_loss, summed_value_loss};
use models::{load_models, row_index, templates};
use rand::{RngCore, SeedableRng};
use ranks::{Ranks, minibatches};
use rollout::{RolloutPrompt, RolloutSettings, Rollouts, TokenizedPrompts, collect_rollouts};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The checkpoint file holding the KL controller.
pub const PPO_STATE_FILE: &str = "ppo_state.json";

/// The independent random streams of a run; each draw is a function of (seed, stream, step).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Sampling = 1,
    Extraction = 2,
    Minibatches = 3,
    EvalSampling = 4,
    EvalExtraction = 5,
}

pub(crate) fn stream_seed(seed: u64, stream: Stream, step: u64) -> u64 {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream as u64);
    rng.set_word_pos(u128::from(step) * 2);
    rng.next_u64()
}

/// The policy, value model, optimizer and KL controller, and one PPO step over them.
pub(crate) struct Learner {
    config: PpoConfig,
    models: PpoModels,
    params: TrainableParams,
    schedule: LrSchedule,
    kl: KlController,
    /// The data-parallel job: each rank takes its share of every step's rollouts.
    ranks: Ranks,
}

/// What one PPO step did: its rollouts (this rank's share of the step's) and the whole
/// step's metrics, named as logged.
pub(crate) struct StepOutcome {
    rollouts: Rollouts,
    /// The step's rows this rank rolled out.
    share: Range<usize>,
    /// Per rollout, the summed clamped KL to the reference (SPEC 2.4).
    kl_sums: Vec<f64>,
    metrics: Vec<(String, f64)>,
    update_seconds: f64,
}

impl Learner {
    fn new(config: &PpoConfig, models: PpoModels, ranks: Ranks) -> Self {
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
        let kl = KlController {
            value: config.kl_coef,
            adaptive: config
                .adaptive_kl
                .then_some((config.kl_target, config.kl_k_beta)),
        };
        Learner {
            config: config.clone(),
            models,
            params,
            schedule,
            kl,
            ranks,
        }
    }

    fn settings(&self, with_values: bool) -> RolloutSettings {
        let c = &self.config;
        RolloutSettings {
            temperature: c.temperature,
            response_len: c.response_len,
            generation_batch_size: c.generation_batch_size,
            forward_batch_size: c.forward_batch_size,
            full_width: c.reference_padding,
            with_values,
        }
    }

    /// 1 on the positions that statistics and losses cover.
    fn weights(&self, rollouts: &Rollouts) -> Tensor {
        let mask = &rollouts.seqs.response_mask;
        if self.config.reference_padding {
            mask.ones_like()
        } else {
            mask.shallow_clone()
        }
    }

    /// One PPO step on `prompts`, after `step` completed steps (SPEC 2.9); this rank rolls
    /// out and trains on its share of them.
    fn step(
        &mut self,
        reward: &mut dyn Reward,
        prompts: &[RolloutPrompt<'_>],
        step: u64,
    ) -> Result<StepOutcome> {
        // Rollout: sample, score, forward passes.
        let seed = self.config.seed;
        let share = self.ranks.share(prompts.len(), 1);
        let context = ScoreContext {
            seed: stream_seed(seed, Stream::Extraction, step),
            first_row: share.start,
            evaluation: false,
        };
        let sampling = reward::row_seeds(stream_seed(seed, Stream::Sampling, step), prompts.len());
        let rollouts = collect_rollouts(
            &self.models,
            reward,
            &prompts[share.clone()],
            &sampling[share.clone()],
            context,
            &self.settings(true),
        )?;
        // Advantages.
        let weights = self.weights(&rollouts);
        let kl = kl_penalty(&rollouts.logprobs, &rollouts.ref_logprobs);
        let values = rollouts
            .values
            .as_ref()
            .expect("training rollouts have values");
        let c = &self.config;
        let inputs = AdvantageInputs {
            scores: &rollouts.scores(),
            kl: &kl,
            lengths: &rollouts.seqs.lengths,
            values,
            weights: &weights,
        };
        let advantages = estimate_advantages(
            &inputs,
            &AdvantageSettings {
                kl_coef: self.kl.value,
                whiten_rewards: c.whiten_rewards,
                whiten_group_size: c.whiten_group_size,
                gamma: c.gamma,
                lam: c.lam,
            },
            &*self.ranks.comm,
        )?;
        // Update.
        let part = TimedPart::start(c"update");
        let (stats, learning_rate, grad_norm) = self.update(
            &rollouts,
            &advantages,
            &weights,
            step,
            (prompts.len(), &share),
        )?;
        let update_seconds = part.finish(self.models.policy.model.device());

        // Statistics of the whole step, then the KL controller's step on the mean summed
        // clamped KL, which the reference also logs as `kl`.
        let (kl_sums, log_ratio_sums) = summed_kl(&rollouts);
        let rows = self
            .ranks
            .gather_all(row_stats(&rollouts, &kl_sums, &log_ratio_sums))?;
        let mut metrics = rollout_metrics(&rows, "");
        let weighted = |t: &Tensor| (t * &weights).sum(Kind::Double).double_value(&[]);
        let sums = self.ranks.sum(&[
            weights.sum(Kind::Double).double_value(&[]),
            weighted(values),
            weighted(&advantages.returns),
            stats.policy_loss,
            stats.value_loss,
            stats.policy_clipfrac,
            stats.value_clipfrac,
            stats.approx_kl,
            stats.weight,
        ])?;
        let stats = LossStats {
            policy_loss: sums[3],
            value_loss: sums[4],
            policy_clipfrac: sums[5],
            value_clipfrac: sums[6],
            approx_kl: sums[7],
            weight: sums[8],
        };
        let kl_mean = rows.iter().map(|r| r.kl).sum::<f64>() / rows.len() as f64;
        metrics.extend([
            ("kl_penalty".to_string(), -self.kl.value * kl_mean),
            ("kl_coef".to_string(), self.kl.value),
            ("values".to_string(), sums[1] / sums[0]),
            ("returns".to_string(), sums[2] / sums[0]),
            ("learning_rate".to_string(), learning_rate),
            ("grad_norm".to_string(), grad_norm),
        ]);
        metrics.extend(stats.means().into_iter().map(|(k, v)| (k.to_string(), v)));
        metrics.extend(rollouts.timing.metrics());
        metrics.push(("update_seconds".to_string(), update_seconds));
        self.kl.step(kl_mean);
        Ok(StepOutcome {
            rollouts,
            share,
            kl_sums,
            metrics,
            update_seconds,
        })
    }

    /// `epochs_per_rollout` passes over the step's `rows` rollouts in shuffled minibatches of
    /// `step_batch_size`, one clipped AdamW step each (SPEC 2.7); this rank passes over the
    /// minibatches' rows in its `share`, which `rollouts` holds. Returns the loss statistics,
    /// the learning rate and the last gradient norm.
    fn update(
        &mut self,
        rollouts: &Rollouts,
        advantages: &advantages::Advantages,
        weights: &Tensor,
        step: u64,
        (rows, share): (usize, &Range<usize>),
    ) -> Result<(LossStats, f64, f64)> {
        let c = &self.config;
        self.models.set_training(true);
        let device = self.models.policy.model.device();
        let old_values = rollouts
            .values
            .as_ref()
            .expect("training rollouts have values");
        let learning_rate = c.learning_rate * self.schedule.factor(step);
        let minibatch_seed = stream_seed(c.seed, Stream::Minibatches, step);
        let (mut stats, mut grad_norm) = (LossStats::default(), 0.0);
        let passes = minibatches(
            rows,
            share,
            (minibatch_seed, c.epochs_per_rollout, c.step_batch_size),
        );
        for (pass, local) in passes.iter().enumerate() {
            let total_weight = self.ranks.step_total(local, |rows| {
                weights
                    .index_select(0, &row_index(rows, device))
                    .sum(Kind::Double)
                    .double_value(&[])
            })?;
            // The policy's and the value model's losses share no weights: each model runs its
            // micro-batches on its own, so that one model's activations live at a time (the
            // memory plan counts the larger), and the gradients are those of the summed loss.
            {
                let _rng = self.ranks.seed_dropout(c.seed, step, pass);
                let policy = &self.models.policy.model;
                for micro in local.chunks(c.micro_batch_size) {
                    let batch = rollouts.seqs.batch(micro);
                    let index = row_index(micro, device);
                    let pick = |t: &Tensor| t.index_select(0, &index);
                    let (policy_pass, logprobs) =
                        batch.policy_training_pass(policy, c.recomputed(), c.temperature);
                    let inputs = PolicyLossInputs {
                        logprobs: &logprobs,
                        old_logprobs: &pick(&rollouts.logprobs),
                        advantages: &pick(&advantages.advantages),
                        weights: &pick(weights),
                    };
                    let (loss, micro_stats) = summed_policy_loss(&inputs, c.cliprange);
                    check_finite(&self.models, micro_stats.policy_loss, step, || {
                        micro_stats.weight
                    })?;
                    policy_pass.backward(&(loss / total_weight));
                    self.params.accumulate_grads();
                    stats.accumulate(&micro_stats);
                }
                let value = self
                    .models
                    .value
                    .as_ref()
                    .expect("PPO's models have a value model");
                for micro in local.chunks(c.micro_batch_size) {
                    let batch = rollouts.seqs.batch(micro);
                    let index = row_index(micro, device);
                    let pick = |t: &Tensor| t.index_select(0, &index);
                    let value_pass = batch.training_pass(value.backbone.backbone(), c.recomputed());
                    let inputs = ValueLossInputs {
                        values: &value.values_of_hidden(&value_pass.hidden, &batch),
                        old_values: &pick(old_values),
                        returns: &pick(&advantages.returns),
                        weights: &pick(weights),
                    };
                    let (loss, micro_stats) = summed_value_loss(&inputs, c.cliprange_value);
                    check_finite(&self.models, micro_stats.value_loss, step, || {
                        inputs.weights.sum(Kind::Double).double_value(&[])
                    })?;
                    value_pass.backward(&(loss * c.vf_coef / total_weight));
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

/// Stops an RL run's update (PPO's, GRPO's) before a loss that is not finite reaches the
/// weights: `sum` is a micro-batch's summed loss, `weight` gives the positions it sums over
/// (asked only on failure, for the error's mean), `step` the step counted from 0.
pub(crate) fn check_finite(
    models: &PpoModels,
    sum: f64,
    step: u64,
    weight: impl FnOnce() -> f64,
) -> Result<()> {
    if sum.is_finite() {
        return Ok(());
    }
    models.set_training(false);
    Err(TrainError::Diverged {
        step: step + 1,
        loss: sum / weight().max(1.0),
    })
}

/// Row sums `[B]` of `[B, W]` (padding holds 0), on the host.
pub(crate) fn row_sums(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(
        t.sum_dim_intlist(1, false, Kind::Double)
            .to_device(Device::Cpu),
    )
    .expect("1-d sums")
}

/// Per rollout, the summed clamped KL to the reference ([`kl_penalty`]: what the reference logs
/// and steers the KL coefficient by) and the summed log-ratio (unclamped).
pub(crate) fn summed_kl(rollouts: &Rollouts) -> (Vec<f64>, Vec<f64>) {
    (
        row_sums(&kl_penalty(&rollouts.logprobs, &rollouts.ref_logprobs)),
        row_sums(&(&rollouts.logprobs - &rollouts.ref_logprobs)),
    )
}

/// What the step's metrics need of one rollout; the ranks of a data-parallel job gather them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RowStats {
    pub score: f64,
    pub terms: BTreeMap<String, f64>,
    /// The summed clamped KL to the reference, and the summed log-ratio (unclamped).
    pub kl: f64,
    pub log_ratio: f64,
    /// The response's summed per-token entropy.
    pub entropy: f64,
    pub tokens: i64,
    pub eos: bool,
}

/// The [`RowStats`] of `rollouts`, with their summed KLs ([`summed_kl`]).
pub(crate) fn row_stats(
    rollouts: &Rollouts,
    kl_sums: &[f64],
    log_ratio_sums: &[f64],
) -> Vec<RowStats> {
    let entropy = row_sums(&rollouts.entropy);
    (0..rollouts.rewards.len())
        .map(|i| RowStats {
            score: rollouts.rewards[i].reward,
            terms: rollouts.rewards[i].terms.clone(),
            kl: kl_sums[i],
            log_ratio: log_ratio_sums[i],
            entropy: entropy[i],
            tokens: rollouts.seqs.lengths[i],
            eos: rollouts.ended_with_eos[i],
        })
        .collect()
}

/// Reward, its terms, KL (`kl` clamped, `kl_unclamped`), entropy and length statistics of
/// rollouts, names prefixed.
pub(crate) fn rollout_metrics(rows: &[RowStats], prefix: &str) -> Vec<(String, f64)> {
    let n = rows.len() as f64;
    let mean_of = |value: fn(&RowStats) -> f64| rows.iter().map(value).sum::<f64>() / n;
    let mean = mean_of(|r| r.score);
    let std = (rows
        .iter()
        .map(|r| (r.score - mean) * (r.score - mean))
        .sum::<f64>()
        / n)
        .sqrt();
    let mut terms: BTreeMap<&str, f64> = BTreeMap::new();
    for row in rows {
        for (name, value) in &row.terms {
            *terms.entry(name.as_str()).or_default() += value / n;
        }
    }
    let tokens: i64 = rows.iter().map(|r| r.tokens).sum();
    let entropy = rows.iter().map(|r| r.entropy).sum::<f64>() / tokens.max(1) as f64;
    let mut metrics = vec![
        ("reward".to_string(), mean),
        ("reward_std".to_string(), std),
    ];
    metrics.extend(terms.into_iter().map(|(k, v)| (k.to_string(), v)));
    metrics.extend([
        ("kl".to_string(), mean_of(|r| r.kl)),
        ("kl_unclamped".to_string(), mean_of(|r| r.log_ratio)),
        ("entropy".to_string(), entropy),
        ("response_length".to_string(), tokens as f64 / n),
        (
            "eos_fraction".to_string(),
            rows.iter().filter(|r| r.eos).count() as f64 / n,
        ),
    ]);
    metrics
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
}

/// One JSON line per rollout: the prompt, the response, its reward, terms and reader details.
pub(crate) fn rollout_lines(
    rollouts: &Rollouts,
    prompts: &[&PpoPrompt],
    kl_sums: &[f64],
) -> String {
    let mut out = String::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let reward = &rollouts.rewards[i];
        let record = serde_json::json!({
            "question_id": prompt.question_id,
            "query": prompt.query,
            "question": prompt.question,
            "answer": prompt.answer,
            "response": rollouts.responses[i],
            "response_tokens": rollouts.seqs.lengths[i],
            "ended_with_eos": rollouts.ended_with_eos[i],
            "reward": reward.reward,
            "terms": reward.terms,
            "details": reward.details,
            "kl": kl_sums[i],
        });
        out.push_str(&record.to_string());
        out.push('\n');
    }
    out
}

/// The metric `name` of a step's `metrics`, NaN when it was not logged.
pub(crate) fn metric(metrics: &[(String, f64)], name: &str) -> f64 {
    metrics
        .iter()
        .find(|(n, _)| n == name)
        .map_or(f64::NAN, |(_, v)| *v)
}

/// The `metrics.jsonl` record of an RL step and its progress line, which shows the reward,
/// the KL named `kl` and the update's time.
pub(crate) fn rl_step_record(
    metrics: &[(String, f64)],
    kl: &str,
    update_seconds: f64,
) -> StepRecord {
    let mut record = serde_json::json!({});
    for (name, value) in metrics {
        record[name] = (*value).into();
    }
    let message = format!(
        "reward {:.3}  kl {:.3}  update {:.1}s",
        metric(metrics, "reward"),
        metric(metrics, kl),
        update_seconds
    );
    StepRecord {
        metrics: record,
        message,
    }
}

/// The models and reward of an RL run (see [`load_models`]; the reward model is read with
/// `RewardModel::load`) and its tokenised prompts, a step taking `per_step` of them.
#[allow(clippy::too_many_arguments, reason = "the parts of a run, each named")]
pub(crate) fn load_rl_run(
    paths: &PpoModelPaths,
    device: Device,
    settings: &models::ModelSettings<'_>,
    custom_reward: Option<Box<dyn Reward>>,
    train: &[PpoPrompt],
    eval: &[PpoPrompt],
    (query_len, max_eval_prompts): (usize, Option<usize>),
    per_step: (&str, usize),
) -> Result<(PpoModels, Box<dyn Reward>, RunPrompts)> {
    let (models, reward) = load_models(
        paths,
        device,
        settings,
        custom_reward,
        &|dir, device, kind| RewardModel::load(dir, device, Some(kind)),
    )?;
    let prompts = RunPrompts::new(
        &templates(settings.templates)?,
        &models.policy.tokenizer,
        train,
        eval,
        query_len,
        max_eval_prompts,
        per_step,
    )?;
    Ok((models, reward, prompts))
}

/// What the prompts looked like after tokenisation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PpoDataReport {
    pub train_prompts: usize,
    /// Training prompts longer than `query_len` tokens, left out (SPEC 2.2).
    pub dropped_long_prompts: usize,
    pub eval_prompts: usize,
}

/// The KL controller as checkpointed (the bits keep β exact across a resume).
#[derive(Serialize, Deserialize)]
struct PpoState {
    kl_coef: f64,
    kl_coef_bits: u64,
}

/// Trains a policy with PPO into a run directory.
pub struct PpoTrainer {
    run: TrainingRun,
    steps: PpoSteps,
    report: PpoDataReport,
    /// The batch sizes `auto_batch_sizes` chose.
    batch_plan: Option<BatchPlan>,
}

/// PPO's side of a run: the learner, the reward and the tokenised prompts.
struct PpoSteps {
    learner: Learner,
    reward: Box<dyn Reward>,
    prompts: RunPrompts,
    policy_dir: PathBuf,
}

/// The training and validation prompts of an RL run (PPO, GRPO), as given and tokenised.
pub(crate) struct RunPrompts {
    pub train_prompts: Vec<PpoPrompt>,
    pub train: TokenizedPrompts,
    pub eval_prompts: Vec<PpoPrompt>,
    pub eval: TokenizedPrompts,
}

impl RunPrompts {
    /// Tokenises `train` (dropping those longer than `query_len`) and the first
    /// `max_eval_prompts` of `eval`, and checks that a step's `per_step` prompts are there.
    pub(crate) fn new(
        templates: &lincal_data::prompts::Templates,
        tokenizer: &lincal_model::Tokenizer,
        train: &[PpoPrompt],
        eval: &[PpoPrompt],
        query_len: usize,
        max_eval_prompts: Option<usize>,
        per_step: (&str, usize),
    ) -> Result<Self> {
        let train_tokens = TokenizedPrompts::new(templates, tokenizer, train, Some(query_len))?;
        let eval = &eval[..max_eval_prompts.unwrap_or(eval.len()).min(eval.len())];
        let eval_tokens = TokenizedPrompts::new(templates, tokenizer, eval, None)?;
        let kept = train_tokens.ids.len();
        let (field, needed) = per_step;
        if kept < needed {
            return Err(TrainError::config(
                field,
                format!(
                    "is {needed}, but only {kept} training prompts fit in query_len {query_len} \
                     ({} longer ones dropped); give more prompts or lower {field}",
                    train_tokens.dropped
                ),
            ));
        }
        Ok(RunPrompts {
            train_prompts: train.to_vec(),
            train: train_tokens,
            eval_prompts: eval.to_vec(),
            eval: eval_tokens,
        })
    }

    pub(crate) fn report(&self) -> PpoDataReport {
        PpoDataReport {
            train_prompts: self.train.ids.len(),
            dropped_long_prompts: self.train.dropped,
            eval_prompts: self.eval.ids.len(),
        }
    }

    /// The kept training prompts of step `step`, `per_step` of them: epochs are seeded
    /// shuffles of the prompts, cut into batches (a last partial batch is dropped), cycled
    /// forever.
    pub(crate) fn step_rows(
        &self,
        per_step: usize,
        seed: u64,
        step: u64,
        steps_per_epoch: u64,
    ) -> Vec<usize> {
        let order = epoch_order(self.train.ids.len(), seed, step / steps_per_epoch);
        let offset = (step % steps_per_epoch) as usize * per_step;
        order[offset..offset + per_step].to_vec()
    }

    /// The rollout inputs of training rows `rows` and their prompts.
    pub(crate) fn train_inputs(&self, rows: &[usize]) -> (Vec<RolloutPrompt<'_>>, Vec<&PpoPrompt>) {
        let prompts: Vec<&PpoPrompt> = rows
            .iter()
            .map(|&r| &self.train_prompts[self.train.index[r]])
            .collect();
        let inputs = rows
            .iter()
            .zip(&prompts)
            .map(|(&r, p)| RolloutPrompt {
                ids: &self.train.ids[r],
                question: &p.question,
                answer: &p.answer,
            })
            .collect();
        (inputs, prompts)
    }

    /// Samples and scores a response to every validation prompt with the current policy (each
    /// rank its share), writes the rollouts to `eval/step-N.jsonl` and returns the means as
    /// `eval_*`.
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts of an evaluation, each named"
    )]
    pub(crate) fn evaluate(
        &self,
        models: &PpoModels,
        reward: &mut dyn Reward,
        settings: &RolloutSettings,
        ranks: &Ranks,
        seed: u64,
        step: u64,
        run: &Path,
    ) -> Result<Vec<(String, f64)>> {
        if self.eval.ids.is_empty() {
            return Ok(Vec::new());
        }
        let prompts: Vec<&PpoPrompt> = self
            .eval
            .index
            .iter()
            .map(|&i| &self.eval_prompts[i])
            .collect();
        let inputs: Vec<RolloutPrompt> = self
            .eval
            .ids
            .iter()
            .zip(&prompts)
            .map(|(ids, p)| RolloutPrompt {
                ids,
                question: &p.question,
                answer: &p.answer,
            })
            .collect();
        let sampling =
            reward::row_seeds(stream_seed(seed, Stream::EvalSampling, step), inputs.len());
        let share = ranks.share(inputs.len(), 1);
        let context = ScoreContext {
            seed: stream_seed(seed, Stream::EvalExtraction, step),
            first_row: share.start,
            evaluation: true,
        };
        // A rank without validation prompts still joins the gathers.
        let (rows, lines) = if share.is_empty() {
            (Vec::new(), String::new())
        } else {
            let rollouts = collect_rollouts(
                models,
                reward,
                &inputs[share.clone()],
                &sampling[share.clone()],
                context,
                settings,
            )?;
            let (kl_sums, log_ratio_sums) = summed_kl(&rollouts);
            (
                row_stats(&rollouts, &kl_sums, &log_ratio_sums),
                rollout_lines(&rollouts, &prompts[share], &kl_sums),
            )
        };
        let rows = ranks.gather_all(rows)?;
        write_gathered_lines(ranks, run, "eval", step, lines)?;
        Ok(rollout_metrics(&rows, "eval_"))
    }
}

impl PpoTrainer {
    /// Loads the models in `paths` and the built-in reward of `config.rl_type`, tokenises the
    /// prompts and opens the run in `run.dir`, resuming from its newest checkpoint.
    pub fn new(
        paths: &PpoModelPaths,
        device: Device,
        config: &PpoConfig,
        train: &[PpoPrompt],
        eval: &[PpoPrompt],
        run: &RunOptions,
    ) -> Result<Self> {
        Self::build(paths, device, config, None, train, eval, run)
    }

    /// As [`Self::new`] with another reward (the value model still starts from the backbone
    /// of `paths.reward_model`).
    pub fn with_reward(
        paths: &PpoModelPaths,
        device: Device,
        config: &PpoConfig,
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
        config: &PpoConfig,
        custom_reward: Option<Box<dyn Reward>>,
        train: &[PpoPrompt],
        eval: &[PpoPrompt],
        run: &RunOptions,
    ) -> Result<Self> {
        config.validate()?;
        run.check_before_loading(train.len())?;
        check_ranks(
            run.comm.world_size(),
            ("rollout_batch_size", config.rollout_batch_size),
            config
                .whiten_group_size
                .map(|group| (config.rollout_batch_size, group)),
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
            ("rollout_batch_size", config.rollout_batch_size),
        )?;
        let report = prompts.report();
        let kept = report.train_prompts;

        let mut learner = Learner::new(config, models, Ranks::new(run.comm.clone(), device));
        let manifest = paths.manifest("ppo", given, custom);
        let steps_per_epoch = (kept / config.rollout_batch_size) as u64;
        let state = TrainState::new(
            config.total_steps,
            steps_per_epoch,
            kept,
            prompts.train.digest(train),
            config.seed,
        );
        let plan = StepPlan {
            units_per_step: config.rollout_batch_size,
            save_every: config.save_every,
            keep_checkpoints: config.keep_checkpoints,
            keep_checkpoints_after_finish: config.keep_checkpoints_after_finish,
            snapshot_every: config.snapshot_every,
            save_after: config.save_after,
        };
        let training_run = TrainingRun::open(run, manifest, state, plan, &mut learner.params)?;
        if let Some(checkpoint) = training_run.checkpoint() {
            learner.kl.value = read_ppo_state(checkpoint)?;
        }
        let steps = PpoSteps {
            learner,
            reward,
            prompts,
            policy_dir: paths.policy.clone(),
        };
        Ok(PpoTrainer {
            run: training_run,
            steps,
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

    pub fn policy(&self) -> &CausalLm {
        self.steps.learner.models.policy()
    }

    /// Trains to the end (writing `final/`), or until `stop_at_step` steps are complete (a
    /// checkpoint is written there, so a later call resumes without loss).
    pub fn train(&mut self, stop_at_step: Option<u64>) -> Result<TrainSummary> {
        self.run.train(&mut self.steps, stop_at_step)
    }
}

impl RunSteps for PpoSteps {
    /// One PPO step; with `dump_rollouts` its rollouts go to `rollouts/step-N.jsonl`.
    fn step(&mut self, state: &TrainState, run: &Path) -> Result<StepRecord> {
        let step = state.step;
        let config = &self.learner.config;
        let rows = self.prompts.step_rows(
            config.rollout_batch_size,
            config.seed,
            step,
            state.steps_per_epoch,
        );
        let (inputs, prompts) = self.prompts.train_inputs(&rows);
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
            "kl",
            outcome.update_seconds,
        ))
    }

    /// After the first step (a near-baseline: the reference evaluates before it) and every
    /// `eval_every` steps.
    fn evaluates_after(&self, done: u64) -> bool {
        done == 1 || done.is_multiple_of(self.learner.config.eval_every)
    }

    /// One response to every validation prompt, scored (see [`RunPrompts::evaluate`]).
    fn evaluate(&mut self, step: u64, run: &Path) -> Result<Vec<(String, f64)>> {
        self.prompts.evaluate(
            &self.learner.models,
            self.reward.as_mut(),
            &self.learner.settings(false),
            &self.learner.ranks,
            self.learner.config.seed,
            step,
            run,
        )
    }

    /// The policy and value weights, the optimizer and the KL controller (rank 0 writes; the
    /// others join the gathering of the optimizer state).
    fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        self.learner.params.save(dir)?;
        if !self.learner.ranks.writes() {
            return Ok(());
        }
        let kl = self.learner.kl.value;
        let state = PpoState {
            kl_coef: kl,
            kl_coef_bits: kl.to_bits(),
        };
        Ok(lincal_model::fsutil::write_atomic(
            &dir.join(PPO_STATE_FILE),
            serde_json::to_string_pretty(&state)
                .expect("json")
                .as_bytes(),
        )?)
    }

    /// The policy as it samples now, as the reference's snapshots every `save_steps`.
    fn save_snapshot(&self, dir: &Path) -> Result<()> {
        match self.learner.ranks.writes() {
            true => self.learner.models.policy.save_snapshot(dir),
            false => Ok(()),
        }
    }

    /// Only the policy, as the reference saves.
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
}

/// Refuses a data-parallel job that cannot share a step: each of the `world` ranks needs at
/// least one of the step's `units` (rollouts, or GRPO's prompts; `field` names the count), and
/// per-rank whitening in groups of `group` of the step's `rows` rollouts needs groups that no
/// rank boundary cuts.
pub(crate) fn check_ranks(
    world: usize,
    (field, units): (&str, usize),
    whitening: Option<(usize, usize)>,
) -> Result<()> {
    if world <= 1 {
        return Ok(());
    }
    if units < world {
        return Err(TrainError::config(
            field,
            format!("is {units}, too few to give each of the job's {world} ranks a share"),
        ));
    }
    if let Some((rows, group)) = whitening
        && !(rows.is_multiple_of(world) && (rows / world).is_multiple_of(group.max(1)))
    {
        return Err(TrainError::config(
            "whiten_group_size",
            format!(
                "is {group}: with {world} ranks each rank rolls out {} of the {rows} rollouts, \
                 which must be whole groups; use a divisor of that, or leave it unset to \
                 whiten over the whole step",
                rows as f64 / world as f64
            ),
        ));
    }
    Ok(())
}

/// Gathers every rank's `lines` and writes them, in rank order, to `run/<folder>/step-N.jsonl`
/// (rank 0).
pub(crate) fn write_gathered_lines(
    ranks: &Ranks,
    run: &Path,
    folder: &str,
    step: u64,
    lines: String,
) -> Result<()> {
    let lines = ranks.gather_all(vec![lines])?.concat();
    match ranks.writes() {
        true => write_lines(run, folder, step, &lines),
        false => Ok(()),
    }
}

/// Writes `run/<folder>/step-N.jsonl` atomically.
fn write_lines(run: &Path, folder: &str, step: u64, lines: &str) -> Result<()> {
    let dir = run.join(folder);
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    Ok(lincal_model::fsutil::write_atomic(
        &dir.join(format!("step-{step:08}.jsonl")),
        lines.as_bytes(),
    )?)
}

fn read_ppo_state(checkpoint: &Path) -> Result<f64> {
    let path = checkpoint.join(PPO_STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let state: PpoState = serde_json::from_str(&text).map_err(|e| {
        TrainError::run_dir(
            &path,
            format!(
                "is not valid ({e}); the checkpoint is damaged: \
                 delete it to resume from the one before"
            ),
        )
    })?;
    Ok(f64::from_bits(state.kl_coef_bits))
}
