//! What the QA and biography pipelines share: their error type, progress events, the method
//! under evaluation and how its paragraphs are generated, teacher calls that ask again when an
//! answer does not parse, and stages that commit their records as they go.
//!
//! A run directory is a stage artifact of `lincal_data::artifact` (`manifest.json`,
//! `failures.jsonl`, `metrics.jsonl`, the response cache `cache.sqlite`), holding one JSONL file
//! per pipeline stage and the report of `write_run_report`. Each stage appends its records to
//! `<stage>.jsonl.partial` chunk by chunk, so a killed run resumes where it stopped; with the
//! response cache in the directory, calls it had made are not made again either.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use lincal_data::DataError;
use lincal_data::artifact::{Failure, Keyed, Opened, StageRun, open_stage};
use lincal_data::parse::first_paragraph;
use lincal_data::prompts::{self, JUDGE_BATCH_SIZE, Templates};
pub use lincal_distill::chat_prompt;
pub use lincal_llm::request_seed;
use lincal_llm::{
    Llm, LlmError, LlmRequest, LlmResponse, ParseFailure, Prompt, SamplingParams, generate_parsed,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::report::{
    EXAMPLES_FILE, FRONTIER_PLOT, RELIABILITY_PLOT, REPORT_HTML_FILE, REPORT_MD_FILE, RESULTS_FILE,
    RISK_COVERAGE_PLOT,
};
use crate::{
    EvalError, ReportOptions, RunResults, RunSettings, ScoredExample, Stage, StageFailure,
    read_examples, read_results, write_run_report,
};

/// Why a pipeline could not run. Failures of single items are not errors: they are recorded
/// with the item and counted in the report.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error(transparent)]
    Data(#[from] DataError),
    /// Settings or inputs that cannot work together; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// A model of a role (the surrogate reader's forecaster, say) failed as a whole.
    #[error("the {role} failed: {message}")]
    Model { role: String, message: String },
}

/// What a pipeline reports while it works (a CLI turns it into progress bars).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressEvent {
    /// A stage begins with `total` items, `done` of them finished by an interrupted run.
    Started {
        stage: Stage,
        total: usize,
        done: usize,
    },
    /// `by` more items of the stage are finished.
    Advanced {
        stage: Stage,
        by: usize,
    },
    Finished {
        stage: Stage,
    },
}

/// Receives [`ProgressEvent`]s; any `Fn(ProgressEvent)` is one.
pub trait Progress {
    fn report(&self, event: ProgressEvent);
}

impl<F: Fn(ProgressEvent)> Progress for F {
    fn report(&self, event: ProgressEvent) {
        self(event)
    }
}

/// Why one item got nothing usable from a stage: the note that goes with the scored item, and
/// the line of `failures.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemFailure {
    pub stage: Stage,
    pub message: String,
    /// The last unparseable answer, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_text: Option<String>,
    /// Calls made for the item (0 where none was made).
    pub attempts: u32,
}

impl ItemFailure {
    /// A failure that made no call: the message says why.
    pub fn without_call(stage: Stage, message: impl Into<String>) -> Self {
        ItemFailure {
            stage,
            message: message.into(),
            raw_text: None,
            attempts: 0,
        }
    }

    fn from_parse(stage: Stage, failure: ParseFailure) -> Self {
        match failure {
            ParseFailure::Unparseable {
                raw_text,
                error,
                attempts,
                ..
            } => ItemFailure {
                stage,
                message: format!("no usable answer in {attempts} attempts: {error}"),
                raw_text: Some(raw_text),
                attempts,
            },
            ParseFailure::Call { error, attempts } => ItemFailure {
                stage,
                message: format!("the call failed: {error}"),
                raw_text: None,
                attempts,
            },
        }
    }

    /// The note kept with the scored item.
    pub fn note(&self) -> StageFailure {
        StageFailure {
            stage: self.stage,
            message: self.message.clone(),
        }
    }

