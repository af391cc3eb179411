//! `lincal distill`, `lincal label`, `lincal prompts` and `lincal data` as a user runs them: a tiny
//! random model plays every teacher (most of its answers do not parse, which must end in
//! failures.jsonl, not in a crash), and the real SmolLM2-135M-Instruct runs the whole chain
//! (slow: `cargo xtask test` sets LINCAL_SMOLLM2_GGUF and runs the ignored tests).

use lincal_data::artifact::Manifest;
use lincal_data::schema;
use serde_json::json;
use std::path::Path;
use std::process::Command;

mod common;

use common::{lincal, read_jsonl, tiny_model_dir, write_questions};

fn succeeds(args: &[&str]) -> String {
    let run = lincal(args);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "lincal {args:?} failed:\n{stderr}");
    stderr
}

fn fails(args: &[&str]) -> String {
    let run = lincal(args);
    assert!(!run.status.success(), "lincal {args:?} should fail");
    String::from_utf8_lossy(&run.stderr).into_owned()
}

/// A finished stage's manifest, checked for consistent counts and well-formed failures.
fn finished(dir: &Path, stage: &str) -> Manifest {
    let manifest = Manifest::read(dir).unwrap();
    assert_eq!(manifest.stage, stage);
    assert!(manifest.finished.is_some(), "{stage} did not finish");
    let counts = &manifest.counts;
    assert_eq!(
        counts["records"] + counts["failed"],
        counts["items"],
        "{stage}: every item is produced or failed"
    );
    let failures = read_jsonl(&dir.join("failures.jsonl"));
    assert_eq!(failures.len() as u64, counts["failed"]);
    for failure in &failures {
        assert!(
            failure["id"].is_string()
                && failure["reason"].is_string()
                && failure["attempts"].as_u64().unwrap() >= 1,
            "{failure}"
        );
        let unparseable = failure["reason"]
            .as_str()
            .unwrap()
            .contains("no usable answer");
        assert_eq!(failure["raw_text"].is_string(), unparseable, "{failure}");
    }
    assert!(manifest.summary["usage"].is_object());
    manifest
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn the_teacher_chain_runs_on_a_random_model_and_keeps_its_failures() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path());
    let questions = write_questions(dir.path(), 3);
    // Most of a random model's answers fail: every stage is allowed to finish anyway.
    let local = [
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--max-tokens",
        "6",
        "--max-attempts",
        "2",
        "--max-failure-share",
        "1",
    ];
    let stage = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(local.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>| succeeds(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let queries = dir.path().join("queries");
    let stderr = run(stage(&[
        "distill",
        "queries",
        "--questions",
        p(&questions),
        "--out",
        p(&queries),
        "--teacher-model",
        &model,
    ]));
    assert!(stderr.contains("distill-queries: "), "{stderr}");
    // stderr is no terminal here: progress comes as lines, the last after the last request.
    assert!(
        stderr.contains(&format!("{}: 3/3 requests, ", queries.display())),
        "{stderr}"
    );
    let manifest = finished(&queries, "distill-queries");
    assert_eq!(manifest.counts["items"], 3);
    assert!(queries.join("cache.sqlite").exists());
    for record in read_jsonl(&queries.join("queries.jsonl")) {
        assert!(!record["query"].as_str().unwrap().is_empty());
    }

    let samples = dir.path().join("samples");
    run(stage(&[
        "distill",
        "sample",
        "--queries",
        p(&queries),
        "--out",
        p(&samples),
        "--base-model",
        &model,
        "--samples",
        "2",
    ]));
    let manifest = finished(&samples, "distill-sample");
    for record in read_jsonl(&samples.join("samples.jsonl")) {
        assert_eq!(record["samples"].as_array().unwrap().len(), 2);
    }
    assert_eq!(manifest.config["samples_per_query"], 2);

    let summaries = dir.path().join("summaries");
    run(stage(&[
        "distill",
        "summarize",
        "--samples",
        p(&samples),
        "--out",
        p(&summaries),
        "--teacher-model",
        &model,
    ]));
    let manifest = finished(&summaries, "distill-summarize");
    let rows = schema::read_sft_training(&summaries.join("sft_training.csv")).unwrap();
    assert_eq!(rows.len() as u64, manifest.counts["records"]);
    assert_eq!(
        schema::jsonl::read_sft_jsonl(&summaries.join("lc_sft.jsonl"))
            .unwrap()
            .len(),
        rows.len()
    );

    let extract = dir.path().join("extract");
    run(stage(&[
        "label",
        "extract",
        "--paragraphs",
        p(&summaries),
        "--out",
        p(&extract),
        "--teacher-model",
        &model,
    ]));
    finished(&extract, "label-extract");
    let forecast = dir.path().join("forecast");
    run(stage(&[
        "label",
        "forecast",
        "--extractions",
        p(&extract),
        "--out",
        p(&forecast),
        "--teacher-model",
        &model,
    ]));
    let manifest = finished(&forecast, "label-forecast");
    let rows =
        schema::read_reward_model_training(&forecast.join("reward_model_training.csv")).unwrap();
    assert_eq!(rows.len() as u64, manifest.counts["records"]);
    let binary = dir.path().join("binary");
    let stderr = run(stage(&[
        "label",
        "binary",
        "--paragraphs",
        p(&samples),
        "--out",
        p(&binary),
        "--teacher-model",
        &model,
    ]));
    let manifest = finished(&binary, "label-binary");
    // A random model's verdicts hardly ever read as 0/1: they are kept as failures, after
    // being asked again (2 attempts). The re-asks are counted, and are the requests beyond one
    // per item in the usage line.
    let (failed, reasked) = (manifest.counts["failed"], manifest.counts["reasked"]);
    assert!(failed > 0 && reasked >= failed, "{:?}", manifest.counts);
    assert!(
        stderr.contains(&format!(
            "; {reasked} requests asked again after an answer that did not parse"
        )) && stderr.contains(&format!(
            ": {} requests, 0 from cache",
            manifest.counts["items"] + reasked
        )),
        "{stderr}"
    );
    schema::read_reward_model_training(&binary.join("reward_model_training.csv")).unwrap();

    // The same command again is skipped; another setting is refused; --force redoes it from
    // the response cache.
    let again = stage(&[
        "label",
        "binary",
        "--paragraphs",
        p(&samples),
        "--out",
        p(&binary),
        "--teacher-model",
        &model,
    ]);
    let stderr = run(again.clone());
    assert!(
        stderr.contains("already finished with this config and these inputs; skipped"),
        "{stderr}"
    );
    let mut hotter = again.clone();
    hotter.extend(["--temperature".to_string(), "0.9".to_string()]);
    let stderr = fails(&hotter.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        stderr.contains(
            "its config differs: `settings.temperature` was 0.2, now 0.9. Use --force to replace it"
        ),
        "{stderr}"
    );
    let mut forced = again;
    forced.push("--force".to_string());
    let stderr = run(forced);
    assert!(!stderr.contains("skipped"), "{stderr}");
    let usage = &Manifest::read(&binary).unwrap().summary["usage"];
    let (_, usage) = usage.as_object().unwrap().iter().next().unwrap();
    assert_eq!(
        usage["cache_hits"], usage["requests"],
        "a forced rerun is answered from the cache: {usage}"
    );
}

#[test]
fn teacher_configs_and_inputs_are_checked_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_questions(dir.path(), 2);
    let config = dir.path().join("teacher.toml");
    let out = dir.path().join("out");
    std::fs::write(
        &config,
        "kind = \"anthropic\"\nmodel = \"claude-2.0\"\n\
         api_key_env = \"LINCAL_TEST_KEY_NEVER_SET\"\n",
    )
    .unwrap();
    let stderr = fails(&[
        "distill",
        "queries",
        "--questions",
        p(&questions),
        "--out",
        p(&out),
        "--teacher",
        p(&config),
    ]);
    assert!(
        stderr.contains("environment variable LINCAL_TEST_KEY_NEVER_SET is not set"),
        "{stderr}"
    );
    std::fs::write(
        &config,
        "kind = \"openai\"\nmodel = \"m\"\ntemprature = 1\n",
    )
    .unwrap();
    let stderr = fails(&[
        "distill",
        "queries",
        "--questions",
        p(&questions),
        "--out",
        p(&out),
        "--teacher",
        p(&config),
    ]);
    assert!(
        stderr.contains(&format!("{}: not a valid backend config", config.display()))
            && stderr.contains("unknown field `temprature`"),
        "{stderr}"
    );
    let stderr = fails(&[
        "distill",
        "queries",
        "--questions",
        p(&questions),
        "--out",
        p(&out),
    ]);
    assert!(
        stderr.contains("--teacher <TEACHER>|--teacher-model <TEACHER_MODEL>"),
        "{stderr}"
    );
    // A stage directory of the wrong kind, named with what to give instead.
    let model = tiny_model_dir(dir.path());
    let queries = dir.path().join("queries");
    succeeds(&[
        "distill",
        "queries",
        "--questions",
        p(&questions),
        "--out",
        p(&queries),
        "--teacher-model",
        &model,
        "--device",
        "cpu",
        "--max-tokens",
        "4",
        "--max-attempts",
        "1",
    ]);
    let stderr = fails(&[
        "label",
        "forecast",
        "--extractions",
        p(&queries),
        "--out",
        p(&out),
        "--teacher-model",
        &model,
        "--device",
        "cpu",
    ]);
    assert!(
        stderr.contains(&format!(
            "{}: holds a `distill-queries` stage; give the directory of a `label-extract` stage",
            queries.display()
        )),
        "{stderr}"
    );
}

