//! The pipeline's report, written into `report/` beside `lincal eval compare`'s comparison
//! (its table, reliability diagrams and accuracy-vs-ECE frontier):
//! - `report.json`, for scripts: every method's accuracy, ECE, Brier and AUROC with 95%
//!   bootstrap intervals beside a constant-confidence baseline (`methods`), the same test
//!   questions answered by every method (`examples`), and the first and last logged value of
//!   each training curve (`training`);
//! - `report.md`: the same for people, showing the comparison's plots and the training curves;
//! - `training-*.{png,svg}`: SFT loss, reward-model eval loss, PPO reward and KL per step.

use anyhow::{Context, Result};
use lincal_eval::compare::{COMPARISON_HTML_FILE, COMPARISON_JSON_FILE, COMPARISON_MD_FILE};
use lincal_eval::report::{EXAMPLES_FILE, FRONTIER_PLOT};
use lincal_eval::{Comparison, QaExample, ScoredExample, predictions, read_examples};
use lincal_metrics::{
    Curve, Estimate, MetricsReport, PairedComparison, PairedDifference, Prediction, ReportConfig,
    compute_report, write_line_plot,
};
use lincal_model::fsutil::write_atomic;
use lincal_train::run::METRICS_FILE;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// The name of the constant-confidence baseline in reports.
pub const CONSTANT: &str = "Constant";
pub const REPORT_JSON_FILE: &str = "report.json";
pub const REPORT_MD_FILE: &str = "report.md";
/// How many test questions the report shows answered by every method.
const SIDE_BY_SIDE_QUESTIONS: usize = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricWithCi {
    pub value: Option<f64>,
    /// The 95% bootstrap interval; null where no resample defines the metric.
    pub ci: Option<[f64; 2]>,
}

