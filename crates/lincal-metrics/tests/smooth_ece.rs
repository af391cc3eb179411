//! Smooth ECE against relplot 1.0.3's own numbers (testdata/smece_golden.json, made by
//! testdata/make_smece_golden.py) and against a direct O(N·mesh) kernel smoother written here
//! from the definition.

use std::f64::consts::PI;
use std::path::Path;

use lincal_metrics::{
    Prediction, ReportConfig, compute_report, smooth_ece, smooth_ece_at, smooth_reliability_curve,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<GoldenCase>,
}

#[derive(Deserialize)]
struct GoldenCase {
    name: String,
    confidence: Vec<f64>,
    correct: Vec<u8>,
    smece: f64,
    bandwidth: f64,
    fixed: Vec<FixedBandwidth>,
    curve_mu: Vec<f64>,
    curve_density: Vec<f64>,
}

#[derive(Deserialize)]
struct FixedBandwidth {
    bandwidth: f64,
    smece: f64,
}

fn golden() -> Golden {
    // Read at run time: a binary reused from another checkout's build names that one.
    let path =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("testdata/smece_golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn predictions(case: &GoldenCase) -> Vec<Prediction> {
    case.confidence
        .iter()
        .zip(&case.correct)
        .map(|(&c, &y)| Prediction::new(c, y == 1))
        .collect()
}

/// Same arithmetic as relplot, summed in another order (grid cells filled in ascending
/// confidence, not input order; convolution and interpolation merged into one matrix). The
/// measured differences in smECE are at most 9e-16, so 1e-12 leaves room for other platforms'
/// libm while any change to the algorithm (a grid point more or less) moves values by ~1e-6.
const GOLDEN_TOLERANCE: f64 = 1e-12;

#[test]
fn matches_relplot_smece_and_bandwidth() {
    let golden = golden();
    assert!(golden.cases.len() >= 8);
    for case in &golden.cases {
        let preds = predictions(case);
        let s = smooth_ece(&preds).unwrap();
        // The bandwidth is a multiple of 1/1024 and must be the same one.
        assert_eq!(s.bandwidth, case.bandwidth, "{}", case.name);
        assert!(
            (s.value - case.smece).abs() < GOLDEN_TOLERANCE,
            "{}: {} vs relplot {}",
            case.name,
            s.value,
            case.smece
        );
        for fixed in &case.fixed {
            let value = smooth_ece_at(&preds, fixed.bandwidth).unwrap();
            assert!(
                (value - fixed.smece).abs() < GOLDEN_TOLERANCE,
                "{} at σ = {}: {value} vs relplot {}",
                case.name,
                fixed.bandwidth,
                fixed.smece
            );
        }
    }
}

/// μ differs by at most 1.5e-14 (where the density is nearly all relplot's 1e-4 and μ is a
/// ratio of tiny numbers) and the density by a relative 2e-12; asserted: 1e-12 and 1e-10.
#[test]
fn matches_relplot_smoothed_curve() {
    for case in &golden().cases {
        let curve = smooth_reliability_curve(&predictions(case), case.bandwidth).unwrap();
        assert_eq!(curve.mu.len(), 200);
        let mean = case.curve_density.iter().sum::<f64>() / case.curve_density.len() as f64;
        for i in 0..200 {
            assert!(
                (curve.mu[i] - case.curve_mu[i]).abs() < 1e-12,
                "{} μ at {}: {} vs relplot {}",
                case.name,
                curve.confidence[i],
                curve.mu[i],
                case.curve_mu[i]
            );
            let density = case.curve_density[i] / mean;
            assert!(
                (curve.density[i] - density).abs() < 1e-10 * density,
                "{} density at {}",
                case.name,
                curve.confidence[i]
            );
        }
    }
}

/// The kernel smoother from the definition, summed directly at each of `mesh_points` evenly
/// spaced t: the Gaussian of σ centred at each confidence f and at its mirror images −f and
/// 2 − f, cut off beyond ±0.5 as relplot's kernel window is. Returns the smoothed residual
/// R(t) and count D(t) (without relplot's 1e-4), both scaled as relplot's grid kernel, which
/// sums to about (grid points − 1) rather than integrating to 1.
fn direct_smoothing(
    preds: &[Prediction],
    bandwidth: f64,
    mesh_points: usize,
) -> (Vec<f64>, Vec<f64>) {
    let grid_steps = ((20.0 / bandwidth).round().max(2000.0) as usize / 2) as f64;
    let gaussian = |d: f64| {
        if d.abs() <= 0.5 {
            (-d * d / (2.0 * bandwidth * bandwidth)).exp() / ((2.0 * PI).sqrt() * bandwidth)
        } else {
            0.0
        }
    };
    (0..mesh_points)
        .map(|i| {
            let t = i as f64 / (mesh_points - 1) as f64;
            let (mut residual, mut count) = (0.0, 0.0);
            for p in preds {
                let f = p.confidence;
                let weight = gaussian(t - f) + gaussian(t + f) + gaussian(t - 2.0 + f);
                residual += weight * (f - if p.correct { 1.0 } else { 0.0 });
                count += weight;
            }
            (grid_steps * residual, grid_steps * count)
        })
        .unzip()
}

fn direct_smece(preds: &[Prediction], bandwidth: f64) -> f64 {
    let mesh_points = ((10.0 / bandwidth).round() as usize).max(200);
    let (residual, count) = direct_smoothing(preds, bandwidth, mesh_points);
    let numerator: f64 = residual.iter().map(|r| r.abs()).sum();
    numerator / count.iter().map(|c| c + 1e-4).sum::<f64>()
}

/// Confidences in [0.002, 0.998]: within one grid cell (1/1000) of 0 or 1, relplot's mirror,
/// which does not repeat the end grid points, counts a point up to half as much as the
/// continuous mirror does; the golden cases cover confidences at the ends.
fn random_predictions(seed: u64, n: usize) -> Vec<Prediction> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let c = 0.002 + 0.996 * rng.random::<f64>().sqrt();
            Prediction::new(c, rng.random::<f64>() < 0.8 * c)
        })
        .collect()
}

