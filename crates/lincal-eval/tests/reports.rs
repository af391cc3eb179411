//! Run reports and comparisons written from hand-made scored examples: exact metric values,
//! self-contained and escaped HTML, readable plots, and runs that must not be compared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lincal_eval::{
    ClaimExample, EvalError, QaExample, ReportOptions, RunResults, RunSettings, ScoredExample,
    Stage, StageFailure, compare, predictions, read_examples, read_results, write_run_report,
};
use lincal_metrics::{Binning, BootstrapConfig, ReportConfig, compute_report};

fn qa(id: &str, confidence: Option<f64>, answer: Option<&str>, correct: bool) -> ScoredExample {
    ScoredExample::Qa(QaExample {
        id: id.into(),
        question: format!("Question {id}?"),
        gold_answer: "gold".into(),
        generated_text: format!("A paragraph for {id}.\nSecond line."),
        extracted_answers: answer
            .map(|a| vec![a.to_string(), "other".into()])
            .unwrap_or_default(),
        answer: answer.map(String::from),
        confidence,
        correct,
        failures: Vec::new(),
    })
}

/// Eight answers: 4 correct (q1, q2, q4, q7), one with nothing extracted (q6), one without a
/// stated confidence (q7), one whose judge reply never parsed (q8).
fn qa_examples() -> Vec<ScoredExample> {
    let mut examples = vec![
        qa("q1", Some(0.9), Some("a"), true),
        qa("q2", Some(0.8), Some("a"), true),
        qa("q3", Some(0.7), Some("b"), false),
        qa("q4", Some(0.6), Some("a"), true),
        qa("q5", Some(0.3), Some("b"), false),
        qa("q6", Some(0.4), None, false),
        qa("q7", None, Some("a"), true),
        qa("q8", Some(0.2), Some("c"), false),
    ];
    if let ScoredExample::Qa(e) = &mut examples[7] {
        e.failures.push(StageFailure {
            stage: Stage::Judge,
            message: "no Yes/No after 3 tries".into(),
        });
    }
    examples
}

fn settings(method: &str, dataset: &str) -> RunSettings {
    RunSettings {
        method: method.into(),
        model: "smollm2-135m".into(),
        dataset: dataset.into(),
        split: Some("test".into()),
        reader: Some("claude-2.0".into()),
        judge: Some("claude-2.0".into()),
        extra: BTreeMap::from([("seed".to_string(), serde_json::json!(1))]),
    }
}

/// Two equal-mass bins and a quick bootstrap, so the values can be worked out by hand.
fn two_bins() -> ReportOptions {
    ReportOptions {
        metrics: Some(ReportConfig {
            bins: 2,
            binning: Binning::EqualMass,
            bootstrap: BootstrapConfig {
                resamples: 500,
                ..Default::default()
            },
        }),
        html_examples: 5,
        ..ReportOptions::default()
    }
}

/// (width, height) from a PNG's IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR");
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A page loads nothing from elsewhere: no URLs, scripts, stylesheets or frames, and every
/// image is a data URI.
fn assert_self_contained(page: &str) {
    for forbidden in [
        "http://", "https://", "<script", "<link", "<iframe", "@import", "url(",
    ] {
        assert!(!page.contains(forbidden), "page contains {forbidden}");
    }
    let sources: Vec<&str> = page.split("src=\"").skip(1).collect();
    assert!(!sources.is_empty());
    for source in sources {
        assert!(
            source.starts_with("data:image/svg+xml;base64,"),
            "{}",
            &source[..40]
        );
    }
}

