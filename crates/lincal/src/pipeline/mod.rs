//! `lincal pipeline init|run|status`: the reference pipeline (SPEC 1) as one run.
//!
//! The pipeline is data: [`stages`] turns a [`PipelineConfig`] into a list of stages, each the
//! command line of an existing `lincal` command (so a stage does exactly what that command
//! does, and `lincal pipeline status` can print it for running by hand), and the
//! [`runner`] walks the list, skipping finished stages, resuming interrupted ones and refusing
//! changed ones. Every stage writes its own directory under the pipeline's:
//!
//! ```text
//! questions/        the question source split into sft, reader, ppo, validation, test
//! queries_*/        open-ended queries (query writer)
//! samples/          M base-model paragraphs per SFT query
//! summaries/        the summariser's consensus paragraphs: LC SFT and Factuality SFT targets
//! lc_sft/, factuality_sft/                     SFT runs (final/ is the model)
//! lc_paragraphs/, reader_extract/, reader_forecast/   reader training labels
//! extract_answers/, forecast_probs/            the surrogate reader
//! factuality_paragraphs/, binary_labels/, factuality_rm/
//! lc_ppo/, factuality_ppo/                     PPO runs
//! claude_distill/   Claude Distill SFT, with `claude_distill = true`
//! eval_*/           QA evaluation of every method on the test questions
//! report/           the comparison of the methods
//! ```
//!
//! A teacher role set to `reference` reads its outputs from the reference's dataset files; the
//! stages that would have made them, and those only they read, are not run.

pub mod report;
pub mod runner;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cli::Cli;
use runner::{Stage, StageStatus};

#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Write a pipeline config to edit, from a preset.
    Init {
        #[arg(long, value_enum)]
        preset: Preset,
        /// The config file to write.
        #[arg(long, default_value = "pipeline.toml")]
        out: PathBuf,
        /// The base model directory (Hugging Face layout); default the SmolLM2 that `cargo
        /// xtask demo` converts into $LINCAL_CACHE/models.
        #[arg(long)]
        base_model: Option<PathBuf>,
    },
    /// Run (or resume) every stage of a config into a directory.
    Run {
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Replace the directory of a stage whose settings changed (a stage name, or `all`);
        /// repeatable.
        #[arg(long)]
        force: Vec<String>,
    },
    /// Each stage of a pipeline directory: done, partial, pending or changed, and its command.
    Status {
        dir: PathBuf,
        /// Also print each stage's command line.
        #[arg(long)]
        commands: bool,
    },
}

/// How the base model is prompted for paragraphs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BasePrompt {
    /// The reference's 8-shot prompt of a pretrained model (SPEC 1.2, 1.9); the method "ICL".
    #[default]
    Icl,
    /// The zero-shot paragraph prompt through the model's chat template, for an
    /// instruction-tuned base model; the method "Zero-Shot". A tenth of the 8-shot prompt's
    /// length, which decides the time of the samples and of the base model's evaluation on a
    /// CPU without a prefix cache.
    ZeroShot,
}

impl BasePrompt {
    /// `lincal distill sample --template`.
    fn sample_template(self) -> &'static str {
        match self {
            BasePrompt::Icl => "icl",
            BasePrompt::ZeroShot => "zero-shot",
        }
    }

    /// The base model's method: its name in the report and its `lincal eval qa` flags (it
    /// states no confidence, so every answer counts as certain).
    fn method(self) -> (&'static str, &'static [&'static str]) {
        match self {
            BasePrompt::Icl => ("ICL", &["--method", "ICL 8-Shot"]),
            BasePrompt::ZeroShot => (
                "Zero-Shot",
                &[
                    "--method",
                    "Zero-Shot",
                    "--prompt",
                    "zero-shot",
                    "--states-confidence",
                    "false",
                ],
            ),
        }
    }
}

/// Sizes and teachers of a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// CPU, offline, SmolLM2-135M as base model: minutes, for seeing every stage work.
    Tiny,
    /// One GPU, a small model, offline or API teachers (not run on this project's machines).
    Small,
    /// The reference's sizes (SPEC 1-3): 10k SFT questions, 8 samples, 20k reader questions,
    /// 1,500 PPO steps; API teachers required.
    Paper,
}

/// A pipeline: where the questions come from, the base model, who plays each teacher role and
/// the extra flags of each stage. `lincal pipeline init` writes one to edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub preset: Preset,
    /// The base model (Hugging Face layout): sampled for the summaries and fine-tuned by SFT.
    pub base_model: PathBuf,
    /// How the base model is asked for paragraphs, for the summaries' samples and for its
    /// own evaluation: `icl` (the reference's 8-shot prompt) or `zero-shot`.
    #[serde(default)]
    pub base_prompt: BasePrompt,
    /// auto, cpu, cuda or cuda:N, for every local model.
    pub device: String,
    /// Also train and evaluate Claude Distill (SPEC 3): SFT on a paragraph the summariser
    /// writes itself for each query, so the summariser must be able to write one (a model, an
    /// API or `reference`).
    #[serde(default)]
    pub claude_distill: bool,
    pub questions: QuestionsConfig,
    pub teachers: Teachers,
    /// The reference's published dataset files, for teacher roles set to `"reference"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_data: Option<ReferenceData>,
    /// Extra command-line flags per stage name (after the ones the pipeline sets), e.g.
    /// `lc_sft = ["--set", "training.epochs=2"]`.
    #[serde(default)]
    pub stage_args: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuestionsConfig {
    /// A QA JSONL file, or an offline source name (`lincal data build`), built once.
    pub source: String,
    /// Keep only questions whose text contains this word (case-insensitive): a subset chosen
    /// by a property of the questions, never by a model's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_contains: Option<String>,
    /// `role=N,...` in dealing order: sft, reader, ppo, validation, test.
    pub roles: String,
    pub seed: u64,
}

