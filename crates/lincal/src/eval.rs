//! `lincal eval ...`: calibration metrics, the QA and biography evaluation pipelines of
//! `lincal_eval`, and the comparison of runs.
//!
//! Every model role (the evaluated policy, reader, judge, claim decomposer, confidence model,
//! fact checker) is a local model directory run by lincal's engine or an API backend config;
//! they share one response cache in the run directory (a rerun makes no call it had made)
//! and one local engine per model directory.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lincal_data::artifact::CACHE_FILE;
use lincal_data::parse::{ExtractionParsing, LexicalReader};
use lincal_data::prompts::{ExtractionPrompt, Templates};
use lincal_eval::bio::{
    BioEvaluation, ClaimConfidence, Decomposer, FactChecker, LexicalDecomposer, LlmDecomposer,
};
use lincal_eval::datasets::{self, QaDataset, ReferenceDataset};
use lincal_eval::judges::{ExactMatchJudge, Judge, LlmJudge};
use lincal_eval::qa::QaEvaluation;
use lincal_eval::readers::{LexicalQaReader, LlmReader, Reader, StatedConfidenceReader};
use lincal_eval::{
    EvalOptions, GenerationSettings, IndexLocation, KnowledgeIndex, Method, Policy, ProgressEvent,
    PromptStyle, ReportOptions, RunOutcome, RunStatus, Summarizer, TeacherSettings,
};
use lincal_llm::{Accounting, BackendConfig, ClientOptions, Llm, LlmClient, ResponseCache};
use lincal_metrics::{
    Binning, BootstrapConfig, ReportConfig, compute_report, read_predictions_jsonl,
    write_reliability_diagram,
};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::local_llm::LocalLlm;
use crate::progress::ProgressDisplay;
use crate::surrogate_reader::SurrogateReader;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// All calibration metrics with bootstrap CIs from a predictions JSONL (`confidence` in
    /// [0, 1] or null for methods without confidence, `correct` true/false or 1/0).
    Metrics {
        predictions: PathBuf,
        /// 20 for QA, 40 for per-claim (biography) evaluation, as in the paper.
        #[arg(long, default_value_t = 20)]
        bins: usize,
        /// mass: equal-count bins dropping the N mod bins most confident (the reference);
        /// mass-all: equal-count bins keeping every example; width: equal-width bins.
        #[arg(long, default_value = "mass", value_parser = ["mass", "mass-all", "width"])]
        binning: String,
        #[arg(long, default_value_t = 10_000)]
        resamples: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory for metrics.json and the reliability diagram (default: beside the input).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// QA evaluation (SPEC 5.1): paragraphs for each question, the answers a reader finds in
    /// them and their forecast probabilities, the most probable answer judged against the gold
    /// one; accuracy, ECE (20 equal-mass bins) and the report in --out.
    Qa(Box<QaArgs>),
    /// Biography evaluation (SPEC 5.3): a biography per person, split into claims with the
    /// writer's confidence, each checked against passages retrieved from a knowledge source;
    /// pooled accuracy, ECE (40 equal-mass bins) and the report in --out.
    Bio(Box<BioArgs>),
    /// Runs on one dataset side by side: comparison.md, comparison.html and plots in --out.
    Compare {
        /// Run directories (each with results.json).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

/// The evaluated model: a local model directory or an API backend config.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct PolicyArgs {
    /// A local model directory (Hugging Face layout).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A backend config (TOML, `lincal_llm::BackendConfig`) of an OpenAI-compatible or
    /// Anthropic endpoint.
    #[arg(long)]
    api: Option<PathBuf>,
}

impl PolicyArgs {
    /// A local model directory, as `--model DIR` gives it.
    pub(crate) fn local(dir: PathBuf) -> Self {
        PolicyArgs {
            model: Some(dir),
            api: None,
        }
    }
}

/// What both pipelines share.
#[derive(Args)]
pub struct RunArgs {
    /// The run directory: each stage's JSONL, the response cache, failures.jsonl and the report.
    /// A finished run there with the same settings is read back; an interrupted one resumes.
    #[arg(long)]
    out: PathBuf,
    /// The method's name in reports. The paper's methods ("LC SFT", "Factuality RL", "GPT-4
    /// JAFU 0-Shot", ...) also set --prompt and --states-confidence.
    #[arg(long, default_value = "LC SFT")]
    method: String,
    /// How the model is prompted: finetuned, icl, summary-icl, zero-shot, jafu or
    /// direct-summary (needs --summarizer or --summarizer-model).
    #[arg(long)]
    prompt: Option<String>,
    /// Whether the method states confidence (its answers are forecast) or not (every answer
    /// counts as certain).
    #[arg(long)]
    states_confidence: Option<bool>,
    /// The teacher that summarises the policy's samples for --method "Direct Summary Eval":
    /// a backend config.
    #[arg(long, conflicts_with = "summarizer_model")]
    summarizer: Option<PathBuf>,
    /// A local model as the Direct Summary Eval summarizer.
    #[arg(long)]
    summarizer_model: Option<PathBuf>,
    /// Evaluate only the first N items.
    #[arg(long)]
    limit: Option<usize>,
    /// Every request's seed derives from this and its item's id.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sampling of the evaluated model; defaults 0.3, top-p 0.9 and 512 tokens for a local
    /// model, 0.3, no top-p and 1,800 tokens for an API (SPEC 5.1).
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus sampling of the evaluated model.
    #[arg(long)]
    top_p: Option<f64>,
    /// Most new tokens the evaluated model writes per paragraph.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Calls per teacher request (reader, judge, ...) before its item is recorded as failed.
    #[arg(long, default_value_t = 10)]
    max_attempts: u32,
    /// A directory of prompt templates overriding the built-in ones (`lincal prompts export`).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// The response cache of every role (SQLite); default OUT/cache.sqlite.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Replace a different run in OUT (its response cache is kept: answered calls cost nothing).
    #[arg(long)]
    force: bool,
    /// Items handed to the models together and committed together.
    #[arg(long, default_value_t = 40)]
    chunk_size: usize,
    /// Bootstrap resamples of the confidence intervals (0: none).
    #[arg(long, default_value_t = 10_000)]
    resamples: usize,
    /// Device and precision of local models.
    #[command(flatten)]
    device: crate::DeviceArgs,
    /// Requests a local model decodes together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
}

#[derive(Args)]
pub struct QaArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    setup: QaSetup,
}

