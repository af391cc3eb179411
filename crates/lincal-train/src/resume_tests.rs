//! Kill and resume across the trainers' variants (the plain f32 SFT run has its own test in
//! `sft.rs`): a run stopped after 3 of 6 steps, whose step-3 checkpoint was being written when
//! it was killed (left as `step-00000003.partial`), resumes from step 2 and ends with the
//! weights, the logged losses and the kept checkpoints of an uninterrupted run.

use crate::config::{Precision, RewardModelConfig, SftConfig};
use crate::data::{RewardExample, SftExample};
use crate::run::RunOptions;
use crate::testutil::{quick_training, tiny_model_dir};
use crate::training_run::TrainSummary;
use crate::{RewardModelTrainer, SftTrainer};
use lincal_model::lora::LoraConfig;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Tensor};

/// Every tensor of every safetensors file in `dir`, by file and name.
fn saved(dir: &Path) -> BTreeMap<String, Tensor> {
    let mut tensors = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            for (name, tensor) in Tensor::read_safetensors(&path).unwrap() {
                tensors.insert(format!("{file}:{name}"), tensor);
            }
        }
    }
    tensors
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter_map(|m| Some((m["step"].as_u64()?, m.get("loss")?.as_f64()?)))
        .collect()
}

fn checkpoint_names(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `train(options, stop)` runs (or resumes) a 6-step run that saves every step and keeps 2
/// checkpoints; `kept_after_finish` are those left once it has finished.
fn assert_resumes_exactly(
    label: &str,
    kept_after_finish: &[&str],
    train: &dyn Fn(&RunOptions, Option<u64>) -> TrainSummary,
) {
    let whole = tempfile::tempdir().unwrap();
    assert_eq!(
        train(&RunOptions::new(whole.path()), None).steps,
        6,
        "{label}"
    );

    let killed = tempfile::tempdir().unwrap();
    let options = RunOptions::new(killed.path());
    let stopped = train(&options, Some(3));
    assert_eq!((stopped.steps, stopped.final_dir), (3, None), "{label}");
    let checkpoints = killed.path().join("checkpoints");
    assert_eq!(
        checkpoint_names(killed.path()),
        ["step-00000002", "step-00000003"],
        "{label}: older checkpoints are pruned"
    );
    std::fs::rename(
        checkpoints.join("step-00000003"),
        checkpoints.join("step-00000003.partial"),
    )
    .unwrap();

    let resumed = train(&options, None);
    assert_eq!(
        (resumed.resumed_from, resumed.steps),
        (Some(2), 6),
        "{label}"
    );
    let (a, b) = (
        saved(&whole.path().join("final")),
        saved(&killed.path().join("final")),
    );
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{label}"
    );
    for (name, tensor) in &a {
        assert!(
            tensor.equal(&b[name]),
            "{label}: {name} differs after resume"
        );
    }
    let logged = losses(killed.path());
    assert_eq!(logged, losses(whole.path()), "{label}");
    assert_eq!(logged.len(), 6, "{label}");
    // Once finished, the resume checkpoints are removed unless the config keeps them (then
    // they are the whole run's: the last two before the final step, which writes `final/`);
    // the half-written one is gone either way.
    for run in [whole.path(), killed.path()] {
        let kept = if run.join("checkpoints").exists() {
            checkpoint_names(run)
        } else {
            Vec::new()
        };
        assert_eq!(kept, kept_after_finish, "{label}");
    }
}

fn sft_examples() -> Vec<SftExample> {
    ["t5 t6", "t7 t8 t9", "t10", "t11 t12"]
        .iter()
        .zip([" t20 t21 t22", " t23 t24", " t25 t26 t27 t28", " t29"])
        .map(|(prompt, target)| SftExample {
            question_id: None,
            prompt: prompt.to_string(),
            target: target.to_string(),
        })
        .collect()
}

/// 4 examples, batch 2 in micro-batches of 1, 3 epochs: 6 steps, a checkpoint each.
fn sft_config() -> SftConfig {
    let mut training = quick_training(5e-3, 3.0, 2, 1);
    training.save_every = 1;
    training.warmup_ratio = 0.3;
    SftConfig {
        model_max_length: 64,
        packing: false,
        pad_token: "[PAD]".into(),
        lora: None,
        training,
    }
}

fn sft_run(
    config: &SftConfig,
    examples: &[SftExample],
) -> impl Fn(&RunOptions, Option<u64>) -> TrainSummary {
    let model_dir = tiny_model_dir();
    let (config, examples) = (config.clone(), examples.to_vec());
    move |options, stop| {
        SftTrainer::new(
            model_dir.path(),
            Device::Cpu,
            &config,
            &examples,
            &[],
            options,
        )
        .unwrap()
        .train(stop)
        .unwrap()
    }
}

#[test]
fn bf16_and_pure_bf16_runs_resume_exactly() {
    for precision in [Precision::Bf16, Precision::PureBf16] {
        let mut config = sft_config();
        config.training.precision = precision;
        assert_resumes_exactly(
            &format!("{precision:?}"),
            &[],
            &sft_run(&config, &sft_examples()),
        );
    }
}

/// Packed rows: 8 short examples packed into rows of at most 16 tokens.
#[test]
fn a_packed_run_resumes_exactly() {
    let mut config = sft_config();
    config.packing = true;
    config.model_max_length = 16;
    let mut examples = sft_examples();
    examples.extend(sft_examples());
    // Packed, the 8 examples make 4 rows: still 6 steps of 2 over 3 epochs.
    assert_resumes_exactly("packed", &[], &sft_run(&config, &examples));
}

/// LoRA with dropout: the resumed steps draw the masks the uninterrupted ones drew.
#[test]
fn a_lora_run_with_dropout_resumes_exactly() {
    let mut config = sft_config();
    config.lora = Some(LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
    });
    assert_resumes_exactly("lora", &[], &sft_run(&config, &sft_examples()));
}

#[test]
fn a_reward_model_run_resumes_exactly() {
    let model_dir = tiny_model_dir();
    let examples: Vec<RewardExample> = [
        ("t5 t6 t7", 0.1),
        ("t8 t9", 0.35),
        ("t10", 0.6),
        ("t14", 0.9),
    ]
    .iter()
    .map(|(prompt, label)| RewardExample {
        question_id: None,
        prompt: prompt.to_string(),
        label: *label,
    })
    .collect();
    let mut training = quick_training(1e-2, 3.0, 2, 1);
    training.save_every = 1;
    training.keep_checkpoints_after_finish = true;
    let config = RewardModelConfig {
        model_max_length: 64,
        pad_token: "[PAD]".into(),
        lora: None,
        training,
    };
    assert_resumes_exactly(
        "reward model",
        &["step-00000004", "step-00000005"],
        &|options, stop| {
            RewardModelTrainer::new(
                model_dir.path(),
                Device::Cpu,
                &config,
                &examples,
                &[],
                options,
            )
            .unwrap()
            .train(stop)
            .unwrap()
        },
    );
}
