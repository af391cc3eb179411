//! Unbinned scores: accuracy, Brier, log loss, AUROC, and the selective-prediction curve with
//! its area (AURC).

use serde::{Deserialize, Serialize};

use crate::MetricsError;
use crate::prediction::{Prediction, sorted_by_confidence, validate};

/// Log loss clips the probability given to the actual outcome to [`LOG_LOSS_EPSILON`,
/// 1 − `LOG_LOSS_EPSILON`] (the same bound as scikit-learn), so a confident mistake costs at
/// most −ln(1e-12) ≈ 27.63 instead of infinity. A method without confidence (all 1.0) therefore
/// scores ≈ 27.6 × error rate.
pub const LOG_LOSS_EPSILON: f64 = 1e-12;

/// Fraction of predictions judged correct.
pub fn accuracy(preds: &[Prediction]) -> Result<f64, MetricsError> {
    validate(preds)?;
    Ok(accuracy_of(preds))
}

/// Brier score: mean of (confidence − correct)², correct as 0/1. Lower is better.
pub fn brier(preds: &[Prediction]) -> Result<f64, MetricsError> {
    validate(preds)?;
    Ok(brier_of(preds))
}

/// Log loss (negative mean log-likelihood of the outcomes), confidences clipped as described at
/// [`LOG_LOSS_EPSILON`]. Lower is better.
pub fn log_loss(preds: &[Prediction]) -> Result<f64, MetricsError> {
    validate(preds)?;
    Ok(log_loss_of(preds))
}

/// Area under the ROC curve of confidence as a score for correctness: the probability that a
/// random correct prediction has higher confidence than a random wrong one, ties counting half.
/// `None` when all predictions are correct or all are wrong (no pair to compare).
pub fn auroc(preds: &[Prediction]) -> Result<Option<f64>, MetricsError> {
    Ok(auroc_of_sorted(&sorted_by_confidence(preds)?))
}

/// Selective prediction: answer only when confidence ≥ a threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoverageCurve {
    /// One point per distinct confidence, from the highest threshold (lowest coverage) down;
    /// the last point has coverage 1 and the overall accuracy.
    pub points: Vec<CoveragePoint>,
    /// Mean of the accuracy over the coverages 1/N, 2/N, …, 1, answering the most confident
    /// predictions first (the area under the accuracy–coverage curve; higher is better). Inside a
    /// group of tied confidences the order is unknowable, so each step takes the expected
    /// accuracy under a random order of the group.
    pub area: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CoveragePoint {
    /// Predictions with confidence ≥ `threshold` are answered.
    pub threshold: f64,
    /// Fraction of all predictions answered.
    pub coverage: f64,
    /// Accuracy among the answered ones.
    pub accuracy: f64,
}

pub fn coverage_curve(preds: &[Prediction]) -> Result<CoverageCurve, MetricsError> {
    Ok(coverage_curve_of_sorted(&sorted_by_confidence(preds)?))
}

/// Area under the risk–coverage curve (risk = 1 − accuracy among the answered): the mean risk
/// over the coverages 1/N, …, 1, i.e. 1 − [`CoverageCurve::area`], ties taken in expectation
/// as there. Lower is better; a perfect ranking of correct above wrong gets the least possible
/// for its accuracy.
pub fn aurc(preds: &[Prediction]) -> Result<f64, MetricsError> {
    Ok(1.0 - coverage_curve(preds)?.area)
}

pub(crate) fn accuracy_of(preds: &[Prediction]) -> f64 {
    preds.iter().filter(|p| p.correct).count() as f64 / preds.len() as f64
}

pub(crate) fn brier_of(preds: &[Prediction]) -> f64 {
    let sum: f64 = preds
        .iter()
        .map(|p| (p.confidence - outcome(p)).powi(2))
        .sum();
    sum / preds.len() as f64
}

pub(crate) fn log_loss_of(preds: &[Prediction]) -> f64 {
    let sum: f64 = preds
        .iter()
        .map(|p| {
            // Clipping the outcome's probability rather than the confidence keeps the bound
            // exact: 1 − (1 − 1e-12) is not 1e-12 in floating point.
            let p_outcome = if p.correct {
                p.confidence
            } else {
                1.0 - p.confidence
            };
            -p_outcome
                .clamp(LOG_LOSS_EPSILON, 1.0 - LOG_LOSS_EPSILON)
                .ln()
        })
        .sum();
    sum / preds.len() as f64
}