/// What a QA evaluation needs besides the evaluated model: the questions, reader, judge and
/// run settings (`lincal select` evaluates several models with one).
#[derive(Args)]
pub struct QaSetup {
    /// A QA JSONL file (`lincal data build` output), a reference split file (.csv/.parquet in
    /// its `<name>_paragraph_generation` folder), or a reference dataset name (trivia_qa,
    /// jeopardy, sciq, bioasq) found under --data-dir.
    #[arg(long)]
    dataset: String,
    /// The reference dataset's root folder (holding `<name>_paragraph_generation/`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The split of a reference dataset named by --dataset.
    #[arg(long, default_value = "test")]
    split: String,
    /// The files with the gold answers of a reference split: TriviaQA unfiltered.nocontext,
    /// the HF jeopardy train split, SciQ train+validation+test in order, or BioASQ
    /// training12b_new.json.
    #[arg(long, num_args = 1..)]
    answers: Vec<PathBuf>,
    /// lexical (no model; finds the gold answer, see the docs), llm (--reader-model),
    /// stated (--reader-model finds the answers, whose confidence is what the paragraph
    /// states: the offline reader), surrogate (--extractor and --forecaster) or a backend
    /// config file. Default: what the other reader options imply, else lexical.
    #[arg(long)]
    reader: Option<String>,
    /// A local model as LLM reader, or as the stated reader's extractor.
    #[arg(long)]
    reader_model: Option<PathBuf>,
    /// How the llm and stated readers ask for a paragraph's answers: teacher (the reference's
    /// prompt with 10 worked examples) or few-shot (a completion answered on one line, which a
    /// small local model follows).
    #[arg(long)]
    extraction_prompt: Option<ExtractionPrompt>,
    /// The surrogate reader's ExtractAnswers model directory.
    #[arg(long)]
    extractor: Option<PathBuf>,
    /// How the surrogate reader reads the ExtractAnswers replies, as the PPO reward's
    /// `reward.extraction_parsing`: reference (exactly "No Answer" is none, else every
    /// ";"-separated item, exact duplicates dropped) or normalized (lincal's reading; an
    /// unparsable reply is asked again).
    #[arg(long)]
    extraction_parsing: Option<ExtractionParsing>,
    /// New tokens the surrogate reader's ExtractAnswers replies may take (the reference's 300
    /// by default); a lower cap stops an extractor that runs on repeating its prompt.
    #[arg(long)]
    extractor_max_tokens: Option<u32>,
    /// The surrogate reader's ForecastProbs reward-model directory.
    #[arg(long)]
    forecaster: Option<PathBuf>,
    /// exact (alias-normalised exact match), llm (--judge-model) or a backend config file.
    /// Default: llm with --judge-model, else exact.
    #[arg(long)]
    judge: Option<String>,
    /// A local model as semantic-equivalence judge.
    #[arg(long)]
    judge_model: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
pub struct BioArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// The people: one name a line.
    #[arg(long, required_unless_present = "wordnet", conflicts_with = "wordnet")]
    entities: Option<PathBuf>,
    /// N people taken evenly from the knowledge source (WordNet's people from `lincal data
    /// build wordnet-people`).
    #[arg(long)]
    wordnet: Option<usize>,
    /// Knowledge JSONL `{id, title, text}` the claims are checked against (BM25).
    #[arg(long)]
    knowledge: PathBuf,
    /// Where the knowledge source's search index is kept; default beside the source.
    #[arg(long)]
    index_dir: Option<PathBuf>,
    /// The people's name in reports; default "WordNet people" with --wordnet, else the
    /// entity file's name.
    #[arg(long)]
    dataset_name: Option<String>,
    /// lexical (clauses of the hedge reader, no model), llm (--decomposer-model) or a backend
    /// config file. Default: llm with --decomposer-model, else lexical.
    #[arg(long)]
    decomposer: Option<String>,
    /// A local model as claim decomposer.
    #[arg(long)]
    decomposer_model: Option<PathBuf>,
    /// A backend config asked for confidence wording the hedge table does not know.
    #[arg(long, conflicts_with = "confidence_model")]
    confidence: Option<PathBuf>,
    /// A local model asked for confidence wording the hedge table does not know.
    #[arg(long)]
    confidence_model: Option<PathBuf>,
    #[command(flatten)]
    checker: CheckerArgs,
    /// Passages retrieved per claim.
    #[arg(long, default_value_t = lincal_eval::bio::DEFAULT_PASSAGES)]
    passages: usize,
    #[command(flatten)]
    run: RunArgs,
}

