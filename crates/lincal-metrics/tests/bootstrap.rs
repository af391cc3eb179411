//! Bootstrap intervals: reproducible across thread counts, seed-dependent, and doing their job.

use lincal_metrics::{
    BootstrapConfig, MetricsReport, Prediction, ReportConfig, bootstrap_ci, compute_report,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Overconfident predictions: P(correct) = 0.8·confidence, so ECE is clearly above zero.
fn overconfident(n: usize, seed: u64) -> Vec<Prediction> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let c: f64 = rng.random_range(0.3..1.0);
            Prediction::new(c, rng.random::<f64>() < 0.8 * c)
        })
        .collect()
}

fn report_with_threads(
    preds: &[Prediction],
    config: &ReportConfig,
    threads: usize,
) -> MetricsReport {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| compute_report(preds, config).unwrap())
}

fn config(seed: u64, resamples: usize) -> ReportConfig {
    let mut c = ReportConfig::qa();
    c.bootstrap = BootstrapConfig {
        seed,
        resamples,
        ..Default::default()
    };
    c
}

#[test]
fn same_seed_gives_identical_report_on_1_and_4_threads() {
    let preds = overconfident(1_500, 1);
    let one = report_with_threads(&preds, &config(42, 2_000), 1);
    let four = report_with_threads(&preds, &config(42, 2_000), 4);
    // Bit-for-bit: every resample's RNG depends only on the seed and its index.
    assert_eq!(one, four);
    assert!(one.ece.ci_low.is_some());
}

#[test]
fn different_seed_gives_different_intervals() {
    let preds = overconfident(1_500, 1);
    let a = compute_report(&preds, &config(1, 1_000)).unwrap();
    let b = compute_report(&preds, &config(2, 1_000)).unwrap();
    assert_eq!(a.ece.value, b.ece.value);
    for (x, y) in [
        (&a.accuracy, &b.accuracy),
        (&a.ece, &b.ece),
        (&a.brier, &b.brier),
    ] {
        assert_ne!((x.ci_low, x.ci_high), (y.ci_low, y.ci_high));
    }
}

#[test]
fn intervals_contain_the_estimates_on_sane_data() {
    let preds = overconfident(3_000, 5);
    let r = compute_report(&preds, &ReportConfig::qa()).unwrap();
    assert_eq!(r.bootstrap_resamples, 10_000);
    let auroc = r.auroc.value.unwrap();
    for (name, value, low, high) in [
        (
            "accuracy",
            r.accuracy.value,
            r.accuracy.ci_low,
            r.accuracy.ci_high,
        ),
        ("ece", r.ece.value, r.ece.ci_low, r.ece.ci_high),
        (
            "ece_width",
            r.ece_width.value,
            r.ece_width.ci_low,
            r.ece_width.ci_high,
        ),
        ("mce", r.mce.value, r.mce.ci_low, r.mce.ci_high),
        ("brier", r.brier.value, r.brier.ci_low, r.brier.ci_high),
        (
            "log_loss",
            r.log_loss.value,
            r.log_loss.ci_low,
            r.log_loss.ci_high,
        ),
        ("auroc", auroc, r.auroc.ci_low, r.auroc.ci_high),
    ] {
        let (low, high) = (low.unwrap(), high.unwrap());
        assert!(
            low < value && value < high,
            "{name}: {value} not in [{low}, {high}]"
        );
        assert!(
            high - low < 0.2,
            "{name}: [{low}, {high}] is implausibly wide"
        );
    }
}

#[test]
fn accuracy_interval_covers_the_truth_about_95_percent_of_the_time() {
    // 200 experiments of 200 predictions with true accuracy 0.7.
    let bootstrap = BootstrapConfig {
        resamples: 1_000,
        ..Default::default()
    };
    let covered = (0..200u64)
        .filter(|&seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(1_000 + seed);
            let preds: Vec<_> = (0..200)
                .map(|_| Prediction::new(0.5, rng.random::<f64>() < 0.7))
                .collect();
            let config = BootstrapConfig { seed, ..bootstrap };
            let ci = bootstrap_ci(&preds, &config, |r| {
                Some(r.iter().filter(|p| p.correct).count() as f64 / r.len() as f64)
            })
            .unwrap()
            .unwrap();
            ci.low <= 0.7 && 0.7 <= ci.high
        })
        .count();
    // Binomial(200, 0.95) lies in [180, 198] with probability > 0.999.
    assert!((180..=198).contains(&covered), "covered {covered} of 200");
}
