//! `lincal pipeline run` as a user runs it: killed in the middle, then run again to the end
//! without redoing the stages that had finished. A tiny random model plays the base model and
//! the extractor, so every stage runs its real code in seconds (its text is garbage, which
//! every stage still turns into its outputs: the few-shot extraction takes any first line).

mod common;

use common::{QUESTIONS, lincal, tiny_model_dir, write_questions, write_reference_files};
use lincal::pipeline::runner::PipelineState;
use lincal_data::artifact::Manifest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// A TOML value.
fn toml_value(value: impl Into<toml::Value>) -> String {
    value.into().to_string()
}

/// The teachers of [`write_pipeline`]'s config: offline, the tiny model extracting answers.
const OFFLINE_TEACHERS: &str = r#"query_writer = "offline"
summarizer = "offline"
extractor = "few-shot:MODEL"
forecaster = "offline"
binary_labeler = "offline"
eval_reader = "stated"
eval_judge = "exact"
"#;

/// The questions, a tiny model and a pipeline config using them in `dir`, every stage shrunk
/// to a few items, tokens and steps, with `teachers` (MODEL stands for the tiny model) and
/// `extra` TOML after them; returns the config's path.
fn write_pipeline(dir: &Path, teachers: &str, extra: &str) -> PathBuf {
    let model = tiny_model_dir(dir);
    // The offline query writer fails a question that contains its own answer.
    assert!(
        QUESTIONS.iter().all(|(question, answer)| {
            !question.to_lowercase().contains(&answer.to_lowercase())
        })
    );
    let questions = write_questions(dir, QUESTIONS.len());
    let set = |settings: &[&str]| -> Vec<String> {
        settings
            .iter()
            .flat_map(|s| ["--set".to_string(), s.to_string()])
            .collect()
    };
    let args = |list: &[&str]| -> Vec<String> { list.iter().map(|s| s.to_string()).collect() };
    let mut trainer = args(&["--eval-questions", "2"]);
    trainer.extend(set(&[
        "training.epochs=1",
        "training.batch_size=2",
        "training.micro_batch_size=2",
        "model_max_length=256",
    ]));
    // A checkpoint every step, and enough steps that the test can kill PPO between them.
    let ppo = set(&[
        "total_steps=6",
        "rollout_batch_size=2",
        "step_batch_size=2",
        "micro_batch_size=2",
        "generation_batch_size=2",
        "forward_batch_size=2",
        "query_len=128",
        "response_len=8",
        "save_every=1",
        "eval_every=100",
        "reward.model_max_length=256",
        "reward.extractor_max_new_tokens=8",
    ]);
    let teacher = args(&["--max-tokens", "8", "--max-attempts", "2"]);
    let eval = args(&[
        "--max-tokens",
        "8",
        "--max-attempts",
        "2",
        "--resamples",
        "100",
    ]);
    let stage_args = [
        ("samples", args(&["--samples", "2", "--max-tokens", "8"])),
        ("summaries", teacher.clone()),
        ("lc_sft", trainer.clone()),
        ("factuality_sft", trainer.clone()),
        ("claude_distill", trainer.clone()),
        ("lc_paragraphs", args(&["--max-tokens", "8"])),
        ("factuality_paragraphs", args(&["--max-tokens", "8"])),
        ("reader_extract", teacher.clone()),
        ("binary_labels", teacher),
        ("extract_answers", trainer.clone()),
        ("forecast_probs", trainer.clone()),
        ("factuality_rm", trainer),
        ("lc_ppo", ppo.clone()),
        ("factuality_ppo", ppo),
        ("eval_base", eval.clone()),
        ("eval_lc_sft", eval.clone()),
        ("eval_lc_rl", eval.clone()),
        ("eval_factuality_sft", eval.clone()),
        ("eval_factuality_rl", eval.clone()),
        ("eval_claude_distill", eval),
    ];
    let stage_args: String = stage_args
        .into_iter()
        .map(|(stage, args)| format!("{stage} = {}\n", toml_value(args)))
        .collect();
    let config = format!(
        r#"preset = "tiny"
base_model = {model}
base_prompt = "zero-shot"
device = "cpu"

[questions]
source = {questions}
roles = "sft=8,reader=6,ppo=4,validation=2,test=rest"
seed = 1

[teachers]
{teachers}
{extra}

[stage_args]
{stage_args}"#,
        model = toml_value(model.as_str()),
        questions = toml_value(questions.to_str().unwrap()),
        teachers = teachers.replace("MODEL", &model),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A file's content and modification time: a file written again differs in its time.
fn file_state(path: &Path) -> (Vec<u8>, SystemTime) {
    let modified = std::fs::metadata(path).unwrap().modified().unwrap();
    (std::fs::read(path).unwrap(), modified)
}

/// [`file_state`] of every file under `dir`: a stage that ran again rewrites at least its
/// manifest.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            files.insert(path.clone(), file_state(&path));
        }
    }
    files
}

