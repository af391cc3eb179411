//! `lincal ppo` end to end on tiny random models made in the test.

use lincal_model::Tokenizer;
use lincal_model::testing::{random_model, tiny_llama, tiny_neox, write_tokenizer};
use lincal_train::{HeadInit, RewardModel};
use std::path::{Path, PathBuf};

mod common;

use common::{lincal, read_jsonl};

/// Policy (with "[PAD]"), reward model and ExtractAnswers model directories under `root`.
fn models(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let make = |name: &str| {
        let path = root.join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let (policy, reward, extractor) = (make("policy"), make("reward_model"), make("extractor"));
    write_tokenizer(&policy, 64);
    let mut tokenizer = Tokenizer::from_dir(&policy).unwrap();
    tokenizer.add_special_token("pad_token", "[PAD]");
    tokenizer.save(&policy).unwrap();
    let mut model = random_model(tiny_llama(true), 1);
    model.resize_token_embeddings(65).unwrap();
    model.save(&policy, usize::MAX).unwrap();
    let mut backbone = random_model(tiny_llama(true), 2);
    backbone.resize_token_embeddings(65).unwrap();
    RewardModel::new(backbone, HeadInit::Default { seed: 1 }, "policy")
        .save(&reward)
        .unwrap();
    tokenizer.save(&reward).unwrap();
    random_model(tiny_neox(), 3)
        .save(&extractor, usize::MAX)
        .unwrap();
    write_tokenizer(&extractor, 64);
    (policy, reward, extractor)
}

fn write_prompts(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({
                "query": format!("t{} t{}", 3 + i, 30 + i),
                "question": format!("t{}", 10 + i),
                "answer": format!("t{}", 50 + i),
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// `lincal ppo` of the `lc_ppo` preset on tiny models and prompt files made in `root` (8
/// training, 2 evaluation prompts), on the CPU in f32, 4 rollouts of at most 4 tokens a step,
/// evaluated every step, into `out`, with `settings` added.
fn ppo_command(root: &Path, out: &Path, settings: &[&str]) -> Vec<String> {
    let small = [
        "rollout_batch_size=4",
        "step_batch_size=4",
        "generation_batch_size=4",
        "forward_batch_size=2",
    ];
    rl_command("ppo", "lc_ppo", root, out, &[&small[..], settings].concat())
}

/// `lincal COMMAND --preset PRESET` on tiny models and prompt files made in `root` (8
/// training, 2 evaluation prompts), on the CPU in f32, responses of at most 4 tokens,
/// evaluated every step, into `out`, with `settings` added.
fn rl_command(
    command: &str,
    preset: &str,
    root: &Path,
    out: &Path,
    settings: &[&str],
) -> Vec<String> {
    let (policy, reward, extractor) = models(root);
    let (train, eval) = (root.join("train.jsonl"), root.join("eval.jsonl"));
    write_prompts(&train, 8);
    write_prompts(&eval, 2);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut args: Vec<String> = [
        command,
        "--preset",
        preset,
        "--policy",
        &s(&policy),
        "--reward-model",
        &s(&reward),
        "--answer-extractor",
        &s(&extractor),
        "--train",
        &s(&train),
        "--eval",
        &s(&eval),
        "--out",
        &s(out),
        "--device",
        "cpu",
    ]
    .map(String::from)
    .to_vec();
    let small = [
        "query_len=40",
        "response_len=4",
        "eval_every=1",
        "precision=f32",
        "reward.extractor_max_new_tokens=3",
    ];
    for setting in small.iter().chain(settings) {
        args.extend(["--set".to_string(), setting.to_string()]);
    }
    args
}

#[test]
fn ppo_trains_two_steps_of_decision_based_rl_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let args = ppo_command(dir.path(), &out, &["total_steps=2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Stopped after one step, then resumed to the end.
    let first = lincal(&[args.as_slice(), &["--stop-at-step", "1"]].concat());
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "8 training prompts (0 longer than query_len 40 left out), 2 evaluation prompts"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("stopped after 1 of 2 steps"), "{stderr}");
    let second = lincal(&args);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("finished 2 of 2 steps"), "{stderr}");

    let metrics = read_jsonl(&out.join("metrics.jsonl"));
    let steps: Vec<u64> = metrics
        .iter()
        .filter(|m| m.get("policy_loss").is_some())
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2]);
    assert_eq!(
        metrics
            .iter()
            .filter(|m| m.get("eval_reward").is_some())
            .count(),
        2
    );
    for record in metrics.iter().filter(|m| m.get("policy_loss").is_some()) {
        for name in [
            "reward",
            "log_loss",
            "normalization",
            "kl",
            "entropy",
            "response_length",
            "policy_clipfrac",
            "value_clipfrac",
        ] {
            assert!(
                record[name].as_f64().is_some_and(f64::is_finite),
                "{name} in {record}"
            );
        }
    }
    let rollouts = read_jsonl(&out.join("rollouts/step-00000002.jsonl"));
    assert_eq!(rollouts.len(), 4);
    assert!(rollouts.iter().all(|r| r["query"].is_string()
        && r["response"].is_string()
        && r["details"]["answers"].is_array()));
    assert_eq!(read_jsonl(&out.join("eval/step-00000002.jsonl")).len(), 2);
    // The policy is saved for transformers, with its tokenizer.
    let saved = lincal_model::CausalLm::load(&out.join("final"), tch::Device::Cpu, None).unwrap();
    assert_eq!(saved.config().vocab_size(), 65);
    assert!(out.join("final/tokenizer.json").exists());
}

#[test]
fn ppo_prints_its_config_and_names_bad_input() {
    let run = lincal(&[
        "ppo",
        "--preset",
        "factuality_ppo",
        "--scale",
        "0.1",
        "--set",
        "reference_padding=true",
        "--policy",
        "p",
        "--reward-model",
        "r",
        "--train",
        "t.jsonl",
        "--out",
        "o",
        "--print-config",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let printed: toml::Value = toml::from_str(&String::from_utf8_lossy(&run.stdout)).unwrap();
    assert_eq!(printed["rl_type"].as_str(), Some("factuality"));
    assert_eq!(
        (
            printed["rollout_batch_size"].as_integer(),
            printed["total_steps"].as_integer()
        ),
        (Some(50), Some(150))
    );
    assert_eq!(
        (
            printed["reference_padding"].as_bool(),
            printed["reward"]["reward_offset"].as_float()
        ),
        (Some(true), Some(0.0))
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ppo.toml");
    std::fs::write(
        &config,
        String::from_utf8_lossy(&run.stdout).replace("cliprange = 0.2", "cliprange = \"wide\""),
    )
    .unwrap();
    let bad = lincal(&[
        "ppo",
        "--config",
        config.to_str().unwrap(),
        "--policy",
        "p",
        "--reward-model",
        "r",
        "--train",
        "t.jsonl",
        "--out",
        "o",
        "--print-config",
    ]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success()
            && stderr.contains("ppo.toml: not a valid config")
            && stderr.contains("cliprange"),
        "{stderr}"
    );
    let none = lincal(&[
        "ppo",
        "--policy",
        "p",
        "--reward-model",
        "r",
        "--train",
        "t.jsonl",
        "--out",
        "o",
    ]);
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("give --preset NAME or --config FILE.toml")
    );

    let (policy, reward, _) = models(dir.path());
    let train = dir.path().join("train.jsonl");
    std::fs::write(&train, "{\"query\": \"t3\", \"question\": \"t4\"}\n").unwrap();
    let run = lincal(&[
        "ppo",
        "--preset",
        "lc_ppo",
        "--policy",
        policy.to_str().unwrap(),
        "--reward-model",
        reward.to_str().unwrap(),
        "--train",
        train.to_str().unwrap(),
        "--out",
        dir.path().join("run").to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success()
            && stderr.contains("train.jsonl:1: missing field `answer`")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// PPO on one model for every role; GRPO with another model (a GPT-NeoX) as the answer
/// extractor, which the record names.
#[test]
fn bench_ppo_and_grpo_time_one_step_and_append_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, _, extractor) = models(dir.path());
    let json = dir.path().join("bench.jsonl");
    let (policy, extractor, json_arg) = (
        policy.to_str().unwrap().to_string(),
        extractor.to_str().unwrap().to_string(),
        json.to_str().unwrap().to_string(),
    );
    let shared = [
        "generation_batch_size=4",
        "forward_batch_size=2",
        "query_len=6",
        "response_len=3",
        "precision=f32",
        "reward.extractor_max_new_tokens=3",
    ];
    for (bench, preset, batch) in [
        (
            "ppo",
            "lc_ppo",
            &["rollout_batch_size=4", "step_batch_size=4"][..],
        ),
        (
            "grpo",
            "lc_grpo",
            &[
                "prompts_per_step=2",
                "group_size=2",
                "auto_batch_sizes=true",
            ][..],
        ),
    ] {
        let mut args: Vec<&str> = vec![
            "bench",
            bench,
            "--model",
            &policy,
            "--preset",
            preset,
            "--device",
            "cpu",
            "--warmup",
            "0",
            "--json",
            &json_arg,
            "--label",
            "tiny",
            "--set",
            "step_batch_size=4",
        ];
        for setting in shared.iter().chain(batch) {
            args.extend(["--set", setting]);
        }
        if bench == "grpo" {
            args.extend(["--extractor", &extractor]);
        }
        let output = lincal(&args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.starts_with("4 rollouts of 6 + 3 tokens: ")
                && stdout.contains(&format!(
                    " s per {} step = generation ",
                    bench.to_uppercase()
                )),
            "{stdout}"
        );
    }
    let records = read_jsonl(&json);
    assert_eq!(records.len(), 2);
    for (record, bench) in records.iter().zip(["ppo", "grpo"]) {
        assert_eq!(
            (
                record["bench"].as_str(),
                record["model"].as_str(),
                record["rl_type"].as_str(),
                record["rollouts"].as_u64()
            ),
            (Some(bench), Some("tiny"), Some("DecisionBased"), Some(4))
        );
        for part in [
            "generation_seconds",
            "scoring_seconds",
            "reward_seconds",
            "update_seconds",
            "total_seconds",
        ] {
            assert!(
                record[part].as_f64().is_some_and(|s| s > 0.0),
                "{part} in {record}"
            );
        }
        for part in ["extraction", "forecast"] {
            assert!(
                record["reward_parts_seconds"][part]
                    .as_f64()
                    .is_some_and(|s| s > 0.0),
                "{part} in {record}"
            );
        }
        // Policy and reference are the same weights at the first step: their KL is 0 up to
        // the rounding of separate CPU matrix products (6e-8 seen).
        let kl = record["first_step_kl"].as_f64().unwrap();
        assert!(kl.abs() < 1e-6, "{record}");
    }
    // GRPO trains the policy alone; PPO the value model besides.
    let parameters = |i: usize| records[i]["trainable_parameters"].as_i64().unwrap();
    assert!(parameters(1) < parameters(0), "{records:?}");
    assert_eq!(records[0]["extractor"], serde_json::Value::Null);
    // GRPO chose its batch sizes from free memory: the record gives those it ran at (all 4
    // rollouts in one micro-batch here, where the config's micro-batch is 2).
    assert_eq!(records[0]["batch_plan"], serde_json::Value::Null);
    for size in [
        "generation_batch_size",
        "forward_batch_size",
        "micro_batch_size",
    ] {
        assert_eq!(records[1][size], records[1]["batch_plan"][size], "{size}");
    }
    assert_eq!(records[1]["micro_batch_size"].as_u64(), Some(4));
    assert_eq!(records[1]["extractor"].as_str(), Some(extractor.as_str()));
    // Factuality RL extracts no answers: an extractor is refused, naming the flag.
    let output = lincal(&[
        "bench",
        "ppo",
        "--model",
        &policy,
        "--extractor",
        &extractor,
        "--preset",
        "factuality_ppo",
        "--device",
        "cpu",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("--extractor") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// `lincal select` on a 3-step run with a snapshot every step: the two snapshots with the
/// best validation reward are evaluated (lexical reader, exact judge), the one with the lowest
/// Brier score on that evaluation wins (the first of equals: the better validation reward),
/// and it is exported unchanged.
#[test]
fn select_evaluates_the_best_snapshots_and_exports_the_winner() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args = ppo_command(
        dir.path(),
        &run,
        &[
            "total_steps=3",
            "snapshot_every=1",
            "save_after=1",
            "warmup_steps=0",
            "learning_rate=0.01",
        ],
    );
    let trained = lincal(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    // The validation reward of each step, as training logged it: the top two, best first.
    let mut rewards: Vec<(u64, f64)> = read_jsonl(&run.join("metrics.jsonl"))
        .iter()
        .filter_map(|m| Some((m["step"].as_u64()?, m.get("eval_reward")?.as_f64()?)))
        .collect();
    rewards.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    let top: Vec<u64> = rewards.iter().take(2).map(|(step, _)| *step).collect();

    // Questions whose answers are any word of the tiny vocabulary.
    let questions = dir.path().join("questions.jsonl");
    let words: Vec<String> = (3..64).map(|i| format!("t{i}")).collect();
    let lines: Vec<String> = (0..4)
        .map(|i| {
            serde_json::json!({"id": format!("q{i}"), "question": format!("t{}", 10 + i),
                "answer": words[i], "aliases": words, "source": "test"})
            .to_string()
        })
        .collect();
    std::fs::write(&questions, lines.join("\n") + "\n").unwrap();
    let (selection, export) = (dir.path().join("selection"), dir.path().join("best"));
    let output = lincal(&[
        "select",
        run.to_str().unwrap(),
        "--top",
        "2",
        "--export",
        export.to_str().unwrap(),
        "--dataset",
        questions.to_str().unwrap(),
        "--out",
        selection.to_str().unwrap(),
        "--method",
        "LC RL",
        "--device",
        "cpu",
        "--max-tokens",
        "8",
        "--resamples",
        "20",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let chosen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(selection.join("selection.json")).unwrap())
            .unwrap();
    let candidates = chosen["candidates"].as_array().unwrap();
    let steps: Vec<u64> = candidates
        .iter()
        .map(|c| c["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, top);
    assert_eq!(
        (chosen["snapshots"].as_u64(), chosen["ranked"].as_u64()),
        (Some(3), Some(3))
    );
    // Each candidate's Brier score is its evaluation's; the lowest wins, the first of equals.
    let mut best: Option<(u64, f64)> = None;
    for candidate in candidates {
        let step = candidate["step"].as_u64().unwrap();
        let results: lincal_eval::RunResults = serde_json::from_str(
            &std::fs::read_to_string(selection.join(format!("step-{step:08}/results.json")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            candidate["brier"].as_f64(),
            Some(results.metrics.brier.value)
        );
        if best.is_none_or(|(_, brier)| results.metrics.brier.value < brier) {
            best = Some((step, results.metrics.brier.value));
        }
    }
    let winner = best.unwrap().0;
    assert_eq!(chosen["winner"].as_u64(), Some(winner));
    let snapshot = run.join(format!("snapshots/step-{winner:08}"));
    for file in ["model.safetensors", "tokenizer.json", "config.json"] {
        assert_eq!(
            std::fs::read(export.join(file)).unwrap(),
            std::fs::read(snapshot.join(file)).unwrap(),
            "{file}"
        );
    }
    let md = std::fs::read_to_string(selection.join("selection.md")).unwrap();
    assert!(md.contains(&format!("| **{winner}** (winner) |")), "{md}");
}

/// `lincal grpo` runs the critic-free trainer on the LC reward with the same command line:
/// 2 prompts × 4 responses a step, stopped after one step and resumed to the end, with the
/// Brier scoring rule; the rollouts come in groups and score the Brier term.
#[test]
fn grpo_trains_two_steps_of_decision_based_rl_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let args = rl_command(
        "grpo",
        "lc_grpo",
        dir.path(),
        &out,
        &[
            "total_steps=2",
            "prompts_per_step=2",
            "group_size=4",
            "step_batch_size=8",
            "generation_batch_size=8",
            "forward_batch_size=4",
            "baseline=rloo",
            "reward.scoring_rule=brier",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = lincal(&[args.as_slice(), &["--stop-at-step", "1"]].concat());
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("stopped after 1 of 2 steps"), "{stderr}");
    let second = lincal(&args);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("finished 2 of 2 steps"), "{stderr}");
    let rollouts = read_jsonl(&out.join("rollouts/step-00000002.jsonl"));
    assert_eq!(rollouts.len(), 8);
    assert!(
        rollouts[..4]
            .iter()
            .all(|r| r["query"] == rollouts[0]["query"])
    );
    assert!(rollouts.iter().all(|r| r["terms"]["brier_score"].is_f64()));
    let metrics = read_jsonl(&out.join("metrics.jsonl"));
    assert!(metrics.iter().any(|m| m.get("eval_reward").is_some()));
    let manifest = lincal_data::artifact::Manifest::read(&out).unwrap();
    assert_eq!(manifest.stage, "grpo");
    assert_eq!(manifest.config["baseline"], "rloo");
    lincal_model::CausalLm::load(&out.join("final"), tch::Device::Cpu, None).unwrap();
    // The printed config reads back as a GRPO config.
    let printed = lincal(&[args.as_slice(), &["--print-config"]].concat());
    let config: toml::Value = toml::from_str(&String::from_utf8_lossy(&printed.stdout)).unwrap();
    assert_eq!(config["group_size"].as_integer(), Some(4));
}
