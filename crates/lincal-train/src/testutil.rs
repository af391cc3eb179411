//! Fixtures for the trainer tests: a tiny random Llama saved with a word-level tokenizer.

use crate::config::{Precision, Schedule, TrainingConfig};
use crate::run::RunOptions;
use lincal_model::testing::{random_model, tiny_llama, write_tokenizer};
use std::path::Path;

/// A 2-layer Llama (vocabulary 64, no pad token: the trainers add "[PAD]") and its tokenizer
/// in a temporary directory.
pub(crate) fn tiny_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let model = random_model(tiny_llama(false), 7);
    model
        .save(dir.path(), lincal_model::model::DEFAULT_MAX_SHARD_BYTES)
        .unwrap();
    write_tokenizer(dir.path(), 64);
    dir
}

/// Small f32 CPU settings; tests change what they exercise.
pub(crate) fn quick_training(
    learning_rate: f64,
    epochs: f64,
    batch_size: usize,
    micro_batch_size: usize,
) -> TrainingConfig {
    TrainingConfig {
        learning_rate,
        epochs,
        batch_size,
        micro_batch_size,
        eval_batch_size: 4,
        schedule: Schedule::Cosine,
        warmup_ratio: 0.0,
        weight_decay: 0.0,
        adam_beta1: 0.9,
        adam_beta2: 0.999,
        adam_epsilon: 1e-8,
        max_grad_norm: 1.0,
        eval_every: 1000,
        save_every: 1000,
        keep_checkpoints: 2,
        keep_checkpoints_after_finish: false,
        seed: 42,
        precision: Precision::F32,
        gradient_checkpointing: false,
        max_steps: None,
    }
}

pub(crate) fn run_options(dir: &Path) -> RunOptions {
    RunOptions {
        dir: dir.to_path_buf(),
        input_files: Vec::new(),
        progress: false,
    }
}

/// The tensors of a saved `model.safetensors`, by name.
pub(crate) fn saved_tensors(dir: &Path) -> std::collections::BTreeMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}
