//! `lincal distill queries|sample|summarize` and `lincal label extract|forecast|binary`: the
//! teacher pipelines of `lincal_distill` with a teacher (or base model) from a backend
//! config or a local model directory, or the stage's offline teacher (`--offline`, with an
//! extractor model where it needs one), a response cache in the stage directory, a progress
//! bar over the model's requests and a run summary with token and cost accounting.

use crate::progress::ProgressDisplay;
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use lincal_data::artifact::CACHE_FILE;
use lincal_data::prompts::{ExtractionPrompt, Templates};
use lincal_distill::{
    self as distill, SampleTemplate, Settings, Stage, StageContext, StageOptions, StageReport,
    Teacher,
};
use lincal_llm::{
    Accounting, BackendConfig, ClientOptions, Llm, LlmClient, Progress, ResponseCache,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Subcommand)]
pub enum DistillCommand {
    /// QA questions (JSONL `{id, question, answer, aliases}`, with `category` for Jeopardy
    /// clues) into open-ended queries that do not give the answer away.
    Queries {
        #[arg(long)]
        questions: PathBuf,
        #[command(flatten)]
        teacher: TeacherArgs,
        /// The offline stand-in for an API query writer: the query is the question inside a
        /// fixed request ("Write a short paragraph that answers this question: ..."); a Jeopardy
        /// clue, or a question that contains its answer, fails.
        #[arg(long, group = "TeacherArgs")]
        offline: bool,
        #[command(flatten)]
        stage: StageArgs,
    },
    /// Paragraphs of a base model for every query (8 per query from the 8-shot prompt, cut at
    /// the first blank line), or of a fine-tuned policy with `--template policy`.
    Sample {
        /// A `distill queries` directory.
        #[arg(long)]
        queries: PathBuf,
        #[command(flatten)]
        base: BaseArgs,
        /// Samples per query (the reference's M).
        #[arg(long, default_value_t = 8)]
        samples: usize,
        #[arg(long, value_enum, default_value = "icl")]
        template: TemplateArg,
        #[command(flatten)]
        stage: StageArgs,
    },
    /// The teacher's summary of each query's samples, with confidence statements: writes
    /// sft_training.csv and the LC SFT and Factuality SFT example sets.
    Summarize {
        /// A `distill sample` directory.
        #[arg(long)]
        samples: PathBuf,
        /// Also ask the teacher for its own paragraph per query (the Claude Distill target).
        #[arg(long)]
        distill_paragraphs: bool,
        #[command(flatten)]
        teacher: TeacherArgs,
        /// The offline stand-in for an API summariser, summary by agreement: the extractor
        /// (--extractor or --extractor-model) finds each sample's answer, and the summary states
        /// each answer's share of the samples as its confidence ("I am 60% sure that the answer
        /// is Paris. It may instead be Lyon (40%)."). It never sees the gold answer.
        #[arg(long, group = "TeacherArgs")]
        offline: bool,
        #[command(flatten)]
        extractor: ExtractorArgs,
        #[command(flatten)]
        extraction: ExtractionArgs,
        #[command(flatten)]
        stage: StageArgs,
    },
}

