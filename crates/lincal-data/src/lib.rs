//! Data for lincal: the reference dataset schema, offline question sources, prompt templates,
//! the parsers of what teachers, readers and judges answer, the teacher pipelines that make
//! training data, and the stage artifacts every stage of lincal writes. No libtorch here.

pub mod artifact;
pub mod distill;
pub mod error;
pub mod prompts;
pub mod parse;
pub mod schema;
pub mod sources;

pub use error::{DataError, Result};
