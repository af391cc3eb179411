//! Paired bootstrap differences between two methods scored on the same items.
//!
//! Two methods' intervals can overlap while their difference is clearly not zero (the items
//! that are hard for one are hard for the other). Resampling the same items for both methods
//! and taking the difference on every resample gives the difference its own interval.
//!
//! Items are grouped by the subject they were scored on: a question for QA (one prediction
//! each), an entity for biographies (several claims each, different claims for different
//! models). Subjects are what is resampled, so claims of one biography move together (a
//! cluster bootstrap) and both methods always see the same entities.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::MetricsError;
use crate::bootstrap::{draw_counts, percentile_interval};
use crate::calibration::{bins_of_sorted, check_bins, expected_calibration_error};
use crate::prediction::{Prediction, sorted_by_confidence, validate};
use crate::report::{Estimate, ReportConfig};
use crate::scores::{accuracy_of, brier_of};

/// The difference `a − b` of one metric, with its paired interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedDifference {
    /// The metric of method a and of method b on the shared subjects.
    pub a: f64,
    pub b: f64,
    /// `a − b` and its paired percentile interval (null when intervals are off).
    pub difference: Estimate,
    /// The interval excludes zero: the difference is distinguishable from none at the level.
    pub distinguishable: bool,
}

/// Accuracy, ECE and Brier score of two methods compared on the subjects both scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedComparison {
    /// Subjects scored by both methods (the only ones compared).
    pub subjects: usize,
    pub accuracy: PairedDifference,
    pub ece: PairedDifference,
    pub brier: PairedDifference,
    pub bootstrap_resamples: usize,
    pub seed: u64,
    pub ci_level: f64,
}

/// The three metrics of one sample of subjects, for one method.
#[derive(Clone, Copy)]
struct Scores {
    accuracy: f64,
    ece: f64,
    brier: f64,
}

fn scores(preds: &[Prediction], config: &ReportConfig) -> Scores {
    let sorted = sorted_by_confidence(preds).expect("checked before resampling");
    Scores {
        accuracy: accuracy_of(&sorted),
        ece: expected_calibration_error(&bins_of_sorted(&sorted, config.bins, config.binning)),
        brier: brier_of(&sorted),
    }
}

