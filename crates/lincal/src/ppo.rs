//! `lincal ppo` and `lincal grpo`: decision-based RL (presets `lc_ppo`, `lc_grpo`) or
//! Factuality RL (`factuality_ppo`, `factuality_grpo`) with PPO or with the critic-free GRPO
//! and RLOO, from a preset or TOML config, on prompts from JSONL or the reference dataset,
//! into a run directory that resumes where it stopped.

use crate::train::{ConfigArgs, RunArgs, print_config};
use anyhow::{Result, bail};
use clap::Args;
use lincal_data::schema::{self, TriviaQa};
use lincal_train::grpo::{GrpoConfig, GrpoTrainer};
use lincal_train::memory::BatchPlan;
use lincal_train::ppo::{PpoConfig, PpoDataReport, PpoModelPaths, PpoPrompt, PpoTrainer};
use lincal_train::{RunOptions, TrainSummary};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct PpoArgs {
    /// The SFT policy to start from (Hugging Face layout, with its tokenizer).
    #[arg(long)]
    policy: PathBuf,
    /// The reward model: ForecastProbs for decision-based RL, the binary-correctness model for
    /// Factuality RL. PPO's value model starts from its backbone.
    #[arg(long)]
    reward_model: PathBuf,
    /// The ExtractAnswers model (decision-based RL).
    #[arg(long)]
    answer_extractor: Option<PathBuf>,
    /// The run directory: metrics, TensorBoard logs, rollouts, evaluations, checkpoints and
    /// `final/` (the policy). An unfinished run there resumes from its newest checkpoint.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    config: ConfigArgs,
    /// Training prompts: JSONL lines `{"query", "question", "answer"}`, or the reference's
    /// `trivia_qa_paragraph_generation` `ppo` split (CSV or Parquet, with --trivia-qa).
    #[arg(long)]
    train: PathBuf,
    /// Validation prompts in the same formats (the reference's `ppo_validation` split);
    /// without them no evaluation runs.
    #[arg(long)]
    eval: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(args: PpoArgs) -> Result<()> {
    let mut config = args
        .config
        .resolve(PpoConfig::preset, |c, scale| c.scaled(scale))?;
    if let Some(dir) = &args.run.prompts {
        config.templates = Some(dir.clone());
    }
    let Some(job) = Job::prepare(&args, &config)? else {
        return Ok(());
    };
    let mut trainer = PpoTrainer::new(
        &job.paths,
        job.device,
        &config,
        &job.train,
        &job.eval,
        &job.options,
    )?;
    job.describe(
        trainer.data_report(),
        trainer.batch_plan(),
        config.query_len,
    );
    job.report(&trainer.train(args.run.stop_at_step)?);
    Ok(())
}

/// `lincal grpo`: the same command line as `lincal ppo`, with GRPO's presets and config.
pub fn grpo(args: PpoArgs) -> Result<()> {
    let mut config = args
        .config
        .resolve(GrpoConfig::preset, |c, scale| c.scaled(scale))?;
    if let Some(dir) = &args.run.prompts {
        config.templates = Some(dir.clone());
    }
    let Some(job) = Job::prepare(&args, &config)? else {
        return Ok(());
    };
    let mut trainer = GrpoTrainer::new(
        &job.paths,
        job.device,
        &config,
        &job.train,
        &job.eval,
        &job.options,
    )?;
    job.describe(
        trainer.data_report(),
        trainer.batch_plan(),
        config.query_len,
    );
    job.report(&trainer.train(args.run.stop_at_step)?);
    Ok(())
}

/// What an RL command needs besides its config: models, device, prompts and run options.
struct Job {
    paths: PpoModelPaths,
    device: tch::Device,
    train: Vec<PpoPrompt>,
    eval: Vec<PpoPrompt>,
    options: RunOptions,
}

impl Job {
    /// Whether this process reports the run: in a data-parallel job rank 0 does, for all.
    fn leads(&self) -> bool {
        self.options.comm.rank() == 0
    }

    /// What the run trains on, and the batch sizes `auto_batch_sizes` chose, from rank 0
    /// only.
    fn describe(&self, data: &PpoDataReport, batch_plan: Option<&BatchPlan>, query_len: usize) {
        if !self.leads() {
            return;
        }
        eprintln!(
            "{} training prompts ({} longer than query_len {query_len} left out), {} evaluation \
             prompts",
            data.train_prompts, data.dropped_long_prompts, data.eval_prompts
        );
        if let Some(plan) = batch_plan {
            eprintln!("auto batch sizes: {plan}");
        }
    }

    /// Reports a finished or stopped run, from rank 0 only.
    fn report(&self, summary: &TrainSummary) {
        if self.leads() {
            report(summary);
        }
    }

    /// None when the command only prints its config.
    fn prepare<C: serde::Serialize>(args: &PpoArgs, config: &C) -> Result<Option<Job>> {
        crate::warn_if_recovered(
            [args.policy.as_path(), args.reward_model.as_path()]
                .into_iter()
                .chain(args.answer_extractor.as_deref()),
            args.run.prompts.as_deref(),
        );
        if args.run.print_config {
            print_config(config)?;
            return Ok(None);
        }
        let train = read_prompts(&args.train, &args.run.trivia_qa)?;
        let eval = match &args.eval {
            Some(path) => read_prompts(path, &args.run.trivia_qa)?,
            None => {
                eprintln!("no --eval prompts: the run will not evaluate");
                Vec::new()
            }
        };
        let mut input_files = vec![args.train.clone()];
        input_files.extend(args.eval.iter().cloned());
        input_files.extend(args.run.trivia_qa.iter().cloned());
        Ok(Some(Job {
            paths: PpoModelPaths {
                policy: args.policy.clone(),
                reward_model: args.reward_model.clone(),
                answer_extractor: args.answer_extractor.clone(),
            },
            device: crate::parse_device(&args.run.device)?,
            train,
            eval,
            options: RunOptions {
                input_files,
                progress: true,
                comm: lincal_train::distributed::from_env()?,
                ..RunOptions::new(&args.out)
            },
        }))
    }
}

/// JSONL prompts, or a reference `*_paragraph_generation` split joined with TriviaQA.
fn read_prompts(path: &Path, trivia_qa: &[PathBuf]) -> Result<Vec<PpoPrompt>> {
    if path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json")
    {
        return Ok(PpoPrompt::read_jsonl(path)?);
    }
    if trivia_qa.is_empty() {
        bail!(
            "{}: reference prompts need their questions and answers: \
             give --trivia-qa with TriviaQA's unfiltered.nocontext files",
            path.display()
        );
    }
    let joined = TriviaQa::load(trivia_qa)?.join(schema::read_paragraph_generation(path)?);
    if !joined.unmatched.is_empty() {
        eprintln!("{}: {joined}; those rows are left out", path.display());
    }
    Ok(PpoPrompt::from_joined(joined.rows))
}

fn report(summary: &TrainSummary) {
    let pick = |metrics: &[(String, f64)]| {
        metrics
            .iter()
            .filter(|(name, _)| ["reward", "kl", "eval_reward", "eval_kl"].contains(&name.as_str()))
            .map(|(name, value)| format!("{name} {value:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let last = if summary.last_step.is_empty() {
        String::new()
    } else {
        format!(", last step: {}", pick(&summary.last_step))
    };
    let eval = if summary.eval.is_empty() {
        String::new()
    } else {
        format!(", evaluation: {}", pick(&summary.eval))
    };
    match &summary.final_dir {
        Some(dir) => eprintln!(
            "finished {} of {} steps{last}{eval}; wrote the policy to {}",
            summary.steps,
            summary.total_steps,
            dir.display()
        ),
        None => eprintln!(
            "stopped after {} of {} steps{last}{eval}; run the same command again to resume",
            summary.steps, summary.total_steps
        ),
    }
}