impl MetricWithCi {
    /// The value and its interval as the report writes them ("0.500 [0.442, 0.615]"); `None`
    /// when the metric is undefined.
    fn with_interval(&self) -> Option<String> {
        let value = self.value?;
        Some(match self.ci {
            Some([low, high]) => format!("{value:.3} [{low:.3}, {high:.3}]"),
            None => format!("{value:.3}"),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodMetrics {
    pub name: String,
    pub n: usize,
    pub accuracy: MetricWithCi,
    pub ece: MetricWithCi,
    pub brier: MetricWithCi,
    pub auroc: MetricWithCi,
}

/// The content of `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineReport {
    pub methods: Vec<MethodMetrics>,
    /// What the numbers show and what they cannot, in sentences ([`findings`]).
    pub findings: Vec<String>,
    pub examples: Vec<SideBySide>,
    pub training: TrainingSummary,
}

/// The methods' metrics of a `report.json` written by [`write_pipeline_report`].
pub fn read_methods(path: &Path) -> Result<Vec<MethodMetrics>> {
    #[derive(Deserialize)]
    struct Methods {
        methods: Vec<MethodMetrics>,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: Methods = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a pipeline report", path.display()))?;
    Ok(report.methods)
}

/// One test question and every method's answer to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SideBySide {
    pub id: String,
    pub question: String,
    pub gold_answer: String,
    /// In the order of the evaluation runs.
    pub answers: Vec<MethodAnswer>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodAnswer {
    pub method: String,
    /// The paragraph the method generated, as the reader saw it.
    pub paragraph: String,
    pub extracted_answers: Vec<String>,
    /// The extracted answer that was scored; null when the reader found none.
    pub answer: Option<String>,
    /// The reader's probability of `answer`; null for a method that states no confidence.
    pub confidence: Option<f64>,
    pub correct: bool,
}

/// The training runs' logged numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingSummary {
    /// One row per run and metric with logged values.
    pub curves: Vec<CurveSummary>,
    /// Each run and metric with nothing logged, and why.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurveSummary {
    pub run: String,
    /// The run's directory in the pipeline.
    pub stage: String,
    /// The key in the run's `metrics.jsonl`.
    pub metric: String,
    /// How many values were logged.
    pub points: usize,
    pub first: StepValue,
    pub last: StepValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepValue {
    pub step: u64,
    pub value: f64,
}

fn with_ci<V: Copy + Into<Option<f64>>>(estimate: &Estimate<V>) -> MetricWithCi {
    let ci = estimate
        .ci_low
        .zip(estimate.ci_high)
        .map(|(low, high)| [low, high]);
    MetricWithCi {
        value: estimate.value.into(),
        ci,
    }
}

fn method(name: &str, metrics: &MetricsReport) -> MethodMetrics {
    MethodMetrics {
        name: name.to_string(),
        n: metrics.n,
        accuracy: with_ci(&metrics.accuracy),
        ece: with_ci(&metrics.ece),
        brier: with_ci(&metrics.brier),
        auroc: with_ci(&metrics.auroc),
    }
}

/// Every answer of `reference` at one confidence, `reference`'s accuracy: a model that only
/// hedges uniformly scores like this, so a calibrated method must beat its Brier score or
/// discriminate (AUROC above its 0.5). Its ECE is small but not 0: equal-mass bins split the
/// tied confidences, and each bin's accuracy strays from the overall one.
pub fn constant_baseline(reference: &[Prediction]) -> Vec<Prediction> {
    let accuracy =
        reference.iter().filter(|p| p.correct).count() as f64 / reference.len().max(1) as f64;
    reference
        .iter()
        .map(|p| Prediction::new(accuracy, p.correct))
        .collect()
}

/// The metrics of each evaluation run `(method name, its examples)`, then the constant
/// baseline built on the first run's answers.
fn method_metrics(
    runs: &[(&str, Vec<ScoredExample>)],
    config: &ReportConfig,
) -> Result<Vec<MethodMetrics>> {
    let mut methods = Vec::new();
    for (name, examples) in runs {
        let metrics = compute_report(&predictions(examples), config)
            .with_context(|| format!("scoring the {name} evaluation"))?;
        methods.push(method(name, &metrics));
    }
    if let Some((_, reference)) = runs.first() {
        let constant = constant_baseline(&predictions(reference));
        methods.push(method(CONSTANT, &compute_report(&constant, config)?));
    }
    Ok(methods)
}

/// The Markdown table of `methods`: each metric with its 95% interval.
pub fn metrics_table(methods: &[MethodMetrics]) -> String {
    let cell = |m: &MetricWithCi| m.with_interval().unwrap_or_else(|| "-".into());
    let mut table = String::from(
        "| method | n | accuracy | ECE | Brier | AUROC |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for m in methods {
        writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} |",
            m.name,
            m.n,
            cell(&m.accuracy),
            cell(&m.ece),
            cell(&m.brier),
            cell(&m.auroc)
        )
        .unwrap();
    }
    table
}

/// Up to `limit` test questions answered in every run, the first ids in sorted order (so
/// reruns show the same ones), each with every run's answer in run order.
pub fn side_by_side(runs: &[(&str, Vec<ScoredExample>)], limit: usize) -> Vec<SideBySide> {
    let by_id: Vec<BTreeMap<&str, &QaExample>> = runs
        .iter()
        .map(|(_, examples)| {
            examples
                .iter()
                .filter_map(|e| match e {
                    ScoredExample::Qa(qa) => Some((qa.id.as_str(), qa)),
                    ScoredExample::Claim(_) => None,
                })
                .collect()
        })
        .collect();
    let Some(first) = by_id.first() else {
        return Vec::new();
    };
    first
        .iter()
        .filter(|(id, _)| by_id.iter().all(|run| run.contains_key(*id)))
        .take(limit)
        .map(|(id, qa)| SideBySide {
            id: id.to_string(),
            question: qa.question.clone(),
            gold_answer: qa.gold_answer.clone(),
            answers: runs
                .iter()
                .zip(&by_id)
                .map(|((method, _), run)| {
                    let e = run[id];
                    MethodAnswer {
                        method: method.to_string(),
                        paragraph: e.generated_text.clone(),
                        extracted_answers: e.extracted_answers.clone(),
                        answer: e.answer.clone(),
                        confidence: e.confidence,
                        correct: e.correct,
                    }
                })
                .collect(),
        })
        .collect()
}

/// A training curve of the report: one key of several runs' `metrics.jsonl`, in one plot.
struct CurveFamily {
    /// The plot's file stem in `report/`.
    stem: &'static str,
    title: &'static str,
    y_label: &'static str,
    /// The key in `metrics.jsonl`. Step and evaluation records are told apart by their keys:
    /// `loss`, `reward` and `kl` are logged each step, `eval_loss` at each evaluation.
    key: &'static str,
    /// (stage directory in the pipeline, run name)
    runs: &'static [(&'static str, &'static str)],
}

const PPO_RUNS: &[(&str, &str)] = &[("lc_ppo", "LC RL"), ("factuality_ppo", "Factuality RL")];

const CURVES: [CurveFamily; 4] = [
    CurveFamily {
        stem: "training-sft-loss",
        title: "SFT training loss",
        y_label: "Loss per target token",
        key: "loss",
        runs: &[
            ("lc_sft", "LC SFT"),
            ("factuality_sft", "Factuality SFT"),
            ("claude_distill", "Claude Distill"),
            ("extract_answers", "ExtractAnswers"),
        ],
    },
    CurveFamily {
        stem: "training-rm-eval-loss",
        title: "Reward model evaluation loss",
        y_label: "Binary cross-entropy",
        key: "eval_loss",
        runs: &[
            ("forecast_probs", "ForecastProbs"),
            ("factuality_rm", "Factuality RM"),
        ],
    },
    CurveFamily {
        stem: "training-ppo-reward",
        title: "PPO mean reward",
        y_label: "Mean reward of the rollouts",
        key: "reward",
        runs: PPO_RUNS,
    },
    CurveFamily {
        stem: "training-ppo-kl",
        title: "PPO KL to the initial policy",
        y_label: "Mean KL per response (nats)",
        key: "kl",
        runs: PPO_RUNS,
    },
];

/// A run's logged values of its family's key, by step.
struct RunCurve {
    stage: &'static str,
    run: &'static str,
    points: Vec<(u64, f64)>,
}

/// The curves of [`CURVES`] that the pipeline's training runs logged.
struct Training {
    families: Vec<(&'static CurveFamily, Vec<RunCurve>)>,
    /// Each run and metric with nothing logged, and why.
    skipped: Vec<String>,
}

/// `(step, value)` of every record in the `metrics.jsonl` at `path` with a number under `key`,
/// in file order (step order: a resumed run drops the records it redoes); None when there is
/// no such file.
fn read_metric(path: &Path, key: &str) -> Result<Option<Vec<(u64, f64)>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON record", path.display(), i + 1))?;
        if let (Some(step), Some(value)) = (record["step"].as_u64(), record[key].as_f64()) {
            points.push((step, value));
        }
    }
    Ok(Some(points))
}

/// The training curves under the pipeline directory `dir`; a run without metrics is skipped
/// and named, since the report is worth reading without it.
fn read_training(dir: &Path) -> Result<Training> {
    let mut training = Training {
        families: Vec::new(),
        skipped: Vec::new(),
    };
    for family in &CURVES {
        let mut curves = Vec::new();
        for &(stage, run) in family.runs {
            if stage == "claude_distill" && !dir.join(stage).exists() {
                // An optional stage (`claude_distill = true`), not part of this pipeline.
                continue;
            }
            let note = match read_metric(&dir.join(stage).join(METRICS_FILE), family.key)? {
                Some(points) if !points.is_empty() => {
                    curves.push(RunCurve { stage, run, points });
                    continue;
                }
                Some(_) => format!("{run}: no `{}` in {stage}/{METRICS_FILE}", family.key),
                None => format!("{run}: no {stage}/{METRICS_FILE} (the stage has not run)"),
            };
            // PPO runs are in two families; a missing file is named once.
            if !training.skipped.contains(&note) {
                training.skipped.push(note);
            }
        }
        training.families.push((family, curves));
    }
    Ok(training)
}

impl Training {
    fn summary(&self) -> TrainingSummary {
        let at = |&(step, value): &(u64, f64)| StepValue { step, value };
        let curves = self
            .families
            .iter()
            .flat_map(|(family, curves)| {
                curves.iter().map(|c| CurveSummary {
                    run: c.run.to_string(),
                    stage: c.stage.to_string(),
                    metric: family.key.to_string(),
                    points: c.points.len(),
                    first: at(&c.points[0]),
                    last: at(&c.points[c.points.len() - 1]),
                })
            })
            .collect();
        TrainingSummary {
            curves,
            skipped: self.skipped.clone(),
        }
    }