    fn record(&self, id: &str) -> Failure {
        Failure {
            id: id.to_string(),
            step: self.stage.to_string(),
            reason: self.message.clone(),
            raw_text: self.raw_text.clone(),
            attempts: self.attempts,
        }
    }
}

/// How the evaluated model is prompted (SPEC 5.1 step 1, SPEC 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptStyle {
    /// The prompt of every fine-tuned policy (LC SFT/RL, Factuality SFT/RL, Claude Distill).
    Finetuned,
    /// The base model's 8-shot paragraphs; the output is cut at its first blank line.
    Icl,
    /// 8-shot paragraphs that state their confidence; cut like `Icl`.
    SummaryIcl,
    /// A chat model asked for a paragraph (GPT-4 0-shot, Llama 2 Chat).
    ZeroShot,
    /// A chat model asked for a paragraph with probabilities on uncertain claims (GPT-4 JAFU).
    Jafu,
    /// Direct Summary Eval (the paper's appendix A.2; the reference has no script for it):
    /// [`DIRECT_SUMMARY_SAMPLES`] 8-shot paragraphs at temperature
    /// [`DIRECT_SUMMARY_SAMPLE_TEMPERATURE`], summarised by a teacher ([`Policy::summarizer`],
    /// with the distillation's `summarize_samples` prompt) at
    /// [`DIRECT_SUMMARY_TEMPERATURE`]; the summary is the paragraph evaluated.
    DirectSummary,
}

/// Direct Summary Eval's samples per question, their temperature, and the summary's, as the
/// paper's text describes them (the SFT data's summaries, made at evaluation time).
pub const DIRECT_SUMMARY_SAMPLES: usize = 8;
pub const DIRECT_SUMMARY_SAMPLE_TEMPERATURE: f64 = 0.7;
pub const DIRECT_SUMMARY_TEMPERATURE: f64 = 0.3;

impl PromptStyle {
    pub const ALL: [PromptStyle; 6] = [
        PromptStyle::Finetuned,
        PromptStyle::Icl,
        PromptStyle::SummaryIcl,
        PromptStyle::ZeroShot,
        PromptStyle::Jafu,
        PromptStyle::DirectSummary,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PromptStyle::Finetuned => "finetuned",
            PromptStyle::Icl => "icl",
            PromptStyle::SummaryIcl => "summary-icl",
            PromptStyle::ZeroShot => "zero-shot",
            PromptStyle::Jafu => "jafu",
            PromptStyle::DirectSummary => "direct-summary",
        }
    }

    /// The few-shot styles, whose samples run on into the next example.
    fn cut_at_blank_line(self) -> bool {
        matches!(
            self,
            PromptStyle::Icl | PromptStyle::SummaryIcl | PromptStyle::DirectSummary
        )
    }

    /// The request for `query` in this style: a completion for the first three, a chat for the
    /// others (or always a chat, for chat-only APIs, with `completion_as_chat`).
    fn request(
        self,
        templates: &Templates,
        query: &str,
        completion_as_chat: bool,
        params: SamplingParams,
    ) -> Result<LlmRequest, DataError> {
        let completion = match self {
            PromptStyle::Finetuned => templates.policy(query)?,
            PromptStyle::Icl | PromptStyle::DirectSummary => templates.icl_paragraphs(query)?,
            PromptStyle::SummaryIcl => templates.summary_icl_paragraphs(query)?,
            PromptStyle::ZeroShot => {
                return Ok(chat_request(templates.paragraph_zero_shot(query)?, params));
            }
            PromptStyle::Jafu => {
                return Ok(chat_request(templates.paragraph_jafu(query)?, params));
            }
        };
        Ok(if completion_as_chat {
            LlmRequest::chat(vec![lincal_llm::ChatMessage::user(completion)], params)
        } else {
            LlmRequest::completion(completion, params)
        })
    }
}

impl FromStr for PromptStyle {
    type Err = PipelineError;

