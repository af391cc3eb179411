//! The teacher pipelines on a scripted teacher: every stage on a handful of questions, with the
//! rows worked out by hand; failures with their raw text; resume after a kill; skip and refuse.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lincal_data::artifact::Manifest;
use lincal_data::lock::{LOCK_FILE, LockHolder, OutputLock};
use lincal_data::prompts::{ExtractionPrompt, Templates};
use lincal_data::schema::{
    self, RewardModelTrainingRow, SftExample, SftTrainingRow, TriviaQa, jsonl,
};
use lincal_distill::{
    self as distill, SampleTemplate, Settings, Stage, StageContext, StageOptions, StageReport,
    Teacher as Answerer,
};
use lincal_llm::testing::FakeLlm;
use lincal_llm::{LlmError, LlmRequest, LlmResponse, Prompt, Role};
use serde_json::{Value, json};

/// Which task a request is, from the system turn of its template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Task {
    Query,
    Rephrase,
    Sample,
    Summary,
    Paragraph,
    Extract,
    Forecast,
    Binary,
}

fn task_and_text(request: &LlmRequest) -> (Task, String) {
    match &request.prompt {
        Prompt::Completion(text) => (Task::Sample, text.clone()),
        Prompt::Chat(messages) => {
            let system = messages.iter().find(|m| m.role == Role::System).unwrap();
            let user = messages.iter().find(|m| m.role == Role::User).unwrap();
            let task = [
                ("You turn trivia questions", Task::Query),
                ("You rewrite Jeopardy", Task::Rephrase),
                ("You write in the first person", Task::Summary),
                ("You are a knowledgeable writer", Task::Paragraph),
                ("You read paragraphs", Task::Extract),
                ("You estimate probabilities", Task::Forecast),
                ("You grade whether", Task::Binary),
            ]
            .into_iter()
            .find(|(start, _)| system.content.starts_with(start))
            .map(|(_, task)| task)
            .unwrap();
            (task, user.content.clone())
        }
    }
}

/// The value of the last line of `text` that starts with `label`.
fn last_field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .rev()
        .find_map(|line| line.strip_prefix(label))
        .unwrap()
}

/// A scripted teacher that also counts its calls per task and per (task, key).
struct Teacher {
    fake: Arc<FakeLlm>,
    calls: Arc<Mutex<HashMap<(Task, String), usize>>>,
}

impl Teacher {
    fn new() -> Self {
        Self::with(|_, _, _| None)
    }

    /// `special(task, key, call)` may replace the scripted answer of the `call`-th (0-based)
    /// request of that task and key.
    fn with<F>(special: F) -> Self
    where
        F: Fn(Task, &str, usize) -> Option<Result<String, LlmError>> + Send + Sync + 'static,
    {
        let calls: Arc<Mutex<HashMap<(Task, String), usize>>> = Arc::default();
        let counter = calls.clone();
        let fake = FakeLlm::new(move |request| {
            let (task, text) = task_and_text(request);
            let key = match task {
                Task::Query | Task::Extract | Task::Binary => {
                    last_field(&text, "Question: ").to_string()
                }
                Task::Rephrase => last_field(&text, "Clue: ").to_string(),
                Task::Sample => text
                    .lines()
                    .skip_while(|l| *l != "### Query 9")
                    .nth(1)
                    .unwrap()
                    .to_string(),
                Task::Paragraph => text.lines().next().unwrap().to_string(),
                Task::Summary => your_task(&text)
                    .lines()
                    .skip_while(|l| *l != "### Thought 1")
                    .nth(1)
                    .unwrap()
                    .to_string(),
                Task::Forecast => text.split('"').nth(1).unwrap().to_string(),
            };
            let call = {
                let mut calls = counter.lock().unwrap();
                let count = calls.entry((task, key.clone())).or_default();
                *count += 1;
                *count - 1
            };
            let answer =
                special(task, &key, call).unwrap_or_else(|| Ok(scripted(task, &key, call, &text)));
            answer.map(|text| LlmResponse::from_texts([text]))
        });
        Teacher {
            fake: Arc::new(fake),
            calls,
        }
    }

    fn calls(&self, task: Task) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|((t, _), _)| *t == task)
            .map(|(_, n)| n)
            .sum()
    }

    fn total_calls(&self) -> usize {
        self.fake.requests().len()
    }
}

