//! Plots: both formats are written, PNGs decode at the right size and contain drawn text.

use std::fs::File;
use std::path::Path;

use lincal_metrics::{
    Binning, CoverageCurve, Curve, Estimate, FrontierPoint, Prediction, ReportConfig, SmoothCurve,
    compute_report, write_frontier_plot, write_line_plot, write_reliability_diagram,
    write_risk_coverage_plot,
};

/// Decodes an RGB PNG: (width, height, pixels).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::BufReader::new(File::open(path).unwrap()))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    (info.width, info.height, pixels)
}

/// Dark pixels in rows [from, to): text and lines are drawn in black or dark colours.
fn dark_pixels(width: u32, pixels: &[u8], rows: std::ops::Range<u32>) -> usize {
    let row_bytes = width as usize * 3;
    pixels[rows.start as usize * row_bytes..rows.end as usize * row_bytes]
        .chunks(3)
        .filter(|px| px.iter().all(|&v| v < 100))
        .count()
}

fn estimate(value: f64, half_width: f64) -> Estimate {
    Estimate {
        value,
        ci_low: Some(value - half_width),
        ci_high: Some(value + half_width),
    }
}

#[test]
fn reliability_diagrams_are_written_for_both_binnings() {
    let preds: Vec<_> = (0..500)
        .map(|i| {
            // Verbal levels with ties, and a block of 1.0 so several equal-mass bins merge.
            let c = [0.3, 0.5, 0.75, 0.95, 1.0, 1.0][i % 6];
            Prediction::new(c, (i * 7919) % 100 < (c * 80.0) as usize)
        })
        .collect();
    let mut config = ReportConfig::qa();
    config.bootstrap.resamples = 100;
    let report = compute_report(&preds, &config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, bins, binning) in [
        ("mass", &report.reliability_bins, Binning::EqualMass),
        ("width", &report.reliability_bins_width, Binning::EqualWidth),
    ] {
        let title = format!("LC RL, TriviaQA ({binning:?}, ECE {:.3})", report.ece.value);
        let files =
            write_reliability_diagram(bins, None, &title, dir.path().join(format!("rel.{name}")))
                .unwrap();
        // The suffix is appended, so a dot in the stem survives.
        assert_eq!(files.png, dir.path().join(format!("rel.{name}.png")));
        let (w, h, pixels) = decode_png(&files.png);
        assert_eq!((w, h), (900, 1000));
        assert!(
            dark_pixels(w, &pixels, 0..45) > 200,
            "title text missing in {}",
            files.png.display()
        );
        let svg = std::fs::read_to_string(&files.svg).unwrap();
        assert!(
            svg.starts_with("<svg")
                && svg.contains("Accuracy in bin")
                && svg.contains("LC RL, TriviaQA")
        );
        assert!(svg.contains("Perfect calibration"));
    }
    // No temporary files are left next to the plots.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);

    // With the smoothed curve and its band: drawn in the plot's orange, and named in the
    // legend; an empty curve (an old report) draws the bins alone.
    let with_curve = write_reliability_diagram(
        &report.reliability_bins,
        Some(&report.smooth_curve),
        "with curve",
        dir.path().join("smooth"),
    )
    .unwrap();
    let svg = std::fs::read_to_string(&with_curve.svg).unwrap();
    assert!(svg.contains("Smoothed (smECE kernel σ =") && svg.contains("Bootstrap band"));
    let (w, _, pixels) = decode_png(&with_curve.png);
    let orange = pixels
        .chunks(3)
        .filter(|px| px[0] > 240 && (110..150).contains(&px[1]) && px[2] < 40)
        .count();
    assert!(orange > 500, "{orange} orange pixels in a {w}-wide plot");
    let without = write_reliability_diagram(
        &report.reliability_bins,
        Some(&SmoothCurve::default()),
        "old report",
        dir.path().join("old"),
    )
    .unwrap();
    assert!(
        !std::fs::read_to_string(&without.svg)
            .unwrap()
            .contains("Smoothed")
    );
}

