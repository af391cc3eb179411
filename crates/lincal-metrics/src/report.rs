//! Every metric with its bootstrap interval, in one serialisable report.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::MetricsError;
use crate::bootstrap::{BootstrapConfig, Interval, percentile_interval, resample_statistics};
use crate::calibration::{
    Binning, ReliabilityBin, average_calibration_error, bins_of_sorted, check_bins,
    expected_calibration_error, max_calibration_error,
};
use crate::prediction::{Prediction, sorted_by_confidence};
use crate::scores::{
    CoverageCurve, accuracy_of, auroc_of_sorted, brier_of, coverage_curve_of_sorted, log_loss_of,
};
use crate::smooth::{SmoothCurve, SmootherCache, smooth_curve_with_band, smooth_ece_of};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReportConfig {
    /// Bins for `ece`, `mce`, `ece_width` and `ace`.
    pub bins: usize,
    /// Binning of `ece`, `mce` and `reliability_bins` (`ece_width` and `ace` are always equal
    /// width).
    pub binning: Binning,
    pub bootstrap: BootstrapConfig,
}

impl ReportConfig {
    /// QA evaluation as in the reference (SPEC 5.2): 20 equal-mass bins, remainder dropped.
    pub fn qa() -> Self {
        Self {
            bins: 20,
            binning: Binning::EqualMass,
            bootstrap: BootstrapConfig::default(),
        }
    }

    /// Per-claim biography evaluation as in the reference (SPEC 5.3): 40 equal-mass bins.
    pub fn claims() -> Self {
        Self {
            bins: 40,
            ..Self::qa()
        }
    }
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self::qa()
    }
}

/// A point estimate and its percentile bootstrap interval (null when intervals are off).
/// The default (0, no interval) is what a metric reads as in a report written before lincal
/// computed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Estimate<V = f64> {
    pub value: V,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

