//! The trained surrogate reader (SPEC 1.5-1.6) as a QA evaluation reader: the ExtractAnswers
//! model lists the answers of a paragraph (`"a; b"` or `"No Answer"`, sampled at temperature
//! 0.3, up to 300 tokens, through the run's cached `Llm` client), and the ForecastProbs reward
//! model gives each answer the probability sigmoid(logit) of its `forecast_probs_model` prompt
//! (the paragraph cut to 2,000 characters, the text truncated to 1,024 tokens).

use std::path::Path;

use anyhow::{Context, Result};
use lincal_data::prompts::Templates;
use lincal_eval::readers::{ForecastInput, ItemResults, ReadInput, Reader, extract_with_model};
use lincal_eval::{PipelineError, TeacherSettings};
use lincal_llm::Llm;
use lincal_model::Tokenizer;
use lincal_train::RewardModel;

/// ForecastProbs inputs are truncated on the right to this many tokens (SPEC 1.6).
pub const FORECAST_MAX_TOKENS: usize = 1024;

pub struct SurrogateReader<'a> {
    /// The ExtractAnswers model, behind the run's client (cache, batching).
    extractor: &'a dyn Llm,
    forecaster: RewardModel,
    tokenizer: Tokenizer,
    pad_id: i64,
    /// The forecaster as the run's manifest names it.
    forecaster_name: String,
    templates: &'a Templates,
    /// Sampling of the extractor: temperature 0.3, as during PPO.
    settings: TeacherSettings,
    batch_size: usize,
}

impl<'a> SurrogateReader<'a> {
    /// Loads the ForecastProbs model of `forecaster_dir` (a `lincal reward-model` output) with
    /// its tokenizer; `extractor` is the ExtractAnswers model as an `Llm`, sampled with the
    /// attempts and seed of `teacher` at temperature 0.3.
    pub fn load(
        extractor: &'a dyn Llm,
        forecaster_dir: &Path,
        device: tch::Device,
        kind: tch::Kind,
        batch_size: usize,
        templates: &'a Templates,
        teacher: &TeacherSettings,
    ) -> Result<Self> {
        let forecaster = RewardModel::load(forecaster_dir, device, Some(kind))
            .with_context(|| format!("loading the ForecastProbs model in {}", forecaster_dir.display()))?;
        let tokenizer = Tokenizer::from_dir(forecaster_dir)?;
        let pad_id = tokenizer
            .pad_token()
            .and_then(|token| tokenizer.token_id(&token))
            .with_context(|| format!("{}: the ForecastProbs tokenizer has no pad token; it pads on the left", forecaster_dir.display()))?;
        let forecaster_name = forecaster_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", forecaster_dir.display()))?
            .display()
            .to_string();
        Ok(SurrogateReader {
            extractor,
            forecaster,
            tokenizer,
            pad_id,
            forecaster_name,
            templates,
            settings: TeacherSettings { temperature: 0.3, ..teacher.clone() },
            batch_size: batch_size.max(1),
        })
    }
}

impl Reader for SurrogateReader<'_> {
    fn describe(&self) -> String {
        format!("surrogate: ExtractAnswers {} + ForecastProbs {}", self.extractor.model(), self.forecaster_name)
    }

    fn extract(&self, inputs: &[ReadInput<'_>]) -> ItemResults<Vec<String>> {
        extract_with_model(self.extractor, self.templates, &self.settings, inputs)
    }

    fn forecast(&self, inputs: &[ForecastInput<'_>]) -> ItemResults<f64> {
        let texts = inputs
            .iter()
            .map(|input| self.templates.forecast_probs_model(input.question, input.paragraph, input.candidate))
            .collect::<Result<Vec<String>, _>>()
            .map_err(PipelineError::from)?;
        let logits = self
            .forecaster
            .score_texts(&self.tokenizer, &texts, FORECAST_MAX_TOKENS, self.pad_id, self.batch_size)
            .map_err(|error| PipelineError::Model { role: "ForecastProbs forecaster".into(), message: error.to_string() })?;
        Ok(logits.into_iter().map(|logit| Ok(1.0 / (1.0 + (-f64::from(logit)).exp()))).collect())
    }
}