    fn from_str(name: &str) -> Result<Self, PipelineError> {
        PromptStyle::ALL
            .into_iter()
            .find(|style| style.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = PromptStyle::ALL.iter().map(|s| s.name()).collect();
                PipelineError::Invalid(format!(
                    "unknown prompt style {name:?}; the styles are {}",
                    names.join(", ")
                ))
            })
    }
}

/// The method under evaluation: its name in reports, how it is prompted, and whether its
/// paragraphs state confidence (forecast per answer) or not (every answer counts as certain).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Method {
    pub name: String,
    pub prompt: PromptStyle,
    pub states_confidence: bool,
}

/// The paper's methods (SPEC 5.5) with their prompts and whether they state confidence.
const PRESETS: [(&str, PromptStyle, bool); 13] = [
    ("LC RL", PromptStyle::Finetuned, true),
    ("LC SFT", PromptStyle::Finetuned, true),
    ("Factuality RL", PromptStyle::Finetuned, false),
    ("Factuality SFT", PromptStyle::Finetuned, false),
    ("Claude Distill", PromptStyle::Finetuned, false),
    ("ICL 8-Shot", PromptStyle::Icl, false),
    ("Summary ICL 8-Shot", PromptStyle::SummaryIcl, true),
    ("Llama 2 Chat 7B", PromptStyle::ZeroShot, false),
    ("GPT-4 0-Shot", PromptStyle::ZeroShot, false),
    ("GPT-4 ICL 8-Shot", PromptStyle::Icl, false),
    ("GPT-4 JAFU 0-Shot", PromptStyle::Jafu, true),
    ("GPT-4 Summary ICL 8-Shot", PromptStyle::SummaryIcl, true),
    ("Direct Summary Eval", PromptStyle::DirectSummary, true),
];

impl Method {
    /// One of the paper's methods, matched on letters and digits without case ("lc-sft",
    /// "LC SFT"); `None` for any other name.
    pub fn preset(name: &str) -> Option<Method> {
        let key = |text: &str| -> String {
            text.chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        PRESETS
            .iter()
            .find(|(preset, ..)| key(preset) == key(name))
            .map(|&(preset, prompt, states_confidence)| Method {
                name: preset.to_string(),
                prompt,
                states_confidence,
            })
    }

    /// The names [`Method::preset`] knows.
    pub fn preset_names() -> Vec<&'static str> {
        PRESETS.iter().map(|(name, ..)| *name).collect()
    }
}

/// How the evaluated model samples (SPEC 5.1 step 1: temperature 0.3; local models top-p 0.9
/// and 512 new tokens, API models top-p 1.0 and 1,800 tokens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSettings {
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub max_tokens: u32,
    /// Seeds of every request derive from this and the item's id.
    pub seed: u64,
    /// Send completion-style prompts (fine-tuned, few-shot) as one user message, for APIs
    /// that only chat.
    pub completion_as_chat: bool,
}

impl GenerationSettings {
    /// The reference's settings for a local model.
    pub fn local() -> Self {
        GenerationSettings {
            temperature: 0.3,
            top_p: Some(0.9),
            max_tokens: 512,
            seed: 1,
            completion_as_chat: false,
        }
    }

    /// The reference's settings for an API model.
    pub fn api() -> Self {
        GenerationSettings {
            top_p: None,
            max_tokens: 1800,
            completion_as_chat: true,
            ..GenerationSettings::local()
        }
    }
}

/// How the teacher roles (reader, judge, decomposer, checker) sample: temperature 0.2 as in
/// the reference (SPEC 5.1, 5.3), asking again with the next seed when an answer does not
/// parse, up to `max_attempts` calls (the reference allowed 100 rounds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherSettings {
    pub temperature: f64,
    pub max_attempts: u32,
    pub seed: u64,
}

impl Default for TeacherSettings {
    fn default() -> Self {
        TeacherSettings {
            temperature: 0.2,
            max_attempts: 10,
            seed: 1,
        }
    }
}

