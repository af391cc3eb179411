//! The library against deliberately naive implementations written straight from the
//! definitions (SPEC 5.2), on random data for many seeds, plus properties the metrics must have.

use lincal_metrics::{
    Binning, Prediction, ReportConfig, accuracy, auroc, brier, compute_report, coverage_curve, ece,
    log_loss, mce,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Confidences are either continuous (no ties) or from a few verbal levels (many ties, as with
/// "likely" = 0.75); correctness is miscalibrated on purpose (P(correct) = c², a bit of noise).
fn random_predictions(rng: &mut ChaCha8Rng, n: usize, levels: bool) -> Vec<Prediction> {
    const LEVELS: [f64; 8] = [0.0, 0.05, 0.1, 0.3, 0.5, 0.75, 0.95, 1.0];
    (0..n)
        .map(|_| {
            let c = if levels {
                LEVELS[rng.random_range(0..LEVELS.len())]
            } else {
                rng.random::<f64>()
            };
            Prediction::new(c, rng.random::<f64>() < (c * c + 0.1).min(1.0))
        })
        .collect()
}

/// Indices of `preds` in ascending confidence, ties in input order, by insertion sort.
fn naive_order(preds: &[Prediction]) -> Vec<usize> {
    let mut order: Vec<usize> = Vec::new();
    for i in 0..preds.len() {
        let at = order
            .iter()
            .position(|&j| preds[j].confidence > preds[i].confidence)
            .unwrap_or(order.len());
        order.insert(at, i);
    }
    order
}

/// Per bin: (Σ correct, Σ confidence, count). ECE = Σ_b |Σ correct − Σ conf| / N_used.
fn naive_ece_and_mce(bins: &[(f64, f64, usize)]) -> (f64, f64) {
    let used: usize = bins.iter().map(|b| b.2).sum();
    let ece = bins.iter().map(|&(y, c, _)| (y - c).abs()).sum::<f64>() / used as f64;
    let mce = bins
        .iter()
        .map(|&(y, c, k)| (y - c).abs() / k as f64)
        .fold(0.0, f64::max);
    (ece, mce)
}

fn sums(preds: &[Prediction], members: impl Iterator<Item = usize>) -> (f64, f64, usize) {
    members.fold((0.0, 0.0, 0), |(y, c, k), i| {
        (
            y + if preds[i].correct { 1.0 } else { 0.0 },
            c + preds[i].confidence,
            k + 1,
        )
    })
}

fn naive_equal_mass(preds: &[Prediction], bins: usize, keep_all: bool) -> (f64, f64) {
    let order = naive_order(preds);
    let n = preds.len();
    let k = bins.min(n);
    let all_same = preds.iter().all(|p| p.confidence == preds[0].confidence);
    let mut groups = Vec::new();
    if keep_all || all_same {
        // numpy.array_split: bin b starts at b·floor(n/k) + min(b, n mod k).
        let start = |b: usize| b * (n / k) + b.min(n % k);
        for b in 0..k {
            groups.push(sums(preds, order[start(b)..start(b + 1)].iter().copied()));
        }
    } else {
        let size = n / k;
        for b in 0..k {
            groups.push(sums(preds, order[b * size..(b + 1) * size].iter().copied()));
        }
    }
    naive_ece_and_mce(&groups)
}

fn naive_equal_width(preds: &[Prediction], bins: usize) -> (f64, f64) {
    let groups: Vec<_> = (0..bins)
        .map(|b| {
            let (lo, hi) = (b as f64 / bins as f64, (b + 1) as f64 / bins as f64);
            let last = b == bins - 1;
            sums(
                preds,
                (0..preds.len()).filter(|&i| {
                    let c = preds[i].confidence;
                    lo <= c && (c < hi || (last && c <= 1.0))
                }),
            )
        })
        .filter(|g| g.2 > 0)
        .collect();
    naive_ece_and_mce(&groups)
}

fn naive_brier(preds: &[Prediction]) -> f64 {
    preds
        .iter()
        .map(|p| {
            if p.correct {
                (1.0 - p.confidence).powi(2)
            } else {
                p.confidence.powi(2)
            }
        })
        .sum::<f64>()
        / preds.len() as f64
}

fn naive_log_loss(preds: &[Prediction]) -> f64 {
    let total: f64 = preds
        .iter()
        .map(|p| {
            let given_to_outcome = if p.correct {
                p.confidence
            } else {
                1.0 - p.confidence
            };
            -given_to_outcome.clamp(1e-12, 1.0 - 1e-12).ln()
        })
        .sum();
    total / preds.len() as f64
}

/// O(n²) over all (correct, wrong) pairs.
fn naive_auroc(preds: &[Prediction]) -> Option<f64> {
    let (mut won, mut pairs) = (0.0, 0.0);
    for a in preds.iter().filter(|p| p.correct) {
        for b in preds.iter().filter(|p| !p.correct) {
            pairs += 1.0;
            won += if a.confidence > b.confidence {
                1.0
            } else if a.confidence == b.confidence {
                0.5
            } else {
                0.0
            };
        }
    }
    (pairs > 0.0).then(|| won / pairs)
}

/// Distinct confidences only: sort descending, mean over k of accuracy of the top k.
fn naive_coverage_area(preds: &[Prediction]) -> f64 {
    let mut order = naive_order(preds);
    order.reverse();
    let mut correct = 0.0;
    let mut area = 0.0;
    for (k, &i) in order.iter().enumerate() {
        correct += if preds[i].correct { 1.0 } else { 0.0 };
        area += correct / (k + 1) as f64;
    }
    area / preds.len() as f64
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn library_matches_naive_implementations_on_random_data() {
    for seed in 0..300u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = rng.random_range(1..250);
        let levels = seed % 2 == 0;
        let preds = random_predictions(&mut rng, n, levels);
        let bins = [1, 2, 3, 7, 20, 40][seed as usize % 6];
        let ctx = format!("seed {seed}, n {n}, bins {bins}, levels {levels}");

        for (binning, (ece_naive, mce_naive)) in [
            (Binning::EqualMass, naive_equal_mass(&preds, bins, false)),
            (
                Binning::EqualMassKeepAll,
                naive_equal_mass(&preds, bins, true),
            ),
            (Binning::EqualWidth, naive_equal_width(&preds, bins)),
        ] {
            let got = ece(&preds, bins, binning).unwrap();
            assert!(
                close(got, ece_naive),
                "ECE {binning:?}: {got} vs {ece_naive}; {ctx}"
            );
            let got = mce(&preds, bins, binning).unwrap();
            assert!(
                close(got, mce_naive),
                "MCE {binning:?}: {got} vs {mce_naive}; {ctx}"
            );
        }
        assert!(
            close(brier(&preds).unwrap(), naive_brier(&preds)),
            "Brier; {ctx}"
        );
        assert!(
            close(log_loss(&preds).unwrap(), naive_log_loss(&preds)),
            "log loss; {ctx}"
        );
        match (auroc(&preds).unwrap(), naive_auroc(&preds)) {
            (Some(a), Some(b)) => assert!(close(a, b), "AUROC {a} vs {b}; {ctx}"),
            (a, b) => assert_eq!(a, b, "AUROC; {ctx}"),
        }
        if !levels {
            let got = coverage_curve(&preds).unwrap().area;
            assert!(
                close(got, naive_coverage_area(&preds)),
                "coverage area; {ctx}"
            );
        }
    }
}

#[test]
fn report_agrees_with_the_single_metric_functions() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let preds = random_predictions(&mut rng, 333, true);
    let mut config = ReportConfig::claims();
    config.bootstrap.resamples = 0;
    let r = compute_report(&preds, &config).unwrap();
    assert_eq!(r.accuracy.value, accuracy(&preds).unwrap());
    assert_eq!(r.ece.value, ece(&preds, 40, Binning::EqualMass).unwrap());
    assert_eq!(
        r.ece_width.value,
        ece(&preds, 40, Binning::EqualWidth).unwrap()
    );
    assert_eq!(r.mce.value, mce(&preds, 40, Binning::EqualMass).unwrap());
    assert_eq!(r.auroc.value, auroc(&preds).unwrap());
    // The report sums in confidence order, the single functions in input order: the last bits
    // of a floating-point sum may differ.
    assert!(close(r.brier.value, brier(&preds).unwrap()));
    assert!(close(r.log_loss.value, log_loss(&preds).unwrap()));
    // 333 = 40·8 + 13: the 13 highest-confidence predictions are dropped.
    assert_eq!((r.n, r.n_used_for_ece), (333, 320));
}

#[test]
fn without_confidence_ece_is_one_minus_accuracy() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for n in [1, 19, 20, 21, 57, 400, 1001] {
        let preds: Vec<_> = (0..n)
            .map(|_| Prediction::without_confidence(rng.random::<f64>() < 0.6))
            .collect();
        let acc = accuracy(&preds).unwrap();
        for binning in [
            Binning::EqualMass,
            Binning::EqualMassKeepAll,
            Binning::EqualWidth,
        ] {
            let got = ece(&preds, 20, binning).unwrap();
            assert!(
                (got - (1.0 - acc)).abs() < 1e-12,
                "n {n}, {binning:?}: {got} vs {}",
                1.0 - acc
            );
        }
        // The reference's non-confidence path maps the accuracy CI: [1 − high, 1 − low].
        let mut config = ReportConfig::qa();
        config.bootstrap.resamples = 500;
        let r = compute_report(&preds, &config).unwrap();
        assert_eq!(r.n_used_for_ece, n);
        assert!((r.ece.ci_low.unwrap() - (1.0 - r.accuracy.ci_high.unwrap())).abs() < 1e-12);
        assert!((r.ece.ci_high.unwrap() - (1.0 - r.accuracy.ci_low.unwrap())).abs() < 1e-12);
    }
}

