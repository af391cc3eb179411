//! Training configs: one struct per method, TOML-friendly (plain tables, no untagged enums),
//! with presets carrying the reference scripts' hyperparameters (SPEC section 3).

use crate::error::{Result, TrainError};
use lincal_model::lora::LoraConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// transformers' `get_cosine_schedule_with_warmup` (half a cosine down to zero).
    Cosine,
    /// transformers' `get_linear_schedule_with_warmup`.
    Linear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 on a GPU, f32 on the CPU.
    Auto,
    /// bf16 weights and activations with f32 master weights, gradients accumulated in f32
    /// and f32 optimizer state: what the reference's FSDP bf16 mixed precision does.
    Bf16,
    /// bf16 weights, gradients and AdamW moments with no f32 copies, as transformers trains a
    /// model loaded in bf16: half the memory of `bf16` (a full 7B fine-tune fits one 80 GB
    /// GPU), but an update smaller than a weight's bf16 resolution is lost.
    PureBf16,
    F32,
}

impl Precision {
    /// The kind the model computes in on `device`.
    pub fn kind(self, device: Device) -> Kind {
        match self {
            Precision::Auto if device.is_cuda() => Kind::BFloat16,
            Precision::Bf16 | Precision::PureBf16 => Kind::BFloat16,
            Precision::Auto | Precision::F32 => Kind::Float,
        }
    }

    /// Whether low-precision weights get f32 master copies.
    pub fn master_weights(self) -> bool {
        self != Precision::PureBf16
    }
}

/// Optimisation and bookkeeping shared by every trainer. Defaults are the reference's HF
/// `Trainer` settings (SPEC section 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    pub learning_rate: f64,
    /// Passes over the training set; fractions allowed, as in HF's `num_train_epochs`.
    pub epochs: f64,
    /// Examples (rows, when packing) per optimizer step: the reference's per-device batch ×
    /// gradient accumulation × GPUs.
    pub batch_size: usize,
    /// Examples per forward/backward pass; `batch_size / micro_batch_size` passes are
    /// accumulated per step.
    pub micro_batch_size: usize,
    pub eval_batch_size: usize,
    pub schedule: Schedule,
    /// Warmup steps = ceil(total steps × ratio), as transformers.
    pub warmup_ratio: f64,
    /// Decoupled (AdamW) weight decay; biases and norm weights are exempt, as in HF's Trainer.
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Global gradient-norm clipping; 0 disables it.
    pub max_grad_norm: f64,
    /// Evaluate every this many steps (and after the last one).
    pub eval_every: u64,
    /// Write a resumable checkpoint every this many steps.
    pub save_every: u64,
    /// Checkpoints kept (the newest ones). Each holds the f32 weights and both AdamW moments,
    /// so fewer are kept than the reference's 50 weight-only snapshots.
    pub keep_checkpoints: usize,
    /// Keep the resume checkpoints once `final/` is written; by default they are removed (a
    /// finished run needs none, and each holds the weights and both AdamW moments).
    #[serde(default)]
    pub keep_checkpoints_after_finish: bool,
    /// Seeds the data order of every epoch, new weights (reward head, LoRA) and dropout.
    pub seed: u64,
    pub precision: Precision,
    /// Keep only each decoder layer's input in the forward pass and recompute the layer in
    /// the backward pass (transformers' gradient checkpointing): activation memory shrinks to
    /// about one layer's worth for roughly a third more compute.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// With gradient checkpointing, recompute only the first this many decoder layers and
    /// keep the activations of the layers above, as a plain pass does (Megatron's
    /// `recompute_num_layers`): each kept layer saves its recomputation and costs its
    /// activations' memory. Unset: every layer is recomputed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recomputed_layers: Option<usize>,
    /// Overrides the number of optimizer steps implied by `epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
}

/// A count that must be at least 1.
pub(crate) fn at_least_one(field: &str, v: u64) -> Result<()> {
    if v >= 1 {
        Ok(())
    } else {
        Err(TrainError::config(field, "must be at least 1"))
    }
}

/// A finite number above 0.
pub(crate) fn positive(field: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(TrainError::config(
            field,
            format!("must be a positive number, got {v}"),
        ))
    }
}

/// A finite number of at least 0.
pub(crate) fn non_negative(field: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(TrainError::config(
            field,
            format!("must be a number >= 0, got {v}"),
        ))
    }
}

