//! The offline teachers on hand-made inputs: the query template, the summariser by agreement
//! (its shares with ties, a single sample, samples without an answer), the forecaster on
//! stated percentages and hedges, and the exact-match binary labeller; and the stages that
//! have no offline teacher, or are given the wrong extractor, say so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lincal_data::artifact::Manifest;
use lincal_data::parse::LexicalReader;
use lincal_data::prompts::{ExtractionPrompt, ExtractionUse, Templates};
use lincal_data::schema::jsonl;
use lincal_distill::offline::{
    AnswerShare, agreement_summary, answer_shares, exact_match_label, offline_query,
};
use lincal_distill::{
    self as distill, SampleAnswer, SampleTemplate, Settings, Stage, StageContext, StageOptions,
    Teacher,
};
use lincal_llm::testing::FakeLlm;
use lincal_llm::{LlmResponse, Prompt};
use serde_json::{Value, json};

fn write_lines(path: &Path, lines: &[Value]) -> PathBuf {
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn context<'a>(teacher: Teacher<'a>, templates: &'a Templates) -> StageContext<'a> {
    StageContext {
        teacher,
        templates,
        extraction: ExtractionPrompt::Teacher,
        options: StageOptions::default(),
    }
}

fn settings(stage: Stage) -> Settings {
    Settings {
        max_attempts: 3,
        ..stage.offline_default_settings()
    }
}

/// An extractor that answers the teacher extraction prompt from a table of paragraphs.
fn extractor(replies: &[(&str, &str)]) -> FakeLlm {
    let replies: HashMap<String, String> = replies
        .iter()
        .map(|(paragraph, reply)| (paragraph.to_string(), reply.to_string()))
        .collect();
    FakeLlm::new(move |request| {
        let Prompt::Chat(messages) = &request.prompt else {
            panic!("the extractor is asked with a chat")
        };
        let user = &messages.last().unwrap().content;
        let paragraph = user
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("Paragraph: "))
            .unwrap();
        Ok(LlmResponse::from_texts([replies[paragraph].clone()]))
    })
}

