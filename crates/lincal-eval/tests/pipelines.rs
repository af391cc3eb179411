//! The QA and biography pipelines on scripted models: exact scored examples worked out by hand,
//! the judge's batching, resumption after a kill without repeating calls, and failures that
//! are recorded and counted instead of dropped.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use lincal_data::artifact::{CACHE_FILE, Manifest};
use lincal_data::prompts::{ExtractionPrompt, Templates};
use lincal_data::schema::Tally;
use lincal_eval::bio::{BioEvaluation, ClaimConfidence, FactChecker, LlmDecomposer};
use lincal_eval::datasets::{QaDataset, QaQuestion, load_qa_jsonl};
use lincal_eval::judges::{ExactMatchJudge, Judge, JudgeInput, LlmJudge};
use lincal_eval::qa::QaEvaluation;
use lincal_eval::readers::{LexicalQaReader, LlmReader, Reader};
use lincal_eval::{
    ClaimExample, EvalOptions, GenerationSettings, IndexLocation, KnowledgeIndex, Method,
    PipelineError, Policy, ProgressEvent, QaExample, RunOutcome, RunStatus, ScoredExample, Stage,
    StageFailure, TeacherSettings,
};
use lincal_llm::testing::FakeLlm;
use lincal_llm::{ClientOptions, Llm, LlmClient, LlmRequest, LlmResponse, Prompt, ResponseCache};

/// The text a scripted model reads: the last chat turn, or the completion prompt.
fn prompt_text(request: &LlmRequest) -> String {
    match &request.prompt {
        Prompt::Chat(messages) => messages.last().unwrap().content.clone(),
        Prompt::Completion(text) => text.clone(),
    }
}

/// A scripted model: it answers each request with `reply` to the request's text.
fn scripted<T: Into<String>>(reply: impl Fn(&str) -> T + Send + Sync + 'static) -> FakeLlm {
    FakeLlm::new(move |request| Ok(LlmResponse::from_texts([reply(&prompt_text(request))])))
}

/// The value of the last line starting with `label` in `text`.
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .rev()
        .find_map(|line| line.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))
        .trim()
}

fn question(id: &str, question: &str, answer: &str, aliases: &[&str]) -> QaQuestion {
    let mut all = vec![answer.to_string()];
    all.extend(aliases.iter().map(|a| a.to_string()));
    QaQuestion {
        id: id.into(),
        question: question.into(),
        query: format!("Write a paragraph about {question}"),
        answer: answer.into(),
        aliases: all,
    }
}

fn dataset(questions: Vec<QaQuestion>) -> QaDataset {
    QaDataset {
        name: "handmade".into(),
        split: None,
        questions,
        files: Vec::new(),
        tally: Tally::default(),
    }
}

/// Five questions, one paragraph each (chosen by the query), covering the argmax rules.
fn five_questions() -> Vec<QaQuestion> {
    vec![
        question("q1", "capital of France", "Paris", &[]),
        question("q2", "largest Swiss city", "Zurich", &[]),
        question("q3", "the unknown thing", "Xylophone", &[]),
        question("q4", "an unreadable paragraph", "Oslo", &[]),
        question("q5", "a city in Italy", "Milan", &[]),
    ]
}

fn paragraph_for(prompt: &str) -> &'static str {
    let table = [
        (
            "capital of France",
            "It is Paris, though I give Lyon a 30% chance.",
        ),
        (
            "largest Swiss city",
            "Either Bern or Zurich, equally likely.",
        ),
        ("the unknown thing", "I cannot say."),
        ("an unreadable paragraph", "Mumble."),
        ("a city in Italy", "Rome, or perhaps Milan."),
    ];
    table
        .iter()
        .find(|(key, _)| prompt.contains(key))
        .map(|(_, paragraph)| *paragraph)
        .unwrap_or_else(|| panic!("unexpected policy prompt {prompt}"))
}

fn policy_llm() -> FakeLlm {
    scripted(paragraph_for)
}