#[test]
fn offline_teachers_need_no_teacher_model() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_questions(dir.path(), 3);
    let queries = dir.path().join("queries");
    let stderr = succeeds(&[
        "distill",
        "queries",
        "--questions",
        p(&questions),
        "--out",
        p(&queries),
        "--offline",
    ]);
    assert!(
        stderr.contains("distill-queries: 3 of 3 items done; 0 failed"),
        "{stderr}"
    );
    let manifest = Manifest::read(&queries).unwrap();
    assert_eq!(
        manifest.config["model"],
        json!({"backend": "offline", "model": "query-template"})
    );
    assert!(!queries.join("cache.sqlite").exists(), "nothing was asked");
    let records = read_jsonl(&queries.join("queries.jsonl"));
    assert_eq!(
        records[0]["query"],
        "Write a short paragraph that answers this question: What is the capital of France?"
    );

    // A random model samples and extracts; the offline teachers do the rest. Its extractions
    // hardly ever parse, so most items may fail.
    let model = tiny_model_dir(dir.path());
    let local = [
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--max-tokens",
        "6",
        "--max-attempts",
        "1",
        "--max-failure-share",
        "1",
    ];
    let run =
        |args: &[&str]| succeeds(&args.iter().chain(local.iter()).copied().collect::<Vec<_>>());
    let samples = dir.path().join("samples");
    run(&[
        "distill",
        "sample",
        "--queries",
        p(&queries),
        "--out",
        p(&samples),
        "--base-model",
        &model,
        "--samples",
        "2",
    ]);
    let summaries = dir.path().join("summaries");
    run(&[
        "distill",
        "summarize",
        "--samples",
        p(&samples),
        "--out",
        p(&summaries),
        "--offline",
        "--extractor-model",
        &model,
    ]);
    let manifest = finished(&summaries, "distill-summarize");
    assert_eq!(
        manifest.config["model"],
        json!({"backend": "offline", "model": "agreement"})
    );
    assert_eq!(manifest.config["extractor"]["backend"], "local");
    // The extractor's requests use the extraction defaults (temperature 0.2), not the summary's.
    assert_eq!(manifest.config["settings"]["temperature"], 0.2);
    let extract = dir.path().join("extract");
    run(&[
        "label",
        "extract",
        "--paragraphs",
        p(&samples),
        "--out",
        p(&extract),
        "--teacher-model",
        &model,
    ]);
    assert!(extract.join("extract_answers.jsonl").exists());
    let forecast = dir.path().join("forecast");
    succeeds(&[
        "label",
        "forecast",
        "--extractions",
        p(&extract),
        "--out",
        p(&forecast),
        "--offline",
    ]);
    assert_eq!(
        Manifest::read(&forecast).unwrap().config["model"]["model"],
        "stated-confidence"
    );
    let binary = dir.path().join("binary");
    run(&[
        "label",
        "binary",
        "--paragraphs",
        p(&samples),
        "--out",
        p(&binary),
        "--offline",
        "--extractor-model",
        &model,
    ]);
    finished(&binary, "label-binary");

    // Where an offline teacher needs an extractor, or has none, the flags say so.
    let stderr = fails(&[
        "distill",
        "summarize",
        "--samples",
        p(&samples),
        "--out",
        p(&dir.path().join("s2")),
        "--offline",
    ]);
    assert!(
        stderr.contains(
            "the offline teacher of the `distill-summarize` stage needs an extractor, a model that \
             finds the answers a text gives: give --extractor CONFIG or --extractor-model DIR"
        ),
        "{stderr}"
    );
    let stderr = fails(&[
        "label",
        "extract",
        "--paragraphs",
        p(&samples),
        "--out",
        p(&dir.path().join("e2")),
        "--offline",
    ]);
    assert!(
        stderr.contains("unexpected argument '--offline'"),
        "{stderr}"
    );
    let stderr = fails(&[
        "label",
        "binary",
        "--paragraphs",
        p(&samples),
        "--out",
        p(&dir.path().join("b2")),
        "--teacher-model",
        &model,
        "--extractor-model",
        &model,
    ]);
    assert!(
        stderr.contains(
            "--extractor and --extractor-model give the extractor of the offline teacher: \
             add --offline, or leave them out"
        ),
        "{stderr}"
    );
}