/// relplot's grid cell at bandwidth σ: 1/(max(2000, round(20/σ)) // 2).
fn grid_cell(bandwidth: f64) -> f64 {
    1.0 / ((20.0 / bandwidth).round().max(2000.0) as usize / 2) as f64
}

/// Bandwidths whose grids have an odd number of points. With an even number (σ = 0.003, say)
/// relplot centres the kernel half a cell off its point, a first-order shift that moves the
/// curve of a sparse sample by several percent of its height at σ = 0.003; the golden test
/// covers that case against relplot itself (σ = 0.009).
const BANDWIDTHS: [f64; 6] = [0.004, 0.01, 0.03, 0.05, 0.1, 0.3];

/// The grid (1/1000 apart, finer for σ < 0.01) with the linear splitting and interpolation on
/// it is all the library adds to the definition: an error of order (cell/σ)², plus, for wide
/// σ, the kernel's cut at ±0.5 which the grid resolves to a cell. Measured over these seeds,
/// sizes and bandwidths: relative differences up to 7.5e-4 (at σ = 0.004 and 0.01, where
/// cell/σ = 0.1); asserted below 2e-3.
#[test]
fn smece_agrees_with_the_direct_kernel_smoother() {
    let mut worst: f64 = 0.0;
    for seed in 0..4 {
        for n in [30, 300] {
            let preds = random_predictions(seed, n);
            for bandwidth in BANDWIDTHS {
                let library = smooth_ece_at(&preds, bandwidth).unwrap();
                let direct = direct_smece(&preds, bandwidth);
                let relative = (library - direct).abs() / direct;
                worst = worst.max(relative);
                assert!(
                    relative < 2e-3,
                    "seed {seed}, n {n}, σ {bandwidth}: {library} vs direct {direct}"
                );
            }
        }
    }
    eprintln!("largest relative difference in smECE from the direct smoother: {worst:e}");
}