/// The default answers.
fn scripted(task: Task, key: &str, call: usize, text: &str) -> String {
    match task {
        Task::Query => match key {
            // Gives the answer away the first time.
            "What is the capital of France?" if call == 0 => {
                "Query: Write a paragraph about Paris and its history.".into()
            }
            "What is the capital of France?" => {
                "Query: Write a paragraph about the capital city of France.".into()
            }
            "Which planet is known as the Red Planet?" => {
                "Here it is.\nQuery: Write a paragraph about the planet known as the Red Planet."
                    .into()
            }
            "Which scientist proposed the theory of general relativity?" => {
                "Query: Write a paragraph about the scientist who proposed general relativity."
                    .into()
            }
            "Who wrote Hamlet?" => "Query: Write a paragraph about Shakespeare's Hamlet.".into(),
            other => format!("Query: Write a paragraph about the subject of \"{other}\"."),
        },
        Task::Rephrase => "Explanation: The category says he is a scientist.\nRephrased question: \
                           Which scientist proposed the theory of general relativity?"
            .into(),
        // The base model goes on with the next few-shot example after a blank line.
        Task::Sample => format!(
            "\n{} fact {call}.\n\n### Query 10\nWrite a paragraph about",
            subject(key)
        ),
        Task::Summary => {
            let thoughts = your_task(text).matches("### Thought ").count();
            format!("### My Statement\nI am certain of the first of {thoughts} Thoughts.")
        }
        Task::Paragraph => format!("{} is well known.", subject(key)),
        Task::Extract => match key {
            "What is the capital of France?" => {
                "Reasoning: It names two cities.\nAnswers: Paris; Lyon".into()
            }
            "Which planet is known as the Red Planet?" => {
                "Reasoning: No planet is named.\nAnswers: none".into()
            }
            _ => "Reasoning: I am not sure what to list.".into(),
        },
        Task::Forecast => match key {
            "Paris" => "Reasoning: Stated with confidence.\nProbability: 0.8".into(),
            "Lyon" => "Reasoning: Mentioned as unlikely.\nProbability: 20%".into(),
            _ => "Reasoning: Not mentioned.\nProbability: 0".into(),
        },
        Task::Binary => match key {
            "What is the capital of France?" => "Reasoning: It gives Paris.\nCorrect: 1".into(),
            _ => "Reasoning: It gives no answer.\nCorrect: 0".into(),
        },
    }
}

/// The summary prompt past its worked examples.
fn your_task(text: &str) -> &str {
    text.split("## Your task").nth(1).unwrap()
}

fn subject(query: &str) -> &str {
    if query.contains("France") {
        "Paris"
    } else if query.contains("Red Planet") {
        "Mars"
    } else {
        "Einstein"
    }
}