/// A number in (0, 1]: a fraction that cannot be nothing.
pub(crate) fn in_unit_interval(field: &str, v: f64) -> Result<()> {
    if v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        Err(TrainError::config(
            field,
            format!("must be in (0, 1], got {v}"),
        ))
    }
}

/// The decoder layers a training pass recomputes: `None` without gradient checkpointing,
/// else `layers` (every layer when unset).
pub fn recomputed_layers(gradient_checkpointing: bool, layers: Option<usize>) -> Option<usize> {
    gradient_checkpointing.then(|| layers.unwrap_or(usize::MAX))
}

/// `recomputed_layers` is set only with gradient checkpointing on, and to at least 1 (`prefix`:
/// the fields' table, such as "training.", for the error).
pub(crate) fn check_recomputed_layers(
    prefix: &str,
    gradient_checkpointing: bool,
    layers: Option<usize>,
) -> Result<()> {
    let field = format!("{prefix}recomputed_layers");
    match layers {
        Some(_) if !gradient_checkpointing => Err(TrainError::config(
            &field,
            format!(
                "applies to gradient checkpointing only; set {prefix}gradient_checkpointing = \
                 true, or leave recomputed_layers out"
            ),
        )),
        // None recomputed is the plain pass: say so rather than run it the checkpointed way.
        Some(0) => Err(TrainError::config(
            &field,
            format!(
                "must be at least 1; to recompute nothing, set {prefix}gradient_checkpointing = \
                 false"
            ),
        )),
        _ => Ok(()),
    }
}

impl TrainingConfig {
    /// The settings common to the reference's SFT and reward-model scripts.
    fn reference(
        learning_rate: f64,
        epochs: f64,
        batch_size: usize,
        micro_batch_size: usize,
        eval_batch_size: usize,
        warmup_ratio: f64,
    ) -> Self {
        TrainingConfig {
            learning_rate,
            epochs,
            batch_size,
            micro_batch_size,
            eval_batch_size,
            schedule: Schedule::Cosine,
            warmup_ratio,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            eval_every: 25,
            save_every: 25,
            keep_checkpoints: 2,
            keep_checkpoints_after_finish: false,
            seed: 42,
            precision: Precision::Auto,
            gradient_checkpointing: false,
            recomputed_layers: None,
            max_steps: None,
        }
    }

    /// The decoder layers a training pass recomputes ([`recomputed_layers`]).
    pub fn recomputed(&self) -> Option<usize> {
        recomputed_layers(self.gradient_checkpointing, self.recomputed_layers)
    }

    /// Gradient-accumulation passes per optimizer step.
    pub fn accumulation_steps(&self) -> usize {
        self.batch_size / self.micro_batch_size
    }

    /// For a quick run on a fraction `scale` of the data: batch size, epochs and the eval and
    /// save intervals shrink by `scale`, so with `scale`·N examples the run takes `scale`
    /// times the steps, each of `scale` times the examples, and still evaluates and saves at
    /// the same fractions of training.
    pub fn scaled(&self, scale: f64) -> Result<Self> {
        in_unit_interval("scale", scale)?;
        let shrink = |n: f64| (n * scale).round().max(1.0);
        let batch = shrink(self.batch_size as f64) as usize;
        let micro = self.micro_batch_size.min(batch);
        Ok(TrainingConfig {
            epochs: self.epochs * scale,
            batch_size: (batch / micro) * micro,
            micro_batch_size: micro,
            eval_every: shrink(self.eval_every as f64) as u64,
            save_every: shrink(self.save_every as f64) as u64,
            ..self.clone()
        })
    }