/// Extraction and forecasts for the paragraphs above; "Mumble." never gets a parseable
/// extraction and the forecast of "Rome" never parses.
fn reader_llm() -> FakeLlm {
    scripted(|text| {
        if text.contains("what is the probability") {
            let paragraph = field(text, "Paragraph:");
            let candidate = text
                .split("probability that \"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap();
            match (paragraph, candidate) {
                (p, "Paris") if p.starts_with("It is Paris") => {
                    "Reasoning: stated.\nProbability: 0.7"
                }
                (_, "Lyon") => "Reasoning: 30% stated.\nProbability: 0.3",
                (_, "Bern" | "Zurich") => "Reasoning: even.\nProbability: 0.5",
                (_, "Rome") => "Reasoning: hmm.\nProbability: somewhere",
                (_, "Milan") => "Reasoning: perhaps.\nProbability: 0.4",
                other => panic!("unexpected forecast {other:?}"),
            }
        } else {
            match field(text, "Paragraph:") {
                "It is Paris, though I give Lyon a 30% chance." => {
                    "Reasoning: two.\nAnswers: Paris; Lyon"
                }
                "Either Bern or Zurich, equally likely." => {
                    "Reasoning: two.\nAnswers: Bern; Zurich"
                }
                "I cannot say." => "Reasoning: none given.\nAnswers: none",
                "Mumble." => "I would rather not.\nReally.",
                "Rome, or perhaps Milan." => "Reasoning: two.\nAnswers: Rome; Milan",
                other => panic!("unexpected paragraph {other:?}"),
            }
        }
    })
}

/// The pairs of a judge prompt: (question, gold, proposed), in order.
fn judge_pairs(text: &str) -> Vec<(String, String, String)> {
    let asked = text.split("### Your ").nth(1).expect("the pairs to judge");
    let values = |label: &str| -> Vec<String> {
        asked
            .lines()
            .filter_map(|line| line.strip_prefix(label))
            .map(|v| v.trim().to_string())
            .collect()
    };
    let (questions, golds, proposed) = (
        values("Question:"),
        values("Gold answer:"),
        values("Proposed answer:"),
    );
    (0..questions.len())
        .map(|i| (questions[i].clone(), golds[i].clone(), proposed[i].clone()))
        .collect()
}

/// Says Yes exactly when the proposed answer is the gold one.
fn judge_llm() -> FakeLlm {
    scripted(|text| {
        let verdicts: Vec<String> = judge_pairs(text)
            .iter()
            .enumerate()
            .map(|(i, (_, gold, proposed))| {
                format!(
                    "Verdict {}: {}",
                    i + 1,
                    if gold == proposed { "Yes" } else { "No" }
                )
            })
            .collect();
        verdicts.join("\n")
    })
}

fn teacher() -> TeacherSettings {
    TeacherSettings {
        max_attempts: 2,
        ..TeacherSettings::default()
    }
}

fn qa_example(
    id: &str,
    q: &QaQuestion,
    text: &str,
    extracted: &[&str],
    answer: Option<&str>,
    confidence: Option<f64>,
    correct: bool,
) -> QaExample {
    QaExample {
        id: id.into(),
        question: q.question.clone(),
        gold_answer: q.answer.clone(),
        generated_text: text.into(),
        extracted_answers: extracted.iter().map(|s| s.to_string()).collect(),
        answer: answer.map(String::from),
        confidence,
        correct,
        failures: Vec::new(),
    }
}

fn no_progress(_: ProgressEvent) {}

struct Models {
    policy: FakeLlm,
    reader: FakeLlm,
    judge: FakeLlm,
}

impl Models {
    /// The reader and judge models, as teachers.
    fn teachers(&self) -> QaRoles<'_> {
        QaRoles::Teachers(&self.reader, &self.judge)
    }
}

fn models() -> Models {
    Models {
        policy: policy_llm(),
        reader: reader_llm(),
        judge: judge_llm(),
    }
}

/// Who reads and judges a QA test run.
enum QaRoles<'a> {
    /// Models asked as teachers with the built-in prompts: the reader, then the judge.
    Teachers(&'a dyn Llm, &'a dyn Llm),
    /// The lexical reader and the exact-match judge: no model.
    Lexical,
}

/// A QA run of `method` on `dataset` by the `policy` model, read and judged by `roles`.
fn run_qa(
    dir: &Path,
    policy: &dyn Llm,
    roles: QaRoles,
    method: &Method,
    dataset: &QaDataset,
    progress: &dyn lincal_eval::Progress,
    options: EvalOptions,
) -> Result<RunOutcome, PipelineError> {
    let templates = Templates::builtin().unwrap();
    let (reader, judge): (Box<dyn Reader + '_>, Box<dyn Judge + '_>) = match roles {
        QaRoles::Teachers(reader, judge) => (
            Box::new(LlmReader {
                llm: reader,
                templates: &templates,
                settings: teacher(),
                extraction: ExtractionPrompt::Teacher,
            }),
            Box::new(LlmJudge {
                llm: judge,
                templates: &templates,
                settings: teacher(),
            }),
        ),
        QaRoles::Lexical => (
            Box::new(LexicalQaReader::default()),
            Box::new(ExactMatchJudge),
        ),
    };
    QaEvaluation {
        policy: Policy {
            llm: policy,
            method,
            settings: &GenerationSettings::local(),
            templates: &templates,
            summarizer: None,
        },
        reader: reader.as_ref(),
        judge: judge.as_ref(),
        model_label: "fake policy".into(),
        extra: BTreeMap::new(),
        options,
        progress,
    }
    .run(dir, dataset)
}

/// The run options with chunks of `chunk_size` items.
fn chunks_of(chunk_size: usize) -> EvalOptions {
    EvalOptions {
        chunk_size,
        ..EvalOptions::default()
    }
}