/// The fact checker: a backend config or a local model.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct CheckerArgs {
    /// A backend config of the fact checker.
    #[arg(long)]
    checker: Option<PathBuf>,
    /// A local model as fact checker.
    #[arg(long)]
    checker_model: Option<PathBuf>,
}

pub fn run(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Metrics {
            predictions,
            bins,
            binning,
            resamples,
            seed,
            out,
        } => metrics(predictions, bins, &binning, resamples, seed, out),
        EvalCommand::Qa(args) => qa(*args),
        EvalCommand::Bio(args) => bio(*args),
        EvalCommand::Compare { runs, out } => {
            let comparison = lincal_eval::compare(&runs, &out)?;
            for run in &comparison.runs {
                let m = &run.results.metrics;
                println!(
                    "{}: accuracy {:.3}, ECE {:.3} ({} items)",
                    run.label, m.accuracy.value, m.ece.value, m.n
                );
            }
            for note in &comparison.notes {
                println!("note: {note}");
            }
            println!(
                "wrote {}",
                out.join(lincal_eval::compare::COMPARISON_HTML_FILE)
                    .display()
            );
            Ok(())
        }
    }
}

fn metrics(
    predictions: PathBuf,
    bins: usize,
    binning: &str,
    resamples: usize,
    seed: u64,
    out: Option<PathBuf>,
) -> Result<()> {
    let binning = match binning {
        "mass-all" => Binning::EqualMassKeepAll,
        "width" => Binning::EqualWidth,
        _ => Binning::EqualMass,
    };
    let records = read_predictions_jsonl(&predictions)?;
    let config = ReportConfig {
        bins,
        binning,
        bootstrap: BootstrapConfig {
            resamples,
            seed,
            ..Default::default()
        },
    };
    let report = compute_report(&records, &config)?;
    println!("{}", report.to_table());
    let out = out.unwrap_or_else(|| predictions.parent().map(PathBuf::from).unwrap_or_default());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let json_path = out.join("metrics.json");
    lincal_model::fsutil::write_atomic(
        &json_path,
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    let name = predictions
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("predictions");
    let plots = write_reliability_diagram(
        &report.reliability_bins,
        Some(&report.smooth_curve),
        &format!("Reliability: {name}"),
        out.join(lincal_eval::report::RELIABILITY_PLOT),
    )?;
    let risk = lincal_metrics::write_risk_coverage_plot(
        &[(name, &report.coverage)],
        &format!("Risk vs coverage: {name}"),
        out.join(lincal_eval::report::RISK_COVERAGE_PLOT),
    )?;
    println!(
        "wrote {}, {} and {} (and their SVGs)",
        json_path.display(),
        plots.png.display(),
        risk.png.display()
    );
    Ok(())
}

/// Where a role's model comes from.
#[derive(Debug, Clone, PartialEq)]
enum ModelSource {
    Local(PathBuf),
    Api(PathBuf),
}

/// The model of an optional role given as `--ROLE CONFIG` or `--ROLE-model DIR`.
fn config_or_dir(config: Option<&PathBuf>, dir: Option<&PathBuf>) -> Option<ModelSource> {
    config
        .map(|c| ModelSource::Api(c.clone()))
        .or_else(|| dir.map(|d| ModelSource::Local(d.clone())))
}

/// A role given as a keyword (`keywords`), a backend config file, or implied by `--ROLE-model`:
/// returns the keyword, or "llm" with its model.
fn role_choice(
    flag: &str,
    choice: Option<&str>,
    keywords: &[&str],
    default: &str,
    model: Option<&PathBuf>,
) -> Result<(String, Option<ModelSource>)> {
    match (choice, model) {
        (None, Some(dir)) | (Some("llm"), Some(dir)) => {
            Ok(("llm".into(), Some(ModelSource::Local(dir.clone()))))
        }
        (Some("llm"), None) => bail!(
            "--{flag} llm needs --{flag}-model DIR (or give a backend config file as --{flag})"
        ),
        (None, None) => Ok((default.into(), None)),
        (Some(keyword), model) if keywords.contains(&keyword) => {
            if model.is_some() {
                bail!("--{flag}-model is for --{flag} llm, not --{flag} {keyword}");
            }
            Ok((keyword.into(), None))
        }
        (Some(path), None) if Path::new(path).is_file() => {
            Ok(("llm".into(), Some(ModelSource::Api(PathBuf::from(path)))))
        }
        (Some(other), _) => bail!(
            "--{flag} {other:?}: use one of {}, llm with --{flag}-model DIR, \
             or a backend config file that exists",
            keywords.join(", ")
        ),
    }
}

/// Builds every role's client: one cache and one set of counters for the run, one local
/// engine per model directory, however many roles it plays.
struct Models {
    cache: Arc<ResponseCache>,
    accounting: Arc<Accounting>,
    device: tch::Device,
    kind: tch::Kind,
    batch_size: usize,
    local: HashMap<PathBuf, Arc<LocalLlm>>,
}

impl Models {
    fn new(run: &RunArgs) -> Result<Self> {
        let (device, kind) = run.device.resolve()?;
        let cache_path = run
            .cache
            .clone()
            .unwrap_or_else(|| run.out.join(CACHE_FILE));
        let cache = ResponseCache::open(&cache_path)
            .with_context(|| format!("opening the response cache {}", cache_path.display()))?;
        Ok(Models {
            cache: Arc::new(cache),
            accounting: Arc::new(Accounting::new()),
            device,
            kind,
            batch_size: run.batch_size.max(1),
            local: HashMap::new(),
        })
    }

    fn client(&mut self, source: &ModelSource) -> Result<LlmClient> {
        let client = match source {
            ModelSource::Local(dir) => {
                let key = dir
                    .canonicalize()
                    .with_context(|| format!("model directory {}", dir.display()))?;
                let llm = match self.local.get(&key) {
                    Some(llm) => llm.clone(),
                    None => {
                        let llm = Arc::new(
                            LocalLlm::load(dir, self.device, self.kind, self.batch_size)
                                .with_context(|| {
                                    format!("loading the model in {}", dir.display())
                                })?,
                        );
                        self.local.insert(key, llm.clone());
                        llm
                    }
                };
                // One worker hands the engine whole batches.
                let options = ClientOptions {
                    concurrency: self.batch_size,
                    ..ClientOptions::default()
                };
                LlmClient::new(llm, options).with_cache(self.cache.clone())
            }
            ModelSource::Api(path) => {
                let config = read_backend_config(path)?;
                let own_cache = config.cache.is_some();
                let client = config
                    .build()
                    .with_context(|| format!("setting up the backend of {}", path.display()))?;
                // The config's own cache, if it names one; else the run's.
                if own_cache {
                    client
                } else {
                    client.with_cache(self.cache.clone())
                }
            }
        };
        Ok(client.with_accounting(self.accounting.clone()))
    }

    /// Prints each model's requests, cache hits, calls and tokens.
    fn print_usage(&self) {
        for (model, usage) in self.accounting.by_model() {
            let cost = if usage.cost_usd > 0.0 {
                format!(", ${:.4}", usage.cost_usd)
            } else {
                String::new()
            };
            eprintln!(
                "  {model}: {} requests, {} from cache, {} calls ({} retries, {} failed), \
                 {} prompt + {} completion tokens{cost}",
                usage.requests,
                usage.cache_hits,
                usage.attempts,
                usage.retries,
                usage.failed,
                usage.prompt_tokens,
                usage.completion_tokens
            );
        }
    }
}

fn read_backend_config(path: &Path) -> Result<BackendConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: not a valid backend config", path.display()))
}

