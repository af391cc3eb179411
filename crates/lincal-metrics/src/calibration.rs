//! Binned calibration: reliability bins, ECE, ACE and MCE.
//!
//! All of them come from one binning routine, so a reliability diagram always shows exactly the
//! bins its ECE was computed from.

use serde::{Deserialize, Serialize};

use crate::MetricsError;
use crate::prediction::{Prediction, sorted_by_confidence};

/// How predictions are grouped into bins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Binning {
    /// The reference's `equal_bin_count` (SPEC 5.2): predictions sorted by confidence (stable),
    /// each bin takes floor(N/bins) consecutive ones, and the N mod bins highest-confidence
    /// predictions are dropped. Exception: when every confidence is the same (e.g. a method
    /// without confidence, all 1.0) nothing is dropped, because which tied items the rule would
    /// drop is arbitrary; this matches the reference's non-confidence path (ECE = 1 − accuracy).
    EqualMass,
    /// Equal mass without dropping anything: like `numpy.array_split`, the first N mod bins
    /// (lowest-confidence) bins hold ceil(N/bins) predictions and the others floor(N/bins).
    EqualMassKeepAll,
    /// Uniform bins [b/bins, (b+1)/bins) on [0, 1]; confidence 1.0 goes to the last bin. Empty
    /// bins are skipped (the reference produced NaN for them).
    EqualWidth,
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Equal width: the bin's edges. Equal mass: the lowest and highest confidence in the bin.
    pub lower: f64,
    pub upper: f64,
    pub mean_confidence: f64,
    pub accuracy: f64,
    pub count: usize,
}

/// Non-empty bins in ascending confidence. With fewer predictions than bins, equal-mass binning
/// uses one bin per prediction (N bins) instead of dropping everything.
pub fn reliability_bins(
    preds: &[Prediction],
    bins: usize,
    binning: Binning,
) -> Result<Vec<ReliabilityBin>, MetricsError> {
    check_bins(bins)?;
    Ok(bins_of_sorted(&sorted_by_confidence(preds)?, bins, binning))
}

/// Expected calibration error: Σ_b (n_b / N_used)·|accuracy_b − confidence_b| over the bins of
/// [`reliability_bins`]; N_used is N minus whatever the binning dropped.
pub fn ece(preds: &[Prediction], bins: usize, binning: Binning) -> Result<f64, MetricsError> {
    Ok(expected_calibration_error(&reliability_bins(
        preds, bins, binning,
    )?))
}

/// Maximum calibration error: the largest |accuracy_b − confidence_b| over non-empty bins.
pub fn mce(preds: &[Prediction], bins: usize, binning: Binning) -> Result<f64, MetricsError> {
    Ok(max_calibration_error(&reliability_bins(
        preds, bins, binning,
    )?))
}

/// Average calibration error as netcal defines it: `bins` equal-width bins, each non-empty bin
/// weighted equally, so ACE = mean over non-empty bins of |accuracy_b − confidence_b| (sparse
/// bins count as much as crowded ones, unlike ECE). The bins are [`Binning::EqualWidth`]'s,
/// with edges b/bins: a confidence exactly on an edge such as 0.3 goes to the upper bin, while
/// numpy's histogram (netcal) uses edges b·(1/bins), and 3·(1/10) is 0.30000000000000004.
pub fn ace(preds: &[Prediction], bins: usize) -> Result<f64, MetricsError> {
    Ok(average_calibration_error(&reliability_bins(
        preds,
        bins,
        Binning::EqualWidth,
    )?))
}

/// Merges neighbouring bins with the same mean confidence (count-weighted), as the reference's
/// reliability plot does: many tied confidences (say, every "Direct" claim at 1.0) fill several
/// equal-mass bins that would otherwise be drawn on top of each other. Bins are in ascending
/// confidence, so equal means are always neighbours.
pub fn merge_equal_confidence(bins: &[ReliabilityBin]) -> Vec<ReliabilityBin> {
    let mut merged: Vec<ReliabilityBin> = Vec::with_capacity(bins.len());
    for bin in bins {
        match merged.last_mut() {
            Some(last) if last.mean_confidence == bin.mean_confidence => {
                let count = last.count + bin.count;
                let correct = last.accuracy * last.count as f64 + bin.accuracy * bin.count as f64;
                last.accuracy = correct / count as f64;
                last.lower = last.lower.min(bin.lower);
                last.upper = last.upper.max(bin.upper);
                last.count = count;
            }
            _ => merged.push(*bin),
        }
    }
    merged
}

