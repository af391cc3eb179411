//! The teacher pipelines that make lincal's training data (SPEC 1.1, 1.2, 1.4, 1.8), apart from
//! `lincal-data` (which holds the formats, templates and parsers they use) so that the data crate
//! does not depend on the model backends. Nothing here needs libtorch: the models are any
//! [`lincal_llm::Llm`], the local engine included. Each pipeline is a resumable stage that reads
//! the directory of the stage before it (or a file) and writes one [`lincal_data::artifact`]
//! directory:
//!
//! | function | reads | writes |
//! | --- | --- | --- |
//! | [`make_queries`] | QA JSONL | `queries.jsonl`: open-ended queries that hide the answer |
//! | [`sample_paragraphs`] | queries | `samples.jsonl`: M base-model paragraphs per query |
//! | [`summarize_samples`] | samples | `summaries.jsonl`, `sft_training.csv`, `lc_sft.jsonl`, `factuality_sft.jsonl` (`claude_distill.jsonl`) |
//! | [`extract_answers`] | paragraphs | `extractions.jsonl`: the answers each paragraph gives; `extract_answers.jsonl` |
//! | [`forecast_candidates`] | extractions | `forecasts.jsonl`, `reward_model_training.csv`, `questions.jsonl`, `forecast_probs.jsonl` |
//! | [`judge_correctness`] | paragraphs | `correctness.jsonl`, `reward_model_training.csv`, `questions.jsonl`, `binary_correctness.jsonl` |
//!
//! The CSV files follow the reference schema and the JSONL example sets are the `{prompt,
//! target}` / `{prompt, label}` formats, so `lincal sft` and `lincal reward-model` take either.
//! Every model call goes through [`lincal_llm::generate_parsed_indexed`] with the parser of its
//! output format (and the checks of its item, such as a query not giving its answer away), so an
//! unparseable answer is asked again with the next seed; an item still without a
//! usable answer after [`Settings::max_attempts`] calls lands in `failures.jsonl` with the raw
//! text, and the counts go into the manifest. A stage more than [`Settings::max_failure_share`]
//! of whose items failed ends in an error and stays unfinished, so that running it again
//! retries them; the retry budget and the failure share are not part of a stage's config, so
//! changing them resumes it. While a stage runs its directory is locked
//! ([`lincal_data::lock::OutputLock`]): a second run on it is refused, naming the first. Every
//! request's seed derives from the stage seed and its item's id, so results depend neither on
//! order, chunking nor interruptions; with an [`lincal_llm::LlmClient`] cache in the stage
//! directory a rerun repeats no call.
//!
//! Each teacher role can also be played offline ([`Teacher::Offline`], described in
//! [`offline`]): a template writes the queries, the summary states how the samples' answers
//! agree, the forecast is the confidence the paragraph states, and the binary label is an exact
//! match against the gold answer.
//!
//! [`chat_prompt`] is where rendered chat templates become model messages, for these pipelines
//! and for `lincal-eval`.

mod generation;
mod labels;
pub mod offline;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use lincal_data::artifact::{
    FAILURES_FILE, Failure, Keyed, Manifest, Opened, StageRun, open_stage,
};
use lincal_data::lock::LockHolder;
use lincal_data::parse::{contains_match, parse_extracted_answers, parse_teacher_extraction};
use lincal_data::prompts::{
    self, CATALOGUE, ExtractionPrompt, ExtractionUse, FEW_SHOT_EXTRACTION_MAX_TOKENS,
    PromptMessage, Templates,
};
use lincal_data::schema::jsonl::{check_unique_ids, read_jsonl};
use lincal_data::sources::{QaRecord, read_qa_records};
use lincal_data::{DataError, Result};
use lincal_llm::{
    Accounting, ChatMessage, Llm, LlmRequest, ParseFailure, Prompt, Role, SamplingParams,
    generate_parsed_indexed, request_seed,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use generation::{SampleTemplate, make_queries, sample_paragraphs, summarize_samples};
pub use labels::{extract_answers, forecast_candidates, judge_correctness, read_paragraphs};

/// The stages of the teacher pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Queries,
    Sample,
    Summarize,
    Extract,
    Forecast,
    Binary,
}