/// AUROC on predictions sorted by ascending confidence, one pass over groups of tied confidence.
pub(crate) fn auroc_of_sorted(sorted: &[Prediction]) -> Option<f64> {
    // Counted in half-pairs, in integers, so ties are exact.
    let (mut wrong_below, mut half_pairs_won) = (0u64, 0u64);
    for group in tie_groups(sorted) {
        let correct = group.iter().filter(|p| p.correct).count() as u64;
        let wrong = group.len() as u64 - correct;
        half_pairs_won += 2 * correct * wrong_below + correct * wrong;
        wrong_below += wrong;
    }
    let correct_total = sorted.len() as u64 - wrong_below;
    let pairs = correct_total * wrong_below;
    (pairs > 0).then(|| half_pairs_won as f64 / (2 * pairs) as f64)
}

pub(crate) fn coverage_curve_of_sorted(sorted: &[Prediction]) -> CoverageCurve {
    let n = sorted.len();
    let (mut kept, mut correct, mut area) = (0usize, 0usize, 0.0);
    let mut points = Vec::new();
    for group in tie_groups(sorted).rev() {
        let group_correct = group.iter().filter(|p| p.correct).count();
        // Expected correct count after j of the group's m items: correct + j·group_correct/m.
        let per_item = group_correct as f64 / group.len() as f64;
        for j in 1..=group.len() {
            area += (correct as f64 + j as f64 * per_item) / (kept + j) as f64;
        }
        kept += group.len();
        correct += group_correct;
        points.push(CoveragePoint {
            threshold: group[0].confidence,
            coverage: kept as f64 / n as f64,
            accuracy: correct as f64 / kept as f64,
        });
    }
    CoverageCurve {
        points,
        area: area / n as f64,
    }
}

fn tie_groups(sorted: &[Prediction]) -> impl DoubleEndedIterator<Item = &[Prediction]> {
    sorted.chunk_by(|a, b| a.confidence == b.confidence)
}