fn questions_file(dir: &Path, with_hamlet: bool) -> PathBuf {
    let mut lines = vec![
        json!({
            "id": "q1",
            "question": "What is the capital of France?",
            "answer": "Paris",
            "aliases": ["Paris", "Paris, France"],
            "source": "test",
        }),
        json!({
            "id": "q2",
            "question": "Which planet is known as the Red Planet?",
            "answer": "Mars",
            "source": "test",
        }),
        json!({
            "id": "q3",
            "question": "He proposed the theory of general relativity",
            "answer": "Albert Einstein",
            "aliases": ["Einstein"],
            "source": "jeopardy",
            "category": "SCIENTISTS",
        }),
    ];
    if with_hamlet {
        lines.push(json!({
            "id": "q4",
            "question": "Who wrote Hamlet?",
            "answer": "William Shakespeare",
            "aliases": ["Shakespeare"],
            "source": "test",
        }));
    }
    let path = dir.join("questions.jsonl");
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn settings(stage: Stage) -> Settings {
    Settings {
        max_attempts: 3,
        ..stage.default_settings()
    }
}

fn context<'a>(teacher: &'a Teacher, templates: &'a Templates) -> StageContext<'a> {
    StageContext {
        teacher: Answerer::Model(teacher.fake.as_ref()),
        templates,
        extraction: ExtractionPrompt::Teacher,
        options: StageOptions::default(),
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn counts(report: &StageReport) -> Vec<(String, u64)> {
    report.manifest.counts.clone().into_iter().collect()
}

/// The manifest counts of a stage; `reasked` counts the requests asked again after an answer
/// that did not parse.
fn count_list(
    items: u64,
    reused: u64,
    produced: u64,
    failed: u64,
    reasked: u64,
) -> Vec<(String, u64)> {
    vec![
        ("failed".into(), failed),
        ("items".into(), items),
        ("produced".into(), produced),
        ("reasked".into(), reasked),
        ("records".into(), reused + produced),
        ("reused".into(), reused),
    ]
}

fn queries(dir: &Path, templates: &Templates) -> PathBuf {
    let teacher = Teacher::new();
    let out = dir.join("queries");
    distill::make_queries(
        &context(&teacher, templates),
        &questions_file(dir, false),
        &out,
        &settings(Stage::Queries),
    )
    .unwrap();
    out
}

fn samples(dir: &Path, templates: &Templates) -> PathBuf {
    let queries = queries(dir, templates);
    let teacher = Teacher::new();
    let out = dir.join("samples");
    distill::sample_paragraphs(
        &context(&teacher, templates),
        &queries,
        &out,
        &settings(Stage::Sample),
        8,
        SampleTemplate::Icl,
    )
    .unwrap();
    out
}

#[test]
fn queries_hide_the_answer_rephrase_jeopardy_clues_and_record_failures() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let teacher = Teacher::new();
    let out = dir.path().join("queries");
    let report = distill::make_queries(
        &context(&teacher, &templates),
        &questions_file(dir.path(), true),
        &out,
        &settings(Stage::Queries),
    )
    .unwrap();
    assert!(!report.skipped && !report.resumed);
    assert_eq!(
        read_lines(&out.join("queries.jsonl")),
        [
            json!({
                "id": "q1",
                "question": "What is the capital of France?",
                "answer": "Paris",
                "aliases": ["Paris", "Paris, France"],
                "source": "test",
                "query": "Write a paragraph about the capital city of France.",
            }),
            json!({
                "id": "q2",
                "question": "Which planet is known as the Red Planet?",
                "answer": "Mars",
                "aliases": ["Mars"],
                "source": "test",
                "query": "Write a paragraph about the planet known as the Red Planet.",
            }),
            json!({
                "id": "q3",
                "question": "Which scientist proposed the theory of general relativity?",
                "answer": "Albert Einstein",
                "aliases": ["Albert Einstein", "Einstein"],
                "source": "jeopardy",
                "query": "Write a paragraph about the scientist who proposed general relativity.",
                "jeopardy": {
                    "category": "SCIENTISTS",
                    "clue": "He proposed the theory of general relativity",
                },
            }),
        ]
    );
    // q1's first query named Paris and was asked again; q4's always names Shakespeare.
    assert_eq!(teacher.calls(Task::Query), 2 + 1 + 1 + 3);
    assert_eq!(teacher.calls(Task::Rephrase), 1);
    assert_eq!(
        read_lines(&out.join("failures.jsonl")),
        [json!({
            "id": "q4",
            "step": "query",
            "reason": "no usable answer in 3 attempts: it gives the answer away (it contains \
                       \"Shakespeare\")",
            "raw_text": "Query: Write a paragraph about Shakespeare's Hamlet.",
            "attempts": 3,
        })]
    );
    assert_eq!(counts(&report), count_list(4, 0, 3, 1, 3));
    // The retry of q1 used the next seed of the same request.
    let q1: Vec<u64> = teacher
        .fake
        .requests()
        .iter()
        .filter(|r| {
            matches!(&r.prompt, Prompt::Chat(m)
                if m[1].content.ends_with("Question: What is the capital of France?"))
        })
        .map(|r| r.params.seed)
        .collect();
    assert_eq!(q1.len(), 2);
    assert_eq!(q1[1], q1[0].wrapping_add(1));
    let manifest = Manifest::read(&out).unwrap();
    assert_eq!(manifest.stage, "distill-queries");
    assert_eq!(
        manifest.config["model"],
        json!({"backend": "fake", "model": "fake-model"})
    );
    assert_eq!(manifest.config["settings"]["temperature"], json!(0.3));
}

#[test]
fn three_queries_get_eight_samples_each_cut_at_the_blank_line() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let queries = queries(dir.path(), &templates);
    // Mars' first sample is empty after the cut and is drawn again.
    let teacher = Teacher::with(|task, key, call| {
        (task == Task::Sample && key.contains("Red Planet") && call == 0)
            .then(|| Ok("\n\n### Query 10".to_string()))
    });
    let out = dir.path().join("samples");
    let report = distill::sample_paragraphs(
        &context(&teacher, &templates),
        &queries,
        &out,
        &settings(Stage::Sample),
        8,
        SampleTemplate::Icl,
    )
    .unwrap();
    assert_eq!(counts(&report), count_list(3, 0, 3, 0, 1));
    let records = read_lines(&out.join("samples.jsonl"));
    let samples = |i: usize| -> Vec<String> {
        serde_json::from_value(records[i]["samples"].clone()).unwrap()
    };
    let expected = |name: &str, calls: &[usize]| -> Vec<String> {
        calls.iter().map(|c| format!("{name} fact {c}.")).collect()
    };
    assert_eq!(samples(0), expected("Paris", &[0, 1, 2, 3, 4, 5, 6, 7]));
    // Sample 1 of Mars came from its ninth call, in the second round.
    assert_eq!(samples(1), expected("Mars", &[8, 1, 2, 3, 4, 5, 6, 7]));
    assert_eq!(samples(2), expected("Einstein", &[0, 1, 2, 3, 4, 5, 6, 7]));
    assert_eq!(
        records[1]["query"],
        "Write a paragraph about the planet known as the Red Planet."
    );
    assert_eq!(teacher.total_calls(), 25);
    // Every sample request: the 8-shot prompt, temperature 0.7, top-p 0.9, stop at a blank line,
    // and a seed of its own.
    let requests = teacher.fake.requests();
    let prompt = templates
        .icl_paragraphs("Write a paragraph about the capital city of France.")
        .unwrap();
    assert_eq!(requests[0].prompt, Prompt::Completion(prompt));
    assert_eq!(
        (requests[0].params.temperature, requests[0].params.top_p),
        (0.7, Some(0.9))
    );
    assert_eq!(requests[0].params.stop, ["\n\n"]);
    let mut seeds: Vec<u64> = requests[..24].iter().map(|r| r.params.seed).collect();
    seeds.sort();
    seeds.dedup();
    assert_eq!(seeds.len(), 24);
}

#[test]
fn summaries_see_the_samples_and_make_sft_training_rows() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let samples = samples(dir.path(), &templates);
    // Einstein's summary talks about its Thoughts, which the parser refuses, every time.
    let teacher = Teacher::with(|task, key, _| {
        (task == Task::Summary && key.starts_with("Einstein"))
            .then(|| Ok("Thought 2 says he was German.".to_string()))
    });
    let out = dir.path().join("summaries");
    let report = distill::summarize_samples(
        &context(&teacher, &templates),
        &samples,
        &out,
        &settings(Stage::Summarize),
        true,
    )
    .unwrap();
    assert_eq!(counts(&report), count_list(3, 0, 2, 1, 2));
    // The summary prompt holds the query's eight samples as numbered Thoughts, in order.
    let summary_prompt = teacher
        .fake
        .requests()
        .into_iter()
        .find_map(|r| match r.prompt {
            Prompt::Chat(m) if m[1].content.contains("### Thought 1\nParis") => {
                Some(m[1].content.clone())
            }
            _ => None,
        })
        .unwrap();
    let thoughts: String = (0..8)
        .map(|i| format!("### Thought {}\nParis fact {i}.\n\n", i + 1))
        .collect();
    assert!(summary_prompt.contains(&thoughts), "{summary_prompt}");
    assert!(!summary_prompt.contains("### Thought 9"));
    assert_eq!(
        read_lines(&out.join("failures.jsonl")),
        [json!({
            "id": "q3",
            "step": "summary",
            "reason": "no usable answer in 3 attempts: summary refers to \"Thought 2\"; the \
                       statement must not mention the Thoughts: \"Thought 2 says he was German.\"",
            "raw_text": "Thought 2 says he was German.",
            "attempts": 3,
        })]
    );
    let summary = "I am certain of the first of 8 Thoughts.";
    let paris: Vec<Option<String>> = (0..8).map(|i| Some(format!("Paris fact {i}."))).collect();
    let mars: Vec<Option<String>> = (0..8).map(|i| Some(format!("Mars fact {i}."))).collect();
    let rows = schema::read_sft_training(&out.join("sft_training.csv")).unwrap();
    assert_eq!(
        rows,
        [
            SftTrainingRow {
                question_id: "q1".into(),
                paragraph_generation_prompt: Some(
                    "Write a paragraph about the capital city of France.".into()
                ),
                claude_summary: Some(summary.into()),
                icl_generated_paragraphs: Some(paris),
                icl_generated_paragraphs_error: None,
                claude_generated_paragraph: Some("Paris is well known.".into()),
            },
            SftTrainingRow {
                question_id: "q2".into(),
                paragraph_generation_prompt: Some(
                    "Write a paragraph about the planet known as the Red Planet.".into()
                ),
                claude_summary: Some(summary.into()),
                icl_generated_paragraphs: Some(mars),
                icl_generated_paragraphs_error: None,
                claude_generated_paragraph: Some("Mars is well known.".into()),
            },
        ]
    );
    let policy = |query: &str| templates.policy(query).unwrap();
    let example = |id: &str, query: &str, target: &str| SftExample {
        question_id: Some(id.into()),
        prompt: policy(query),
        target: target.into(),
    };
    let q1 = "Write a paragraph about the capital city of France.";
    let q2 = "Write a paragraph about the planet known as the Red Planet.";
    assert_eq!(
        jsonl::read_sft_jsonl(&out.join("lc_sft.jsonl")).unwrap(),
        [example("q1", q1, summary), example("q2", q2, summary)]
    );
    assert_eq!(
        jsonl::read_sft_jsonl(&out.join("factuality_sft.jsonl")).unwrap(),
        [
            example("q1", q1, "Paris fact 0."),
            example("q2", q2, "Mars fact 0.")
        ]
    );
    assert_eq!(
        jsonl::read_sft_jsonl(&out.join("claude_distill.jsonl")).unwrap(),
        [
            example("q1", q1, "Paris is well known."),
            example("q2", q2, "Mars is well known.")
        ]
    );
    let record = &read_lines(&out.join("summaries.jsonl"))[0];
    assert_eq!(record["summary"], summary);
    assert_eq!(record["distilled_paragraph"], "Paris is well known.");
}