#[test]
fn empty_extraction_counts_as_confident_mistake() {
    // Two answered (0.8✓, 0.6✗) and one paragraph with nothing extracted.
    let preds = [
        Prediction::new(0.8, true),
        Prediction::new(0.6, false),
        Prediction::empty_extraction(),
    ];
    // Accuracy 1/3; keep-all with 1 bin: |1/3 − (0.8 + 0.6 + 1)/3| = |1 − 2.4|/3 = 1.4/3.
    assert!((accuracy(&preds).unwrap() - 1.0 / 3.0).abs() < 1e-12);
    assert!((ece(&preds, 1, Binning::EqualMassKeepAll).unwrap() - 1.4 / 3.0).abs() < 1e-12);
}

#[test]
fn calibrated_data_has_ece_near_zero_as_n_grows() {
    // correct ~ Bernoulli(confidence): bin gaps are sampling noise of size ~sqrt(bins/N).
    let ece_at = |n: usize, binning| {
        let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
        let preds: Vec<_> = (0..n)
            .map(|_| {
                let c: f64 = rng.random();
                Prediction::new(c, rng.random::<f64>() < c)
            })
            .collect();
        ece(&preds, 20, binning).unwrap()
    };
    for binning in [Binning::EqualMass, Binning::EqualWidth] {
        let (small, mid, large) = (
            ece_at(1_000, binning),
            ece_at(20_000, binning),
            ece_at(1_000_000, binning),
        );
        assert!(
            small > large && mid > large,
            "{binning:?}: {small} {mid} {large}"
        );
        assert!(mid < 0.03 && large < 0.004, "{binning:?}: {mid} {large}");
    }
    // Miscalibrated data stays away from zero however large N is: with P(correct) =
    // min(c² + 0.1, 1) the true ECE is ∫|c − min(c² + 0.1, 1)| dc ≈ 0.0857.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let preds = random_predictions(&mut rng, 200_000, false);
    let miscalibrated = ece(&preds, 20, Binning::EqualMass).unwrap();
    assert!((0.08..0.09).contains(&miscalibrated), "{miscalibrated}");
}