#[derive(Subcommand)]
pub enum LabelCommand {
    /// The answers each paragraph gives to its question: writes extractions.jsonl and the
    /// ExtractAnswers set. There is no offline teacher: reading answers from free text needs a
    /// model.
    Extract {
        /// A `distill summarize` or `distill sample` directory, or a JSONL file of
        /// `{id, question, answer, aliases, paragraph}` (or `completion`) records.
        #[arg(long)]
        paragraphs: PathBuf,
        #[command(flatten)]
        teacher: TeacherArgs,
        #[command(flatten)]
        extraction: ExtractionArgs,
        #[command(flatten)]
        stage: StageArgs,
    },
    /// A probability for the gold answer and every extracted answer (a candidate whose
    /// forecast fails is dropped from its row): writes reward_model_training.csv,
    /// questions.jsonl and the ForecastProbs set.
    Forecast {
        /// A `label extract` directory.
        #[arg(long)]
        extractions: PathBuf,
        #[command(flatten)]
        teacher: TeacherArgs,
        /// The offline stand-in for an API forecaster: the confidence the paragraph itself
        /// states for each candidate (percentages, and hedges through the hedge table).
        #[arg(long, group = "TeacherArgs")]
        offline: bool,
        #[command(flatten)]
        stage: StageArgs,
    },
    /// A 0/1 correctness label per paragraph: writes reward_model_training.csv,
    /// questions.jsonl and the Factuality reward-model set.
    Binary {
        /// As for `label extract` (the Factuality SFT model's paragraphs).
        #[arg(long)]
        paragraphs: PathBuf,
        #[command(flatten)]
        teacher: TeacherArgs,
        /// The offline stand-in for an API labeller: the extractor (--extractor or
        /// --extractor-model) finds the paragraph's answers, and it is correct when each is an
        /// alias of the gold answer after normalisation (exact match).
        #[arg(long, group = "TeacherArgs")]
        offline: bool,
        #[command(flatten)]
        extractor: ExtractorArgs,
        #[command(flatten)]
        extraction: ExtractionArgs,
        #[command(flatten)]
        stage: StageArgs,
    },
}

/// The teacher: a backend config or a local model (or, where a command has one, `--offline`,
/// which joins this group).
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct TeacherArgs {
    /// A backend config (TOML, `lincal_llm::BackendConfig`): an OpenAI-compatible or Anthropic
    /// endpoint.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// A local model directory (Hugging Face layout) run by lincal's engine, through its chat
    /// template.
    #[arg(long)]
    teacher_model: Option<PathBuf>,
}

/// The extractor of an offline teacher that needs one: a backend config or a local model,
/// asked with the teacher extraction prompt.
#[derive(Args)]
#[group(multiple = false)]
pub struct ExtractorArgs {
    /// A backend config (TOML) of the extractor (with --offline).
    #[arg(long)]
    extractor: Option<PathBuf>,
    /// A local model directory (Hugging Face layout) of the extractor (with --offline).
    #[arg(long)]
    extractor_model: Option<PathBuf>,
}

/// How a stage that reads the answers of free text asks for them: of the teacher (`label
/// extract`) or of the offline teacher's extractor.
#[derive(Args)]
pub struct ExtractionArgs {
    /// teacher (the reference's chat prompt with worked examples, for API and instruction
    /// models) or few-shot (a completion of examples answered on one line, which a small local
    /// model such as SmolLM2-135M follows).
    #[arg(long, default_value = "teacher")]
    extraction_prompt: ExtractionPrompt,
}

/// The sampled model: a backend config or a local model.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct BaseArgs {
    /// A backend config (TOML) of a completions endpoint serving the base model.
    #[arg(long)]
    base: Option<PathBuf>,
    /// A local model directory (Hugging Face layout).
    #[arg(long)]
    base_model: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TemplateArg {
    /// The base model's 8-shot prompt.
    Icl,
    /// The prompt of a fine-tuned policy.
    Policy,
    /// The zero-shot paragraph prompt through the model's chat template (an instruction-tuned
    /// base model; far shorter than the 8-shot prompt, so much cheaper on a CPU).
    ZeroShot,
}

/// What every stage command shares. Sampling options default to the reference's values for
/// the stage.
#[derive(Args)]
pub struct StageArgs {
    /// The stage directory. A finished stage there with the same config and inputs is skipped;
    /// an interrupted one resumes.
    #[arg(long)]
    out: PathBuf,
    /// Take only the first N items of the input.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_p: Option<f64>,
    /// Most new tokens per answer.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Calls per request before its item is recorded in failures.jsonl. Changing it resumes
    /// the stage rather than replacing it.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// The largest share of items that may fail for the stage to finish; past it the command
    /// fails and the stage stays unfinished, so that running it again retries the failures.
    #[arg(long, default_value_t = distill::DEFAULT_MAX_FAILURE_SHARE)]
    max_failure_share: f64,
    /// Every request's seed derives from this and its item's id.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A directory of prompt templates overriding the built-in ones (see `lincal prompts export`).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// The response cache (SQLite); default OUT/cache.sqlite, or the backend config's `cache`.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Replace what OUT holds (its response cache is kept, so answered requests cost nothing).
    #[arg(long)]
    force: bool,
    /// Items sent to the model together and committed together.
    #[arg(long, default_value_t = 64)]
    chunk_size: usize,
    /// Device and precision of a local model.
    #[command(flatten)]
    device: crate::DeviceArgs,
    /// Requests a local model decodes together.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
}