#[test]
fn a_locked_stage_directory_is_refused_naming_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_questions(dir.path(), 2);
    let out = dir.path().join("queries");
    std::fs::create_dir_all(&out).unwrap();
    // This test's own process is a holder that runs.
    let lock = out.join("lincal.lock");
    std::fs::write(
        &lock,
        json!({"pid": std::process::id(), "started": "2026-01-01T00:00:00Z"}).to_string(),
    )
    .unwrap();
    let args = [
        "distill",
        "queries",
        "--questions",
        p(&questions),
        "--out",
        p(&out),
        "--offline",
    ];
    let stderr = fails(&args);
    let held = format!(
        "{}: the output this lock guards is held by process {} (since 2026-01-01T00:00:00Z), \
         which is still running",
        lock.display(),
        std::process::id()
    );
    assert!(stderr.contains(&held), "{stderr}");
    // One whose process has ended is taken over, with a warning.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    std::fs::write(
        &lock,
        json!({"pid": dead, "started": "2026-01-01T00:00:00Z"}).to_string(),
    )
    .unwrap();
    let stderr = succeeds(&args);
    let taken_over = format!(
        "warning: took over {} left by process {dead} (since 2026-01-01T00:00:00Z), which no \
         longer runs",
        lock.display()
    );
    assert!(stderr.contains(&taken_over), "{stderr}");
    assert!(!lock.exists());
}