impl TeacherSettings {
    /// A request of `prompt` for the item or call named `key`, which fixes its seed.
    pub fn request(&self, prompt: Prompt, max_tokens: u32, key: &str) -> LlmRequest {
        LlmRequest {
            prompt,
            params: self.params(max_tokens, key),
        }
    }

    /// The sampling of a request for the item or call named `key`, which fixes its seed.
    pub fn params(&self, max_tokens: u32, key: &str) -> SamplingParams {
        SamplingParams {
            n: 1,
            temperature: self.temperature,
            top_p: None,
            max_tokens,
            stop: Vec::new(),
            seed: request_seed(self.seed, key),
        }
    }

    /// Asks `llm` one request per input, `prompt` giving an input's prompt and the key that
    /// names its request (and fixes its seed), and reads each answer with `parse` as
    /// [`ask_parsed`] does: one result per input, in order.
    pub(crate) fn ask<I, T>(
        &self,
        llm: &dyn Llm,
        inputs: &[I],
        max_tokens: u32,
        stage: Stage,
        prompt: impl Fn(&I) -> Result<(Prompt, String), PipelineError>,
        parse: impl Fn(&str) -> lincal_data::Result<T>,
    ) -> Result<Vec<Result<T, ItemFailure>>, PipelineError> {
        self.ask_requests(
            llm,
            inputs,
            stage,
            |input| {
                let (prompt, key) = prompt(input)?;
                Ok(self.request(prompt, max_tokens, &key))
            },
            parse,
        )
    }

    /// [`TeacherSettings::ask`] for requests made whole by `request`.
    pub(crate) fn ask_requests<I, T>(
        &self,
        llm: &dyn Llm,
        inputs: &[I],
        stage: Stage,
        request: impl Fn(&I) -> Result<LlmRequest, PipelineError>,
        parse: impl Fn(&str) -> lincal_data::Result<T>,
    ) -> Result<Vec<Result<T, ItemFailure>>, PipelineError> {
        let requests = inputs
            .iter()
            .map(request)
            .collect::<Result<Vec<LlmRequest>, PipelineError>>()?;
        Ok(ask_parsed(llm, &requests, self.max_attempts, stage, parse))
    }
}

/// A model in a role, as reports and manifests name it.
pub(crate) fn describe_llm(llm: &dyn Llm) -> String {
    format!("llm {} {}", llm.backend(), llm.model())
}

fn chat_request(messages: Vec<prompts::PromptMessage>, params: SamplingParams) -> LlmRequest {
    LlmRequest {
        prompt: chat_prompt(messages),
        params,
    }
}

/// Asks `llm` every request, parsing each answer with `parse`; an answer that does not parse
/// is asked again with the next seed (see [`generate_parsed`]). One result per request.
pub fn ask_parsed<T>(
    llm: &dyn Llm,
    requests: &[LlmRequest],
    max_attempts: u32,
    stage: Stage,
    parse: impl Fn(&str) -> lincal_data::Result<T>,
) -> Vec<Result<T, ItemFailure>> {
    generate_parsed(llm, requests, max_attempts, |text| {
        parse(text).map_err(|e| e.to_string())
    })
    .into_iter()
    .map(|outcome| match outcome {
        Ok(parsed) => parsed
            .values
            .into_iter()
            .next()
            .ok_or_else(|| ItemFailure::without_call(stage, "the answer had no sample")),
        Err(failure) => Err(ItemFailure::from_parse(stage, failure)),
    })
    .collect()
}

/// The paragraphs of the evaluated model, one per question or person.
pub const GENERATIONS_FILE: &str = "generations.jsonl";

/// The generated paragraph of one item (question or entity), keyed by the item's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GenerationRecord {
    pub id: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<ItemFailure>,
}

impl Keyed for GenerationRecord {
    fn key(&self) -> &str {
        &self.id
    }
}

