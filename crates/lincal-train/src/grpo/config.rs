//! The settings of a GRPO or RLOO run, with presets on the PPO runs' rewards.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::advantages::GroupBaseline;
use super::loss::LossAggregation;
use crate::config::{
    Precision, at_least_one, check_recomputed_layers, in_unit_interval, recomputed_layers,
};
use crate::error::{Result, TrainError};
use crate::memory::BatchPlan;
use crate::ppo::PpoModelPaths;
use crate::ppo::models::{ModelSettings, PlannedStep, planned_config};
use crate::ppo::{PpoConfig, RewardConfig, RlType};
use lincal_model::lora::LoraConfig;

/// Where the KL to the reference policy enters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlPlacement {
    /// β·k3 per token in the loss (GRPO, DeepSeekMath), outside the advantages.
    #[default]
    Loss,
    /// −β·Σ_t (log π − log π_ref) subtracted from each response's reward before the group
    /// comparison (RLOO's and PPO's placement).
    Reward,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoConfig {
    pub rl_type: RlType,
    /// How a response's advantage comes from its group: `grpo`, `dr_grpo` (no division by
    /// the group's std) or `rloo` (leave-one-out baseline).
    pub baseline: GroupBaseline,
    /// How the per-token losses are averaged: `token`, `sequence` or `constant` (Dr. GRPO's
    /// fixed `response_len`).
    pub loss_aggregation: LossAggregation,
    /// Steps (one rollout batch of `prompts_per_step × group_size` responses each).
    pub total_steps: u64,
    pub prompts_per_step: usize,
    /// Responses per prompt, G.
    pub group_size: usize,
    /// Responses per optimizer step; the rollout batch is cut into
    /// `prompts_per_step × group_size / step_batch_size` of them per inner epoch.
    pub step_batch_size: usize,
    /// Responses per forward/backward pass of the update (gradients are accumulated).
    pub micro_batch_size: usize,
    /// Passes over each rollout batch (μ; 1 is on-policy: the ratio stays 1 in value).
    pub epochs_per_rollout: usize,
    pub generation_batch_size: usize,
    pub forward_batch_size: usize,
    /// As PPO's: the generation, forward, micro and reward batch sizes from free memory.
    #[serde(default)]
    pub auto_batch_sizes: bool,
    /// As PPO's: the update's policy pass recomputes its decoder layers in the backward pass,
    /// so that larger micro-batches fit, for more compute.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// As PPO's: with gradient checkpointing, only the first this many layers. Unset: every
    /// layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recomputed_layers: Option<usize>,
    /// As PPO's: each frozen model waits in pinned host memory while the step's other parts
    /// run, for larger generation and extraction batches; unset, `auto_batch_sizes` chooses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_idle_models: Option<bool>,
    /// Training prompts longer than this many tokens are dropped.
    pub query_len: usize,
    pub response_len: usize,
    pub temperature: f64,
    /// Clip range c of the ratio.
    pub cliprange: f64,
    /// β of the KL to the reference policy; 0 leaves it out.
    pub kl_coef: f64,
    pub kl_placement: KlPlacement,
    pub learning_rate: f64,
    /// Linear warmup over this many steps, then linear decay to zero at `total_steps`.
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Global gradient-norm clipping; 0 disables it.
    pub max_grad_norm: f64,
    /// Evaluate on the validation prompts (one response each) after the first step and every
    /// this many steps.
    pub eval_every: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_eval_prompts: Option<usize>,
    pub save_every: u64,
    pub keep_checkpoints: usize,
    #[serde(default)]
    pub keep_checkpoints_after_finish: bool,
    /// Weights-only policy snapshots, as PPO's (`lincal select` reads them).
    #[serde(default)]
    pub snapshot_every: u64,
    #[serde(default)]
    pub save_after: u64,
    pub dump_rollouts: bool,
    pub seed: u64,
    pub precision: Precision,
    pub pad_token: String,
    /// The policy as LoRA adapters on the frozen SFT model, which with its adapters off is
    /// the reference policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<PathBuf>,
    /// The rewards of PPO (`reward.scoring_rule = "brier"` included).
    pub reward: RewardConfig,
}

