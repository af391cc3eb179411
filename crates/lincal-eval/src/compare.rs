//! Side-by-side comparison of evaluation runs on one dataset: a table of every method's
//! metrics with intervals (Markdown and HTML), the accuracy-vs-ECE frontier, one reliability
//! diagram per method, and `comparison.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use lincal_metrics::{
    BootstrapConfig, CoverageCurve, Estimate, FrontierPoint, PairedComparison, Prediction,
    ReportConfig, paired_comparison, write_frontier_plot, write_reliability_diagram,
    write_risk_coverage_plot,
};
use serde::{Deserialize, Serialize};

use crate::EvalError;
use crate::examples::{ExampleKind, ScoredExample, predictions_by_subject, read_examples};
use crate::files::{write_atomically, write_json};
use crate::render::{
    Cell, Table, format_interval, format_value, html, html_page, interval_label, markdown,
    metric_rows, paper_section_html, paper_section_markdown, svg_figure,
};
use crate::report::{EXAMPLES_FILE, REPORT_MD_FILE, RISK_COVERAGE_PLOT, RunResults, read_results};

pub const COMPARISON_JSON_FILE: &str = "comparison.json";
pub const COMPARISON_MD_FILE: &str = "comparison.md";
pub const COMPARISON_HTML_FILE: &str = "comparison.html";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparedRun {
    pub run_dir: PathBuf,
    /// The method name, with the run directory's name added where two runs share a method.
    pub label: String,
    pub results: RunResults,
    /// Stem of this run's reliability diagram in the output directory.
    pub reliability_plot: String,
}

/// The content of `comparison.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub dataset: String,
    pub kind: ExampleKind,
    pub runs: Vec<ComparedRun>,
    /// Caveats a reader of the table should know (different judges, different questions).
    pub notes: Vec<String>,
    /// Every pair of runs whose examples are at hand, compared on the subjects both scored.
    #[serde(default)]
    pub pairs: Vec<ComparedPair>,
}

/// Run `a` against run `b` (indices into `runs`): their differences with paired intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparedPair {
    pub a: usize,
    pub b: usize,
    pub differences: PairedComparison,
}