#[test]
fn qa_report_holds_the_exact_metrics_counts_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let examples = qa_examples();
    let options = two_bins();
    let results =
        write_run_report(&run, &settings("LC RL", "fanoutqa"), &examples, &options).unwrap();

    // Metrics are exactly what lincal-metrics computes on the scored predictions.
    let expected = compute_report(&predictions(&examples), &options.metrics.unwrap()).unwrap();
    assert_eq!(results.metrics, expected);
    // By hand: 4 of 8 correct. Sorted (confidence, correct): 0.2✗ 0.3✗ 0.6✓ 0.7✗ | 0.8✓ 0.9✓
    // 1.0✗ (q6, nothing extracted) 1.0✓ (q7, no confidence); bin gaps |0.25 − 0.45| and
    // |0.75 − 0.925|, so ECE = (0.2 + 0.175) / 2.
    assert_eq!(results.metrics.accuracy.value, 0.5);
    assert!((results.metrics.ece.value - 0.1875).abs() < 1e-12);
    assert_eq!(results.metrics.n, 8);
    let c = &results.counts;
    assert_eq!((c.examples, c.scored, c.correct, c.subjects), (8, 8, 4, 8));
    assert_eq!(
        (
            c.empty_extractions,
            c.without_confidence,
            c.merged_alternatives
        ),
        (1, 1, 0)
    );
    assert_eq!(c.failures, BTreeMap::from([(Stage::Judge, 1)]));

    // results.json reads back to the same thing; examples.jsonl holds the items.
    assert_eq!(read_results(&run).unwrap(), results);
    assert_eq!(read_examples(run.join("examples.jsonl")).unwrap(), examples);
    assert_eq!(
        sorted_names(&run),
        [
            "examples.jsonl",
            "frontier.png",
            "frontier.svg",
            "reliability.png",
            "reliability.svg",
            "report.html",
            "report.md",
            "results.json",
            "risk_coverage.png",
            "risk_coverage.svg",
        ]
    );
    assert_eq!(png_size(&run.join("reliability.png")), (900, 1000));
    assert_eq!(png_size(&run.join("frontier.png")), (1100, 800));

    let ci = |e: &lincal_metrics::Estimate| {
        format!("[{:.4}, {:.4}]", e.ci_low.unwrap(), e.ci_high.unwrap())
    };
    let m = &results.metrics;
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    for line in [
        "# LC RL on fanoutqa".to_string(),
        "| metric | value | 95% CI |".into(),
        format!("| accuracy | 0.5000 | {} |", ci(&m.accuracy)),
        format!("| ECE (2 equal-mass bins) | 0.1875 | {} |", ci(&m.ece)),
        format!("| Brier score | {:.4} | {} |", m.brier.value, ci(&m.brier)),
        format!(
            "| smooth ECE | {:.4} | {} |",
            m.smece.unwrap().value,
            ci(&m.smece.unwrap())
        ),
        format!(
            "| AURC | {:.4} | {} |",
            m.aurc.unwrap().value,
            ci(&m.aurc.unwrap())
        ),
        format!(
            "| ACE (2 equal-width bins) | {:.4} | {} |",
            m.ace.unwrap().value,
            ci(&m.ace.unwrap())
        ),
        "- Risk vs coverage (answering only the most confident): \
         [risk_coverage.png](risk_coverage.png) ([SVG](risk_coverage.svg))"
            .into(),
        "| answers in examples.jsonl | 8 |".into(),
        "| no extracted answer (scored wrong, confidence 1) | 1 |".into(),
        "| no stated confidence (scored at 1.0) | 1 |".into(),
        "| items that failed in semantic-equivalence judge | 1 |".into(),
        "| judge | claude-2.0 |".into(),
        "| seed | 1 |".into(),
        "- Reliability diagram: [reliability.png](reliability.png) ([SVG](reliability.svg))".into(),
        "n = 8; ECE and MCE use all 8 predictions; intervals are paired percentile bootstrap, \
         500 resamples, seed 1."
            .into(),
    ] {
        assert!(md.lines().any(|l| l == line), "no line {line:?} in\n{md}");
    }
    // fanoutqa is not one of the paper's datasets.
    assert!(!md.contains("## Paper"));

    let page = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert_self_contained(&page);
    assert!(page.contains(&format!(
        "<td>accuracy</td><td class=\"num\">0.5000</td><td class=\"num\">{}</td>",
        ci(&m.accuracy)
    )));
    assert!(page.contains("<td class=\"num\">0.1875</td>"));
    // The first 5 examples are listed, q6 without an answer and q7 without a confidence.
    assert!(page.contains("The first 5 of 8 items"));
    assert!(page.contains("<td>q5</td>") && !page.contains("<td>q6</td>"));
    assert_eq!(page.matches("<img ").count(), 3);
}