/// Who plays each teacher role: `offline`, `model:DIR` (a local model) or `api:FILE.toml` (an
/// OpenAI-compatible or Anthropic backend config). The extractor, which reads the answers of
/// free text for the offline summariser, the reader labels and the binary labeller, needs a
/// model: `model:DIR`, `api:FILE.toml`, or `few-shot:DIR`, a small local model asked with the
/// few-shot extraction prompt.
///
/// As the reference's scripts do by default, the summariser, the forecaster and the binary
/// labeller can instead be `reference`: their outputs are read from the reference's dataset
/// files ([`ReferenceData`]) and the stages that would make them do not run. `summarizer =
/// "reference"` trains LC SFT, Factuality SFT and Claude Distill on `sft_training`;
/// `forecaster = "reference"` trains ExtractAnswers and ForecastProbs on the reader labels of
/// `reward_model_training`; `binary_labeler = "reference"` trains the Factuality reward model
/// on its binary labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Teachers {
    pub query_writer: String,
    pub summarizer: String,
    pub extractor: String,
    pub forecaster: String,
    pub binary_labeler: String,
    /// The evaluation's reader: stated (the extractor finds the answers, their confidence is
    /// what the paragraph states), lexical (no model; sees only the gold answer), model:DIR,
    /// or api:FILE.toml.
    pub eval_reader: String,
    /// The evaluation's judge: exact, model:DIR or api:FILE.toml.
    pub eval_judge: String,
}

/// The reference's published dataset (Hugging Face `tatsu-lab/linguistic_calibration`, SPEC 4),
/// downloaded by hand; each file is a .csv or .parquet as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceData {
    /// The `sft_training` file: Claude's summaries (LC SFT), the base model's ICL paragraphs
    /// (Factuality SFT) and Claude's own paragraphs (Claude Distill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft_training: Option<PathBuf>,
    /// The `reward_model_training` file: the reader labels (extracted answers and their
    /// forecasts) and the binary correctness labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_model_training: Option<PathBuf>,
    /// TriviaQA `unfiltered.nocontext` files (JSONL as exported from Hugging Face, or the
    /// original JSON): the dataset files hold question ids only, joined here to the questions
    /// and their gold answers.
    pub trivia_qa: Vec<PathBuf>,
}

impl PipelineConfig {
    pub fn preset(preset: Preset, base_model: PathBuf) -> Self {
        let offline = || "offline".to_string();
        // No model-free reader of free text exists: the base model extracts answers, with the
        // few-shot prompt that a 135M model follows.
        let offline_teachers = Teachers {
            query_writer: offline(),
            summarizer: offline(),
            extractor: format!("few-shot:{}", base_model.display()),
            forecaster: offline(),
            binary_labeler: offline(),
            eval_reader: "stated".into(),
            eval_judge: "exact".into(),
        };
        let (source, roles, teachers) = match preset {
            // Red-Trivia's 259 questions about capitals: well-known places, which SmolLM2-135M
            // answers right 105 times greedily (`lincal generate --chat --temperature 0`). The
            // test role keeps 107, of which the few whose text holds their answer get no query.
            Preset::Tiny => (
                "red-trivia",
                "sft=80,reader=40,ppo=20,validation=12,test=rest",
                offline_teachers.clone(),
            ),
            Preset::Small => (
                "bigbench-qa-wikidata",
                "sft=2000,reader=2000,ppo=4000,validation=500,test=1000",
                offline_teachers.clone(),
            ),
            Preset::Paper => {
                let api = || "api:anthropic.toml".to_string();
                (
                    "bigbench-qa-wikidata",
                    "sft=10000,reader=20000,ppo=40000,validation=1000,test=1000",
                    Teachers {
                        query_writer: api(),
                        summarizer: api(),
                        extractor: api(),
                        forecaster: api(),
                        binary_labeler: api(),
                        eval_reader: api(),
                        eval_judge: api(),
                    },
                )
            }
        };
        let stage_args = match preset {
            Preset::Tiny => tiny_stage_args(),
            Preset::Small => BTreeMap::new(),
            Preset::Paper => BTreeMap::from([(
                "samples".to_string(),
                vec!["--samples".to_string(), "8".to_string()],
            )]),
        };
        PipelineConfig {
            preset,
            base_model,
            base_prompt: if preset == Preset::Tiny {
                BasePrompt::ZeroShot
            } else {
                BasePrompt::Icl
            },
            device: if preset == Preset::Tiny {
                "cpu".into()
            } else {
                "auto".into()
            },
            claude_distill: false,
            questions: QuestionsConfig {
                source: source.into(),
                question_contains: (preset == Preset::Tiny).then(|| "capital".to_string()),
                roles: roles.into(),
                seed: lincal_data::schema::SPLIT_SEED,
            },
            teachers,
            reference_data: None,
            stage_args,
        }
    }

    /// The flags that give a stage the reference file `field` (`reference_data.<field>`) as
    /// training data, with the TriviaQA join; `role` is the teacher role set to `reference`.
    fn reference_flags(&self, role: &str, field: &str) -> Result<Vec<String>> {
        let data = self.reference_data.as_ref();
        let file = data.and_then(|data| match field {
            "sft_training" => data.sft_training.as_ref(),
            _ => data.reward_model_training.as_ref(),
        });
        let Some(file) = file else {
            bail!(
                "teachers.{role} = \"reference\" reads reference_data.{field}: add it, the \
                 path of the reference dataset's `{field}` file (.csv or .parquet), under a \
                 [reference_data] table"
            );
        };
        let trivia_qa = data.map_or(&[][..], |data| &data.trivia_qa[..]);
        if trivia_qa.is_empty() {
            bail!(
                "teachers.{role} = \"reference\": reference_data.trivia_qa is empty; give \
                 TriviaQA's unfiltered.nocontext files, which hold the questions and gold \
                 answers of the dataset's question ids"
            );
        }
        let mut flags = vec!["--train".to_string(), file.display().to_string()];
        for path in trivia_qa {
            flags.extend(["--trivia-qa".to_string(), path.display().to_string()]);
        }
        Ok(flags)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| {
            format!(
                "{}: not a pipeline config (write one with `lincal pipeline init`)",
                path.display()
            )
        })
    }
}