/// The evaluated model's source, its name in reports and its sampling settings.
fn policy_source(
    args: &PolicyArgs,
    run: &RunArgs,
) -> Result<(ModelSource, String, GenerationSettings)> {
    let (source, label, defaults) = match (&args.model, &args.api) {
        (Some(dir), _) => (
            ModelSource::Local(dir.clone()),
            dir.display().to_string(),
            GenerationSettings::local(),
        ),
        (None, Some(config)) => (
            ModelSource::Api(config.clone()),
            read_backend_config(config)?.model,
            GenerationSettings::api(),
        ),
        (None, None) => bail!("give --model DIR or --api CONFIG.toml"),
    };
    let settings = GenerationSettings {
        temperature: run.temperature.unwrap_or(defaults.temperature),
        top_p: run.top_p.or(defaults.top_p),
        max_tokens: run.max_tokens.unwrap_or(defaults.max_tokens),
        seed: run.seed,
        ..defaults
    };
    Ok((source, label, settings))
}

/// The method: a paper preset by name, adjusted by --prompt and --states-confidence; any other
/// name needs both.
fn method(run: &RunArgs) -> Result<Method> {
    let prompt = run
        .prompt
        .as_deref()
        .map(str::parse::<PromptStyle>)
        .transpose()?;
    match (Method::preset(&run.method), prompt, run.states_confidence) {
        (Some(preset), prompt, confidence) => Ok(Method {
            name: run.method.clone(),
            prompt: prompt.unwrap_or(preset.prompt),
            states_confidence: confidence.unwrap_or(preset.states_confidence),
        }),
        (None, Some(prompt), Some(states_confidence)) => Ok(Method {
            name: run.method.clone(),
            prompt,
            states_confidence,
        }),
        (None, ..) => bail!(
            "--method {:?} is not one of the paper's methods ({}); \
             give --prompt and --states-confidence for it",
            run.method,
            Method::preset_names().join(", ")
        ),
    }
}