pub(crate) fn check_bins(bins: usize) -> Result<(), MetricsError> {
    if bins == 0 {
        return Err(MetricsError::InvalidConfig {
            field: "bins",
            reason: "must be at least 1 (the reference uses 20 for QA and 40 for claims)".into(),
        });
    }
    Ok(())
}

pub(crate) fn expected_calibration_error(bins: &[ReliabilityBin]) -> f64 {
    let used: usize = bins.iter().map(|b| b.count).sum();
    bins.iter()
        .map(|b| b.count as f64 / used as f64 * (b.accuracy - b.mean_confidence).abs())
        .sum()
}

/// Mean gap over the bins given (all non-empty).
pub(crate) fn average_calibration_error(bins: &[ReliabilityBin]) -> f64 {
    bins.iter()
        .map(|b| (b.accuracy - b.mean_confidence).abs())
        .sum::<f64>()
        / bins.len() as f64
}

pub(crate) fn max_calibration_error(bins: &[ReliabilityBin]) -> f64 {
    bins.iter()
        .map(|b| (b.accuracy - b.mean_confidence).abs())
        .fold(0.0, f64::max)
}

/// The binning itself, on predictions already checked and sorted by ascending confidence.
pub(crate) fn bins_of_sorted(
    sorted: &[Prediction],
    bins: usize,
    binning: Binning,
) -> Vec<ReliabilityBin> {
    let n = sorted.len();
    match binning {
        Binning::EqualMass | Binning::EqualMassKeepAll => {
            let k = bins.min(n);
            let (size, extra) = (n / k, n % k);
            let all_tied = sorted[0].confidence == sorted[n - 1].confidence;
            let keep_all = binning == Binning::EqualMassKeepAll || all_tied;
            let mut start = 0;
            (0..k)
                .map(|b| {
                    let len = size + usize::from(keep_all && b < extra);
                    let slice = &sorted[start..start + len];
                    start += len;
                    summarize(slice, slice[0].confidence, slice[len - 1].confidence)
                })
                .collect()
        }
        Binning::EqualWidth => {
            // Sorted input makes every bin a contiguous run.
            let mut out = Vec::new();
            let mut start = 0;
            while start < n {
                let b = width_bin(sorted[start].confidence, bins);
                let len = sorted[start..]
                    .iter()
                    .take_while(|p| width_bin(p.confidence, bins) == b)
                    .count();
                let edge = |i: usize| i as f64 / bins as f64;
                out.push(summarize(&sorted[start..start + len], edge(b), edge(b + 1)));
                start += len;
            }
            out
        }
    }
}

/// Index of the uniform bin [b/bins, (b+1)/bins) holding `c`; 1.0 goes to the last bin.
fn width_bin(c: f64, bins: usize) -> usize {
    let edge = |i: usize| i as f64 / bins as f64;
    // floor(c·bins) can be one off next to an edge through rounding; the edges b/bins decide.
    let b = ((c * bins as f64) as usize).min(bins - 1);
    if c < edge(b) {
        b - 1
    } else if b + 1 < bins && c >= edge(b + 1) {
        b + 1
    } else {
        b
    }
}

