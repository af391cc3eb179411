//! A run's report: `results.json` (settings, counts, metrics with intervals), `report.md`,
//! a self-contained `report.html`, and the plots, all in the run directory.
//!
//! Metrics come from [`lincal_metrics::compute_report`] on the predictions of
//! [`predictions`]; this module only arranges and presents them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use lincal_metrics::{
    Estimate, FrontierPoint, MetricsReport, ReportConfig, SubjectAverages, compute_report,
    subject_averages, write_frontier_plot, write_reliability_diagram, write_risk_coverage_plot,
};
use serde::{Deserialize, Serialize};

use crate::EvalError;
use crate::examples::{
    Counts, ExampleKind, ScoredExample, check_examples, predictions, predictions_by_subject,
    write_examples,
};
use crate::files::{read_json, write_atomically, write_json};
use crate::paper::paper_results;
use crate::render::{
    Cell, Table, format_interval, format_value, html, html_page, interval_label, markdown,
    metric_rows, metrics_note, paper_section_html, paper_section_markdown, svg_figure,
};

pub const EXAMPLES_FILE: &str = "examples.jsonl";
pub const RESULTS_FILE: &str = "results.json";
pub const REPORT_MD_FILE: &str = "report.md";
pub const REPORT_HTML_FILE: &str = "report.html";
/// Plot stems; each plot is written as `<stem>.png` and `<stem>.svg`.
pub const RELIABILITY_PLOT: &str = "reliability";
pub const FRONTIER_PLOT: &str = "frontier";
pub const RISK_COVERAGE_PLOT: &str = "risk_coverage";

/// What was evaluated and how: the identity of a run in reports and comparisons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// The method as it should appear in tables and plots ("LC RL", "Factuality SFT").
    pub method: String,
    /// The policy model or API model that generated the answers.
    pub model: String,
    /// The evaluation dataset; only runs on the same dataset are compared.
    pub dataset: String,
    #[serde(default)]
    pub split: Option<String>,
    /// Answer extraction and forecasting (QA), or claim decomposition and filtering (biographies).
    #[serde(default)]
    pub reader: Option<String>,
    /// Semantic-equivalence judge (QA) or fact checker (biographies).
    #[serde(default)]
    pub judge: Option<String>,
    /// Anything else worth recording (seed, temperature, prompt names, knowledge source).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl RunSettings {
    fn check(&self) -> Result<(), EvalError> {
        for (field, value) in [
            ("method", &self.method),
            ("model", &self.model),
            ("dataset", &self.dataset),
        ] {
            if value.trim().is_empty() {
                return Err(EvalError::Invalid {
                    what: format!("run settings field `{field}`"),
                    message: "is empty; reports and comparisons need it to label the run".into(),
                });
            }
        }
        Ok(())
    }

    /// (name, value) of every setting, for the settings table.
    fn rows(&self) -> Vec<(String, String)> {
        let optional = |v: &Option<String>| v.clone().unwrap_or_else(|| "–".into());
        let mut rows = vec![
            ("method".to_string(), self.method.clone()),
            ("model".into(), self.model.clone()),
            ("dataset".into(), self.dataset.clone()),
            ("split".into(), optional(&self.split)),
            ("reader".into(), optional(&self.reader)),
            ("judge".into(), optional(&self.judge)),
        ];
        for (key, value) in &self.extra {
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            rows.push((key.clone(), value));
        }
        rows
    }
}

/// The content of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    pub settings: RunSettings,
    pub kind: ExampleKind,
    pub counts: Counts,
    pub metrics: MetricsReport,
    /// Biography runs: each biography's accuracy and ECE, averaged over biographies (as
    /// FActScore, SAFE and VeriScore aggregate), beside `metrics`, which pools every claim as
    /// the reference does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_response: Option<PerResponse>,
    /// The lincal-eval version that wrote the file.
    pub lincal_version: String,
}

/// Metrics per response, averaged over responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerResponse {
    #[serde(flatten)]
    pub averages: SubjectAverages,
    /// Responses left out of the average because they gave no scored item (a biography
    /// without a checkable claim).
    pub without_items: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportOptions {
    /// Bins and bootstrap settings; None takes the reference's: [`ReportConfig::qa`] (20
    /// equal-mass bins) for QA runs, [`ReportConfig::claims`] (40) for biography runs.
    pub metrics: Option<ReportConfig>,
    /// How many examples `report.html` lists (the first ones of the run).
    pub html_examples: usize,
    /// Subjects asked about that gave no scored item (biographies without a checkable claim):
    /// counted beside the per-response averages, which leave them out.
    pub subjects_without_items: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            metrics: None,
            html_examples: 200,
            subjects_without_items: 0,
        }
    }
}