#[test]
fn model_output_cannot_inject_markup() {
    let attack = r#"<script>alert("x")</script><img src=x onerror=alert(1)>"#;
    let mut examples = qa_examples();
    if let ScoredExample::Qa(e) = &mut examples[0] {
        e.question = format!("Q {attack}");
        e.generated_text = format!("</details></td></tr></table>{attack}");
        e.answer = Some(attack.into());
        e.extracted_answers = vec![attack.into(), "a".into()];
        e.failures.push(StageFailure {
            stage: Stage::Extraction,
            message: attack.into(),
        });
    }
    let mut run_settings = settings(&format!("LC {attack}"), "trivia_qa");
    run_settings
        .extra
        .insert("note".into(), serde_json::json!(format!("\"'>{attack}")));
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    write_run_report(&run, &run_settings, &examples, &two_bins()).unwrap();
    let page = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert_self_contained(&page);
    assert!(!page.contains("onerror=alert(1)>"));
    assert!(!page.contains("</details></td></tr></table>&lt;"));
    let escaped =
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;";
    // Title, heading, question, generated text, answer, extracted list, failure, setting.
    assert!(page.matches(escaped).count() >= 8, "{page}");
    assert!(page.contains(&format!("<title>LC {escaped} on trivia_qa</title>")));

    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(!md.contains("<script>") && md.contains("&lt;script&gt;"));

    // trivia_qa is a paper dataset: the paper's numbers appear in the table, and its Llama 2
    // methods in the frontier plot.
    assert!(
        page.contains("<td>LC RL</td><td class=\"num\">0.647</td><td class=\"num\">0.108</td>")
    );
    assert!(page.contains("<td>GPT-4 JAFU 0-Shot</td>"));
    let svg = std::fs::read_to_string(run.join("frontier.svg")).unwrap();
    assert!(svg.contains("paper: Direct Summary Eval") && !svg.contains("paper: GPT-4"));
}

fn claim(
    id: &str,
    entity: &str,
    group: Option<&str>,
    confidence: Option<f64>,
    supported: bool,
) -> ScoredExample {
    ScoredExample::Claim(ClaimExample {
        id: id.into(),
        entity: entity.into(),
        claim: format!("Claim {id}."),
        core_claim: Some(format!("Core {id}.")),
        group: group.map(String::from),
        confidence,
        supported,
        failures: Vec::new(),
    })
}

#[test]
fn biography_claims_score_one_alternative_per_group_with_40_bins() {
    // Ada's g1: 0.75✓ beats 0.25✗. Ben's g1 (not Ada's): a tie at 0.5, the first (✗) counts.
    let examples = vec![
        claim("c1", "Ada", Some("g1"), Some(0.75), true),
        claim("c2", "Ada", Some("g1"), Some(0.25), false),
        claim("c3", "Ada", None, Some(1.0), true),
        claim("c4", "Ben", Some("g1"), Some(0.5), false),
        claim("c5", "Ben", Some("g1"), Some(0.5), true),
        claim("c6", "Ben", Some("g2"), Some(0.9), false),
    ];
    let preds: Vec<(f64, bool)> = predictions(&examples)
        .iter()
        .map(|p| (p.confidence, p.correct))
        .collect();
    assert_eq!(
        preds,
        [(0.75, true), (1.0, true), (0.5, false), (0.9, false)]
    );

    let dir = tempfile::tempdir().unwrap();
    let options = ReportOptions {
        metrics: None,
        subjects_without_items: 1,
        ..ReportOptions::default()
    };
    let results = write_run_report(
        dir.path(),
        &settings("LC SFT", "FactScore"),
        &examples,
        &options,
    )
    .unwrap();
    assert_eq!(
        (results.metrics.bins, results.metrics.bootstrap_resamples),
        (40, 10_000)
    );
    assert_eq!(results.metrics.accuracy.value, 0.5);
    // Fewer predictions than bins: one bin each, ECE = mean |correct − confidence|.
    assert!((results.metrics.ece.value - (0.25 + 0.0 + 0.5 + 0.9) / 4.0).abs() < 1e-12);
    let c = &results.counts;
    assert_eq!(
        (
            c.examples,
            c.scored,
            c.correct,
            c.subjects,
            c.merged_alternatives
        ),
        (6, 4, 2, 2, 2)
    );
    // Per biography: Ada (0.75✓, 1.0✓) accuracy 1, ECE (0.25 + 0)/2 = 0.125; Ben (0.5✗,
    // 0.9✗) accuracy 0, ECE 0.7. Means 0.5 and 0.4125; one more person gave no claim.
    let per_response = results.per_response.as_ref().unwrap();
    assert_eq!(
        (per_response.averages.subjects, per_response.without_items),
        (2, 1)
    );
    assert!((per_response.averages.accuracy.value - 0.5).abs() < 1e-12);
    assert!((per_response.averages.ece.value - 0.4125).abs() < 1e-12);
    assert!(per_response.averages.accuracy.ci_low.is_some());
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains("## Per biography") && md.contains("| accuracy | 0.5000 | ["),
        "{md}"
    );
    assert!(md.contains("2 biographies, 1 more left out for having no checkable claim"));
    let json = std::fs::read_to_string(dir.path().join("results.json")).unwrap();
    assert_eq!(serde_json::from_str::<RunResults>(&json).unwrap(), results);
    assert!(md.contains("| claims in examples.jsonl | 6 |"));
    assert!(md.contains("| entities | 2 |"));
    assert!(md.contains("| exclusive alternatives left out (a more confident one scored) | 2 |"));
    assert!(md.contains("## Paper") && md.contains("| LC SFT | 0.445 | 0.301 |"));
    let page = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(page.contains("<th>entity</th><th>claim</th><th>core claim</th>"));
    assert!(page.contains("<td>Core c1.</td>"));
}