impl Stage {
    /// The stage name in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Queries => "distill-queries",
            Stage::Sample => "distill-sample",
            Stage::Summarize => "distill-summarize",
            Stage::Extract => "label-extract",
            Stage::Forecast => "label-forecast",
            Stage::Binary => "label-binary",
        }
    }

    /// The JSONL file of the stage's records, one per item.
    pub fn output(self) -> &'static str {
        match self {
            Stage::Queries => "queries.jsonl",
            Stage::Sample => "samples.jsonl",
            Stage::Summarize => "summaries.jsonl",
            Stage::Extract => "extractions.jsonl",
            Stage::Forecast => "forecasts.jsonl",
            Stage::Binary => "correctness.jsonl",
        }
    }

    /// The offline stand-in for the stage's API teacher (see [`offline`]), by the name its
    /// manifests record; `None` where a model is needed (the sampled model, and the extraction
    /// of answers from free text).
    pub fn offline_teacher(self) -> Option<&'static str> {
        match self {
            Stage::Queries => Some("query-template"),
            Stage::Summarize => Some("agreement"),
            Stage::Forecast => Some("stated-confidence"),
            Stage::Binary => Some("exact-match"),
            Stage::Sample | Stage::Extract => None,
        }
    }

    /// Whether the stage's offline teacher asks an extractor for the answers texts give.
    pub fn offline_needs_extractor(self) -> bool {
        matches!(self, Stage::Summarize | Stage::Binary)
    }

    /// The default settings of the stage with an offline teacher: its requests, if any, are
    /// the extractor's, sampled as the reference samples its extraction labels (SPEC 1.4).
    pub fn offline_default_settings(self) -> Settings {
        Stage::Extract.default_settings()
    }

    /// The sampling settings of the reference where it has them (SPEC 1.2: base samples at
    /// temperature 0.7, top-p 0.9, 512 tokens; summaries at 0.3 with 1,800 tokens; SPEC 1.4:
    /// labels at 0.2). The reference does not say how it sampled queries: 0.3 keeps them close
    /// to the examples while a retry can still come out differently.
    pub fn default_settings(self) -> Settings {
        let (temperature, top_p, max_tokens) = match self {
            Stage::Queries => (0.3, None, 128),
            Stage::Sample => (0.7, Some(0.9), 512),
            Stage::Summarize => (0.3, None, 1800),
            Stage::Extract | Stage::Forecast | Stage::Binary => (0.2, None, 512),
        };
        Settings {
            temperature,
            top_p,
            max_tokens,
            max_attempts: 10,
            max_failure_share: DEFAULT_MAX_FAILURE_SHARE,
            seed: 0,
            limit: None,
        }
    }
}

/// The default [`Settings::max_failure_share`]: a stage most of whose items failed has not
/// done its job.
pub const DEFAULT_MAX_FAILURE_SHARE: f64 = 0.5;

/// How a stage samples, how much of its input it takes, and how hard it tries. What decides
/// the outputs (sampling, seed, limit) is part of the stage's config, so changing it makes
/// another artifact; the retry budget and the failure share are not ([`Settings::identity`]),
/// so changing them resumes the stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub temperature: f64,
    /// `None` leaves the backend's default (no nucleus cut).
    pub top_p: Option<f64>,
    pub max_tokens: u32,
    /// Calls per request before its item is recorded as failed (at least one).
    pub max_attempts: u32,
    /// The largest share of items that may fail for the stage to finish; past it the stage
    /// ends in an error and stays unfinished, so that a rerun retries the failed items.
    #[serde(default = "default_max_failure_share")]
    pub max_failure_share: f64,
    /// Seeds of every request derive from this and the item id.
    pub seed: u64,
    /// Take only the first `limit` items of the input.
    pub limit: Option<usize>,
}

fn default_max_failure_share() -> f64 {
    DEFAULT_MAX_FAILURE_SHARE
}