/// Scores `examples` and writes the run's report into `run_dir` (created if missing):
/// `examples.jsonl`, `reliability.{png,svg}`, `frontier.{png,svg}` (this run, with the
/// paper's methods when the dataset is one of the paper's), `report.md`, `report.html`, and
/// last `results.json`, so a directory with `results.json` holds a complete report.
pub fn write_run_report(
    run_dir: impl AsRef<Path>,
    settings: &RunSettings,
    examples: &[ScoredExample],
    options: &ReportOptions,
) -> Result<RunResults, EvalError> {
    let run_dir = run_dir.as_ref();
    settings.check()?;
    let Some(first) = examples.first() else {
        return Err(EvalError::Invalid {
            what: "examples".into(),
            message: "none given; a report needs at least one scored example".into(),
        });
    };
    check_examples(examples)?;
    let kind = first.kind();
    let config = options.metrics.unwrap_or(match kind {
        ExampleKind::Qa => ReportConfig::qa(),
        ExampleKind::Claim => ReportConfig::claims(),
    });
    let results = RunResults {
        settings: settings.clone(),
        kind,
        counts: Counts::of(examples),
        metrics: compute_report(&predictions(examples), &config)?,
        per_response: match kind {
            ExampleKind::Qa => None,
            ExampleKind::Claim => {
                let groups: Vec<_> = predictions_by_subject(examples).into_values().collect();
                Some(PerResponse {
                    averages: subject_averages(&groups, &config)?,
                    without_items: options.subjects_without_items,
                })
            }
        },
        lincal_version: env!("CARGO_PKG_VERSION").to_string(),
    };

    std::fs::create_dir_all(run_dir).map_err(|source| EvalError::Write {
        path: run_dir.to_path_buf(),
        source,
    })?;
    write_examples(run_dir.join(EXAMPLES_FILE), examples)?;
    let plots = write_plots(run_dir, &results)?;
    write_atomically(
        &run_dir.join(REPORT_MD_FILE),
        run_markdown(&results).as_bytes(),
    )?;
    let page = run_html(&results, examples, options.html_examples, &plots)?;
    write_atomically(&run_dir.join(REPORT_HTML_FILE), page.as_bytes())?;
    write_json(&run_dir.join(RESULTS_FILE), &results)?;
    Ok(results)
}

/// Reads `<run_dir>/results.json`.
pub fn read_results(run_dir: impl AsRef<Path>) -> Result<RunResults, EvalError> {
    read_json(&run_dir.as_ref().join(RESULTS_FILE))
}

/// The SVGs that go into the HTML page, with their captions.
struct Plots {
    reliability: PathBuf,
    frontier: PathBuf,
    risk_coverage: PathBuf,
}

fn write_plots(run_dir: &Path, results: &RunResults) -> Result<Plots, EvalError> {
    let s = &results.settings;
    let title = format!(
        "{} on {}: ECE {:.3}",
        s.method, s.dataset, results.metrics.ece.value
    );
    let reliability = write_reliability_diagram(
        &results.metrics.reliability_bins,
        Some(&results.metrics.smooth_curve),
        &title,
        run_dir.join(RELIABILITY_PLOT),
    )?;
    let mut points = vec![FrontierPoint::from_report(&s.method, &results.metrics)];
    if let Some((_, paper)) = paper_results(&s.dataset) {
        // The paper's Llama 2 7B methods only: with this run they fill the plot's ten colours
        // without repeating one; the GPT-4 rows stay in the table.
        let llama = paper.iter().filter(|r| !r.method.starts_with("GPT-4"));
        points.extend(llama.map(|r| {
            let exact = |value| Estimate {
                value,
                ci_low: None,
                ci_high: None,
            };
            FrontierPoint {
                label: format!("paper: {}", r.method),
                accuracy: exact(r.accuracy),
                ece: exact(r.ece),
            }
        }));
    }
    let frontier = write_frontier_plot(
        &points,
        &format!("Accuracy vs ECE on {}", s.dataset),
        run_dir.join(FRONTIER_PLOT),
    )?;
    let risk_coverage = write_risk_coverage_plot(
        &[(&s.method, &results.metrics.coverage)],
        &format!("Risk vs coverage on {}", s.dataset),
        run_dir.join(RISK_COVERAGE_PLOT),
    )?;
    Ok(Plots {
        reliability: reliability.svg,
        frontier: frontier.svg,
        risk_coverage: risk_coverage.svg,
    })
}