#[test]
fn the_offline_query_writer_asks_the_question_in_a_fixed_request() {
    assert_eq!(
        offline_query(" What is the capital of France? "),
        "Write a short paragraph that answers this question: What is the capital of France?"
    );
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let questions = write_lines(
        &dir.path().join("questions.jsonl"),
        &[
            json!({
                "id": "q1",
                "question": "What is the capital of France?",
                "answer": "Paris",
                "source": "test",
            }),
            json!({
                "id": "q2",
                "question": "Is Paris or Lyon the capital of France?",
                "answer": "Paris",
                "source": "test",
            }),
            json!({
                "id": "q3",
                "question": "He proposed general relativity",
                "answer": "Einstein",
                "source": "jeopardy",
                "category": "SCIENTISTS",
            }),
            json!({
                "id": "q4",
                "question": "Which planet is known as the Red Planet?",
                "answer": "Mars",
                "source": "test",
            }),
        ],
    );
    let out = dir.path().join("queries");
    let report = distill::make_queries(
        &context(Teacher::Offline { extractor: None }, &templates),
        &questions,
        &out,
        &settings(Stage::Queries),
    )
    .unwrap();
    assert_eq!(report.manifest.counts["failed"], 2);
    let queries: Vec<Value> = read_lines(&out.join("queries.jsonl"))
        .iter()
        .map(|record| record["query"].clone())
        .collect();
    assert_eq!(
        queries,
        [
            "Write a short paragraph that answers this question: What is the capital of France?",
            "Write a short paragraph that answers this question: \
             Which planet is known as the Red Planet?"
        ]
    );
    let failures = read_lines(&out.join("failures.jsonl"));
    assert_eq!(
        failures[0],
        json!({
            "id": "q2",
            "step": "query",
            "reason": "the offline query holds the question whole: \
                       it gives the answer away (it contains \"Paris\")",
            "attempts": 0,
        })
    );
    assert_eq!(failures[1]["id"], "q3");
    assert!(
        failures[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("a Jeopardy clue needs a model to rephrase it")
    );
    let config = &report.manifest.config;
    assert_eq!(
        config["model"],
        json!({"backend": "offline", "model": "query-template"})
    );
    assert_eq!(
        config["query_template"],
        "Write a short paragraph that answers this question: {question}"
    );

    // Another teacher is another config: refused, like any change.
    let model = FakeLlm::new(|_| unreachable!("nothing is asked"));
    let error = distill::make_queries(
        &context(Teacher::Model(&model), &templates),
        &questions,
        &out,
        &settings(Stage::Queries),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains(
            "holds a finished `distill-queries` run that does not match this one: \
             its config differs: `model.backend` was \"offline\", now \"fake\""
        ),
        "{error}"
    );
}

fn answers(answers: &[&str]) -> Vec<SampleAnswer> {
    answers
        .iter()
        .map(|answer| match *answer {
            "-" => SampleAnswer::NoAnswer,
            "!" => SampleAnswer::Failed("the extraction failed".into()),
            answer => SampleAnswer::Answer(answer.into()),
        })
        .collect()
}

fn share(answer: &str, samples: usize, percent: u32) -> AnswerShare {
    AnswerShare {
        answer: answer.into(),
        samples,
        percent,
    }
}

#[test]
fn the_summariser_by_agreement_states_each_answers_share_of_the_samples() {
    // Equal answers by normal form are one group, spelled as first seen; a tie keeps the order
    // first seen.
    let shares = answer_shares(&answers(&["Paris", "Lyon", "paris.", "Lyon", "Marseille"]));
    assert_eq!(
        shares,
        [
            share("Paris", 2, 40),
            share("Lyon", 2, 40),
            share("Marseille", 1, 20)
        ]
    );
    let summary = agreement_summary(&shares);
    assert_eq!(
        summary,
        "I am 40% sure that the answer is Paris. It may instead be Lyon (40%) or Marseille (20%)."
    );
    // The forecaster reads the same shares back.
    assert_eq!(
        LexicalReader::default().forecast(&summary, &["Paris", "Lyon", "Marseille"]),
        [0.4, 0.4, 0.2]
    );
    let tied = answer_shares(&answers(&["Lyon", "Paris", "Paris", "Lyon"]));
    assert_eq!(tied, [share("Lyon", 2, 50), share("Paris", 2, 50)]);
    assert_eq!(
        agreement_summary(&tied),
        "I am 50% sure that the answer is Lyon. It may instead be Paris (50%)."
    );

    // A single sample is certain.
    let single = answer_shares(&answers(&["Washington, D.C."]));
    assert_eq!(single, [share("Washington, D.C.", 1, 100)]);
    assert_eq!(
        agreement_summary(&single),
        "I am 100% sure that the answer is Washington, D.C."
    );

    // Samples without an answer count and lower the shares; failed extractions do not count.
    let partial = answer_shares(&answers(&["Paris", "-", "!", "Paris", "-", "Nice", "!"]));
    assert_eq!(partial, [share("Paris", 2, 40), share("Nice", 1, 20)]);
    // Shares are rounded to whole percents, and four alternatives are listed in order.
    let thirds = answer_shares(&answers(&["A", "B", "C", "D", "D", "E"]));
    assert_eq!(
        agreement_summary(&thirds),
        "I am 33% sure that the answer is D. \
         It may instead be A (17%), B (17%), C (17%) or E (17%)."
    );
    assert_eq!(
        agreement_summary(&answer_shares(&answers(&["-", "!", "-"]))),
        "I do not know the answer to this question."
    );
}

/// Finished queries and samples for France (four samples) and Mars (four samples).
fn sample_dir(dir: &Path, templates: &Templates) -> PathBuf {
    let questions = write_lines(
        &dir.join("questions.jsonl"),
        &[
            json!({
                "id": "q1",
                "question": "What is the capital of France?",
                "answer": "Paris",
                "source": "test",
            }),
            json!({
                "id": "q2",
                "question": "Which planet is known as the Red Planet?",
                "answer": "Mars",
                "source": "test",
            }),
        ],
    );
    let queries = dir.join("queries");
    distill::make_queries(
        &context(Teacher::Offline { extractor: None }, templates),
        &questions,
        &queries,
        &settings(Stage::Queries),
    )
    .unwrap();
    let drawn: Mutex<HashMap<bool, usize>> = Mutex::default();
    let base = FakeLlm::new(move |request| {
        let Prompt::Completion(prompt) = &request.prompt else {
            panic!("samples are completions")
        };
        let france = prompt.contains("capital of France");
        let mut drawn = drawn.lock().unwrap();
        let index = drawn.entry(france).or_default();
        let samples = if france {
            [
                "Paris is the capital of France.",
                "Lyon is the capital of France.",
                "The capital is Paris.",
                "France has many cities.",
            ]
        } else {
            [
                "Mars is the red planet.",
                "The red planet is Mars.",
                "Mars looks red.",
                "Venus glows red.",
            ]
        };
        let sample = samples[*index];
        *index += 1;
        Ok(LlmResponse::from_texts([sample.to_string()]))
    });
    let samples = dir.join("samples");
    distill::sample_paragraphs(
        &context(Teacher::Model(&base), templates),
        &queries,
        &samples,
        &Stage::Sample.default_settings(),
        4,
        SampleTemplate::Icl,
    )
    .unwrap();
    samples
}

#[test]
fn the_summariser_by_agreement_summarises_samples_through_the_extractor() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let samples = sample_dir(dir.path(), &templates);
    let extractor = extractor(&[
        (
            "Paris is the capital of France.",
            "Reasoning: r\nAnswers: Paris",
        ),
        (
            "Lyon is the capital of France.",
            "Reasoning: r\nAnswers: Lyon; Paris",
        ),
        ("The capital is Paris.", "Reasoning: r\nAnswers: paris"),
        ("France has many cities.", "Reasoning: r\nAnswers: none"),
        ("Mars is the red planet.", "Reasoning: r\nAnswers: Mars"),
        ("The red planet is Mars.", "Reasoning: r\nAnswers: Mars"),
        ("Mars looks red.", "Reasoning: r\nAnswers: Mars"),
        // Without its answers line: a failure, whatever it says.
        ("Venus glows red.", "Venus"),
    ]);
    let out = dir.path().join("summaries");
    let offline = Teacher::Offline {
        extractor: Some(&extractor),
    };
    let report = distill::summarize_samples(
        &context(offline, &templates),
        &samples,
        &out,
        &settings(Stage::Summarize),
        false,
    )
    .unwrap();
    assert_eq!(report.manifest.counts["records"], 2);
    let records = read_lines(&out.join("summaries.jsonl"));
    assert_eq!(
        records[0]["summary"],
        "I am 50% sure that the answer is Paris. It may instead be Lyon (25%)."
    );
    assert_eq!(
        records[0]["sample_answers"],
        json!([{"answer": "Paris"}, {"answer": "Lyon"}, {"answer": "paris"}, "no_answer"])
    );
    assert_eq!(
        records[1]["summary"],
        "I am 100% sure that the answer is Mars."
    );
    let failed = records[1]["sample_answers"][3]["failed"].as_str().unwrap();
    assert!(
        failed.starts_with(
            "sample 4 of 4: no usable answer in 3 attempts: cannot parse extracted answers"
        ),
        "{failed}"
    );
    // The extractor saw the question and one sample per request, never the gold answer.
    let asked: Vec<Prompt> = extractor
        .requests()
        .into_iter()
        .map(|request| request.prompt)
        .collect();
    let france = "What is the capital of France?";
    let expected = distill::chat_prompt(
        templates
            .extract_answers(
                france,
                "France has many cities.",
                ExtractionUse::TrainingLabels,
            )
            .unwrap(),
    );
    assert!(asked.contains(&expected));
    assert_eq!(asked.len(), 8 + 2);
    let lc_sft = jsonl::read_sft_jsonl(&out.join("lc_sft.jsonl")).unwrap();
    assert_eq!(lc_sft[1].target, "I am 100% sure that the answer is Mars.");
    let manifest = Manifest::read(&out).unwrap();
    assert_eq!(
        manifest.config["model"],
        json!({"backend": "offline", "model": "agreement"})
    );
    assert_eq!(
        manifest.config["extractor"],
        json!({"backend": "fake", "model": "fake-model"})
    );

    // It writes no paragraph of its own, and needs its extractor.
    let error = distill::summarize_samples(
        &context(offline, &templates),
        &samples,
        &dir.path().join("other"),
        &settings(Stage::Summarize),
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.starts_with("the offline summariser writes no paragraph of its own"),
        "{error}"
    );
    let error = distill::summarize_samples(
        &context(Teacher::Offline { extractor: None }, &templates),
        &samples,
        &dir.path().join("other"),
        &settings(Stage::Summarize),
        false,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        error,
        "the offline `agreement` teacher of the `distill-summarize` stage needs an extractor: \
         a model that finds the answer each text gives; give one"
    );
}