impl Settings {
    /// Checks what no model could answer, naming the setting.
    pub fn validate(&self) -> Result<()> {
        let problem = if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            format!("temperature is {}; use a number >= 0", self.temperature)
        } else if let Some(top_p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            format!("top_p is {top_p}; use a number in (0, 1]")
        } else if self.max_tokens == 0 {
            "max_tokens is 0; allow at least one new token".to_string()
        } else if self.max_attempts == 0 {
            "max_attempts is 0; allow at least one call per request".to_string()
        } else if !(0.0..=1.0).contains(&self.max_failure_share) {
            format!(
                "max_failure_share is {}; use a share in [0, 1]",
                self.max_failure_share
            )
        } else {
            return Ok(());
        };
        Err(DataError::Invalid(format!("stage settings: {problem}")))
    }

    /// What of the settings decides a stage's outputs, for its config: everything but the
    /// retry budget and the failure share, which only decide how hard it tries.
    pub fn identity(&self) -> Value {
        json!({
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "limit": self.limit,
        })
    }
}

/// How a stage runs, without changing what it produces.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// Replace whatever the output directory holds (its response cache excepted).
    pub force: bool,
    /// Items handed to the model together; their records are committed together.
    pub chunk_size: usize,
    /// Token and cost counters to record in the manifest and the metrics.
    pub accounting: Option<Arc<Accounting>>,
}

impl Default for StageOptions {
    fn default() -> Self {
        StageOptions {
            force: false,
            chunk_size: 64,
            accounting: None,
        }
    }
}

/// Who answers a stage's requests.
#[derive(Clone, Copy)]
pub enum Teacher<'a> {
    /// A model (an API backend or the local engine) asked with the stage's prompt template; for
    /// [`sample_paragraphs`], the model that is sampled.
    Model(&'a dyn Llm),
    /// The stage's offline stand-in for its API teacher ([`Stage::offline_teacher`], described
    /// in [`offline`]). The stand-ins that need the answers a text gives (the summariser by
    /// agreement, the binary labeller: [`Stage::offline_needs_extractor`]) ask `extractor`
    /// with the context's extraction prompt ([`StageContext::extraction`]), which never shows
    /// it the gold answer; the others take no extractor.
    Offline { extractor: Option<&'a dyn Llm> },
}

/// What every stage is given: who answers (the teacher, or the sampled model), the prompt
/// templates, and how to run.
pub struct StageContext<'a> {
    pub teacher: Teacher<'a>,
    pub templates: &'a Templates,
    /// How the stages that need the answers a text gives ask for them (the teacher of
    /// [`extract_answers`], the extractor of the offline summariser and binary labeller).
    pub extraction: ExtractionPrompt,
    pub options: StageOptions,
}

/// What a stage did.
#[derive(Debug, Clone, PartialEq)]
pub struct StageReport {
    pub dir: PathBuf,
    /// The directory already held this stage, finished with the same config and inputs.
    pub skipped: bool,
    /// The run resumed an interrupted one.
    pub resumed: bool,
    /// The lock of a run that died without releasing it, which this run took over: worth a
    /// warning, since the directory may hold what that run left half written.
    pub took_over_lock: Option<LockHolder>,
    pub manifest: Manifest,
}

/// The Jeopardy clue a question was rephrased from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JeopardyClue {
    pub category: String,
    pub clue: String,
}

/// A line of the questions file: a QA record; one with a `category` is a Jeopardy clue, which
/// is first rephrased into a question that needs no category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionInput {
    #[serde(flatten)]
    pub item: QaRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// An open-ended query for a question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRecord {
    /// For a Jeopardy clue, `question` is the rephrased question.
    #[serde(flatten)]
    pub item: QaRecord,
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jeopardy: Option<JeopardyClue>,
}

/// The base model's paragraphs for a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    #[serde(flatten)]
    pub item: QaRecord,
    pub query: String,
    pub samples: Vec<String>,
}

/// The teacher's summary of a query's samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRecord {
    #[serde(flatten)]
    pub item: QaRecord,
    pub query: String,
    pub samples: Vec<String>,
    pub summary: String,
    /// The teacher's own paragraph for the query (Claude Distill's target), when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distilled_paragraph: Option<String>,
    /// The answer of each sample that the summariser by agreement counted, in sample order;
    /// empty for a model's summary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sample_answers: Vec<SampleAnswer>,
}

/// The answer the extractor found in one sample, for the summariser by agreement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleAnswer {
    /// The first answer the extractor listed.
    Answer(String),
    /// The extractor found none; the sample counts toward the shares, for no answer.
    NoAnswer,
    /// No usable extraction within the attempts (the reason); the sample is left out of the
    /// shares, as a sample that was not drawn.
    Failed(String),
}

