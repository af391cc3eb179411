//! Prompt templates of every stage of the pipeline (SPEC 6), in lincal's own words.
//!
//! The built-in templates live in `prompts/<name>.j2` and are compiled into the crate. A user can
//! point [`Templates::with_overrides`] at a directory of `<name>.j2` files to replace any of them;
//! [`Templates::export_builtin`] writes the built-in set out as a starting point. Templates are
//! [minijinja](https://docs.rs/minijinja) with strict undefined values, and each one is rendered by
//! a typed method (`templates.extract_answers(question, paragraph, ExtractionUse::Evaluation)`) so
//! callers cannot misspell a variable.
//!
//! Two kinds of template exist. *Completion* templates render to one string: the inputs of models
//! trained here (policy, ExtractAnswers, reward models) and the base model's few-shot prompts.
//! *Chat* templates render to a list of [`PromptMessage`]s and are what teachers (any OpenAI- or
//! Anthropic-compatible endpoint, or a local model through its chat template) receive. A chat
//! template file is split into turns by marker lines `<<system>>`, `<<user>>` and `<<assistant>>`
//! (a trailing assistant turn is a prefill); each turn is its own template, so Jinja blocks cannot
//! span turns and no rendered value can forge a turn. Every rendered turn is trimmed of surrounding
//! whitespace, as the reference strips its templates (SPEC 1.3).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value, context};
use serde::{Deserialize, Serialize};

use crate::schema::cut_paragraph;
use crate::{DataError, Result};

/// The most pairs one call of the semantic-equivalence judge may hold (SPEC 5.1 step 5).
pub const JUDGE_BATCH_SIZE: usize = 10;

/// Sampling temperature of the trained ExtractAnswers model (`answer_extractor_temperature`,
/// SPEC 1.5), in PPO's reward and in evaluation's surrogate reader alike.
pub const EXTRACT_ANSWERS_TEMPERATURE: f64 = 0.3;
/// New tokens of the trained ExtractAnswers model (`answer_extractor_response_len`, SPEC 1.5).
pub const EXTRACT_ANSWERS_MAX_TOKENS: u32 = 300;

/// Who speaks a chat turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    /// A final assistant turn is a prefill: the reply continues it.
    Assistant,
}

/// One turn a chat template renders, in the `{role, content}` shape of chat APIs. The crates
/// that send templates to a model turn it into the model's message type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptMessage {
    pub role: Role,
    pub content: String,
}

/// Whether a template renders to one string or to chat turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    Completion,
    Chat,
}

/// One entry of the template catalogue.
#[derive(Debug)]
pub struct TemplateSpec {
    /// The name, which is also the override file's stem (`<name>.j2`).
    pub name: &'static str,
    pub kind: TemplateKind,
    /// Variables every version of the template must use.
    pub required: &'static [&'static str],
    /// Variables a template may use but need not (for example `shots`).
    pub optional: &'static [&'static str],
    pub purpose: &'static str,
    /// The built-in source.
    pub builtin: &'static str,
}

macro_rules! builtin {
    ($name:literal) => {
        include_str!(concat!("../prompts/", $name, ".j2"))
    };
}

