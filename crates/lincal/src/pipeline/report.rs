//! The pipeline's `report/report.json`: every method's accuracy, ECE, Brier and AUROC with 95%
//! bootstrap intervals, beside a constant-confidence baseline, for scripts. The human-readable
//! comparison (tables, reliability diagrams, the accuracy-vs-ECE frontier) is `lincal eval
//! compare`'s, written into the same folder.

use anyhow::{Context, Result};
use lincal_eval::{predictions, read_examples};
use lincal_metrics::{Estimate, MetricsReport, Prediction, ReportConfig, compute_report};
use serde::Serialize;
use std::path::Path;

/// The name of the constant-confidence baseline in reports.
pub const CONSTANT: &str = "Constant";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricWithCi {
    pub value: Option<f64>,
    /// The 95% bootstrap interval; null where no resample defines the metric.
    pub ci: Option<[f64; 2]>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodMetrics {
    pub name: String,
    pub n: usize,
    pub accuracy: MetricWithCi,
    pub ece: MetricWithCi,
    pub brier: MetricWithCi,
    pub auroc: MetricWithCi,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineReport {
    pub methods: Vec<MethodMetrics>,
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

/// The metrics of each evaluation run `(method name, run directory)`, then the constant
/// baseline built on the first run's answers.
pub fn pipeline_report(runs: &[(&str, &Path)], config: &ReportConfig) -> Result<PipelineReport> {
    let mut methods = Vec::new();
    let mut first: Option<Vec<Prediction>> = None;
    for (name, dir) in runs {
        let examples = read_examples(dir.join(lincal_eval::report::EXAMPLES_FILE))
            .with_context(|| format!("reading the {name} evaluation in {}", dir.display()))?;
        let preds = predictions(&examples);
        methods.push(method(name, &compute_report(&preds, config)?));
        first.get_or_insert(preds);
    }
    if let Some(reference) = first {
        methods.push(method(
            CONSTANT,
            &compute_report(&constant_baseline(&reference), config)?,
        ));
    }
    Ok(PipelineReport { methods })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
