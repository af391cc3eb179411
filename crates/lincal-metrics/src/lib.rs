//! Calibration metrics for lincal, without libtorch.
//!
//! Input is one [`Prediction`] per answer (or per claim): a stated confidence in [0, 1] and
//! whether it was judged correct. [`compute_report`] gives accuracy, ECE (equal-mass, as the
//! reference computes it, and equal-width), ACE (netcal's, equal-width bins weighted equally),
//! MCE, smooth ECE (relplot's smECE, no bins), Brier score, log loss, AUROC and AURC (area under
//! the risk–coverage curve), each with a paired percentile bootstrap interval, plus reliability
//! bins, the smoothed reliability curve with its bootstrap band and the selective-prediction
//! curve. [`write_reliability_diagram`],
//! [`write_risk_coverage_plot`], [`write_frontier_plot`] and [`write_line_plot`] draw PNG and
//! SVG plots.
//!
//! Rules taken from the reference (SPEC 5.2, 5.3):
//! - QA uses 20 equal-mass bins ([`ReportConfig::qa`]); per-claim evaluation 40
//!   ([`ReportConfig::claims`]). [`Binning::EqualMass`] drops the N mod bins highest-confidence
//!   predictions as the reference does; [`Binning::EqualMassKeepAll`] keeps them.
//! - A method without confidence scores every prediction at 1.0
//!   ([`Prediction::without_confidence`]), so its ECE is 1 − accuracy.
//! - A paragraph with no extracted answer is wrong with confidence 1
//!   ([`Prediction::empty_extraction`]).
//!
//! Every metric fails with [`MetricsError::Empty`] on no predictions and
//! [`MetricsError::InvalidConfidence`] on a confidence outside [0, 1] (NaN included).
//!
//! ```
//! use lincal_metrics::{Prediction, ReportConfig, compute_report};
//!
//! let preds = [
//!     Prediction::new(0.9, true),
//!     Prediction::new(0.3, false),
//!     Prediction::empty_extraction(),
//! ];
//! let mut config = ReportConfig::qa();
//! config.bootstrap.resamples = 1_000;
//! let report = compute_report(&preds, &config)?;
//! assert_eq!((report.n, report.accuracy.value), (3, 1.0 / 3.0));
//! println!("{}", report.to_table());
//! # Ok::<(), lincal_metrics::MetricsError>(())
//! ```

mod bootstrap;
mod calibration;
mod error;
mod paired;
mod per_subject;
mod plot;
mod prediction;
mod report;
mod scores;
mod smooth;

pub use bootstrap::{BootstrapConfig, Interval, bootstrap_ci};
pub use calibration::{
    Binning, ReliabilityBin, ace, ece, mce, merge_equal_confidence, reliability_bins,
};
pub use error::MetricsError;
pub use paired::{PairedComparison, PairedDifference, paired_comparison};
pub use per_subject::{SubjectAverages, subject_averages};
pub use plot::{
    Curve, FrontierPoint, PlotFiles, write_frontier_plot, write_line_plot,
    write_reliability_diagram, write_risk_coverage_plot,
};
pub use prediction::{Prediction, read_predictions_jsonl};
pub use report::{Estimate, MetricsReport, ReportConfig, compute_report};
pub use scores::{
    CoverageCurve, CoveragePoint, LOG_LOSS_EPSILON, accuracy, aurc, auroc, brier, coverage_curve,
    log_loss,
};
pub use smooth::{SmoothCurve, SmoothEce, smooth_ece, smooth_ece_at, smooth_reliability_curve};
