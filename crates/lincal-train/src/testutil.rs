//! Fixtures for the trainer tests: a tiny random Llama saved with a word-level tokenizer.

use crate::config::{Precision, Schedule, TrainingConfig};
use crate::error::Result;
use crate::ppo::{PpoModelPaths, Reward, RewardInput, RewardOutput, ScoreContext};
use crate::reward_model::{HeadInit, RewardModel};
use lincal_model::Tokenizer;
use lincal_model::lora::LoraConfig;
use lincal_model::testing::{random_model, tiny_llama, tiny_neox, write_tokenizer};
use std::collections::BTreeMap;
use std::path::Path;

/// `‖a − b‖ / ‖b‖`: how far `a` is from the reference `b`, for tolerances that scale with it.
pub(crate) fn relative_difference(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    ((a - b).norm() / b.norm()).double_value(&[])
}

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
        recomputed_layers: None,
        max_steps: None,
    }
}

/// The tensors of a saved `model.safetensors`, by name.
pub(crate) fn saved_tensors(dir: &Path) -> std::collections::BTreeMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// A policy (tiny Llama, vocabulary 64 plus "[PAD]" = 64), a reward model on a backbone of the
/// same shape, and a tiny GPT-NeoX ExtractAnswers model, in temporary directories.
pub(crate) struct Fixture {
    _root: tempfile::TempDir,
    pub paths: PpoModelPaths,
}

pub(crate) fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let path = root.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let (policy_dir, reward_dir, extractor_dir) =
        (dir("policy"), dir("reward_model"), dir("extractor"));
    write_tokenizer(&policy_dir, 64);
    let mut tokenizer = Tokenizer::from_dir(&policy_dir).unwrap();
    assert_eq!(tokenizer.add_special_token("pad_token", "[PAD]"), 64);
    tokenizer.save(&policy_dir).unwrap();
    let mut policy = random_model(tiny_llama(false), 7);
    policy.resize_token_embeddings(65).unwrap();
    policy.save(&policy_dir, usize::MAX).unwrap();
    let mut backbone = random_model(tiny_llama(false), 8);
    backbone.resize_token_embeddings(65).unwrap();
    RewardModel::new(backbone, HeadInit::Default { seed: 3 }, "policy")
        .save(&reward_dir)
        .unwrap();
    tokenizer.save(&reward_dir).unwrap();
    random_model(tiny_neox(), 9)
        .save(&extractor_dir, usize::MAX)
        .unwrap();
    write_tokenizer(&extractor_dir, 64);
    Fixture {
        paths: PpoModelPaths {
            policy: policy_dir,
            reward_model: reward_dir,
            answer_extractor: Some(extractor_dir),
        },
        _root: root,
    }
}

/// Rank-4 adapters on the attention's q and v projections, without dropout.
pub(crate) fn tiny_lora() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
    }
}

pub(crate) fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) fn train_records(run: &Path) -> Vec<serde_json::Value> {
    read_jsonl(&run.join("metrics.jsonl"))
        .into_iter()
        .filter(|m| m.get("policy_loss").is_some())
        .collect()
}

/// Asserts that the models two runs saved in `final/` hold the same tensors within `tolerance`.
pub(crate) fn assert_same_final_weights(a: &Path, b: &Path, tolerance: f64) {
    let (a, b) = (
        saved_tensors(&a.join("final")),
        saved_tensors(&b.join("final")),
    );
    assert_eq!(a.len(), b.len());
    for (name, tensor) in &a {
        let diff = (tensor - &b[name]).abs().max().double_value(&[]);
        assert!(diff < tolerance, "{name} differs by {diff}");
    }
}

/// Asserts that two runs' training records hold the same statistics within `tolerance`
/// (relative above 1; times are left out).
pub(crate) fn assert_same_statistics(a: &Path, b: &Path, tolerance: f64) {
    let (a, b) = (train_records(a), train_records(b));
    assert_eq!(a.len(), b.len());
    for (step, (a, b)) in a.iter().zip(&b).enumerate() {
        for (name, value) in a.as_object().unwrap() {
            let (Some(x), Some(y)) = (value.as_f64(), b[name].as_f64()) else {
                continue;
            };
            assert!(
                name.ends_with("seconds") || (x - y).abs() <= tolerance * (1.0 + x.abs()),
                "step {} {name}: {x} against {y}",
                step + 1
            );
        }
    }
}

/// The toy task: the reward is the fraction of the response's words that are "t20".
pub(crate) struct TargetWordReward;

impl Reward for TargetWordReward {
    fn score(
        &mut self,
        inputs: &[RewardInput<'_>],
        _context: ScoreContext,
    ) -> Result<Vec<RewardOutput>> {
        Ok(inputs
            .iter()
            .map(|input| {
                let words: Vec<&str> = input.paragraph.split_whitespace().collect();
                let hits = words.iter().filter(|w| **w == "t20").count() as f64;
                let reward = hits / words.len().max(1) as f64;
                RewardOutput {
                    reward,
                    terms: BTreeMap::from([("hits".to_string(), hits)]),
                    details: serde_json::Value::Null,
                }
            })
            .collect())
    }
}