/// A `label-extract` directory of the paragraphs in `lines`, whose extractions come from
/// `replies`.
fn extraction_dir(
    dir: &Path,
    templates: &Templates,
    lines: &[Value],
    replies: &[(&str, &str)],
) -> PathBuf {
    let paragraphs = write_lines(&dir.join("paragraphs.jsonl"), lines);
    let model = extractor(replies);
    let out = dir.join("extract");
    distill::extract_answers(
        &context(Teacher::Model(&model), templates),
        &paragraphs,
        &out,
        &Stage::Extract.default_settings(),
    )
    .unwrap();
    out
}

#[test]
fn the_offline_forecaster_reads_the_stated_percentages_and_hedges() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let lines = [
        json!({
            "id": "q1",
            "question": "What is the capital of France?",
            "answer": "Paris",
            "paragraph": "I am 60% sure that the answer is Paris. \
                          It may instead be Lyon (30%) or Marseille (10%).",
        }),
        json!({
            "id": "q2",
            "question": "Which planet is known as the Red Planet?",
            "answer": "Mars",
            "paragraph": "The red planet is very likely Mars, but I suspect it could be Venus.",
        }),
        json!({
            "id": "q3",
            "question": "Who proposed general relativity?",
            "answer": "Albert Einstein",
            "aliases": ["Einstein"],
            "paragraph": "Einstein proposed it in 1915.",
        }),
        json!({
            "id": "q4",
            "question": "Who wrote Hamlet?",
            "answer": "William Shakespeare",
            "paragraph": "I do not know.",
        }),
    ];
    let extractions = extraction_dir(
        dir.path(),
        &templates,
        &lines,
        &[
            (
                lines[0]["paragraph"].as_str().unwrap(),
                "Reasoning: r\nAnswers: Paris; Lyon; Marseille",
            ),
            (
                lines[1]["paragraph"].as_str().unwrap(),
                "Reasoning: r\nAnswers: Mars; Venus",
            ),
            (
                lines[2]["paragraph"].as_str().unwrap(),
                "Reasoning: r\nAnswers: Einstein",
            ),
            ("I do not know.", "Reasoning: r\nAnswers: none"),
        ],
    );
    let out = dir.path().join("forecast");
    let report = distill::forecast_candidates(
        &context(Teacher::Offline { extractor: None }, &templates),
        &extractions,
        &out,
        &settings(Stage::Forecast),
    )
    .unwrap();
    assert_eq!(report.manifest.counts["failed"], 0);
    let records = read_lines(&out.join("forecasts.jsonl"));
    let forecasts: Vec<(Value, Value)> = records
        .iter()
        .map(|record| {
            (
                record["candidates"].clone(),
                record["probabilities"].clone(),
            )
        })
        .collect();
    assert_eq!(
        forecasts,
        [
            // Stated percentages, the gold answer first.
            (
                json!(["Paris", "Paris", "Lyon", "Marseille"]),
                json!([0.6, 0.6, 0.3, 0.1])
            ),
            // Hedges from the table: "very likely" 0.9, "could be" 0.35.
            (json!(["Mars", "Mars", "Venus"]), json!([0.9, 0.9, 0.35])),
            // Stated plainly, under an alias of the gold answer.
            (json!(["Albert Einstein", "Einstein"]), json!([1.0, 1.0])),
            // Not mentioned.
            (json!(["William Shakespeare"]), json!([0.0])),
        ]
    );
    let set = jsonl::read_reward_jsonl(&out.join("forecast_probs.jsonl")).unwrap();
    assert_eq!(set.len(), 4 + 3 + 2 + 1);
    assert_eq!(
        report.manifest.config["model"],
        json!({"backend": "offline", "model": "stated-confidence"})
    );
}

