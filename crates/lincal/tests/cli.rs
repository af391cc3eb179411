//! The real `lincal` binary on tiny models made in the test.

mod common;

use common::{lincal, read_jsonl, tiny_model_dir};
use std::path::Path;

#[test]
fn generate_writes_jsonl_and_resumes_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path());
    let input = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = (0..5)
        .map(|i| format!("{{\"id\": {i}, \"prompt\": \"t{} t{}\"}}", 3 + i, 10 + i))
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = dir.path().join("out.jsonl");
    let args = [
        "generate",
        "--model",
        &model,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--max-new-tokens",
        "6",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--seed",
        "3",
    ];
    let run = lincal(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let full = read_jsonl(&output);
    assert_eq!(full.len(), 5);
    for (i, record) in full.iter().enumerate() {
        assert_eq!(record["id"], i, "input fields are kept, in order");
        assert!(record["completion"].is_string() && record["num_tokens"].as_u64().unwrap() <= 6);
    }
    // A run killed after two batches left 4 finished lines and a torn fifth in OUT.partial;
    // the resumed run keeps the 4 lines and gives exactly the uninterrupted result.
    std::fs::remove_file(&output).unwrap();
    let kept: Vec<String> = full[..4].iter().map(|r| r.to_string()).collect();
    std::fs::write(
        output.with_extension("jsonl.partial"),
        kept.join("\n") + "\n{\"id\": 4, \"comp",
    )
    .unwrap();
    let run = lincal(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(read_jsonl(&output), full);
    assert!(!output.with_extension("jsonl.partial").exists());
}

#[test]
fn bad_input_lines_are_named_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path());
    for (content, expected) in [
        (
            "{\"prompt\": \"t3\"}\nnot json\n",
            "prompts.jsonl:2: not valid JSON",
        ),
        (
            "{\"prompt\": \"t3\"}\n{\"text\": \"t4\"}\n",
            "prompts.jsonl:2: needs a `prompt` string",
        ),
        (
            "[1, 2]\n",
            "prompts.jsonl:1: each line must be a JSON object",
        ),
    ] {
        let input = dir.path().join("prompts.jsonl");
        std::fs::write(&input, content).unwrap();
        let run = lincal(&[
            "generate",
            "--model",
            &model,
            "--input",
            input.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        assert!(!run.status.success());
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn missing_model_and_bad_options_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let run = lincal(&[
        "generate",
        "--model",
        dir.path().to_str().unwrap(),
        "--prompt",
        "hi",
        "--device",
        "cpu",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("config.json") && !stderr.contains("panicked"),
        "{stderr}"
    );
    let model = tiny_model_dir(dir.path());
    let run = lincal(&[
        "generate", "--model", &model, "--prompt", "t3", "--top-p", "1.5", "--device", "cpu",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("top_p must be in (0, 1]"),
        "{stderr}"
    );
    let run = lincal(&[
        "convert",
        "gguf",
        model.as_str(),
        dir.path().join("x").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains(&model) && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn single_prompt_streams_the_greedy_answer() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path());
    let run = lincal(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "t3 t4",
        "--temperature",
        "0",
        "--max-new-tokens",
        "5",
        "--device",
        "cpu",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let streamed = String::from_utf8(run.stdout).unwrap();
    // The same answer through the library.
    let tokenizer = lincal_model::Tokenizer::from_dir(Path::new(&model)).unwrap();
    let loaded = lincal_model::CausalLm::load(Path::new(&model), tch::Device::Cpu, None).unwrap();
    let params = lincal_model::SamplingParams {
        temperature: 0.0,
        max_new_tokens: 5,
        ..Default::default()
    };
    let ids = tokenizer.encode("t3 t4", true).unwrap();
    let expected = lincal_model::generate_text(&loaded, &tokenizer, &[ids], &[42], &params, None)
        .unwrap()
        .remove(0);
    assert_eq!(streamed.trim_end(), expected.text);
}

#[test]
fn eval_metrics_writes_json_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("preds.jsonl");
    // Brier by hand: (0.1² + 0.8² + 0.4² + 0.3²) / 4 = (0.01 + 0.64 + 0.16 + 0.09) / 4 = 0.225.
    std::fs::write(
        &input,
        "{\"confidence\": 0.9, \"correct\": true}\n\
         {\"confidence\": 0.8, \"correct\": false}\n\
         {\"confidence\": 0.6, \"correct\": 1}\n\
         {\"confidence\": 0.3, \"correct\": 0}\n",
    )
    .unwrap();
    let out = dir.path().join("report");
    let run = lincal(&[
        "eval",
        "metrics",
        input.to_str().unwrap(),
        "--bins",
        "2",
        "--resamples",
        "200",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["accuracy"]["value"], 0.5);
    assert!((metrics["brier"]["value"].as_f64().unwrap() - 0.225).abs() < 1e-12);
    for key in ["ece", "ece_width", "mce", "log_loss", "auroc"] {
        assert!(metrics.get(key).is_some(), "{key}");
    }
    assert!(out.join("reliability.png").exists() && out.join("reliability.svg").exists());

    std::fs::write(&input, "{\"confidence\": 1.5, \"correct\": true}\n").unwrap();
    let run = lincal(&["eval", "metrics", input.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("preds.jsonl:1"),
        "{stderr}"
    );
}

#[test]
fn data_split_writes_disjoint_roles_the_same_way_twice() {
    let dir = tempfile::tempdir().unwrap();
    let questions = dir.path().join("qa.jsonl");
    let lines: Vec<String> = (0..30)
        .map(|i| format!("{{\"id\": \"q{i}\", \"question\": \"Q{i}?\", \"answer\": \"A{i}\"}}"))
        .collect();
    std::fs::write(&questions, lines.join("\n") + "\n").unwrap();
    let split = |out: &str| {
        let out = dir.path().join(out);
        let run = lincal(&[
            "data",
            "split",
            questions.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--roles",
            "sft=10,ppo=5,test=rest",
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        ["sft", "ppo", "test"].map(|role| read_jsonl(&out.join(format!("{role}.jsonl"))))
    };
    let first = split("a");
    assert_eq!(first.each_ref().map(Vec::len), [10, 5, 15]);
    let mut ids: Vec<&str> = first
        .iter()
        .flatten()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30);
    // Aliases come out answer-first, as every reader of the format expects.
    assert_eq!(first[0][0]["aliases"][0], first[0][0]["answer"]);
    assert_eq!(split("b"), first);
    let run = lincal(&[
        "data",
        "split",
        questions.to_str().unwrap(),
        "--out",
        dir.path().join("c").to_str().unwrap(),
        "--roles",
        "sft=40",
    ]);
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr)
            .contains("the roles need 40 question ids, but the data has only 30"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn data_split_can_keep_only_questions_that_name_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let questions = dir.path().join("qa.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            let question = if i % 3 == 0 {
                format!("What is the Capital of land {i}?")
            } else {
                format!("Who wrote book {i}?")
            };
            format!("{{\"id\": \"q{i}\", \"question\": \"{question}\", \"answer\": \"A{i}\"}}")
        })
        .collect();
    std::fs::write(&questions, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("split");
    let run = lincal(&[
        "data",
        "split",
        questions.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--roles",
        "sft=1,test=rest",
        "--question-contains",
        "capital",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let kept: Vec<serde_json::Value> = ["sft", "test"]
        .iter()
        .flat_map(|role| read_jsonl(&out.join(format!("{role}.jsonl"))))
        .collect();
    let mut ids: Vec<&str> = kept.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["q0", "q3", "q6", "q9"],
        "case-insensitive, and nothing else"
    );
}

#[test]
fn a_pipeline_directory_in_use_is_refused_naming_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    let init = lincal(&[
        "pipeline",
        "init",
        "--preset",
        "tiny",
        "--out",
        config.to_str().unwrap(),
    ]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    // This test process is alive, so its lock is live.
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let lock = out.join("lincal.lock");
    let holder = format!(
        "{{\"pid\": {}, \"started\": \"2026-12-06T10:00:00Z\"}}\n",
        std::process::id()
    );
    std::fs::write(&lock, &holder).unwrap();
    let run = lincal(&[
        "pipeline",
        "run",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!("is held by process {}", std::process::id()))
            && stderr.contains(&lock.display().to_string()),
        "{stderr}"
    );
    // Nothing was written under the live lock.
    assert!(!out.join("pipeline.toml").exists() && !out.join("pipeline.json").exists());
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), holder);
}

/// `lincal data fetch` and `build` of each offline source that can be downloaded here, into
/// `$LINCAL_ASSETS` (once; later runs find the file and check its sha256): the counts the
/// pinned packages give. bigbench-nq and bigbench-qa-wikidata are left out: their pinned
/// sdist answers HTTP 403 from this network, and their reader is tested on hand-made files.
#[test]
#[ignore = "downloads the offline sources (cargo xtask test sets LINCAL_ASSETS)"]
fn data_fetch_and_build_every_downloadable_source() {
    let assets = std::env::var("LINCAL_ASSETS")
        .expect("set LINCAL_ASSETS to a folder for the offline sources (cargo xtask test sets it)");
    let dir = tempfile::tempdir().unwrap();
    for (source, rows, kept) in [
        ("fanoutqa", 2142, 2125),
        ("red-trivia", 3276, 3271),
        ("wordnet-people", 3318, 3318),
    ] {
        let fetched = lincal(&["data", "fetch", source, "--cache", &assets]);
        assert!(
            fetched.status.success(),
            "{}",
            String::from_utf8_lossy(&fetched.stderr)
        );
        let out = dir.path().join(format!("{source}.jsonl"));
        let built = lincal(&[
            "data",
            "build",
            source,
            "--out",
            out.to_str().unwrap(),
            "--cache",
            &assets,
        ]);
        let said = String::from_utf8_lossy(&built.stdout).into_owned()
            + &String::from_utf8_lossy(&built.stderr);
        assert!(built.status.success(), "{said}");
        assert!(
            said.contains(&format!("{source}: kept {kept} of {rows} rows")),
            "{said}"
        );
        let records = read_jsonl(&out);
        assert_eq!(records.len(), kept, "{source}");
        let fields: &[&str] = if source == "wordnet-people" {
            &["id", "title", "text"]
        } else {
            &["id", "question", "answer", "aliases", "source"]
        };
        for record in &records {
            for field in fields {
                assert!(
                    record.get(field).is_some(),
                    "{source}: {record} has no {field}"
                );
            }
        }
    }
}