    pub fn validate(&self) -> Result<()> {
        positive("training.learning_rate", self.learning_rate)?;
        positive("training.epochs", self.epochs)?;
        positive("training.adam_epsilon", self.adam_epsilon)?;
        for (field, v) in [
            ("training.batch_size", self.batch_size),
            ("training.micro_batch_size", self.micro_batch_size),
            ("training.eval_batch_size", self.eval_batch_size),
            ("training.keep_checkpoints", self.keep_checkpoints),
        ] {
            at_least_one(field, v as u64)?;
        }
        check_recomputed_layers(
            "training.",
            self.gradient_checkpointing,
            self.recomputed_layers,
        )?;
        if !self.batch_size.is_multiple_of(self.micro_batch_size) {
            return Err(TrainError::config(
                "training.batch_size",
                format!(
                    "must be a multiple of micro_batch_size ({}), got {}",
                    self.micro_batch_size, self.batch_size
                ),
            ));
        }
        for (field, v) in [
            ("training.eval_every", self.eval_every),
            ("training.save_every", self.save_every),
        ] {
            if v == 0 {
                return Err(TrainError::config(field, "must be at least 1 step"));
            }
        }
        if self.max_steps == Some(0) {
            return Err(TrainError::config(
                "training.max_steps",
                "must be at least 1 when set",
            ));
        }
        for (field, v) in [
            ("training.warmup_ratio", self.warmup_ratio),
            ("training.adam_beta1", self.adam_beta1),
            ("training.adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(TrainError::config(
                    field,
                    format!("must be in [0, 1), got {v}"),
                ));
            }
        }
        non_negative("training.weight_decay", self.weight_decay)?;
        non_negative("training.max_grad_norm", self.max_grad_norm)?;
        Ok(())
    }
}

/// Supervised fine-tuning: loss on target + EOS (SPEC 1.3, 1.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// Token sequences are truncated to this length.
    pub model_max_length: usize,
    /// Concatenate several examples into each row (attention and positions stay per example).
    /// Off in the reference.
    #[serde(default)]
    pub packing: bool,
    /// Added as the pad token when the tokenizer has none (the reference adds "[PAD]").
    pub pad_token: String,
    /// Train LoRA adapters on a frozen base instead of every weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    pub training: TrainingConfig,
}

/// SFT presets, one per reference script.
pub const SFT_PRESETS: [&str; 4] = [
    "lc_sft",
    "factuality_sft",
    "claude_distill",
    "extract_answers",
];