fn summarize(slice: &[Prediction], lower: f64, upper: f64) -> ReliabilityBin {
    let count = slice.len();
    let correct = slice.iter().filter(|p| p.correct).count();
    let confidence: f64 = slice.iter().map(|p| p.confidence).sum();
    ReliabilityBin {
        lower,
        upper,
        mean_confidence: confidence / count as f64,
        accuracy: correct as f64 / count as f64,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds(items: &[(f64, bool)]) -> Vec<Prediction> {
        items.iter().map(|&(c, y)| Prediction::new(c, y)).collect()
    }

    /// The five predictions the hand-computed cases below share.
    fn five_predictions() -> Vec<Prediction> {
        preds(&[
            (0.8, true),
            (0.1, false),
            (0.9, true),
            (0.3, true),
            (0.4, false),
        ])
    }

    const EPS: f64 = 1e-12;

    /// 5 predictions, 2 bins. Sorted: 0.1✗ 0.3✓ 0.4✗ 0.8✓ 0.9✓.
    /// floor(5/2) = 2 per bin, 5 mod 2 = 1 dropped (0.9✓, the highest confidence).
    ///   bin 1: {0.1✗, 0.3✓}: conf 0.20, acc 0.5, gap 0.30
    ///   bin 2: {0.4✗, 0.8✓}: conf 0.60, acc 0.5, gap 0.10
    /// ECE = 2/4·0.30 + 2/4·0.10 = 0.20; MCE = 0.30.
    #[test]
    fn equal_mass_drops_remainder_by_hand() {
        let p = five_predictions();
        let bins = reliability_bins(&p, 2, Binning::EqualMass).unwrap();
        assert_eq!(bins.iter().map(|b| b.count).collect::<Vec<_>>(), vec![2, 2]);
        assert!((bins[0].mean_confidence - 0.2).abs() < EPS);
        assert!((bins[1].mean_confidence - 0.6).abs() < EPS);
        assert_eq!((bins[1].lower, bins[1].upper), (0.4, 0.8));
        assert!((ece(&p, 2, Binning::EqualMass).unwrap() - 0.20).abs() < EPS);
        assert!((mce(&p, 2, Binning::EqualMass).unwrap() - 0.30).abs() < EPS);
    }

    /// Same 5 predictions, keeping all: sizes ceil, floor = 3, 2.
    ///   bin 1: {0.1✗, 0.3✓, 0.4✗}: conf 0.8/3, acc 1/3, gap |1/3 − 0.8/3| = 0.2/3
    ///   bin 2: {0.8✓, 0.9✓}:       conf 0.85,  acc 1,   gap 0.15
    /// ECE = 3/5·0.2/3 + 2/5·0.15 = 0.04 + 0.06 = 0.10; MCE = 0.15.
    #[test]
    fn equal_mass_keep_all_by_hand() {
        let p = five_predictions();
        let bins = reliability_bins(&p, 2, Binning::EqualMassKeepAll).unwrap();
        assert_eq!(bins.iter().map(|b| b.count).collect::<Vec<_>>(), vec![3, 2]);
        assert!((ece(&p, 2, Binning::EqualMassKeepAll).unwrap() - 0.10).abs() < EPS);
        assert!((mce(&p, 2, Binning::EqualMassKeepAll).unwrap() - 0.15).abs() < EPS);
    }

    /// Same 5 predictions, 4 equal-width bins [0,.25) [.25,.5) [.5,.75) [.75,1]:
    ///   bin 0: {0.1✗}: gap 0.1;  bin 1: {0.3✓, 0.4✗}: conf 0.35, acc 0.5, gap 0.15
    ///   bin 2: empty, skipped;   bin 3: {0.8✓, 0.9✓}: conf 0.85, acc 1, gap 0.15
    /// ECE = 1/5·0.1 + 2/5·0.15 + 2/5·0.15 = 0.02 + 0.06 + 0.06 = 0.14; MCE = 0.15.
    #[test]
    fn equal_width_by_hand_skips_empty_bins() {
        let p = five_predictions();
        let bins = reliability_bins(&p, 4, Binning::EqualWidth).unwrap();
        let edges: Vec<_> = bins.iter().map(|b| (b.lower, b.upper, b.count)).collect();
        assert_eq!(edges, vec![(0.0, 0.25, 1), (0.25, 0.5, 2), (0.75, 1.0, 2)]);
        assert!((ece(&p, 4, Binning::EqualWidth).unwrap() - 0.14).abs() < EPS);
        assert!((mce(&p, 4, Binning::EqualWidth).unwrap() - 0.15).abs() < EPS);
    }

    /// The same 5 predictions and 4 equal-width bins as above: the non-empty bins have gaps
    /// 0.1, 0.15 and 0.15 (bin [.5, .75) is empty and left out, not counted as a zero gap),
    /// so ACE = (0.1 + 0.15 + 0.15)/3 = 0.4/3 ≈ 0.1333, where ECE weights them 1, 2, 2 of 5.
    /// With 2 bins: [0, .5) gap |1/3 − 0.8/3| = 0.2/3, [.5, 1] gap 0.15:
    /// ACE = (0.2/3 + 0.15)/2 = 0.325/3 ≈ 0.1083.
    #[test]
    fn ace_by_hand_weights_non_empty_bins_equally() {
        let p = five_predictions();
        assert!((ace(&p, 4).unwrap() - 0.4 / 3.0).abs() < EPS);
        assert!((ace(&p, 2).unwrap() - 0.325 / 3.0).abs() < EPS);
        // One bin: |3/5 − 2.5/5| = 0.1, equal to ECE.
        assert!((ace(&p, 1).unwrap() - 0.1).abs() < EPS);
        // A confidence on an edge goes to the upper bin: 0.3 with 10 bins lands in [0.3, 0.4).
        // ACE = (|0 − 0.3| + |1 − 0.9|)/2 = 0.2.
        let edge = preds(&[(0.3, false), (0.9, true)]);
        let bins = reliability_bins(&edge, 10, Binning::EqualWidth).unwrap();
        assert_eq!((bins[0].lower, bins[0].upper), (0.3, 0.4));
        assert!((ace(&edge, 10).unwrap() - 0.2).abs() < EPS);
        assert!(ace(&p, 0).is_err());
    }

    #[test]
    fn equal_width_edges_and_one() {
        // Exact edges open a bin; 1.0 closes the last one; 0.0 opens the first.
        for bins in [3, 10, 20, 40] {
            for b in 0..bins {
                assert_eq!(
                    width_bin(b as f64 / bins as f64, bins),
                    b,
                    "edge {b}/{bins}"
                );
            }
            assert_eq!(width_bin(1.0, bins), bins - 1);
            assert_eq!(
                width_bin(f64::from_bits((1.0f64).to_bits() - 1), bins),
                bins - 1
            );
        }
        assert_eq!(width_bin(0.7, 20), 14);
        assert_eq!(width_bin(0.6999999, 20), 13);
    }

    #[test]
    fn fewer_predictions_than_bins_uses_one_bin_each() {
        // N = 3 < 20 bins: 3 bins of one; ECE = mean |y − c| = (0.2 + 0.4 + 0.1)/3.
        let p = preds(&[(0.8, true), (0.4, false), (0.1, false)]);
        for binning in [Binning::EqualMass, Binning::EqualMassKeepAll] {
            let bins = reliability_bins(&p, 20, binning).unwrap();
            assert_eq!(bins.len(), 3);
            assert!((ece(&p, 20, binning).unwrap() - 0.7 / 3.0).abs() < EPS);
        }
    }

    #[test]
    fn all_tied_confidences_drop_nothing() {
        // 7 predictions at confidence 1, 4 correct, 2 bins: the drop rule would remove one
        // arbitrary prediction; instead all 7 count and ECE = 1 − 4/7 exactly.
        let p: Vec<_> = (0..7)
            .map(|i| Prediction::without_confidence(i < 4))
            .collect();
        let bins = reliability_bins(&p, 2, Binning::EqualMass).unwrap();
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 7);
        assert!((ece(&p, 2, Binning::EqualMass).unwrap() - 3.0 / 7.0).abs() < EPS);
    }

    #[test]
    fn zero_bins_is_an_error() {
        let err = ece(&preds(&[(0.5, true)]), 0, Binning::EqualMass).unwrap_err();
        assert!(err.to_string().contains("`bins`"), "{err}");
    }

    #[test]
    fn merge_equal_confidence_weights_by_count() {
        let bin = |c: f64, acc: f64, count| ReliabilityBin {
            lower: c,
            upper: c,
            mean_confidence: c,
            accuracy: acc,
            count,
        };
        let merged =
            merge_equal_confidence(&[bin(0.5, 0.2, 2), bin(1.0, 1.0, 1), bin(1.0, 0.0, 3)]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0], bin(0.5, 0.2, 2));
        assert_eq!((merged[1].count, merged[1].accuracy), (4, 0.25));
    }
}