#[test]
fn prompts_export_writes_every_template_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("prompts");
    let stdout = String::from_utf8(lincal(&["prompts", "export", p(&out)]).stdout).unwrap();
    assert_eq!(
        stdout.trim(),
        format!(
            "wrote {} templates to {}",
            lincal_data::prompts::CATALOGUE.len(),
            out.display()
        )
    );
    let summarize = std::fs::read_to_string(out.join("summarize_samples.j2")).unwrap();
    let builtin = lincal_data::prompts::CATALOGUE
        .iter()
        .find(|spec| spec.name == "summarize_samples")
        .unwrap()
        .builtin;
    assert_eq!(summarize, builtin);
    let stderr = fails(&["prompts", "export", p(&out)]);
    assert!(
        stderr.contains("already exists; remove it or export into an empty directory"),
        "{stderr}"
    );
}

#[test]
fn data_commands_name_the_known_sources() {
    let stderr = fails(&["data", "build", "trivia", "--out", "x.jsonl"]);
    assert!(
        stderr.contains("invalid value 'trivia'")
            && stderr.contains(
                "fanoutqa, red-trivia, bigbench-nq, bigbench-qa-wikidata, wordnet-people"
            ),
        "{stderr}"
    );
}

/// Short prompt templates for the SmolLM2 chain: the built-in few-shot prompts run to about
/// a thousand tokens each, more than a 2-core CPU can prefill for six stages in minutes.
const SHORT_TEMPLATES: [(&str, &str); 6] = [
    (
        "open_ended_query",
        "<<user>>\nTurn the trivia question into a writing request that starts with \
         \"Write a paragraph about\" and does not contain the answer.\n\n\
         Question: Who painted the ceiling of the Sistine Chapel?\n\
         Query: Write a paragraph about the painting of the Sistine Chapel ceiling.\n\n\
         Question: {{ question }}\nReply with one line that starts with \"Query:\".\n",
    ),
    (
        "icl_paragraphs",
        "Each query below asks for a short factual paragraph.\n\n### Query 1\n\
         Write a paragraph about the first person to walk on the Moon.\n\
         ### Paragraph 1\nNeil Armstrong was an American astronaut who became the first person to \
         walk on the Moon, on July 20, 1969, as commander of Apollo 11.\n\n\
         ### Query 2\n{{ query }}\n### Paragraph 2\n",
    ),
    (
        "summarize_samples",
        "<<user>>\nHere are paragraphs you wrote about one topic. \
         Merge them into one paragraph written in the first person. Give each claim a confidence \
         equal to the share of paragraphs that support it, as in \"I am 50% sure that ...\".\n\
         {% for sample in samples %}\nParagraph {{ loop.index }}: {{ sample }}\n{% endfor %}\n\
         Reply with the merged paragraph only.\n",
    ),
    (
        "extract_answers",
        "<<user>>\nWhich answers to the question does the paragraph give? Reply with one line that \
         starts with \"Answers:\" and lists them separated by semicolons, or says none.\n\n\
         Paragraph: The Eiffel Tower was finished in 1889.\n\
         Question: When was the Eiffel Tower finished?\nAnswers: 1889\n\n\
         Paragraph: {{ paragraph }}\nQuestion: {{ question }}\n",
    ),
    (
        "forecast_probability",
        "<<user>>\nQuestion: {{ question }}\nParagraph: {{ paragraph }}\n\
         Judging only by the paragraph, how likely is \"{{ candidate }}\" to be the correct \
         answer? Reply with one line \"Probability: <a number between 0 and 1>\".\n",
    ),
    (
        "binary_correctness",
        "<<user>>\nQuestion: {{ question }}\nParagraph: {{ paragraph }}\n\
         True answer: {{ answer }}\nDoes the paragraph give the true answer, \
         and no other answer? Reply with one line \"Correct: 1\" or \"Correct: 0\".\n",
    ),
];