/// Compares method a with method b. `a[k]` and `b[k]` are the predictions of the two methods on
/// subject k (the caller pairs them); ECE uses `config`'s bins and binning, the resampling its
/// bootstrap settings. Resample i draws the same subjects for both methods, so identical
/// inputs give a difference of exactly zero on every resample.
pub fn paired_comparison(
    a: &[Vec<Prediction>],
    b: &[Vec<Prediction>],
    config: &ReportConfig,
) -> Result<PairedComparison, MetricsError> {
    check_bins(config.bins)?;
    config.bootstrap.check()?;
    if a.len() != b.len() {
        return Err(MetricsError::InvalidConfig {
            field: "subjects",
            reason: format!(
                "method a has {} subjects and method b {}; pair them by subject first",
                a.len(),
                b.len()
            ),
        });
    }
    let flat = |groups: &[Vec<Prediction>]| groups.concat();
    let (all_a, all_b) = (flat(a), flat(b));
    validate(&all_a)?;
    validate(&all_b)?;
    let (point_a, point_b) = (scores(&all_a, config), scores(&all_b, config));
    let subjects = a.len();
    let resampled: Vec<(Scores, Scores)> = (0..config.bootstrap.resamples)
        .into_par_iter()
        .map_init(
            || vec![0u32; subjects],
            |counts, i| {
                draw_counts(&config.bootstrap, i, counts);
                let draw = |groups: &[Vec<Prediction>]| -> Vec<Prediction> {
                    let mut drawn = Vec::new();
                    for (group, &count) in groups.iter().zip(counts.iter()) {
                        for _ in 0..count {
                            drawn.extend_from_slice(group);
                        }
                    }
                    drawn
                };
                let (drawn_a, drawn_b) = (draw(a), draw(b));
                // A resample of subjects whose groups are all empty has no predictions.
                if drawn_a.is_empty() || drawn_b.is_empty() {
                    return None;
                }
                Some((scores(&drawn_a, config), scores(&drawn_b, config)))
            },
        )
        .flatten()
        .collect();
    let level = config.bootstrap.level;
    let difference = |metric: fn(&Scores) -> f64| {
        let interval = percentile_interval(
            resampled
                .iter()
                .map(|(ra, rb)| metric(ra) - metric(rb))
                .collect(),
            level,
        );
        PairedDifference {
            a: metric(&point_a),
            b: metric(&point_b),
            difference: Estimate::new(metric(&point_a) - metric(&point_b), interval),
            distinguishable: interval.is_some_and(|i| i.low > 0.0 || i.high < 0.0),
        }
    };
    Ok(PairedComparison {
        subjects,
        accuracy: difference(|s| s.accuracy),
        ece: difference(|s| s.ece),
        brier: difference(|s| s.brier),
        bootstrap_resamples: config.bootstrap.resamples,
        seed: config.bootstrap.seed,
        ci_level: level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Binning, BootstrapConfig};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn config(resamples: usize, seed: u64) -> ReportConfig {
        ReportConfig {
            bins: 10,
            binning: Binning::EqualMass,
            bootstrap: BootstrapConfig {
                resamples,
                seed,
                ..Default::default()
            },
        }
    }

    /// One prediction per subject: `n` questions answered at a confidence drawn from `rng`,
    /// correct with probability `accuracy`.
    fn one_each(n: usize, accuracy: f64, rng: &mut ChaCha8Rng) -> Vec<Vec<Prediction>> {
        (0..n)
            .map(|_| {
                vec![Prediction::new(
                    rng.random_range(0.0..1.0),
                    rng.random_bool(accuracy),
                )]
            })
            .collect()
    }

    #[test]
    fn identical_methods_differ_by_exactly_zero() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let a = one_each(200, 0.6, &mut rng);
        let c = paired_comparison(&a, &a, &config(500, 1)).unwrap();
        for d in [c.accuracy, c.ece, c.brier] {
            assert_eq!(
                (
                    d.difference.value,
                    d.difference.ci_low,
                    d.difference.ci_high
                ),
                (0.0, Some(0.0), Some(0.0))
            );
            assert!(!d.distinguishable);
        }
        assert_eq!(c.subjects, 200);
    }

    #[test]
    fn a_known_gap_is_detected_and_no_gap_is_not() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        // Method b is method a with 30 of 300 correct answers turned wrong: accuracy 0.10 lower
        // on exactly the same items, so the paired interval is tight around 0.10.
        let a: Vec<Vec<Prediction>> = (0..300)
            .map(|i| vec![Prediction::new(rng.random_range(0.0..1.0), i % 2 == 0)])
            .collect();
        let mut b = a.clone();
        let mut turned = 0;
        for group in b.iter_mut() {
            if group[0].correct && turned < 30 {
                group[0].correct = false;
                turned += 1;
            }
        }
        let c = paired_comparison(&a, &b, &config(2000, 3)).unwrap();
        assert!((c.accuracy.difference.value - 0.1).abs() < 1e-12);
        assert!(c.accuracy.distinguishable, "{:?}", c.accuracy);
        let (low, high) = (
            c.accuracy.difference.ci_low.unwrap(),
            c.accuracy.difference.ci_high.unwrap(),
        );
        // Each resample keeps ~30 flipped of 300 items: 0.1 ± 1.96·sqrt(0.1·0.9/300) ≈ ±0.034.
        assert!(
            0.05 < low && low < 0.1 && 0.1 < high && high < 0.15,
            "{low} {high}"
        );
        // Two independent draws of the same accuracy: no distinguishable difference.
        let (x, y) = (one_each(300, 0.5, &mut rng), one_each(300, 0.5, &mut rng));
        let c = paired_comparison(&x, &y, &config(2000, 3)).unwrap();
        assert!(!c.accuracy.distinguishable, "{:?}", c.accuracy);
    }

    #[test]
    fn the_same_seed_gives_the_same_intervals() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (a, b) = (one_each(100, 0.7, &mut rng), one_each(100, 0.4, &mut rng));
        let first = paired_comparison(&a, &b, &config(300, 11)).unwrap();
        assert_eq!(first, paired_comparison(&a, &b, &config(300, 11)).unwrap());
        assert_ne!(first, paired_comparison(&a, &b, &config(300, 12)).unwrap());
    }

    #[test]
    fn subjects_move_together_with_all_their_claims() {
        // Entity 0: four supported claims for a, none for b; entity 1: the reverse, one claim
        // each. Pooled accuracies: a 4/5, b 1/5, difference 0.6. A resample drawing only
        // entity 1 gives −1, only entity 0 gives +1; all draw both kinds of entity in
        // between. The interval stays inside [−1, 1] and the point value is pooled.
        let claim = |ok: bool| Prediction::new(0.5, ok);
        let a = vec![vec![claim(true); 4], vec![claim(false)]];
        let b = vec![vec![claim(false); 4], vec![claim(true)]];
        let c = paired_comparison(&a, &b, &config(400, 1)).unwrap();
        assert!((c.accuracy.difference.value - 0.6).abs() < 1e-12);
        let (low, high) = (
            c.accuracy.difference.ci_low.unwrap(),
            c.accuracy.difference.ci_high.unwrap(),
        );
        // With 2 subjects, a quarter of the resamples draw entity 1 twice: −1 is in the tail.
        assert_eq!((low, high), (-1.0, 1.0));
    }

    #[test]
    fn unpaired_inputs_and_empty_ones_are_refused() {
        let one = vec![vec![Prediction::new(0.5, true)]];
        let two = vec![one[0].clone(), one[0].clone()];
        let err = paired_comparison(&one, &two, &config(10, 1)).unwrap_err();
        assert!(err.to_string().contains("pair them by subject"), "{err}");
        assert!(matches!(
            paired_comparison(&[], &[], &config(10, 1)),
            Err(MetricsError::Empty)
        ));
    }
}