fn templates(run: &RunArgs) -> Result<Templates> {
    Ok(match &run.prompts {
        Some(dir) => Templates::with_overrides(dir)?,
        None => Templates::builtin()?,
    })
}

fn run_options(run: &RunArgs, config: ReportConfig) -> EvalOptions {
    let bootstrap = BootstrapConfig {
        resamples: run.resamples,
        ..config.bootstrap
    };
    EvalOptions {
        chunk_size: run.chunk_size,
        force: run.force,
        report: ReportOptions {
            metrics: Some(ReportConfig {
                bootstrap,
                ..config
            }),
            ..ReportOptions::default()
        },
    }
}

fn teacher(run: &RunArgs) -> TeacherSettings {
    TeacherSettings {
        max_attempts: run.max_attempts,
        seed: run.seed,
        ..TeacherSettings::default()
    }
}

/// The client of `--summarizer` or `--summarizer-model`, if given.
fn summarizer_client(run: &RunArgs, models: &mut Models) -> Result<Option<LlmClient>> {
    config_or_dir(run.summarizer.as_ref(), run.summarizer_model.as_ref())
        .map(|source| models.client(&source))
        .transpose()
}

/// How the summarizer samples: the teacher settings at the temperature the paper gives Direct
/// Summary Eval's summaries.
fn summarizer_settings(run: &RunArgs) -> TeacherSettings {
    TeacherSettings {
        temperature: lincal_eval::pipeline::DIRECT_SUMMARY_TEMPERATURE,
        ..teacher(run)
    }
}

/// What the run records besides its settings.
fn extra(run: &RunArgs, policy: &ModelSource) -> BTreeMap<String, serde_json::Value> {
    let mut extra = BTreeMap::from([(
        "max_attempts".to_string(),
        serde_json::json!(run.max_attempts),
    )]);
    if matches!(policy, ModelSource::Local(_)) {
        extra.insert("device".into(), serde_json::json!(run.device.device));
        extra.insert("dtype".into(), serde_json::json!(run.device.dtype));
    }
    if let Some(limit) = run.limit {
        extra.insert("limit".into(), serde_json::json!(limit));
    }
    extra
}

/// A progress bar per pipeline stage.
#[derive(Default)]
struct StageBars {
    bar: Mutex<Option<ProgressDisplay>>,
}