impl StageArgs {
    /// The settings of `stage`, whose defaults are those of its offline teacher when `offline`.
    fn settings(&self, stage: Stage, offline: bool) -> Settings {
        let defaults = if offline {
            stage.offline_default_settings()
        } else {
            stage.default_settings()
        };
        Settings {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.or(defaults.top_p),
            max_tokens: self.max_tokens.unwrap_or(defaults.max_tokens),
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            max_failure_share: self.max_failure_share,
            seed: self.seed,
            limit: self.limit,
        }
    }

    fn templates(&self) -> Result<Templates> {
        Ok(match &self.prompts {
            Some(dir) => Templates::with_overrides(dir)?,
            None => Templates::builtin()?,
        })
    }
}

/// Where the model a stage calls comes from (the teacher, or the base model that is sampled).
enum TeacherSource<'a> {
    Config(&'a Path),
    Local(&'a Path),
}

impl<'a> TeacherSource<'a> {
    /// A backend config or a local model directory, one of which clap's argument group requires.
    fn from_flags(config: &'a Option<PathBuf>, dir: &'a Option<PathBuf>) -> Self {
        match (config, dir) {
            (Some(config), _) => TeacherSource::Config(config),
            (None, Some(dir)) => TeacherSource::Local(dir),
            (None, None) => unreachable!("clap requires a backend config or a model directory"),
        }
    }
}

impl TeacherArgs {
    fn source(&self) -> TeacherSource<'_> {
        TeacherSource::from_flags(&self.teacher, &self.teacher_model)
    }
}

impl ExtractorArgs {
    fn source(&self) -> Option<TeacherSource<'_>> {
        (self.extractor.is_some() || self.extractor_model.is_some())
            .then(|| TeacherSource::from_flags(&self.extractor, &self.extractor_model))
    }
}

impl BaseArgs {
    fn source(&self) -> TeacherSource<'_> {
        TeacherSource::from_flags(&self.base, &self.base_model)
    }
}

/// A model client with its cache, counters and a progress bar over its requests.
struct Model {
    client: LlmClient,
    accounting: Arc<Accounting>,
    bar: ProgressDisplay,
}

