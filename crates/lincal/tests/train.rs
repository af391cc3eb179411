//! `lincal sft`, `lincal reward-model` and `lincal score` end to end on a tiny model.

mod common;

use common::{fails, leftover_temporaries, lincal, lincal_with_file_size_limit, tiny_model_dir};
use std::path::Path;
use std::process::Output;

fn ok(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned() + &stderr
}

fn write(path: &Path, lines: &[String]) -> String {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    path.to_str().unwrap().to_string()
}

/// Small batches and frequent checkpoints so a 4-step run exercises save and resume.
const SMALL: [&str; 10] = [
    "--set",
    "training.batch_size=2",
    "--set",
    "training.micro_batch_size=1",
    "--set",
    "training.eval_batch_size=2",
    "--set",
    "training.save_every=1",
    "--set",
    "training.epochs=2",
];

/// `lincal sft` of the `lc_sft` preset on a tiny model and 4 training examples made in `dir`,
/// one evaluation example, with the [`SMALL`] settings, into `dir/run`.
fn sft_command(dir: &Path) -> (Vec<String>, std::path::PathBuf) {
    let model = tiny_model_dir(dir);
    let train = write(
        &dir.join("train.jsonl"),
        &(0..4)
            .map(|i| {
                format!(
                    "{{\"prompt\": \"t{} t{}\", \"target\": \" t{}\"}}",
                    3 + i,
                    10 + i,
                    20 + i
                )
            })
            .collect::<Vec<_>>(),
    );
    let eval = write(
        &dir.join("eval.jsonl"),
        &["{\"prompt\": \"t7 t8\", \"target\": \" t30\"}".to_string()],
    );
    let out = dir.join("run");
    let mut args: Vec<String> = [
        "sft",
        "--model",
        &model,
        "--out",
        out.to_str().unwrap(),
        "--preset",
        "lc_sft",
        "--train",
        &train,
        "--eval",
        &eval,
        "--device",
        "cpu",
    ]
    .map(String::from)
    .to_vec();
    args.extend(SMALL.map(String::from));
    (args, out)
}

#[test]
fn sft_runs_from_a_preset_stops_and_resumes_to_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    let (args, out) = sft_command(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out_str = out.to_str().unwrap();
    let model = dir.path().join("tiny").to_str().unwrap().to_string();
    let stopped = ok(lincal(
        &[args.as_slice(), &["--stop-at-step", "2"]].concat(),
    ));
    assert!(stopped.contains("stopped after 2 of 4 steps"), "{stopped}");
    assert!(!out.join("final").exists());
    let finished = ok(lincal(&args));
    assert!(finished.contains("finished 4 of 4 steps"), "{finished}");
    // It says where it took up, and (stderr being no terminal here) how it went, as lines.
    assert!(
        finished.contains(&format!(
            "resuming {out_str} from step 2 of 4 (checkpoint {})",
            out.join("checkpoints").join("step-00000002").display()
        )),
        "{finished}"
    );
    assert!(
        finished.contains("step 3/4 ") && finished.contains("step 4/4 "),
        "{finished}"
    );
    // A finished run needs no resume checkpoints: they are removed, and it says so.
    assert!(!out.join("checkpoints").exists());
    assert!(
        finished.contains("removed the resume checkpoints ("),
        "{finished}"
    );
    let trained = lincal_model::CausalLm::load(&out.join("final"), tch::Device::Cpu, None).unwrap();
    lincal_model::Tokenizer::from_dir(&out.join("final"))
        .unwrap()
        .check_model_vocab(trained.config().vocab_size())
        .unwrap();
    // Running again finds the finished run and leaves it as it is.
    let again = ok(lincal(&args));
    assert!(again.contains("finished 4 of 4 steps"), "{again}");
    // The run's manifest is a stage manifest like every stage's: both data files hashed, one
    // resume, finished once final/ was written.
    let manifest = lincal_data::artifact::Manifest::read(&out).unwrap();
    assert_eq!(
        (
            manifest.stage.as_str(),
            manifest.inputs.len(),
            manifest.resumed.len()
        ),
        ("sft", 2, 1)
    );
    assert_eq!(manifest.base_model.as_deref(), Some(Path::new(&model)));
    assert!(manifest.finished.is_some());
}

