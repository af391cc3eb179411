//! The one error type of the crate: each message says what was wrong, where, and what to do.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, DataError>;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A bad row or field of an input file; `line` is 1-based (a row number for Parquet).
    #[error("{}:{line}: {message}", path.display())]
    Row {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// A file whose overall shape is wrong (missing column, unknown format, bad hash...).
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    #[error("{0}")]
    Invalid(String),
}
