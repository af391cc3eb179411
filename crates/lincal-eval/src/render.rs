//! Markdown and HTML building blocks shared by run reports and comparisons: one table type
//! rendered both ways, the metric rows, the page frame and embedded figures.
//!
//! Every piece of text from the data (questions, model output, settings, method names) goes
//! through [`html`] or [`markdown`] escaping here; nothing else writes raw text into a page.

use std::fmt::Write;
use std::path::Path;

use base64::Engine;
use lincal_metrics::{Binning, Estimate, MetricsReport};

use crate::EvalError;
use crate::paper::paper_results;

/// Text made safe for HTML element content and quoted attribute values.
pub(crate) fn html(text: &str) -> String {
    html_escape::encode_quoted_attribute(text).into_owned()
}

/// Text made safe for one cell of a Markdown table: no line breaks or pipes to break the row,
/// no raw HTML for a renderer to interpret, no emphasis or code markers. Brackets and
/// underscores stay as they are, so intervals and snake_case names read well in the raw file.
pub(crate) fn markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\r' => out.push(' '),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '|' | '\\' | '`' | '*' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// One table cell: plain text, optionally emphasised, optionally with longer text that HTML
/// shows folded under it (Markdown leaves it out).
#[derive(Debug, Clone, Default)]
pub(crate) struct Cell {
    pub text: String,
    pub strong: bool,
    pub details: Option<(String, String)>,
}

impl Cell {
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    pub fn strong(mut self, strong: bool) -> Self {
        self.strong = strong;
        self
    }

    /// `summary` is the fold's label, `text` what it reveals.
    pub fn with_details(mut self, summary: &str, text: &str) -> Self {
        self.details = Some((summary.to_string(), text.to_string()));
        self
    }
}

/// A table with a header row; `numeric` columns are right-aligned.
pub(crate) struct Table {
    pub header: Vec<String>,
    pub numeric: Vec<bool>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(header: &[(&str, bool)]) -> Self {
        Self {
            header: header.iter().map(|(h, _)| h.to_string()).collect(),
            numeric: header.iter().map(|&(_, n)| n).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        self.rows.push(row);
    }

    pub fn to_markdown(&self) -> String {
        let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
        let mut out = line(self.header.iter().map(|h| markdown(h)).collect());
        out += &line(
            self.numeric
                .iter()
                .map(|&n| if n { "---:" } else { "---" }.to_string())
                .collect(),
        );
        for row in &self.rows {
            out += &line(
                row.iter()
                    .map(|c| match (markdown(&c.text), c.strong) {
                        (t, true) if !t.is_empty() => format!("**{t}**"),
                        (t, _) => t,
                    })
                    .collect(),
            );
        }
        out
    }

    pub fn to_html(&self) -> String {
        let class = |numeric: bool| if numeric { " class=\"num\"" } else { "" };
        let mut out = String::from("<table>\n<thead><tr>");
        for (h, &n) in self.header.iter().zip(&self.numeric) {
            write!(out, "<th{}>{}</th>", class(n), html(h)).unwrap();
        }
        out.push_str("</tr></thead>\n<tbody>\n");
        for row in &self.rows {
            out.push_str("<tr>");
            for (cell, &n) in row.iter().zip(&self.numeric) {
                let mut content = html(&cell.text);
                if cell.strong {
                    content = format!("<strong>{content}</strong>");
                }
                if let Some((summary, text)) = &cell.details {
                    write!(
                        content,
                        "<details><summary>{}</summary><div class=\"long\">{}</div></details>",
                        html(summary),
                        html(text)
                    )
                    .unwrap();
                }
                write!(out, "<td{}>{content}</td>", class(n)).unwrap();
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody>\n</table>\n");
        out
    }
}

/// A metric of a report, with whether a higher value is better (for marking the best run).
pub(crate) struct MetricRow {
    pub name: String,
    pub estimate: Estimate<Option<f64>>,
    pub higher_is_better: bool,
}

/// Every metric of `report` in display order.
pub(crate) fn metric_rows(report: &MetricsReport) -> Vec<MetricRow> {
    let binning = match report.binning {
        Binning::EqualMass => "equal-mass",
        Binning::EqualMassKeepAll => "equal-mass, none dropped",
        Binning::EqualWidth => "equal-width",
    };
    let some = |e: &Estimate| Estimate {
        value: Some(e.value),
        ci_low: e.ci_low,
        ci_high: e.ci_high,
    };
    // Metrics a report written before lincal computed them lacks: n/a.
    let newer = |e: Option<Estimate>| e.as_ref().map_or_else(Estimate::default, some);
    let row = |name: String, estimate, higher_is_better| MetricRow {
        name,
        estimate,
        higher_is_better,
    };
    vec![
        row("accuracy".into(), some(&report.accuracy), true),
        row(
            format!("ECE ({} {binning} bins)", report.bins),
            some(&report.ece),
            false,
        ),
        row(
            format!("ECE ({} equal-width bins)", report.bins),
            some(&report.ece_width),
            false,
        ),
        row(
            format!("ACE ({} equal-width bins)", report.bins),
            newer(report.ace),
            false,
        ),
        row("smooth ECE".into(), newer(report.smece), false),
        row(format!("MCE ({binning})"), some(&report.mce), false),
        row("Brier score".into(), some(&report.brier), false),
        row("log loss".into(), some(&report.log_loss), false),
        row("AUROC".into(), report.auroc, true),
        row("AURC".into(), newer(report.aurc), false),
    ]
}

pub(crate) fn format_value(value: Option<f64>) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.4}"))
}

pub(crate) fn format_interval(estimate: &Estimate<Option<f64>>) -> String {
    match (estimate.ci_low, estimate.ci_high) {
        (Some(low), Some(high)) => format!("[{low:.4}, {high:.4}]"),
        _ => "–".into(),
    }
}

/// "95% CI" for a level of 0.95.
pub(crate) fn interval_label(level: f64) -> String {
    let percent = format!("{:.1}", level * 100.0);
    format!("{}% CI", percent.trim_end_matches(".0"))
}

/// How the numbers were computed, in one sentence.
pub(crate) fn metrics_note(report: &MetricsReport) -> String {
    let dropped = report.n - report.n_used_for_ece;
    let ece_use = if dropped > 0 {
        format!(
            "ECE and MCE use {} of the {} predictions (the {dropped} most confident are left \
             out, as the reference's equal-mass binning does)",
            report.n_used_for_ece, report.n
        )
    } else {
        format!("ECE and MCE use all {} predictions", report.n)
    };
    let intervals = if report.bootstrap_resamples > 0 {
        format!(
            "intervals are paired percentile bootstrap, {} resamples, seed {}",
            report.bootstrap_resamples, report.seed
        )
    } else {
        "no bootstrap intervals (0 resamples)".into()
    };
    let mut note = format!("n = {}; {ece_use}; {intervals}.", report.n);
    let outside: Vec<String> = metric_rows(report)
        .into_iter()
        .filter(|row| match row.estimate {
            Estimate {
                value: Some(v),
                ci_low: Some(low),
                ci_high: Some(high),
            } => v < low || v > high,
            _ => false,
        })
        .map(|row| row.name)
        .collect();
    if !outside.is_empty() {
        write!(
            note,
            " The point estimate of {} lies outside its interval: resampling with replacement \
             inflates binned calibration errors of well-calibrated predictions, and the \
             percentile interval (the reference's) does not correct for that.",
            outside.join(", ")
        )
        .unwrap();
    }
    note
}

/// The "Paper" section of a Markdown report: the paper's numbers for `dataset`, or nothing for
/// a dataset the paper did not use.
pub(crate) fn paper_section_markdown(dataset: &str) -> String {
    paper_table(dataset).map_or_else(String::new, |(heading, table)| {
        format!(
            "\n## Paper\n\n{}\n\n{}",
            markdown(&heading),
            table.to_markdown()
        )
    })
}

/// The "Paper" section of an HTML report, as [`paper_section_markdown`].
pub(crate) fn paper_section_html(dataset: &str) -> String {
    paper_table(dataset).map_or_else(String::new, |(heading, table)| {
        format!(
            "<h2>Paper</h2>\n<p class=\"note\">{}</p>\n{}",
            html(&heading),
            table.to_html()
        )
    })
}

/// The paper's numbers for `dataset` as a table with a heading line, or None for a dataset
/// the paper did not use.
fn paper_table(dataset: &str) -> Option<(String, Table)> {
    let (name, results) = paper_results(dataset)?;
    let mut table = Table::new(&[("method (paper)", false), ("accuracy", true), ("ECE", true)]);
    for r in results {
        table.push(vec![
            Cell::new(r.method),
            Cell::new(format!("{:.3}", r.accuracy)),
            Cell::new(format!("{:.3}", r.ece)),
        ]);
    }
    let heading = format!(
        "The paper's numbers for {name} (Llama 2 7B or GPT-4 policies, Claude 2.0 as reader and \
         judge), for context"
    );
    Some((heading, table))
}

/// A complete HTML page: styles inline, and a content security policy that allows nothing
/// but inline styles and `data:` images, so the page loads nothing and runs nothing even if
/// some text escaped escaping.
pub(crate) fn html_page(title: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
{STYLE}</style>
</head>
<body>
{body}</body>
</html>
"#,
        title = html(title)
    )
}

/// The policy of [`html_page`]: inline styles and `data:` images, nothing else.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'";

/// The style sheet of [`html_page`]; its longer lines take two literals here.
const STYLE: &str = concat!(
    "body { font-family: system-ui, -apple-system, \"Segoe UI\", sans-serif; margin: 2em auto; ",
    "max-width: 1200px; padding: 0 1em; color: #222; }\n",
    "h1 { font-size: 1.6em; } ",
    "h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }\n",
    "table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }\n",
    "th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; ",
    "text-align: left; vertical-align: top; }\n",
    "th { background: #f3f3f3; } ",
    "td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }\n",
    "tbody tr:nth-child(even) { background: #fafafa; }\n",
    "details summary { color: #555; cursor: pointer; font-size: 0.9em; }\n",
    "div.long { white-space: pre-wrap; max-width: 60em; }\n",
    "figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }\n",
    "figure img { width: 520px; max-width: 100%; border: 1px solid #eee; }\n",
    "figcaption, p.note { color: #555; font-size: 0.9em; }\n",
);

/// An `<img>` showing an SVG file as a `data:` URI. An image loaded through `<img>` never runs
/// scripts, so nothing inside the SVG can act on the page.
pub(crate) fn svg_figure(svg: &Path, caption: &str) -> Result<String, EvalError> {
    let bytes = std::fs::read(svg).map_err(|source| EvalError::Read {
        path: svg.to_path_buf(),
        source,
    })?;
    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(format!(
        "<figure><img src=\"data:image/svg+xml;base64,{data}\" alt=\"{caption}\">\
         <figcaption>{caption}</figcaption></figure>\n",
        caption = html(caption)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escaping_covers_markup_and_quotes() {
        assert_eq!(
            html(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;y&#x27;"
        );
    }

    #[test]
    fn markdown_cells_cannot_break_the_table() {
        assert_eq!(
            markdown("a|b\nc <b>*d*</b> `e\\` [1, 2] snake_case"),
            r"a\|b c &lt;b&gt;\*d\*&lt;/b&gt; \`e\\\` [1, 2] snake_case"
        );
    }

    #[test]
    fn tables_render_both_ways_with_alignment_and_emphasis() {
        let mut t = Table::new(&[("method", false), ("ECE", true)]);
        t.push(vec![Cell::new("LC <RL>"), Cell::new("0.1080").strong(true)]);
        t.push(vec![
            Cell::new("x").with_details("text", "a\nb"),
            Cell::new(""),
        ]);
        assert_eq!(
            t.to_markdown(),
            "| method | ECE |\n| --- | ---: |\n| LC &lt;RL&gt; | **0.1080** |\n| x |  |\n"
        );
        let html = t.to_html();
        assert!(html.contains("<th class=\"num\">ECE</th>"), "{html}");
        assert!(
            html.contains("<td>LC &lt;RL&gt;</td><td class=\"num\"><strong>0.1080</strong></td>"),
            "{html}"
        );
        assert!(html.contains(
            "<td>x<details><summary>text</summary><div class=\"long\">a\nb</div></details></td>"
        ));
    }

    #[test]
    fn note_flags_estimates_outside_their_interval() {
        // Perfectly calibrated: confidence c = k/10 on ten items, k of them correct, so each of
        // the ten equal-mass bins has zero gap and ECE is 0; almost no resample is that exact.
        let preds: Vec<_> = (1..=10)
            .flat_map(|k| {
                (0..10).map(move |i| lincal_metrics::Prediction::new(k as f64 / 10.0, i < k))
            })
            .collect();
        let config = lincal_metrics::ReportConfig {
            bins: 10,
            binning: Binning::EqualMass,
            bootstrap: lincal_metrics::BootstrapConfig {
                resamples: 200,
                ..Default::default()
            },
        };
        let report = lincal_metrics::compute_report(&preds, &config).unwrap();
        assert!(report.ece.value < 1e-12);
        let note = metrics_note(&report);
        assert!(
            note.starts_with(
                "n = 100; ECE and MCE use all 100 predictions; intervals are paired percentile \
                 bootstrap, 200 resamples, seed 1. The point estimate of ECE (10 equal-mass bins)"
            ),
            "{note}"
        );
        assert!(!note.contains("accuracy"), "{note}");
    }

    #[test]
    fn interval_labels() {
        assert_eq!(interval_label(0.95), "95% CI");
        assert_eq!(interval_label(0.995), "99.5% CI");
    }
}