/// The tiny preset's sizes, from this project's 2-core CPU measurements: sampling ~200
/// tokens/s at batch 32, SFT ~190 tokens/s, one PPO step of 16 rollouts ~70 s. A few dozen
/// examples teach a 135M model the summaries' format only at a higher learning rate than the
/// reference's 7B one (5e-6 moves SmolLM2's loss from 2.9 to 2.1 in two epochs).
fn tiny_stage_args() -> BTreeMap<String, Vec<String>> {
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    // Training on CPU: small batches, short inputs, a few held-out questions for eval loss.
    let training = |epochs: &str, learning_rate: &str| {
        args(&[
            "--set",
            &format!("training.epochs={epochs}"),
            "--set",
            &format!("training.learning_rate={learning_rate}"),
            "--set",
            "training.batch_size=8",
            "--set",
            "training.micro_batch_size=8",
            "--set",
            "model_max_length=256",
            "--eval-questions",
            "8",
        ])
    };
    // A few PPO steps: enough to see each part run and log its numbers, not to move the
    // policy. ExtractAnswers replies are short answer lists, so 24 tokens hold them.
    let ppo = args(&[
        "--set",
        "total_steps=3",
        "--set",
        "rollout_batch_size=16",
        "--set",
        "step_batch_size=16",
        "--set",
        "response_len=64",
        "--set",
        "max_eval_prompts=8",
        "--set",
        "reward.extractor_max_new_tokens=24",
    ]);
    // Paragraphs a little longer than the samples (a summary names every answer), decoded 32
    // at a time.
    let paragraphs = args(&["--max-tokens", "64", "--batch-size", "32"]);
    let mut stage_args = BTreeMap::from([
        (
            "samples".to_string(),
            args(&["--samples", "4", "--max-tokens", "48", "--batch-size", "32"]),
        ),
        ("lc_sft".to_string(), training("3", "1e-4")),
        ("factuality_sft".to_string(), training("3", "1e-4")),
        ("claude_distill".to_string(), training("3", "1e-4")),
        ("extract_answers".to_string(), training("2", "1e-4")),
        ("forecast_probs".to_string(), training("2", "5e-5")),
        ("factuality_rm".to_string(), training("2", "5e-5")),
        ("lc_paragraphs".to_string(), paragraphs.clone()),
        ("factuality_paragraphs".to_string(), paragraphs.clone()),
        ("lc_ppo".to_string(), ppo.clone()),
        ("factuality_ppo".to_string(), ppo),
    ]);
    stage_args.extend(EVALUATIONS.map(|e| (e.stage.to_string(), paragraphs.clone())));
    stage_args
}

/// The flags that give a stage its teacher. An offline teacher that reads answers from free
/// text (the agreement summariser, the binary labeller) gets the extractor role as its model.
fn teacher_flags(role: &str, spec: &str, extractor: Option<&str>) -> Result<Vec<String>> {
    if role == "extractor" {
        return extractor_flags(spec, "--teacher-model", "--teacher");
    }
    Ok(match spec.split_once(':') {
        None if spec == "offline" => {
            let mut flags = vec!["--offline".to_string()];
            if let Some(extractor) = extractor {
                flags.extend(extractor_flags(
                    extractor,
                    "--extractor-model",
                    "--extractor",
                )?);
            }
            flags
        }
        Some(("model", dir)) => vec!["--teacher-model".into(), dir.into()],
        Some(("api", file)) => vec!["--teacher".into(), file.into()],
        None if spec == REFERENCE => bail!(
            "teachers.{role} = \"reference\": only the summarizer, the forecaster and the \
             binary_labeler can take their outputs from the reference's dataset files"
        ),
        _ => {
            bail!("teachers.{role} = {spec:?}: use \"offline\", \"model:DIR\" or \"api:FILE.toml\"")
        }
    })
}

/// The flags that name the extractor role's model: `model_flag DIR` for a local model (with
/// the few-shot extraction prompt for `few-shot:DIR`), `api_flag FILE` for a backend.
fn extractor_flags(spec: &str, model_flag: &str, api_flag: &str) -> Result<Vec<String>> {
    Ok(match spec.split_once(':') {
        Some(("model", dir)) => vec![model_flag.into(), dir.into()],
        Some(("few-shot", dir)) => vec![
            model_flag.into(),
            dir.into(),
            "--extraction-prompt".into(),
            "few-shot".into(),
        ],
        Some(("api", file)) => vec![api_flag.into(), file.into()],
        _ => bail!(
            "teachers.extractor = {spec:?}: finding the answers of free text needs a model; use \
             \"model:DIR\", \"few-shot:DIR\" (a small local model) or \"api:FILE.toml\""
        ),
    })
}

/// The teacher choice that reads the role's outputs from the reference's dataset files.
const REFERENCE: &str = "reference";

/// A stage that runs a `lincal` command line.
struct CommandStage {
    name: &'static str,
    inputs: Vec<&'static str>,
    args: Vec<String>,
}

