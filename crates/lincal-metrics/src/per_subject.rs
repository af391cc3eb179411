//! Per-response aggregation: metrics of each response on its own, averaged over responses.
//!
//! The reference pools every claim of every biography into one set (SPEC 5.3), so a long
//! biography weighs more than a short one. FActScore, SAFE and VeriScore instead score each
//! response and average the scores, so every person counts once. Both views are reported.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::MetricsError;
use crate::Prediction;
use crate::bootstrap::{draw_counts, percentile_interval};
use crate::calibration::{bins_of_sorted, check_bins, expected_calibration_error};
use crate::prediction::sorted_by_confidence;
use crate::report::{Estimate, ReportConfig};
use crate::scores::accuracy_of;

/// Accuracy and ECE of each subject's predictions, averaged over subjects.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SubjectAverages {
    /// Subjects averaged over (those with at least one prediction).
    pub subjects: usize,
    /// Mean over subjects of the subject's accuracy, with a bootstrap interval over subjects.
    pub accuracy: Estimate,
    /// Mean over subjects of the subject's ECE, binned as `config` says; a subject with fewer
    /// predictions than bins gets one bin per prediction (see [`crate::Binning`]), so its ECE
    /// is the mean |confidence − correct| of its predictions.
    pub ece: Estimate,
}

/// Averages the accuracy and ECE of each group in `groups` (one per subject; empty groups are
/// left out, and their number is for the caller to report). The interval resamples subjects
/// with `config`'s bootstrap settings.
pub fn subject_averages(
    groups: &[Vec<Prediction>],
    config: &ReportConfig,
) -> Result<SubjectAverages, MetricsError> {
    check_bins(config.bins)?;
    config.bootstrap.check()?;
    let mut per_subject: Vec<(f64, f64)> = Vec::new();
    for group in groups.iter().filter(|g| !g.is_empty()) {
        let sorted = sorted_by_confidence(group)?;
        let ece = expected_calibration_error(&bins_of_sorted(&sorted, config.bins, config.binning));
        per_subject.push((accuracy_of(&sorted), ece));
    }
    if per_subject.is_empty() {
        return Err(MetricsError::Empty);
    }
    let n = per_subject.len();
    let mean = |weights: Option<&[u32]>, metric: fn(&(f64, f64)) -> f64| -> f64 {
        match weights {
            None => per_subject.iter().map(metric).sum::<f64>() / n as f64,
            Some(counts) => {
                per_subject
                    .iter()
                    .zip(counts)
                    .map(|(s, &c)| metric(s) * f64::from(c))
                    .sum::<f64>()
                    / n as f64
            }
        }
    };
    let resampled: Vec<(f64, f64)> = (0..config.bootstrap.resamples)
        .into_par_iter()
        .map_init(
            || vec![0u32; n],
            |counts, i| {
                draw_counts(&config.bootstrap, i, counts);
                (mean(Some(counts), |s| s.0), mean(Some(counts), |s| s.1))
            },
        )
        .collect();
    let estimate = |value: f64, metric: fn(&(f64, f64)) -> f64| {
        Estimate::new(
            value,
            percentile_interval(
                resampled.iter().map(metric).collect(),
                config.bootstrap.level,
            ),
        )
    };
    Ok(SubjectAverages {
        subjects: n,
        accuracy: estimate(mean(None, |s| s.0), |s| s.0),
        ece: estimate(mean(None, |s| s.1), |s| s.1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Binning, BootstrapConfig};

    fn config(bins: usize, resamples: usize) -> ReportConfig {
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
    fn each_subject_counts_once() {
        let p = Prediction::new;
        // Subject 1: 4 claims at 0.9, 3 supported → accuracy 0.75; with 40 bins each claim is
        // its own bin: ECE = (3·0.1 + 0.9)/4 = 0.3. Subject 2: one claim at 0.6, unsupported →
        // accuracy 0, ECE 0.6. An empty subject is left out. Means: accuracy 0.375, ECE 0.45
        // (pooled, the 5 claims would give accuracy 0.6).
        let groups = vec![
            vec![p(0.9, true), p(0.9, true), p(0.9, false), p(0.9, true)],
            vec![p(0.6, false)],
            vec![],
        ];
        let a = subject_averages(&groups, &config(40, 0)).unwrap();
        assert_eq!(a.subjects, 2);
        assert!((a.accuracy.value - 0.375).abs() < 1e-12, "{a:?}");
        assert!((a.ece.value - 0.45).abs() < 1e-12, "{a:?}");
        assert_eq!((a.accuracy.ci_low, a.ece.ci_high), (None, None));
        // One bin for subject 1: |0.75 − 0.9| = 0.15; subject 2 still 0.6 → ECE 0.375.
        let one_bin = subject_averages(&groups, &config(1, 0)).unwrap();
        assert!((one_bin.ece.value - 0.375).abs() < 1e-12, "{one_bin:?}");
    }

    #[test]
    fn the_interval_resamples_subjects() {
        let p = Prediction::new;
        // Ten subjects, half all-correct and half all-wrong: every resample's mean accuracy is
        // a multiple of 0.1, and the interval is wide around 0.5.
        let groups: Vec<Vec<Prediction>> = (0..10)
            .map(|i| vec![p(0.5, i % 2 == 0); 1 + i % 3])
            .collect();
        let a = subject_averages(&groups, &config(40, 2000)).unwrap();
        assert!((a.accuracy.value - 0.5).abs() < 1e-12);
        let (low, high) = (a.accuracy.ci_low.unwrap(), a.accuracy.ci_high.unwrap());
        assert!(
            (0.1..0.4).contains(&low) && (0.6..0.9).contains(&high),
            "{low} {high}"
        );
        assert!(matches!(
            subject_averages(&[vec![]], &config(40, 10)),
            Err(MetricsError::Empty)
        ));
    }
}
