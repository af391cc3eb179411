//! The trained surrogate reader (SPEC 1.5-1.6) as a QA evaluation reader: the ExtractAnswers
//! model lists the answers of a paragraph through the run's cached `Llm` client, sampled as
//! PPO samples it ([`extract_with_model`]), and the ForecastProbs model gives each answer the
//! probability of its `forecast_probs_model` prompt through the same [`Scorer`] as PPO's
//! reward.

use std::path::Path;

use anyhow::{Context, Result};
use lincal_data::parse::ExtractionParsing;
use lincal_data::prompts::Templates;
use lincal_eval::readers::{ForecastInput, ItemResults, ReadInput, Reader, extract_with_model};
use lincal_eval::{PipelineError, TeacherSettings};
use lincal_llm::Llm;
use lincal_train::scorer::DEFAULT_MAX_TOKENS;
use lincal_train::{BatchLimits, Scorer};

pub struct SurrogateReader<'a> {
    /// The ExtractAnswers model, behind the run's client (cache, batching).
    extractor: &'a dyn Llm,
    forecaster: Scorer,
    /// The forecaster as the run's manifest names it.
    forecaster_name: String,
    templates: &'a Templates,
    /// Attempts and seed of the extractor's requests.
    settings: TeacherSettings,
    /// How the extractor's replies become candidates, as in the PPO reward.
    parsing: ExtractionParsing,
    /// New tokens an extractor reply may take.
    max_tokens: u32,
}

impl<'a> SurrogateReader<'a> {
    /// Loads the ForecastProbs model of `forecaster_dir` (a `lincal reward-model` output) with
    /// its tokenizer; `extractor` is the ExtractAnswers model as an `Llm`, asked with the
    /// attempts and seed of `teacher`, its replies read as `parsing` says.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        extractor: &'a dyn Llm,
        forecaster_dir: &Path,
        device: tch::Device,
        kind: tch::Kind,
        batch_size: usize,
        templates: &'a Templates,
        teacher: &TeacherSettings,
        parsing: ExtractionParsing,
        max_tokens: u32,
    ) -> Result<Self> {
        let forecaster = Scorer::load(
            forecaster_dir,
            device,
            Some(kind),
            DEFAULT_MAX_TOKENS,
            BatchLimits::rows(batch_size),
        )
        .with_context(|| {
            format!(
                "loading the ForecastProbs model in {}",
                forecaster_dir.display()
            )
        })?;
        let forecaster_name = forecaster_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", forecaster_dir.display()))?
            .display()
            .to_string();
        Ok(SurrogateReader {
            extractor,
            forecaster,
            forecaster_name,
            templates,
            settings: teacher.clone(),
            parsing,
            max_tokens,
        })
    }
}

impl Reader for SurrogateReader<'_> {
    fn describe(&self) -> String {
        format!(
            "surrogate: ExtractAnswers {} + ForecastProbs {} ({} extraction parsing)",
            self.extractor.model(),
            self.forecaster_name,
            self.parsing.name()
        )
    }

    fn extract(&self, inputs: &[ReadInput<'_>]) -> ItemResults<Vec<String>> {
        extract_with_model(
            self.extractor,
            self.templates,
            &self.settings,
            self.parsing,
            self.max_tokens,
            inputs,
        )
    }

    fn forecast(&self, inputs: &[ForecastInput<'_>]) -> ItemResults<f64> {
        let texts = inputs
            .iter()
            .map(|input| {
                self.templates.forecast_probs_model(
                    input.question,
                    input.paragraph,
                    input.candidate,
                )
            })
            .collect::<Result<Vec<String>, _>>()
            .map_err(PipelineError::from)?;
        let probabilities =
            self.forecaster
                .probabilities(&texts)
                .map_err(|error| PipelineError::Model {
                    role: "ForecastProbs forecaster".into(),
                    message: error.to_string(),
                })?;
        Ok(probabilities.into_iter().map(Ok).collect())
    }
}
