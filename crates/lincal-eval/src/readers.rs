//! Readers of QA paragraphs (SPEC 5.1 steps 2-3): a reader lists the answers a paragraph puts
//! forward and forecasts, for each, the probability that it is correct given only the
//! paragraph. Three readers stand behind the [`Reader`] trait:
//!
//! - [`LlmReader`]: a teacher model (any `Llm`: an API, a local model) with the extraction and
//!   forecast prompts, as the reference's Claude reader;
//! - the trained surrogate reader (ExtractAnswers + ForecastProbs, SPEC 1.5-1.6), which lives
//!   in the `lincal` crate because it runs on libtorch; its extraction is
//!   [`extract_with_model`];
//! - [`LexicalQaReader`]: fast and deterministic, no model at all (see its caveat).

use lincal_data::parse::{
    LexicalReader, contains_match, parse_extracted_answers, parse_probability,
    parse_teacher_extraction,
};
use lincal_data::prompts::{
    EXTRACT_ANSWERS_MAX_TOKENS, EXTRACT_ANSWERS_TEMPERATURE, ExtractionUse, Templates,
};
use lincal_llm::{Llm, Prompt};

use crate::Stage;
use crate::pipeline::{ItemFailure, PipelineError, TeacherSettings, chat_prompt, describe_llm};

/// New tokens for a teacher's extraction reply: a line of reasoning and a line of answers.
pub const EXTRACTION_REPLY_MAX_TOKENS: u32 = 256;
/// New tokens for a teacher's forecast reply: a line of reasoning and a probability.
pub const FORECAST_REPLY_MAX_TOKENS: u32 = 128;

/// A paragraph to read for one question.
#[derive(Debug, Clone, Copy)]
pub struct ReadInput<'a> {
    pub id: &'a str,
    pub question: &'a str,
    pub paragraph: &'a str,
    /// The accepted answers, gold first. Only [`LexicalQaReader`] looks at them.
    pub gold_aliases: &'a [String],
}

/// One answer of a paragraph to forecast.
#[derive(Debug, Clone, Copy)]
pub struct ForecastInput<'a> {
    pub id: &'a str,
    pub question: &'a str,
    pub paragraph: &'a str,
    pub candidate: &'a str,
}

/// Results of a batch: one per input, in order. The outer error is a failure of the reader as
/// a whole (a broken prompt template, a model that cannot run); the inner ones are single
/// items that got no usable answer.
pub type ItemResults<T> = Result<Vec<Result<T, ItemFailure>>, PipelineError>;

/// Extracts answers from paragraphs and forecasts their probabilities.
pub trait Reader {
    /// The reader and its models, for reports and for the run's manifest: it must change
    /// whenever the reader's outputs would.
    fn describe(&self) -> String;

    /// The answers each paragraph puts forward, in the order it gives them.
    fn extract(&self, inputs: &[ReadInput<'_>]) -> ItemResults<Vec<String>>;

    /// The probability that each candidate is a correct answer, given only the paragraph.
    fn forecast(&self, inputs: &[ForecastInput<'_>]) -> ItemResults<f64>;
}

/// A teacher model as reader: the `extract_answers` prompt (10 examples, as in evaluation) and
/// the `forecast_probability` prompt, each answer parsed and asked again if it does not parse.
pub struct LlmReader<'a> {
    pub llm: &'a dyn Llm,
    pub templates: &'a Templates,
    pub settings: TeacherSettings,
}

impl Reader for LlmReader<'_> {
    fn describe(&self) -> String {
        describe_llm(self.llm)
    }

    fn extract(&self, inputs: &[ReadInput<'_>]) -> ItemResults<Vec<String>> {
        self.settings.ask(
            self.llm,
            inputs,
            EXTRACTION_REPLY_MAX_TOKENS,
            Stage::Extraction,
            |input| {
                let messages = self.templates.extract_answers(
                    input.question,
                    input.paragraph,
                    ExtractionUse::Evaluation,
                )?;
                Ok((chat_prompt(messages), format!("extract/{}", input.id)))
            },
            parse_teacher_extraction,
        )
    }

    fn forecast(&self, inputs: &[ForecastInput<'_>]) -> ItemResults<f64> {
        self.settings.ask(
            self.llm,
            inputs,
            FORECAST_REPLY_MAX_TOKENS,
            Stage::Forecast,
            |input| {
                let messages = self.templates.forecast_probability(
                    input.question,
                    input.paragraph,
                    input.candidate,
                )?;
                let key = format!("forecast/{}/{}", input.id, input.candidate);
                Ok((chat_prompt(messages), key))
            },
            parse_probability,
        )
    }
}

/// Extraction by a trained ExtractAnswers model (SPEC 1.5): the `extract_answers_model`
/// prompt as a completion, sampled as PPO samples it ([`EXTRACT_ANSWERS_TEMPERATURE`], up to
/// [`EXTRACT_ANSWERS_MAX_TOKENS`] new tokens), the reply `"a; b"` or `"No Answer"`. `settings`
/// gives the attempts and the seed.
pub fn extract_with_model(
    llm: &dyn Llm,
    templates: &Templates,
    settings: &TeacherSettings,
    inputs: &[ReadInput<'_>],
) -> ItemResults<Vec<String>> {
    let settings = TeacherSettings {
        temperature: EXTRACT_ANSWERS_TEMPERATURE,
        ..settings.clone()
    };
    settings.ask(
        llm,
        inputs,
        EXTRACT_ANSWERS_MAX_TOKENS,
        Stage::Extraction,
        |input| {
            let prompt = templates.extract_answers_model(input.question, input.paragraph)?;
            Ok((Prompt::Completion(prompt), format!("extract/{}", input.id)))
        },
        parse_extracted_answers,
    )
}

/// A reader without a model, for quick and fully reproducible runs.
///
/// Extraction finds the gold answer: the first of the accepted answers that the paragraph
/// mentions (alias-normalised, whole words), or nothing. Forecasting reads the confidence the
/// paragraph states for the candidate with the hedge table ([`LexicalReader::forecast`]).
///
/// Caveat: it never sees wrong answers. A paragraph that does not mention the gold answer
/// counts as giving no answer (wrong, confidence 1), even when it hedges a wrong one, so ECE
/// is higher than a model reader would find for paragraphs that hedge their wrong answers;
/// use a model reader for numbers to compare with the paper.
#[derive(Debug, Clone, Default)]
pub struct LexicalQaReader {
    pub reader: LexicalReader,
}

impl Reader for LexicalQaReader {
    fn describe(&self) -> String {
        format!(
            "lexical (gold aliases found in the paragraph; hedge table of {} phrases)",
            self.reader.hedges().entries().len()
        )
    }

    fn extract(&self, inputs: &[ReadInput<'_>]) -> ItemResults<Vec<String>> {
        Ok(inputs
            .iter()
            .map(|input| {
                Ok(input
                    .gold_aliases
                    .iter()
                    .find(|alias| contains_match(input.paragraph, std::slice::from_ref(*alias)))
                    .cloned()
                    .into_iter()
                    .collect())
            })
            .collect())
    }

    fn forecast(&self, inputs: &[ForecastInput<'_>]) -> ItemResults<f64> {
        Ok(inputs
            .iter()
            .map(|input| Ok(self.reader.forecast(input.paragraph, &[input.candidate])[0]))
            .collect())
    }
}