/// The evaluated model and how it writes: the generation stage of both pipelines.
pub struct Policy<'a> {
    pub llm: &'a dyn Llm,
    pub method: &'a Method,
    pub settings: &'a GenerationSettings,
    pub templates: &'a Templates,
    /// The teacher that summarises the samples of [`PromptStyle::DirectSummary`] (asked at its
    /// settings' temperature, [`DIRECT_SUMMARY_TEMPERATURE`] for the paper's method); no other
    /// style has one.
    pub summarizer: Option<Summarizer<'a>>,
}

/// A teacher that writes one paragraph from a question's samples.
#[derive(Clone, Copy)]
pub struct Summarizer<'a> {
    pub llm: &'a dyn Llm,
    pub settings: &'a TeacherSettings,
}

impl Policy<'_> {
    /// Checks that the method has the models it needs: a summarizer for Direct Summary Eval,
    /// and none for the others.
    pub fn check(&self) -> Result<(), PipelineError> {
        match (self.method.prompt, &self.summarizer) {
            (PromptStyle::DirectSummary, None) => Err(PipelineError::Invalid(format!(
                "the method `{}` summarises the policy's samples: give it a summarizer model",
                self.method.name
            ))),
            (PromptStyle::DirectSummary, Some(_)) | (_, None) => Ok(()),
            (style, Some(_)) => Err(PipelineError::Invalid(format!(
                "only Direct Summary Eval (prompt direct-summary) uses a summarizer; the method \
                 `{}` is prompted {}: leave the summarizer out",
                self.method.name,
                style.name()
            ))),
        }
    }

    /// One paragraph per `(id, query)`, in order: the text of the first sample, cut at the
    /// first blank line for few-shot prompts; for Direct Summary Eval, the summary of the
    /// query's samples. A failed call leaves an empty paragraph and the failure.
    pub(crate) fn generate(
        &self,
        items: &[(&str, &str)],
    ) -> Result<Vec<GenerationRecord>, PipelineError> {
        if self.method.prompt == PromptStyle::DirectSummary {
            return self.generate_summaries(items);
        }
        let settings = self.settings;
        let requests = items
            .iter()
            .map(|(id, query)| self.request(query, settings.temperature, id))
            .collect::<Result<Vec<_>, _>>()?;
        let responses = self.ask(&requests)?;
        Ok(items
            .iter()
            .zip(responses)
            .map(|((id, _), response)| match response {
                Ok(response) => {
                    let text = response.text();
                    GenerationRecord {
                        id: id.to_string(),
                        text: if self.method.prompt.cut_at_blank_line() {
                            first_paragraph(text)
                        } else {
                            text.trim().to_string()
                        },
                        failure: None,
                    }
                }
                Err(error) => GenerationRecord {
                    id: id.to_string(),
                    text: String::new(),
                    failure: Some(ItemFailure {
                        stage: Stage::Generation,
                        message: format!("the call failed: {error}"),
                        raw_text: None,
                        attempts: 1,
                    }),
                },
            })
            .collect())
    }

    /// The request for `query` in the method's style at `temperature`, seeded by `key`.
    fn request(
        &self,
        query: &str,
        temperature: f64,
        key: &str,
    ) -> Result<LlmRequest, PipelineError> {
        let settings = self.settings;
        let params = SamplingParams {
            n: 1,
            temperature,
            top_p: settings.top_p,
            max_tokens: settings.max_tokens,
            stop: Vec::new(),
            seed: request_seed(settings.seed, key),
        };
        Ok(self.method.prompt.request(
            self.templates,
            query,
            settings.completion_as_chat,
            params,
        )?)
    }

    /// The policy's answers to `requests`, one each.
    fn ask(
        &self,
        requests: &[LlmRequest],
    ) -> Result<Vec<Result<LlmResponse, LlmError>>, PipelineError> {
        let responses = self.llm.generate(requests);
        if responses.len() != requests.len() {
            return Err(PipelineError::Invalid(format!(
                "the policy model `{}` returned {} answers for {} requests",
                self.llm.model(),
                responses.len(),
                requests.len()
            )));
        }
        Ok(responses)
    }

    /// Direct Summary Eval: [`DIRECT_SUMMARY_SAMPLES`] few-shot samples per query (each seeded
    /// by `<id>/sample-<k>` and cut at its first blank line), summarised by the summarizer.
    /// Failed or empty samples are left out; an item with none, or whose summary never
    /// parsed, fails.
    fn generate_summaries(
        &self,
        items: &[(&str, &str)],
    ) -> Result<Vec<GenerationRecord>, PipelineError> {
        let summarizer = self.summarizer.ok_or_else(|| {
            PipelineError::Invalid("Direct Summary Eval needs a summarizer model".into())
        })?;
        let mut requests = Vec::new();
        for (id, query) in items {
            for k in 0..DIRECT_SUMMARY_SAMPLES {
                requests.push(self.request(
                    query,
                    DIRECT_SUMMARY_SAMPLE_TEMPERATURE,
                    &format!("{id}/sample-{k}"),
                )?);
            }
        }
        let responses = self.ask(&requests)?;
        let samples: Vec<Vec<String>> = responses
            .chunks(DIRECT_SUMMARY_SAMPLES)
            .map(|chunk| {
                chunk
                    .iter()
                    .filter_map(|response| response.as_ref().ok())
                    .map(|response| first_paragraph(response.text()))
                    .filter(|sample| !sample.is_empty())
                    .collect()
            })
            .collect();
        let summarized: Vec<(&str, &Vec<String>)> = items
            .iter()
            .zip(&samples)
            .filter(|(_, samples)| !samples.is_empty())
            .map(|((id, _), samples)| (*id, samples))
            .collect();
        let mut summaries = summarizer
            .settings
            .ask_requests(
                summarizer.llm,
                &summarized,
                Stage::Generation,
                |&(id, samples): &(&str, &Vec<String>)| {
                    let messages = self.templates.summarize_samples(samples)?;
                    Ok(chat_request(
                        messages,
                        summarizer
                            .settings
                            .params(self.settings.max_tokens, &format!("{id}/summary")),
                    ))
                },
                lincal_data::parse::parse_summary,
            )?
            .into_iter();
        Ok(items
            .iter()
            .zip(&samples)
            .map(|((id, _), samples)| {
                let outcome = if samples.is_empty() {
                    Err(ItemFailure {
                        stage: Stage::Generation,
                        message: format!(
                            "none of the {DIRECT_SUMMARY_SAMPLES} samples to summarise was \
                             usable (every call failed or wrote nothing)"
                        ),
                        raw_text: None,
                        attempts: 1,
                    })
                } else {
                    summaries.next().expect("one summary per summarised item")
                };
                match outcome {
                    Ok(summary) => GenerationRecord {
                        id: id.to_string(),
                        text: summary.trim().to_string(),
                        failure: None,
                    },
                    Err(failure) => GenerationRecord {
                        id: id.to_string(),
                        text: String::new(),
                        failure: Some(failure),
                    },
                }
            })
            .collect())
    }

    /// The settings a run records beside `extra`: the policy's prompt style, whether it states
    /// confidence, its temperature and seed.
    pub(crate) fn settings_with(&self, extra: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
        let mut settings = extra.clone();
        settings.insert("prompt".into(), json!(self.method.prompt.name()));
        settings.insert(
            "states_confidence".into(),
            json!(self.method.states_confidence),
        );
        settings.insert("temperature".into(), json!(self.settings.temperature));
        settings.insert("seed".into(), json!(self.settings.seed));
        settings
    }

    /// The model, method and sampling (and the summarizer), for the run's manifest.
    pub(crate) fn config(&self) -> Value {
        let mut config = json!({
            "backend": self.llm.backend(),
            "model": self.llm.model(),
            "method": self.method,
            "sampling": self.settings,
        });
        if let Some(summarizer) = &self.summarizer {
            config["summarizer"] = json!({
                "model": describe_llm(summarizer.llm),
                "settings": summarizer.settings,
            });
        }
        config
    }
}