#[test]
fn risk_coverage_plot_writes_both_files() {
    let report = |good: bool| {
        let preds: Vec<_> = (0..300)
            .map(|i| {
                let c = (i % 10) as f64 / 10.0 + 0.05;
                // A good ranking: high confidence more often right.
                let correct = if good {
                    (i * 7919) % 100 < (c * 100.0) as usize
                } else {
                    i % 2 == 0
                };
                Prediction::new(c, correct)
            })
            .collect();
        let mut config = ReportConfig::qa();
        config.bootstrap.resamples = 0;
        compute_report(&preds, &config).unwrap()
    };
    let (good, flat) = (report(true), report(false));
    let dir = tempfile::tempdir().unwrap();
    let files = write_risk_coverage_plot(
        &[
            ("LC RL", &good.coverage),
            ("Factuality SFT", &flat.coverage),
        ],
        "TriviaQA: selective prediction",
        dir.path().join("risk-coverage"),
    )
    .unwrap();
    assert_eq!(files.png, dir.path().join("risk-coverage.png"));
    let (w, h, pixels) = decode_png(&files.png);
    assert_eq!((w, h), (1000, 700));
    assert!(dark_pixels(w, &pixels, 0..45) > 200, "title text missing");
    let svg = std::fs::read_to_string(&files.svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Coverage") && svg.contains("Risk"));
    assert!(
        svg.contains(&format!("LC RL (AURC {:.3})", good.aurc.unwrap().value)),
        "{svg}"
    );
    assert!(svg.contains("Factuality SFT (AURC"));
    assert!(good.aurc.unwrap().value < flat.aurc.unwrap().value);

    let err = write_risk_coverage_plot(&[], "t", dir.path().join("x")).unwrap_err();
    assert!(err.to_string().contains("at least one method"), "{err}");
    let empty = CoverageCurve {
        points: Vec::new(),
        area: 0.0,
    };
    let err =
        write_risk_coverage_plot(&[("LC RL", &empty)], "t", dir.path().join("x")).unwrap_err();
    assert!(err.to_string().contains("`LC RL`"), "{err}");
}

#[test]
fn frontier_plot_is_written_with_labels() {
    // TriviaQA headline numbers of SPEC 5.5 with CIs of about ±0.009.
    let methods = [
        ("LC RL", 0.647, 0.108),
        ("LC SFT", 0.610, 0.166),
        ("Factuality RL", 0.633, 0.367),
        ("Factuality SFT", 0.612, 0.388),
        ("ICL 8-Shot", 0.619, 0.381),
        ("Summary ICL 8-Shot", 0.614, 0.257),
        ("Llama 2 Chat 7B", 0.523, 0.477),
    ];
    let points: Vec<_> = methods
        .iter()
        .map(|&(label, acc, ece)| FrontierPoint {
            label: label.to_string(),
            accuracy: estimate(acc, 0.009),
            ece: estimate(ece, 0.008),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let files = write_frontier_plot(
        &points,
        "TriviaQA: accuracy vs ECE",
        dir.path().join("frontier"),
    )
    .unwrap();
    let (w, h, pixels) = decode_png(&files.png);
    assert_eq!((w, h), (1100, 800));
    assert!(dark_pixels(w, &pixels, 0..45) > 200, "title text missing");
    let svg = std::fs::read_to_string(&files.svg).unwrap();
    for (label, _, _) in methods {
        // Each label appears twice: next to its point and in the legend.
        assert_eq!(
            svg.lines().filter(|line| line.trim() == label).count(),
            2,
            "{label}"
        );
    }
}

#[test]
fn line_plot_is_written_with_a_legend() {
    let curves = [
        Curve {
            label: "LC SFT".into(),
            points: (1..=40)
                .map(|s| (s as f64, 2.5 / (s as f64).sqrt()))
                .collect(),
        },
        // One point: drawn as a marker.
        Curve {
            label: "Factuality SFT".into(),
            points: vec![(10.0, 1.2)],
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let files = write_line_plot(
        &curves,
        "SFT training loss",
        "Optimizer step",
        "Loss",
        dir.path().join("training-sft-loss"),
    )
    .unwrap();
    assert_eq!(files.png, dir.path().join("training-sft-loss.png"));
    let bytes = std::fs::read(&files.png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h, pixels) = decode_png(&files.png);
    assert_eq!((w, h), (1000, 650));
    assert!(dark_pixels(w, &pixels, 0..45) > 200, "title text missing");
    let svg = std::fs::read_to_string(&files.svg).unwrap();
    assert!(svg.contains("Optimizer step") && svg.contains("SFT training loss"));
    for curve in &curves {
        // Each label appears once, in the legend.
        assert_eq!(
            svg.lines()
                .filter(|line| line.trim() == curve.label)
                .count(),
            1,
            "{}",
            curve.label
        );
    }
}

#[test]
fn bad_plot_inputs_are_errors_naming_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let err = write_reliability_diagram(&[], None, "t", dir.path().join("x")).unwrap_err();
    assert!(err.to_string().contains("at least one bin"), "{err}");
    let err = write_frontier_plot(&[], "t", dir.path().join("x")).unwrap_err();
    assert!(err.to_string().contains("at least one method"), "{err}");
    let empty = Curve {
        label: "a".into(),
        points: Vec::new(),
    };
    let err = write_line_plot(&[empty], "t", "x", "y", dir.path().join("x")).unwrap_err();
    assert!(err.to_string().contains("at least one point"), "{err}");
    let nan = Curve {
        label: "LC RL".into(),
        points: vec![(1.0, 0.5), (2.0, f64::NAN)],
    };
    let err = write_line_plot(&[nan], "t", "x", "y", dir.path().join("x")).unwrap_err();
    assert!(
        err.to_string().contains("`LC RL`") && err.to_string().contains("finite"),
        "{err}"
    );
    let point = FrontierPoint {
        label: "a".into(),
        accuracy: estimate(0.5, 0.1),
        ece: estimate(0.2, 0.1),
    };
    let missing = dir.path().join("no/such/folder/plot");
    let err = write_frontier_plot(&[point], "t", &missing)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no/such/folder/plot.png") && err.contains("folder exists"),
        "{err}"
    );
}