#[test]
fn bad_runs_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = write_run_report(dir.path(), &settings("LC RL", "x"), &[], &two_bins()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "examples: none given; a report needs at least one scored example"
    );
    let err =
        write_run_report(dir.path(), &settings(" ", "x"), &qa_examples(), &two_bins()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "run settings field `method`: is empty; reports and comparisons need it to label the run"
    );
    let mut examples = qa_examples();
    examples.push(claim("c1", "Ada", None, Some(0.5), true));
    let err =
        write_run_report(dir.path(), &settings("m", "x"), &examples, &two_bins()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("item 9 (id `c1`): a `claim` item in a run of `qa` items"),
        "{err}"
    );
    // Nothing was written for a refused run.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

fn write_lines(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn examples_jsonl_errors_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("examples.jsonl");
    let good = concat!(
        r#"{"kind": "qa", "id": "q1", "question": "Q", "gold_answer": "g", "#,
        r#""generated_text": "t", "answer": "a", "confidence": 0.5, "correct": true}"#
    );
    let check = |lines: &[&str], expected: &str| {
        write_lines(&path, lines);
        let err = read_examples(&path).unwrap_err();
        assert!(matches!(err, EvalError::Line { .. }));
        let message = err.to_string();
        let prefix = format!("{}:{expected}", path.display());
        assert!(
            message.starts_with(&prefix),
            "{message}\ndoes not start with\n{prefix}"
        );
    };
    check(
        &[
            good,
            &good
                .replace("\"confidence\"", "\"confidnce\"")
                .replace("q1", "q2"),
        ],
        "2: unknown field `confidnce`, expected one of",
    );
    check(
        &[good, &good.replace("0.5", "1.5").replace("q1", "q2")],
        "2: field `confidence` is 1.5",
    );
    check(&[good, good], "2: id `q1` already used (line 1)");
    check(
        &[&good.replace("\"a\"", "null")],
        "1: field `correct` is true but `answer` is null",
    );
    check(
        &[
            good,
            r#"{"kind": "claim", "id": "c1", "entity": "E", "claim": "C", "supported": true}"#,
        ],
        "2: a `claim` item in a run of `qa` items (line 1)",
    );
    check(
        &[r#"{"kind": "bio", "id": "x"}"#],
        "1: unknown variant `bio`, expected `qa` or `claim`",
    );
    check(
        &[r#"{"kind": "qa", "id": "q1"}"#],
        "1: missing field `question`",
    );
}

#[test]
fn examples_jsonl_round_trips_both_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("examples.jsonl");
    let examples = qa_examples();
    lincal_eval::write_examples(&path, &examples).unwrap();
    assert_eq!(read_examples(&path).unwrap(), examples);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 8);
    // No stated confidence is written as null; failures only where there are some.
    assert!(text.lines().nth(6).unwrap().contains("\"confidence\":null"));
    assert!(
        text.lines()
            .nth(7)
            .unwrap()
            .contains(r#""failures":[{"stage":"judge","#)
    );
    assert!(!text.lines().next().unwrap().contains("failures"));

    let claims = vec![
        claim("c1", "Ada", Some("g1"), Some(0.75), true),
        claim("c2", "Ada", None, None, false),
    ];
    lincal_eval::write_examples(&path, &claims).unwrap();
    assert_eq!(read_examples(&path).unwrap(), claims);
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["kind"], "claim");
    assert_eq!(first["supported"], true);
}