/// Every template of the pipeline.
pub const CATALOGUE: &[TemplateSpec] = &[
    TemplateSpec {
        name: "policy",
        kind: TemplateKind::Completion,
        required: &["query"],
        optional: &[],
        purpose: "input of every fine-tuned policy (SFT, PPO, evaluation)",
        builtin: builtin!("policy"),
    },
    TemplateSpec {
        name: "bio_query",
        kind: TemplateKind::Completion,
        required: &["entity"],
        optional: &[],
        purpose: "the query of the biography evaluation",
        builtin: builtin!("bio_query"),
    },
    TemplateSpec {
        name: "icl_paragraphs",
        kind: TemplateKind::Completion,
        required: &["query"],
        optional: &[],
        purpose: "8-shot base-model paragraphs (distillation samples, Factuality SFT, \
                  ICL baseline)",
        builtin: builtin!("icl_paragraphs"),
    },
    TemplateSpec {
        name: "summary_icl_paragraphs",
        kind: TemplateKind::Completion,
        required: &["query"],
        optional: &[],
        purpose: "8-shot paragraphs with stated confidence (Summary ICL baseline)",
        builtin: builtin!("summary_icl_paragraphs"),
    },
    TemplateSpec {
        name: "paragraph_zero_shot",
        kind: TemplateKind::Chat,
        required: &["query"],
        optional: &[],
        purpose: "zero-shot paragraph of a chat model (GPT-4 and chat baselines)",
        builtin: builtin!("paragraph_zero_shot"),
    },
    TemplateSpec {
        name: "paragraph_jafu",
        kind: TemplateKind::Chat,
        required: &["query"],
        optional: &[],
        purpose: "zero-shot paragraph that states probabilities (\"just ask for uncertainty\")",
        builtin: builtin!("paragraph_jafu"),
    },
    TemplateSpec {
        name: "extract_answers_model",
        kind: TemplateKind::Completion,
        required: &["question", "paragraph"],
        optional: &[],
        purpose: "input of the ExtractAnswers model",
        builtin: builtin!("extract_answers_model"),
    },
    TemplateSpec {
        name: "forecast_probs_model",
        kind: TemplateKind::Completion,
        required: &["question", "paragraph", "candidate"],
        optional: &[],
        purpose: "input of the ForecastProbs reward model",
        builtin: builtin!("forecast_probs_model"),
    },
    TemplateSpec {
        name: "binary_correctness_model",
        kind: TemplateKind::Completion,
        required: &["question", "paragraph", "answer"],
        optional: &[],
        purpose: "input of the Factuality reward model",
        builtin: builtin!("binary_correctness_model"),
    },
    TemplateSpec {
        name: "open_ended_query",
        kind: TemplateKind::Chat,
        required: &["question"],
        optional: &[],
        purpose: "QA question -> open-ended paragraph query (10 examples)",
        builtin: builtin!("open_ended_query"),
    },
    TemplateSpec {
        name: "jeopardy_rephrase",
        kind: TemplateKind::Chat,
        required: &["category", "clue", "answer"],
        optional: &[],
        purpose: "Jeopardy clue -> question that needs no category (5 examples)",
        builtin: builtin!("jeopardy_rephrase"),
    },
    TemplateSpec {
        name: "summarize_samples",
        kind: TemplateKind::Chat,
        required: &["samples"],
        optional: &[],
        purpose: "summary distillation of base-model samples into one confident paragraph",
        builtin: builtin!("summarize_samples"),
    },
    TemplateSpec {
        name: "extract_answers",
        kind: TemplateKind::Chat,
        required: &["question", "paragraph"],
        optional: &["shots"],
        purpose: "teacher answer extraction (8 examples for labels, 10 for evaluation)",
        builtin: builtin!("extract_answers"),
    },
    TemplateSpec {
        name: "extract_answers_few_shot",
        kind: TemplateKind::Completion,
        required: &["question", "paragraph"],
        optional: &[],
        purpose: "answer extraction as a few-shot completion, for a small local extractor",
        builtin: builtin!("extract_answers_few_shot"),
    },
    TemplateSpec {
        name: "forecast_probability",
        kind: TemplateKind::Chat,
        required: &["question", "paragraph", "candidate"],
        optional: &[],
        purpose: "teacher probability that one candidate answer is correct, \
                  from the paragraph alone",
        builtin: builtin!("forecast_probability"),
    },
    TemplateSpec {
        name: "binary_correctness",
        kind: TemplateKind::Chat,
        required: &["question", "paragraph", "answer"],
        optional: &[],
        purpose: "teacher 0/1 correctness label for the Factuality reward model",
        builtin: builtin!("binary_correctness"),
    },
    TemplateSpec {
        name: "judge_equivalence",
        kind: TemplateKind::Chat,
        required: &["pairs"],
        optional: &[],
        purpose: "batched semantic equivalence of proposed and gold answers (up to 10 pairs)",
        builtin: builtin!("judge_equivalence"),
    },
    TemplateSpec {
        name: "decompose_claims",
        kind: TemplateKind::Chat,
        required: &["entity", "paragraph"],
        optional: &[],
        purpose: "biography -> atomic claims with confidence, alternatives grouped (8 examples)",
        builtin: builtin!("decompose_claims"),
    },
    TemplateSpec {
        name: "fact_check",
        kind: TemplateKind::Chat,
        required: &["entity", "claim", "passages"],
        optional: &[],
        purpose: "one claim checked against retrieved passages (True/False)",
        builtin: builtin!("fact_check"),
    },
];

