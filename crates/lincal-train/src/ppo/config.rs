//! The PPO config: one struct, TOML-friendly, with the presets of `lc_ppo.sh` and
//! `factuality_ppo.sh` (SPEC 2 and 3). Every default is the reference's.

use crate::config::{
    Precision, at_least_one, check_recomputed_layers, in_unit_interval, non_negative, positive,
    recomputed_layers,
};
use crate::error::{Result, TrainError};
use crate::reward_model::BatchLimits;
use crate::scorer::DEFAULT_MAX_TOKENS;
use lincal_data::parse::ExtractionParsing;
use lincal_data::prompts::{EXTRACT_ANSWERS_MAX_TOKENS, EXTRACT_ANSWERS_TEMPERATURE};
use lincal_model::lora::LoraConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which reward the built-in trainer computes (the reference's `rl_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RlType {
    /// Decision-based RL (SPEC 1.7): ExtractAnswers + ForecastProbs log-loss reward.
    DecisionBased,
    /// Factuality RL (SPEC 1.8): thresholded binary-correctness reward model.
    Factuality,
}

/// The reward path (SPEC 1.5, 1.7, 1.8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardConfig {
    /// Constant added to every sequence reward (`reward_offset`: 5 for LC, 0 for Factuality).
    pub reward_offset: f64,
    /// λ of the normalisation penalty −λ·|Σ_j p_j − 1| (`answer_extractor_normalization_lambda`).
    pub normalization_lambda: f64,
    /// p_gt is clipped to [epsilon, 1] before the log (`cross_entropy_epsilon`).
    pub cross_entropy_epsilon: f64,
    /// Reward-model inputs are truncated on the right to this many tokens (the SFT
    /// tokenizer's `model_max_length`).
    pub model_max_length: usize,
    /// Reward-model rows per forward pass (`eval_reward_model_per_device_batch_size`).
    pub score_batch_size: usize,
    /// At most this many tokens per reward-model forward pass, counted as padded (rows × the
    /// longest); no bound when unset. `auto_batch_sizes` sets it from free memory, since
    /// reward inputs are longer than the policy's sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_batch_tokens: Option<usize>,
    /// Extractor prompts per `generate` call.
    pub extractor_batch_size: usize,
    /// ExtractAnswers sampling during training: temperature 0.3 and the model's generation
    /// defaults, which transformers takes as top-k 50, top-p 1 (SPEC 1.5, not confirmed).
    pub extractor_temperature: f64,
    pub extractor_top_k: i64,
    pub extractor_top_p: f64,
    /// During evaluation the reference extracts with top-p 0.9 and no top-k.
    pub extractor_eval_top_k: i64,
    pub extractor_eval_top_p: f64,
    pub extractor_max_new_tokens: i64,
    /// How ExtractAnswers outputs become candidates: `reference` (exact "No Answer", split on
    /// ";", exact de-duplication: the reference's rewards) or `normalized` (lincal's stricter
    /// reading; an unparsed output counts as no answer). SPEC 1.5.
    #[serde(default)]
    pub extraction_parsing: ExtractionParsing,
    /// The proper scoring rule of the decision reward's ground-truth term: `log` (the
    /// reference's ln max(p_gt, ε)) or `brier` (1 − (1 − p_gt)², bounded; see
    /// [`super::reward::decision_reward`]).
    #[serde(default)]
    pub scoring_rule: ScoringRule,
}

/// How the decision reward scores the forecast of the ground truth, p_gt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoringRule {
    /// ln max(p_gt, ε): the reference's, strictly proper and unbounded below, hence its clip.
    #[default]
    Log,
    /// 1 − (1 − p_gt)²: the Brier score as a reward, strictly proper and bounded in [0, 1]
    /// (RLCR's argument for bounded proper rules in RL), so no clip is needed.
    Brier,
}

impl ScoringRule {
    /// The term's name in rollouts and metrics.
    pub fn term_name(self) -> &'static str {
        match self {
            ScoringRule::Log => "log_loss",
            ScoringRule::Brier => "brier_score",
        }
    }

    /// The term for a ground-truth forecast `p_gt` (`epsilon` clips the log rule).
    pub fn score(self, p_gt: f64, epsilon: f64) -> f64 {
        match self {
            ScoringRule::Log => p_gt.max(epsilon).ln(),
            ScoringRule::Brier => 1.0 - (1.0 - p_gt).powi(2),
        }
    }
}