/// Writes a QA run on `dataset` whose correctness pattern depends on `shift`.
fn qa_run(root: &Path, name: &str, method: &str, dataset: &str, judge: &str, n: usize) -> PathBuf {
    let examples: Vec<ScoredExample> = (0..n)
        .map(|i| {
            let confidence = (i % 10) as f64 / 10.0 + 0.05;
            let correct = (i * 7 + method.len()) % 10 < (confidence * 10.0) as usize;
            qa(&format!("q{i}"), Some(confidence), Some("a"), correct)
        })
        .collect();
    let mut run_settings = settings(method, dataset);
    run_settings.judge = Some(judge.into());
    let dir = root.join(name);
    write_run_report(&dir, &run_settings, &examples, &two_bins()).unwrap();
    dir
}

#[test]
fn comparison_puts_runs_side_by_side() {
    let root = tempfile::tempdir().unwrap();
    let a = qa_run(root.path(), "a", "LC RL", "fanoutqa", "claude-2.0", 40);
    let b = qa_run(
        root.path(),
        "b",
        "Factuality <SFT>",
        "fanoutqa",
        "gpt-4",
        40,
    );
    let c = qa_run(root.path(), "c", "LC RL", "fanoutqa", "claude-2.0", 38);
    let out = root.path().join("cmp");
    let comparison = compare(&[a.clone(), b.clone(), c.clone()], &out).unwrap();

    let labels: Vec<&str> = comparison.runs.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, ["LC RL (a)", "Factuality <SFT>", "LC RL (c)"]);
    let results: Vec<RunResults> = [&a, &b, &c]
        .iter()
        .map(|d| read_results(d).unwrap())
        .collect();
    for (run, expected) in comparison.runs.iter().zip(&results) {
        assert_eq!(&run.results, expected);
    }
    assert_eq!(comparison.dataset, "fanoutqa");
    assert_eq!(comparison.notes.len(), 2, "{:?}", comparison.notes);
    assert!(comparison.notes[0].starts_with(&format!(
        "The runs used different judges: claude-2.0 ({}, {}), gpt-4 ({}).",
        a.display(),
        c.display(),
        b.display()
    )));
    assert_eq!(
        comparison.notes[1],
        format!(
            "The runs scored different questions: {} has 40, {} has 40, {} has 38; 38 are in \
             every run. Differences in the metrics partly reflect the questions; the paired \
             differences use the questions both runs of a pair scored.",
            a.display(),
            b.display(),
            c.display()
        )
    );
    assert_eq!(
        sorted_names(&out),
        [
            "comparison.html",
            "comparison.json",
            "comparison.md",
            "frontier.png",
            "frontier.svg",
            "reliability-1-lc-rl-a.png",
            "reliability-1-lc-rl-a.svg",
            "reliability-2-factuality-sft.png",
            "reliability-2-factuality-sft.svg",
            "reliability-3-lc-rl-c.png",
            "reliability-3-lc-rl-c.svg",
            "risk_coverage.png",
            "risk_coverage.svg",
        ]
    );
    assert_eq!(png_size(&out.join("frontier.png")), (1100, 800));
    let json: lincal_eval::Comparison =
        serde_json::from_str(&std::fs::read_to_string(out.join("comparison.json")).unwrap())
            .unwrap();
    assert_eq!(json, comparison);

    // Each run's row carries its own values; the best accuracy is in bold.
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    let best = results
        .iter()
        .map(|r| r.metrics.accuracy.value)
        .fold(f64::MIN, f64::max);
    for (run, r) in comparison.runs.iter().zip(&results) {
        let m = &r.metrics;
        let accuracy = format!(
            "{:.4} [{:.4}, {:.4}]",
            m.accuracy.value,
            m.accuracy.ci_low.unwrap(),
            m.accuracy.ci_high.unwrap()
        );
        let accuracy = if m.accuracy.value == best {
            format!("**{accuracy}**")
        } else {
            accuracy
        };
        let row = format!(
            "| {} | smollm2-135m | {} | {accuracy} |",
            lincal_eval_markdown(&run.label),
            m.n
        );
        assert!(md.contains(&row), "no {row:?} in\n{md}");
    }
    // Every pair gets paired differences on the questions both scored. a and c are the same
    // method on the same questions (c has 38 of a's 40): a difference of exactly zero.
    let pairs: Vec<(usize, usize, usize)> = comparison
        .pairs
        .iter()
        .map(|p| (p.a, p.b, p.differences.subjects))
        .collect();
    assert_eq!(pairs, [(0, 1, 40), (0, 2, 38), (1, 2, 38)]);
    let a_b = &comparison.pairs[0].differences;
    assert_eq!(
        (a_b.accuracy.a, a_b.accuracy.b),
        (
            results[0].metrics.accuracy.value,
            results[1].metrics.accuracy.value
        )
    );
    assert_eq!(
        a_b.accuracy.difference.value,
        results[0].metrics.accuracy.value - results[1].metrics.accuracy.value
    );
    let a_c = &comparison.pairs[1].differences.accuracy;
    assert_eq!(
        (
            a_c.difference.ci_low,
            a_c.difference.ci_high,
            a_c.distinguishable
        ),
        (Some(0.0), Some(0.0), false)
    );
    assert!(
        md.contains("## Paired differences")
            && md.contains("| LC RL (a) − LC RL (c) | 38 | +0.0000 [0.0000, 0.0000] |"),
        "{md}"
    );
    let page = std::fs::read_to_string(out.join("comparison.html")).unwrap();
    assert_self_contained(&page);
    assert!(page.contains("<td>Factuality &lt;SFT&gt;</td>"));
    assert!(page.contains("<h2>Paired differences</h2>"));
    assert_eq!(page.matches("<img ").count(), 5);
}