/// The stages of `config` writing under `dir`, as command lines (without the leading
/// `lincal`), and the questions stage's settings.
fn command_stages(config: &PipelineConfig, dir: &Path) -> Result<Vec<CommandStage>> {
    let path = |parts: &[&str]| {
        parts
            .iter()
            .fold(dir.to_path_buf(), |p, part| p.join(part))
            .display()
            .to_string()
    };
    let base = config.base_model.display().to_string();
    let t = &config.teachers;
    let device = ["--device".to_string(), config.device.clone()];
    let mut stages = Vec::new();
    let mut add = |name: &'static str, inputs: Vec<&'static str>, args: Vec<String>| {
        stages.push(CommandStage { name, inputs, args })
    };
    let s = |list: &[&str]| list.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    for (name, role) in [
        ("queries_sft", "sft"),
        ("queries_reader", "reader"),
        ("queries_ppo", "ppo"),
        ("queries_validation", "validation"),
        ("queries_test", "test"),
    ] {
        let mut args = s(&[
            "distill",
            "queries",
            "--questions",
            &path(&["questions", &format!("{role}.jsonl")]),
            "--out",
            &path(&[name]),
        ]);
        args.extend(teacher_flags("query_writer", &t.query_writer, None)?);
        add(name, vec!["questions"], args);
    }
    // A teacher role set to `reference` reads its outputs from the reference's files: the
    // stages that would make them are not run, and the training stages read the files.
    let mut not_run = Vec::new();
    let summaries_from_reference = t.summarizer == REFERENCE;
    if config.claude_distill && t.summarizer == "offline" {
        bail!(
            "claude_distill = true trains on a paragraph the summariser writes itself, which \
             the offline summariser does not: set teachers.summarizer to \"model:DIR\", \
             \"api:FILE.toml\" or \"reference\", or claude_distill = false"
        );
    }
    if summaries_from_reference {
        not_run.extend(["samples", "summaries"]);
    } else {
        let mut args = s(&[
            "distill",
            "sample",
            "--queries",
            &path(&["queries_sft"]),
            "--base-model",
            &base,
            "--template",
            config.base_prompt.sample_template(),
            "--out",
            &path(&["samples"]),
        ]);
        args.extend(device.clone());
        add("samples", vec!["queries_sft"], args);
        let mut args = s(&[
            "distill",
            "summarize",
            "--samples",
            &path(&["samples"]),
            "--out",
            &path(&["summaries"]),
        ]);
        if config.claude_distill {
            args.push("--distill-paragraphs".into());
        }
        args.extend(teacher_flags(
            "summarizer",
            &t.summarizer,
            Some(&t.extractor),
        )?);
        add("summaries", vec!["samples"], args);
    }
    let mut sft_runs = vec![
        ("lc_sft", "lc_sft.jsonl"),
        ("factuality_sft", "factuality_sft.jsonl"),
    ];
    if config.claude_distill {
        sft_runs.push(("claude_distill", "claude_distill.jsonl"));
    } else {
        not_run.extend(["claude_distill", "eval_claude_distill"]);
    }
    for (name, data) in sft_runs {
        let mut args = s(&[
            "sft",
            "--model",
            &base,
            "--out",
            &path(&[name]),
            "--preset",
            name,
        ]);
        let inputs = if summaries_from_reference {
            args.extend(config.reference_flags("summarizer", "sft_training")?);
            vec![]
        } else {
            args.extend(s(&["--train", &path(&["summaries", data])]));
            vec!["summaries"]
        };
        args.extend(device.clone());
        add(name, inputs, args);
    }
    for (name, policy) in [
        ("lc_paragraphs", "lc_sft"),
        ("factuality_paragraphs", "factuality_sft"),
    ] {
        let mut args = s(&[
            "distill",
            "sample",
            "--queries",
            &path(&["queries_reader"]),
            "--base-model",
            &path(&[policy, "final"]),
            "--template",
            "policy",
            "--samples",
            "1",
            "--out",
            &path(&[name]),
        ]);
        args.extend(device.clone());
        add(name, vec!["queries_reader", policy], args);
    }
    let reader_labels_from_reference = t.forecaster == REFERENCE;
    let (extract_data, forecast_data) = if reader_labels_from_reference {
        not_run.extend(["reader_extract", "reader_forecast"]);
        let flags = config.reference_flags("forecaster", "reward_model_training")?;
        ((flags.clone(), vec![]), (flags, vec!["lc_sft"]))
    } else {
        let mut args = s(&[
            "label",
            "extract",
            "--paragraphs",
            &path(&["lc_paragraphs"]),
            "--out",
            &path(&["reader_extract"]),
        ]);
        args.extend(teacher_flags("extractor", &t.extractor, None)?);
        add("reader_extract", vec!["lc_paragraphs"], args);
        let mut args = s(&[
            "label",
            "forecast",
            "--extractions",
            &path(&["reader_extract"]),
            "--out",
            &path(&["reader_forecast"]),
        ]);
        args.extend(teacher_flags("forecaster", &t.forecaster, None)?);
        add("reader_forecast", vec!["reader_extract"], args);
        (
            (
                s(&[
                    "--train",
                    &path(&["reader_extract", "extract_answers.jsonl"]),
                ]),
                vec!["reader_extract"],
            ),
            (
                s(&[
                    "--train",
                    &path(&["reader_forecast", "forecast_probs.jsonl"]),
                ]),
                vec!["lc_sft", "reader_forecast"],
            ),
        )
    };
    let mut args = s(&[
        "sft",
        "--model",
        &base,
        "--out",
        &path(&["extract_answers"]),
        "--preset",
        "extract_answers",
    ]);
    args.extend(extract_data.0);
    args.extend(device.clone());
    add("extract_answers", extract_data.1, args);
    let mut args = s(&[
        "reward-model",
        "--model",
        &path(&["lc_sft", "final"]),
        "--out",
        &path(&["forecast_probs"]),
        "--preset",
        "forecast_probs",
    ]);
    args.extend(forecast_data.0);
    args.extend(device.clone());
    add("forecast_probs", forecast_data.1, args);
    let mut args = s(&[
        "reward-model",
        "--model",
        &path(&["factuality_sft", "final"]),
        "--out",
        &path(&["factuality_rm"]),
        "--preset",
        "factuality",
    ]);
    let mut inputs = vec!["factuality_sft"];
    if t.binary_labeler == REFERENCE {
        not_run.push("binary_labels");
        args.extend(config.reference_flags("binary_labeler", "reward_model_training")?);
    } else {
        let mut label_args = s(&[
            "label",
            "binary",
            "--paragraphs",
            &path(&["factuality_paragraphs"]),
            "--out",
            &path(&["binary_labels"]),
        ]);
        label_args.extend(teacher_flags(
            "binary_labeler",
            &t.binary_labeler,
            Some(&t.extractor),
        )?);
        add("binary_labels", vec!["factuality_paragraphs"], label_args);
        args.extend(s(&[
            "--train",
            &path(&["binary_labels", "binary_correctness.jsonl"]),
        ]));
        inputs.push("binary_labels");
    }
    args.extend(device.clone());
    add("factuality_rm", inputs, args);
    let ppo_prompts = path(&["queries_ppo", "queries.jsonl"]);
    let validation_prompts = path(&["queries_validation", "queries.jsonl"]);
    let mut args = s(&[
        "ppo",
        "--policy",
        &path(&["lc_sft", "final"]),
        "--reward-model",
        &path(&["forecast_probs", "final"]),
        "--answer-extractor",
        &path(&["extract_answers", "final"]),
        "--train",
        &ppo_prompts,
        "--eval",
        &validation_prompts,
        "--out",
        &path(&["lc_ppo"]),
        "--preset",
        "lc_ppo",
    ]);
    args.extend(device.clone());
    add(
        "lc_ppo",
        vec![
            "queries_ppo",
            "queries_validation",
            "lc_sft",
            "forecast_probs",
            "extract_answers",
        ],
        args,
    );
    let mut args = s(&[
        "ppo",
        "--policy",
        &path(&["factuality_sft", "final"]),
        "--reward-model",
        &path(&["factuality_rm", "final"]),
        "--train",
        &ppo_prompts,
        "--eval",
        &validation_prompts,
        "--out",
        &path(&["factuality_ppo"]),
        "--preset",
        "factuality_ppo",
    ]);
    args.extend(device.clone());
    add(
        "factuality_ppo",
        vec![
            "queries_ppo",
            "queries_validation",
            "factuality_sft",
            "factuality_rm",
        ],
        args,
    );
    let test_queries = path(&["queries_test", "queries.jsonl"]);
    let evaluations = evaluations(config);
    for evaluation in &evaluations {
        let model = match evaluation.trained_by {
            None => base.clone(),
            Some(stage) => path(&[stage, "final"]),
        };
        let mut args = s(&[
            "eval",
            "qa",
            "--model",
            &model,
            "--dataset",
            &test_queries,
            "--out",
            &path(&[evaluation.stage]),
        ]);
        match evaluation.trained_by {
            None => args.extend(s(config.base_prompt.method().1)),
            Some(_) => args.extend(s(&["--method", evaluation.method])),
        }
        args.extend(reader_flags(&t.eval_reader, &t.extractor)?);
        args.extend(judge_flags(&t.eval_judge)?);
        args.extend(device.clone());
        let mut inputs = vec!["queries_test"];
        inputs.extend(evaluation.trained_by);
        add(evaluation.stage, inputs, args);
    }
    let mut args = s(&["eval", "compare"]);
    args.extend(evaluations.iter().map(|e| path(&[e.stage])));
    args.extend(s(&["--out", &path(&["report"])]));
    add(
        "report",
        evaluations.iter().map(|e| e.stage).collect(),
        args,
    );
    // Stages whose output no other stage reads: those that fed a teacher stage that the
    // reference's files replace (the SFT queries and samples, the reader paragraphs).
    while let Some(unread) = stages.iter().position(|stage| {
        stage.name != "report"
            && !stages
                .iter()
                .any(|other| other.inputs.contains(&stage.name))
    }) {
        not_run.push(stages.remove(unread).name);
    }
    for stage in &mut stages {
        if let Some(extra) = config.stage_args.get(stage.name) {
            stage.args.extend(extra.iter().cloned());
        }
    }
    if let Some(unknown) = config
        .stage_args
        .keys()
        .find(|k| !stages.iter().any(|s| s.name == k.as_str()) && !not_run.contains(&k.as_str()))
    {
        bail!(
            "stage_args.{unknown}: no such stage; the stages are {}",
            stages.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(stages)
}

/// The evaluation reader's flags; the stated reader finds answers with the extractor role.
fn reader_flags(spec: &str, extractor: &str) -> Result<Vec<String>> {
    Ok(match spec.split_once(':') {
        None if spec == "lexical" => vec!["--reader".into(), "lexical".into()],
        None if spec == "stated" => {
            if extractor.starts_with("api:") {
                bail!(
                    "teachers.eval_reader = \"stated\" finds answers with teachers.extractor, \
                     which must then be a local model (\"model:DIR\" or \"few-shot:DIR\")"
                );
            }
            let mut flags = vec!["--reader".into(), "stated".into()];
            flags.extend(extractor_flags(extractor, "--reader-model", "--reader")?);
            flags
        }
        Some(("model", dir)) => vec![
            "--reader".into(),
            "llm".into(),
            "--reader-model".into(),
            dir.into(),
        ],
        Some(("api", file)) => vec!["--reader".into(), file.into()],
        _ => bail!(
            "teachers.eval_reader = {spec:?}: use \"lexical\", \"stated\", \"model:DIR\" or \
             \"api:FILE.toml\""
        ),
    })
}

fn judge_flags(spec: &str) -> Result<Vec<String>> {
    Ok(match spec.split_once(':') {
        None if spec == "exact" => vec!["--judge".into(), "exact".into()],
        Some(("model", dir)) => vec![
            "--judge".into(),
            "llm".into(),
            "--judge-model".into(),
            dir.into(),
        ],
        Some(("api", file)) => vec!["--judge".into(), file.into()],
        _ => bail!(
            "teachers.eval_judge = {spec:?}: use \"exact\", \"model:DIR\" or \"api:FILE.toml\""
        ),
    })
}

/// Runs one `lincal` command line in this process.
fn run_command(args: &[String]) -> Result<()> {
    let cli =
        Cli::try_parse_from(std::iter::once("lincal".to_string()).chain(args.iter().cloned()))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::cli::run(cli)
}

/// Builds the questions of `config` into `dir` (the source once, then the split).
fn questions_stage(config: &PipelineConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = if Path::new(&config.questions.source).is_file() {
        PathBuf::from(&config.questions.source)
    } else {
        let built = dir.join("source.jsonl");
        if !built.exists() {
            run_command(&[
                "data".into(),
                "build".into(),
                config.questions.source.clone(),
                "--out".into(),
                built.display().to_string(),
            ])?;
        }
        built
    };
    let roles = crate::data::parse_roles(&config.questions.roles)?;
    crate::data::split_questions(
        &file,
        dir,
        &roles,
        config.questions.seed,
        config.questions.question_contains.as_deref(),
    )?;
    Ok(())
}

/// Every stage of `config` under `dir`, in order.
fn stages<'a>(
    config: &'a PipelineConfig,
    dir: &Path,
) -> Result<(Vec<Stage<'a>>, Vec<CommandStage>)> {
    let commands = command_stages(config, dir)?;
    let mut stages = vec![Stage {
        name: "questions",
        inputs: Vec::new(),
        settings: serde_json::to_value(&config.questions)?,
        run: Box::new(move |out| questions_stage(config, out)),
    }];
    for command in &commands {
        let args = command.args.clone();
        // The fingerprint sees paths relative to the pipeline directory, so a moved directory
        // is still the same pipeline.
        let prefix = dir.display().to_string();
        let settings: Vec<String> = args.iter().map(|a| a.replace(&prefix, "$DIR")).collect();
        let pipeline_dir = dir.to_path_buf();
        let run: runner::StageFn = if command.name == "report" {
            Box::new(move |out| {
                run_command(&args)?;
                write_report(&pipeline_dir, out, config)
            })
        } else {
            Box::new(move |_| run_command(&args))
        };
        stages.push(Stage {
            name: command.name,
            inputs: command.inputs.clone(),
            settings: serde_json::json!(settings),
            run,
        });
    }
    Ok((stages, commands))
}

/// One evaluated model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    /// The evaluation stage.
    pub stage: &'static str,
    /// The paper's name of the method.
    pub method: &'static str,
    /// The stage whose `final/` model is evaluated; none for the base model.
    pub trained_by: Option<&'static str>,
}