impl Model {
    fn build(source: TeacherSource, args: &StageArgs) -> Result<Self> {
        let default_cache = args.out.join(CACHE_FILE);
        let client = match source {
            TeacherSource::Config(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let mut config: BackendConfig = toml::from_str(&text)
                    .with_context(|| format!("{}: not a valid backend config", path.display()))?;
                config.cache = args.cache.clone().or(config.cache).or(Some(default_cache));
                config
                    .build()
                    .with_context(|| format!("setting up the backend of {}", path.display()))?
            }
            TeacherSource::Local(dir) => {
                let (device, kind) = args.device.resolve()?;
                let llm = crate::local_llm::LocalLlm::load(dir, device, kind, args.batch_size)
                    .with_context(|| format!("loading the model in {}", dir.display()))?;
                // One worker hands the engine whole batches.
                let options = ClientOptions {
                    concurrency: args.batch_size.max(1),
                    ..ClientOptions::default()
                };
                let cache = ResponseCache::open(args.cache.clone().unwrap_or(default_cache))?;
                LlmClient::new(Arc::new(llm), options).with_cache(Arc::new(cache))
            }
        };
        let accounting = Arc::new(Accounting::new());
        let bar = ProgressDisplay::new(
            args.out.display().to_string(),
            "request",
            0,
            0,
            "{bar:40} {pos}/{len} requests [{elapsed_precise} < {eta_precise}] {msg}",
        );
        let (cached, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let hook_bar = bar.clone();
        let client = client
            .with_accounting(accounting.clone())
            .with_progress(move |event| match event {
                Progress::Queued { requests } => hook_bar.inc_length(requests as u64),
                Progress::Finished { from_cache, ok } => {
                    let cached = cached.fetch_add(u64::from(from_cache), Ordering::Relaxed)
                        + u64::from(from_cache);
                    let failed =
                        failed.fetch_add(u64::from(!ok), Ordering::Relaxed) + u64::from(!ok);
                    hook_bar.set_message(format!("{cached} from cache, {failed} failed calls"));
                    hook_bar.inc(1);
                }
            });
        Ok(Model {
            client,
            accounting,
            bar,
        })
    }
}

/// Who a stage command asks: a model, or the stage's offline teacher with the extractor model
/// it may need.
enum Asked {
    Model(Model),
    Offline(Option<Model>),
}

impl Asked {
    /// The model of `teacher`, or with `offline` the offline teacher and the extractor of
    /// `extractor` where it needs one (`needs_extractor`; the flags are named in the error).
    fn build(
        teacher: &TeacherArgs,
        offline: bool,
        extractor: Option<&ExtractorArgs>,
        stage: Stage,
        args: &StageArgs,
    ) -> Result<Self> {
        let extractor = extractor.and_then(ExtractorArgs::source);
        if !offline {
            if extractor.is_some() {
                anyhow::bail!(
                    "--extractor and --extractor-model give the extractor of the offline teacher: \
                     add --offline, or leave them out"
                );
            }
            return Ok(Asked::Model(Model::build(teacher.source(), args)?));
        }
        match extractor {
            Some(source) => Ok(Asked::Offline(Some(Model::build(source, args)?))),
            None if stage.offline_needs_extractor() => {
                anyhow::bail!(
                    "the offline teacher of the `{}` stage needs an extractor, a model that finds \
                     the answers a text gives: give --extractor CONFIG or --extractor-model DIR",
                    stage.name()
                )
            }
            None => Ok(Asked::Offline(None)),
        }
    }

    /// The model whose requests are counted and shown: the teacher, or the extractor.
    fn model(&self) -> Option<&Model> {
        match self {
            Asked::Model(model) => Some(model),
            Asked::Offline(extractor) => extractor.as_ref(),
        }
    }

    fn context<'a>(
        &'a self,
        templates: &'a Templates,
        extraction: ExtractionPrompt,
        args: &StageArgs,
    ) -> StageContext<'a> {
        let teacher = match self {
            Asked::Model(model) => Teacher::Model(&model.client),
            Asked::Offline(extractor) => Teacher::Offline {
                extractor: extractor.as_ref().map(|model| &model.client as &dyn Llm),
            },
        };
        let options = StageOptions {
            force: args.force,
            chunk_size: args.chunk_size,
            accounting: self.model().map(|model| model.accounting.clone()),
        };
        StageContext {
            teacher,
            templates,
            extraction,
            options,
        }
    }

    /// Ends the progress bar and prints what the stage did.
    fn report(&self, report: &StageReport) {
        if let Some(model) = self.model() {
            model.bar.finish_and_clear();
        }
        print_report(report, self.model().map(|model| model.accounting.as_ref()));
    }
}

