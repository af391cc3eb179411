//! GRPO and RLOO end to end on tiny random models: the first update, learning a toy reward
//! for several seeds, and exact resume.

use super::*;
use crate::config::Precision;
use crate::testutil::{
    TargetWordReward, assert_same_final_weights, assert_same_statistics, fixture, read_jsonl,
    saved_tensors, tiny_lora, train_records,
};

/// 32 one-word prompts the test tokenizer knows.
fn prompts() -> Vec<PpoPrompt> {
    (0..32)
        .map(|i| PpoPrompt {
            question_id: None,
            query: format!("t{}", 3 + i),
            question: "t5".into(),
            answer: "t6".into(),
        })
        .collect()
}

/// Small CPU settings: 4 prompts × 4 responses of at most 6 tokens, one optimizer step.
fn config() -> GrpoConfig {
    let mut config = GrpoConfig::preset("factuality_grpo").unwrap();
    config.total_steps = 4;
    config.prompts_per_step = 4;
    config.group_size = 4;
    config.step_batch_size = 16;
    config.micro_batch_size = 8;
    config.generation_batch_size = 16;
    config.forward_batch_size = 16;
    config.query_len = 40;
    config.response_len = 6;
    config.eval_every = 1000;
    config.save_every = 1000;
    config.precision = Precision::F32;
    config
}

fn trainer(config: &GrpoConfig, dir: &Path, fixture: &crate::testutil::Fixture) -> GrpoTrainer {
    GrpoTrainer::with_reward(
        &fixture.paths,
        Device::Cpu,
        config,
        Box::new(TargetWordReward),
        &prompts(),
        &prompts()[..2],
        &RunOptions::new(dir),
    )
    .unwrap()
}

/// Before the first update the policy is the reference and the old log-probs are the current
/// ones, from forward passes of the same shape (micro-batches as large as the scoring
/// passes): the ratio is exactly 1 (approx KL 0, nothing clipped) and the KL 0, in full
/// fine-tuning and LoRA mode; the step writes one rollout per response, G to a prompt.
#[test]
fn the_first_update_has_unit_ratio_and_zero_kl() {
    let fixture = fixture();
    for lora in [None, Some(tiny_lora())] {
        let run = tempfile::tempdir().unwrap();
        let config = GrpoConfig {
            lora: lora.clone(),
            micro_batch_size: 16,
            ..config()
        };
        let summary = trainer(&config, run.path(), &fixture)
            .train(Some(1))
            .unwrap();
        assert_eq!(summary.steps, 1);
        let record = &train_records(run.path())[0];
        for name in ["kl_k3", "kl", "policy_clipfrac", "approx_kl"] {
            assert_eq!(
                record[name].as_f64(),
                Some(0.0),
                "{name} with lora {}: {record}",
                lora.is_some()
            );
        }
        let rollouts = read_jsonl(&run.path().join("rollouts/step-00000001.jsonl"));
        assert_eq!(rollouts.len(), 16);
        // Responses come in groups of 4 to one prompt.
        for group in rollouts.chunks(4) {
            assert!(group.iter().all(|r| r["query"] == group[0]["query"]));
        }
        assert_ne!(rollouts[0]["query"], rollouts[4]["query"]);
    }
}

/// `auto_batch_sizes` plans for all 16 responses of a step (4 prompts × 4) and trains as the
/// configured micro-batches of 8 and forward passes of 16 do, within 1e-4 over two steps.
#[test]
fn auto_batch_sizes_plan_for_the_whole_step() {
    let fixture = fixture();
    let config = GrpoConfig {
        total_steps: 2,
        warmup_steps: 0,
        learning_rate: 1e-3,
        ..config()
    };
    let plain = tempfile::tempdir().unwrap();
    let mut trainer_plain = trainer(&config, plain.path(), &fixture);
    assert!(trainer_plain.batch_plan().is_none());
    trainer_plain.train(None).unwrap();
    let auto = tempfile::tempdir().unwrap();
    let auto_config = GrpoConfig {
        auto_batch_sizes: true,
        ..config
    };
    let mut trainer_auto = trainer(&auto_config, auto.path(), &fixture);
    let plan = trainer_auto.batch_plan().expect("a plan").clone();
    assert_eq!(
        (
            plan.generation_batch_size,
            plan.forward_batch_size,
            plan.micro_batch_size
        ),
        (16, 16, 16),
        "{plan}"
    );
    trainer_auto.train(None).unwrap();
    assert_same_statistics(plain.path(), auto.path(), 1e-4);
}