#[test]
fn the_offline_binary_labeller_matches_the_extracted_answers_with_the_gold_answer() {
    assert!(exact_match_label(&["the Beatles"], &["Beatles".into()]));
    assert!(exact_match_label(
        &["Paris", "paris, france"],
        &["Paris".into(), "Paris, France".into()]
    ));
    assert!(!exact_match_label(&["Paris", "Lyon"], &["Paris".into()]));
    assert!(!exact_match_label::<&str>(&[], &["Paris".into()]));

    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let paragraphs = write_lines(
        &dir.path().join("paragraphs.jsonl"),
        &[
            json!({
                "id": "q1",
                "question": "What is the capital of France?",
                "answer": "Paris",
                "paragraph": "Paris is the capital.",
            }),
            json!({
                "id": "q2",
                "question": "Which planet is known as the Red Planet?",
                "answer": "Mars",
                "paragraph": "It is Venus or Mars.",
            }),
            json!({
                "id": "q3",
                "question": "Who proposed general relativity?",
                "answer": "Albert Einstein",
                "aliases": ["Einstein"],
                "paragraph": "Einstein did.",
            }),
            json!({
                "id": "q4",
                "question": "Who wrote Hamlet?",
                "answer": "William Shakespeare",
                "paragraph": "I do not know.",
            }),
        ],
    );
    let extractor = extractor(&[
        ("Paris is the capital.", "Reasoning: r\nAnswers: Paris"),
        ("It is Venus or Mars.", "Reasoning: r\nAnswers: Venus; Mars"),
        ("Einstein did.", "Reasoning: r\nAnswers: Einstein"),
        ("I do not know.", "Reasoning: r\nAnswers: none"),
    ]);
    let out = dir.path().join("binary");
    let offline = Teacher::Offline {
        extractor: Some(&extractor),
    };
    let report = distill::judge_correctness(
        &context(offline, &templates),
        &paragraphs,
        &out,
        &settings(Stage::Binary),
    )
    .unwrap();
    assert_eq!(report.manifest.counts["records"], 4);
    let records = read_lines(&out.join("correctness.jsonl"));
    let labels: Vec<(bool, Value)> = records
        .iter()
        .map(|record| {
            (
                record["correct"].as_bool().unwrap(),
                record["extracted_answers"].clone(),
            )
        })
        .collect();
    assert_eq!(
        labels,
        [
            (true, json!(["Paris"])),
            (false, json!(["Venus", "Mars"])),
            (true, json!(["Einstein"])),
            (false, json!([])),
        ]
    );
    // The extractor is never shown the gold answer.
    for request in extractor.requests() {
        let Prompt::Chat(messages) = request.prompt else {
            panic!()
        };
        let task = messages
            .last()
            .unwrap()
            .content
            .split("### Your task")
            .nth(1)
            .unwrap()
            .to_string();
        assert!(
            !task.contains("William Shakespeare") && !task.contains("Albert"),
            "{task}"
        );
    }
    let set = jsonl::read_reward_jsonl(&out.join("binary_correctness.jsonl")).unwrap();
    assert_eq!(
        set.iter().map(|e| e.label).collect::<Vec<_>>(),
        [1.0, 0.0, 1.0, 0.0]
    );
    assert_eq!(
        report.manifest.config["model"],
        json!({"backend": "offline", "model": "exact-match"})
    );
}

