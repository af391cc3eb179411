//! Data for lincal: the reference dataset schema, offline question sources, prompt templates
//! and the parsers of what teachers, readers and judges answer. No libtorch here.

pub mod error;
pub mod prompts;
pub mod parse;
pub mod schema;
pub mod sources;

pub use error::{DataError, Result};