/// (answer, confidence, correct) of each scored QA item.
fn answers(outcome: &RunOutcome) -> Vec<(Option<&str>, Option<f64>, bool)> {
    outcome
        .examples
        .iter()
        .map(|e| match e {
            ScoredExample::Qa(q) => (q.answer.as_deref(), q.confidence, q.correct),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn qa_pipeline_scores_each_question_as_worked_out_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let questions = five_questions();
    let models = models();
    let method = Method::preset("LC SFT").unwrap();
    let outcome = run_qa(
        dir.path(),
        &models.policy,
        models.teachers(),
        &method,
        &dataset(questions.clone()),
        &no_progress,
        EvalOptions::default(),
    )
    .unwrap();
    assert_eq!(outcome.status, RunStatus::Ran);

    let q = &questions;
    let mut expected = vec![
        // Paris 0.7 beats Lyon 0.3; the judge says Paris is Paris.
        qa_example(
            "q1",
            &q[0],
            "It is Paris, though I give Lyon a 30% chance.",
            &["Paris", "Lyon"],
            Some("Paris"),
            Some(0.7),
            true,
        ),
        // A tie at 0.5: the first extracted answer wins, and Bern is not Zurich.
        qa_example(
            "q2",
            &q[1],
            "Either Bern or Zurich, equally likely.",
            &["Bern", "Zurich"],
            Some("Bern"),
            Some(0.5),
            false,
        ),
        // Nothing extracted: no answer, wrong.
        qa_example("q3", &q[2], "I cannot say.", &[], None, None, false),
        // Extraction never parsed: no answer, wrong, with the failure noted.
        qa_example("q4", &q[3], "Mumble.", &[], None, None, false),
        // Rome's forecast never parsed: Milan at 0.4 is the only forecast left.
        qa_example(
            "q5",
            &q[4],
            "Rome, or perhaps Milan.",
            &["Rome", "Milan"],
            Some("Milan"),
            Some(0.4),
            true,
        ),
    ];
    let failures = |example: &ScoredExample| -> Vec<StageFailure> { example.failures().to_vec() };
    let got: Vec<StageFailure> = outcome.examples.iter().flat_map(failures).collect();
    assert_eq!(
        got.iter().map(|f| f.stage).collect::<Vec<_>>(),
        [Stage::Extraction, Stage::Forecast]
    );
    assert!(
        got[0]
            .message
            .starts_with("no usable answer in 2 attempts: "),
        "{}",
        got[0].message
    );
    assert!(got[1].message.contains("probability"), "{}", got[1].message);
    expected[3].failures = vec![got[0].clone()];
    expected[4].failures = vec![got[1].clone()];
    let expected: Vec<ScoredExample> = expected.into_iter().map(ScoredExample::Qa).collect();
    assert_eq!(outcome.examples, expected);

    // Two of five correct; q3 and q4 count as wrong at confidence 1.
    let results = &outcome.results;
    assert_eq!(results.metrics.accuracy.value, 0.4);
    assert_eq!(
        (results.counts.empty_extractions, results.counts.correct),
        (2, 2)
    );
    assert_eq!(
        results.counts.failures,
        BTreeMap::from([(Stage::Extraction, 1), (Stage::Forecast, 1)])
    );
    // Forecasts only for extracted answers (the gold answer is not forecast): 2+2+2 calls, one
    // of them asked twice; the judge saw the three answers in one call.
    let forecasts = models
        .reader
        .requests()
        .iter()
        .filter(|r| prompt_text(r).contains("what is the probability"))
        .count();
    assert_eq!(forecasts, 7);
    assert_eq!(models.judge.requests().len(), 1);
    let pairs = judge_pairs(&prompt_text(&models.judge.requests()[0]));
    assert_eq!(
        pairs
            .iter()
            .map(|(_, g, p)| (g.as_str(), p.as_str()))
            .collect::<Vec<_>>(),
        [("Paris", "Paris"), ("Zurich", "Bern"), ("Milan", "Milan")]
    );
    // Every file of the run is there, and failures.jsonl names both failures.
    for name in [
        "generations.jsonl",
        "extractions.jsonl",
        "forecasts.jsonl",
        "judgments.jsonl",
        "examples.jsonl",
        "results.json",
        "report.html",
        "reliability.png",
        "failures.jsonl",
    ] {
        assert!(dir.path().join(name).is_file(), "{name}");
    }
    let failure_lines: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("failures.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(
        failure_lines
            .iter()
            .map(|f| (
                f["id"].as_str().unwrap(),
                f["step"].as_str().unwrap(),
                f["attempts"].as_u64().unwrap()
            ))
            .collect::<Vec<_>>(),
        [("q4", "answer extraction", 2), ("q5", "forecast", 2)]
    );
    assert_eq!(failure_lines[0]["raw_text"], "I would rather not.\nReally.");
    let manifest = Manifest::read(dir.path()).unwrap();
    assert!(manifest.finished.is_some());
    assert_eq!(manifest.counts["failures"], 2);
}

#[test]
fn a_method_without_confidence_takes_the_first_answer_at_confidence_one() {
    let dir = tempfile::tempdir().unwrap();
    let questions = five_questions();
    let models = models();
    let method = Method::preset("Factuality SFT").unwrap();
    assert!(!method.states_confidence);
    let outcome = run_qa(
        dir.path(),
        &models.policy,
        models.teachers(),
        &method,
        &dataset(questions),
        &no_progress,
        EvalOptions::default(),
    )
    .unwrap();
    assert_eq!(
        answers(&outcome),
        [
            (Some("Paris"), None, true),
            (Some("Bern"), None, false),
            (None, None, false),
            (None, None, false),
            (Some("Rome"), None, false)
        ]
    );
    assert!(
        !models
            .reader
            .requests()
            .iter()
            .any(|r| prompt_text(r).contains("what is the probability"))
    );
    assert!(!dir.path().join("forecasts.jsonl").exists());
    // Scored at confidence 1, so ECE is 1 - accuracy.
    let metrics = &outcome.results.metrics;
    assert_eq!(metrics.accuracy.value, 0.2);
    assert!(
        (metrics.ece.value - 0.8).abs() < 1e-12,
        "{}",
        metrics.ece.value
    );
}

#[test]
fn the_llm_judge_asks_ten_pairs_per_call_in_order() {
    let templates = Templates::builtin().unwrap();
    let judge_model = judge_llm();
    let judge = LlmJudge {
        llm: &judge_model,
        templates: &templates,
        settings: teacher(),
    };
    let aliases: Vec<Vec<String>> = (0..23).map(|i| vec![format!("gold{i}")]).collect();
    let proposed: Vec<String> = (0..23)
        .map(|i| {
            if i % 3 == 0 {
                format!("gold{i}")
            } else {
                format!("other{i}")
            }
        })
        .collect();
    let ids: Vec<String> = (0..23).map(|i| format!("q{i}")).collect();
    let questions: Vec<String> = (0..23).map(|i| format!("Question {i}?")).collect();
    let inputs: Vec<JudgeInput<'_>> = (0..23)
        .map(|i| JudgeInput {
            id: &ids[i],
            question: &questions[i],
            gold: &aliases[i][0],
            aliases: &aliases[i],
            proposed: &proposed[i],
        })
        .collect();
    let verdicts: Vec<bool> = judge
        .judge(&inputs)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(verdicts, (0..23).map(|i| i % 3 == 0).collect::<Vec<_>>());
    let calls: Vec<Vec<(String, String, String)>> = judge_model
        .requests()
        .iter()
        .map(|r| judge_pairs(&prompt_text(r)))
        .collect();
    assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 3]);
    for (call, range) in calls.iter().zip([0..10, 10..20, 20..23]) {
        let expected: Vec<(String, String, String)> = range
            .map(|i| {
                (
                    questions[i].clone(),
                    aliases[i][0].clone(),
                    proposed[i].clone(),
                )
            })
            .collect();
        assert_eq!(*call, expected);
    }
}