impl RewardConfig {
    /// Checks the reward's settings (errors name them as `reward.` fields).
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("reward.model_max_length", self.model_max_length as u64),
            ("reward.score_batch_size", self.score_batch_size as u64),
            (
                "reward.score_batch_tokens",
                self.score_batch_tokens.map_or(1, |t| t as u64),
            ),
            (
                "reward.extractor_batch_size",
                self.extractor_batch_size as u64,
            ),
            (
                "reward.extractor_max_new_tokens",
                self.extractor_max_new_tokens.max(0) as u64,
            ),
        ] {
            at_least_one(field, v)?;
        }
        positive("reward.cross_entropy_epsilon", self.cross_entropy_epsilon)?;
        positive("reward.extractor_temperature", self.extractor_temperature)?;
        non_negative("reward.normalization_lambda", self.normalization_lambda)?;
        if !self.reward_offset.is_finite() {
            return Err(TrainError::config(
                "reward.reward_offset",
                format!("must be a finite number, got {}", self.reward_offset),
            ));
        }
        in_unit_interval("reward.extractor_top_p", self.extractor_top_p)?;
        in_unit_interval("reward.extractor_eval_top_p", self.extractor_eval_top_p)?;
        if self.extractor_top_k < 0 || self.extractor_eval_top_k < 0 {
            return Err(TrainError::config(
                "reward.extractor_top_k",
                "must be >= 0 (0 disables top-k)",
            ));
        }
        Ok(())
    }

    /// The bounds of one reward-model forward pass.
    pub fn score_limits(&self) -> BatchLimits {
        BatchLimits {
            rows: self.score_batch_size,
            tokens: self.score_batch_tokens.unwrap_or(usize::MAX),
        }
    }

    fn reference(reward_offset: f64) -> Self {
        RewardConfig {
            reward_offset,
            normalization_lambda: 5.0,
            cross_entropy_epsilon: 1e-4,
            model_max_length: DEFAULT_MAX_TOKENS,
            score_batch_size: 32,
            score_batch_tokens: None,
            extractor_batch_size: 64,
            extractor_temperature: EXTRACT_ANSWERS_TEMPERATURE,
            extractor_top_k: 50,
            extractor_top_p: 1.0,
            extractor_eval_top_k: 0,
            extractor_eval_top_p: 0.9,
            extractor_max_new_tokens: i64::from(EXTRACT_ANSWERS_MAX_TOKENS),
            extraction_parsing: ExtractionParsing::Reference,
            scoring_rule: ScoringRule::Log,
        }
    }
}