/// Every evaluation a pipeline can run, the base model first (the constant baseline takes its
/// answers; its name depends on the prompt: [`evaluations`]).
pub const EVALUATIONS: [Evaluation; 6] = [
    Evaluation {
        stage: "eval_base",
        method: "ICL",
        trained_by: None,
    },
    Evaluation {
        stage: "eval_lc_sft",
        method: "LC SFT",
        trained_by: Some("lc_sft"),
    },
    Evaluation {
        stage: "eval_lc_rl",
        method: "LC RL",
        trained_by: Some("lc_ppo"),
    },
    Evaluation {
        stage: "eval_factuality_sft",
        method: "Factuality SFT",
        trained_by: Some("factuality_sft"),
    },
    Evaluation {
        stage: "eval_factuality_rl",
        method: "Factuality RL",
        trained_by: Some("factuality_ppo"),
    },
    Evaluation {
        stage: "eval_claude_distill",
        method: "Claude Distill",
        trained_by: Some("claude_distill"),
    },
];

/// The evaluations `config` runs ([`EVALUATIONS`], Claude Distill only when asked for), with
/// the base model's method named as `base_prompt` prompts it.
pub fn evaluations(config: &PipelineConfig) -> Vec<Evaluation> {
    EVALUATIONS
        .into_iter()
        .filter(|e| config.claude_distill || e.trained_by != Some("claude_distill"))
        .map(|e| Evaluation {
            method: match e.trained_by {
                None => config.base_prompt.method().0,
                Some(_) => e.method,
            },
            ..e
        })
        .collect()
}