impl StageBars {
    fn report(&self, event: ProgressEvent) {
        let mut bar = self
            .bar
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match event {
            ProgressEvent::Started { stage, total, done } => {
                *bar = Some(ProgressDisplay::new(
                    stage.to_string(),
                    "item",
                    total as u64,
                    done as u64,
                    "{prefix:>28} {bar:40} {pos}/{len} [{elapsed_precise} < {eta_precise}]",
                ));
            }
            ProgressEvent::Advanced { by, .. } => {
                if let Some(bar) = bar.as_ref() {
                    bar.inc(by as u64);
                }
            }
            ProgressEvent::Finished { .. } => {
                if let Some(bar) = bar.take() {
                    bar.finish();
                }
            }
        }
    }
}

/// Prints the outcome of a run.
fn print_outcome(out: &Path, outcome: &RunOutcome, models: &Models) {
    let results = &outcome.results;
    let settings = &results.settings;
    match outcome.status {
        RunStatus::AlreadyFinished => eprintln!(
            "{}: this run had finished with the same settings and inputs; \
             nothing to do (use --force to run it again)",
            out.display()
        ),
        RunStatus::Resumed => eprintln!("{}: resumed the interrupted run", out.display()),
        RunStatus::Ran => {}
    }
    println!(
        "{} ({}) on {}",
        settings.method, settings.model, settings.dataset
    );
    println!("{}", results.metrics.to_table());
    let counts = &results.counts;
    if !counts.failures.is_empty() {
        let failures: Vec<String> = counts
            .failures
            .iter()
            .map(|(stage, n)| format!("{stage}: {n}"))
            .collect();
        println!(
            "items with failures: {} (see {})",
            failures.join(", "),
            out.join(lincal_data::artifact::FAILURES_FILE).display()
        );
    }
    if outcome.status != RunStatus::AlreadyFinished {
        models.print_usage();
    }
    println!(
        "wrote {}",
        out.join(lincal_eval::report::REPORT_HTML_FILE).display()
    );
}

/// The QA dataset of --dataset.
impl QaSetup {
    /// The run directory given with --out.
    pub(crate) fn run_out(&self) -> &Path {
        &self.run.out
    }
}

fn qa_dataset(args: &QaSetup) -> Result<QaDataset> {
    let path = Path::new(&args.dataset);
    let mut dataset = if path.is_file() {
        let extension = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        match extension.as_str() {
            "jsonl" | "json" => datasets::load_qa_jsonl(path)?,
            "csv" | "parquet" => datasets::load_reference(path, None, &args.answers)?,
            _ => bail!(
                "--dataset {}: a QA JSONL (.jsonl) or a reference split (.csv, .parquet)",
                path.display()
            ),
        }
    } else if let Ok(reference) = args.dataset.parse::<ReferenceDataset>() {
        let Some(root) = &args.data_dir else {
            bail!(
                "--dataset {reference} needs --data-dir, the folder that holds \
                 {reference}_paragraph_generation/ (or give the split file's path)"
            );
        };
        let split = datasets::find_split_file(root, reference, &args.split)?;
        datasets::load_reference(&split, Some(reference), &args.answers)?
    } else if args.dataset.parse::<lincal_data::sources::Source>().is_ok() {
        bail!(
            "--dataset {0}: build the questions first with `lincal data build {0} --out {0}.jsonl` \
             and give that file",
            args.dataset
        );
    } else {
        bail!(
            "--dataset {}: no such file, and not a dataset name \
             (trivia_qa, jeopardy, sciq, bioasq)",
            args.dataset
        );
    };
    if dataset.tally.skipped_total() > 0 {
        eprintln!("{}: {}", dataset.name, dataset.tally);
    }
    if let Some(limit) = args.run.limit {
        dataset.truncate(limit);
    }
    Ok(dataset)
}

fn qa(args: QaArgs) -> Result<()> {
    run_qa(&args.policy, &args.setup, &args.setup.run.out).map(|_| ())
}