/// How a pipeline runs, without changing what it produces.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Items handed to a stage's models together; their records are committed together.
    pub chunk_size: usize,
    /// Replace a run directory that holds another run (its response cache is kept, so calls
    /// that were answered are not made again).
    pub force: bool,
    pub report: ReportOptions,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            chunk_size: 40,
            force: false,
            report: ReportOptions::default(),
        }
    }
}

/// Whether a run did its work now or had done it before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Ran from the start.
    Ran,
    /// Took up an interrupted run.
    Resumed,
    /// The directory held this run, finished: nothing was done.
    AlreadyFinished,
}

/// A finished evaluation run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub results: RunResults,
    pub examples: Vec<ScoredExample>,
}

/// A run directory opened for a pipeline.
#[allow(clippy::large_enum_variant, reason = "one per run, moved once")]
pub(crate) enum OpenedRun<'p> {
    Finished(RunOutcome),
    Run(Stages<'p>),
}

/// Opens `run_dir` as stage `stage` with `config` and the input files (hashed): a finished run
/// with the same config and inputs is read back, anything else runs or resumes with `options`,
/// reporting to `progress`.
pub(crate) fn open_eval_run<'p>(
    run_dir: &Path,
    stage: &str,
    config: &Value,
    inputs: &[&Path],
    options: &'p EvalOptions,
    progress: &'p dyn Progress,
) -> Result<OpenedRun<'p>, PipelineError> {
    match open_stage(run_dir, stage, config, inputs, options.force)? {
        Opened::Finished(_) => Ok(OpenedRun::Finished(RunOutcome {
            status: RunStatus::AlreadyFinished,
            results: read_results(run_dir)?,
            examples: read_examples(run_dir.join(EXAMPLES_FILE))?,
        })),
        Opened::Run(run) => Ok(OpenedRun::Run(Stages {
            run,
            progress,
            options,
        })),
    }
}