#[test]
fn a_judge_reply_without_every_verdict_fails_its_whole_batch() {
    let templates = Templates::builtin().unwrap();
    let judge_model = FakeLlm::new(|_| Ok(LlmResponse::from_texts(["Verdict 1: Yes"])));
    let judge = LlmJudge {
        llm: &judge_model,
        templates: &templates,
        settings: teacher(),
    };
    let aliases = vec!["a".to_string()];
    let inputs: Vec<JudgeInput<'_>> = ["x", "y"]
        .iter()
        .map(|id| JudgeInput {
            id,
            question: "Q?",
            gold: "a",
            aliases: &aliases,
            proposed: "a",
        })
        .collect();
    let verdicts = judge.judge(&inputs).unwrap();
    for verdict in &verdicts {
        let failure = verdict.as_ref().unwrap_err();
        assert_eq!(failure.stage, Stage::Judge);
        assert!(failure.message.contains("missing 2"), "{}", failure.message);
        assert_eq!(failure.attempts, 2);
    }
}

#[test]
fn exact_match_judge_accepts_any_alias_after_normalising() {
    let aliases = vec!["New York City".to_string(), "Big Apple".to_string()];
    let input = |proposed| JudgeInput {
        id: "q",
        question: "Which city?",
        gold: "New York City",
        aliases: &aliases,
        proposed,
    };
    let verdicts: Vec<bool> = ExactMatchJudge
        .judge(&[
            input("the Big Apple"),
            input("new york city."),
            input("New York"),
            input("Boston"),
        ])
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(verdicts, [true, true, false, false]);
}

#[test]
fn lexical_reader_with_exact_judge_needs_no_model_but_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let questions = vec![
        question("q1", "capital of France", "Paris", &["City of Light"]),
        question("q2", "largest Swiss city", "Zurich", &[]),
        question("q3", "a city in Italy", "Milan", &[]),
        question("q4", "the unknown thing", "Oslo", &[]),
        question("q5", "the city of lights", "Paris", &["City of Light"]),
    ];
    let policy = scripted(|text| {
        let table = [
            ("capital of France", "Paris is the capital of France."),
            ("largest Swiss city", "It is likely Zurich."),
            ("a city in Italy", "I am 40% sure it is Milan."),
            ("the unknown thing", "I cannot say."),
            ("the city of lights", "They call it the City of Light."),
        ];
        table.iter().find(|(key, _)| text.contains(key)).unwrap().1
    });
    let outcome = run_qa(
        dir.path(),
        &policy,
        QaRoles::Lexical,
        &Method::preset("LC SFT").unwrap(),
        &dataset(questions),
        &no_progress,
        EvalOptions::default(),
    )
    .unwrap();
    let likely = lincal_data::parse::HedgeTable::default()
        .probability("likely")
        .unwrap();
    assert_eq!(likely, 0.75);
    assert_eq!(
        answers(&outcome),
        [
            (Some("Paris"), Some(1.0), true),
            (Some("Zurich"), Some(0.75), true),
            (Some("Milan"), Some(0.4), true),
            (None, None, false),
            // Found through its alias.
            (Some("City of Light"), Some(1.0), true),
        ]
    );
}