/// Everything a PPO run needs besides its models and prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoConfig {
    pub rl_type: RlType,
    /// PPO steps (one rollout batch each).
    pub total_steps: u64,
    /// Prompts sampled per PPO step.
    pub rollout_batch_size: usize,
    /// Rollouts per optimizer step; `rollout_batch_size / step_batch_size` optimizer steps are
    /// taken per epoch over the rollouts.
    pub step_batch_size: usize,
    /// Rollouts per forward/backward pass of the update (gradients are accumulated).
    pub micro_batch_size: usize,
    /// Passes over each rollout batch (`noptepochs`).
    pub epochs_per_rollout: usize,
    /// Prompts per `generate` call (bounds the KV cache).
    pub generation_batch_size: usize,
    /// Rollouts per no-grad forward pass when scoring (policy and reference log-probs, values).
    pub forward_batch_size: usize,
    /// Choose `generation_batch_size`, `forward_batch_size`, `micro_batch_size` and the
    /// reward's batch sizes from the device's free memory when the run starts
    /// ([`crate::memory`]), ignoring the configured ones. They bound memory only:
    /// `step_batch_size`, and with it the optimisation, stays as configured.
    #[serde(default)]
    pub auto_batch_sizes: bool,
    /// Keep only each decoder layer's input in the update's forward passes (policy and value
    /// model) and recompute the layer in the backward pass, as SFT's
    /// `training.gradient_checkpointing`: the update's activation memory shrinks, so that
    /// larger micro-batches fit (`auto_batch_sizes` plans for it), for a second forward pass
    /// of the recomputed layers: about a third more compute in full fine-tuning, half more
    /// in LoRA mode (frozen weights take no gradient, so backward costs about a forward).
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// With gradient checkpointing, recompute only the first this many decoder layers of each
    /// model (SFT's `training.recomputed_layers`). Unset: every layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recomputed_layers: Option<usize>,
    /// Keep a copy of each frozen model (the reference policy, the reward model,
    /// ExtractAnswers; in LoRA mode the policy's and value model's frozen bases) in pinned host
    /// memory and free its device memory while the step's other parts run, so that generation
    /// and answer extraction have room for larger batches (`auto_batch_sizes` plans for it).
    /// A LoRA policy then also generates with its adapters merged into the base weights (one
    /// product a projection), which the host copy restores exactly.
    /// Costs one host-to-device copy per model a step (~0.3 s for a 7B in bf16 on an H100) and
    /// host memory the size of those models, in each process of a data-parallel job.
    /// Unset: `auto_batch_sizes` turns it on where it lets some part of the step run in fewer
    /// batches and host memory holds the copies (a 7B LoRA step on one 80 GB GPU); off
    /// otherwise. (Runs started while it was `false` unless set, from b56e6d0 to 975ee37,
    /// recorded `false`: resume them with `offload_idle_models = false`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_idle_models: Option<bool>,
    /// Training prompts longer than this many tokens are dropped (evaluation keeps them).
    pub query_len: usize,
    /// Most tokens sampled per response.
    pub response_len: usize,
    /// Sampling temperature; log-probs everywhere are taken at this temperature.
    pub temperature: f64,
    /// β of the per-token KL penalty −β·max(log π − log π_ref, 0).
    pub kl_coef: f64,
    /// Adapt β towards `kl_target` (summed KL per sequence):
    /// β ← β·(1 + k_beta·clip(KL/target − 1, ±0.2)).
    pub adaptive_kl: bool,
    pub kl_target: f64,
    pub kl_k_beta: f64,
    pub gamma: f64,
    pub lam: f64,
    /// Scale-only whitening of the shaped rewards before GAE.
    pub whiten_rewards: bool,
    /// Rollouts whitened together (rewards and advantages), in consecutive groups; unset: all
    /// rollouts of the step. The reference whitens per GPU over its 64 rollouts: 64
    /// reproduces it on one GPU (SPEC 2.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whiten_group_size: Option<usize>,
    pub cliprange: f64,
    pub cliprange_value: f64,
    pub vf_coef: f64,
    /// `false` (default): statistics and losses cover real response tokens only. `true`: as
    /// the reference (SPEC 8, item 5), every position up to `response_len` counts, padding
    /// included.
    pub reference_padding: bool,
    pub learning_rate: f64,
    /// Linear warmup over this many PPO steps, then linear decay to zero at `total_steps`.
    pub warmup_steps: u64,
    /// Decoupled weight decay (bitsandbytes' AdamW default 0.01); biases and norms exempt.
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Global gradient-norm clipping over policy and value; 0 disables it.
    pub max_grad_norm: f64,
    /// Evaluate on the validation prompts after the first step and every this many steps. The
    /// reference evaluates before the first step instead; lincal's first evaluation comes one
    /// update later, inside the step loop, so that it is logged, checkpointed and resumed like
    /// every other step (one update moves the policy little at the reference's learning rate).
    pub eval_every: u64,
    /// Evaluate on at most this many validation prompts (all when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_eval_prompts: Option<usize>,
    /// Write a resumable checkpoint every this many steps.
    pub save_every: u64,
    pub keep_checkpoints: usize,
    /// Keep the resume checkpoints (policy, value model and optimizer state) once `final/` is
    /// written; by default they are removed.
    #[serde(default)]
    pub keep_checkpoints_after_finish: bool,
    /// A weights-only policy snapshot (Hugging Face layout, f32) in `snapshots/step-N/` after
    /// every this many steps from step `save_after` on, kept after the run for checkpoint
    /// selection (`lincal select`); 0: none. The reference's `save_steps` 20 from
    /// `save_after` 800 (SPEC 2.9). Make it a multiple of `eval_every`: selection ranks the
    /// snapshots by the validation reward of their step.
    #[serde(default)]
    pub snapshot_every: u64,
    #[serde(default)]
    pub save_after: u64,
    /// Write every step's rollouts to `rollouts/step-N.jsonl`.
    pub dump_rollouts: bool,
    /// Seeds prompt order, sampling, minibatch order and new weights.
    pub seed: u64,
    pub precision: Precision,
    /// Added as the pad token when the policy tokenizer has none.
    pub pad_token: String,
    /// Policy and value as LoRA adapters on frozen bases; the reference policy is then the
    /// policy base with its adapters off, and the reward model the value base with its
    /// adapters off (no second copies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    /// A directory of `<name>.j2` files replacing built-in prompt templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<PathBuf>,
    pub reward: RewardConfig,
}