/// The stages of a run in progress, how they report, and how the run goes.
pub(crate) struct Stages<'p> {
    run: StageRun,
    progress: &'p dyn Progress,
    options: &'p EvalOptions,
}

impl Stages<'_> {
    /// Runs one stage over `items`: the items without a record in `<output>.partial` are
    /// handed to `produce` a chunk at a time, and each chunk's records are appended before
    /// the next chunk starts. Returns every record, in the order of `items`.
    pub(crate) fn run<I, R: Keyed>(
        &mut self,
        output: &str,
        stage: Stage,
        items: &[I],
        key: impl Fn(&I) -> &str,
        mut produce: impl FnMut(&[&I]) -> Result<Vec<R>, PipelineError>,
    ) -> Result<Vec<R>, PipelineError> {
        let mut log = self.run.record_log::<R>(output)?;
        let todo: Vec<&I> = items
            .iter()
            .filter(|item| !log.is_done(key(item)))
            .collect();
        self.progress.report(ProgressEvent::Started {
            stage,
            total: items.len(),
            done: items.len() - todo.len(),
        });
        for chunk in todo.chunks(self.chunk_size(stage)) {
            let records = produce(chunk)?;
            let expected: Vec<&str> = chunk.iter().map(|item| key(item)).collect();
            let produced: Vec<&str> = records.iter().map(Keyed::key).collect();
            if produced != expected {
                return Err(PipelineError::Invalid(format!(
                    "the {stage} stage produced records for {produced:?} instead of {expected:?}"
                )));
            }
            log.append(&records)?;
            self.progress.report(ProgressEvent::Advanced {
                stage,
                by: chunk.len(),
            });
        }
        let order: Vec<&str> = items.iter().map(&key).collect();
        let records = self.run.commit_records(log, &order)?;
        self.progress.report(ProgressEvent::Finished { stage });
        if records.len() != items.len() {
            return Err(PipelineError::Invalid(format!(
                "{} holds {} records for {} items; delete it and run again",
                self.run.dir().join(output).display(),
                records.len(),
                items.len()
            )));
        }
        Ok(records)
    }

    /// Items per chunk of `stage`: the run's chunk size, in whole judge batches for the judge,
    /// so that answered items are judged ten to a call, as in the reference, except for the
    /// last call of each chunk.
    fn chunk_size(&self, stage: Stage) -> usize {
        let chunk_size = self.options.chunk_size.max(1);
        match stage {
            Stage::Judge => chunk_size.div_ceil(JUDGE_BATCH_SIZE) * JUDGE_BATCH_SIZE,
            _ => chunk_size,
        }
    }

    /// The generation stage of both pipelines: the policy's paragraph for each `(id, query)`.
    pub(crate) fn generate(
        &mut self,
        policy: &Policy,
        queries: &[(&str, &str)],
    ) -> Result<Vec<GenerationRecord>, PipelineError> {
        self.run(
            GENERATIONS_FILE,
            Stage::Generation,
            queries,
            |(id, _)| id,
            |chunk| {
                let items: Vec<(&str, &str)> = chunk.iter().map(|&&item| item).collect();
                policy.generate(&items)
            },
        )
    }

    /// Writes the report, the failures of every item and the finished manifest;
    /// `subjects_without_items` counts the subjects that gave no scored item (biographies
    /// without a checkable claim).
    pub(crate) fn finish(
        self,
        settings: &RunSettings,
        examples: Vec<ScoredExample>,
        failures: &[(String, ItemFailure)],
        counts: BTreeMap<String, u64>,
        subjects_without_items: usize,
    ) -> Result<RunOutcome, PipelineError> {
        let Stages {
            mut run, options, ..
        } = self;
        let status = if run.is_resumed() {
            RunStatus::Resumed
        } else {
            RunStatus::Ran
        };
        let report = ReportOptions {
            subjects_without_items,
            ..options.report
        };
        let results = write_run_report(run.dir(), settings, &examples, &report)?;
        let mut written = vec![
            EXAMPLES_FILE.to_string(),
            REPORT_MD_FILE.to_string(),
            REPORT_HTML_FILE.to_string(),
            RESULTS_FILE.to_string(),
        ];
        for plot in [RELIABILITY_PLOT, FRONTIER_PLOT, RISK_COVERAGE_PLOT] {
            written.extend(["png", "svg"].map(|ext| format!("{plot}.{ext}")));
        }
        for name in written {
            // Already written, atomically, by write_run_report; this lists them in the manifest.
            run.write_output(&name, |_| Ok(()))?;
        }
        let records: Vec<Failure> = failures
            .iter()
            .map(|(id, failure)| failure.record(id))
            .collect();
        run.fail(&records)?;
        let summary = serde_json::Map::from_iter([(
            "metrics".to_string(),
            json!({
                "accuracy": results.metrics.accuracy.value,
                "ece": results.metrics.ece.value,
            }),
        )]);
        run.finish(counts, summary)?;
        Ok(RunOutcome {
            status,
            results,
            examples,
        })
    }
}

/// The config entry of the prompt templates: the override file of each template a run uses,
/// or "built-in". The override files are inputs of the run too, so their content is hashed.
pub(crate) fn template_sources(templates: &Templates, names: &[&str]) -> Value {
    names
        .iter()
        .map(|name| {
            let source = templates
                .override_path(name)
                .map_or_else(|| "built-in".to_string(), |p| p.display().to_string());
            (name.to_string(), Value::String(source))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The override files among `names`, as inputs of the run.
pub(crate) fn template_inputs<'t>(templates: &'t Templates, names: &[&str]) -> Vec<&'t Path> {
    names
        .iter()
        .filter_map(|name| templates.override_path(name))
        .collect()
}