/// With the built-in Factuality reward (its reward model a frozen model of its own) and
/// `offload_idle_models`, GRPO trains exactly as with every model kept in place, in full
/// fine-tuning and LoRA mode, and the reward model waits in host memory after a step.
#[test]
fn offloaded_idle_models_train_exactly_as_resident_ones() {
    let fixture = fixture();
    for lora in [None, Some(tiny_lora())] {
        let kept = GrpoConfig {
            total_steps: 2,
            lora,
            ..config()
        };
        let offloaded = GrpoConfig {
            offload_idle_models: Some(true),
            ..kept.clone()
        };
        let run = |config: &GrpoConfig| {
            let dir = tempfile::tempdir().unwrap();
            let mut trainer = GrpoTrainer::new(
                &fixture.paths,
                Device::Cpu,
                config,
                &prompts(),
                &[],
                &RunOptions::new(dir.path()),
            )
            .unwrap();
            trainer.train(None).unwrap();
            let offloaded: Vec<bool> = (trainer.steps.reward.models().iter())
                .map(|m| m.is_offloaded())
                .collect();
            (dir, offloaded)
        };
        let (kept_dir, kept_offloaded) = run(&kept);
        let (offloaded_dir, offloaded_offloaded) = run(&offloaded);
        assert_same_statistics(kept_dir.path(), offloaded_dir.path(), 0.0);
        assert_eq!(
            (kept_offloaded, offloaded_offloaded),
            (vec![false], vec![true])
        );
    }
}

/// Two ranks as threads, each taking two whole groups of 4, train as one process: the same
/// statistics over two steps (group advantages, the token normaliser and the metrics of the
/// whole step) and final weights within 1e-4.
#[test]
fn data_parallel_ranks_train_as_one_process() {
    let fixture = fixture();
    let config = GrpoConfig {
        total_steps: 2,
        warmup_steps: 0,
        learning_rate: 1e-3,
        step_batch_size: 8,
        micro_batch_size: 2,
        ..config()
    };
    let single = tempfile::tempdir().unwrap();
    trainer(&config, single.path(), &fixture)
        .train(None)
        .unwrap();
    let parallel = tempfile::tempdir().unwrap();
    crate::distributed::on_ranks(2, |comm| {
        GrpoTrainer::with_reward(
            &fixture.paths,
            Device::Cpu,
            &config,
            Box::new(TargetWordReward),
            &prompts(),
            &prompts()[..2],
            &RunOptions {
                comm,
                ..RunOptions::new(parallel.path())
            },
        )
        .unwrap()
        .train(None)
        .unwrap();
    });
    assert_same_statistics(single.path(), parallel.path(), 1e-4);
    assert_same_final_weights(single.path(), parallel.path(), 1e-4);
}

/// The toy task from a random policy (the reward is the share of "t20" among the response's
/// words, about 0.02 at first): 20 steps of 8 prompts × 8 responses at learning rate 3e-3,
/// β 0.01, take the mean reward from below 0.1 at step 1 to above 0.5 over steps 16-20, for
/// GRPO, Dr. GRPO and RLOO with three seeds each (0.89-0.93 when this was written).
#[test]
fn grpo_dr_grpo_and_rloo_raise_a_toy_reward() {
    let fixture = fixture();
    let runs = [
        GroupBaseline::Grpo,
        GroupBaseline::DrGrpo,
        GroupBaseline::Rloo,
    ]
    .into_iter()
    .flat_map(|baseline| (1..=3).map(move |seed| (baseline, seed)));
    for (baseline, seed) in runs {
        let run = tempfile::tempdir().unwrap();
        let config = GrpoConfig {
            baseline,
            seed,
            total_steps: 20,
            prompts_per_step: 8,
            group_size: 8,
            step_batch_size: 64,
            micro_batch_size: 32,
            generation_batch_size: 64,
            forward_batch_size: 64,
            learning_rate: 3e-3,
            kl_coef: 0.01,
            warmup_steps: 0,
            dump_rollouts: false,
            ..config()
        };
        trainer(&config, run.path(), &fixture).train(None).unwrap();
        let rewards: Vec<f64> = train_records(run.path())
            .iter()
            .map(|r| r["reward"].as_f64().unwrap())
            .collect();
        assert_eq!(rewards.len(), 20);
        let last = rewards[15..].iter().sum::<f64>() / 5.0;
        println!("{baseline:?} seed {seed}: {:.3} → {last:.3}", rewards[0]);
        assert!(
            rewards[0] < 0.1 && last > 0.5,
            "{baseline:?}, seed {seed}: mean reward {:.3} at step 1, {last:.3} over steps 16-20: \
             {rewards:?}",
            rewards[0]
        );
    }
}