/// The curve point by point, where shifting a kernel or a mirror by a grid cell would show
/// (the sum in smECE hardly moves), at the bandwidths where the kernel's cut at ±0.5 is
/// negligible. Compared where the density is at least a tenth of its mean (elsewhere μ is
/// the ratio of two tiny numbers). With q = (cell/σ)² (0.01 at σ = 0.01, 1e-4 at σ = 0.1),
/// measured: μ within 0.12·q and the density within a relative 0.75·q; asserted: 0.3·q and
/// 1.5·q.
#[test]
fn curve_agrees_with_the_direct_kernel_smoother() {
    let (mut worst_mu, mut worst_density): (f64, f64) = (0.0, 0.0);
    for seed in 0..4 {
        let preds = random_predictions(seed, 300);
        for bandwidth in [0.004, 0.01, 0.03, 0.05, 0.1] {
            let q = (grid_cell(bandwidth) / bandwidth).powi(2);
            let curve = smooth_reliability_curve(&preds, bandwidth).unwrap();
            let (residual, count) = direct_smoothing(&preds, bandwidth, 200);
            let mean = count.iter().map(|c| c + 1e-4).sum::<f64>() / 200.0;
            for i in 0..200 {
                let density = (count[i] + 1e-4) / mean;
                if density < 0.1 {
                    continue;
                }
                let mu = curve.confidence[i] - residual[i] / (count[i] + 1e-4);
                let (mu_error, density_error) = (
                    (curve.mu[i] - mu).abs(),
                    (curve.density[i] - density).abs() / density,
                );
                worst_mu = worst_mu.max(mu_error / q);
                worst_density = worst_density.max(density_error / q);
                let at = format!("seed {seed}, σ {bandwidth}, t {}", curve.confidence[i]);
                assert!(mu_error < 0.3 * q, "{at}: μ {} vs direct {mu}", curve.mu[i]);
                assert!(
                    density_error < 1.5 * q,
                    "{at}: density {} vs direct {density}",
                    curve.density[i]
                );
            }
        }
    }
    eprintln!(
        "largest differences from the direct smoother: μ {worst_mu:.3}·q, density {worst_density:.3}·q"
    );
}

#[test]
fn report_interval_contains_the_estimate_and_is_null_without_resamples() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let preds: Vec<_> = (0..800)
        .map(|_| {
            let c: f64 = rng.random_range(0.2..1.0);
            Prediction::new(c, rng.random::<f64>() < 0.85 * c)
        })
        .collect();
    let mut config = ReportConfig::qa();
    config.bootstrap.resamples = 1_000;
    let report = compute_report(&preds, &config).unwrap();
    let direct = smooth_ece(&preds).unwrap();
    let smece = report.smece.unwrap();
    assert_eq!(
        (smece.value, report.smece_bandwidth),
        (direct.value, Some(direct.bandwidth))
    );
    let (low, high) = (smece.ci_low.unwrap(), smece.ci_high.unwrap());
    assert!(
        low < smece.value && smece.value < high,
        "{low} {} {high}",
        smece.value
    );
    // Overconfident by 15% of the confidence: well away from zero.
    assert!(low > 0.03, "{low}");
    let curve = &report.smooth_curve;
    assert_eq!(Some(curve.bandwidth), report.smece_bandwidth);
    assert_eq!((curve.band_low.len(), curve.band_high.len()), (200, 200));
    // The band holds the curve where there are predictions to hold it.
    let inside = (0..200)
        .filter(|&i| curve.band_low[i] <= curve.mu[i] && curve.mu[i] <= curve.band_high[i])
        .count();
    assert!(inside >= 190, "{inside} of 200 mesh points inside the band");

    config.bootstrap.resamples = 0;
    let report = compute_report(&preds, &config).unwrap();
    let smece = report.smece.unwrap();
    assert_eq!((smece.ci_low, smece.ci_high), (None, None));
    assert_eq!(smece.value, direct.value);
    assert!(report.smooth_curve.band_low.is_empty() && report.smooth_curve.band_high.is_empty());
    assert_eq!(report.smooth_curve.mu.len(), 200);
}

/// At bandwidths ≥ 0.05 smECE uses the curve's 200-point mesh, so it is the mean over the
/// mesh of |t − μ(t)|·density(t), as the curve's documentation says.
#[test]
fn curve_integrates_to_smece() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let preds: Vec<_> = (0..200)
        .map(|_| {
            let c: f64 = rng.random();
            Prediction::new(c, rng.random::<f64>() < c * c)
        })
        .collect();
    for bandwidth in [0.05, 0.1, 0.4] {
        let curve = smooth_reliability_curve(&preds, bandwidth).unwrap();
        let mean = (0..200)
            .map(|i| (curve.confidence[i] - curve.mu[i]).abs() * curve.density[i])
            .sum::<f64>()
            / 200.0;
        let smece = smooth_ece_at(&preds, bandwidth).unwrap();
        assert!((mean - smece).abs() < 1e-12, "{mean} vs {smece}");
    }
}