#[test]
fn a_printed_config_reads_back_and_bad_options_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path());
    let printed = ok(lincal(&[
        "sft",
        "--model",
        &model,
        "--out",
        "unused",
        "--preset",
        "factuality_sft",
        "--train",
        "unused.jsonl",
        "--set",
        "training.learning_rate=0.25",
        "--print-config",
    ]));
    let config = dir.path().join("config.toml");
    std::fs::write(&config, &printed).unwrap();
    let reprinted = ok(lincal(&[
        "sft",
        "--model",
        &model,
        "--out",
        "unused",
        "--config",
        config.to_str().unwrap(),
        "--train",
        "unused.jsonl",
        "--print-config",
    ]));
    assert_eq!(reprinted, printed);
    assert!(printed.contains("learning_rate = 0.25"), "{printed}");
    let bad = lincal(&[
        "sft",
        "--model",
        &model,
        "--out",
        "x",
        "--preset",
        "lc_sft",
        "--set",
        "training.learnin_rate=1",
        "--train",
        "t.jsonl",
        "--print-config",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("learnin_rate"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let no_task = lincal(&[
        "sft",
        "--model",
        &model,
        "--out",
        dir.path().join("r").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--train",
        "reference.csv",
        "--eval",
        "reference.csv",
    ]);
    assert!(
        String::from_utf8_lossy(&no_task.stderr).contains("needs --task"),
        "{}",
        String::from_utf8_lossy(&no_task.stderr)
    );
}

#[test]
fn a_trained_reward_model_scores_texts_like_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path());
    let rows: Vec<String> = [
        ("t5 t6 t7", 0.1),
        ("t8 t9", 0.35),
        ("t10 t11 t12", 0.6),
        ("t14", 0.9),
    ]
    .iter()
    .map(|(t, l)| format!("{{\"prompt\": \"{t}\", \"label\": {l}}}"))
    .collect();
    let train = write(&dir.path().join("labels.jsonl"), &rows);
    let out = dir.path().join("rm");
    let mut args = vec![
        "reward-model",
        "--model",
        &model,
        "--out",
        out.to_str().unwrap(),
        "--preset",
        "forecast_probs",
        "--train",
        &train,
        "--eval",
        &train,
        "--device",
        "cpu",
    ];
    args.extend(SMALL);
    ok(lincal(&args));
    let scored = dir.path().join("scored.jsonl");
    ok(lincal(&[
        "score",
        "--model",
        out.join("final").to_str().unwrap(),
        "--input",
        &train,
        "--output",
        scored.to_str().unwrap(),
        "--device",
        "cpu",
        "--dtype",
        "f32",
    ]));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&scored)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    let rm = lincal_train::RewardModel::load(
        &out.join("final"),
        tch::Device::Cpu,
        Some(tch::Kind::Float),
    )
    .unwrap();
    let tokenizer = lincal_model::Tokenizer::from_dir(&out.join("final")).unwrap();
    let pad = tokenizer.token_id(&tokenizer.pad_token().unwrap()).unwrap();
    let texts: Vec<String> = lines
        .iter()
        .map(|l| l["prompt"].as_str().unwrap().to_string())
        .collect();
    let expected = rm
        .score_texts(
            &tokenizer,
            &texts,
            1024,
            pad,
            lincal_train::BatchLimits::rows(16),
        )
        .unwrap();
    for (line, expected) in lines.iter().zip(expected) {
        assert_eq!(line["score"].as_f64().unwrap() as f32, expected);
        let probability = line["probability"].as_f64().unwrap();
        assert!((probability - lincal_train::sigmoid(f64::from(expected))).abs() < 1e-12);
        assert!(line["label"].is_number(), "input fields are kept");
    }
}

/// `sft` and `reward-model` on the reference's dataset files: `--task` picks the examples
/// (whatever the preset's hyperparameters),
/// `--trivia-qa` joins the questions' text and gold answers; a reader-label file without the
/// join (it holds question ids only) is refused, naming the flag.
#[test]
fn sft_and_reward_model_train_on_reference_files_with_task_and_trivia_qa() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path());
    let files = common::write_reference_files(dir.path());
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let one_epoch = [
        "--set",
        "training.epochs=1",
        "--set",
        "training.batch_size=2",
        "--set",
        "training.micro_batch_size=2",
        "--eval-questions",
        "2",
        "--device",
        "cpu",
    ];
    // Six questions, two held out: two steps of two, four for ForecastProbs (the gold answer
    // and the extracted one per question).
    for (command, task, file, steps) in [
        ("sft", "claude_distill", &files.sft_training, 2),
        ("sft", "extract_answers", &files.reward_model_training, 2),
        (
            "reward-model",
            "forecast_probs",
            &files.reward_model_training,
            4,
        ),
        (
            "reward-model",
            "factuality",
            &files.reward_model_training,
            2,
        ),
    ] {
        let out = dir.path().join(format!("{command}-{task}"));
        let mut args = vec![
            command.to_string(),
            "--model".into(),
            model.clone(),
            "--out".into(),
            path(&out),
            "--preset".into(),
            if command == "sft" {
                "lc_sft"
            } else {
                "forecast_probs"
            }
            .into(),
            "--train".into(),
            path(file),
            "--task".into(),
            task.into(),
            "--trivia-qa".into(),
            path(&files.trivia_qa),
        ];
        args.extend(one_epoch.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(lincal(&args));
        let logged = common::read_jsonl(&out.join("metrics.jsonl"))
            .iter()
            .filter(|record| record.get("loss").is_some())
            .count();
        assert_eq!(logged, steps, "{command} --task {task}");
    }
    fails(
        &[
            "reward-model",
            "--model",
            &model,
            "--out",
            &path(&dir.path().join("no-join")),
            "--preset",
            "forecast_probs",
            "--train",
            &path(&files.reward_model_training),
        ],
        "--trivia-qa",
    );
    // The preset holds out 500 questions, more than the file has: the error names the flag.
    let stderr = fails(
        &[
            "sft",
            "--model",
            &model,
            "--out",
            &path(&dir.path().join("too-few")),
            "--preset",
            "lc_sft",
            "--train",
            &path(&files.sft_training),
        ],
        "cannot hold out 500 question ids for evaluation",
    );
    assert!(
        stderr.contains("set how many with --eval-questions N, or give --eval FILE"),
        "{stderr}"
    );
}