/// Whether the PPO run in `dir` saved a checkpoint; one is written as `step-N.partial` and
/// renamed `step-N` when complete.
fn has_checkpoint(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("checkpoints")).is_ok_and(|mut entries| {
        entries.any(|e| !e.unwrap().file_name().to_str().unwrap().contains('.'))
    })
}

fn succeeds(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "lincal failed:\n{stderr}");
    stderr
}

#[test]
fn a_pipeline_killed_during_ppo_resumes_without_redoing_finished_stages() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_pipeline(dir.path(), OFFLINE_TEACHERS, "");
    let out = dir.path().join("run");
    let args = [
        "pipeline",
        "run",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];

    // 1. Killed (SIGKILL: no cleanup of any kind) once LC PPO has saved a checkpoint.
    let started = Instant::now();
    let killed_log = dir.path().join("killed.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lincal"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&killed_log).unwrap())
        .spawn()
        .unwrap();
    let ppo = out.join("lc_ppo");
    let log = || std::fs::read_to_string(&killed_log).unwrap();
    while !has_checkpoint(&ppo) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the pipeline ended ({status}) before LC PPO saved a checkpoint:\n{}",
                log()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no LC PPO checkpoint after 5 minutes:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id();
    child.kill().unwrap();
    // Reaped, so that its process id no longer runs.
    child.wait().unwrap();
    let killed_after = started.elapsed();
    let state = PipelineState::read(&out).unwrap();
    let (finished, unfinished): (Vec<&String>, Vec<&String>) = state
        .stages
        .keys()
        .partition(|name| state.stages[*name].finished);
    assert_eq!(unfinished, ["lc_ppo"], "killed in LC PPO:\n{}", log());
    assert!(finished.len() >= 10, "{finished:?}");
    let before: BTreeMap<&String, _> = finished
        .iter()
        .map(|name| (*name, snapshot(&out.join(name))))
        .collect();
    let killed_ppo = Manifest::read(&ppo).unwrap();
    assert!(killed_ppo.finished.is_none());
    let first_rollout = ppo.join("rollouts/step-00000001.jsonl");
    let first_rollout_state = file_state(&first_rollout);
    let lock = out.join(lincal_data::lock::LOCK_FILE);
    assert!(
        std::fs::read_to_string(&lock)
            .unwrap()
            .contains(&format!("\"pid\":{pid}")),
        "the killed run left its lock behind"
    );

    // 2. Run again: the stale lock is taken over, finished stages are skipped untouched, LC PPO
    // resumes in its directory and everything after it runs.
    let resumed_at = Instant::now();
    let stderr = succeeds(lincal(&args));
    let resumed_for = resumed_at.elapsed();
    assert!(
        stderr.contains(&format!(
            "warning: took over {} left by process {pid} (since ",
            lock.display()
        )),
        "{stderr}"
    );
    let state = PipelineState::read(&out).unwrap();
    let total = state.stages.len();
    assert!(
        stderr.contains(&format!(
            "{} stages ran, {} were already done",
            total - finished.len(),
            finished.len()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("pipeline: {total} of {total} stages done")),
        "{stderr}"
    );
    assert!(stderr.contains("] lc_ppo  elapsed"), "{stderr}");
    for (name, files) in &before {
        assert!(
            !stderr.contains(&format!("] {name}  elapsed")),
            "{name} ran again:\n{stderr}"
        );
        assert!(
            snapshot(&out.join(name)) == *files,
            "{name}'s directory changed"
        );
    }
    // LC PPO took its run up again from its checkpoint: the same start, one resume, and its
    // first step not done again.
    let ppo_manifest = Manifest::read(&ppo).unwrap();
    assert_eq!(
        (&ppo_manifest.started, ppo_manifest.resumed.len()),
        (&killed_ppo.started, 1)
    );
    assert!(file_state(&first_rollout) == first_rollout_state);
    assert!(state.stages.values().all(|record| record.finished));
    for name in state.stages.keys() {
        if out.join(name).join("manifest.json").exists() {
            let manifest = Manifest::read(&out.join(name)).unwrap();
            assert!(manifest.finished.is_some(), "{name}");
        }
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report/report.json")).unwrap()).unwrap();
    let mut methods: Vec<&str> = report["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    methods.sort_unstable();
    assert_eq!(
        methods,
        [
            "Constant",
            "Factuality RL",
            "Factuality SFT",
            "LC RL",
            "LC SFT",
            "Zero-Shot"
        ]
    );

    // 3. A third run has nothing to do, and changes nothing.
    let all: BTreeMap<&String, _> = state
        .stages
        .keys()
        .map(|name| (name, snapshot(&out.join(name))))
        .collect();
    let again_at = Instant::now();
    let stderr = succeeds(lincal(&args));
    let again_for = again_at.elapsed();
    assert!(
        stderr.contains(&format!("0 stages ran, {total} were already done")),
        "{stderr}"
    );
    for (name, files) in all {
        assert!(
            snapshot(&out.join(name)) == files,
            "{name}'s directory changed"
        );
    }
    let status =
        String::from_utf8(lincal(&["pipeline", "status", out.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(
        status
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("done"))
            .count(),
        total,
        "{status}"
    );
    eprintln!(
        "killed after {:.1}s, resumed in {:.1}s, third run {:.1}s",
        killed_after.as_secs_f64(),
        resumed_for.as_secs_f64(),
        again_for.as_secs_f64()
    );
}

#[test]
fn teachers_set_to_reference_train_every_model_on_the_reference_files() {
    let dir = tempfile::tempdir().unwrap();
    let teachers = OFFLINE_TEACHERS
        .replace("summarizer = \"offline\"", "summarizer = \"reference\"")
        .replace("forecaster = \"offline\"", "forecaster = \"reference\"")
        .replace(
            "binary_labeler = \"offline\"",
            "binary_labeler = \"reference\"",
        );
    let files = write_reference_files(dir.path());
    let reference_data = format!(
        "[reference_data]\nsft_training = {}\nreward_model_training = {}\ntrivia_qa = [{}]\n",
        toml_value(files.sft_training.to_str().unwrap()),
        toml_value(files.reward_model_training.to_str().unwrap()),
        toml_value(files.trivia_qa.to_str().unwrap()),
    );
    let config = write_pipeline(dir.path(), &teachers, &reference_data);
    // `claude_distill` is a top-level key: it goes before the tables.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("claude_distill = true\n{text}")).unwrap();
    let out = dir.path().join("run");
    succeeds(lincal(&[
        "pipeline",
        "run",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));

    // The stages that make what the files hold never ran.
    for stage in [
        "queries_sft",
        "samples",
        "summaries",
        "queries_reader",
        "lc_paragraphs",
        "reader_extract",
        "reader_forecast",
        "factuality_paragraphs",
        "binary_labels",
    ] {
        assert!(!out.join(stage).exists(), "{stage} ran");
    }
    // Each model trained on its file, joined with TriviaQA: six questions, two held out for
    // evaluation, four trained on in batches of two; ForecastProbs has two examples per
    // question (the gold answer and the one extracted answer).
    let reference = dir.path().canonicalize().unwrap();
    for (stage, file, expected_steps) in [
        ("lc_sft", "sft_training.csv", 2),
        ("factuality_sft", "sft_training.csv", 2),
        ("claude_distill", "sft_training.csv", 2),
        ("extract_answers", "reward_model_training.csv", 2),
        ("forecast_probs", "reward_model_training.csv", 4),
        ("factuality_rm", "reward_model_training.csv", 2),
    ] {
        let manifest = Manifest::read(&out.join(stage)).unwrap();
        let inputs: Vec<PathBuf> = manifest
            .inputs
            .iter()
            .map(|input| PathBuf::from(&input.path).canonicalize().unwrap())
            .collect();
        assert_eq!(
            inputs,
            [reference.join(file), reference.join("trivia_qa.jsonl")],
            "{stage}"
        );
        let steps = common::read_jsonl(&out.join(stage).join("metrics.jsonl"))
            .iter()
            .filter(|record| record.get("loss").is_some())
            .count();
        assert_eq!(steps, expected_steps, "{stage}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report/report.json")).unwrap()).unwrap();
    let methods: Vec<&str> = report["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(methods.contains(&"Claude Distill"), "{methods:?}");
}
