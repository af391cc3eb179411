//! The one error type of the crate: each message says what was wrong, where, and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "no predictions to score: every metric needs at least one; check that the input file or \
         filter left some examples"
    )]
    Empty,

    #[error(
        "prediction {index}: confidence {value} is not a probability in [0, 1]; give a number \
         between 0 and 1 (use 1.0 for a method that states no confidence)"
    )]
    InvalidConfidence { index: usize, value: f64 },

    #[error("invalid setting `{field}`: {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}