impl<V> Estimate<V> {
    pub(crate) fn new(value: V, ci: Option<Interval>) -> Self {
        Self {
            value,
            ci_low: ci.map(|i| i.low),
            ci_high: ci.map(|i| i.high),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    pub accuracy: Estimate,
    pub ece: Estimate,
    pub ece_width: Estimate,
    /// Average calibration error (netcal's ACE) on the `bins` equal-width bins of `ece_width`:
    /// every non-empty bin weighted equally. `ace`, `smece`, `smece_bandwidth` and `aurc` are
    /// null in reports written before lincal computed them.
    #[serde(default)]
    pub ace: Option<Estimate>,
    pub mce: Estimate,
    /// Smooth ECE (relplot's `smECE`, no bins); its interval re-selects the bandwidth on every
    /// resample.
    #[serde(default)]
    pub smece: Option<Estimate>,
    /// The kernel bandwidth σ chosen for `smece` on the full sample.
    #[serde(default)]
    pub smece_bandwidth: Option<f64>,
    pub brier: Estimate,
    pub log_loss: Estimate,
    /// Null when every prediction is correct or every one is wrong. Its interval comes from the
    /// resamples where it is defined.
    pub auroc: Estimate<Option<f64>>,
    /// Area under the risk–coverage curve: 1 − `coverage.area`. Lower is better.
    #[serde(default)]
    pub aurc: Option<Estimate>,
    pub n: usize,
    /// Predictions inside the bins of `ece`: N minus the N mod bins that `equal_mass` drops
    /// (all N when every confidence is the same, or with fewer predictions than bins, where
    /// each prediction gets its own bin).
    pub n_used_for_ece: usize,
    pub bins: usize,
    pub binning: Binning,
    pub bootstrap_resamples: usize,
    pub seed: u64,
    pub ci_level: f64,
    /// The bins `ece` and `mce` come from (`binning`), ascending confidence, empty ones left out.
    pub reliability_bins: Vec<ReliabilityBin>,
    /// The equal-width bins `ece_width` comes from.
    pub reliability_bins_width: Vec<ReliabilityBin>,
    pub coverage: CoverageCurve,
    /// The smoothed reliability curve at `smece_bandwidth`, with its bootstrap band.
    #[serde(default)]
    pub smooth_curve: SmoothCurve,
}

/// The scalar metrics of one sample: computed once for the point estimate and once per
/// resample, by the same code.
struct Scalars {
    accuracy: f64,
    ece: f64,
    ece_width: f64,
    ace: f64,
    mce: f64,
    smece: f64,
    smece_bandwidth: f64,
    brier: f64,
    log_loss: f64,
    auroc: Option<f64>,
    aurc: f64,
}

fn scalars(sorted: &[Prediction], config: &ReportConfig, smoothers: &SmootherCache) -> Scalars {
    let bins = bins_of_sorted(sorted, config.bins, config.binning);
    let width_bins = bins_of_sorted(sorted, config.bins, Binning::EqualWidth);
    let smooth = smooth_ece_of(sorted, smoothers);
    Scalars {
        accuracy: accuracy_of(sorted),
        ece: expected_calibration_error(&bins),
        ece_width: expected_calibration_error(&width_bins),
        ace: average_calibration_error(&width_bins),
        mce: max_calibration_error(&bins),
        smece: smooth.value,
        smece_bandwidth: smooth.bandwidth,
        brier: brier_of(sorted),
        log_loss: log_loss_of(sorted),
        auroc: auroc_of_sorted(sorted),
        aurc: 1.0 - coverage_curve_of_sorted(sorted).area,
    }
}

/// All metrics of `preds` with paired bootstrap intervals: each resample draws (confidence,
/// correct) pairs once and every metric is computed on that same resample.
pub fn compute_report(
    preds: &[Prediction],
    config: &ReportConfig,
) -> Result<MetricsReport, MetricsError> {
    check_bins(config.bins)?;
    config.bootstrap.check()?;
    let sorted = sorted_by_confidence(preds)?;
    let smoothers = SmootherCache::for_sample(&sorted);
    let point = scalars(&sorted, config, &smoothers);
    let resampled = resample_statistics(&sorted, &config.bootstrap, |r| {
        scalars(r, config, &smoothers)
    });
    let ci = |metric: fn(&Scalars) -> Option<f64>| {
        percentile_interval(
            resampled.iter().filter_map(metric).collect(),
            config.bootstrap.level,
        )
    };
    let reliability_bins = bins_of_sorted(&sorted, config.bins, config.binning);
    Ok(MetricsReport {
        accuracy: Estimate::new(point.accuracy, ci(|s| Some(s.accuracy))),
        ece: Estimate::new(point.ece, ci(|s| Some(s.ece))),
        ece_width: Estimate::new(point.ece_width, ci(|s| Some(s.ece_width))),
        ace: Some(Estimate::new(point.ace, ci(|s| Some(s.ace)))),
        mce: Estimate::new(point.mce, ci(|s| Some(s.mce))),
        smece: Some(Estimate::new(point.smece, ci(|s| Some(s.smece)))),
        smece_bandwidth: Some(point.smece_bandwidth),
        brier: Estimate::new(point.brier, ci(|s| Some(s.brier))),
        log_loss: Estimate::new(point.log_loss, ci(|s| Some(s.log_loss))),
        auroc: Estimate::new(point.auroc, point.auroc.and_then(|_| ci(|s| s.auroc))),
        aurc: Some(Estimate::new(point.aurc, ci(|s| Some(s.aurc)))),
        n: sorted.len(),
        n_used_for_ece: reliability_bins.iter().map(|b| b.count).sum(),
        bins: config.bins,
        binning: config.binning,
        bootstrap_resamples: config.bootstrap.resamples,
        seed: config.bootstrap.seed,
        ci_level: config.bootstrap.level,
        reliability_bins,
        reliability_bins_width: bins_of_sorted(&sorted, config.bins, Binning::EqualWidth),
        coverage: coverage_curve_of_sorted(&sorted),
        smooth_curve: smooth_curve_with_band(
            &sorted,
            point.smece_bandwidth,
            &config.bootstrap,
            &smoothers,
        ),
    })
}

impl MetricsReport {
    /// The metrics as an aligned table for a terminal, then one line on how they were computed.
    pub fn to_table(&self) -> String {
        let percent = format!("{:.1}", self.ci_level * 100.0);
        let level = format!("{}% CI", percent.trim_end_matches(".0"));
        let mut out = format!("{:<13} {:>8}  {}\n", "metric", "value", level);
        let mut row = |name: &str, value: Option<f64>, low: Option<f64>, high: Option<f64>| {
            let value = value.map_or("n/a".to_string(), |v| format!("{v:.4}"));
            let ci = match (low, high) {
                (Some(lo), Some(hi)) => format!("[{lo:.4}, {hi:.4}]"),
                _ => "-".to_string(),
            };
            writeln!(out, "{name:<13} {value:>8}  {ci}").unwrap();
        };
        let estimates = [
            ("accuracy", Some(self.accuracy)),
            ("ece", Some(self.ece)),
            ("ece_width", Some(self.ece_width)),
            ("ace", self.ace),
            ("mce", Some(self.mce)),
            ("smece", self.smece),
            ("brier", Some(self.brier)),
            ("log_loss", Some(self.log_loss)),
        ];
        for (name, e) in estimates {
            row(
                name,
                e.map(|e| e.value),
                e.and_then(|e| e.ci_low),
                e.and_then(|e| e.ci_high),
            );
        }
        row(
            "auroc",
            self.auroc.value,
            self.auroc.ci_low,
            self.auroc.ci_high,
        );
        row(
            "aurc",
            self.aurc.map(|e| e.value),
            self.aurc.and_then(|e| e.ci_low),
            self.aurc.and_then(|e| e.ci_high),
        );
        row("coverage_area", Some(self.coverage.area), None, None);
        let binning = match self.binning {
            Binning::EqualMass => "equal-mass bins, top N mod bins dropped",
            Binning::EqualMassKeepAll => "equal-mass bins, none dropped",
            Binning::EqualWidth => "equal-width bins",
        };
        writeln!(
            out,
            "n = {}; ece, mce: {} {binning}, {} used; ece_width, ace: {} equal-width bins; \
             smece: bandwidth {}; bootstrap: {} resamples, seed {}",
            self.n,
            self.bins,
            self.n_used_for_ece,
            self.bins,
            self.smece_bandwidth
                .map_or("n/a".to_string(), |b| format!("{b:.4}")),
            self.bootstrap_resamples,
            self.seed
        )
        .unwrap();
        if self.auroc.value.is_none() {
            out.push_str(
                "auroc is undefined: every prediction is correct, or every one is wrong\n",
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(bins: usize, resamples: usize) -> ReportConfig {
        ReportConfig {
            bins,
            binning: Binning::EqualMass,
            bootstrap: BootstrapConfig {
                resamples,
                ..Default::default()
            },
        }
    }

    #[test]
    fn report_matches_hand_computed_values() {
        // The 5 predictions of the calibration and scores tests, 2 bins: ECE 0.20 (one dropped),
        // equal-width with 2 bins [0,.5) {0.1✗,0.3✓,0.4✗} gap |1/3−0.8/3| = 0.2/3,
        // [.5,1] {0.8✓,0.9✓} gap 0.15 → 3/5·0.2/3 + 2/5·0.15 = 0.10; ACE weights the two
        // bins equally: (0.2/3 + 0.15)/2 = 0.325/3. AURC: risks 0, 0, 1/3, 1/4, 2/5 at
        // coverage 1/5 … 1 → (59/60)/5 = 59/300.
        let preds: Vec<_> = [
            (0.8, true),
            (0.1, false),
            (0.9, true),
            (0.3, true),
            (0.4, false),
        ]
        .iter()
        .map(|&(c, y)| Prediction::new(c, y))
        .collect();
        let r = compute_report(&preds, &quick(2, 0)).unwrap();
        assert_eq!((r.n, r.n_used_for_ece, r.bins), (5, 4, 2));
        assert!((r.accuracy.value - 0.6).abs() < 1e-12);
        assert!((r.ece.value - 0.2).abs() < 1e-12);
        assert!((r.ece_width.value - 0.1).abs() < 1e-12);
        let (ace, aurc, smece) = (r.ace.unwrap(), r.aurc.unwrap(), r.smece.unwrap());
        assert!((ace.value - 0.325 / 3.0).abs() < 1e-12);
        assert!((aurc.value - 59.0 / 300.0).abs() < 1e-12);
        let smooth = crate::smooth_ece(&preds).unwrap();
        assert_eq!(
            (smece.value, r.smece_bandwidth),
            (smooth.value, Some(smooth.bandwidth))
        );
        assert!((r.mce.value - 0.3).abs() < 1e-12);
        assert!((r.brier.value - 0.142).abs() < 1e-12);
        assert!((r.auroc.value.unwrap() - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!((r.accuracy.ci_low, r.auroc.ci_high), (None, None));
        assert_eq!((smece.ci_low, aurc.ci_high), (None, None));
        assert_eq!(r.reliability_bins.len(), 2);
        assert_eq!(r.reliability_bins_width.len(), 2);
        assert_eq!(r.coverage.points.len(), 5);
    }

    #[test]
    fn json_has_the_documented_keys() {
        let preds: Vec<_> = (0..30)
            .map(|i| Prediction::new(i as f64 / 30.0, i % 2 == 0))
            .collect();
        let r = compute_report(&preds, &quick(3, 50)).unwrap();
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "accuracy",
            "ece",
            "ece_width",
            "ace",
            "mce",
            "smece",
            "brier",
            "log_loss",
            "auroc",
            "aurc",
        ] {
            for field in ["value", "ci_low", "ci_high"] {
                assert!(json[key][field].is_f64(), "{key}.{field} in {json}");
            }
        }
        for key in ["n", "n_used_for_ece", "bins", "bootstrap_resamples", "seed"] {
            assert!(json[key].is_u64(), "{key}");
        }
        assert!(json["smece_bandwidth"].is_f64());
        assert_eq!(json["binning"], "equal_mass");
        let curve = &json["smooth_curve"];
        for key in ["confidence", "mu", "density", "band_low", "band_high"] {
            assert_eq!(curve[key].as_array().map(Vec::len), Some(200), "{key}");
        }
        assert!(json["reliability_bins"][0]["mean_confidence"].is_f64());
        assert!(json["coverage"]["points"][0]["accuracy"].is_f64());
        let back: MetricsReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn undefined_auroc_is_null_not_nan() {
        let preds = vec![Prediction::new(0.3, true); 10];
        let r = compute_report(&preds, &quick(2, 100)).unwrap();
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["auroc"]["value"].is_null() && json["auroc"]["ci_low"].is_null());
        assert!(r.to_table().contains("auroc is undefined"));
    }

    #[test]
    fn table_is_aligned_and_shows_cis() {
        let preds: Vec<_> = (0..40)
            .map(|i| Prediction::new(i as f64 / 40.0, i % 3 != 0))
            .collect();
        let r = compute_report(&preds, &quick(4, 200)).unwrap();
        let table = r.to_table();
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines[0], "metric           value  95% CI");
        assert!(
            lines[1].starts_with(&format!("accuracy        {:.4}  [", r.accuracy.value)),
            "{table}"
        );
        // Every metric row puts its value in the same column.
        let names: Vec<_> = lines[1..12]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "accuracy",
                "ece",
                "ece_width",
                "ace",
                "mce",
                "smece",
                "brier",
                "log_loss",
                "auroc",
                "aurc",
                "coverage_area"
            ]
        );
        for line in &lines[1..12] {
            assert_eq!(&line[22..24], "  ", "{table}");
            assert_ne!(&line[21..22], " ", "{table}");
        }
        assert!(
            table.contains("ece, mce: 4 equal-mass bins, top N mod bins dropped, 40 used"),
            "{table}"
        );
    }

    /// `lincal eval compare` reads result directories written before ace, smece and aurc
    /// existed: their reports load, and the table shows the missing metrics as n/a, not 0.
    #[test]
    fn reports_without_the_newer_metrics_still_load() {
        let preds: Vec<_> = (0..40)
            .map(|i| Prediction::new(i as f64 / 40.0, i % 3 != 0))
            .collect();
        let r = compute_report(&preds, &quick(4, 20)).unwrap();
        let mut json = serde_json::to_value(&r).unwrap();
        for key in ["ace", "smece", "smece_bandwidth", "aurc", "smooth_curve"] {
            json.as_object_mut().unwrap().remove(key).unwrap();
        }
        let old: MetricsReport = serde_json::from_value(json).unwrap();
        assert_eq!((old.ece, &old.coverage), (r.ece, &r.coverage));
        assert_eq!(
            (old.ace, old.smece, old.smece_bandwidth, old.aurc),
            (None, None, None, None)
        );
        assert!(old.smooth_curve.mu.is_empty());
        let table = old.to_table();
        for name in ["ace", "smece", "aurc"] {
            let row = table.lines().find(|l| l.starts_with(name)).unwrap();
            assert_eq!(row, format!("{name:<13}      n/a  -"), "{table}");
        }
        assert!(r.to_table().contains("smece: bandwidth"));
    }

    #[test]
    fn bad_settings_are_errors() {
        let preds = [Prediction::new(0.5, true)];
        assert!(compute_report(&preds, &quick(0, 10)).is_err());
        assert!(matches!(
            compute_report(&[], &quick(20, 10)),
            Err(MetricsError::Empty)
        ));
    }
}