/// A paragraph to label, with the question it answers. `lincal generate` writes the paragraph
/// as `completion`, which is read here too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParagraphRecord {
    #[serde(flatten)]
    pub item: QaRecord,
    #[serde(alias = "completion")]
    pub paragraph: String,
}

/// The answers a teacher found in a paragraph (empty: it gives none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtractionRecord {
    #[serde(flatten)]
    pub item: QaRecord,
    pub paragraph: String,
    pub extracted_answers: Vec<String>,
}

/// A teacher's probability for each candidate: the gold answer first, then the extracted ones
/// whose forecast succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastRecord {
    #[serde(flatten)]
    pub item: QaRecord,
    pub paragraph: String,
    pub candidates: Vec<String>,
    pub probabilities: Vec<f64>,
    /// The extracted candidates left out because their forecast failed, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_candidates: Vec<Failure>,
}

/// A teacher's verdict on whether a paragraph gives the gold answer and no other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorrectnessRecord {
    #[serde(flatten)]
    pub item: QaRecord,
    pub paragraph: String,
    pub correct: bool,
    /// The answers the offline labeller's extractor found, which the verdict matched against
    /// the gold answer; absent for a model's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extracted_answers: Option<Vec<String>>,
}

macro_rules! keyed_by_item_id {
    ($($record:ty),*) => {$(
        impl Keyed for $record {
            fn key(&self) -> &str {
                &self.item.id
            }
        }
    )*};
}
keyed_by_item_id!(
    QuestionInput,
    QueryRecord,
    SampleRecord,
    SummaryRecord,
    ParagraphRecord,
    ExtractionRecord,
    ForecastRecord,
    CorrectnessRecord
);

/// Reads the questions of a QA JSONL file, aliases answer-first, ids unique.
pub fn read_questions(path: &Path) -> Result<Vec<QuestionInput>> {
    read_qa_records(path, |input: &QuestionInput| match &input.category {
        Some(category) if category.trim().is_empty() => Err(format!(
            "record {} has an empty `category`; leave it out unless the question is \
             a Jeopardy clue",
            input.item.id
        )),
        _ => Ok(()),
    })
}

/// Lines that hold a QA record beside fields of their own are read by
/// [`lincal_data::sources::read_qa_records`], which checks and normalises the record.
macro_rules! holds_qa_record {
    ($($record:ty),*) => {$(
        impl AsRef<QaRecord> for $record {
            fn as_ref(&self) -> &QaRecord {
                &self.item
            }
        }
        impl AsMut<QaRecord> for $record {
            fn as_mut(&mut self) -> &mut QaRecord {
                &mut self.item
            }
        }
    )*};
}
holds_qa_record!(QuestionInput, ParagraphRecord);

/// Reads the records of a finished stage `expected` in `dir`, and the path they came from.
fn read_stage_records<T: Keyed>(dir: &Path, expected: Stage) -> Result<(Vec<T>, PathBuf)> {
    let manifest = Manifest::read(dir)?;
    let wrong = |message: String| DataError::File {
        path: dir.to_path_buf(),
        message,
    };
    if manifest.stage != expected.name() {
        return Err(wrong(format!(
            "holds a `{}` stage; give the directory of a `{}` stage",
            manifest.stage,
            expected.name()
        )));
    }
    if manifest.finished.is_none() {
        return Err(wrong(format!(
            "its `{}` stage has not finished; run it to the end first",
            manifest.stage
        )));
    }
    let path = dir.join(expected.output());
    let records: Vec<T> = read_jsonl(&path, |_| Ok(()))?;
    check_unique_ids(&path, records.iter().map(Keyed::key))?;
    Ok((records, path))
}

fn sampling(settings: &Settings, seed: u64, stop: Vec<String>) -> SamplingParams {
    SamplingParams {
        n: 1,
        temperature: settings.temperature,
        top_p: settings.top_p,
        max_tokens: settings.max_tokens,
        stop,
        seed,
    }
}

/// The prompt a model receives for the turns a chat template rendered. `lincal-data` does not
/// depend on the model backends, so its turns become their messages here, once, for every
/// caller that sends templates to an [`Llm`] (these pipelines and lincal's evaluation).
pub fn chat_prompt(messages: Vec<PromptMessage>) -> Prompt {
    let messages = messages
        .into_iter()
        .map(|message| ChatMessage {
            role: match message.role {
                prompts::Role::System => Role::System,
                prompts::Role::User => Role::User,
                prompts::Role::Assistant => Role::Assistant,
            },
            content: message.content,
        })
        .collect();
    Prompt::Chat(messages)
}