#[test]
fn reader_labels_include_the_ground_truth_and_feed_the_reader_sets() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let paragraphs = dir.path().join("paragraphs.jsonl");
    // The paragraph field may be `completion`, as `lincal generate` writes it.
    let lines = [
        json!({
            "id": "q1",
            "question": "What is the capital of France?",
            "answer": "Paris",
            "aliases": ["Paris, France"],
            "paragraph": "I am 80% sure it is Paris, with a 20% chance of Lyon.",
        }),
        json!({
            "id": "q2",
            "question": "Which planet is known as the Red Planet?",
            "answer": "Mars",
            "completion": "I do not know.",
        }),
        json!({
            "id": "q3",
            "question": "Who proposed general relativity?",
            "answer": "Albert Einstein",
            "paragraph": "A physicist did.",
        }),
    ];
    std::fs::write(
        &paragraphs,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();

    let teacher = Teacher::new();
    let extractions = dir.path().join("extract");
    let report = distill::extract_answers(
        &context(&teacher, &templates),
        &paragraphs,
        &extractions,
        &settings(Stage::Extract),
    )
    .unwrap();
    assert_eq!(counts(&report), count_list(3, 0, 2, 1, 2));
    let records = read_lines(&extractions.join("extractions.jsonl"));
    assert_eq!(records[0]["extracted_answers"], json!(["Paris", "Lyon"]));
    assert_eq!(records[0]["aliases"], json!(["Paris", "Paris, France"]));
    assert_eq!(records[1]["extracted_answers"], json!([]));
    assert_eq!(records[1]["paragraph"], "I do not know.");
    let failures = read_lines(&extractions.join("failures.jsonl"));
    assert_eq!(
        (failures[0]["id"].as_str(), failures[0]["step"].as_str()),
        (Some("q3"), Some("extract"))
    );
    assert_eq!(
        failures[0]["raw_text"],
        "Reasoning: I am not sure what to list."
    );
    // The extraction prompt is the 8-shot training-label one.
    let first = teacher.fake.requests()[0].clone();
    let Prompt::Chat(messages) = &first.prompt else {
        panic!()
    };
    assert!(
        messages[1].content.contains("### Example 8")
            && !messages[1].content.contains("### Example 9")
    );
    assert_eq!(first.params.temperature, 0.2);
    // The ExtractAnswers set comes with the extractions, whatever becomes of the forecasts.
    let extract_set = jsonl::read_sft_jsonl(&extractions.join("extract_answers.jsonl")).unwrap();
    let targets: Vec<&str> = extract_set.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["Paris; Lyon", "No Answer"]);
    assert_eq!(
        extract_set[1].prompt,
        templates
            .extract_answers_model("Which planet is known as the Red Planet?", "I do not know.")
            .unwrap()
    );

    let teacher = Teacher::new();
    let forecasts = dir.path().join("forecast");
    let report = distill::forecast_candidates(
        &context(&teacher, &templates),
        &extractions,
        &forecasts,
        &settings(Stage::Forecast),
    )
    .unwrap();
    let mut expected = count_list(2, 0, 2, 0, 0);
    expected.insert(0, ("dropped_candidates".into(), 0));
    assert_eq!(counts(&report), expected);
    let records = read_lines(&forecasts.join("forecasts.jsonl"));
    // The ground truth comes first even when it was also extracted.
    assert_eq!(records[0]["candidates"], json!(["Paris", "Paris", "Lyon"]));
    assert_eq!(records[0]["probabilities"], json!([0.8, 0.8, 0.2]));
    assert_eq!(records[1]["candidates"], json!(["Mars"]));
    assert_eq!(records[1]["probabilities"], json!([0.0]));
    assert_eq!(teacher.calls(Task::Forecast), 4);

    let rows =
        schema::read_reward_model_training(&forecasts.join("reward_model_training.csv")).unwrap();
    assert_eq!(
        rows[0],
        RewardModelTrainingRow {
            question_id: "q1".into(),
            lc_sft_generated_paragraph: Some(
                "I am 80% sure it is Paris, with a 20% chance of Lyon.".into()
            ),
            lc_sft_ground_truth_and_extracted_answers: Some(vec![
                Some("Paris".into()),
                Some("Paris".into()),
                Some("Lyon".into())
            ]),
            lc_sft_forecasted_probs: Some(vec![0.8, 0.8, 0.2]),
            factuality_sft_generated_paragraph: None,
            factuality_sft_binary_correctness: None,
        }
    );
    // questions.jsonl joins the rows the way `lincal reward-model --trivia-qa` does.
    let joined = TriviaQa::load(&[forecasts.join("questions.jsonl")])
        .unwrap()
        .join(rows);
    assert!(joined.unmatched.is_empty());
    assert_eq!(
        joined.rows[1].question.question,
        "Which planet is known as the Red Planet?"
    );
    assert_eq!(
        joined.rows[0].question.normalized_aliases,
        ["paris", "paris france"]
    );
    assert!(!forecasts.join("extract_answers.jsonl").exists());
    let forecast_set = jsonl::read_reward_jsonl(&forecasts.join("forecast_probs.jsonl")).unwrap();
    let labels: Vec<f64> = forecast_set.iter().map(|e| e.label).collect();
    assert_eq!(labels, [0.8, 0.8, 0.2, 0.0]);
    assert_eq!(
        forecast_set[2].prompt,
        templates
            .forecast_probs_model(
                "What is the capital of France?",
                "I am 80% sure it is Paris, with a 20% chance of Lyon.",
                "Lyon"
            )
            .unwrap()
    );

    // Binary correctness: q3's call fails outright.
    let teacher = Teacher::with(|task, key, _| {
        (task == Task::Binary && key.starts_with("Who proposed")).then(|| {
            Err(LlmError::Backend {
                message: "out of memory".into(),
                retryable: false,
            })
        })
    });
    let binary = dir.path().join("binary");
    let report = distill::judge_correctness(
        &context(&teacher, &templates),
        &paragraphs,
        &binary,
        &settings(Stage::Binary),
    )
    .unwrap();
    assert_eq!(counts(&report), count_list(3, 0, 2, 1, 0));
    assert_eq!(
        read_lines(&binary.join("failures.jsonl")),
        [json!({
            "id": "q3",
            "step": "binary",
            "reason": "the call failed: backend failed: out of memory",
            "attempts": 1,
        })]
    );
    let rows =
        schema::read_reward_model_training(&binary.join("reward_model_training.csv")).unwrap();
    let labels: Vec<Option<f64>> = rows
        .iter()
        .map(|r| r.factuality_sft_binary_correctness)
        .collect();
    assert_eq!(labels, [Some(1.0), Some(0.0)]);
    assert_eq!(
        rows[1].factuality_sft_generated_paragraph.as_deref(),
        Some("I do not know.")
    );
    let set = jsonl::read_reward_jsonl(&binary.join("binary_correctness.jsonl")).unwrap();
    assert_eq!(
        set[0].prompt,
        templates
            .binary_correctness_model(
                "What is the capital of France?",
                "I am 80% sure it is Paris, with a 20% chance of Lyon.",
                "Paris"
            )
            .unwrap()
    );
    assert_eq!(set.iter().map(|e| e.label).collect::<Vec<_>>(), [1.0, 0.0]);
}