/// Globals minijinja provides, which a template may call without them being variables.
const JINJA_GLOBALS: &[&str] = &["range", "dict", "namespace", "debug"];

/// How many worked examples the answer-extraction teacher sees (SPEC 1.4 and 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractionUse {
    /// Labels for training the ExtractAnswers model: 8 examples.
    TrainingLabels,
    /// The evaluation pipeline: 10 examples.
    Evaluation,
}

impl ExtractionUse {
    pub fn shots(self) -> usize {
        match self {
            ExtractionUse::TrainingLabels => 8,
            ExtractionUse::Evaluation => 10,
        }
    }
}

/// Which prompt asks an extractor for the answers a text gives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtractionPrompt {
    /// The reference's teacher prompt (`extract_answers`): a chat with instructions and worked
    /// examples, answered on an `Answers:` line; for API and instruction-following models.
    #[default]
    Teacher,
    /// A completion of worked examples (`extract_answers_few_shot`) whose reply is one line,
    /// `a; b` or `No Answer`: what a small local model (SmolLM2-135M) can follow, where it
    /// answers the teacher prompt in its own words.
    FewShot,
}

impl ExtractionPrompt {
    /// The template it renders.
    pub fn template(self) -> &'static str {
        match self {
            ExtractionPrompt::Teacher => "extract_answers",
            ExtractionPrompt::FewShot => "extract_answers_few_shot",
        }
    }
}

impl std::str::FromStr for ExtractionPrompt {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "teacher" => Ok(ExtractionPrompt::Teacher),
            "few-shot" => Ok(ExtractionPrompt::FewShot),
            _ => Err(format!(
                "`{text}` is no extraction prompt: use teacher or few-shot"
            )),
        }
    }
}

/// Most new tokens of a few-shot extraction reply: one line of short answers.
pub const FEW_SHOT_EXTRACTION_MAX_TOKENS: u32 = 32;

/// One (question, gold answer, proposed answer) item of a judge batch.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct JudgePair<'a> {
    pub question: &'a str,
    pub gold: &'a str,
    pub proposed: &'a str,
}

/// A retrieved passage shown to the fact checker.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Passage<'a> {
    pub title: &'a str,
    pub text: &'a str,
}

/// Where a template came from, for error messages.
#[derive(Debug, Clone)]
enum Origin {
    Builtin,
    File(PathBuf),
}

impl Origin {
    fn error(&self, name: &str, message: String) -> DataError {
        match self {
            Origin::Builtin => DataError::Invalid(format!("built-in template `{name}`: {message}")),
            Origin::File(path) => DataError::File {
                path: path.clone(),
                message: format!("template `{name}`: {message}"),
            },
        }
    }
}

/// A loaded template: where it came from and its turns.
#[derive(Debug)]
struct Loaded {
    origin: Origin,
    turns: Vec<Turn>,
}

/// One turn, compiled into the environment under `env_name`.
#[derive(Debug)]
struct Turn {
    role: Role,
    env_name: String,
    /// Line of the source file on which the turn's text starts (1-based), for error messages.
    first_line: usize,
}

/// The prompt templates of a run: the built-in ones, some perhaps replaced from a directory.
pub struct Templates {
    env: Environment<'static>,
    loaded: BTreeMap<&'static str, Loaded>,
}

impl Templates {
    /// The built-in templates.
    pub fn builtin() -> Result<Self> {
        Self::load(BTreeMap::new())
    }

    /// The built-in templates, with each `<name>.j2` file of `dir` replacing the template of that
    /// name. Files with other names, and templates that miss a required variable or use an
    /// unknown one, are errors naming the file.
    pub fn with_overrides(dir: &Path) -> Result<Self> {
        Self::load(read_override_dir(dir)?)
    }