fn outcome(p: &Prediction) -> f64 {
    if p.correct { 1.0 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds(items: &[(f64, bool)]) -> Vec<Prediction> {
        items.iter().map(|&(c, y)| Prediction::new(c, y)).collect()
    }

    const EPS: f64 = 1e-12;

    /// 0.8✓ 0.1✗ 0.9✓ 0.3✓ 0.4✗
    fn five() -> Vec<Prediction> {
        preds(&[
            (0.8, true),
            (0.1, false),
            (0.9, true),
            (0.3, true),
            (0.4, false),
        ])
    }

    #[test]
    fn accuracy_by_hand() {
        // 3 of 5 correct.
        assert!((accuracy(&five()).unwrap() - 0.6).abs() < EPS);
    }

    #[test]
    fn brier_by_hand() {
        // (0.8−1)² + (0.1−0)² + (0.9−1)² + (0.3−1)² + (0.4−0)²
        // = 0.04 + 0.01 + 0.01 + 0.49 + 0.16 = 0.71; / 5 = 0.142.
        assert!((brier(&five()).unwrap() - 0.142).abs() < EPS);
    }

    #[test]
    fn log_loss_by_hand() {
        // −[ln 0.8 + ln 0.9 + ln 0.9 + ln 0.3 + ln 0.6] / 5
        let expected = -(0.8f64.ln() + 0.9f64.ln() + 0.9f64.ln() + 0.3f64.ln() + 0.6f64.ln()) / 5.0;
        assert!((log_loss(&five()).unwrap() - expected).abs() < EPS);
    }

    #[test]
    fn log_loss_clips_certain_mistakes() {
        // Confidence 1 and wrong: −ln(1e-12) ≈ 27.631, not infinity. Confidence 1 and right:
        // −ln(1 − 1e-12) ≈ 1e-12.
        let wrong = log_loss(&preds(&[(1.0, false)])).unwrap();
        assert!((wrong - 27.631_021_115_928_547).abs() < 1e-6, "{wrong}");
        let right = log_loss(&preds(&[(1.0, true), (0.0, false)])).unwrap();
        assert!(right > 0.0 && right < 2e-12, "{right}");
    }

    #[test]
    fn auroc_by_hand() {
        // Correct: 0.8, 0.9, 0.3. Wrong: 0.1, 0.4. Pairs (correct, wrong), 3×2 = 6:
        // 0.8>0.1 ✓, 0.8>0.4 ✓, 0.9>0.1 ✓, 0.9>0.4 ✓, 0.3>0.1 ✓, 0.3<0.4 ✗ → 5/6.
        assert!((auroc(&five()).unwrap().unwrap() - 5.0 / 6.0).abs() < EPS);
    }

    #[test]
    fn auroc_counts_ties_half() {
        // Correct: 0.5, 0.7. Wrong: 0.5, 0.2. Pairs: (0.5,0.5) tie ½, (0.5,0.2) 1,
        // (0.7,0.5) 1, (0.7,0.2) 1 → 3.5/4 = 0.875.
        let p = preds(&[(0.5, true), (0.5, false), (0.7, true), (0.2, false)]);
        assert!((auroc(&p).unwrap().unwrap() - 0.875).abs() < EPS);
        // Everything tied: 0.5.
        let p = preds(&[(1.0, true), (1.0, false), (1.0, true)]);
        assert_eq!(auroc(&p).unwrap(), Some(0.5));
    }

    #[test]
    fn auroc_undefined_for_one_class() {
        assert_eq!(auroc(&preds(&[(0.2, true), (0.9, true)])).unwrap(), None);
        assert_eq!(auroc(&preds(&[(0.2, false)])).unwrap(), None);
    }

    #[test]
    fn coverage_curve_by_hand() {
        // Descending: 0.9✓ 0.8✓ 0.4✗ 0.3✓ 0.1✗, all distinct.
        // acc at k = 1..5: 1/1, 2/2, 2/3, 3/4, 3/5.
        // area = (1 + 1 + 2/3 + 3/4 + 3/5)/5 = (4.016666…)/5 = 0.803333…
        let curve = coverage_curve(&five()).unwrap();
        let got: Vec<_> = curve
            .points
            .iter()
            .map(|p| (p.threshold, p.coverage))
            .collect();
        assert_eq!(
            got,
            vec![(0.9, 0.2), (0.8, 0.4), (0.4, 0.6), (0.3, 0.8), (0.1, 1.0)]
        );
        assert!((curve.points[2].accuracy - 2.0 / 3.0).abs() < EPS);
        assert!((curve.points[4].accuracy - 0.6).abs() < EPS);
        let area = (1.0 + 1.0 + 2.0 / 3.0 + 0.75 + 0.6) / 5.0;
        assert!((curve.area - area).abs() < EPS);
    }

    #[test]
    fn coverage_curve_ties_use_expected_order() {
        // 0.9✗, then a tie group at 0.5 with ✓✗ (one of two correct).
        // k=1: 0/1. k=2: (0 + ½)/2 = ¼. k=3: 1/3. area = (0 + ¼ + ⅓)/3 = 7/36.
        // Points only at thresholds 0.9 and 0.5; the order inside the tie cannot matter.
        for p in [
            preds(&[(0.9, false), (0.5, true), (0.5, false)]),
            preds(&[(0.5, false), (0.5, true), (0.9, false)]),
        ] {
            let curve = coverage_curve(&p).unwrap();
            assert_eq!(curve.points.len(), 2);
            assert_eq!(curve.points[1].threshold, 0.5);
            assert!((curve.points[1].accuracy - 1.0 / 3.0).abs() < EPS);
            assert!((curve.area - 7.0 / 36.0).abs() < EPS);
        }
    }

    #[test]
    fn aurc_by_hand() {
        // No ties: the risks at k = 1..5 of the curve above are 0, 0, 1/3, 1/4, 2/5;
        // AURC = (0 + 0 + 1/3 + 1/4 + 2/5)/5 = (59/60)/5 = 59/300.
        assert!((aurc(&five()).unwrap() - 59.0 / 300.0).abs() < EPS);
        // Ties: 0.9✗ then 0.5 {✓, ✗}: expected risks 1, 1 − ¼, 1 − ⅓, so
        // AURC = (1 + ¾ + ⅔)/3 = 29/36 (= 1 − 7/36).
        let tied = preds(&[(0.9, false), (0.5, true), (0.5, false)]);
        assert!((aurc(&tied).unwrap() - 29.0 / 36.0).abs() < EPS);
        // Ranked the other way round (correct first) the risk only rises with coverage:
        // 0.9✓ 0.5✗ 0.1✗: risks 0, ½, ⅔ → AURC = (0 + ½ + ⅔)/3 = 7/18.
        let ranked = preds(&[(0.9, true), (0.5, false), (0.1, false)]);
        assert!((aurc(&ranked).unwrap() - 7.0 / 18.0).abs() < EPS);
    }

    #[test]
    fn empty_and_invalid_inputs_are_errors() {
        assert!(matches!(accuracy(&[]), Err(MetricsError::Empty)));
        assert!(matches!(auroc(&[]), Err(MetricsError::Empty)));
        assert!(matches!(
            brier(&preds(&[(0.2, true), (1.2, true)])),
            Err(MetricsError::InvalidConfidence { index: 1, .. })
        ));
    }
}