fn settings_table(settings: &RunSettings, version: &str) -> Table {
    let mut table = Table::new(&[("setting", false), ("value", false)]);
    for (name, value) in settings.rows() {
        table.push(vec![Cell::new(name), Cell::new(value)]);
    }
    table.push(vec![Cell::new("lincal-eval version"), Cell::new(version)]);
    table
}

fn metrics_table(metrics: &MetricsReport) -> Table {
    let level = interval_label(metrics.ci_level);
    let mut table = Table::new(&[("metric", false), ("value", true), (level.as_str(), true)]);
    for row in metric_rows(metrics) {
        table.push(vec![
            Cell::new(row.name),
            Cell::new(format_value(row.estimate.value)),
            Cell::new(format_interval(&row.estimate)),
        ]);
    }
    table
}

/// The per-biography averages with their intervals.
fn per_response_table(per_response: &PerResponse, level: f64) -> Table {
    let level = interval_label(level);
    let mut table = Table::new(&[
        ("metric", false),
        ("mean over biographies", true),
        (&level, true),
    ]);
    let averages = &per_response.averages;
    for (name, estimate) in [("accuracy", &averages.accuracy), ("ECE", &averages.ece)] {
        let estimate = Estimate {
            value: Some(estimate.value),
            ci_low: estimate.ci_low,
            ci_high: estimate.ci_high,
        };
        table.push(vec![
            Cell::new(name),
            Cell::new(format_value(estimate.value)),
            Cell::new(format_interval(&estimate)),
        ]);
    }
    table
}

fn per_response_note(per_response: &PerResponse) -> String {
    format!(
        "Each biography scored on its own, then averaged, so every person counts once (the \
         metrics above pool all claims, as the reference does): {} biographies, {} more left \
         out for having no checkable claim. A biography with fewer claims than bins gets one \
         bin per claim.",
        per_response.averages.subjects, per_response.without_items
    )
}

fn counts_table(counts: &Counts, kind: ExampleKind) -> Table {
    let mut table = Table::new(&[("count", false), ("value", true)]);
    let mut row = |name: String, value: usize| {
        table.push(vec![Cell::new(name), Cell::new(value.to_string())]);
    };
    let (item, subject, correct) = match kind {
        ExampleKind::Qa => ("answers", "questions", "correct"),
        ExampleKind::Claim => ("claims", "entities", "supported"),
    };
    row(format!("{item} in {EXAMPLES_FILE}"), counts.examples);
    row(subject.to_string(), counts.subjects);
    row("scored predictions".into(), counts.scored);
    row(correct.to_string(), counts.correct);
    if kind == ExampleKind::Qa {
        row(
            "no extracted answer (scored wrong, confidence 1)".into(),
            counts.empty_extractions,
        );
    } else {
        row(
            "exclusive alternatives left out (a more confident one scored)".into(),
            counts.merged_alternatives,
        );
    }
    row(
        "no stated confidence (scored at 1.0)".into(),
        counts.without_confidence,
    );
    for (stage, count) in &counts.failures {
        row(format!("items that failed in {stage}"), *count);
    }
    table
}

fn run_title(s: &RunSettings) -> String {
    format!("{} on {}", s.method, s.dataset)
}

fn run_markdown(results: &RunResults) -> String {
    let s = &results.settings;
    let m = &results.metrics;
    let mut out = format!("# {}\n\n", markdown(&run_title(s)));
    out += "## Settings\n\n";
    out += &settings_table(s, &results.lincal_version).to_markdown();
    out += "\n## Metrics\n\n";
    out += &metrics_table(m).to_markdown();
    writeln!(out, "\n{}", metrics_note(m)).unwrap();
    if let Some(per_response) = &results.per_response {
        out += "\n## Per biography\n\n";
        out += &per_response_table(per_response, m.ci_level).to_markdown();
        writeln!(out, "\n{}", per_response_note(per_response)).unwrap();
    }
    out += "\n## Counts\n\n";
    out += &counts_table(&results.counts, results.kind).to_markdown();
    if results.counts.failures.is_empty() {
        out += "\nNo stage failures recorded.\n";
    }
    out += "\n## Plots\n\n";
    let frontier = if paper_results(&s.dataset).is_some() {
        "Accuracy vs ECE, with the paper's Llama 2 7B methods"
    } else {
        "Accuracy vs ECE"
    };
    for (name, stem) in [
        ("Reliability diagram", RELIABILITY_PLOT),
        (frontier, FRONTIER_PLOT),
        (
            "Risk vs coverage (answering only the most confident)",
            RISK_COVERAGE_PLOT,
        ),
    ] {
        writeln!(
            out,
            "- {name}: [{stem}.png]({stem}.png) ([SVG]({stem}.svg))"
        )
        .unwrap();
    }
    out += &paper_section_markdown(&s.dataset);
    writeln!(
        out,
        "\nEvery scored item is in [{EXAMPLES_FILE}]({EXAMPLES_FILE}); {REPORT_HTML_FILE} lists \
         the first ones."
    )
    .unwrap();
    out
}