#[test]
fn stages_without_an_offline_teacher_or_with_the_wrong_extractor_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let paragraphs = write_lines(
        &dir.path().join("paragraphs.jsonl"),
        &[json!({"id": "q1", "question": "Q?", "answer": "A", "paragraph": "P."})],
    );
    let error = distill::extract_answers(
        &context(Teacher::Offline { extractor: None }, &templates),
        &paragraphs,
        &dir.path().join("extract"),
        &settings(Stage::Extract),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        error,
        "the `label-extract` stage has no offline teacher (finding the answers a free-text \
         paragraph gives needs a model); give a model"
    );
    let model = FakeLlm::new(|_| unreachable!("nothing is asked"));
    let extractions = extraction_dir(
        dir.path(),
        &templates,
        &[json!({"id": "q1", "question": "Q?", "answer": "A", "paragraph": "P."})],
        &[("P.", "Reasoning: r\nAnswers: none")],
    );
    let error = distill::forecast_candidates(
        &context(
            Teacher::Offline {
                extractor: Some(&model),
            },
            &templates,
        ),
        &extractions,
        &dir.path().join("forecast"),
        &settings(Stage::Forecast),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        error,
        "the offline `stated-confidence` teacher of the `label-forecast` stage takes no \
         extractor; leave it out"
    );
    assert!(model.requests().is_empty());
}

