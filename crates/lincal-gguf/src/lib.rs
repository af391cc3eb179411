//! lincal-gguf: imports a llama.cpp GGUF file (format v2/v3) by dequantising its tensors and
//! writing a Hugging Face Llama model directory (config, safetensors weights, tokenizer files)
//! that lincal-model then loads like any other checkpoint.
//!
//! Pure Rust on purpose, with no libtorch: conversion runs once, before any model is loaded, and
//! this crate and its tests build and run without libtorch.
//!
//! Modules:
//! - `format`: reading the file: header, metadata values, tensor infos ([`GgufFile`]).
//! - `quant`: the ggml tensor types ([`GgmlType`]) and their dequantisation kernels.
//! - `tokenizer`: tokenizer.json, tokenizer_config.json and the chat template, rebuilt from the
//!   metadata.
//! - `convert`: [`convert_to_hf`]: the config, the tensor plan, the safetensors weights and the
//!   staging directory that makes the output appear whole or not at all.
//! - `error`: [`GgufError`].

mod convert;
mod error;
mod format;
mod quant;
#[cfg(test)]
mod test_gguf;
mod tokenizer;

pub use convert::{ConvertSummary, OutputDtype, convert_to_hf};
pub use error::GgufError;
pub use format::{GgufFile, GgufTensorInfo, GgufValue};
pub use quant::GgmlType;