/// The report's own files in `report/` (beside `lincal eval compare`'s): `report.json`,
/// `report.md` and the training curves (`pipeline run` prints the table at its end).
fn write_report(dir: &Path, out: &Path, config: &PipelineConfig) -> Result<()> {
    let evaluations: Vec<(&str, &str)> = evaluations(config)
        .iter()
        .map(|e| (e.stage, e.method))
        .collect();
    report::write_pipeline_report(dir, out, &evaluations, &lincal_metrics::ReportConfig::qa())?;
    Ok(())
}

/// The config a pipeline directory was run with (copied there by the first run).
const CONFIG_COPY: &str = "pipeline.toml";

pub fn run(command: PipelineCommand) -> Result<()> {
    match command {
        PipelineCommand::Init {
            preset,
            out,
            base_model,
        } => {
            let base_model = base_model
                .unwrap_or_else(|| crate::lincal_cache().join("models/SmolLM2-135M-Instruct"));
            let config = PipelineConfig::preset(preset, base_model);
            if out.exists() {
                bail!("{} exists; give another --out or remove it", out.display());
            }
            let text = format!(
                "# lincal pipeline config, preset {}; \
                 run it with `lincal pipeline run {} --out DIR`.\n{}",
                format!("{preset:?}").to_lowercase(),
                out.display(),
                toml::to_string_pretty(&config)?
            );
            lincal_model::fsutil::write_atomic(&out, text.as_bytes())?;
            println!("wrote {}", out.display());
            Ok(())
        }
        PipelineCommand::Run {
            config: path,
            out,
            force,
        } => {
            let config = PipelineConfig::read(&path)?;
            let out = std::path::absolute(&out)
                .with_context(|| format!("resolving {}", out.display()))?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            // One run at a time per directory: a second one would rewrite the config copy and
            // pipeline.json under the first (each stage directory also locks itself).
            let lock = lincal_data::lock::OutputLock::dir(&out)?;
            if let Some(warning) = lock.takeover_warning() {
                eprintln!("{warning}");
            }
            let copy = out.join(CONFIG_COPY);
            lincal_model::fsutil::write_atomic(&copy, toml::to_string_pretty(&config)?.as_bytes())?;
            let (stages, _) = stages(&config, &out)?;
            let report = runner::run(&out, &stages, &force, &mut |line| eprintln!("{line}"))?;
            eprintln!(
                "{} stages ran, {} were already done",
                report.ran.len(),
                report.skipped.len()
            );
            // The table, whether the report stage ran now or before.
            let report = out.join("report");
            let methods = report::read_methods(&report.join(report::REPORT_JSON_FILE))?;
            print!("{}", report::metrics_table(&methods));
            println!("{}", report.join(report::REPORT_MD_FILE).display());
            Ok(())
        }
        PipelineCommand::Status { dir, commands } => {
            let config = PipelineConfig::read(&dir.join(CONFIG_COPY))
                .with_context(|| format!("{} holds no pipeline run", dir.display()))?;
            let dir = std::path::absolute(&dir)?;
            let (stages, command_lines) = stages(&config, &dir)?;
            let state = runner::PipelineState::read(&dir)?;
            for (stage, status) in stages.iter().zip(runner::statuses(&dir, &stages)?) {
                let seconds = state
                    .stages
                    .get(stage.name)
                    .map_or(String::new(), |r| format!("  {:.0}s", r.seconds));
                println!(
                    "{:<22} {:<8}{}{seconds}",
                    stage.name,
                    status.as_str(),
                    counts(&dir.join(stage.name), status)
                );
                if commands
                    && let Some(command) = command_lines.iter().find(|c| c.name == stage.name)
                {
                    println!("    lincal {}", command.args.join(" "));
                }
            }
            Ok(())
        }
    }
}

