//! `lincal sft` and `lincal reward-model`: a preset or TOML config, overrides, data from
//! JSONL or the reference dataset files, and a run directory that resumes where it stopped.

use anyhow::{Context, Result, bail};
use clap::Args;
use lincal_data::prompts::Templates;
use lincal_data::schema::{
    self, HasQuestionId, RewardExample, SftExample, SftTarget, Tally, TriviaQa,
};
use lincal_train::{
    RewardModelConfig, RewardModelTrainer, RunOptions, SftConfig, SftTrainer, TrainSummary,
    with_overrides,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// What every training command shares.
#[derive(Args)]
pub struct TrainArgs {
    /// The model to start from (Hugging Face layout).
    #[arg(long)]
    model: PathBuf,
    /// The run directory: checkpoints, metrics, TensorBoard logs, `final/`. An unfinished
    /// run there resumes from its newest checkpoint.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    config: ConfigArgs,
    /// Training data: JSONL (`{"prompt", "target"}` for SFT, `{"prompt", "label"}` for reward
    /// models) or the reference dataset's CSV/Parquet split for the task.
    #[arg(long)]
    train: PathBuf,
    /// Evaluation data in the same format; without it, question ids are held out of --train.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Question ids held out for evaluation when --eval is not given (SPEC: 500 for SFT, 2000
    /// for reward models).
    #[arg(long)]
    eval_questions: Option<usize>,
    /// Which examples to build from a reference file: lc_sft, factuality_sft, claude_distill,
    /// extract_answers, forecast_probs or factuality. Defaults to the preset's name.
    #[arg(long)]
    task: Option<String>,
    #[command(flatten)]
    run: RunArgs,
}

/// How a training run goes, shared by `sft`, `reward-model` and `ppo`.
#[derive(Args)]
pub struct RunArgs {
    /// TriviaQA `unfiltered.nocontext` files (Parquet or JSON): the question text and gold
    /// answer of each row of a reference dataset file, which holds them only as ids.
    #[arg(long = "trivia-qa")]
    pub trivia_qa: Vec<PathBuf>,
    /// A directory of prompt templates overriding the built-in ones.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print the resolved config as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Stop after this many steps (the run resumes later from its checkpoint).
    #[arg(long)]
    pub stop_at_step: Option<u64>,
}

/// Where a command's config comes from; shared by every training command.
#[derive(Args)]
pub struct ConfigArgs {
    /// A reference script's hyperparameters (SPEC sections 2 and 3; the command's help names
    /// its presets).
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A TOML config (write one with `--print-config` to start from a preset).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `key=value` overrides, e.g. `training.learning_rate=1e-5` (repeatable).
    #[arg(long = "set")]
    pub overrides: Vec<String>,
    /// Shrinks the run (batch sizes, steps or epochs, eval/save intervals) for quick
    /// experiments; in (0, 1].
    #[arg(long)]
    pub scale: Option<f64>,
}

impl ConfigArgs {
    /// The preset or the TOML file, then `--scale`, then the `--set` overrides.
    pub fn resolve<C: Serialize + DeserializeOwned>(
        &self,
        preset: impl Fn(&str) -> lincal_train::Result<C>,
        scaled: impl Fn(C, f64) -> lincal_train::Result<C>,
    ) -> Result<C> {
        let config = match (&self.preset, &self.config) {
            (Some(name), _) => preset(name)?,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("{}: not a valid config", path.display()))?
            }
            (None, None) => bail!("give --preset NAME or --config FILE.toml"),
        };
        let config = match self.scale {
            Some(scale) => scaled(config, scale)?,
            None => config,
        };
        Ok(with_overrides(&config, &self.overrides)?)
    }
}

pub fn sft(args: TrainArgs) -> Result<()> {
    crate::warn_if_recovered([args.model.as_path()], args.run.prompts.as_deref());
    let config = args.config.resolve(SftConfig::preset, |c, scale| {
        Ok(SftConfig {
            training: c.training.scaled(scale)?,
            ..c
        })
    })?;
    if args.run.print_config {
        return print_config(&config);
    }
    let task = args.task.clone().or_else(|| args.config.preset.clone());
    let read = |path: &Path| read_sft(path, task.as_deref(), &args);
    let (train, eval) = train_eval(&args, read, schema::SFT_EVAL_QUESTIONS)?;
    let device = crate::parse_device(&args.run.device)?;
    let options = run_options(&args)?;
    let mut trainer = SftTrainer::new(&args.model, device, &config, &train, &eval, &options)?;
    // In a data-parallel job, rank 0 reports for all.
    let leader = options.comm.rank() == 0;
    let data = trainer.data_report();
    if leader {
        eprintln!(
            "{} training examples in {} rows, {} evaluation examples, {} target tokens; \
             left out because truncation kept no target token: {} training, {} evaluation",
            data.train_examples,
            data.train_rows,
            data.eval_examples,
            data.target_tokens,
            data.dropped_train.len(),
            data.dropped_eval.len()
        );
    }
    let summary = trainer.train(args.run.stop_at_step)?;
    if !leader {
        return Ok(());
    }
    report(summary)
}