#[test]
fn paragraphs_come_from_summaries_or_first_samples() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let samples = samples(dir.path(), &templates);
    let (records, input) = distill::read_paragraphs(&samples).unwrap();
    assert_eq!(input, samples.join("samples.jsonl"));
    let first: Vec<&str> = records.iter().map(|r| r.paragraph.as_str()).collect();
    assert_eq!(first, ["Paris fact 0.", "Mars fact 0.", "Einstein fact 0."]);
    let error = distill::read_paragraphs(&dir.path().join("queries"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "holds a `distill-queries` stage; give the directory of a `distill-summarize` or \
             `distill-sample` stage"
        ),
        "{error}"
    );
}

#[test]
fn a_killed_stage_resumes_without_asking_again_and_ends_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let questions = dir.path().join("many.jsonl");
    let lines: String = (0..6)
        .map(|i| {
            format!(
                "{}\n",
                json!({
                    "id": format!("n{i}"),
                    "question": format!("Question number {i}?"),
                    "answer": format!("answer{i}"),
                })
            )
        })
        .collect();
    std::fs::write(&questions, lines).unwrap();
    let options = StageOptions {
        chunk_size: 2,
        ..StageOptions::default()
    };
    let run = |teacher: &Teacher, out: &Path| {
        let cx = StageContext {
            options: options.clone(),
            ..context(teacher, &templates)
        };
        distill::make_queries(&cx, &questions, out, &settings(Stage::Queries))
    };

    let whole = dir.path().join("whole");
    run(&Teacher::new(), &whole).unwrap();

    // Killed during the third chunk: its first call dies with the process.
    let out = dir.path().join("killed");
    let dying = Teacher::with(|_, key, _| {
        if key == "Question number 4?" {
            panic!("killed");
        }
        None
    });
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&dying, &out)));
    assert!(killed.is_err());
    let partial = out.join("queries.jsonl.partial");
    assert_eq!(read_lines(&partial).len(), 4);
    // ... and a record being written at that moment was torn.
    let mut text = std::fs::read_to_string(&partial).unwrap();
    text.push_str("{\"id\": \"n4\", \"que");
    std::fs::write(&partial, text).unwrap();

    let teacher = Teacher::new();
    let report = run(&teacher, &out).unwrap();
    assert!(report.resumed && !report.skipped);
    assert_eq!(
        teacher.total_calls(),
        2,
        "only the two unfinished items are asked"
    );
    assert_eq!(counts(&report), count_list(6, 4, 2, 0, 0));
    assert_eq!(
        read_lines(&out.join("queries.jsonl")),
        read_lines(&whole.join("queries.jsonl"))
    );
    assert_eq!(report.manifest.resumed.len(), 1);
    assert!(!partial.exists());
    let metrics = read_lines(&out.join("metrics.jsonl"));
    assert_eq!(metrics.last().unwrap()["items_done"], 6);

    // Finished: the same stage again asks nothing.
    let teacher = Teacher::new();
    let report = run(&teacher, &out).unwrap();
    assert!(report.skipped);
    assert_eq!(teacher.total_calls(), 0);
    // Another config is refused, with what differs.
    let cx = StageContext {
        options: options.clone(),
        ..context(&teacher, &templates)
    };
    let hotter = Settings {
        temperature: 0.9,
        ..settings(Stage::Queries)
    };
    let error = distill::make_queries(&cx, &questions, &out, &hotter)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "holds a finished `distill-queries` run that does not match this one: \
             its config differs: `settings.temperature` was 0.3, now 0.9"
        ),
        "{error}"
    );
    // --limit is part of the config too; with force the stage runs again.
    let cx = StageContext {
        options: StageOptions {
            force: true,
            ..options.clone()
        },
        ..context(&teacher, &templates)
    };
    let limited = Settings {
        limit: Some(2),
        ..settings(Stage::Queries)
    };
    let report = distill::make_queries(&cx, &questions, &out, &limited).unwrap();
    assert_eq!(counts(&report), count_list(2, 0, 2, 0, 0));
    assert_eq!(read_lines(&out.join("queries.jsonl")).len(), 2);
}