/// A progress hook that panics when `when` happens: the run stops there as if killed.
fn kill_at(when: ProgressEvent) -> impl Fn(ProgressEvent) {
    move |event| {
        if event == when {
            panic!("killed at {event:?}");
        }
    }
}

/// A scripted model behind a client with the run's response cache, as the CLI sets it up.
fn cached(backend: Arc<FakeLlm>, dir: &Path) -> LlmClient {
    let cache = ResponseCache::open(dir.join(CACHE_FILE)).unwrap();
    LlmClient::new(backend, ClientOptions::default()).with_cache(Arc::new(cache))
}

#[test]
fn a_killed_run_resumes_and_a_finished_one_makes_no_call() {
    let dir = tempfile::tempdir().unwrap();
    let questions = five_questions();
    let data = dataset(questions.clone());
    let method = Method::preset("LC RL").unwrap();
    // Each run gets fresh scripted models (counting their calls) behind the same cache.
    let attempt = |progress: &dyn lincal_eval::Progress, options: EvalOptions| {
        let backends = [
            Arc::new(policy_llm()),
            Arc::new(reader_llm()),
            Arc::new(judge_llm()),
        ];
        let [policy, reader, judge] = backends.clone().map(|b| cached(b, dir.path()));
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            run_qa(
                dir.path(),
                &policy,
                QaRoles::Teachers(&reader, &judge),
                &method,
                &data,
                progress,
                options,
            )
            .unwrap()
        }));
        let calls = backends.map(|b| b.requests().len());
        (outcome.ok(), calls)
    };
    // Killed once the first two questions' forecasts are committed.
    let (outcome, first_calls) = attempt(
        &kill_at(ProgressEvent::Advanced {
            stage: Stage::Forecast,
            by: 2,
        }),
        chunks_of(2),
    );
    assert!(outcome.is_none());
    // Generation 5; extraction 5 and a second try of q4's; forecasts of q1 and q2: 4.
    assert_eq!(first_calls, [5, 6 + 4, 0]);
    assert!(Manifest::read(dir.path()).unwrap().finished.is_none());
    assert!(dir.path().join("forecasts.jsonl.partial").exists());

    // Resumed: generation and extraction are done; the forecasts of q3-q5 are asked (q3 and
    // q4 have no answer, q5 has two, Rome twice); the judge once.
    let (outcome, resumed_calls) = attempt(&no_progress, chunks_of(2));
    let outcome = outcome.unwrap();
    assert_eq!(outcome.status, RunStatus::Resumed);
    assert_eq!(resumed_calls, [0, 3, 1]);

    // The same run, uninterrupted, in another directory gives the same examples.
    let fresh = tempfile::tempdir().unwrap();
    let models = models();
    let uninterrupted = run_qa(
        fresh.path(),
        &models.policy,
        models.teachers(),
        &method,
        &data,
        &no_progress,
        chunks_of(2),
    )
    .unwrap();
    assert_eq!(outcome.examples, uninterrupted.examples);

    // Finished: nothing is asked, the results are read back.
    let (again, calls) = attempt(&no_progress, chunks_of(2));
    let again = again.unwrap();
    assert_eq!(again.status, RunStatus::AlreadyFinished);
    assert_eq!(calls, [0, 0, 0]);
    assert_eq!(again.examples, outcome.examples);
    assert_eq!(again.results, outcome.results);

    // --force redoes the run; the response cache answers every call.
    let (forced, calls) = attempt(
        &no_progress,
        EvalOptions {
            force: true,
            ..chunks_of(2)
        },
    );
    let forced = forced.unwrap();
    assert_eq!(forced.status, RunStatus::Ran);
    assert_eq!(forced.examples, outcome.examples);
    assert_eq!(calls, [0, 0, 0]);
}

#[test]
fn a_run_directory_of_another_run_is_refused_with_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(five_questions());
    let models = models();
    let run = |method: &str| {
        run_qa(
            dir.path(),
            &models.policy,
            models.teachers(),
            &Method::preset(method).unwrap(),
            &data,
            &no_progress,
            EvalOptions::default(),
        )
    };
    run("LC SFT").unwrap();
    let error = run("LC RL").unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("does not match this one") && message.contains("--force"),
        "{message}"
    );
    assert!(message.contains("LC RL"), "{message}");
}