/// PPO presets, one per reference script.
pub const PPO_PRESETS: [&str; 2] = ["lc_ppo", "factuality_ppo"];

impl PpoConfig {
    /// The hyperparameters of `examples/scripts/<name>.sh` (8 GPUs × per-device batches).
    pub fn preset(name: &str) -> Result<Self> {
        let (rl_type, reward_offset) = match name {
            "lc_ppo" => (RlType::DecisionBased, 5.0),
            "factuality_ppo" => (RlType::Factuality, 0.0),
            other => {
                return Err(TrainError::config(
                    "preset",
                    format!("unknown PPO preset \"{other}\"; choose one of {PPO_PRESETS:?}"),
                ));
            }
        };
        Ok(PpoConfig {
            rl_type,
            total_steps: 1500,
            rollout_batch_size: 512,
            step_batch_size: 512,
            micro_batch_size: 2,
            epochs_per_rollout: 1,
            generation_batch_size: 64,
            forward_batch_size: 16,
            auto_batch_sizes: false,
            gradient_checkpointing: false,
            recomputed_layers: None,
            offload_idle_models: None,
            query_len: 128,
            response_len: 300,
            temperature: 0.7,
            kl_coef: 0.1,
            adaptive_kl: false,
            kl_target: 6.0,
            kl_k_beta: 0.1,
            gamma: 1.0,
            lam: 1.0,
            whiten_rewards: true,
            whiten_group_size: None,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            reference_padding: false,
            learning_rate: 1e-5,
            warmup_steps: 5,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-5,
            max_grad_norm: 1.0,
            eval_every: 20,
            max_eval_prompts: None,
            save_every: 20,
            keep_checkpoints: 2,
            keep_checkpoints_after_finish: false,
            snapshot_every: 20,
            save_after: 800,
            dump_rollouts: true,
            seed: 42,
            precision: Precision::Auto,
            pad_token: "[PAD]".into(),
            lora: None,
            templates: None,
            reward: RewardConfig::reference(reward_offset),
        })
    }

    /// For a quick run: rollout and step batches, total steps, warmup and the eval and save
    /// intervals shrink by `scale` (rounded, at least 1); micro-batches shrink only as far as
    /// the batches require, and the batches are rounded down to whole micro-batches and steps.
    pub fn scaled(&self, scale: f64) -> Result<Self> {
        in_unit_interval("scale", scale)?;
        let shrink = |n: f64| (n * scale).round().max(1.0);
        let rollout = shrink(self.rollout_batch_size as f64) as usize;
        let step = (shrink(self.step_batch_size as f64) as usize).min(rollout);
        let micro = self.micro_batch_size.min(step);
        let step = step / micro * micro;
        Ok(PpoConfig {
            rollout_batch_size: rollout / step * step,
            step_batch_size: step,
            micro_batch_size: micro,
            total_steps: shrink(self.total_steps as f64) as u64,
            warmup_steps: if self.warmup_steps == 0 {
                0
            } else {
                shrink(self.warmup_steps as f64) as u64
            },
            eval_every: shrink(self.eval_every as f64) as u64,
            save_every: shrink(self.save_every as f64) as u64,
            snapshot_every: if self.snapshot_every == 0 {
                0
            } else {
                shrink(self.snapshot_every as f64) as u64
            },
            save_after: (self.save_after as f64 * scale).round() as u64,
            ..self.clone()
        })
    }