#[test]
fn bad_question_files_are_named_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.jsonl");
    for (content, expected) in [
        (
            "{\"id\": \"a\", \"question\": \"Q?\", \"answer\": \"\"}\n",
            "q.jsonl:1: record a needs a non-empty question and answer",
        ),
        (
            "{\"id\": \"a\", \"question\": \"Q?\", \"answer\": \"A\"}\n\
             {\"id\": \"a\", \"question\": \"R?\", \"answer\": \"B\"}\n",
            "q.jsonl: id \"a\" belongs to records 1 and 2; every item needs its own id",
        ),
        (
            "{\"id\": \"a\", \"question\": \"Q?\", \"answer\": \"A\", \"category\": \" \"}\n",
            "q.jsonl:1: record a has an empty `category`",
        ),
    ] {
        std::fs::write(&path, content).unwrap();
        let error = distill::read_questions(&path).unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
    }
    let teacher = Teacher::new();
    let templates = Templates::builtin().unwrap();
    let cold = Settings {
        temperature: -1.0,
        ..settings(Stage::Queries)
    };
    let questions = questions_file(dir.path(), false);
    let error = distill::make_queries(
        &context(&teacher, &templates),
        &questions,
        &dir.path().join("q"),
        &cold,
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "stage settings: temperature is -1; use a number >= 0"
    );
    let error = distill::sample_paragraphs(
        &context(&teacher, &templates),
        &dir.path().join("q"),
        &dir.path().join("s"),
        &settings(Stage::Sample),
        0,
        SampleTemplate::Icl,
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "samples per query is 0; ask for at least one"
    );
    assert_eq!(teacher.total_calls(), 0);
    let error = distill::sample_paragraphs(
        &context(&teacher, &templates),
        &dir.path().join("nowhere"),
        &dir.path().join("out"),
        &settings(Stage::Sample),
        8,
        SampleTemplate::Icl,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.starts_with(&format!(
            "cannot read {}",
            dir.path().join("nowhere/manifest.json").display()
        )),
        "{error}"
    );
}