fn print_report(report: &StageReport, accounting: Option<&Accounting>) {
    let manifest = &report.manifest;
    let dir = report.dir.display();
    if let Some(holder) = &report.took_over_lock {
        eprintln!(
            "{}",
            holder.takeover_warning(&report.dir.join(lincal_data::lock::LOCK_FILE))
        );
    }
    if report.skipped {
        eprintln!(
            "{dir}: the `{}` stage already finished with this config and these inputs; \
             skipped (use --force to run it again)",
            manifest.stage
        );
        return;
    }
    let count = |name: &str| manifest.counts.get(name).copied().unwrap_or(0);
    let reused = match count("reused") {
        0 => String::new(),
        n => format!(", {n} from the interrupted run"),
    };
    let dropped = match count("dropped_candidates") {
        0 => String::new(),
        n => format!(
            "; {n} candidates dropped from their rows, their forecasts having failed (see \
             dropped_candidates in {dir}/{})",
            Stage::Forecast.output()
        ),
    };
    // Re-asks go to the model as new requests (the next seed), so the usage lines below count
    // them among the requests; this says how many there were.
    let reasked = match count("reasked") {
        0 => String::new(),
        n => format!("; {n} requests asked again after an answer that did not parse"),
    };
    eprintln!(
        "{}: {} of {} items done{reused}; {} failed (see {dir}/failures.jsonl){reasked}{dropped}",
        manifest.stage,
        count("records"),
        count("items"),
        count("failed")
    );
    for (model, usage) in accounting.map(Accounting::by_model).unwrap_or_default() {
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
    eprintln!(
        "wrote {}",
        manifest
            .outputs
            .iter()
            .map(|name| format!("{dir}/{name}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

pub fn run_distill(command: DistillCommand) -> Result<()> {
    match command {
        DistillCommand::Queries {
            questions,
            teacher,
            offline,
            stage,
        } => {
            let templates = stage.templates()?;
            let asked = Asked::build(&teacher, offline, None, Stage::Queries, &stage)?;
            let settings = stage.settings(Stage::Queries, offline);
            let report = distill::make_queries(
                &asked.context(&templates, ExtractionPrompt::default(), &stage),
                &questions,
                &stage.out,
                &settings,
            )?;
            asked.report(&report);
        }
        DistillCommand::Sample {
            queries,
            base,
            samples,
            template,
            stage,
        } => {
            let templates = stage.templates()?;
            let asked = Asked::Model(Model::build(base.source(), &stage)?);
            let template = match template {
                TemplateArg::Icl => SampleTemplate::Icl,
                TemplateArg::Policy => SampleTemplate::Policy,
                TemplateArg::ZeroShot => SampleTemplate::ZeroShot,
            };
            let settings = stage.settings(Stage::Sample, false);
            let report = distill::sample_paragraphs(
                &asked.context(&templates, ExtractionPrompt::default(), &stage),
                &queries,
                &stage.out,
                &settings,
                samples,
                template,
            )?;
            asked.report(&report);
        }
        DistillCommand::Summarize {
            samples,
            distill_paragraphs,
            teacher,
            offline,
            extractor,
            extraction,
            stage,
        } => {
            let templates = stage.templates()?;
            let asked = Asked::build(
                &teacher,
                offline,
                Some(&extractor),
                Stage::Summarize,
                &stage,
            )?;
            let settings = stage.settings(Stage::Summarize, offline);
            let report = distill::summarize_samples(
                &asked.context(&templates, extraction.extraction_prompt, &stage),
                &samples,
                &stage.out,
                &settings,
                distill_paragraphs,
            )?;
            asked.report(&report);
        }
    }
    Ok(())
}

pub fn run_label(command: LabelCommand) -> Result<()> {
    type Labeller = fn(&StageContext, &Path, &Path, &Settings) -> lincal_data::Result<StageReport>;
    let (kind, label, input, teacher, offline, extractor, extraction, stage): (
        Stage,
        Labeller,
        _,
        _,
        _,
        _,
        _,
        _,
    ) = match &command {
        LabelCommand::Extract {
            paragraphs,
            teacher,
            extraction,
            stage,
        } => (
            Stage::Extract,
            distill::extract_answers,
            paragraphs,
            teacher,
            false,
            None,
            extraction.extraction_prompt,
            stage,
        ),
        LabelCommand::Forecast {
            extractions,
            teacher,
            offline,
            stage,
        } => (
            Stage::Forecast,
            distill::forecast_candidates,
            extractions,
            teacher,
            *offline,
            None,
            ExtractionPrompt::default(),
            stage,
        ),
        LabelCommand::Binary {
            paragraphs,
            teacher,
            offline,
            extractor,
            extraction,
            stage,
        } => (
            Stage::Binary,
            distill::judge_correctness,
            paragraphs,
            teacher,
            *offline,
            Some(extractor),
            extraction.extraction_prompt,
            stage,
        ),
    };
    let templates = stage.templates()?;
    let asked = Asked::build(teacher, offline, extractor, kind, stage)?;
    let report = label(
        &asked.context(&templates, extraction, stage),
        input,
        &stage.out,
        &stage.settings(kind, offline),
    )?;
    asked.report(&report);
    Ok(())
}