#[test]
fn progress_counts_every_item_of_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let events = std::sync::Mutex::new(Vec::new());
    let record = |event: ProgressEvent| events.lock().unwrap().push(event);
    let models = models();
    run_qa(
        dir.path(),
        &models.policy,
        models.teachers(),
        &Method::preset("LC SFT").unwrap(),
        &dataset(five_questions()),
        &record,
        chunks_of(2),
    )
    .unwrap();
    let events = events.into_inner().unwrap();
    for stage in [
        Stage::Generation,
        Stage::Extraction,
        Stage::Forecast,
        Stage::Judge,
    ] {
        assert!(
            events.contains(&ProgressEvent::Started {
                stage,
                total: 5,
                done: 0
            }),
            "{stage:?}"
        );
        let advanced: usize = events
            .iter()
            .filter_map(|e| match e {
                ProgressEvent::Advanced { stage: s, by } if *s == stage => Some(*by),
                _ => None,
            })
            .sum();
        assert_eq!(advanced, 5, "{stage:?}");
        assert!(events.contains(&ProgressEvent::Finished { stage }));
    }
}

#[test]
fn qa_jsonl_datasets_read_queries_and_aliases_and_name_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trivia.jsonl");
    std::fs::write(
        &path,
        "{\"id\": \"a\", \"question\": \"Q1?\", \"answer\": \"X\", \"aliases\": [\"X\", \"ex\"]}\n\
         {\"id\": \"b\", \"question\": \"Q2?\", \"answer\": \"Y\", \"query\": \
         \"Write about Q2.\"}\n",
    )
    .unwrap();
    let data = load_qa_jsonl(&path).unwrap();
    assert_eq!(data.name, "trivia");
    assert_eq!(data.questions[0].query, "Q1?");
    assert_eq!(data.questions[0].aliases, ["X", "ex"]);
    assert_eq!(data.questions[1].query, "Write about Q2.");
    std::fs::write(
        &path,
        "{\"id\": \"a\", \"question\": \"Q1?\", \"answer\": \"X\"}\n\
         {\"id\": \"a\", \"question\": \"Q2?\", \"answer\": \"\"}\n",
    )
    .unwrap();
    let error = load_qa_jsonl(&path).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "{}:2: record a needs a non-empty question and answer",
            path.display()
        )
    );
}

// ---- biographies ------------------------------------------------------------------------

const KNOWLEDGE: &str = concat!(
    r#"{"id": "ada", "title": "Ada Lovelace", "text": "Ada Lovelace was an English "#,
    r#"mathematician, born in London in 1815, who wrote the first published computer program."}"#,
    "\n",
    r#"{"id": "turing", "title": "Alan Turing", "text": "Alan Turing was an English "#,
    r#"mathematician and a founder of computer science."}"#,
    "\n",
);

fn bio_policy() -> FakeLlm {
    scripted(|text| {
        if text.contains("Ada Lovelace") {
            "Ada Lovelace was an English mathematician. I am 80% sure she was born in 1815, \
             and 20% sure it was 1816. She was brilliant."
        } else {
            "Alan Turing was a mathematician."
        }
    })
}

/// Claims for Ada (a group of alternatives, a subjective claim); nothing parseable for Turing.
fn decomposer_llm() -> FakeLlm {
    scripted(|text| {
        if field(text, "Person:") == "Ada Lovelace" {
            r#"[
  {"claim": "Ada Lovelace was English.", "type": "objective", "confidence": "direct"},
  {"alternatives": [
    {"claim": "Ada Lovelace was born in 1815.", "type": "objective", "confidence": "80% sure"},
    {"claim": "Ada Lovelace was born in 1816.", "type": "objective", "confidence": "20% sure"}
  ]},
  {"claim": "Ada Lovelace was brilliant.", "type": "subjective"}
]"#
        } else {
            "Sorry, I cannot list claims."
        }
    })
}

/// True when the passages it was shown back the claim's year or nationality.
fn checker_llm() -> FakeLlm {
    scripted(|text| {
        let claim = field(text, "Statement:");
        let passages = text.split("Statement:").next().unwrap();
        let supported = ["1815", "English"]
            .iter()
            .any(|w| claim.contains(w) && passages.contains(w));
        if supported { "True" } else { "False" }
    })
}

/// The models of a biography run: the policy, the decomposer, the confidence model for
/// wording the hedge table does not know (if any) and the fact checker.
struct BioModels<'a> {
    policy: &'a dyn Llm,
    decomposer: &'a dyn Llm,
    confidence: Option<&'a dyn Llm>,
    checker: &'a dyn Llm,
}