/// An extractor that continues few-shot extraction completions with the reply given for the
/// text (the last `Text:` line), after checking that each request stops at its line's end.
fn few_shot_extractor(replies: &[(&str, &str)]) -> FakeLlm {
    let replies: HashMap<String, String> = replies
        .iter()
        .map(|(paragraph, reply)| (paragraph.to_string(), reply.to_string()))
        .collect();
    FakeLlm::new(move |request| {
        let Prompt::Completion(prompt) = &request.prompt else {
            panic!("the few-shot extractor is asked with a completion")
        };
        assert!(prompt.ends_with("\nAnswers:"), "{prompt}");
        assert_eq!(request.params.stop, ["\n"]);
        assert!(request.params.max_tokens <= 32);
        let paragraph = prompt
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("Text: "))
            .unwrap();
        Ok(LlmResponse::from_texts([replies[paragraph].clone()]))
    })
}

#[test]
fn the_few_shot_extraction_serves_the_summariser_and_the_binary_labeller() {
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::builtin().unwrap();
    let samples = sample_dir(dir.path(), &templates);
    // A small model's replies: the answers line, sometimes followed by the next example (which
    // is not read), and one reply that is no answers line at all. An answer the question names
    // ("France") restates it: the sample's answer is the next one, or none.
    let extractor = few_shot_extractor(&[
        ("Paris is the capital of France.", " Paris\nQuestion: x"),
        ("Lyon is the capital of France.", " France; Lyon; Paris"),
        ("Paris, France.", " Paris; France"),
        ("The capital is Paris.", " paris."),
        ("France has many cities.", " France"),
        ("Mars is the red planet.", " Mars"),
        ("The red planet is Mars.", " Mars\n\nQuestion: Venus?"),
        ("Mars looks red.", " Mars"),
        ("Venus glows red.", "\n"),
    ]);
    let offline = Teacher::Offline {
        extractor: Some(&extractor),
    };
    let few_shot = StageContext {
        extraction: ExtractionPrompt::FewShot,
        ..context(offline, &templates)
    };
    let out = dir.path().join("summaries");
    distill::summarize_samples(
        &few_shot,
        &samples,
        &out,
        &settings(Stage::Summarize),
        false,
    )
    .unwrap();
    let records = read_lines(&out.join("summaries.jsonl"));
    assert_eq!(
        records[0]["summary"],
        "I am 50% sure that the answer is Paris. It may instead be Lyon (25%)."
    );
    assert_eq!(
        records[0]["sample_answers"],
        json!([{"answer": "Paris"}, {"answer": "Lyon"}, {"answer": "paris"}, "no_answer"])
    );
    assert_eq!(
        records[1]["summary"],
        "I am 100% sure that the answer is Mars."
    );
    assert!(
        records[1]["sample_answers"][3]["failed"]
            .as_str()
            .unwrap()
            .starts_with("sample 4 of 4: no usable answer in 3 attempts")
    );
    // The prompt is part of the stage's identity: its template is fingerprinted.
    let templates_seen = &Manifest::read(&out).unwrap().config["templates"];
    assert!(templates_seen.get("extract_answers_few_shot").is_some());
    assert!(templates_seen.get("extract_answers").is_none());

    let paragraphs = write_lines(
        &dir.path().join("paragraphs.jsonl"),
        &[
            json!({"id": "q1", "question": "What is the capital of France?", "answer": "Paris",
                   "paragraph": "Paris is the capital of France."}),
            json!({"id": "q2", "question": "What is the capital of France?", "answer": "Paris",
                   "paragraph": "Lyon is the capital of France."}),
            json!({"id": "q3", "question": "What is the capital of France?", "answer": "Paris",
                   "paragraph": "Paris, France."}),
        ],
    );
    let out = dir.path().join("binary");
    distill::judge_correctness(&few_shot, &paragraphs, &out, &settings(Stage::Binary)).unwrap();
    let labels = read_lines(&out.join("correctness.jsonl"));
    assert_eq!(labels[0]["correct"], true);
    assert_eq!(labels[1]["correct"], false);
    assert_eq!(labels[2]["correct"], true);
    // The extracted answers are kept as extracted; the label leaves out "France".
    assert_eq!(
        labels[1]["extracted_answers"],
        json!(["France", "Lyon", "Paris"])
    );
}