/// A teacher whose query calls fail for every question but France's.
fn failing_queries() -> Teacher {
    Teacher::with(|task, key, _| {
        (task == Task::Query && key != "What is the capital of France?").then(|| {
            Err(LlmError::Backend {
                message: "overloaded".into(),
                retryable: false,
            })
        })
    })
}

#[test]
fn a_stage_with_most_items_failed_stays_unfinished_and_a_rerun_retries_them() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let questions = questions_file(dir.path(), true);
    let out = dir.path().join("queries");
    let failing = failing_queries();
    let error = distill::make_queries(
        &context(&failing, &templates),
        &questions,
        &out,
        &settings(Stage::Queries),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains(
            "3 of the 4 items of the `distill-queries` stage failed, more than its largest share \
             of failures (0.5), so it stays unfinished"
        ),
        "{error}"
    );
    assert!(
        error.contains("failures.jsonl.partial; run the stage again to retry the failed items"),
        "{error}"
    );
    assert!(Manifest::read(&out).unwrap().finished.is_none());
    assert!(!out.join(LOCK_FILE).exists(), "the lock is released");
    assert_eq!(read_lines(&out.join("failures.jsonl.partial")).len(), 3);
    assert!(!out.join("queries.jsonl").exists());

    // The rerun asks again for the failed items only. q4's query still names Shakespeare: one
    // failure in four is within the share, and the stage finishes.
    let teacher = Teacher::new();
    let report = distill::make_queries(
        &context(&teacher, &templates),
        &questions,
        &out,
        &settings(Stage::Queries),
    )
    .unwrap();
    assert!(report.resumed && !report.skipped);
    assert_eq!(counts(&report), count_list(4, 1, 2, 1, 2));
    // q2 and q3 once each, q4 three times; France is not asked again.
    assert_eq!(teacher.calls(Task::Query), 1 + 1 + 3);
    assert_eq!(read_lines(&out.join("queries.jsonl")).len(), 3);
    assert_eq!(read_lines(&out.join("failures.jsonl")).len(), 1);
}

#[test]
fn the_retry_budget_and_the_failure_share_are_not_part_of_a_stages_identity() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let questions = questions_file(dir.path(), true);
    let out = dir.path().join("queries");
    let run = |teacher: &Teacher, settings: &Settings| {
        distill::make_queries(&context(teacher, &templates), &questions, &out, settings)
    };
    let once = Settings {
        max_attempts: 1,
        ..settings(Stage::Queries)
    };
    // With one attempt even France's query fails (its first names Paris).
    run(&failing_queries(), &once).unwrap_err();
    // Another retry budget and failure share resume the unfinished stage.
    let generous = Settings {
        max_attempts: 5,
        max_failure_share: 1.0,
        ..settings(Stage::Queries)
    };
    let teacher = Teacher::new();
    let report = run(&teacher, &generous).unwrap();
    assert!(report.resumed);
    assert_eq!(counts(&report), count_list(4, 0, 3, 1, 5));
    assert_eq!(teacher.calls(Task::Query), 2 + 1 + 1 + 5);
    let recorded = &report.manifest.config["settings"];
    assert_eq!(
        *recorded,
        json!({"temperature": 0.3, "top_p": null, "max_tokens": 128, "seed": 0, "limit": null})
    );
    // ... and leave a finished one finished.
    let strict = Settings {
        max_attempts: 2,
        max_failure_share: 0.0,
        ..settings(Stage::Queries)
    };
    let teacher = Teacher::new();
    assert!(run(&teacher, &strict).unwrap().skipped);
    assert_eq!(teacher.total_calls(), 0);
}