/// A biography run of LC SFT about `entities` in `run_dir`, claims checked against the
/// `knowledge` JSONL file.
fn run_bio(run_dir: &Path, models: BioModels, entities: &[&str], knowledge: &Path) -> RunOutcome {
    let index = KnowledgeIndex::open(knowledge, IndexLocation::Memory).unwrap();
    let templates = Templates::builtin().unwrap();
    let decomposer = LlmDecomposer {
        llm: models.decomposer,
        templates: &templates,
        settings: teacher(),
    };
    let entities: Vec<String> = entities.iter().map(|e| e.to_string()).collect();
    BioEvaluation {
        policy: Policy {
            llm: models.policy,
            method: &Method::preset("LC SFT").unwrap(),
            settings: &GenerationSettings::local(),
            templates: &templates,
            summarizer: None,
        },
        decomposer: &decomposer,
        confidence: ClaimConfidence {
            lexical: Default::default(),
            llm: models.confidence,
            templates: &templates,
            settings: teacher(),
        },
        checker: FactChecker {
            llm: models.checker,
            templates: &templates,
            settings: teacher(),
            index: &index,
            passages: 5,
            source_label: "people.jsonl".into(),
        },
        dataset_name: "handmade people".into(),
        model_label: "fake".into(),
        extra: BTreeMap::new(),
        options: EvalOptions::default(),
        progress: &no_progress,
    }
    .run(run_dir, &entities, &[knowledge])
    .unwrap()
}

#[test]
fn bio_pipeline_checks_claims_against_retrieved_passages_and_scores_groups_once() {
    let dir = tempfile::tempdir().unwrap();
    let knowledge = dir.path().join("people.jsonl");
    std::fs::write(&knowledge, KNOWLEDGE).unwrap();
    let (policy, decomposer, checker) = (bio_policy(), decomposer_llm(), checker_llm());
    let run_dir = dir.path().join("run");
    let models = BioModels {
        policy: &policy,
        decomposer: &decomposer,
        confidence: None,
        checker: &checker,
    };
    let outcome = run_bio(
        &run_dir,
        models,
        &["Ada Lovelace", "Alan Turing"],
        &knowledge,
    );

    let claim = |id: &str,
                 claim: &str,
                 core: &str,
                 group: Option<&str>,
                 confidence: f64,
                 supported: bool| {
        ScoredExample::Claim(ClaimExample {
            id: id.into(),
            entity: "Ada Lovelace".into(),
            claim: claim.into(),
            core_claim: Some(core.into()),
            group: group.map(String::from),
            confidence: Some(confidence),
            supported,
            failures: Vec::new(),
        })
    };
    assert_eq!(
        outcome.examples,
        [
            claim(
                "Ada Lovelace#1",
                "Ada Lovelace was English.",
                "Ada Lovelace was English.",
                None,
                1.0,
                true
            ),
            claim(
                "Ada Lovelace#2.1",
                "Ada Lovelace was born in 1815. [0.8]",
                "Ada Lovelace was born in 1815.",
                Some("2"),
                0.8,
                true
            ),
            claim(
                "Ada Lovelace#2.2",
                "Ada Lovelace was born in 1816. [0.2]",
                "Ada Lovelace was born in 1816.",
                Some("2"),
                0.2,
                false
            ),
        ]
    );
    // Every checked claim saw Ada's page, and only hers.
    let checks = checker.requests();
    assert_eq!(checks.len(), 3);
    for request in &checks {
        let text = prompt_text(request);
        assert!(
            text.contains("Title: Ada Lovelace") && text.contains("born in London in 1815"),
            "{text}"
        );
        assert!(!text.contains("Alan Turing"), "{text}");
    }
    // The group counts once, through its most confident claim: 2 of 2 scored claims supported.
    let results = &outcome.results;
    assert_eq!(
        (results.counts.scored, results.counts.merged_alternatives),
        (2, 1)
    );
    assert_eq!(results.metrics.accuracy.value, 1.0);
    // Turing's decomposition never parsed: counted and written to failures.jsonl.
    let extra = &results.settings.extra;
    assert_eq!(extra["failed decompositions"], 1);
    assert_eq!(extra["people without a checkable claim"], 1);
    // Per biography: Ada's one biography averaged, Turing's counted as left out.
    let per_response = results.per_response.as_ref().unwrap();
    assert_eq!(
        (
            per_response.averages.subjects,
            per_response.without_items,
            per_response.averages.accuracy.value
        ),
        (1, 1, 1.0)
    );
    assert_eq!(extra["subjective claims (not checked)"], 1);
    let failures = std::fs::read_to_string(run_dir.join("failures.jsonl")).unwrap();
    let failure: serde_json::Value =
        serde_json::from_str(failures.lines().next().unwrap()).unwrap();
    assert_eq!(
        (failure["id"].as_str(), failure["step"].as_str()),
        (Some("Alan Turing"), Some("claim decomposition"))
    );
    assert_eq!(failure["raw_text"], "Sorry, I cannot list claims.");
}