/// Evaluates `policy` on the questions of `setup` in the run directory `out` and prints the
/// outcome.
pub(crate) fn run_qa(policy_args: &PolicyArgs, setup: &QaSetup, out: &Path) -> Result<RunOutcome> {
    let run = &setup.run;
    crate::warn_if_recovered(policy_args.model.as_deref(), run.prompts.as_deref());
    let method = method(run)?;
    let templates = templates(run)?;
    let dataset = qa_dataset(setup)?;
    let (policy_source, model_label, generation) = policy_source(policy_args, run)?;
    let (reader_kind, reader_source) = match (
        &setup.extractor,
        &setup.forecaster,
        setup.reader.as_deref(),
    ) {
        (Some(_), Some(_), None | Some("surrogate")) => ("surrogate".to_string(), None),
        (Some(_), _, _) | (_, Some(_), _) => bail!(
            "the surrogate reader needs both --extractor and --forecaster (and no other --reader)"
        ),
        (None, None, Some("surrogate")) => bail!(
            "--reader surrogate needs --extractor DIR (ExtractAnswers) and --forecaster DIR \
             (ForecastProbs)"
        ),
        (None, None, Some("stated")) => match &setup.reader_model {
            Some(dir) => ("stated".to_string(), Some(ModelSource::Local(dir.clone()))),
            None => bail!(
                "--reader stated needs --reader-model DIR, the model that finds each \
                 paragraph's answers"
            ),
        },
        (None, None, choice) => role_choice(
            "reader",
            choice,
            &["lexical"],
            "lexical",
            setup.reader_model.as_ref(),
        )?,
    };
    if setup.extraction_prompt.is_some() && !matches!(reader_kind.as_str(), "llm" | "stated") {
        bail!("--extraction-prompt is for the llm and stated readers, not --reader {reader_kind}");
    }
    let extraction = setup.extraction_prompt.unwrap_or_default();
    for (flag, given) in [
        ("--extraction-parsing", setup.extraction_parsing.is_some()),
        (
            "--extractor-max-tokens",
            setup.extractor_max_tokens.is_some(),
        ),
    ] {
        if given && reader_kind != "surrogate" {
            bail!("{flag} is for the surrogate reader, not --reader {reader_kind}");
        }
    }
    let (judge_kind, judge_source) = role_choice(
        "judge",
        setup.judge.as_deref(),
        &["exact"],
        "exact",
        setup.judge_model.as_ref(),
    )?;

    let mut models = Models::new(run)?;
    let policy = models.client(&policy_source)?;
    let summarizer_client = summarizer_client(run, &mut models)?;
    let summarizer_settings = summarizer_settings(run);
    let reader_client = reader_source
        .as_ref()
        .map(|source| models.client(source))
        .transpose()?;
    let extractor = setup
        .extractor
        .as_ref()
        .map(|dir| models.client(&ModelSource::Local(dir.clone())))
        .transpose()?;
    let judge_client = judge_source
        .as_ref()
        .map(|source| models.client(source))
        .transpose()?;

    let reader: Box<dyn Reader + '_> = match (reader_kind.as_str(), &reader_client, &extractor) {
        ("lexical", ..) => Box::new(LexicalQaReader::default()),
        ("surrogate", _, Some(extractor)) => {
            let forecaster = setup
                .forecaster
                .as_deref()
                .context("--forecaster is required with --extractor")?;
            Box::new(SurrogateReader::load(
                extractor,
                forecaster,
                models.device,
                models.kind,
                models.batch_size,
                &templates,
                &teacher(run),
                setup.extraction_parsing.unwrap_or_default(),
                setup
                    .extractor_max_tokens
                    .unwrap_or(lincal_data::prompts::EXTRACT_ANSWERS_MAX_TOKENS),
            )?)
        }
        ("stated", Some(client), _) => Box::new(StatedConfidenceReader {
            extractor: LlmReader {
                llm: client,
                templates: &templates,
                settings: teacher(run),
                extraction,
            },
            stated: LexicalQaReader::default(),
        }),
        (_, Some(client), _) => Box::new(LlmReader {
            llm: client,
            templates: &templates,
            settings: teacher(run),
            extraction,
        }),
        _ => unreachable!("every reader kind has its model"),
    };
    let judge: Box<dyn Judge + '_> = match (judge_kind.as_str(), &judge_client) {
        ("exact", _) => Box::new(ExactMatchJudge),
        (_, Some(client)) => Box::new(LlmJudge {
            llm: client,
            templates: &templates,
            settings: teacher(run),
        }),
        _ => unreachable!("an LLM judge has its model"),
    };
    let bars = StageBars::default();
    let progress = |event| bars.report(event);
    let mut extra = extra(run, &policy_source);
    extra.insert(
        "questions".into(),
        serde_json::json!(dataset.questions.len()),
    );
    let evaluation = QaEvaluation {
        policy: Policy {
            llm: &policy,
            method: &method,
            settings: &generation,
            templates: &templates,
            summarizer: summarizer_client.as_ref().map(|llm| Summarizer {
                llm,
                settings: &summarizer_settings,
            }),
        },
        reader: reader.as_ref(),
        judge: judge.as_ref(),
        model_label,
        extra,
        options: run_options(run, ReportConfig::qa()),
        progress: &progress,
    };
    let outcome = evaluation
        .run(out, &dataset)
        .with_context(|| format!("evaluating in {}", out.display()))?;
    print_outcome(out, &outcome, &models);
    Ok(outcome)
}