    /// Plots each family with at least one curve into `out`: (title, PNG file name) of each.
    fn plot(&self, out: &Path) -> Result<Vec<(&'static str, String)>> {
        let mut plots = Vec::new();
        for (family, curves) in &self.families {
            if curves.is_empty() {
                continue;
            }
            let curves: Vec<Curve> = curves
                .iter()
                .map(|c| Curve {
                    label: c.run.to_string(),
                    points: c.points.iter().map(|&(s, v)| (s as f64, v)).collect(),
                })
                .collect();
            let stem = out.join(family.stem);
            write_line_plot(
                &curves,
                family.title,
                "Optimizer step",
                family.y_label,
                &stem,
            )?;
            plots.push((family.title, format!("{}.png", family.stem)));
        }
        Ok(plots)
    }
}

/// Writes `report.json`, `report.md` and the training curves into `out` (the report stage's
/// directory, where `lincal eval compare` has written its comparison), from the evaluation
/// runs `evaluations` (stage directory under `dir`, method name; the base model first, for
/// the constant baseline) and the training runs under `dir`.
pub fn write_pipeline_report(
    dir: &Path,
    out: &Path,
    evaluations: &[(&str, &str)],
    config: &ReportConfig,
) -> Result<PipelineReport> {
    let mut runs = Vec::new();
    for &(stage, method) in evaluations {
        let path = dir.join(stage).join(EXAMPLES_FILE);
        let examples = read_examples(&path)
            .with_context(|| format!("reading the {method} evaluation in {}", path.display()))?;
        runs.push((method, examples));
    }
    let path = out.join(COMPARISON_JSON_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let comparison: Comparison = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a comparison", path.display()))?;
    let training = read_training(dir)?;
    let training_plots = training.plot(out)?;
    let methods = method_metrics(&runs, config)?;
    let training = training.summary();
    let readings: Vec<Reading> = runs
        .iter()
        .map(|(method, examples)| Reading::of(method, examples))
        .collect();
    let report = PipelineReport {
        findings: findings(&methods, &readings, &training, &named_pairs(&comparison)),
        methods,
        examples: side_by_side(&runs, SIDE_BY_SIDE_QUESTIONS),
        training,
    };
    write_atomic(
        &out.join(REPORT_JSON_FILE),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    write_atomic(
        &out.join(REPORT_MD_FILE),
        markdown(&report, &comparison, &training_plots).as_bytes(),
    )?;
    Ok(report)
}

/// How the reader read one method's paragraphs.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub method: String,
    pub paragraphs: usize,
    /// Paragraphs with no extracted answer: wrong at confidence 1 in the metrics (SPEC 5.2).
    pub no_answer: usize,
    /// The distinct confidences of the answered paragraphs, in percent, ascending.
    pub confidences: Vec<u32>,
}

impl Reading {
    fn of(method: &str, examples: &[ScoredExample]) -> Self {
        let qa: Vec<&QaExample> = examples
            .iter()
            .filter_map(|e| match e {
                ScoredExample::Qa(qa) => Some(qa),
                ScoredExample::Claim(_) => None,
            })
            .collect();
        let mut confidences: Vec<u32> = qa
            .iter()
            .filter(|e| e.answer.is_some())
            .filter_map(|e| e.confidence)
            .map(|c| (100.0 * c).round() as u32)
            .collect();
        confidences.sort_unstable();
        confidences.dedup();
        Reading {
            method: method.to_string(),
            paragraphs: qa.len(),
            no_answer: qa.iter().filter(|e| e.answer.is_none()).count(),
            confidences,
        }
    }
}

/// Whether two metrics' 95% intervals are apart: `Some(true)` when they do not overlap,
/// `None` when either has no interval.
fn intervals_apart(a: &MetricWithCi, b: &MetricWithCi) -> Option<bool> {
    let ([a_low, a_high], [b_low, b_high]) = (a.ci?, b.ci?);
    Some(a_high < b_low || b_high < a_low)
}

fn with_interval(metric: &MetricWithCi) -> String {
    metric.with_interval().unwrap_or_else(|| "undefined".into())
}

/// Two methods' paired differences (from the comparison's `pairs`), by method name.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedPair {
    pub a: String,
    pub b: String,
    pub differences: PairedComparison,
}

/// The pairs of `comparison` named by their runs' labels (the method names).
fn named_pairs(comparison: &Comparison) -> Vec<NamedPair> {
    comparison
        .pairs
        .iter()
        .map(|pair| NamedPair {
            a: comparison.runs[pair.a].label.clone(),
            b: comparison.runs[pair.b].label.clone(),
            differences: pair.differences.clone(),
        })
        .collect()
}

/// `x − y` of the metric `pick` chooses, with its paired interval, from the pair of `x` and
/// `y` in either order, and the number of items both scored.
fn paired_difference(
    pairs: &[NamedPair],
    x: &str,
    y: &str,
    pick: fn(&PairedComparison) -> &PairedDifference,
) -> Option<(PairedDifference, usize)> {
    pairs.iter().find_map(|pair| {
        let d = pick(&pair.differences);
        let flip = |e: Estimate| Estimate {
            value: -e.value,
            ci_low: e.ci_high.map(|v| -v),
            ci_high: e.ci_low.map(|v| -v),
        };
        if (pair.a.as_str(), pair.b.as_str()) == (x, y) {
            Some((*d, pair.differences.subjects))
        } else if (pair.a.as_str(), pair.b.as_str()) == (y, x) {
            Some((
                PairedDifference {
                    a: d.b,
                    b: d.a,
                    difference: flip(d.difference),
                    distinguishable: d.distinguishable,
                },
                pair.differences.subjects,
            ))
        } else {
            None
        }
    })
}

/// "−0.050 [−0.090, −0.010]".
fn signed_with_interval(e: &Estimate) -> String {
    match (e.ci_low, e.ci_high) {
        (Some(low), Some(high)) => format!("{:+.3} [{low:+.3}, {high:+.3}]", e.value),
        _ => format!("{:+.3}", e.value),
    }
}

/// What the report's own numbers show, and what they cannot at this size, for the claims of
/// the paper: the LC methods' ECE against the others' (by their paired difference where the
/// comparison has one, else by their intervals), whether their stated confidence tells right
/// answers from wrong ones (AUROC above 0.5, or Brier below the constant baseline's), and
/// whether the PPO runs moved their SFT models.
pub fn findings(
    methods: &[MethodMetrics],
    readings: &[Reading],
    training: &TrainingSummary,
    pairs: &[NamedPair],
) -> Vec<String> {
    let find = |name: &str| methods.iter().find(|m| m.name == name);
    let constant = find(CONSTANT);
    let mut findings = Vec::new();
    for lc in ["LC SFT", "LC RL"].into_iter().filter_map(find) {
        for other in methods
            .iter()
            .filter(|m| !m.name.starts_with("LC ") && m.name != CONSTANT)
        {
            let relation = match (lc.ece.value, other.ece.value) {
                (Some(a), Some(b)) if a < b => "below",
                (Some(_), Some(_)) => "not below",
                _ => continue,
            };
            let verdict = match paired_difference(pairs, &lc.name, &other.name, |p| &p.ece) {
                Some((d, items)) => format!(
                    "the paired difference {} over the {items} items both scored {}",
                    signed_with_interval(&d.difference),
                    if d.distinguishable {
                        "excludes zero"
                    } else {
                        "includes zero, so this size cannot tell them apart"
                    }
                ),
                None => match intervals_apart(&lc.ece, &other.ece) {
                    Some(true) => "the 95% intervals are apart".to_string(),
                    Some(false) => {
                        "the 95% intervals overlap, so this size cannot tell them apart".to_string()
                    }
                    None => "without intervals to compare".to_string(),
                },
            };
            findings.push(format!(
                "{}'s ECE {} is {relation} {}'s {}: {verdict}.",
                lc.name,
                with_interval(&lc.ece),
                other.name,
                with_interval(&other.ece)
            ));
        }
        let discrimination = match lc.auroc.ci {
            Some([low, _]) if low > 0.5 => "its interval is above 0.5: its stated confidence \
                                            tells its right answers from its wrong ones"
                .to_string(),
            Some([_, high]) if high < 0.5 => "its interval is below 0.5: its stated confidence \
                                              is higher on its wrong answers than on its right \
                                              ones"
                .to_string(),
            Some(_) => {
                "its interval reaches 0.5: discrimination is not shown at this size".to_string()
            }
            None => "undefined (all its answers right, or all wrong)".to_string(),
        };
        let mut sentence = format!(
            "{}'s AUROC {}: {discrimination}.",
            lc.name,
            with_interval(&lc.auroc)
        );
        if let Some(constant) = constant
            && let (Some(brier), Some(constant_brier)) = (lc.brier.value, constant.brier.value)
        {
            let relation = if brier < constant_brier {
                "below"
            } else {
                "not below"
            };
            sentence += &format!(
                " Its Brier score {} is {relation} the constant baseline's {}.",
                with_interval(&lc.brier),
                with_interval(&constant.brier)
            );
        }
        if let Some(reading) = readings.iter().find(|r| r.method == lc.name) {
            let stated = match reading.confidences.as_slice() {
                [] => String::new(),
                [only] => format!(" Every answer it gives is stated at {only}%."),
                [low, .., high] => format!(
                    " Its answers are stated at {} levels from {low}% to {high}%.",
                    reading.confidences.len()
                ),
            };
            sentence += &format!(
                " {} of its {} paragraphs give no answer (\"I do not know\"), which the \
                 reference's metrics count as wrong at confidence 1, the most confident \
                 wrong answers there are.{stated}",
                reading.no_answer, reading.paragraphs
            );
        }
        findings.push(sentence);
    }
    for (rl, sft) in [("LC RL", "LC SFT"), ("Factuality RL", "Factuality SFT")] {
        let (Some(rl_metrics), Some(sft_metrics)) = (find(rl), find(sft)) else {
            continue;
        };
        let curve = |metric: &str| {
            training
                .curves
                .iter()
                .find(|c| c.run == rl && c.metric == metric)
        };
        let Some(reward) = curve("reward") else {
            continue;
        };
        let kl = curve("kl").map_or(String::new(), |kl| {
            format!(", KL to the SFT model {:.4} at the end", kl.last.value)
        });
        let paired = (
            paired_difference(pairs, rl, sft, |p| &p.accuracy),
            paired_difference(pairs, rl, sft, |p| &p.ece),
        );
        let verdict = if let (Some((accuracy, _)), Some((ece, _))) = paired {
            let shown = if accuracy.distinguishable || ece.distinguishable {
                "one of them excludes zero against"
            } else {
                "both include zero against"
            };
            format!(
                "its paired differences in accuracy {} and ECE {}: {shown}",
                signed_with_interval(&accuracy.difference),
                signed_with_interval(&ece.difference)
            )
        } else if [
            intervals_apart(&rl_metrics.accuracy, &sft_metrics.accuracy),
            intervals_apart(&rl_metrics.ece, &sft_metrics.ece),
        ]
        .contains(&Some(true))
        {
            "its accuracy or ECE interval is apart from".to_string()
        } else {
            "its accuracy and ECE intervals overlap those of".to_string()
        };
        findings.push(format!(
            "{rl} ran {} PPO steps (mean reward {:.3} at step {}, {:.3} at step {}{kl}); \
             {verdict} {sft}. A few steps are enough to run every part of PPO, not to show its \
             effect, which the paper measures after 1,500.",
            reward.last.step,
            reward.first.value,
            reward.first.step,
            reward.last.value,
            reward.last.step
        ));
    }
    findings
}

/// `report.md`: the metrics table, the comparison's plots, the training curves and numbers,
/// and the side-by-side answers.
fn markdown(
    report: &PipelineReport,
    comparison: &Comparison,
    training_plots: &[(&str, String)],
) -> String {
    let mut md = format!(
        "# Linguistic calibration pipeline: {}\n\n",
        comparison.dataset
    );
    md += "Every method on the same test questions, read by one reader and scored by one \
           judge; 95% bootstrap intervals in brackets. ";
    if let Some(first) = report.methods.first() {
        writeln!(
            md,
            "{CONSTANT} states {}'s accuracy as the confidence of each of its answers: a method \
             that only hedges scores like it, so a calibrated one must beat its Brier score or \
             its AUROC of 0.5.\n",
            first.name
        )
        .unwrap();
    }
    md += &metrics_table(&report.methods);
    if !report.findings.is_empty() {
        md += "\n## What this run shows\n\n";
        for finding in &report.findings {
            writeln!(md, "- {finding}").unwrap();
        }
    }
    if !comparison.notes.is_empty() {
        md += "\n";
    }
    for note in &comparison.notes {
        writeln!(md, "- {note}").unwrap();
    }
    writeln!(
        md,
        "\nThe full comparison: [{COMPARISON_MD_FILE}]({COMPARISON_MD_FILE}) \
         ([HTML]({COMPARISON_HTML_FILE})).\n\n## Accuracy vs ECE\n\n\
         ![Accuracy vs ECE]({FRONTIER_PLOT}.png)\n\n## Reliability diagrams\n"
    )
    .unwrap();
    for run in &comparison.runs {
        writeln!(md, "![{}]({}.png)\n", run.label, run.reliability_plot).unwrap();
    }

    md += "## Training\n\n| run | metric | values logged | first | last |\n\
           | --- | --- | --- | --- | --- |\n";
    for c in &report.training.curves {
        writeln!(
            md,
            "| {} | `{}` | {} | {:.4} (step {}) | {:.4} (step {}) |",
            c.run, c.metric, c.points, c.first.value, c.first.step, c.last.value, c.last.step
        )
        .unwrap();
    }
    if !report.training.skipped.is_empty() {
        md += "\nNot plotted:\n\n";
        for note in &report.training.skipped {
            writeln!(md, "- {note}").unwrap();
        }
    }
    for (title, png) in training_plots {
        write!(md, "\n![{title}]({png})\n").unwrap();
    }

    md += "\n## Same question, every method\n";
    if report.examples.is_empty() {
        md += "\nNo test question was answered in every evaluation.\n";
    }
    for q in &report.examples {
        writeln!(
            md,
            "\n### {} (`{}`)\n\nGold answer: **{}**",
            q.question, q.id, q.gold_answer
        )
        .unwrap();
        for a in &q.answers {
            let answer = a.answer.as_deref().unwrap_or("none extracted");
            let confidence = a.confidence.map_or("no stated confidence".into(), |c| {
                format!("confidence {c:.2}")
            });
            let verdict = if a.correct { "correct" } else { "incorrect" };
            writeln!(
                md,
                "\n**{}**: answer *{answer}*, {confidence}, {verdict}; extracted: {}.\n",
                a.method,
                if a.extracted_answers.is_empty() {
                    "nothing".to_string()
                } else {
                    a.extracted_answers.join("; ")
                }
            )
            .unwrap();
            for line in a.paragraph.lines() {
                writeln!(md, "> {line}").unwrap();
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One QA record of `examples.jsonl` as evaluation runs write it.
    fn qa_line(id: &str, answer: Option<&str>, confidence: Option<f64>, correct: bool) -> String {
        serde_json::json!({
            "kind": "qa",
            "id": id,
            "question": format!("Question {id}?"),
            "gold_answer": "Paris",
            "generated_text": format!("My answer to {id}:\nmaybe {answer:?}."),
            "extracted_answers": answer.into_iter().chain(["Lyon"]).collect::<Vec<_>>(),
            "answer": answer,
            "confidence": confidence,
            "correct": correct,
        })
        .to_string()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn fast_config() -> ReportConfig {
        ReportConfig {
            bootstrap: lincal_metrics::BootstrapConfig {
                resamples: 200,
                ..ReportConfig::qa().bootstrap
            },
            ..ReportConfig::qa()
        }
    }

    #[test]
    fn side_by_side_takes_the_first_sorted_ids_that_every_run_answered() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            (
                "ICL",
                vec![
                    qa_line("q3", Some("Paris"), None, true),
                    qa_line("q1", Some("Lyon"), None, false),
                    qa_line("q2", Some("Paris"), None, true),
                    qa_line("q0", Some("Paris"), None, true),
                ],
            ),
            (
                "LC SFT",
                vec![
                    qa_line("q2", Some("Nice"), Some(0.4), false),
                    qa_line("q4", Some("Paris"), Some(0.9), true),
                    qa_line("q1", None, None, false),
                    qa_line("q3", Some("Paris"), Some(0.7), true),
                ],
            ),
        ];
        let mut runs = Vec::new();
        for (i, (method, lines)) in files.iter().enumerate() {
            let path = dir.path().join(format!("run{i}")).join(EXAMPLES_FILE);
            write_lines(&path, lines);
            runs.push((*method, read_examples(&path).unwrap()));
        }
        // q0 and q4 are each missing from one run; q1 < q2 < q3.
        let shown = side_by_side(&runs, 2);
        let ids: Vec<&str> = shown.iter().map(|q| q.id.as_str()).collect();
        assert_eq!(ids, ["q1", "q2"]);
        assert_eq!(side_by_side(&runs, 3).len(), 3);
        assert_eq!(
            (shown[0].question.as_str(), shown[0].gold_answer.as_str()),
            ("Question q1?", "Paris")
        );
        assert_eq!(
            shown[0].answers,
            [
                MethodAnswer {
                    method: "ICL".into(),
                    paragraph: "My answer to q1:\nmaybe Some(\"Lyon\").".into(),
                    extracted_answers: vec!["Lyon".into(), "Lyon".into()],
                    answer: Some("Lyon".into()),
                    confidence: None,
                    correct: false,
                },
                MethodAnswer {
                    method: "LC SFT".into(),
                    paragraph: "My answer to q1:\nmaybe None.".into(),
                    extracted_answers: vec!["Lyon".into()],
                    answer: None,
                    confidence: None,
                    correct: false,
                },
            ]
        );
        let lc = &shown[1].answers[1];
        assert_eq!(
            (
                lc.method.as_str(),
                lc.answer.as_deref(),
                lc.confidence,
                lc.correct
            ),
            ("LC SFT", Some("Nice"), Some(0.4), false)
        );
        assert!(side_by_side(&[], 3).is_empty());
    }

    /// `metrics.jsonl` records as the training runs log them: a step record, then an
    /// evaluation record where one ran.
    fn write_training_runs(dir: &Path) {
        let sft_step = |step: u64, loss: f64| {
            serde_json::json!({"epoch": step as f64 / 4.0, "loss": loss, "learning_rate": 1e-5,
                "grad_norm": 1.5, "tokens": 900, "tokens_per_second": 190.0, "step": step,
                "elapsed_seconds": step as f64 * 4.7})
            .to_string()
        };
        let eval = |step: u64, loss: f64| {
            serde_json::json!({"step": step, "eval_loss": loss, "eval_mse": loss / 4.0}).to_string()
        };
        write_lines(
            &dir.join("lc_sft").join(METRICS_FILE),
            &[
                sft_step(1, 2.5),
                sft_step(2, 2.25),
                eval(2, 2.4),
                sft_step(3, 2.0),
            ],
        );
        // A reward model: its step records also hold `loss`, which is not the curve.
        write_lines(
            &dir.join("forecast_probs").join(METRICS_FILE),
            &[
                sft_step(1, 0.69),
                eval(1, 0.7),
                sft_step(2, 0.6),
                eval(2, 0.65),
            ],
        );
        // Factuality RM ran without an evaluation set.
        write_lines(
            &dir.join("factuality_rm").join(METRICS_FILE),
            &[sft_step(1, 0.69)],
        );
        let ppo_step = |step: u64, reward: f64, kl: f64| {
            serde_json::json!({"reward": reward, "reward_std": 0.2, "kl": kl, "entropy": 2.0,
                "kl_penalty": -0.1 * kl, "kl_coef": 0.1, "step": step})
            .to_string()
        };
        let ppo_eval = serde_json::json!({"step": 2, "eval_reward": 9.0, "eval_kl": 9.0});
        write_lines(
            &dir.join("lc_ppo").join(METRICS_FILE),
            &[
                ppo_step(1, -0.5, 0.0),
                ppo_step(2, -0.25, 0.125),
                ppo_eval.to_string(),
            ],
        );
    }

    #[test]
    fn training_summary_reads_each_curve_key_and_names_the_runs_without_one() {
        let dir = tempfile::tempdir().unwrap();
        write_training_runs(dir.path());
        let summary = read_training(dir.path()).unwrap().summary();
        let rows: Vec<_> = summary
            .curves
            .iter()
            .map(|c| {
                (
                    c.run.as_str(),
                    c.stage.as_str(),
                    c.metric.as_str(),
                    c.points,
                    (c.first.step, c.first.value),
                    (c.last.step, c.last.value),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("LC SFT", "lc_sft", "loss", 3, (1, 2.5), (3, 2.0)),
                (
                    "ForecastProbs",
                    "forecast_probs",
                    "eval_loss",
                    2,
                    (1, 0.7),
                    (2, 0.65)
                ),
                ("LC RL", "lc_ppo", "reward", 2, (1, -0.5), (2, -0.25)),
                ("LC RL", "lc_ppo", "kl", 2, (1, 0.0), (2, 0.125)),
            ]
        );
        assert_eq!(
            summary.skipped,
            [
                "Factuality SFT: no factuality_sft/metrics.jsonl (the stage has not run)",
                "ExtractAnswers: no extract_answers/metrics.jsonl (the stage has not run)",
                "Factuality RM: no `eval_loss` in factuality_rm/metrics.jsonl",
                "Factuality RL: no factuality_ppo/metrics.jsonl (the stage has not run)",
            ]
        );
    }

    #[test]
    fn the_report_writes_json_markdown_and_training_curves() {
        let dir = tempfile::tempdir().unwrap();
        let config = fast_config();
        let mut run_dirs = Vec::new();
        // The evaluations of a pipeline without Claude Distill.
        let evaluations: Vec<(&str, &str)> = super::super::EVALUATIONS[..5]
            .iter()
            .map(|e| (e.stage, e.method))
            .collect();
        for (i, (stage, method)) in evaluations.iter().enumerate() {
            // Method i answers question j correctly when j >= i.
            let examples: Vec<ScoredExample> = (0..6)
                .map(|j| {
                    serde_json::from_str(&qa_line(
                        &format!("q{j}"),
                        Some(if j >= i { "Paris" } else { "Lyon" }),
                        Some(0.6),
                        j >= i,
                    ))
                    .unwrap()
                })
                .collect();
            let settings = lincal_eval::RunSettings {
                method: method.to_string(),
                model: format!("{stage}-model"),
                dataset: "tiny-test".into(),
                split: None,
                reader: Some("lexical".into()),
                judge: Some("exact".into()),
                extra: Default::default(),
            };
            let options = lincal_eval::ReportOptions {
                metrics: Some(config),
                ..Default::default()
            };
            let run_dir = dir.path().join(stage);
            lincal_eval::write_run_report(&run_dir, &settings, &examples, &options).unwrap();
            run_dirs.push(run_dir);
        }
        let out = dir.path().join("report");
        lincal_eval::compare(&run_dirs, &out).unwrap();
        write_training_runs(dir.path());

        let report = write_pipeline_report(dir.path(), &out, &evaluations, &config).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(REPORT_JSON_FILE)).unwrap())
                .unwrap();
        assert_eq!(json, serde_json::to_value(&report).unwrap());
        let names: Vec<&str> = report.methods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ICL",
                "LC SFT",
                "LC RL",
                "Factuality SFT",
                "Factuality RL",
                CONSTANT
            ]
        );
        assert_eq!(json["methods"][1]["accuracy"]["value"], 5.0 / 6.0);
        let ids: Vec<&str> = report.examples.iter().map(|q| q.id.as_str()).collect();
        assert_eq!(ids, ["q0", "q1", "q2"]);
        assert_eq!(json["examples"][1]["answers"][2]["method"], "LC RL");
        assert_eq!(json["examples"][1]["answers"][2]["answer"], "Lyon");
        assert_eq!(json["training"]["curves"].as_array().unwrap().len(), 4);

        // Each family has a run with logged values, so each is plotted.
        for family in &CURVES {
            let stem = family.stem;
            let png = std::fs::read(out.join(format!("{stem}.png"))).unwrap();
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{stem}");
        }
        let md = std::fs::read_to_string(out.join(REPORT_MD_FILE)).unwrap();
        assert!(md.contains(&metrics_table(&report.methods)), "{md}");
        assert!(md.contains("| LC SFT | `loss` | 3 | 2.5000 (step 1) | 2.0000 (step 3) |"));
        assert!(md.contains("- Factuality RM: no `eval_loss` in factuality_rm/metrics.jsonl"));
        assert!(md.contains(
            "**LC RL**: answer *Lyon*, confidence 0.60, incorrect; extracted: Lyon; Lyon."
        ));
        assert!(
            md.contains("> My answer to q1:\n> maybe Some(\"Lyon\")."),
            "{md}"
        );
        // Every image the page shows exists in the report folder.
        let images: Vec<&str> = md
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split_once(')').map(|(target, _)| target))
            .filter(|target| target.ends_with(".png"))
            .collect();
        assert_eq!(images.len(), 1 + 5 + 4, "{images:?}");
        for image in images {
            assert!(out.join(image).is_file(), "{image}");
        }
    }

    #[test]
    fn the_constant_baseline_states_the_reference_accuracy_for_every_answer() {
        let reference = [
            Prediction::new(1.0, true),
            Prediction::new(1.0, false),
            Prediction::new(0.2, false),
            Prediction::new(0.9, true),
        ];
        let constant = constant_baseline(&reference);
        assert!(constant.iter().all(|p| p.confidence == 0.5));
        assert_eq!(
            constant.iter().map(|p| p.correct).collect::<Vec<_>>(),
            [true, false, false, true]
        );
        let config = ReportConfig {
            bootstrap: lincal_metrics::BootstrapConfig {
                resamples: 200,
                ..ReportConfig::qa().bootstrap
            },
            ..ReportConfig::qa()
        };
        let metrics = compute_report(&constant, &config).unwrap();
        // Brier of a constant 0.5 is 0.25 whatever the outcomes. With fewer answers than the
        // 20 bins each answer is its own bin: ECE = mean |0.5 - correct| = 0.5.
        assert!((metrics.brier.value - 0.25).abs() < 1e-12);
        assert!((metrics.ece.value - 0.5).abs() < 1e-12);
        let row = method(CONSTANT, &metrics);
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["name"], "Constant");
        assert_eq!(json["accuracy"]["value"], 0.5);
        assert!(json["accuracy"]["ci"].as_array().unwrap().len() == 2);
        assert_eq!(json["auroc"]["value"], 0.5);
    }

    #[test]
    fn findings_compare_intervals_and_say_what_ppo_could_not_show() {
        let metric = |value: f64, low: f64, high: f64| MetricWithCi {
            value: Some(value),
            ci: Some([low, high]),
        };
        let method =
            |name: &str, ece: MetricWithCi, auroc: MetricWithCi, brier: f64| MethodMetrics {
                name: name.to_string(),
                n: 100,
                accuracy: metric(0.3, 0.2, 0.4),
                ece,
                brier: metric(brier, brier - 0.05, brier + 0.05),
                auroc,
            };
        let methods = vec![
            method(
                "Zero-Shot",
                metric(0.7, 0.6, 0.8),
                metric(0.5, 0.5, 0.5),
                0.7,
            ),
            method("LC SFT", metric(0.2, 0.1, 0.3), metric(0.7, 0.6, 0.8), 0.18),
            method(
                "Factuality SFT",
                metric(0.25, 0.15, 0.35),
                metric(0.5, 0.4, 0.6),
                0.3,
            ),
            method(
                "Factuality RL",
                metric(0.3, 0.2, 0.4),
                metric(0.5, 0.4, 0.6),
                0.3,
            ),
            method(
                CONSTANT,
                metric(0.0, 0.0, 0.05),
                metric(0.5, 0.5, 0.5),
                0.21,
            ),
        ];
        let step = |step: u64, value: f64| StepValue { step, value };
        let training = TrainingSummary {
            curves: vec![
                CurveSummary {
                    run: "Factuality RL".into(),
                    stage: "factuality_ppo".into(),
                    metric: "reward".into(),
                    points: 3,
                    first: step(1, 0.25),
                    last: step(3, 0.5),
                },
                CurveSummary {
                    run: "Factuality RL".into(),
                    stage: "factuality_ppo".into(),
                    metric: "kl".into(),
                    points: 3,
                    first: step(1, 0.0),
                    last: step(3, 0.0125),
                },
            ],
            skipped: Vec::new(),
        };
        let readings = [Reading {
            method: "LC SFT".into(),
            paragraphs: 100,
            no_answer: 12,
            confidences: vec![25, 50, 100],
        }];
        // Factuality SFT against LC SFT, paired: ECE 0.05 higher, [0.01, 0.09] (apart from 0
        // although the two intervals overlap); accuracy the same.
        let difference = |a: f64, b: f64, low: f64, high: f64| PairedDifference {
            a,
            b,
            difference: Estimate {
                value: a - b,
                ci_low: Some(low),
                ci_high: Some(high),
            },
            distinguishable: low > 0.0 || high < 0.0,
        };
        let pairs = [NamedPair {
            a: "Factuality SFT".into(),
            b: "LC SFT".into(),
            differences: PairedComparison {
                subjects: 100,
                accuracy: difference(0.3, 0.3, -0.02, 0.02),
                ece: difference(0.25, 0.2, 0.01, 0.09),
                brier: difference(0.3, 0.18, 0.05, 0.2),
                bootstrap_resamples: 1000,
                seed: 1,
                ci_level: 0.95,
            },
        }];
        assert_eq!(
            findings(&methods, &readings, &training, &pairs),
            [
                "LC SFT's ECE 0.200 [0.100, 0.300] is below Zero-Shot's 0.700 [0.600, 0.800]: \
                 the 95% intervals are apart.",
                "LC SFT's ECE 0.200 [0.100, 0.300] is below Factuality SFT's 0.250 [0.150, \
                 0.350]: the paired difference -0.050 [-0.090, -0.010] over the 100 items both \
                 scored excludes zero.",
                "LC SFT's ECE 0.200 [0.100, 0.300] is below Factuality RL's 0.300 [0.200, \
                 0.400]: the 95% intervals overlap, so this size cannot tell them apart.",
                "LC SFT's AUROC 0.700 [0.600, 0.800]: its interval is above 0.5: its stated \
                 confidence tells its right answers from its wrong ones. Its Brier score 0.180 \
                 [0.130, 0.230] is below the constant baseline's 0.210 [0.160, 0.260]. 12 of \
                 its 100 paragraphs give no answer (\"I do not know\"), which the reference's \
                 metrics count as wrong at confidence 1, the most confident wrong answers there \
                 are. Its answers are stated at 3 levels from 25% to 100%.",
                "Factuality RL ran 3 PPO steps (mean reward 0.250 at step 1, 0.500 at step 3, \
                 KL to the SFT model 0.0125 at the end); its accuracy and ECE intervals overlap \
                 those of Factuality SFT. A few steps are enough to run every part of PPO, not \
                 to show its effect, which the paper measures after 1,500.",
            ]
        );
    }
}