#[test]
fn unknown_hedges_fall_back_to_a_model_or_to_even_odds_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let knowledge = dir.path().join("people.jsonl");
    std::fs::write(&knowledge, KNOWLEDGE).unwrap();
    let policy = scripted(|_| "Alan Turing was English, my gut says.");
    let decomposer = scripted(|_| {
        concat!(
            r#"[{"claim": "Alan Turing was English.", "type": "objective", "#,
            r#""confidence": "my gut says"}]"#
        )
    });
    let confidence_model = scripted(|text| {
        assert!(text.contains("\"my gut says\""));
        "Reasoning: a gut feeling.\nProbability: 0.6"
    });
    let checker = checker_llm();
    let run = |run_dir: &Path, confidence: Option<&dyn Llm>| {
        let models = BioModels {
            policy: &policy,
            decomposer: &decomposer,
            confidence,
            checker: &checker,
        };
        run_bio(run_dir, models, &["Alan Turing"], &knowledge)
    };
    let with_model = run(&dir.path().join("a"), Some(&confidence_model));
    assert_eq!(with_model.examples[0].confidence(), Some(0.6));
    assert!(with_model.examples[0].failures().is_empty());
    let without = run(&dir.path().join("b"), None);
    assert_eq!(without.examples[0].confidence(), Some(0.5));
    let note = &without.examples[0].failures()[0];
    assert_eq!(note.stage, Stage::Filter);
    assert!(
        note.message
            .contains("\"my gut says\" is not in the hedge table"),
        "{}",
        note.message
    );
    assert_eq!(without.results.counts.failures[&Stage::Filter], 1);
}

/// Direct Summary Eval: 8 few-shot samples per question at temperature 0.7, each from its own
/// seed and cut at its blank line, summarised by the summarizer at its settings' temperature;
/// the summary is the paragraph read and judged. A question whose samples all failed fails
/// without a summary; the method without a summarizer (or another method with one) is
/// refused before anything is asked.
#[test]
fn direct_summary_eval_summarises_eight_samples_per_question() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    // Sample k of the France question names Paris for k < 6 and Lyon after; the ICL sample
    // runs on into a next example, which the blank line cuts. The other question's calls fail.
    let policy = FakeLlm::new(|request| {
        let text = prompt_text(request);
        if !text.contains("capital of France") {
            return Err(lincal_llm::LlmError::Backend {
                message: "down".into(),
                retryable: false,
            });
        }
        let city = if request.params.seed % 8 < 6 {
            "Paris"
        } else {
            "Lyon"
        };
        Ok(LlmResponse::from_texts([format!(
            "The capital is {city}.\n\nQuestion: next"
        )]))
    });
    let summarizer = scripted(|text| {
        assert!(text.contains("The capital is Paris.") && !text.contains("Question: next"));
        "Statement: I am 75% sure the capital is Paris, and 25% sure it is Lyon."
    });
    let summary_settings = TeacherSettings {
        temperature: 0.3,
        ..teacher()
    };
    let method = Method::preset("direct summary eval").unwrap();
    assert_eq!(
        (method.name.as_str(), method.states_confidence),
        ("Direct Summary Eval", true)
    );
    let evaluation = |summarizer: Option<&dyn Llm>, method: &Method, dir: &Path| {
        QaEvaluation {
            policy: Policy {
                llm: &policy,
                method,
                settings: &GenerationSettings::local(),
                templates: &templates,
                summarizer: summarizer.map(|llm| lincal_eval::Summarizer {
                    llm,
                    settings: &summary_settings,
                }),
            },
            reader: &LexicalQaReader::default(),
            judge: &ExactMatchJudge,
            model_label: "fake policy".into(),
            extra: BTreeMap::new(),
            options: EvalOptions::default(),
            progress: &no_progress,
        }
        .run(
            dir,
            &dataset(vec![
                question("q1", "capital of France", "Paris", &[]),
                question("q2", "largest Swiss city", "Zurich", &[]),
            ]),
        )
    };
    let err = evaluation(None, &method, &dir.path().join("none")).unwrap_err();
    assert!(
        err.to_string().contains("give it a summarizer model"),
        "{err}"
    );
    let other = Method::preset("LC SFT").unwrap();
    let err = evaluation(Some(&summarizer), &other, &dir.path().join("other")).unwrap_err();
    assert!(
        err.to_string().contains("leave the summarizer out"),
        "{err}"
    );
    assert!(policy.requests().is_empty());

    let outcome = evaluation(Some(&summarizer), &method, &dir.path().join("run")).unwrap();
    let samples = policy.requests();
    assert_eq!(samples.len(), 16);
    assert!(samples.iter().all(|r| r.params.temperature == 0.7));
    let seeds: std::collections::BTreeSet<u64> = samples.iter().map(|r| r.params.seed).collect();
    assert_eq!(seeds.len(), 16);
    let summaries = summarizer.requests();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].params.temperature, 0.3);
    let text = prompt_text(&summaries[0]);
    assert_eq!(
        text.matches("The capital is").count(),
        8,
        "every sample of q1 is summarised: {text}"
    );
    match &outcome.examples[0] {
        ScoredExample::Qa(q) => {
            assert_eq!(
                q.generated_text,
                "I am 75% sure the capital is Paris, and 25% sure it is Lyon."
            );
            assert_eq!(q.answer.as_deref(), Some("Paris"));
            assert!(q.correct);
        }
        other => panic!("{other:?}"),
    }
    match &outcome.examples[1] {
        ScoredExample::Qa(q) => {
            assert_eq!((q.answer.as_deref(), q.correct), (None, false));
            assert!(
                q.failures[0]
                    .message
                    .contains("none of the 8 samples to summarise was usable"),
                "{:?}",
                q.failures
            );
        }
        other => panic!("{other:?}"),
    }
}