pub const GRPO_PRESETS: [&str; 2] = ["lc_grpo", "factuality_grpo"];

impl GrpoConfig {
    /// The PPO preset's reward, rollout geometry and optimizer (the reference's LC or
    /// Factuality settings), with GRPO's own: G = 8 responses to each of 64 prompts (the 512
    /// rollouts of a reference PPO step), KL as β·k3 in the loss with β = 0.04
    /// (DeepSeekMath's GRPO), clip 0.2, one inner epoch and token-level aggregation (TRL's
    /// defaults).
    pub fn preset(name: &str) -> Result<Self> {
        let ppo = match name {
            "lc_grpo" => PpoConfig::preset("lc_ppo")?,
            "factuality_grpo" => PpoConfig::preset("factuality_ppo")?,
            other => {
                return Err(TrainError::config(
                    "preset",
                    format!("unknown GRPO preset \"{other}\"; choose one of {GRPO_PRESETS:?}"),
                ));
            }
        };
        Ok(GrpoConfig {
            rl_type: ppo.rl_type,
            baseline: GroupBaseline::Grpo,
            loss_aggregation: LossAggregation::Token,
            total_steps: ppo.total_steps,
            prompts_per_step: ppo.rollout_batch_size / 8,
            group_size: 8,
            step_batch_size: ppo.step_batch_size,
            micro_batch_size: ppo.micro_batch_size,
            epochs_per_rollout: 1,
            generation_batch_size: ppo.generation_batch_size,
            forward_batch_size: ppo.forward_batch_size,
            auto_batch_sizes: false,
            gradient_checkpointing: false,
            recomputed_layers: None,
            offload_idle_models: None,
            query_len: ppo.query_len,
            response_len: ppo.response_len,
            temperature: ppo.temperature,
            cliprange: 0.2,
            kl_coef: 0.04,
            kl_placement: KlPlacement::Loss,
            learning_rate: ppo.learning_rate,
            warmup_steps: ppo.warmup_steps,
            weight_decay: ppo.weight_decay,
            adam_beta1: ppo.adam_beta1,
            adam_beta2: ppo.adam_beta2,
            adam_epsilon: ppo.adam_epsilon,
            max_grad_norm: ppo.max_grad_norm,
            eval_every: ppo.eval_every,
            max_eval_prompts: ppo.max_eval_prompts,
            save_every: ppo.save_every,
            keep_checkpoints: ppo.keep_checkpoints,
            keep_checkpoints_after_finish: false,
            snapshot_every: ppo.snapshot_every,
            save_after: ppo.save_after,
            dump_rollouts: true,
            seed: ppo.seed,
            precision: ppo.precision,
            pad_token: ppo.pad_token,
            lora: None,
            templates: None,
            reward: ppo.reward,
        })
    }

    /// For a quick run: prompts per step, steps, warmup and the eval, save and snapshot
    /// intervals shrink by `scale` (rounded, at least 1); G stays, and the step batch becomes
    /// the largest whole number of micro-batches at most its scaled size that divides the
    /// responses of a step.
    pub fn scaled(&self, scale: f64) -> Result<Self> {
        in_unit_interval("scale", scale)?;
        let shrink = |n: u64| ((n as f64 * scale).round() as u64).max(1);
        let prompts = shrink(self.prompts_per_step as u64) as usize;
        let rollouts = prompts * self.group_size;
        let micro = self.micro_batch_size.min(rollouts);
        let wanted = (shrink(self.step_batch_size as u64) as usize).clamp(micro, rollouts);
        let step_batch = (micro..=wanted)
            .rev()
            .find(|&b| b.is_multiple_of(micro) && rollouts.is_multiple_of(b))
            .unwrap_or(rollouts);
        let optional = |n: u64| if n == 0 { 0 } else { shrink(n) };
        Ok(GrpoConfig {
            prompts_per_step: prompts,
            step_batch_size: step_batch,
            micro_batch_size: micro.min(step_batch),
            total_steps: shrink(self.total_steps),
            warmup_steps: optional(self.warmup_steps),
            eval_every: shrink(self.eval_every),
            save_every: shrink(self.save_every),
            snapshot_every: optional(self.snapshot_every),
            save_after: (self.save_after as f64 * scale).round() as u64,
            ..self.clone()
        })
    }