/// A run stopped after 3 of 4 steps whose step-3 checkpoint is then lost resumes from step 2
/// and ends with exactly the policy, metrics and rollouts of an uninterrupted run (two inner
/// epochs, the KL in the reward).
#[test]
fn a_killed_run_resumes_bit_identical() {
    let fixture = fixture();
    let config = GrpoConfig {
        save_every: 2,
        eval_every: 2,
        epochs_per_rollout: 2,
        step_batch_size: 8,
        learning_rate: 1e-3,
        kl_placement: KlPlacement::Reward,
        baseline: GroupBaseline::Rloo,
        ..config()
    };
    let whole = tempfile::tempdir().unwrap();
    trainer(&config, whole.path(), &fixture)
        .train(None)
        .unwrap();
    let broken = tempfile::tempdir().unwrap();
    assert_eq!(
        trainer(&config, broken.path(), &fixture)
            .train(Some(3))
            .unwrap()
            .steps,
        3
    );
    std::fs::remove_dir_all(broken.path().join("checkpoints/step-00000003")).unwrap();
    let summary = trainer(&config, broken.path(), &fixture)
        .train(None)
        .unwrap();
    assert_eq!((summary.resumed_from, summary.steps), (Some(2), 4));
    let (a, b) = (
        saved_tensors(&whole.path().join("final")),
        saved_tensors(&broken.path().join("final")),
    );
    for (name, tensor) in &a {
        assert!(tensor.equal(&b[name]), "{name} differs after resume");
    }
    let metrics = |run: &Path| {
        read_jsonl(&run.join("metrics.jsonl"))
            .into_iter()
            .map(|mut m| {
                m.as_object_mut()
                    .unwrap()
                    .retain(|k, _| !k.ends_with("seconds"));
                m
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(metrics(whole.path()), metrics(broken.path()));
    assert_eq!(
        read_jsonl(&whole.path().join("rollouts/step-00000004.jsonl")),
        read_jsonl(&broken.path().join("rollouts/step-00000004.jsonl"))
    );
}

#[test]
fn bad_settings_are_named() {
    let mut bad = config();
    bad.group_size = 1;
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("group_size")
    );
    let mut bad = config();
    bad.step_batch_size = 5;
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("must divide the 16 responses"), "{err}");
    // The reward's settings are checked as PPO's are.
    let mut bad = config();
    bad.reward.score_batch_tokens = Some(0);
    let err = bad.validate().unwrap_err().to_string();
    assert!(
        err.starts_with("config field `reward.score_batch_tokens`: must be at least 1"),
        "{err}"
    );
    assert!(GrpoConfig::preset("lc_ppo").is_err());
    let lc = GrpoConfig::preset("lc_grpo").unwrap();
    assert_eq!(
        (lc.rollout_batch_size(), lc.kl_coef, lc.group_size),
        (512, 0.04, 8)
    );
    assert!(lc.validate().is_ok());
}

#[test]
fn scale_keeps_the_groups_and_whole_micro_batches() {
    // 64 prompts × 8 → 0.1: 6 prompts (48 responses); step batch 512 → 51, the largest
    // multiple of the micro-batch (2) at most 51 dividing 48 is 48. 1,500 steps → 150.
    let scaled = GrpoConfig::preset("lc_grpo").unwrap().scaled(0.1).unwrap();
    assert_eq!(
        (
            scaled.prompts_per_step,
            scaled.group_size,
            scaled.step_batch_size,
            scaled.micro_batch_size,
            scaled.total_steps
        ),
        (6, 8, 48, 2, 150)
    );
    assert!(scaled.validate().is_ok());
    assert!(GrpoConfig::preset("lc_grpo").unwrap().scaled(0.0).is_err());
}

/// As PPO's: a loss that overflows stops the run at its step (the first update's step logged,
/// and every one before the failing one).
#[test]
fn a_diverging_update_stops_the_run_and_names_the_step() {
    let fixture = fixture();
    let config = GrpoConfig {
        warmup_steps: 0,
        learning_rate: 1e30,
        total_steps: 3,
        ..config()
    };
    let dir = tempfile::tempdir().unwrap();
    let error = trainer(&config, dir.path(), &fixture)
        .train(None)
        .unwrap_err()
        .to_string();
    let logged = train_records(dir.path()).len();
    assert!(logged >= 1);
    assert!(
        error.contains(&format!("diverged at step {}", logged + 1)),
        "{logged} steps logged: {error}"
    );
}