    /// Writes every built-in template to `dir/<name>.j2` (atomically, one file at a time) and
    /// returns the paths. Refuses to overwrite a file that exists, so edits are never lost.
    pub fn export_builtin(dir: &Path) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(dir).map_err(|source| DataError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut written = Vec::with_capacity(CATALOGUE.len());
        for spec in CATALOGUE {
            let path = dir.join(format!("{}.j2", spec.name));
            if path.exists() {
                return Err(DataError::File {
                    path,
                    message: "already exists; remove it or export into an empty directory".into(),
                });
            }
            let temporary = dir.join(format!(".{}.j2.tmp", spec.name));
            fs::write(&temporary, spec.builtin).map_err(|source| DataError::Write {
                path: temporary.clone(),
                source,
            })?;
            fs::rename(&temporary, &path).map_err(|source| DataError::Write {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }

    /// Where template `name` came from: `None` for the built-in one, else the override file.
    pub fn override_path(&self, name: &str) -> Option<&Path> {
        match &self.loaded.get(name)?.origin {
            Origin::Builtin => None,
            Origin::File(path) => Some(path),
        }
    }

    fn load(mut overrides: BTreeMap<String, (PathBuf, String)>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // Block tags on lines of their own leave no blank lines behind.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        let mut loaded = BTreeMap::new();
        for spec in CATALOGUE {
            let (origin, source) = match overrides.remove(spec.name) {
                Some((path, source)) => (Origin::File(path), source),
                None => (Origin::Builtin, spec.builtin.to_owned()),
            };
            let turns = compile(&mut env, spec, &origin, &source)?;
            loaded.insert(spec.name, Loaded { origin, turns });
        }
        let templates = Templates { env, loaded };
        templates.dry_run()?;
        Ok(templates)
    }

    /// Renders every template once with sample values, so that a broken override (a misspelt
    /// attribute, a filter that fails) is reported when it is loaded rather than mid-run.
    fn dry_run(&self) -> Result<()> {
        for spec in CATALOGUE {
            let values: BTreeMap<&str, Value> = spec
                .required
                .iter()
                .chain(spec.optional)
                .map(|var| (*var, sample_value(var)))
                .collect();
            self.render_turns(spec.name, Value::from_serialize(&values))?;
        }
        Ok(())
    }

    fn render_turns(&self, name: &str, ctx: Value) -> Result<Vec<PromptMessage>> {
        let loaded = self
            .loaded
            .get(name)
            .ok_or_else(|| DataError::Invalid(format!("no template named `{name}`")))?;
        let mut messages = Vec::with_capacity(loaded.turns.len());
        for turn in &loaded.turns {
            let rendered = self
                .env
                .get_template(&turn.env_name)
                .and_then(|template| template.render(&ctx))
                .map_err(|err| {
                    loaded
                        .origin
                        .error(name, describe_jinja_error(&self.env, turn, &err))
                })?;
            messages.push(PromptMessage {
                role: turn.role,
                content: rendered.trim().to_owned(),
            });
        }
        Ok(messages)
    }

    fn render_completion(&self, name: &str, ctx: Value) -> Result<String> {
        let mut turns = self.render_turns(name, ctx)?;
        // A completion template always compiles to exactly one turn (see `compile`).
        Ok(turns.pop().map(|turn| turn.content).unwrap_or_default())
    }

    /// Prompt of every fine-tuned policy: the SFT source string and the PPO/eval query.
    pub fn policy(&self, query: &str) -> Result<String> {
        self.render_completion("policy", context! { query })
    }

    /// The biography evaluation's query for one person.
    pub fn bio_query(&self, entity: &str) -> Result<String> {
        self.render_completion("bio_query", context! { entity })
    }

    /// The base model's 8-shot paragraph prompt; cut the sample with
    /// [`crate::parse::first_paragraph`].
    pub fn icl_paragraphs(&self, query: &str) -> Result<String> {
        self.render_completion("icl_paragraphs", context! { query })
    }

    /// The 8-shot prompt whose examples state their confidence (Summary ICL baseline).
    pub fn summary_icl_paragraphs(&self, query: &str) -> Result<String> {
        self.render_completion("summary_icl_paragraphs", context! { query })
    }

    /// Zero-shot paragraph request for a chat model.
    pub fn paragraph_zero_shot(&self, query: &str) -> Result<Vec<PromptMessage>> {
        self.render_turns("paragraph_zero_shot", context! { query })
    }

    /// Zero-shot paragraph request that asks for probabilities on uncertain claims.
    pub fn paragraph_jafu(&self, query: &str) -> Result<Vec<PromptMessage>> {
        self.render_turns("paragraph_jafu", context! { query })
    }

    /// Input of the ExtractAnswers model; its target is `"a; b"` or `"No Answer"`.
    pub fn extract_answers_model(&self, question: &str, paragraph: &str) -> Result<String> {
        self.render_completion("extract_answers_model", context! { question, paragraph })
    }

    /// Input of the ForecastProbs model for one candidate; the paragraph is cut to its first
    /// [`crate::schema::PARAGRAPH_CHAR_LIMIT`] characters, as in the reference.
    pub fn forecast_probs_model(
        &self,
        question: &str,
        paragraph: &str,
        candidate: &str,
    ) -> Result<String> {
        let paragraph = cut_paragraph(paragraph);
        self.render_completion(
            "forecast_probs_model",
            context! { question, paragraph, candidate },
        )
    }

    /// Input of the Factuality reward model.
    pub fn binary_correctness_model(
        &self,
        question: &str,
        paragraph: &str,
        answer: &str,
    ) -> Result<String> {
        self.render_completion(
            "binary_correctness_model",
            context! { question, paragraph, answer },
        )
    }

    /// Asks a teacher to turn a QA question into an open-ended query; parse the reply with
    /// [`crate::parse::parse_open_ended_query`].
    pub fn open_ended_query(&self, question: &str) -> Result<Vec<PromptMessage>> {
        self.render_turns("open_ended_query", context! { question })
    }

    /// Asks a teacher to rewrite a Jeopardy clue without its category; parse the reply with
    /// [`crate::parse::parse_rephrased_question`].
    pub fn jeopardy_rephrase(
        &self,
        category: &str,
        clue: &str,
        answer: &str,
    ) -> Result<Vec<PromptMessage>> {
        self.render_turns("jeopardy_rephrase", context! { category, clue, answer })
    }

    /// Asks a teacher to merge base-model samples into one paragraph with confidence statements;
    /// parse the reply with [`crate::parse::parse_summary`].
    pub fn summarize_samples<S: AsRef<str>>(&self, samples: &[S]) -> Result<Vec<PromptMessage>> {
        if samples.is_empty() {
            return Err(DataError::Invalid(
                "summarize_samples needs at least one sample".into(),
            ));
        }
        let samples: Vec<&str> = samples.iter().map(AsRef::as_ref).collect();
        self.render_turns("summarize_samples", context! { samples })
    }

    /// Asks a teacher for the answers a paragraph gives; parse the reply with
    /// [`crate::parse::parse_teacher_extraction`].
    pub fn extract_answers(
        &self,
        question: &str,
        paragraph: &str,
        used_for: ExtractionUse,
    ) -> Result<Vec<PromptMessage>> {
        let shots = used_for.shots();
        self.render_turns("extract_answers", context! { question, paragraph, shots })
    }

    /// The few-shot extraction completion for `paragraph` ([`ExtractionPrompt::FewShot`]), its
    /// line breaks folded into spaces, since the examples give each text on one line; parse
    /// the reply's first line with [`crate::parse::parse_extracted_answers`].
    pub fn extract_answers_few_shot(&self, question: &str, paragraph: &str) -> Result<String> {
        let paragraph = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
        self.render_completion("extract_answers_few_shot", context! { question, paragraph })
    }

    /// Asks a teacher for the probability that `candidate` is correct given only the paragraph;
    /// parse the reply with [`crate::parse::parse_probability`].
    pub fn forecast_probability(
        &self,
        question: &str,
        paragraph: &str,
        candidate: &str,
    ) -> Result<Vec<PromptMessage>> {
        self.render_turns(
            "forecast_probability",
            context! { question, paragraph, candidate },
        )
    }

    /// Asks a teacher for a 0/1 correctness label; parse the reply with
    /// [`crate::parse::parse_correctness`].
    pub fn binary_correctness(
        &self,
        question: &str,
        paragraph: &str,
        answer: &str,
    ) -> Result<Vec<PromptMessage>> {
        self.render_turns(
            "binary_correctness",
            context! { question, paragraph, answer },
        )
    }

    /// Asks a judge whether each proposed answer means the gold one (1 to [`JUDGE_BATCH_SIZE`]
    /// pairs); parse the reply with [`crate::parse::parse_judge_verdicts`] and `pairs.len()`.
    pub fn judge_equivalence(&self, pairs: &[JudgePair<'_>]) -> Result<Vec<PromptMessage>> {
        if pairs.is_empty() || pairs.len() > JUDGE_BATCH_SIZE {
            return Err(DataError::Invalid(format!(
                "judge_equivalence takes 1 to {JUDGE_BATCH_SIZE} pairs per call, got {}; \
                 split the batch",
                pairs.len()
            )));
        }
        self.render_turns("judge_equivalence", context! { pairs })
    }

    /// Asks a teacher to split a biography into claims with confidence; parse the reply with
    /// [`crate::parse::parse_claims`].
    pub fn decompose_claims(&self, entity: &str, paragraph: &str) -> Result<Vec<PromptMessage>> {
        self.render_turns("decompose_claims", context! { entity, paragraph })
    }

    /// Asks a teacher whether `claim` holds according to `passages` (best first); parse the
    /// reply with [`crate::parse::parse_fact_check`].
    pub fn fact_check(
        &self,
        entity: &str,
        claim: &str,
        passages: &[Passage<'_>],
    ) -> Result<Vec<PromptMessage>> {
        if passages.is_empty() {
            return Err(DataError::Invalid(format!(
                "fact_check of \"{claim}\" needs at least one passage; \
                 a claim with no retrieved passage cannot be checked"
            )));
        }
        self.render_turns("fact_check", context! { entity, claim, passages })
    }
}

/// Reads `dir/<name>.j2` files, keyed by template name. Hidden files are skipped.
fn read_override_dir(dir: &Path) -> Result<BTreeMap<String, (PathBuf, String)>> {
    let known = || {
        CATALOGUE
            .iter()
            .map(|spec| spec.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let entries = fs::read_dir(dir).map_err(|source| DataError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut overrides = BTreeMap::new();
    for entry in entries {
        let path = entry
            .map_err(|source| DataError::Read {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file_name.starts_with('.') {
            continue;
        }
        let Some(stem) = file_name.strip_suffix(".j2").filter(|_| path.is_file()) else {
            return Err(DataError::File {
                path,
                message: format!(
                    "not a template: override files are named <template>.j2, \
                     with <template> one of {}",
                    known()
                ),
            });
        };
        if !CATALOGUE.iter().any(|spec| spec.name == stem) {
            return Err(DataError::File {
                path,
                message: format!(
                    "unknown template name `{stem}`; the templates are {}",
                    known()
                ),
            });
        }
        let source = fs::read_to_string(&path).map_err(|source| DataError::Read {
            path: path.clone(),
            source,
        })?;
        overrides.insert(stem.to_owned(), (path, source));
    }
    Ok(overrides)
}

/// Splits a template source into turns, compiles each into `env`, and checks its variables.
fn compile(
    env: &mut Environment<'static>,
    spec: &TemplateSpec,
    origin: &Origin,
    source: &str,
) -> Result<Vec<Turn>> {
    let fail = |message: String| origin.error(spec.name, message);
    let mut parts: Vec<(Role, usize, String)> = Vec::new();
    let mut preamble = String::new();
    for (index, line) in source.lines().enumerate() {
        if let Some(role) = role_marker(line) {
            if spec.kind == TemplateKind::Completion {
                return Err(fail(format!(
                    "line {}: `{}` is a role marker, \
                     but this is a completion template (one plain text, no chat turns)",
                    index + 1,
                    line.trim()
                )));
            }
            parts.push((role, index + 2, String::new()));
            continue;
        }
        let text = match parts.last_mut() {
            Some((_, _, text)) => text,
            None => &mut preamble,
        };
        text.push_str(line);
        text.push('\n');
    }
    if parts.is_empty() {
        // Completion templates, and chat templates written as a single user turn.
        parts.push((Role::User, 1, std::mem::take(&mut preamble)));
    } else if !strip_jinja_comments(&preamble).trim().is_empty() {
        return Err(fail(
            "text before the first role marker; start the file with <<system>> or <<user>>".into(),
        ));
    }

    let mut used = BTreeSet::new();
    let mut turns = Vec::with_capacity(parts.len());
    for (index, (role, first_line, text)) in parts.into_iter().enumerate() {
        let env_name = format!("{}#{index}", spec.name);
        env.add_template_owned(env_name.clone(), text)
            .map_err(|err| {
                let line = err
                    .line()
                    .map(|line| format!("line {}: ", first_line + line - 1))
                    .unwrap_or_default();
                fail(format!("{line}{}", err_text(&err)))
            })?;
        let template = env
            .get_template(&env_name)
            .map_err(|err| fail(err_text(&err)))?;
        used.extend(template.undeclared_variables(false));
        turns.push(Turn {
            role,
            env_name,
            first_line,
        });
    }

    let allowed: HashSet<&str> = spec
        .required
        .iter()
        .chain(spec.optional)
        .chain(JINJA_GLOBALS)
        .copied()
        .collect();
    if let Some(unknown) = used.iter().find(|var| !allowed.contains(var.as_str())) {
        let variables: Vec<&str> = spec.required.iter().chain(spec.optional).copied().collect();
        return Err(fail(format!(
            "uses `{{{{ {unknown} }}}}`, which is not one of its variables ({})",
            variables.join(", ")
        )));
    }
    if let Some(missing) = spec.required.iter().find(|var| !used.contains(**var)) {
        return Err(fail(format!(
            "never uses the required placeholder `{{{{ {missing} }}}}`"
        )));
    }
    Ok(turns)
}

fn role_marker(line: &str) -> Option<Role> {
    match line.trim() {
        "<<system>>" => Some(Role::System),
        "<<user>>" => Some(Role::User),
        "<<assistant>>" => Some(Role::Assistant),
        _ => None,
    }
}

fn strip_jinja_comments(text: &str) -> String {
    let mut rest = text;
    let mut kept = String::new();
    while let Some(start) = rest.find("{#") {
        kept.push_str(&rest[..start]);
        match rest[start..].find("#}") {
            Some(end) => rest = &rest[start + end + 2..],
            None => return kept + &rest[start..],
        }
    }
    kept + rest
}

fn err_text(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

/// A render error with the file line and the template text it points at, which names the
/// variable or attribute that was missing.
fn describe_jinja_error(env: &Environment<'static>, turn: &Turn, err: &minijinja::Error) -> String {
    let snippet = env.get_template(&turn.env_name).ok().and_then(|template| {
        err.range()
            .and_then(|range| template.source().get(range).map(str::to_owned))
    });
    let line = err
        .line()
        .map(|line| format!("line {}: ", turn.first_line + line - 1))
        .unwrap_or_default();
    match snippet {
        Some(snippet) => format!("{line}{} in `{snippet}`", err_text(err)),
        None => format!("{line}{}", err_text(err)),
    }
}

/// A stand-in value for a template variable, used to try every template when it is loaded.
fn sample_value(var: &str) -> Value {
    match var {
        "samples" => Value::from_serialize(["First sample paragraph.", "Second sample paragraph."]),
        "pairs" => Value::from_serialize([JudgePair {
            question: "Sample question?",
            gold: "gold",
            proposed: "proposed",
        }]),
        "passages" => Value::from_serialize([Passage {
            title: "Sample title",
            text: "Sample passage.",
        }]),
        "shots" => Value::from(ExtractionUse::Evaluation.shots()),
        other => Value::from(format!("<{other}>")),
    }
}