    /// The config a run uses (see [`planned_config`]).
    pub(crate) fn planned(
        &self,
        paths: &PpoModelPaths,
        device: tch::Device,
        ranks: usize,
    ) -> Result<(GrpoConfig, Option<BatchPlan>)> {
        let kind_of = |device| self.precision.kind(device);
        let step = PlannedStep {
            master_weights: self.precision.master_weights(),
            query_len: self.query_len,
            response_len: self.response_len,
            rollouts: self.rollout_batch_size(),
            step_batch_size: self.step_batch_size,
            recomputed_layers: self.recomputed(),
            offload_idle_models: self.offload_idle_models,
            ranks,
        };
        planned_config(
            self,
            self.auto_batch_sizes,
            (paths, device),
            (&self.model_settings(&kind_of), &step),
            |c| {
                (
                    [
                        &mut c.generation_batch_size,
                        &mut c.forward_batch_size,
                        &mut c.micro_batch_size,
                    ],
                    &mut c.reward,
                    &mut c.offload_idle_models,
                )
            },
        )
    }

    /// What loading the run's models takes from this config: no value model.
    pub(crate) fn model_settings<'a>(
        &'a self,
        kind_of: &'a dyn Fn(tch::Device) -> tch::Kind,
    ) -> ModelSettings<'a> {
        ModelSettings {
            rl_type: self.rl_type,
            kind_of,
            lora: self.lora.as_ref(),
            seed: self.seed,
            pad_token: &self.pad_token,
            reward: &self.reward,
            templates: self.templates.as_deref(),
            value: false,
            offload_idle_models: self.offload_idle_models.unwrap_or(false),
        }
    }

    /// Responses per step.
    pub fn rollout_batch_size(&self) -> usize {
        self.prompts_per_step * self.group_size
    }

    /// The decoder layers the update's passes recompute ([`recomputed_layers`]).
    pub fn recomputed(&self) -> Option<usize> {
        recomputed_layers(self.gradient_checkpointing, self.recomputed_layers)
    }

    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("total_steps", self.total_steps),
            ("prompts_per_step", self.prompts_per_step as u64),
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
        ] {
            at_least_one(field, value)?;
        }
        check_recomputed_layers("", self.gradient_checkpointing, self.recomputed_layers)?;
        self.reward.validate()?;
        if self.group_size < 2 {
            return Err(TrainError::config(
                "group_size",
                format!(
                    "must be at least 2 (a response is compared with the others to its \
                     prompt), got {}",
                    self.group_size
                ),
            ));
        }
        let rollouts = self.rollout_batch_size();
        if !rollouts.is_multiple_of(self.step_batch_size) {
            return Err(TrainError::config(
                "step_batch_size",
                format!(
                    "must divide the {rollouts} responses of a step (prompts_per_step × \
                     group_size), got {}",
                    self.step_batch_size
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
        // Written so that NaN fails too.
        let (clip_positive, kl_non_negative) = (self.cliprange > 0.0, self.kl_coef >= 0.0);
        if !clip_positive || !kl_non_negative {
            return Err(TrainError::config(
                "cliprange",
                format!(
                    "cliprange must be positive and kl_coef not negative, got {} and {}",
                    self.cliprange, self.kl_coef
                ),
            ));
        }
        Ok(())
    }
}