/// What a stage directory's manifest counted, as `  key=value ...`.
fn counts(dir: &Path, status: StageStatus) -> String {
    if status == StageStatus::Pending {
        return String::new();
    }
    match lincal_data::artifact::Manifest::read(dir) {
        Ok(manifest) => manifest
            .counts
            .iter()
            .map(|(k, v)| format!("  {k}={v}"))
            .collect(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_round_trips_through_toml_and_builds_its_stages() {
        for preset in [Preset::Tiny, Preset::Small, Preset::Paper] {
            let config = PipelineConfig::preset(preset, PathBuf::from("/models/base"));
            let text = toml::to_string_pretty(&config).unwrap();
            assert_eq!(toml::from_str::<PipelineConfig>(&text).unwrap(), config);
            let (stages, _) = stages(&config, Path::new("/runs/p")).unwrap();
            assert_eq!(stages.len(), 26, "{preset:?}");
            runner::fingerprints(&stages).unwrap();
        }
    }

    #[test]
    fn every_stage_command_line_parses() {
        let config = PipelineConfig::preset(Preset::Tiny, PathBuf::from("/models/base"));
        for command in command_stages(&config, Path::new("/runs/p")).unwrap() {
            Cli::try_parse_from(
                std::iter::once("lincal".to_string()).chain(command.args.iter().cloned()),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", command.name));
        }
    }

    #[test]
    fn fingerprints_do_not_depend_on_where_the_pipeline_lies_and_bad_teachers_are_named() {
        let config = PipelineConfig::preset(Preset::Tiny, PathBuf::from("/models/base"));
        let (a, _) = stages(&config, Path::new("/runs/one")).unwrap();
        let (b, _) = stages(&config, Path::new("/elsewhere/two")).unwrap();
        assert_eq!(
            runner::fingerprints(&a).unwrap(),
            runner::fingerprints(&b).unwrap()
        );
        let mut bad = config.clone();
        bad.teachers.summarizer = "claude".into();
        let err = command_stages(&bad, Path::new("/runs/p"))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "teachers.summarizer = \"claude\": use \"offline\", \"model:DIR\" or \"api:FILE.toml\""
        );
        let mut bad = config.clone();
        bad.stage_args.insert("lc_stf".into(), vec![]);
        assert!(
            command_stages(&bad, Path::new("/runs/p"))
                .err()
                .unwrap()
                .to_string()
                .starts_with("stage_args.lc_stf: no such stage")
        );
    }

    fn names(stages: &[CommandStage]) -> Vec<&str> {
        stages.iter().map(|s| s.name).collect()
    }

    fn stage<'a>(stages: &'a [CommandStage], name: &str) -> &'a CommandStage {
        stages.iter().find(|s| s.name == name).unwrap()
    }

    /// The value after `flag` in a command line.
    fn flag<'a>(stage: &'a CommandStage, flag: &str) -> &'a str {
        let at = stage.args.iter().position(|a| a == flag).unwrap();
        &stage.args[at + 1]
    }

    #[test]
    fn teachers_set_to_reference_train_on_its_files_and_their_stages_do_not_run() {
        let mut config = PipelineConfig::preset(Preset::Tiny, PathBuf::from("/models/base"));
        config.teachers.summarizer = "reference".into();
        config.teachers.forecaster = "reference".into();
        config.teachers.binary_labeler = "reference".into();
        config.claude_distill = true;
        config.reference_data = Some(ReferenceData {
            sft_training: Some("/ref/sft_training.csv".into()),
            reward_model_training: Some("/ref/reward_model_training.parquet".into()),
            trivia_qa: vec!["/tqa/train.jsonl".into(), "/tqa/validation.jsonl".into()],
        });
        let text = toml::to_string_pretty(&config).unwrap();
        assert_eq!(toml::from_str::<PipelineConfig>(&text).unwrap(), config);
        let stages = command_stages(&config, Path::new("/runs/p")).unwrap();
        // No samples, summaries or labels, and none of the queries and paragraphs they read.
        assert_eq!(
            names(&stages),
            [
                "queries_ppo",
                "queries_validation",
                "queries_test",
                "lc_sft",
                "factuality_sft",
                "claude_distill",
                "extract_answers",
                "forecast_probs",
                "factuality_rm",
                "lc_ppo",
                "factuality_ppo",
                "eval_base",
                "eval_lc_sft",
                "eval_lc_rl",
                "eval_factuality_sft",
                "eval_factuality_rl",
                "eval_claude_distill",
                "report",
            ]
        );
        let join = [
            "--trivia-qa",
            "/tqa/train.jsonl",
            "--trivia-qa",
            "/tqa/validation.jsonl",
        ];
        for (name, file, inputs) in [
            ("lc_sft", "/ref/sft_training.csv", vec![]),
            ("factuality_sft", "/ref/sft_training.csv", vec![]),
            ("claude_distill", "/ref/sft_training.csv", vec![]),
            (
                "extract_answers",
                "/ref/reward_model_training.parquet",
                vec![],
            ),
            (
                "forecast_probs",
                "/ref/reward_model_training.parquet",
                vec!["lc_sft"],
            ),
            (
                "factuality_rm",
                "/ref/reward_model_training.parquet",
                vec!["factuality_sft"],
            ),
        ] {
            let stage = stage(&stages, name);
            assert_eq!(flag(stage, "--train"), file, "{name}");
            assert_eq!(flag(stage, "--preset"), name.replace("_rm", ""), "{name}");
            assert!(stage.args.windows(4).any(|w| w == join), "{name}");
            assert_eq!(stage.inputs, inputs, "{name}");
        }
        let eval = stage(&stages, "eval_claude_distill");
        assert_eq!(flag(eval, "--method"), "Claude Distill");
        assert_eq!(flag(eval, "--model"), "/runs/p/claude_distill/final");
        assert_eq!(stage(&stages, "report").inputs.len(), 6);
        for command in &stages {
            Cli::try_parse_from(
                std::iter::once("lincal".to_string()).chain(command.args.iter().cloned()),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", command.name));
        }
        // The tiny preset's flags for the stages that no longer run are not typos.
        assert!(config.stage_args.contains_key("samples"));
    }

    #[test]
    fn claude_distill_asks_the_summariser_for_paragraphs_and_evaluates_them() {
        let mut config = PipelineConfig::preset(Preset::Tiny, PathBuf::from("/models/base"));
        config.claude_distill = true;
        let err = command_stages(&config, Path::new("/runs/p"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("claude_distill = true trains on a paragraph the summariser writes"),
            "{err}"
        );
        config.teachers.summarizer = "api:anthropic.toml".into();
        let stages = command_stages(&config, Path::new("/runs/p")).unwrap();
        assert_eq!(stages.len(), 27);
        assert!(
            stage(&stages, "summaries")
                .args
                .contains(&"--distill-paragraphs".to_string())
        );
        let distill = stage(&stages, "claude_distill");
        assert_eq!(
            flag(distill, "--train"),
            "/runs/p/summaries/claude_distill.jsonl"
        );
        assert_eq!(distill.inputs, ["summaries"]);
        assert_eq!(
            evaluations(&config).last().unwrap().method,
            "Claude Distill"
        );
        config.claude_distill = false;
        assert_eq!(
            evaluations(&config)
                .iter()
                .map(|e| e.method)
                .collect::<Vec<_>>(),
            [
                "Zero-Shot",
                "LC SFT",
                "LC RL",
                "Factuality SFT",
                "Factuality RL"
            ]
        );
    }

    #[test]
    fn a_reference_teacher_without_its_file_or_role_is_named() {
        let config = PipelineConfig::preset(Preset::Tiny, PathBuf::from("/models/base"));
        let error = |edit: &dyn Fn(&mut PipelineConfig)| {
            let mut config = config.clone();
            edit(&mut config);
            command_stages(&config, Path::new("/runs/p"))
                .err()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            error(&|c| c.teachers.forecaster = "reference".into()),
            "teachers.forecaster = \"reference\" reads reference_data.reward_model_training: \
             add it, the path of the reference dataset's `reward_model_training` file (.csv or \
             .parquet), under a [reference_data] table"
        );
        assert_eq!(
            error(&|c| {
                c.teachers.summarizer = "reference".into();
                c.reference_data = Some(ReferenceData {
                    sft_training: Some("/ref/sft.csv".into()),
                    reward_model_training: None,
                    trivia_qa: vec![],
                });
            }),
            "teachers.summarizer = \"reference\": reference_data.trivia_qa is empty; give \
             TriviaQA's unfiltered.nocontext files, which hold the questions and gold answers \
             of the dataset's question ids"
        );
        assert_eq!(
            error(&|c| c.teachers.query_writer = "reference".into()),
            "teachers.query_writer = \"reference\": only the summarizer, the forecaster and \
             the binary_labeler can take their outputs from the reference's dataset files"
        );
    }
}