/// An empty training file and an output that cannot be written are reported before the
/// model loads: here the model directory does not even exist, and the error is the other one.
#[test]
fn bad_data_and_an_unwritable_output_fail_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let missing_model = dir.path().join("no-model");
    let empty = write(&dir.path().join("empty.jsonl"), &[]);
    let train = write(
        &dir.path().join("train.jsonl"),
        &["{\"prompt\": \"t3\", \"target\": \" t4\"}".to_string()],
    );
    let sft = |train: &str, out: &Path, expected: &str| {
        common::fails(
            &[
                "sft",
                "--model",
                missing_model.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--preset",
                "lc_sft",
                "--train",
                train,
                "--eval",
                train,
                "--device",
                "cpu",
            ],
            expected,
        )
    };
    let stderr = sft(&empty, &dir.path().join("run"), "the training set is empty");
    assert!(!stderr.contains("no-model"), "{stderr}");
    // A file where the output directory should be.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, "").unwrap();
    let out = blocked.join("run");
    let stderr = sft(&train, &out, out.to_str().unwrap());
    assert!(!stderr.contains("no-model"), "{stderr}");
}

/// A checkpoint write that fails (a 32 KiB file size limit: the tiny model's weights are about
/// 70 KB, as a full disk would fail them) stops the run naming the file, leaves no temporary
/// file or directory behind, and the same command then trains to the end.
#[test]
fn a_full_disk_during_a_checkpoint_leaves_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let (args, out) = sft_command(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = lincal_with_file_size_limit(&args, 32);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains(&out.join("checkpoints").display().to_string())
            && stderr.contains("The disk is full or a file size limit was reached"),
        "{stderr}"
    );
    assert_eq!(leftover_temporaries(&out), Vec::<std::path::PathBuf>::new());
    let finished = ok(lincal(&args));
    assert!(finished.contains("finished 4 of 4 steps"), "{finished}");
    assert_eq!(leftover_temporaries(&out), Vec::<std::path::PathBuf>::new());
}

/// `lincal launch --gpus 1` is the plain command: the same model, bit for bit, and the same
/// losses, from the same data.
#[test]
fn launch_of_one_rank_is_the_plain_trainer_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (args, plain) = sft_command(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(lincal(&args));
    let launched = dir.path().join("launched");
    let mut launch: Vec<&str> = vec!["launch", "--gpus", "1", "--"];
    launch.extend(&args);
    let out = args.iter().position(|a| *a == "--out").unwrap() + 1 + 4;
    launch[out] = launched.to_str().unwrap();
    ok(lincal(&launch));
    let weights = |run: &Path| std::fs::read(run.join("final").join("model.safetensors")).unwrap();
    assert!(
        weights(&plain) == weights(&launched),
        "the final weights differ"
    );
    let losses = |run: &Path| -> Vec<f64> {
        common::read_jsonl(&run.join("metrics.jsonl"))
            .iter()
            .filter_map(|m| m.get("loss").and_then(|l| l.as_f64()))
            .collect()
    };
    assert_eq!(losses(&plain).len(), 4);
    assert_eq!(losses(&plain), losses(&launched));
}

/// What the launcher cannot run is refused before any rank starts, saying why.
#[test]
fn launch_refuses_what_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let (args, out) = sft_command(dir.path());
    let with = |launch: &[&str]| -> Vec<String> {
        launch
            .iter()
            .map(|s| s.to_string())
            .chain(["--".to_string()])
            .chain(args.iter().cloned())
            .collect()
    };
    fn as_str(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    // Each rank runs on its own GPU: a command for the CPU is refused, and without a device
    // flag this build (no CUDA) cannot join ranks.
    fails(
        &as_str(&with(&["launch", "--gpus", "2"])),
        "--device cpu: under `lincal launch` each rank runs on its own GPU",
    );
    let device = args.iter().position(|a| a == "--device").unwrap();
    let on_gpus: Vec<String> = ["launch", "--gpus", "2", "--"]
        .iter()
        .map(|s| s.to_string())
        .chain(args[..device].iter().cloned())
        .chain(args[device + 2..].iter().cloned())
        .collect();
    fails(&as_str(&on_gpus), "this lincal was built without CUDA");
    fails(
        &as_str(&with(&[
            "launch",
            "--gpus",
            "1",
            "--nodes",
            "2",
            "--node-rank",
            "2",
        ])),
        "--node-rank 2 is not below --nodes 2",
    );
    fails(
        &["launch", "--gpus", "2", "--", "generate", "--out", "x"],
        "`generate` runs in one process",
    );
    fails(
        &as_str(&with(&["launch", "--gpus", "0"])),
        "--gpus and --nodes must be at least 1",
    );
    assert!(!out.exists(), "nothing ran");
}
