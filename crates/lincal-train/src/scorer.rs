//! A reward model ready to score texts: the one place that knows how a ForecastProbs or
//! Factuality model reads its input (truncation to `max_tokens`, its last token) and turns
//! its logit into a probability. PPO's rewards, the surrogate reader of evaluation and
//! `lincal score` all score through it.

use crate::error::{Result, TrainError};
use crate::reward_model::{BatchLimits, RewardModel};
use lincal_model::Tokenizer;
use std::path::Path;
use std::rc::Rc;
use tch::{Device, Kind};

/// Reward-model inputs are truncated on the right to this many tokens (the reference's
/// `model_max_length`, SPEC 1.6 and 2).
pub const DEFAULT_MAX_TOKENS: usize = 1024;

/// The probability a reward model's logit stands for.
pub fn sigmoid(logit: f64) -> f64 {
    1.0 / (1.0 + (-logit).exp())
}

/// The id a tokenizer pads with: its pad token, else its EOS. The padding of a batch's rows
/// is masked, so only the row length matters, not which id fills it.
pub fn padding_id(tokenizer: &Tokenizer, what: &str) -> Result<i64> {
    tokenizer
        .pad_token()
        .or_else(|| tokenizer.eos_token())
        .and_then(|t| tokenizer.token_id(&t))
        .ok_or_else(|| {
            TrainError::config(
                what,
                "the tokenizer has neither a pad nor an eos token to pad batches with; \
                 set one in tokenizer_config.json",
            )
        })
}

/// A reward model with its tokenizer and input limit.
pub struct Scorer {
    model: Rc<RewardModel>,
    tokenizer: Tokenizer,
    pad_id: i64,
    max_tokens: usize,
    limits: BatchLimits,
}

impl Scorer {
    /// `what` names the model in errors (a config key such as `reward_model`).
    pub fn new(
        model: Rc<RewardModel>,
        tokenizer: Tokenizer,
        max_tokens: usize,
        limits: BatchLimits,
        what: &str,
    ) -> Result<Self> {
        let pad_id = padding_id(&tokenizer, what)?;
        Ok(Scorer {
            model,
            tokenizer,
            pad_id,
            max_tokens,
            limits,
        })
    }

    /// Loads the reward model of `dir` (a `lincal reward-model` output) with its tokenizer.
    pub fn load(
        dir: &Path,
        device: Device,
        kind: Option<Kind>,
        max_tokens: usize,
        limits: BatchLimits,
    ) -> Result<Self> {
        let model = RewardModel::load(dir, device, kind)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        Scorer::new(
            Rc::new(model),
            tokenizer,
            max_tokens,
            limits,
            &dir.display().to_string(),
        )
    }

    pub fn model(&self) -> &RewardModel {
        &self.model
    }

    /// The logit of each text.
    pub fn logits(&self, texts: &[String]) -> Result<Vec<f32>> {
        self.model.score_texts(
            &self.tokenizer,
            texts,
            self.max_tokens,
            self.pad_id,
            self.limits,
        )
    }

    /// sigmoid(logit) of each text.
    pub fn probabilities(&self, texts: &[String]) -> Result<Vec<f64>> {
        Ok(self
            .logits(texts)?
            .into_iter()
            .map(|logit| sigmoid(f64::from(logit)))
            .collect())
    }
}