#[test]
fn a_failed_forecast_drops_only_its_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let paragraphs = dir.path().join("paragraphs.jsonl");
    let lines = [
        json!({
            "id": "q1",
            "question": "What is the capital of France?",
            "answer": "Paris",
            "paragraph": "I am 80% sure it is Paris, with a 20% chance of Lyon.",
        }),
        json!({
            "id": "q2",
            "question": "Which planet is known as the Red Planet?",
            "answer": "Mars",
            "paragraph": "I do not know.",
        }),
    ];
    std::fs::write(
        &paragraphs,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let extractions = dir.path().join("extract");
    distill::extract_answers(
        &context(&Teacher::new(), &templates),
        &paragraphs,
        &extractions,
        &settings(Stage::Extract),
    )
    .unwrap();
    // Lyon's forecast never parses; Mars' (q2's gold answer) call fails.
    let teacher = Teacher::with(|task, key, _| match (task, key) {
        (Task::Forecast, "Lyon") => Some(Ok("Reasoning: hard to say.".to_string())),
        (Task::Forecast, "Mars") => Some(Err(LlmError::Backend {
            message: "overloaded".into(),
            retryable: false,
        })),
        _ => None,
    });
    let forecasts = dir.path().join("forecast");
    let report = distill::forecast_candidates(
        &context(&teacher, &templates),
        &extractions,
        &forecasts,
        &settings(Stage::Forecast),
    )
    .unwrap();
    let mut expected = count_list(2, 0, 1, 1, 2);
    expected.insert(0, ("dropped_candidates".into(), 1));
    assert_eq!(counts(&report), expected);
    let records = read_lines(&forecasts.join("forecasts.jsonl"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["candidates"], json!(["Paris", "Paris"]));
    assert_eq!(records[0]["probabilities"], json!([0.8, 0.8]));
    assert_eq!(
        records[0]["dropped_candidates"],
        json!([{
            "id": "q1",
            "step": "forecast",
            "reason": "candidate \"Lyon\": no usable answer in 3 attempts: cannot parse \
                       probability: expected a line \"Probability: <number between 0 and 1>\" \
                       (a percentage such as 70% also works); got \"Reasoning: hard to say.\"",
            "raw_text": "Reasoning: hard to say.",
            "attempts": 3,
        }])
    );
    // Without its gold answer's forecast a row cannot be written: the item fails.
    assert_eq!(
        read_lines(&forecasts.join("failures.jsonl")),
        [json!({
            "id": "q2",
            "step": "forecast",
            "reason": "candidate \"Mars\": the call failed: backend failed: overloaded",
            "attempts": 1,
        })]
    );
    let set = jsonl::read_reward_jsonl(&forecasts.join("forecast_probs.jsonl")).unwrap();
    assert_eq!(set.iter().map(|e| e.label).collect::<Vec<_>>(), [0.8, 0.8]);
}

#[test]
fn a_second_run_on_a_locked_stage_is_refused_and_a_dead_runs_lock_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let questions = questions_file(dir.path(), false);
    let out = dir.path().join("queries");
    let run = |teacher: &Teacher| {
        distill::make_queries(
            &context(teacher, &templates),
            &questions,
            &out,
            &settings(Stage::Queries),
        )
    };
    // Another run holds the directory.
    let held = OutputLock::dir(&out).unwrap();
    let teacher = Teacher::new();
    let error = run(&teacher).unwrap_err().to_string();
    let lock = out.join(LOCK_FILE);
    assert!(
        error.starts_with(&format!(
            "{}: the output this lock guards is held by process {} (since ",
            lock.display(),
            std::process::id()
        )),
        "{error}"
    );
    assert!(
        error.contains(&format!("remove {} and run again", lock.display())),
        "{error}"
    );
    assert_eq!(teacher.total_calls(), 0);
    assert!(!out.join("manifest.json").exists());
    drop(held);

    // A run that died left its lock behind: the next run takes it over and says so.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = LockHolder {
        pid: dead,
        started: "2026-01-01T00:00:00Z".into(),
    };
    std::fs::write(&lock, serde_json::to_string(&stale).unwrap()).unwrap();
    let report = run(&Teacher::new()).unwrap();
    assert_eq!(report.took_over_lock, Some(stale));
    assert_eq!(counts(&report), count_list(3, 0, 3, 0, 1));
    assert!(!lock.exists(), "released when the stage ends");
}