/// A chat request of a rendered chat template.
fn chat_request(messages: Vec<PromptMessage>, settings: &Settings, seed: u64) -> LlmRequest {
    LlmRequest {
        prompt: chat_prompt(messages),
        params: sampling(settings, seed, Vec::new()),
    }
}

/// The request asking an extractor for the answers `paragraph` gives to `question` with the
/// prompt `extraction`, sampled with `params`; a few-shot reply ends with its line (and its
/// few tokens). `used_for` sets the teacher prompt's examples.
pub fn extraction_request(
    templates: &Templates,
    extraction: ExtractionPrompt,
    question: &str,
    paragraph: &str,
    used_for: ExtractionUse,
    mut params: SamplingParams,
) -> Result<LlmRequest> {
    let prompt = match extraction {
        ExtractionPrompt::Teacher => {
            chat_prompt(templates.extract_answers(question, paragraph, used_for)?)
        }
        ExtractionPrompt::FewShot => {
            params.stop.push("\n".to_string());
            params.max_tokens = params.max_tokens.min(FEW_SHOT_EXTRACTION_MAX_TOKENS);
            Prompt::Completion(templates.extract_answers_few_shot(question, paragraph)?)
        }
    };
    Ok(LlmRequest { prompt, params })
}

/// The answers of a reply to [`extraction_request`]: the teacher's `Answers:` line, or the
/// first line of a few-shot reply (a model that goes on writes the next example).
pub fn parse_extraction(extraction: ExtractionPrompt, reply: &str) -> Result<Vec<String>> {
    match extraction {
        ExtractionPrompt::Teacher => parse_teacher_extraction(reply),
        ExtractionPrompt::FewShot => {
            parse_extracted_answers(reply.lines().next().unwrap_or_default())
        }
    }
}

/// The record of an item that never got a usable answer.
fn failure(id: &str, step: &str, what: &str, failure: ParseFailure) -> Failure {
    let (reason, raw_text, attempts) = match failure {
        ParseFailure::Unparseable {
            raw_text,
            error,
            attempts,
            ..
        } => (
            format!("{what}no usable answer in {attempts} attempts: {error}"),
            Some(raw_text),
            attempts,
        ),
        ParseFailure::Call { error, attempts } => {
            (format!("{what}the call failed: {error}"), None, attempts)
        }
    };
    Failure {
        id: id.to_string(),
        step: step.to_string(),
        reason,
        raw_text,
        attempts,
    }
}

/// `text`, unless it gives the answer away: contains one of the aliases.
fn hiding_answer(text: String, aliases: &[String]) -> Result<String> {
    match aliases
        .iter()
        .find(|alias| contains_match(&text, std::slice::from_ref(alias)))
    {
        Some(alias) => Err(DataError::Invalid(format!(
            "it gives the answer away (it contains \"{alias}\")"
        ))),
        None => Ok(text),
    }
}

/// The sha256 of each named template's source (built-in or override file), so that editing a
/// template changes the stage's config.
fn template_fingerprints(
    templates: &Templates,
    names: &[&str],
) -> Result<BTreeMap<String, String>> {
    names
        .iter()
        .map(|&name| {
            let source = match templates.override_path(name) {
                Some(path) => std::fs::read(path).map_err(|source| DataError::Read {
                    path: path.to_path_buf(),
                    source,
                })?,
                None => CATALOGUE
                    .iter()
                    .find(|spec| spec.name == name)
                    .map(|spec| spec.builtin.as_bytes().to_vec())
                    .ok_or_else(|| DataError::Invalid(format!("no template named `{name}`")))?,
            };
            Ok((name.to_string(), format!("{:x}", Sha256::digest(&source))))
        })
        .collect()
}

/// Extra counts a stage's outputs add to its manifest.
type Counts = BTreeMap<String, u64>;

/// What became of one item, or of one request of an item.
type Outcome<T> = std::result::Result<T, Failure>;