/// The Markdown escaping of the labels used here.
fn lincal_eval_markdown(label: &str) -> String {
    label.replace('<', "&lt;").replace('>', "&gt;")
}

#[test]
fn comparison_refuses_runs_on_different_datasets_or_bins() {
    let root = tempfile::tempdir().unwrap();
    let a = qa_run(root.path(), "a", "LC RL", "fanoutqa", "j", 20);
    let b = qa_run(root.path(), "b", "LC SFT", "red-trivia", "j", 20);
    let c = qa_run(root.path(), "c", "ICL", "fanoutqa", "j", 20);
    let out = root.path().join("cmp");
    let err = compare(&[a.clone(), b.clone(), c.clone()], &out).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot compare these runs: the runs differ in dataset (`fanoutqa`: {}, {}; \
             `red-trivia`: {}); compare runs of one dataset at a time",
            a.display(),
            c.display(),
            b.display()
        )
    );
    assert!(!out.exists());

    let d = root.path().join("d");
    let options = ReportOptions {
        metrics: Some(ReportConfig::qa()),
        ..two_bins()
    };
    let examples = qa_examples();
    write_run_report(&d, &settings("X", "fanoutqa"), &examples, &options).unwrap();
    let err = compare(&[a.clone(), d.clone()], &out).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "cannot compare these runs: the runs differ in ECE binning (2 EqualMass bins: "
        ),
        "{err}"
    );
    let err = compare(&[a.clone(), b.clone()], &a).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot compare these runs: the output directory {0} is the run directory {0}; its \
             plots would replace the run's own, so choose another output directory",
            a.display()
        )
    );
    let err = compare(&[a.clone(), c.clone(), a.join(".")], &out).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot compare these runs: the run directory {} is given twice; name each run once",
            a.join(".").display()
        )
    );
    let err = compare(&[a, root.path().join("missing")], &out).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "cannot read {}: ",
            root.path().join("missing/results.json").display()
        )),
        "{err}"
    );
}
