//! Percentile bootstrap confidence intervals, reproducible on every machine and thread count.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::MetricsError;
use crate::prediction::{Prediction, sorted_by_confidence};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BootstrapConfig {
    /// Number of resamples; the reference uses 10,000. 0 turns intervals off.
    pub resamples: usize,
    /// Resample `i` draws from ChaCha8 seeded with `seed` on stream `i`: the same numbers on
    /// every platform, whatever the number of threads.
    pub seed: u64,
    /// Central coverage of the interval, in (0, 1); 0.95 gives the 2.5th and 97.5th percentiles.
    pub level: f64,
}

impl Default for BootstrapConfig {
    /// 10,000 resamples, 95%, seed 1 (the seed of the reference's evaluation scripts).
    fn default() -> Self {
        Self {
            resamples: 10_000,
            seed: 1,
            level: 0.95,
        }
    }
}

impl BootstrapConfig {
    pub(crate) fn check(&self) -> Result<(), MetricsError> {
        if !(self.level > 0.0 && self.level < 1.0) {
            return Err(MetricsError::InvalidConfig {
                field: "level",
                reason: format!(
                    "{} is not in (0, 1); use e.g. 0.95 for a 95% interval",
                    self.level
                ),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// Percentile bootstrap interval of `statistic`, resampling (confidence, correct) pairs with
/// replacement. `statistic` sees each resample sorted by ascending confidence, ties in input
/// order, the same order the point estimates use. Resamples where it returns `None` (say AUROC
/// of a one-class resample) are left out. `None` when no resample gave a value or
/// `resamples` is 0.
pub fn bootstrap_ci(
    preds: &[Prediction],
    config: &BootstrapConfig,
    statistic: impl Fn(&[Prediction]) -> Option<f64> + Sync,
) -> Result<Option<Interval>, MetricsError> {
    config.check()?;
    let sorted = sorted_by_confidence(preds)?;
    let values = resample_statistics(&sorted, config, statistic)
        .into_iter()
        .flatten()
        .collect();
    Ok(percentile_interval(values, config.level))
}

/// `statistic` of every resample of `sorted` (checked, ascending confidence), in resample order.
pub(crate) fn resample_statistics<T: Send>(
    sorted: &[Prediction],
    config: &BootstrapConfig,
    statistic: impl Fn(&[Prediction]) -> T + Sync,
) -> Vec<T> {
    let n = sorted.len();
    (0..config.resamples)
        .into_par_iter()
        .map_init(
            || (vec![0u32; n], Vec::with_capacity(n)),
            |(counts, resample), i| {
                draw_counts(config, i, counts);
                // Counting how often each item was drawn and writing them out in the sorted
                // order gives a sorted resample in O(N), with no sort per resample.
                resample.clear();
                for (p, &c) in sorted.iter().zip(counts.iter()) {
                    resample.extend(std::iter::repeat_n(*p, c as usize));
                }
                statistic(resample)
            },
        )
        .collect()
}

/// Draws resample `i`: `counts[k]` becomes how often item k of `counts.len()` was drawn, N draws
/// with replacement from ChaCha8 seeded with `config.seed` on stream `i`.
pub(crate) fn draw_counts(config: &BootstrapConfig, i: usize, counts: &mut [u32]) {
    let n = counts.len();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(i as u64);
    counts.fill(0);
    for _ in 0..n {
        // u64, not usize, so 32- and 64-bit targets draw the same numbers.
        counts[rng.random_range(0..n as u64) as usize] += 1;
    }
}

/// The (1 − level)/2 and (1 + level)/2 quantiles, interpolated linearly between order
/// statistics (numpy's default, which the reference's `np.percentile` uses).
pub(crate) fn percentile_interval(mut values: Vec<f64>, level: f64) -> Option<Interval> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let pos = q * (values.len() - 1) as f64;
        let (below, frac) = (pos.floor() as usize, pos.fract());
        let above = (below + 1).min(values.len() - 1);
        values[below] + frac * (values[above] - values[below])
    };
    let tail = (1.0 - level) / 2.0;
    Some(Interval {
        low: quantile(tail),
        high: quantile(1.0 - tail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scores::accuracy_of;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // np.percentile([1..=5], [2.5, 97.5]) = [1.1, 4.9]: positions 0.1 and 3.9.
        let i = percentile_interval(vec![5.0, 3.0, 1.0, 2.0, 4.0], 0.95).unwrap();
        assert!(
            (i.low - 1.1).abs() < 1e-12 && (i.high - 4.9).abs() < 1e-12,
            "{i:?}"
        );
        // np.percentile([0, 10], [25, 75]) = [2.5, 7.5].
        let i = percentile_interval(vec![10.0, 0.0], 0.5).unwrap();
        assert_eq!((i.low, i.high), (2.5, 7.5));
        assert_eq!(percentile_interval(vec![], 0.95), None);
    }

    #[test]
    fn resamples_are_sorted_and_drawn_with_replacement() {
        let preds: Vec<_> = (0..50)
            .map(|i| Prediction::new((i * 37 % 50) as f64 / 50.0, i % 3 == 0))
            .collect();
        let sorted = sorted_by_confidence(&preds).unwrap();
        let config = BootstrapConfig {
            resamples: 20,
            ..Default::default()
        };
        let resamples = resample_statistics(&sorted, &config, |r| r.to_vec());
        for r in &resamples {
            assert_eq!(r.len(), 50);
            assert!(r.windows(2).all(|w| w[0].confidence <= w[1].confidence));
        }
        // With replacement: some item repeats (P(no repeat in 50 draws of 50) ≈ 3e-21).
        assert!(resamples.iter().all(|r| r.windows(2).any(|w| w[0] == w[1])));
        assert_ne!(resamples[0], resamples[1]);
    }

    #[test]
    fn interval_brackets_the_estimate_and_shrinks_with_n() {
        let width = |n: usize| {
            let preds: Vec<_> = (0..n).map(|i| Prediction::new(0.5, i % 10 < 7)).collect();
            let ci = bootstrap_ci(
                &preds,
                &BootstrapConfig {
                    resamples: 2000,
                    ..Default::default()
                },
                |r| Some(accuracy_of(r)),
            )
            .unwrap()
            .unwrap();
            assert!(ci.low < 0.7 && 0.7 < ci.high, "{ci:?}");
            ci.high - ci.low
        };
        // Binomial: width ≈ 2·1.96·sqrt(0.21/n); n = 100 → 0.18, n = 10,000 → 0.018.
        let (small, large) = (width(100), width(10_000));
        assert!((0.13..0.23).contains(&small), "{small}");
        assert!((0.013..0.023).contains(&large), "{large}");
    }

    #[test]
    fn zero_resamples_and_bad_level() {
        let preds = [Prediction::new(0.5, true)];
        let off = BootstrapConfig {
            resamples: 0,
            ..Default::default()
        };
        assert_eq!(
            bootstrap_ci(&preds, &off, |r| Some(accuracy_of(r))).unwrap(),
            None
        );
        let bad = BootstrapConfig {
            level: 95.0,
            ..Default::default()
        };
        let err = bootstrap_ci(&preds, &bad, |r| Some(accuracy_of(r))).unwrap_err();
        assert!(err.to_string().contains("`level`"), "{err}");
    }
}