/// One stage: its config, the model it asks and how. [`StageJob::run`] runs it over its items:
/// open the directory (or skip it), produce the records of the items that have none yet chunk
/// by chunk, and unless too many items failed, commit the records in input order, write the
/// stage's other outputs from them, and finish the manifest. Records are produced by asking
/// the model ([`StageJob::ask_requests`] and its shorthands) or by an offline teacher.
struct StageJob<'a> {
    stage: Stage,
    config: Value,
    /// Where the stage's requests go: the teacher model, or an offline teacher's extractor.
    llm: Option<&'a dyn Llm>,
    options: &'a StageOptions,
    settings: &'a Settings,
    templates: &'a Templates,
    extraction: ExtractionPrompt,
    /// Requests asked again after an answer that did not parse (or a failed call), so far.
    reasked: std::cell::Cell<u64>,
}

impl<'a> StageJob<'a> {
    /// The job of `stage`, once its settings are valid and `cx`'s teacher can play it. Its
    /// config is the settings that decide the outputs ([`Settings::identity`]), the teacher (the
    /// model, or the offline teacher and its extractor), the templates it renders and `extra`
    /// options.
    fn new(
        cx: &'a StageContext<'a>,
        settings: &'a Settings,
        stage: Stage,
        template_names: &[&str],
        extra: Value,
    ) -> Result<Self> {
        settings.validate()?;
        let describe = |llm: &dyn Llm| json!({"backend": llm.backend(), "model": llm.model()});
        let mut config = json!({
            "settings": settings.identity(),
            "templates": template_fingerprints(cx.templates, template_names)?,
        });
        let llm = match cx.teacher {
            Teacher::Model(llm) => {
                config["model"] = describe(llm);
                Some(llm)
            }
            Teacher::Offline { extractor } => {
                let Some(name) = stage.offline_teacher() else {
                    let needs = match stage {
                        Stage::Sample => "its paragraphs are the samples of a model",
                        _ => "finding the answers a free-text paragraph gives needs a model",
                    };
                    return Err(DataError::Invalid(format!(
                        "the `{}` stage has no offline teacher ({needs}); give a model",
                        stage.name()
                    )));
                };
                let problem = match (stage.offline_needs_extractor(), extractor) {
                    (true, None) => Some(
                        "needs an extractor: a model that finds the answer each text gives; \
                         give one",
                    ),
                    (false, Some(_)) => Some("takes no extractor; leave it out"),
                    _ => None,
                };
                if let Some(problem) = problem {
                    return Err(DataError::Invalid(format!(
                        "the offline `{name}` teacher of the `{}` stage {problem}",
                        stage.name()
                    )));
                }
                config["model"] = json!({"backend": "offline", "model": name});
                if let Some(extractor) = extractor {
                    config["extractor"] = describe(extractor);
                }
                extractor
            }
        };
        if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
            config.extend(extra);
        }
        Ok(StageJob {
            stage,
            config,
            llm,
            options: &cx.options,
            settings,
            templates: cx.templates,
            extraction: cx.extraction,
            reasked: std::cell::Cell::new(0),
        })
    }

    /// Asks the model every request of every item, `requests(item)` giving each with the words
    /// that name it in a failure ("sample 2 of 8: "), and reads the answer with `parse`, which
    /// is also given the request's item (to check the value against it); an answer that does
    /// not parse is asked again with the next seed ([`generate_parsed_indexed`]). Per item,
    /// the outcome of each of its requests in order: the value, or a failure of `step` naming
    /// the request.
    fn ask_requests<I: Keyed, T>(
        &self,
        step: &str,
        items: &[&I],
        requests: impl Fn(&I) -> Result<Vec<(String, LlmRequest)>>,
        parse: impl Fn(&I, &str) -> Result<T>,
    ) -> Result<Vec<Vec<Outcome<T>>>> {
        let llm = self.llm.ok_or_else(|| {
            DataError::Invalid(format!(
                "the `{}` stage has no model to ask",
                self.stage.name()
            ))
        })?;
        let (mut owners, mut names, mut asked) = (Vec::new(), Vec::new(), Vec::new());
        for (index, item) in items.iter().enumerate() {
            for (name, request) in requests(item)? {
                owners.push(index);
                names.push(name);
                asked.push(request);
            }
        }
        let answers =
            generate_parsed_indexed(llm, &asked, self.settings.max_attempts, |k, text| {
                parse(items[owners[k]], text).map_err(|e| e.to_string())
            });
        let mut outcomes: Vec<Vec<Outcome<T>>> = items.iter().map(|_| Vec::new()).collect();
        for ((owner, name), answer) in owners.into_iter().zip(names).zip(answers) {
            let attempts = match &answer {
                Ok(parsed) => parsed.attempts,
                Err(
                    ParseFailure::Unparseable { attempts, .. }
                    | ParseFailure::Call { attempts, .. },
                ) => *attempts,
            };
            self.reasked
                .set(self.reasked.get() + u64::from(attempts.saturating_sub(1)));
            let id = items[owner].key();
            let outcome = match answer {
                // Every request of a stage asks for one sample.
                Ok(parsed) if parsed.values.len() == 1 => {
                    Ok(parsed.values.into_iter().next().expect("one value"))
                }
                Ok(parsed) => Err(Failure {
                    id: id.to_string(),
                    step: step.to_string(),
                    reason: format!(
                        "{name}the answer held {} samples instead of one",
                        parsed.values.len()
                    ),
                    raw_text: None,
                    attempts: parsed.attempts,
                }),
                Err(error) => Err(failure(id, step, &name, error)),
            };
            outcomes[owner].push(outcome);
        }
        Ok(outcomes)
    }

    /// [`StageJob::ask_requests`] for items that need every request answered: an item's
    /// outcome is `record(item, values)`, the values of all its requests in order, or the
    /// failure of the first request that never gave a usable answer.
    fn ask_all<I: Keyed, T, R>(
        &self,
        step: &str,
        items: &[&I],
        requests: impl Fn(&I) -> Result<Vec<(String, LlmRequest)>>,
        parse: impl Fn(&I, &str) -> Result<T>,
        record: impl Fn(&I, Vec<T>) -> R,
    ) -> Result<Vec<Outcome<R>>> {
        let outcomes = self.ask_requests(step, items, requests, parse)?;
        Ok(items
            .iter()
            .zip(outcomes)
            .map(|(item, outcomes)| {
                let values = outcomes.into_iter().collect::<Outcome<Vec<T>>>()?;
                Ok(record(item, values))
            })
            .collect())
    }

    /// Asks the model one chat per item, the chat `messages` renders, seeded by the stage seed
    /// and `<id>/<step>`, and reads the item's outcome from the answer with `parse` (see
    /// [`StageJob::ask_requests`]).
    fn ask_each<I: Keyed, R>(
        &self,
        step: &str,
        items: &[&I],
        messages: impl Fn(&I) -> Result<Vec<PromptMessage>>,
        parse: impl Fn(&I, &str) -> Result<R>,
    ) -> Result<Vec<Outcome<R>>> {
        let settings = self.settings;
        self.ask_all(
            step,
            items,
            |item| {
                let seed = request_seed(settings.seed, &format!("{}/{step}", item.key()));
                Ok(vec![(
                    String::new(),
                    chat_request(messages(item)?, settings, seed),
                )])
            },
            parse,
            // One request: one value.
            |_, mut values| values.remove(0),
        )
    }

    /// Asks the extractor which answers each item's text gives to its question (`text` gives
    /// both; the stage's extraction prompt with the training-label examples, seeded by the
    /// stage seed and `<id>/extract`), and makes the item's outcome from them with `record`.
    fn extract_each<I: Keyed, R>(
        &self,
        items: &[&I],
        text: impl Fn(&I) -> (&str, &str),
        record: impl Fn(&I, Vec<String>) -> R,
    ) -> Result<Vec<Outcome<R>>> {
        let settings = self.settings;
        self.ask_all(
            "extract",
            items,
            |item| {
                let (question, paragraph) = text(item);
                let seed = request_seed(settings.seed, &format!("{}/extract", item.key()));
                let request = extraction_request(
                    self.templates,
                    self.extraction,
                    question,
                    paragraph,
                    ExtractionUse::TrainingLabels,
                    sampling(settings, seed, Vec::new()),
                )?;
                Ok(vec![(String::new(), request)])
            },
            |_, reply| parse_extraction(self.extraction, reply),
            // One request: one value.
            |item, mut values| record(item, values.remove(0)),
        )
    }

    /// Runs the job over the first [`Settings::limit`] `items`, read from `input`, into `out`:
    /// `produce` makes the records of a chunk of items (or their failures), `write_outputs`
    /// the stage's other outputs from all records, and any counts of its own. When more than
    /// [`Settings::max_failure_share`] of the items failed, the stage ends with an error
    /// instead, unfinished: its records stay in the partial log and a rerun retries the
    /// failed items.
    fn run<I: Keyed, R: Keyed>(
        &self,
        out: &Path,
        input: &Path,
        mut items: Vec<I>,
        mut produce: impl FnMut(&[&I]) -> Result<Vec<Outcome<R>>>,
        write_outputs: impl FnOnce(&mut StageRun, &[R]) -> Result<Counts>,
    ) -> Result<StageReport> {
        let options = self.options;
        if let Some(limit) = self.settings.limit {
            items.truncate(limit);
        }
        let mut run = match open_stage(
            out,
            self.stage.name(),
            &self.config,
            &[input],
            options.force,
        )? {
            Opened::Finished(manifest) => {
                return Ok(StageReport {
                    dir: out.to_path_buf(),
                    skipped: true,
                    resumed: false,
                    took_over_lock: None,
                    manifest,
                });
            }
            Opened::Run(run) => run,
        };
        let resumed = run.is_resumed();
        let took_over_lock = run.lock().took_over().cloned();
        let mut log = run.record_log::<R>(self.stage.output())?;
        let todo: Vec<&I> = items
            .iter()
            .filter(|item| !log.is_done(item.key()))
            .collect();
        let reused = items.len() - todo.len();
        let started = Instant::now();
        let (mut produced, mut failed) = (0u64, 0u64);
        for chunk in todo.chunks(options.chunk_size.max(1)) {
            let outcomes = produce(chunk)?;
            if outcomes.len() != chunk.len() {
                return Err(DataError::Invalid(format!(
                    "the `{}` stage produced {} outcomes for {} items",
                    self.stage.name(),
                    outcomes.len(),
                    chunk.len()
                )));
            }
            let (records, failures): (Vec<_>, Vec<_>) =
                outcomes.into_iter().partition(std::result::Result::is_ok);
            let records: Vec<R> = records.into_iter().flatten().collect();
            let failures: Vec<Failure> = failures.into_iter().filter_map(|f| f.err()).collect();
            log.append(&records)?;
            run.fail(&failures)?;
            produced += records.len() as u64;
            failed += failures.len() as u64;
            let mut line = json!({
                "items_done": reused as u64 + produced + failed,
                "items": items.len(),
                "produced": produced,
                "failed": failed,
                "elapsed_s": started.elapsed().as_secs_f64(),
            });
            if let Some(accounting) = &options.accounting {
                line["usage"] = json!(accounting.total());
            }
            run.log_metrics(&line)?;
        }
        if failed as f64 > self.settings.max_failure_share * items.len() as f64 {
            return Err(DataError::File {
                path: out.to_path_buf(),
                message: format!(
                    "{failed} of the {} items of the `{}` stage failed, more than its largest \
                     share of failures ({}), so it stays unfinished. The reasons are in \
                     {}.partial; run the stage again to retry the failed items (it keeps what \
                     was done), or allow a larger failure share",
                    items.len(),
                    self.stage.name(),
                    self.settings.max_failure_share,
                    out.join(FAILURES_FILE).display()
                ),
            });
        }
        let order: Vec<&str> = items.iter().map(Keyed::key).collect();
        let records = run.commit_records(log, &order)?;
        let mut counts = write_outputs(&mut run, &records)?;
        counts.extend([
            ("items".to_string(), items.len() as u64),
            ("reused".to_string(), reused as u64),
            ("produced".to_string(), produced),
            ("failed".to_string(), failed),
            ("records".to_string(), records.len() as u64),
            ("reasked".to_string(), self.reasked.get()),
        ]);
        let mut summary = serde_json::Map::new();
        if let Some(accounting) = &options.accounting {
            summary.insert("usage".into(), json!(accounting.by_model()));
        }
        let manifest = run.finish(counts, summary)?;
        Ok(StageReport {
            dir: out.to_path_buf(),
            skipped: false,
            resumed,
            took_over_lock,
            manifest,
        })
    }
}