fn run_html(
    results: &RunResults,
    examples: &[ScoredExample],
    shown: usize,
    plots: &Plots,
) -> Result<String, EvalError> {
    let s = &results.settings;
    let m = &results.metrics;
    let mut body = format!("<h1>{}</h1>\n", html(&run_title(s)));
    body += "<h2>Settings</h2>\n";
    body += &settings_table(s, &results.lincal_version).to_html();
    body += "<h2>Metrics</h2>\n";
    body += &metrics_table(m).to_html();
    writeln!(body, "<p class=\"note\">{}</p>", html(&metrics_note(m))).unwrap();
    if let Some(per_response) = &results.per_response {
        body += "<h2>Per biography</h2>\n";
        body += &per_response_table(per_response, m.ci_level).to_html();
        writeln!(
            body,
            "<p class=\"note\">{}</p>",
            html(&per_response_note(per_response))
        )
        .unwrap();
    }
    body += "<h2>Counts</h2>\n";
    body += &counts_table(&results.counts, results.kind).to_html();
    body += "<h2>Plots</h2>\n";
    body += &svg_figure(
        &plots.reliability,
        "Reliability diagram: accuracy against mean confidence per bin",
    )?;
    body += &svg_figure(&plots.frontier, "Accuracy against ECE")?;
    body += &svg_figure(
        &plots.risk_coverage,
        "Risk (error rate) against coverage, answering the most confident first",
    )?;
    body += &paper_section_html(&s.dataset);
    let shown = shown.min(examples.len());
    writeln!(
        body,
        "<h2>Examples</h2>\n<p class=\"note\">The first {shown} of {} items; all are in {}.</p>",
        examples.len(),
        html(EXAMPLES_FILE)
    )
    .unwrap();
    body += &examples_table(&examples[..shown], results.kind).to_html();
    Ok(html_page(&run_title(s), &body))
}

/// The examples as a table for skimming: what was asked, what came back, how it was scored.
fn examples_table(examples: &[ScoredExample], kind: ExampleKind) -> Table {
    let header: &[(&str, bool)] = match kind {
        ExampleKind::Qa => &[
            ("id", false),
            ("question", false),
            ("gold answer", false),
            ("answer", false),
            ("confidence", true),
            ("correct", false),
            ("failures", false),
        ],
        ExampleKind::Claim => &[
            ("id", false),
            ("entity", false),
            ("claim", false),
            ("core claim", false),
            ("confidence", true),
            ("supported", false),
            ("failures", false),
        ],
    };
    let mut table = Table::new(header);
    for example in examples {
        let confidence = example
            .confidence()
            .map_or("none (1.0)".into(), |c| format!("{c:.3}"));
        let failures: Vec<String> = example
            .failures()
            .iter()
            .map(|f| format!("{}: {}", f.stage, f.message))
            .collect();
        let [second, third, fourth] = match example {
            ScoredExample::Qa(e) => {
                let answer = match &e.answer {
                    Some(a) => Cell::new(a.as_str()),
                    None => Cell::new("(none extracted)"),
                };
                let answer = if e.extracted_answers.len() > 1 {
                    answer.with_details("all extracted", &e.extracted_answers.join("\n"))
                } else {
                    answer
                };
                [
                    Cell::new(e.question.as_str())
                        .with_details("generated text", &e.generated_text),
                    Cell::new(e.gold_answer.as_str()),
                    answer,
                ]
            }
            ScoredExample::Claim(e) => {
                let claim = match &e.group {
                    Some(group) => {
                        Cell::new(e.claim.as_str()).with_details("exclusive group", group)
                    }
                    None => Cell::new(e.claim.as_str()),
                };
                [
                    Cell::new(e.entity.as_str()),
                    claim,
                    Cell::new(e.core_claim.as_deref().unwrap_or("–")),
                ]
            }
        };
        table.push(vec![
            Cell::new(example.id()),
            second,
            third,
            fourth,
            Cell::new(confidence),
            Cell::new(if example.correct() { "yes" } else { "no" }),
            Cell::new(failures.join("; ")),
        ]);
    }
    table
}
