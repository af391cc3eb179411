//! Data for lincal: the reference dataset schema and its file formats, offline question sources,
//! prompt templates, the parsers of what teachers, readers and judges answer, and the stage
//! directory format of the teacher pipelines and evaluation with the lock that keeps two runs off
//! one output. Nothing here calls a model (the
//! teacher pipelines that do are `lincal-distill`), so neither libtorch nor a model backend is a
//! dependency.

pub mod artifact;
pub mod error;
pub mod lock;
pub mod parse;
pub mod prompts;
pub mod schema;
pub mod sources;

pub use error::{DataError, Result};