pub fn reward_model(args: TrainArgs) -> Result<()> {
    let config = args.config.resolve(RewardModelConfig::preset, |c, scale| {
        Ok(RewardModelConfig {
            training: c.training.scaled(scale)?,
            ..c
        })
    })?;
    if args.run.print_config {
        return print_config(&config);
    }
    let task = args.task.clone().or_else(|| args.config.preset.clone());
    let read = |path: &Path| read_reward(path, task.as_deref(), &args);
    let (train, eval) = train_eval(&args, read, schema::REWARD_MODEL_EVAL_QUESTIONS)?;
    let device = crate::parse_device(&args.run.device)?;
    let options = run_options(&args)?;
    let mut trainer =
        RewardModelTrainer::new(&args.model, device, &config, &train, &eval, &options)?;
    let summary = trainer.train(args.run.stop_at_step)?;
    if options.comm.rank() != 0 {
        return Ok(());
    }
    report(summary)
}

pub fn print_config<C: Serialize>(config: &C) -> Result<()> {
    print!("{}", toml::to_string_pretty(config)?);
    Ok(())
}

/// The run's options; under `lincal launch`, this process's rank of the job.
fn run_options(args: &TrainArgs) -> Result<RunOptions> {
    let mut input_files = vec![args.train.clone()];
    input_files.extend(args.eval.iter().cloned());
    input_files.extend(args.run.trivia_qa.iter().cloned());
    Ok(RunOptions {
        input_files,
        progress: true,
        comm: lincal_train::distributed::from_env()?,
        ..RunOptions::new(&args.out)
    })
}

/// Reads --train and --eval, or splits --train by question id when there is no --eval.
fn train_eval<T: HasQuestionId>(
    args: &TrainArgs,
    read: impl Fn(&Path) -> Result<Vec<T>>,
    default_eval_questions: usize,
) -> Result<(Vec<T>, Vec<T>)> {
    let train = read(&args.train)?;
    match &args.eval {
        Some(eval) => Ok((train, read(eval)?)),
        None => {
            let split = schema::split_by_question_id(
                train,
                args.eval_questions.unwrap_or(default_eval_questions),
                schema::SPLIT_SEED,
            )
            .with_context(|| {
                format!(
                    "holding out evaluation questions from {} (set how many with \
                     --eval-questions N, or give --eval FILE)",
                    args.train.display()
                )
            })?;
            Ok((split.train, split.eval))
        }
    }
}

fn templates(args: &TrainArgs) -> Result<Templates> {
    Ok(match &args.run.prompts {
        Some(dir) => Templates::with_overrides(dir)?,
        None => Templates::builtin()?,
    })
}

fn is_jsonl(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == "jsonl" || e == "json")
}

fn read_sft(path: &Path, task: Option<&str>, args: &TrainArgs) -> Result<Vec<SftExample>> {
    if is_jsonl(path) {
        return Ok(schema::jsonl::read_sft_jsonl(path)?);
    }
    let templates = templates(args)?;
    let (examples, tally) = match task {
        Some("extract_answers") => {
            let rows = joined_reward_rows(path, args)?;
            schema::extract_answers_examples(&rows, &|input| {
                templates.extract_answers_model(input.question, input.paragraph)
            })?
        }
        Some(task) => {
            let target = match task {
                "lc_sft" => SftTarget::LcSft,
                "factuality_sft" => SftTarget::FactualitySft,
                "claude_distill" => SftTarget::ClaudeDistill,
                other => bail!(
                    "--task {other}: an SFT task is lc_sft, factuality_sft, \
                     claude_distill or extract_answers"
                ),
            };
            schema::sft_examples(&schema::read_sft_training(path)?, target, &|query| {
                templates.policy(query)
            })?
        }
        None => bail!(
            "{}: a reference dataset file needs --task (or a preset) to say which \
             examples to build",
            path.display()
        ),
    };
    log_tally(path, &tally);
    Ok(examples)
}