impl SftConfig {
    /// The hyperparameters of `examples/scripts/<name>.sh` (global batch = 4 GPUs × per-device
    /// batch × accumulation).
    pub fn preset(name: &str) -> Result<Self> {
        let training = match name {
            // The SFT scripts leave the eval batch at HF's default of 8.
            "lc_sft" => TrainingConfig::reference(5e-6, 3.0, 32, 4, 8, 0.03),
            "factuality_sft" => TrainingConfig::reference(8e-7, 3.0, 32, 4, 8, 0.03),
            "claude_distill" => TrainingConfig::reference(3e-6, 3.0, 32, 4, 8, 0.03),
            "extract_answers" => TrainingConfig::reference(5e-6, 5.0, 256, 4, 8, 0.03),
            other => {
                return Err(TrainError::config(
                    "preset",
                    format!("unknown SFT preset \"{other}\"; choose one of {SFT_PRESETS:?}"),
                ));
            }
        };
        Ok(SftConfig {
            model_max_length: 1024,
            packing: false,
            pad_token: "[PAD]".into(),
            lora: None,
            training,
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.model_max_length < 2 {
            return Err(TrainError::config(
                "model_max_length",
                format!("must be at least 2 tokens, got {}", self.model_max_length),
            ));
        }
        if self.pad_token.is_empty() {
            return Err(TrainError::config("pad_token", "must not be empty"));
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        self.training.validate()
    }
}

/// Reward models: a backbone with a scalar head, BCE on soft labels (SPEC 1.6, 1.8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardModelConfig {
    /// Sequences are truncated on the right to this length, then left-padded.
    pub model_max_length: usize,
    /// Added as the pad token when the tokenizer has none.
    pub pad_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    pub training: TrainingConfig,
}

/// Reward-model presets: `forecast_probs.sh` and `factuality_reward_modeling.sh`.
pub const REWARD_MODEL_PRESETS: [&str; 2] = ["forecast_probs", "factuality"];

impl RewardModelConfig {
    pub fn preset(name: &str) -> Result<Self> {
        let training = match name {
            // Both scripts share their hyperparameters: per-device batch 2 (eval 4) × 32
            // accumulation × 4 GPUs.
            "forecast_probs" | "factuality" => TrainingConfig::reference(5e-6, 5.0, 256, 2, 4, 0.1),
            other => {
                return Err(TrainError::config(
                    "preset",
                    format!(
                        "unknown reward-model preset \"{other}\"; \
                         choose one of {REWARD_MODEL_PRESETS:?}"
                    ),
                ));
            }
        };
        Ok(RewardModelConfig {
            model_max_length: 1024,
            pad_token: "[PAD]".into(),
            lora: None,
            training,
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.model_max_length < 1 {
            return Err(TrainError::config(
                "model_max_length",
                "must be at least 1 token",
            ));
        }
        if self.pad_token.is_empty() {
            return Err(TrainError::config("pad_token", "must not be empty"));
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        self.training.validate()
    }
}

/// Applies `key=value` overrides (dotted paths such as `training.learning_rate=1e-5`) to any
/// config. Values are read as JSON (numbers, booleans, lists, quoted strings) or else taken as
/// a plain string, so `training.schedule=linear` works.
pub fn with_overrides<C: Serialize + DeserializeOwned>(
    config: &C,
    overrides: &[String],
) -> Result<C> {
    let mut value = serde_json::to_value(config).expect("configs serialise");
    for assignment in overrides {
        let (key, raw) = assignment.split_once('=').ok_or_else(|| {
            TrainError::config(
                assignment,
                "an override is written key=value, e.g. training.learning_rate=1e-5",
            )
        })?;
        let key = key.trim();
        if NON_FINITE.contains(&raw.trim().to_lowercase().as_str()) {
            return Err(TrainError::config(key, NON_FINITE_MESSAGE));
        }
        let parsed = serde_json::from_str(raw.trim())
            .unwrap_or_else(|_| serde_json::Value::String(raw.trim().to_string()));
        let mut node = &mut value;
        let parts: Vec<&str> = key.split('.').collect();
        for (depth, part) in parts.iter().enumerate() {
            let object = node.as_object_mut().ok_or_else(|| {
                TrainError::config(
                    key,
                    format!("`{}` is not a table", parts[..depth].join(".")),
                )
            })?;
            let last = depth + 1 == parts.len();
            if !object.contains_key(*part) {
                // Optional tables and fields are absent until set.
                if !last {
                    object.insert(
                        part.to_string(),
                        serde_json::Value::Object(Default::default()),
                    );
                } else {
                    object.insert(part.to_string(), serde_json::Value::Null);
                }
            }
            node = object.get_mut(*part).expect("inserted above");
        }
        *node = parsed;
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // A NaN or infinity (TOML allows them) becomes null on its way through JSON.
        if message.starts_with("invalid type: null, expected f") {
            TrainError::config(&path, NON_FINITE_MESSAGE)
        } else {
            TrainError::config(&path, message)
        }
    })
}

/// Overrides that are not numbers a config can hold.
const NON_FINITE: [&str; 6] = ["nan", "inf", "+inf", "-inf", "infinity", "-infinity"];
const NON_FINITE_MESSAGE: &str = "is NaN or infinite; give a finite number (e.g. 1e-5)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_carry_the_reference_hyperparameters() {
        let lc = SftConfig::preset("lc_sft").unwrap();
        assert_eq!(
            (
                lc.training.learning_rate,
                lc.training.epochs,
                lc.training.batch_size,
                lc.training.accumulation_steps()
            ),
            (5e-6, 3.0, 32, 8)
        );
        assert_eq!(
            (
                lc.training.warmup_ratio,
                lc.training.schedule,
                lc.model_max_length,
                lc.training.weight_decay
            ),
            (0.03, Schedule::Cosine, 1024, 0.0)
        );
        assert_eq!(
            SftConfig::preset("factuality_sft")
                .unwrap()
                .training
                .learning_rate,
            8e-7
        );
        assert_eq!(
            SftConfig::preset("claude_distill")
                .unwrap()
                .training
                .learning_rate,
            3e-6
        );
        let extract = SftConfig::preset("extract_answers").unwrap();
        assert_eq!(
            (extract.training.epochs, extract.training.batch_size),
            (5.0, 256)
        );
        let rm = RewardModelConfig::preset("forecast_probs").unwrap();
        assert_eq!(
            (
                rm.training.batch_size,
                rm.training.micro_batch_size,
                rm.training.warmup_ratio,
                rm.training.epochs
            ),
            (256, 2, 0.1, 5.0)
        );
        let err = SftConfig::preset("lc_rl").unwrap_err().to_string();
        assert_eq!(
            err,
            "config field `preset`: unknown SFT preset \"lc_rl\"; choose one of [\"lc_sft\", \
             \"factuality_sft\", \"claude_distill\", \"extract_answers\"]"
        );
    }

    #[test]
    fn scale_shrinks_batch_epochs_and_intervals() {
        let t = SftConfig::preset("lc_sft")
            .unwrap()
            .training
            .scaled(0.1)
            .unwrap();
        // batch 32 → 3 (micro 4 → 3), epochs 3 → 0.3, intervals 25 → 3 (rounded).
        assert_eq!(
            (t.batch_size, t.micro_batch_size, t.eval_every, t.save_every),
            (3, 3, 3, 3)
        );
        assert!((t.epochs - 0.3).abs() < 1e-12);
        let t = RewardModelConfig::preset("factuality")
            .unwrap()
            .training
            .scaled(0.1)
            .unwrap();
        assert_eq!((t.batch_size, t.micro_batch_size), (26, 2));
        assert!(t.validate().is_ok());
        assert_eq!(
            t.scaled(0.0).unwrap_err().to_string(),
            "config field `scale`: must be in (0, 1], got 0"
        );
    }

    #[test]
    fn overrides_set_nested_fields_and_name_bad_ones() {
        let config = SftConfig::preset("lc_sft").unwrap();
        let set = |items: &[&str]| {
            with_overrides(
                &config,
                &items.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        let changed = set(&[
            "training.learning_rate=1e-4",
            "training.schedule=linear",
            "packing=true",
            "lora.r=8",
            "lora.alpha=16",
            "lora.target_modules=[\"q_proj\"]",
        ])
        .unwrap();
        assert_eq!(
            (
                changed.training.learning_rate,
                changed.training.schedule,
                changed.packing
            ),
            (1e-4, Schedule::Linear, true)
        );
        assert_eq!(
            changed.lora.unwrap(),
            LoraConfig {
                r: 8,
                alpha: 16.0,
                dropout: 0.0,
                target_modules: vec!["q_proj".into()]
            }
        );
        let err = set(&["training.lr=1e-4"]).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "config field `training.lr`: unknown field `lr`, expected one of `learning_rate`"
            ),
            "{err}"
        );
        let err = set(&["training.batch_size=-3"]).unwrap_err().to_string();
        assert!(
            err.starts_with("config field `training.batch_size`: invalid value: integer `-3`"),
            "{err}"
        );
        assert_eq!(
            set(&["packing"]).unwrap_err().to_string(),
            "config field `packing`: an override is written key=value, e.g. \
             training.learning_rate=1e-5"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut config = SftConfig::preset("lc_sft").unwrap();
        config.training.batch_size = 30;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "config field `training.batch_size`: must be a multiple of micro_batch_size (4), got 30"
        );
        let mut config = RewardModelConfig::preset("forecast_probs").unwrap();
        config.training.warmup_ratio = 1.5;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "config field `training.warmup_ratio`: must be in [0, 1), got 1.5"
        );
        let mut config = SftConfig::preset("lc_sft").unwrap();
        config.training.recomputed_layers = Some(20);
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("config field `training.recomputed_layers`: applies to gradient"),
            "{error}"
        );
        assert_eq!(config.training.recomputed(), None);
        config.training.gradient_checkpointing = true;
        config.validate().unwrap();
        assert_eq!(config.training.recomputed(), Some(20));
        config.training.recomputed_layers = Some(0);
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("config field `training.recomputed_layers`: must be at least 1"),
            "{error}"
        );
        config.training.recomputed_layers = None;
        assert_eq!(config.training.recomputed(), Some(usize::MAX));
    }

    /// NaN and infinity, from a TOML file or an override, are named as such (they read as
    /// "invalid type: null" on their way through JSON).
    #[test]
    fn non_finite_numbers_are_named() {
        let config = SftConfig::preset("lc_sft").unwrap();
        for value in ["nan", "inf", "-Infinity"] {
            let error = with_overrides(&config, &[format!("training.learning_rate={value}")])
                .unwrap_err()
                .to_string();
            assert_eq!(
                error,
                "config field `training.learning_rate`: is NaN or infinite; give a finite \
                 number (e.g. 1e-5)"
            );
        }
        // What a TOML file with `learning_rate = nan` reads to.
        let mut from_toml = config.clone();
        from_toml.training.learning_rate = f64::NAN;
        assert_eq!(
            with_overrides(&from_toml, &[]).unwrap_err().to_string(),
            "config field `training.learning_rate`: is NaN or infinite; give a finite number \
             (e.g. 1e-5)"
        );
    }
}