fn bio(args: BioArgs) -> Result<()> {
    let run = &args.run;
    crate::warn_if_recovered(args.policy.model.as_deref(), run.prompts.as_deref());
    let method = method(run)?;
    let templates = templates(run)?;
    let (entities, dataset_name) = match (&args.entities, args.wordnet) {
        (Some(file), _) => (
            datasets::read_entities(file)?,
            file.file_stem().map_or_else(
                || "people".to_string(),
                |s| s.to_string_lossy().into_owned(),
            ),
        ),
        (None, Some(count)) => (
            datasets::entities_from_knowledge(&args.knowledge, count)?,
            "WordNet people".to_string(),
        ),
        (None, None) => bail!("give --entities FILE or --wordnet N"),
    };
    let mut entities = entities;
    if let Some(limit) = run.limit {
        entities.truncate(limit);
    }
    let location = match &args.index_dir {
        Some(dir) => IndexLocation::Dir(dir.clone()),
        None => IndexLocation::BesideSource,
    };
    let index = KnowledgeIndex::open(&args.knowledge, location)
        .with_context(|| format!("opening the search index of {}", args.knowledge.display()))?;
    let (policy_source, model_label, generation) = policy_source(&args.policy, run)?;
    let (decomposer_kind, decomposer_source) = role_choice(
        "decomposer",
        args.decomposer.as_deref(),
        &["lexical"],
        "lexical",
        args.decomposer_model.as_ref(),
    )?;
    let confidence_source = config_or_dir(args.confidence.as_ref(), args.confidence_model.as_ref());
    let checker_source = config_or_dir(
        args.checker.checker.as_ref(),
        args.checker.checker_model.as_ref(),
    )
    .context("give --checker CONFIG or --checker-model DIR")?;

    let mut models = Models::new(run)?;
    let policy = models.client(&policy_source)?;
    let summarizer_client = summarizer_client(run, &mut models)?;
    let summarizer_settings = summarizer_settings(run);
    let decomposer_client = decomposer_source
        .as_ref()
        .map(|source| models.client(source))
        .transpose()?;
    let confidence_client = confidence_source
        .as_ref()
        .map(|source| models.client(source))
        .transpose()?;
    let checker_client = models.client(&checker_source)?;

    let decomposer: Box<dyn Decomposer + '_> = match (decomposer_kind.as_str(), &decomposer_client)
    {
        ("lexical", _) => Box::new(LexicalDecomposer::default()),
        (_, Some(client)) => Box::new(LlmDecomposer {
            llm: client,
            templates: &templates,
            settings: teacher(run),
        }),
        _ => unreachable!("an LLM decomposer has its model"),
    };
    let bars = StageBars::default();
    let progress = |event| bars.report(event);
    let mut extra = extra(run, &policy_source);
    extra.insert(
        "knowledge".into(),
        serde_json::json!(args.knowledge.display().to_string()),
    );
    let evaluation = BioEvaluation {
        policy: Policy {
            llm: &policy,
            method: &method,
            settings: &generation,
            templates: &templates,
            summarizer: summarizer_client.as_ref().map(|llm| Summarizer {
                llm,
                settings: &summarizer_settings,
            }),
        },
        decomposer: decomposer.as_ref(),
        confidence: ClaimConfidence {
            lexical: LexicalReader::default(),
            llm: confidence_client.as_ref().map(|c| c as &dyn Llm),
            templates: &templates,
            settings: teacher(run),
        },
        checker: FactChecker {
            llm: &checker_client,
            templates: &templates,
            settings: teacher(run),
            index: &index,
            passages: args.passages,
            source_label: args.knowledge.display().to_string(),
        },
        dataset_name: args.dataset_name.clone().unwrap_or(dataset_name),
        model_label,
        extra,
        options: run_options(run, ReportConfig::claims()),
        progress: &progress,
    };
    let mut inputs: Vec<&Path> = vec![args.knowledge.as_path()];
    inputs.extend(args.entities.as_deref());
    let outcome = evaluation
        .run(&run.out, &entities, &inputs)
        .with_context(|| format!("evaluating in {}", run.out.display()))?;
    print_outcome(&run.out, &outcome, &models);
    Ok(())
}
