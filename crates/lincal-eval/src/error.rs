//! The one error type of the crate: each message says what was wrong, where, and what to do.

use std::path::PathBuf;

use lincal_metrics::MetricsError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "cannot write {}: {source}; check that the folder exists and is writable",
        path.display()
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A bad line of a JSONL file (1-based line number).
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// A whole file that is not what it should be (a malformed `results.json`, say).
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    /// Input given in code rather than read from a file: `what` names the item or field.
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },

    #[error("search index {}: {message}", path.display())]
    Index { path: PathBuf, message: String },

    #[error("cannot compare these runs: {0}")]
    Compare(String),

    #[error(transparent)]
    Metrics(#[from] MetricsError),
}