fn read_reward(path: &Path, task: Option<&str>, args: &TrainArgs) -> Result<Vec<RewardExample>> {
    if is_jsonl(path) {
        return Ok(schema::jsonl::read_reward_jsonl(path)?);
    }
    let templates = templates(args)?;
    let rows = joined_reward_rows(path, args)?;
    let (examples, tally) = match task {
        Some("forecast_probs") => schema::forecast_probs_examples(&rows, &|input| {
            templates.forecast_probs_model(input.question, input.paragraph, input.answer)
        })?,
        Some("factuality") => schema::binary_correctness_examples(&rows, &|input| {
            templates.binary_correctness_model(input.question, input.paragraph, input.answer)
        })?,
        Some(other) => bail!("--task {other}: a reward-model task is forecast_probs or factuality"),
        None => bail!(
            "{}: a reference dataset file needs --task (or a preset) to say which \
             examples to build",
            path.display()
        ),
    };
    log_tally(path, &tally);
    Ok(examples)
}

/// `reward_model_training` rows joined with their TriviaQA questions.
fn joined_reward_rows(
    path: &Path,
    args: &TrainArgs,
) -> Result<Vec<schema::WithQuestion<schema::RewardModelTrainingRow>>> {
    if args.run.trivia_qa.is_empty() {
        bail!(
            "{}: the reader tasks need the questions and answers: \
             give --trivia-qa with TriviaQA's unfiltered.nocontext files",
            path.display()
        );
    }
    let trivia = TriviaQa::load(&args.run.trivia_qa)?;
    let joined = trivia.join(schema::read_reward_model_training(path)?);
    if !joined.unmatched.is_empty() {
        eprintln!(
            "{}: {} rows have no TriviaQA question and are left out (first ids: {:?})",
            path.display(),
            joined.unmatched.len(),
            joined.unmatched_ids().iter().take(5).collect::<Vec<_>>()
        );
    }
    Ok(joined.rows)
}

fn log_tally(path: &Path, tally: &Tally) {
    eprintln!("{}: {tally}", path.display());
}

fn report(summary: TrainSummary) -> Result<()> {
    let loss = summary.last("loss").map_or(String::new(), |loss| {
        format!(", last training loss {loss:.4}")
    });
    let eval: Vec<String> = summary
        .eval
        .iter()
        .map(|(name, value)| format!("{name} {value:.4}"))
        .collect();
    let eval = if eval.is_empty() {
        String::new()
    } else {
        format!(", evaluation: {}", eval.join(", "))
    };
    match &summary.final_dir {
        Some(dir) => eprintln!(
            "finished {} of {} steps{loss}{eval}; wrote {}",
            summary.steps,
            summary.total_steps,
            dir.display()
        ),
        None => eprintln!(
            "stopped after {} of {} steps{loss}{eval}; run the same command again to resume",
            summary.steps, summary.total_steps
        ),
    }
    Ok(())
}

/// `lincal score`: a reward model's scores for the texts of a JSONL file.
#[derive(Args)]
pub struct ScoreArgs {
    /// A reward model directory (as `lincal reward-model` writes it).
    #[arg(long)]
    model: PathBuf,
    /// JSONL with a `prompt` (the formatted text) per line; other fields are kept.
    #[arg(long)]
    input: PathBuf,
    /// Defaults to INPUT with `.scores.jsonl`; each line gains `score` (the logit) and
    /// `probability` (its sigmoid).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Texts are truncated on the right to this many tokens.
    #[arg(long, default_value_t = lincal_train::scorer::DEFAULT_MAX_TOKENS)]
    max_len: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[command(flatten)]
    device: crate::DeviceArgs,
}

pub fn score(args: ScoreArgs) -> Result<()> {
    let (device, kind) = args.device.resolve()?;
    let scorer = lincal_train::Scorer::load(
        &args.model,
        device,
        Some(kind),
        args.max_len,
        lincal_train::BatchLimits::rows(args.batch_size),
    )?;
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let mut records = Vec::new();
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || format!("{}:{}", args.input.display(), index + 1);
        let record: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).with_context(|| format!("{}: not a JSON object", at()))?;
        record
            .get("prompt")
            .and_then(|p| p.as_str())
            .with_context(|| format!("{}: needs a `prompt` string", at()))?;
        records.push(record);
    }
    let texts: Vec<String> = records
        .iter()
        .map(|r| r["prompt"].as_str().expect("checked above").to_string())
        .collect();
    let scores = scorer.logits(&texts)?;
    let mut out = String::new();
    for (mut record, score) in records.into_iter().zip(scores) {
        record.insert("score".into(), score.into());
        record.insert(
            "probability".into(),
            lincal_train::sigmoid(f64::from(score)).into(),
        );
        out.push_str(&serde_json::Value::Object(record).to_string());
        out.push('\n');
    }
    let output = args
        .output
        .unwrap_or_else(|| args.input.with_extension("scores.jsonl"));
    lincal_model::fsutil::write_atomic(&output, out.as_bytes())?;
    eprintln!("wrote {} scores to {}", texts.len(), output.display());
    Ok(())
}