    /// The decoder layers the update's passes recompute ([`recomputed_layers`]).
    pub fn recomputed(&self) -> Option<usize> {
        recomputed_layers(self.gradient_checkpointing, self.recomputed_layers)
    }

    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("total_steps", self.total_steps),
            ("rollout_batch_size", self.rollout_batch_size as u64),
            ("step_batch_size", self.step_batch_size as u64),
            ("micro_batch_size", self.micro_batch_size as u64),
            ("epochs_per_rollout", self.epochs_per_rollout as u64),
            ("generation_batch_size", self.generation_batch_size as u64),
            ("forward_batch_size", self.forward_batch_size as u64),
            ("query_len", self.query_len as u64),
            ("response_len", self.response_len as u64),
            ("eval_every", self.eval_every),
            ("save_every", self.save_every),
            ("keep_checkpoints", self.keep_checkpoints as u64),
            (
                "whiten_group_size",
                self.whiten_group_size.map_or(1, |g| g as u64),
            ),
        ] {
            at_least_one(field, v)?;
        }
        check_recomputed_layers("", self.gradient_checkpointing, self.recomputed_layers)?;
        self.reward.validate()?;
        if !self.rollout_batch_size.is_multiple_of(self.step_batch_size) {
            return Err(TrainError::config(
                "rollout_batch_size",
                format!(
                    "must be a multiple of step_batch_size ({}), got {}",
                    self.step_batch_size, self.rollout_batch_size
                ),
            ));
        }
        if !self.step_batch_size.is_multiple_of(self.micro_batch_size) {
            return Err(TrainError::config(
                "step_batch_size",
                format!(
                    "must be a multiple of micro_batch_size ({}), got {}",
                    self.micro_batch_size, self.step_batch_size
                ),
            ));
        }
        // Only a run long enough to reach `save_after` takes snapshots.
        let takes_snapshots = self.snapshot_every > 0 && self.save_after <= self.total_steps;
        if takes_snapshots && !self.snapshot_every.is_multiple_of(self.eval_every) {
            return Err(TrainError::config(
                "snapshot_every",
                format!(
                    "must be a multiple of eval_every ({}), got {}: checkpoint selection ranks \
                     snapshots by the validation reward of their step (0 keeps none)",
                    self.eval_every, self.snapshot_every
                ),
            ));
        }
        if self.max_eval_prompts == Some(0) {
            return Err(TrainError::config(
                "max_eval_prompts",
                "must be at least 1 when set",
            ));
        }
        positive("temperature", self.temperature)?;
        positive("learning_rate", self.learning_rate)?;
        positive("adam_epsilon", self.adam_epsilon)?;
        positive("kl_target", self.kl_target)?;
        for (field, v) in [
            ("kl_coef", self.kl_coef),
            ("kl_k_beta", self.kl_k_beta),
            ("cliprange", self.cliprange),
            ("cliprange_value", self.cliprange_value),
            ("vf_coef", self.vf_coef),
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
        ] {
            non_negative(field, v)?;
        }
        in_unit_interval("gamma", self.gamma)?;
        in_unit_interval("lam", self.lam)?;
        for (field, v) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(TrainError::config(
                    field,
                    format!("must be in [0, 1), got {v}"),
                ));
            }
        }
        if self.pad_token.is_empty() {
            return Err(TrainError::config("pad_token", "must not be empty"));
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        Ok(())
    }

    /// Optimizer steps per PPO step.
    pub fn optimizer_steps_per_rollout(&self) -> usize {
        self.epochs_per_rollout * self.rollout_batch_size / self.step_batch_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::with_overrides;

    #[test]
    fn presets_carry_the_reference_hyperparameters() {
        let lc = PpoConfig::preset("lc_ppo").unwrap();
        assert_eq!(
            (
                lc.rl_type,
                lc.total_steps,
                lc.rollout_batch_size,
                lc.step_batch_size,
                lc.micro_batch_size,
                lc.epochs_per_rollout
            ),
            (RlType::DecisionBased, 1500, 512, 512, 2, 1)
        );
        assert_eq!(
            (
                lc.query_len,
                lc.response_len,
                lc.temperature,
                lc.kl_coef,
                lc.adaptive_kl
            ),
            (128, 300, 0.7, 0.1, false)
        );
        assert_eq!(
            (
                lc.cliprange,
                lc.cliprange_value,
                lc.vf_coef,
                lc.gamma,
                lc.lam,
                lc.whiten_rewards
            ),
            (0.2, 0.2, 0.1, 1.0, 1.0, true)
        );
        assert_eq!(
            (
                lc.learning_rate,
                lc.warmup_steps,
                lc.adam_epsilon,
                lc.weight_decay,
                lc.max_grad_norm
            ),
            (1e-5, 5, 1e-5, 0.01, 1.0)
        );
        assert_eq!(
            (
                lc.reward.reward_offset,
                lc.reward.normalization_lambda,
                lc.reward.cross_entropy_epsilon,
                lc.reward.extractor_temperature,
                lc.reward.extractor_max_new_tokens
            ),
            (5.0, 5.0, 1e-4, 0.3, 300)
        );
        assert_eq!(
            (
                lc.eval_every,
                lc.save_every,
                lc.optimizer_steps_per_rollout()
            ),
            (20, 20, 1)
        );
        let factuality = PpoConfig::preset("factuality_ppo").unwrap();
        assert_eq!(
            (factuality.rl_type, factuality.reward.reward_offset),
            (RlType::Factuality, 0.0)
        );
        assert_eq!(
            PpoConfig::preset("ppo").unwrap_err().to_string(),
            "config field `preset`: unknown PPO preset \"ppo\"; choose one of [\"lc_ppo\", \
             \"factuality_ppo\"]"
        );
        assert!(lc.validate().is_ok());
    }

    #[test]
    fn scale_shrinks_batches_and_steps_to_whole_micro_batches() {
        // 512 × 0.01 = 5.12 → 5 rollouts; step batch 5 rounded to micro-batches of 2 → 4; the
        // rollout batch to whole step batches → 4. 1500 steps → 15, warmup 5 → 1, eval 20 → 1.
        let scaled = PpoConfig::preset("lc_ppo").unwrap().scaled(0.01).unwrap();
        assert_eq!(
            (
                scaled.rollout_batch_size,
                scaled.step_batch_size,
                scaled.micro_batch_size
            ),
            (4, 4, 2)
        );
        assert_eq!(
            (
                scaled.total_steps,
                scaled.warmup_steps,
                scaled.eval_every,
                scaled.save_every
            ),
            (15, 1, 1, 1)
        );
        // Snapshots every 20 steps from 800 → every step from 8.
        assert_eq!((scaled.snapshot_every, scaled.save_after), (1, 8));
        assert!(scaled.validate().is_ok());
        let tenth = PpoConfig::preset("lc_ppo").unwrap().scaled(0.1).unwrap();
        assert_eq!(
            (
                tenth.rollout_batch_size,
                tenth.step_batch_size,
                tenth.total_steps,
                tenth.eval_every
            ),
            (50, 50, 150, 2)
        );
        assert_eq!(
            scaled.scaled(1.5).unwrap_err().to_string(),
            "config field `scale`: must be in (0, 1], got 1.5"
        );
    }

    #[test]
    fn validation_and_overrides_name_the_field() {
        let config = PpoConfig::preset("lc_ppo").unwrap();
        let set = |items: &[&str]| {
            with_overrides(
                &config,
                &items.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        let changed = set(&[
            "reference_padding=true",
            "reward.reward_offset=2.5",
            "rl_type=factuality",
            "lora.r=4",
            "lora.alpha=8",
            "lora.target_modules=[\"q_proj\"]",
        ])
        .unwrap();
        assert_eq!(
            (
                changed.reference_padding,
                changed.reward.reward_offset,
                changed.rl_type,
                changed.lora.as_ref().map(|l| l.r)
            ),
            (true, 2.5, RlType::Factuality, Some(4))
        );
        let err = set(&["reward.offset=1"]).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "config field `reward.offset`: unknown field `offset`, expected one of \
                 `reward_offset`"
            ),
            "{err}"
        );
        let tokens = set(&["reward.score_batch_tokens=4096"]).unwrap();
        assert_eq!(
            tokens.reward.score_limits(),
            BatchLimits {
                rows: 32,
                tokens: 4096
            }
        );
        let err = set(&["reward.score_batch_tokens=0"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config field `reward.score_batch_tokens`"),
            "{err}"
        );
        // Snapshots are ranked by their step's evaluation: they must fall on evaluated steps,
        // once the run reaches save_after (800 of 1,500 steps here).
        let bad = set(&["eval_every=15"]).unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("config field `snapshot_every`: must be a multiple of eval_every (15)"),
            "{err}"
        );
        assert!(
            set(&["eval_every=15", "total_steps=799"])
                .unwrap()
                .validate()
                .is_ok()
        );
        let bad = set(&["step_batch_size=3"]).unwrap();
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "config field `rollout_batch_size`: must be a multiple of step_batch_size (3), got 512"
        );
        let bad = set(&["step_batch_size=256", "micro_batch_size=3"]).unwrap();
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "config field `step_batch_size`: must be a multiple of micro_batch_size (3), got 256"
        );
        assert_eq!(
            set(&["gamma=1.5"])
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string(),
            "config field `gamma`: must be in (0, 1], got 1.5"
        );
        assert_eq!(
            set(&["temperature=0"])
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string(),
            "config field `temperature`: must be a positive number, got 0"
        );
    }
}