/// Compares the runs in `run_dirs` (each holding a `results.json` from
/// [`crate::write_run_report`], and its `examples.jsonl` for the overlap check) and writes
/// the comparison into `out_dir` (created if missing). Refuses runs on different datasets,
/// of different kinds, or binned differently, since their numbers do not compare.
pub fn compare(run_dirs: &[PathBuf], out_dir: impl AsRef<Path>) -> Result<Comparison, EvalError> {
    let out_dir = out_dir.as_ref();
    if run_dirs.is_empty() {
        return Err(EvalError::Compare(
            "no run directories given; name the run directories to compare".into(),
        ));
    }
    check_directories(run_dirs, out_dir)?;
    let results = run_dirs
        .iter()
        .map(read_results)
        .collect::<Result<Vec<_>, _>>()?;
    check_comparable(run_dirs, &results)?;
    let examples = run_dirs
        .iter()
        .map(|dir| {
            let path = dir.join(EXAMPLES_FILE);
            path.exists().then(|| read_examples(&path)).transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut notes = setting_notes(run_dirs, &results);
    notes.extend(overlap_note(run_dirs, &examples, results[0].kind));
    let pairs = paired_differences(&examples, &results)?;

    let labels = labels(run_dirs, &results);
    let runs: Vec<ComparedRun> = run_dirs
        .iter()
        .zip(results)
        .zip(labels)
        .enumerate()
        .map(|(i, ((dir, results), label))| ComparedRun {
            run_dir: dir.clone(),
            reliability_plot: format!("reliability-{}-{}", i + 1, file_slug(&label)),
            label,
            results,
        })
        .collect();
    let comparison = Comparison {
        dataset: runs[0].results.settings.dataset.clone(),
        kind: runs[0].results.kind,
        runs,
        notes,
        pairs,
    };

    std::fs::create_dir_all(out_dir).map_err(|source| EvalError::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let points: Vec<FrontierPoint> = comparison
        .runs
        .iter()
        .map(|r| FrontierPoint::from_report(&r.label, &r.results.metrics))
        .collect();
    let frontier = write_frontier_plot(
        &points,
        &format!("Accuracy vs ECE on {}", comparison.dataset),
        out_dir.join("frontier"),
    )?;
    let coverage: Vec<(&str, &CoverageCurve)> = comparison
        .runs
        .iter()
        .map(|r| (r.label.as_str(), &r.results.metrics.coverage))
        .collect();
    let risk_coverage = write_risk_coverage_plot(
        &coverage,
        &format!("Risk vs coverage on {}", comparison.dataset),
        out_dir.join(RISK_COVERAGE_PLOT),
    )?;
    let mut reliability = Vec::new();
    for run in &comparison.runs {
        let title = format!("{}: ECE {:.3}", run.label, run.results.metrics.ece.value);
        let files = write_reliability_diagram(
            &run.results.metrics.reliability_bins,
            Some(&run.results.metrics.smooth_curve),
            &title,
            out_dir.join(&run.reliability_plot),
        )?;
        reliability.push(files.svg);
    }
    write_atomically(
        &out_dir.join(COMPARISON_MD_FILE),
        comparison_markdown(&comparison, out_dir).as_bytes(),
    )?;
    let page = comparison_html(&comparison, &frontier.svg, &risk_coverage.svg, &reliability)?;
    write_atomically(&out_dir.join(COMPARISON_HTML_FILE), page.as_bytes())?;
    write_json(&out_dir.join(COMPARISON_JSON_FILE), &comparison)?;
    Ok(comparison)
}

/// Each run given once, and the output directory none of them: writing the comparison's
/// plots into a run directory would replace that run's own.
fn check_directories(run_dirs: &[PathBuf], out_dir: &Path) -> Result<(), EvalError> {
    // Canonical paths where they exist, so "runs/a" and "./runs/a/" are seen as one.
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let out = canonical(out_dir);
    for (i, dir) in run_dirs.iter().enumerate() {
        let this = canonical(dir);
        if this == out {
            return Err(EvalError::Compare(format!(
                "the output directory {} is the run directory {}; its plots would replace the \
                 run's own, so choose another output directory",
                out_dir.display(),
                dir.display()
            )));
        }
        if run_dirs[..i]
            .iter()
            .any(|earlier| canonical(earlier) == this)
        {
            return Err(EvalError::Compare(format!(
                "the run directory {} is given twice; name each run once",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// "runs/a, runs/b" for the runs at `indices`.
fn dir_list(run_dirs: &[PathBuf], indices: &[usize]) -> String {
    indices
        .iter()
        .map(|&i| run_dirs[i].display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Groups run indices by a key, in order of first appearance; Err with a message when there
/// is more than one group.
fn single_group(
    run_dirs: &[PathBuf],
    keys: Vec<String>,
    what: &str,
    advice: &str,
) -> Result<(), EvalError> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    if groups.len() == 1 {
        return Ok(());
    }
    let listed: Vec<String> = groups
        .iter()
        .map(|(key, members)| format!("{key}: {}", dir_list(run_dirs, members)))
        .collect();
    Err(EvalError::Compare(format!(
        "the runs differ in {what} ({}); {advice}",
        listed.join("; ")
    )))
}

fn check_comparable(run_dirs: &[PathBuf], results: &[RunResults]) -> Result<(), EvalError> {
    single_group(
        run_dirs,
        results
            .iter()
            .map(|r| format!("`{}`", r.settings.dataset))
            .collect(),
        "dataset",
        "compare runs of one dataset at a time",
    )?;
    single_group(
        run_dirs,
        results.iter().map(|r| format!("{:?}", r.kind)).collect(),
        "kind of items (QA answers or biography claims)",
        "compare QA runs and biography runs separately",
    )?;
    single_group(
        run_dirs,
        results
            .iter()
            .map(|r| format!("{} {:?} bins", r.metrics.bins, r.metrics.binning))
            .collect(),
        "ECE binning",
        "ECE with different bins does not compare; re-run the reports with the same bins",
    )
}

/// Notes on settings that differ although the dataset is the same.
fn setting_notes(run_dirs: &[PathBuf], results: &[RunResults]) -> Vec<String> {
    let setting = |get: fn(&RunResults) -> &Option<String>| -> Vec<Option<String>> {
        results.iter().map(|r| get(r).clone()).collect()
    };
    let mut notes = Vec::new();
    for (what, values) in [
        ("judge", setting(|r| &r.settings.judge)),
        ("reader", setting(|r| &r.settings.reader)),
        ("split", setting(|r| &r.settings.split)),
    ] {
        let mut by_value: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, value) in values.into_iter().enumerate() {
            by_value
                .entry(value.unwrap_or_else(|| "unrecorded".into()))
                .or_default()
                .push(i);
        }
        if by_value.len() > 1 {
            let listed: Vec<String> = by_value
                .iter()
                .map(|(value, members)| format!("{value} ({})", dir_list(run_dirs, members)))
                .collect();
            notes.push(format!(
                "The runs used different {what}s: {}. Differences in the metrics partly reflect \
                 this.",
                listed.join(", ")
            ));
        }
    }
    notes
}

/// A note when the runs did not score the same questions (QA) or entities (biographies), or
/// when a run's examples are missing (`None`) so this cannot be checked.
fn overlap_note(
    run_dirs: &[PathBuf],
    examples: &[Option<Vec<ScoredExample>>],
    kind: ExampleKind,
) -> Option<String> {
    let subject = match kind {
        ExampleKind::Qa => "questions",
        ExampleKind::Claim => "entities",
    };
    let missing: Vec<usize> = (0..run_dirs.len())
        .filter(|&i| examples[i].is_none())
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "{EXAMPLES_FILE} is missing in {}, so whether all runs scored the same {subject} \
             was not checked, and those runs have no paired differences.",
            dir_list(run_dirs, &missing)
        ));
    }
    let sets: Vec<BTreeSet<&str>> = examples
        .iter()
        .flatten()
        .map(|examples| examples.iter().map(ScoredExample::subject).collect())
        .collect();
    let common = sets.iter().skip(1).fold(sets[0].clone(), |acc, s| {
        acc.intersection(s).copied().collect()
    });
    if sets.iter().all(|s| s.len() == common.len()) {
        return None;
    }
    let sizes: Vec<String> = run_dirs
        .iter()
        .zip(&sets)
        .map(|(dir, s)| format!("{} has {}", dir.display(), s.len()))
        .collect();
    Some(format!(
        "The runs scored different {subject}: {}; {} are in every run. Differences in the \
         metrics partly reflect the {subject}; the paired differences use the {subject} both \
         runs of a pair scored.",
        sizes.join(", "),
        common.len()
    ))
}

/// Each pair of runs with examples, compared on the subjects both scored, resampled with the
/// bootstrap settings and ECE bins of the runs' metrics (the first run's; the bins were
/// checked equal).
fn paired_differences(
    examples: &[Option<Vec<ScoredExample>>],
    results: &[RunResults],
) -> Result<Vec<ComparedPair>, EvalError> {
    let metrics = &results[0].metrics;
    let config = ReportConfig {
        bins: metrics.bins,
        binning: metrics.binning,
        bootstrap: BootstrapConfig {
            resamples: metrics.bootstrap_resamples,
            seed: metrics.seed,
            level: metrics.ci_level,
        },
    };
    let by_subject: Vec<Option<BTreeMap<&str, Vec<Prediction>>>> = examples
        .iter()
        .map(|e| e.as_deref().map(predictions_by_subject))
        .collect();
    let mut pairs = Vec::new();
    for a in 0..by_subject.len() {
        for b in a + 1..by_subject.len() {
            let (Some(run_a), Some(run_b)) = (&by_subject[a], &by_subject[b]) else {
                continue;
            };
            let (mut preds_a, mut preds_b) = (Vec::new(), Vec::new());
            for (subject, preds) in run_a {
                if let Some(other) = run_b.get(subject) {
                    preds_a.push(preds.clone());
                    preds_b.push(other.clone());
                }
            }
            if preds_a.is_empty() {
                continue;
            }
            pairs.push(ComparedPair {
                a,
                b,
                differences: paired_comparison(&preds_a, &preds_b, &config)?,
            });
        }
    }
    Ok(pairs)
}

/// Method names, made unique with the run directory's name where two runs share one.
fn labels(run_dirs: &[PathBuf], results: &[RunResults]) -> Vec<String> {
    let methods: Vec<&str> = results.iter().map(|r| r.settings.method.as_str()).collect();
    methods
        .iter()
        .enumerate()
        .map(|(i, method)| {
            if methods.iter().filter(|m| *m == method).count() == 1 {
                return method.to_string();
            }
            let dir_name = run_dirs[i].file_name().map_or_else(
                || run_dirs[i].display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            format!("{method} ({dir_name})")
        })
        .collect()
}

/// A label as a file-name part: lower-case ASCII letters, digits and dashes, at most 40.
fn file_slug(label: &str) -> String {
    let mut slug = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').chars().take(40).collect()
}

/// One row per run; in each metric column the best value is emphasised.
fn comparison_table(comparison: &Comparison) -> Table {
    let runs = &comparison.runs;
    let metric_table: Vec<_> = runs
        .iter()
        .map(|r| metric_rows(&r.results.metrics))
        .collect();
    let level = interval_label(runs[0].results.metrics.ci_level);
    let mut header: Vec<(String, bool)> = vec![
        ("method".into(), false),
        ("model".into(), false),
        ("n".into(), true),
    ];
    for row in &metric_table[0] {
        header.push((format!("{} [{level}]", row.name), true));
    }
    let header: Vec<(&str, bool)> = header.iter().map(|(h, n)| (h.as_str(), *n)).collect();
    let mut table = Table::new(&header);
    let metric_count = metric_table[0].len();
    let best: Vec<Option<f64>> = (0..metric_count)
        .map(|m| {
            let values = metric_table
                .iter()
                .filter_map(|rows| rows[m].estimate.value);
            if metric_table[0][m].higher_is_better {
                values.reduce(f64::max)
            } else {
                values.reduce(f64::min)
            }
        })
        .collect();
    for (run, rows) in runs.iter().zip(&metric_table) {
        let mut cells = vec![
            Cell::new(run.label.as_str()),
            Cell::new(run.results.settings.model.as_str()),
            Cell::new(run.results.metrics.n.to_string()),
        ];
        for (row, best) in rows.iter().zip(&best) {
            let text = format!(
                "{} {}",
                format_value(row.estimate.value),
                format_interval(&row.estimate)
            );
            let is_best =
                runs.len() > 1 && row.estimate.value.is_some() && row.estimate.value == *best;
            cells.push(Cell::new(text).strong(is_best));
        }
        table.push(cells);
    }
    table
}

/// One row per pair of runs: each difference a − b with its paired interval, in bold where the
/// interval excludes zero.
fn paired_table(comparison: &Comparison) -> Table {
    let level = interval_label(comparison.runs[0].results.metrics.ci_level);
    let header = [
        ("a − b".to_string(), false),
        ("subjects".to_string(), true),
        (format!("accuracy [{level}]"), true),
        (format!("ECE [{level}]"), true),
        (format!("Brier score [{level}]"), true),
    ];
    let header: Vec<(&str, bool)> = header.iter().map(|(h, n)| (h.as_str(), *n)).collect();
    let mut table = Table::new(&header);
    for pair in &comparison.pairs {
        let d = &pair.differences;
        let mut cells = vec![
            Cell::new(format!(
                "{} − {}",
                comparison.runs[pair.a].label, comparison.runs[pair.b].label
            )),
            Cell::new(d.subjects.to_string()),
        ];
        for metric in [&d.accuracy, &d.ece, &d.brier] {
            let estimate = Estimate {
                value: Some(metric.difference.value),
                ci_low: metric.difference.ci_low,
                ci_high: metric.difference.ci_high,
            };
            let text = format!(
                "{:+.4} {}",
                metric.difference.value,
                format_interval(&estimate)
            );
            cells.push(Cell::new(text).strong(metric.distinguishable));
        }
        table.push(cells);
    }
    table
}

const PAIRED_NOTE: &str = "Each difference is run a minus run b on the subjects both scored, \
     with a paired bootstrap interval (the same resampled subjects for both runs). Bold: the \
     interval excludes zero; the others are not distinguishable from no difference.";

fn comparison_title(comparison: &Comparison) -> String {
    format!("{} runs on {}", comparison.runs.len(), comparison.dataset)
}

/// `target` as a path from the directory `base` (both made absolute from the current
/// directory), so that a link in a file in `base` resolves wherever it is opened from.
fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let (Ok(target), Ok(base)) = (std::path::absolute(target), std::path::absolute(base)) else {
        return target.to_path_buf();
    };
    let target: Vec<_> = target.components().collect();
    let base: Vec<_> = base.components().collect();
    let common = target.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..base.len() {
        path.push("..");
    }
    for component in &target[common..] {
        path.push(component);
    }
    path
}

fn comparison_markdown(comparison: &Comparison, out_dir: &Path) -> String {
    let mut out = format!("# {}\n\n", markdown(&comparison_title(comparison)));
    out += &comparison_table(comparison).to_markdown();
    out += "\nBold: the best value of each column. Runs:\n\n";
    for run in &comparison.runs {
        // A link destination in angle brackets may hold spaces and parentheses.
        let report = relative_to(&run.run_dir.join(REPORT_MD_FILE), out_dir)
            .display()
            .to_string();
        writeln!(
            out,
            "- {}: {} ([report](<{}>))",
            markdown(&run.label),
            markdown(&run.run_dir.display().to_string()),
            report.replace('<', "%3C").replace('>', "%3E")
        )
        .unwrap();
    }
    if !comparison.pairs.is_empty() {
        out += "\n## Paired differences\n\n";
        out += &paired_table(comparison).to_markdown();
        writeln!(out, "\n{PAIRED_NOTE}").unwrap();
    }
    if !comparison.notes.is_empty() {
        out += "\n## Notes\n\n";
        for note in &comparison.notes {
            writeln!(out, "- {}", markdown(note)).unwrap();
        }
    }
    out += "\n## Plots\n\n- Accuracy vs ECE: [frontier.png](frontier.png) ([SVG](frontier.svg))\n";
    writeln!(
        out,
        "- Risk vs coverage: [{RISK_COVERAGE_PLOT}.png]({RISK_COVERAGE_PLOT}.png) \
         ([SVG]({RISK_COVERAGE_PLOT}.svg))"
    )
    .unwrap();
    for run in &comparison.runs {
        writeln!(
            out,
            "- Reliability, {}: [{stem}.png]({stem}.png) ([SVG]({stem}.svg))",
            markdown(&run.label),
            stem = run.reliability_plot
        )
        .unwrap();
    }
    out += &paper_section_markdown(&comparison.dataset);
    out
}

fn comparison_html(
    comparison: &Comparison,
    frontier: &Path,
    risk_coverage: &Path,
    reliability: &[PathBuf],
) -> Result<String, EvalError> {
    let mut body = format!("<h1>{}</h1>\n", html(&comparison_title(comparison)));
    body += &comparison_table(comparison).to_html();
    body += "<p class=\"note\">Bold: the best value of each column.</p>\n";
    if !comparison.pairs.is_empty() {
        body += "<h2>Paired differences</h2>\n";
        body += &paired_table(comparison).to_html();
        writeln!(body, "<p class=\"note\">{}</p>", html(PAIRED_NOTE)).unwrap();
    }
    if !comparison.notes.is_empty() {
        body += "<h2>Notes</h2>\n<ul>\n";
        for note in &comparison.notes {
            writeln!(body, "<li>{}</li>", html(note)).unwrap();
        }
        body += "</ul>\n";
    }
    body += "<h2>Accuracy vs ECE</h2>\n";
    body += &svg_figure(frontier, "Accuracy against ECE, with bootstrap intervals")?;
    body += "<h2>Risk vs coverage</h2>\n";
    body += &svg_figure(
        risk_coverage,
        "Error rate against coverage, answering the most confident first",
    )?;
    body += "<h2>Reliability diagrams</h2>\n";
    for (run, svg) in comparison.runs.iter().zip(reliability) {
        body += &svg_figure(svg, &run.label)?;
    }
    body += &paper_section_html(&comparison.dataset);
    Ok(html_page(&comparison_title(comparison), &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_safe_file_names() {
        assert_eq!(file_slug("LC RL (run/../x)"), "lc-rl-run-x");
        assert_eq!(file_slug("<script>"), "script");
        assert_eq!(file_slug("ééé"), "");
    }

    /// The comparison links each run's report from its own folder: `../eval_x/report.md` from
    /// `pipeline/report/`, not the path the command was given from the current directory.
    #[test]
    fn report_links_resolve_from_the_comparison_folder() {
        assert_eq!(
            relative_to(
                Path::new("/runs/p/eval_lc_sft/report.md"),
                Path::new("/runs/p/report")
            ),
            PathBuf::from("../eval_lc_sft/report.md")
        );
        assert_eq!(
            relative_to(Path::new("/a/b/r.md"), Path::new("/a/b")),
            PathBuf::from("r.md")
        );
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            relative_to(Path::new("runs/x/report.md"), &cwd.join("out/cmp")),
            PathBuf::from("../../runs/x/report.md")
        );
    }
}