/// The whole chain (queries, base-model samples, summaries, extraction, forecasts, 0/1 labels)
/// on 20 questions with the real SmolLM2-135M-Instruct as every teacher and as the base model,
/// with short templates (`--prompts`), 2 samples per query and small token budgets.
#[test]
#[ignore = "needs the SmolLM2 GGUF (cargo xtask test sets LINCAL_SMOLLM2_GGUF)"]
fn smollm2_runs_the_distillation_and_label_chain_on_20_questions() {
    let gguf = std::env::var("LINCAL_SMOLLM2_GGUF")
        .expect("set LINCAL_SMOLLM2_GGUF to the SmolLM2-135M-Instruct GGUF");
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("smollm2");
    lincal_gguf::convert_to_hf(Path::new(&gguf), &model_dir, lincal_gguf::OutputDtype::F32)
        .unwrap();
    let model = p(&model_dir).to_string();
    let prompts = dir.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    for (name, text) in SHORT_TEMPLATES {
        std::fs::write(prompts.join(format!("{name}.j2")), text).unwrap();
    }
    let questions = write_questions(dir.path(), 20);
    // A 135M teacher fails many items; the chain goes on with what got through.
    let common = [
        "--device",
        "cpu",
        "--batch-size",
        "64",
        "--max-attempts",
        "2",
        "--max-failure-share",
        "1",
        "--prompts",
        p(&prompts),
    ];
    let run = |args: &[&str], max_tokens: &str| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(common);
        all.extend(["--max-tokens", max_tokens]);
        // The machine's two cores are shared with other jobs; libtorch's OpenMP threads then
        // wait on each other (measured here: decoding 7x slower with two threads than one).
        let output = Command::new(env!("CARGO_BIN_EXE_lincal"))
            .args(&all)
            .env("OMP_NUM_THREADS", "1")
            .output()
            .expect("lincal runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "lincal {all:?} failed:\n{stderr}");
        eprintln!("{stderr}");
    };
    let queries = dir.path().join("queries");
    run(
        &[
            "distill",
            "queries",
            "--questions",
            p(&questions),
            "--out",
            p(&queries),
            "--teacher-model",
            &model,
        ],
        "24",
    );
    let samples = dir.path().join("samples");
    run(
        &[
            "distill",
            "sample",
            "--queries",
            p(&queries),
            "--out",
            p(&samples),
            "--base-model",
            &model,
            "--samples",
            "2",
        ],
        "40",
    );
    let summaries = dir.path().join("summaries");
    run(
        &[
            "distill",
            "summarize",
            "--samples",
            p(&samples),
            "--out",
            p(&summaries),
            "--teacher-model",
            &model,
        ],
        "48",
    );
    let extract = dir.path().join("extract");
    run(
        &[
            "label",
            "extract",
            "--paragraphs",
            p(&summaries),
            "--out",
            p(&extract),
            "--teacher-model",
            &model,
        ],
        "16",
    );
    let forecast = dir.path().join("forecast");
    run(
        &[
            "label",
            "forecast",
            "--extractions",
            p(&extract),
            "--out",
            p(&forecast),
            "--teacher-model",
            &model,
        ],
        "6",
    );
    let binary = dir.path().join("binary");
    run(
        &[
            "label",
            "binary",
            "--paragraphs",
            p(&samples),
            "--out",
            p(&binary),
            "--teacher-model",
            &model,
        ],
        "5",
    );

    // Each stage's yield as recorded on this machine (seeded, f32 on the CPU: the same build
    // writes the same text), one item either way for a change of arithmetic order.
    let mut through = Vec::new();
    for (dir, stage, items, records) in [
        (&queries, "distill-queries", 20, 18),
        (&samples, "distill-sample", 18, 18),
        (&summaries, "distill-summarize", 18, 18),
        (&extract, "label-extract", 18, 1),
        (&forecast, "label-forecast", 1, 1),
        (&binary, "label-binary", 18, 8),
    ] {
        let manifest = finished(dir, stage);
        let (got_records, got_items) = (manifest.counts["records"], manifest.counts["items"]);
        through.push(format!("{stage} {got_records}/{got_items}"));
        assert!(
            got_items.abs_diff(items) <= 1 && got_records.abs_diff(records) <= 1,
            "{stage}: {got_records} of {got_items} got through, recorded {records} of {items}"
        );
    }
    eprintln!("got through: {}", through.join(", "));
    let sft = schema::read_sft_training(&summaries.join("sft_training.csv")).unwrap();
    assert!(!sft.is_empty(), "no summary got through");
    let lc_sft = schema::jsonl::read_sft_jsonl(&summaries.join("lc_sft.jsonl")).unwrap();
    assert_eq!(lc_sft.len(), sft.len());
    let lc =
        schema::read_reward_model_training(&forecast.join("reward_model_training.csv")).unwrap();
    assert!(!lc.is_empty(), "no forecast got through");
    for row in &lc {
        let answers = row
            .lc_sft_ground_truth_and_extracted_answers
            .as_ref()
            .unwrap();
        let probs = row.lc_sft_forecasted_probs.as_ref().unwrap();
        assert_eq!(answers.len(), probs.len());
        assert!(probs.iter().all(|p| (0.0..=1.0).contains(p)));
    }
    let factuality =
        schema::read_reward_model_training(&binary.join("reward_model_training.csv")).unwrap();
    for row in &factuality {
        assert!(matches!(
            row.factuality_sft_binary_correctness,
            Some(label) if label == 0.0 || label == 1.0
        ));
    }
    let trivia = schema::TriviaQa::load(&[forecast.join("questions.jsonl")]).unwrap();
    assert!(trivia.join(lc).unmatched.is_empty());
    let forecast_set =
        schema::jsonl::read_reward_jsonl(&forecast.join("forecast_probs.jsonl")).unwrap();
    assert!(!forecast_set.is_empty());
}
