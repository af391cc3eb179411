//! PPO end to end on tiny random models: the first update, learning a toy reward, exact
//! resume, LoRA mode, the built-in rewards on real (tiny) reader models, and bad input.

use super::*;
use crate::config::Precision;
use crate::reward_model::BatchLimits;
use crate::testutil::{
    Fixture, TargetWordReward, assert_same_final_weights, assert_same_statistics, fixture,
    read_jsonl, saved_tensors, tiny_lora, train_records,
};
use lincal_data::parse::ExtractionParsing;
use lincal_data::prompts::Templates;
use lincal_model::Tokenizer;
use std::rc::Rc;

/// 12 prompts of words the test tokenizer knows; the policy template adds 18 unknown words.
fn prompts() -> Vec<PpoPrompt> {
    (0..12)
        .map(|i| PpoPrompt {
            question_id: Some(format!("q{i}")),
            query: format!("t{} t{}", 3 + i, 20 + i),
            question: format!("t{} t{}", 40 + i, 41 + i),
            answer: format!("t{}", 50 + i),
        })
        .collect()
}

/// A whole run of `config` on the fixture's models and [`prompts`], in a new directory.
fn train_run(fixture: &Fixture, config: &PpoConfig) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    PpoTrainer::new(
        &fixture.paths,
        Device::Cpu,
        config,
        &prompts(),
        &[],
        &RunOptions::new(dir.path()),
    )
    .unwrap()
    .train(None)
    .unwrap();
    dir
}

/// Small CPU settings: 8 rollouts of at most 6 tokens, one optimizer step per PPO step.
fn config(rl_type: RlType) -> PpoConfig {
    let mut config = PpoConfig::preset(if rl_type == RlType::DecisionBased {
        "lc_ppo"
    } else {
        "factuality_ppo"
    })
    .unwrap();
    config.total_steps = 4;
    config.rollout_batch_size = 8;
    config.step_batch_size = 8;
    config.micro_batch_size = 2;
    config.generation_batch_size = 4;
    config.forward_batch_size = 4;
    config.query_len = 40;
    config.response_len = 6;
    config.eval_every = 1000;
    config.save_every = 1000;
    config.precision = Precision::F32;
    config.reward.extractor_max_new_tokens = 4;
    config.reward.score_batch_size = 5;
    config.reward.extractor_batch_size = 3;
    config
}

/// Before the first optimizer step the policy is the reference (KL exactly 0) and the
/// old-policy log-probs are the current ones (ratio exactly 1: approx KL 0, nothing clipped),
/// in full fine-tuning and in LoRA mode; the first step writes its rollouts and an evaluation.
#[test]
fn the_first_update_has_zero_kl_and_unit_ratio() {
    let fixture = fixture();
    for lora in [None, Some(tiny_lora())] {
        let run = tempfile::tempdir().unwrap();
        let config = PpoConfig {
            lora: lora.clone(),
            ..config(RlType::DecisionBased)
        };
        let mut trainer = PpoTrainer::new(
            &fixture.paths,
            Device::Cpu,
            &config,
            &prompts(),
            &prompts()[..3],
            &RunOptions::new(run.path()),
        )
        .unwrap();
        let summary = trainer.train(Some(1)).unwrap();
        assert_eq!((summary.steps, summary.final_dir.clone()), (1, None));
        let record = &train_records(run.path())[0];
        for name in ["kl", "kl_penalty", "approx_kl", "policy_clipfrac"] {
            assert_eq!(
                record[name].as_f64(),
                Some(0.0),
                "{name} with lora {:?}: {record}",
                lora.is_some()
            );
        }
        // The value head starts at zero: every value is 0, so no value is clipped either.
        assert_eq!(
            (record["values"].as_f64(), record["value_clipfrac"].as_f64()),
            (Some(0.0), Some(0.0))
        );
        // Warmup: the first step runs at learning rate 0.
        assert_eq!(record["learning_rate"].as_f64(), Some(0.0));
        let rollouts = read_jsonl(&run.path().join("rollouts/step-00000001.jsonl"));
        assert_eq!(rollouts.len(), 8);
        for rollout in &rollouts {
            let terms = &rollout["terms"];
            let reward = terms["log_loss"].as_f64().unwrap()
                + terms["normalization"].as_f64().unwrap()
                + 5.0;
            assert!(
                (rollout["reward"].as_f64().unwrap() - reward).abs() < 1e-9,
                "{rollout}"
            );
            assert!(rollout["response_tokens"].as_i64().unwrap() <= 6);
        }
        // Evaluation runs after step 1 on the 3 validation prompts.
        assert_eq!(
            read_jsonl(&run.path().join("eval/step-00000001.jsonl")).len(),
            3
        );
        assert!(summary.eval.iter().any(|(name, _)| name == "eval_reward"));
    }
}

/// The toy task from a random policy: 20 PPO steps of 16 rollouts at learning rate 3e-3 (no
/// warmup) and β 0.01 take the mean reward from about 0.03 at step 1 (the word is one of 66
/// tokens) to above 0.7 over steps 16-20 (0.93 when this was written).
#[test]
fn ppo_raises_a_toy_reward() {
    let fixture = fixture();
    let run = tempfile::tempdir().unwrap();
    let mut config = config(RlType::Factuality);
    config.total_steps = 20;
    config.rollout_batch_size = 16;
    config.step_batch_size = 16;
    config.micro_batch_size = 8;
    config.generation_batch_size = 16;
    config.forward_batch_size = 16;
    config.learning_rate = 3e-3;
    config.kl_coef = 0.01;
    config.warmup_steps = 0;
    config.dump_rollouts = false;
    let prompts: Vec<PpoPrompt> = (0..32)
        .map(|i| PpoPrompt {
            question_id: None,
            query: format!("t{}", 3 + i),
            question: "t5".into(),
            answer: "t6".into(),
        })
        .collect();
    let mut trainer = PpoTrainer::with_reward(
        &fixture.paths,
        Device::Cpu,
        &config,
        Box::new(TargetWordReward),
        &prompts,
        &[],
        &RunOptions::new(run.path()),
    )
    .unwrap();
    let summary = trainer.train(None).unwrap();
    assert!(summary.final_dir.is_some());
    let rewards: Vec<f64> = train_records(run.path())
        .iter()
        .map(|r| r["reward"].as_f64().unwrap())
        .collect();
    assert_eq!(rewards.len(), 20);
    let last = rewards[15..].iter().sum::<f64>() / 5.0;
    assert!(
        rewards[0] < 0.1 && last > 0.7,
        "mean reward {:.3} at step 1, {last:.3} over steps 16-20: {rewards:?}",
        rewards[0]
    );
    // The logged KL is the clamped one (SPEC 2.4), as the reference logs it and steers the
    // coefficient by: never below the summed log-ratio, above it once the policy has moved
    // both ways.
    let kls: Vec<(f64, f64)> = train_records(run.path())
        .iter()
        .map(|r| {
            (
                r["kl"].as_f64().unwrap(),
                r["kl_unclamped"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(
        kls.iter()
            .all(|&(kl, unclamped)| kl >= 0.0 && kl >= unclamped - 1e-12),
        "{kls:?}"
    );
    assert!(
        kls.iter().any(|&(kl, unclamped)| kl > unclamped + 1e-6),
        "{kls:?}"
    );
}

/// A run stopped after 3 of 4 steps whose step-3 checkpoint is then lost (as if killed before
/// writing it) resumes from step 2 and ends with exactly the policy, metrics, rollouts and
/// evaluations of an uninterrupted run; the adaptive KL controller's state comes back too.
#[test]
fn killed_run_resumes_bit_identical() {
    let fixture = fixture();
    let mut config = config(RlType::DecisionBased);
    config.save_every = 2;
    config.eval_every = 2;
    config.warmup_steps = 1;
    config.learning_rate = 1e-3;
    config.adaptive_kl = true;
    config.kl_target = 0.01;
    let train = |dir: &Path, stop: Option<u64>| {
        PpoTrainer::new(
            &fixture.paths,
            Device::Cpu,
            &config,
            &prompts(),
            &prompts()[..2],
            &RunOptions::new(dir),
        )
        .unwrap()
        .train(stop)
        .unwrap()
    };
    let whole = tempfile::tempdir().unwrap();
    train(whole.path(), None);

    let broken = tempfile::tempdir().unwrap();
    assert_eq!(train(broken.path(), Some(3)).steps, 3);
    let checkpoints = broken.path().join("checkpoints");
    std::fs::remove_dir_all(checkpoints.join("step-00000003")).unwrap();
    assert!(
        checkpoints
            .join("step-00000002")
            .join(PPO_STATE_FILE)
            .exists()
    );
    let summary = train(broken.path(), None);
    assert_eq!((summary.resumed_from, summary.steps), (Some(2), 4));

    let (a, b) = (
        saved_tensors(&whole.path().join("final")),
        saved_tensors(&broken.path().join("final")),
    );
    assert_eq!(a.len(), b.len());
    for (name, tensor) in &a {
        assert!(tensor.equal(&b[name]), "{name} differs after resume");
    }
    let metrics = |run: &Path| {
        read_jsonl(&run.join("metrics.jsonl"))
            .into_iter()
            .map(|mut m| {
                // Times differ between runs; everything else must not.
                m.as_object_mut()
                    .unwrap()
                    .retain(|k, _| !k.ends_with("seconds"));
                m
            })
            .collect::<Vec<_>>()
    };
    let whole_metrics = metrics(whole.path());
    assert_eq!(whole_metrics, metrics(broken.path()));
    // The controller moved β away from 0.1 (the KL is above its tiny target).
    let betas: Vec<f64> = whole_metrics
        .iter()
        .filter_map(|m| m["kl_coef"].as_f64())
        .collect();
    assert_eq!(betas.len(), 4);
    assert!(betas[3] != 0.1, "{betas:?}");
    for file in [
        "rollouts/step-00000004.jsonl",
        "eval/step-00000004.jsonl",
        "eval/step-00000002.jsonl",
    ] {
        assert_eq!(
            read_jsonl(&whole.path().join(file)),
            read_jsonl(&broken.path().join(file)),
            "{file}"
        );
    }
    // A finished run is not trained again.
    assert_eq!(train(broken.path(), None).last_step, Vec::new());
}

/// `auto_batch_sizes` changes how many rows each pass takes, not what the steps compute:
/// with the tiny models every phase takes all 8 rollouts at once (one micro-batch instead of
/// four, one generation and extraction batch instead of two or three), and two steps, the
/// second after an update, log the same statistics as the configured small batches within
/// 1e-4 (f32; only the order of floating-point sums differs). The manifest keeps the config
/// as given, `offload_idle_models` unset.
#[test]
fn auto_batch_sizes_give_the_statistics_of_the_configured_ones() {
    let fixture = fixture();
    let mut config = config(RlType::DecisionBased);
    config.warmup_steps = 0;
    config.learning_rate = 1e-3;
    config.total_steps = 2;
    let train = |config: &PpoConfig, dir: &Path| {
        let mut trainer = PpoTrainer::new(
            &fixture.paths,
            Device::Cpu,
            config,
            &prompts(),
            &prompts()[..2],
            &RunOptions::new(dir),
        )
        .unwrap();
        trainer.train(None).unwrap();
        trainer.batch_plan().cloned()
    };
    let plain = tempfile::tempdir().unwrap();
    assert_eq!(train(&config, plain.path()), None);
    let auto = tempfile::tempdir().unwrap();
    let auto_config = PpoConfig {
        auto_batch_sizes: true,
        ..config.clone()
    };
    let plan = train(&auto_config, auto.path()).expect("a plan");
    assert_eq!(
        (
            plan.generation_batch_size,
            plan.forward_batch_size,
            plan.micro_batch_size,
            plan.extractor_batch_size,
            plan.score_batch_size
        ),
        (8, 8, 8, 8, 8),
        "{plan}"
    );
    // Host copies make no room on a CPU: with `offload_idle_models` unset, none are kept.
    assert!(!plan.offload_idle_models, "{plan}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(auto.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["config"]["auto_batch_sizes"], true);
    assert_eq!(manifest["config"]["micro_batch_size"], 2);
    assert_eq!(manifest["config"].get("offload_idle_models"), None);

    assert_same_statistics(plain.path(), auto.path(), 1e-4);
    // The update moved the policy: the second step's KL is not 0, so the comparison covers
    // an update's effect.
    let second = &train_records(plain.path())[1];
    assert!(
        second["kl_unclamped"].as_f64().unwrap().abs() > 0.0,
        "{second}"
    );
}

/// Gradient checkpointing in the update (some layers of policy and value model recomputed, or
/// all) trains as the plain update: the same statistics over three steps, in full fine-tuning
/// and in LoRA mode (no dropout, so both passes draw nothing). The value head starts at zero,
/// so the value backbone first gets a gradient in the second update, which the third step's
/// values show; a recomputed-layers count without checkpointing is refused by name.
#[test]
fn gradient_checkpointing_gives_the_statistics_of_the_plain_update() {
    let fixture = fixture();
    let mut config = config(RlType::DecisionBased);
    config.warmup_steps = 0;
    config.learning_rate = 1e-3;
    config.total_steps = 3;
    let train = |config: &PpoConfig| train_run(&fixture, config);
    for lora in [None, Some(tiny_lora())] {
        let config = PpoConfig {
            lora,
            ..config.clone()
        };
        let plain = train(&config);
        let second = &train_records(plain.path())[1];
        assert!(
            second["kl_unclamped"].as_f64().unwrap().abs() > 0.0,
            "{second}"
        );
        for recomputed in [Some(1), None] {
            let checkpointed = train(&PpoConfig {
                gradient_checkpointing: true,
                recomputed_layers: recomputed,
                ..config.clone()
            });
            assert_same_statistics(plain.path(), checkpointed.path(), 1e-5);
        }
    }
    let error = PpoConfig {
        recomputed_layers: Some(1),
        ..config
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(error.contains("`recomputed_layers`"), "{error}");
    assert!(error.contains("gradient_checkpointing = true"), "{error}");
}

/// `offload_idle_models`: the frozen models wait in host memory while the step's other parts
/// run. The reward's are there when scoring starts; after a step the extractor (and in full
/// fine-tuning the frozen reward model) still are, the forward passes' models are back. Runs
/// train exactly as with every model kept in place, in full fine-tuning and LoRA mode (whose
/// generation then runs with the adapters merged into the weights: other rounding, the same
/// samples here).
#[test]
fn offloaded_idle_models_train_exactly_as_resident_ones() {
    let fixture = fixture();
    let mut config = config(RlType::DecisionBased);
    config.total_steps = 2;
    let train = |config: &PpoConfig| train_run(&fixture, config);
    for lora in [None, Some(tiny_lora())] {
        let kept = PpoConfig {
            lora,
            ..config.clone()
        };
        let offloaded = PpoConfig {
            offload_idle_models: Some(true),
            ..kept.clone()
        };
        assert_same_statistics(train(&kept).path(), train(&offloaded).path(), 0.0);

        let kind_of = |device| offloaded.precision.kind(device);
        let (models, reward) = models::load_models(
            &fixture.paths,
            Device::Cpu,
            &offloaded.model_settings(&kind_of),
            None,
            &|dir, device, kind| RewardModel::load(dir, device, Some(kind)),
        )
        .unwrap();
        let mut probe = ResidencyProbe {
            inner: reward,
            offloaded_when_scoring: Vec::new(),
        };
        let prompts = bench::random_prompts(&models, 8, 10, 1);
        let mut learner = Learner::new(&offloaded, models, Ranks::single(Device::Cpu));
        learner
            .step(&mut probe, &bench::bench_inputs(&prompts), 0)
            .unwrap();
        assert_eq!(probe.offloaded_when_scoring, [true, true]);
        let models = &learner.models;
        let frozen = models.frozen_models(&probe);
        assert_eq!(
            frozen.len(),
            3,
            "the reference or policy base, reward model, extractor"
        );
        let forward = models.forward_models();
        for model in frozen {
            let runs = forward.iter().any(|m| std::ptr::eq(*m, model));
            assert_eq!(model.is_offloaded(), !runs);
        }
    }
}

/// A reward that notes which of its models wait in host memory when scoring starts.
struct ResidencyProbe {
    inner: Box<dyn Reward>,
    offloaded_when_scoring: Vec<bool>,
}

impl Reward for ResidencyProbe {
    fn score(
        &mut self,
        inputs: &[RewardInput<'_>],
        context: ScoreContext,
    ) -> Result<Vec<reward::RewardOutput>> {
        self.offloaded_when_scoring = self
            .inner
            .models()
            .iter()
            .map(|m| m.is_offloaded())
            .collect();
        self.inner.score(inputs, context)
    }

    fn models(&self) -> Vec<&CausalLm> {
        self.inner.models()
    }
}

/// Ranks as threads: two ranks stopped after 2 of 3 steps, resumed by three, log the
/// statistics, rollouts and evaluations of one uninterrupted process and end at its weights
/// (within float summation order, 1e-4), with the built-in decision reward (extraction
/// sampled per row), two minibatches a step, adaptive KL and whitening over the whole step.
#[test]
fn data_parallel_ranks_train_as_one_process_and_resume_at_another_world_size() {
    let fixture = fixture();
    let mut config = config(RlType::DecisionBased);
    config.total_steps = 3;
    config.step_batch_size = 4;
    config.save_every = 1;
    config.eval_every = 2;
    config.warmup_steps = 0;
    config.learning_rate = 1e-3;
    config.adaptive_kl = true;
    config.kl_target = 0.01;
    let train = |options: &RunOptions, stop: Option<u64>| {
        PpoTrainer::new(
            &fixture.paths,
            Device::Cpu,
            &config,
            &prompts(),
            &prompts()[..3],
            options,
        )
        .unwrap()
        .train(stop)
        .unwrap()
    };
    let single = tempfile::tempdir().unwrap();
    train(&RunOptions::new(single.path()), None);
    let parallel = tempfile::tempdir().unwrap();
    for (world, stop) in [(2, Some(2)), (3, None)] {
        let summaries = crate::distributed::on_ranks(world, |comm| {
            let options = RunOptions {
                comm,
                ..RunOptions::new(parallel.path())
            };
            train(&options, stop).steps
        });
        assert_eq!(summaries, vec![stop.unwrap_or(3); world]);
    }
    assert_same_statistics(single.path(), parallel.path(), 1e-4);
    let evals = |run: &Path| -> Vec<serde_json::Value> {
        read_jsonl(&run.join("metrics.jsonl"))
            .into_iter()
            .filter(|m| m.get("eval_reward").is_some())
            .collect()
    };
    let (a, b) = (evals(single.path()), evals(parallel.path()));
    assert_eq!((a.len(), b.len()), (3, 3));
    for (a, b) in a.iter().zip(&b) {
        for name in [
            "eval_reward",
            "eval_kl",
            "eval_entropy",
            "eval_response_length",
        ] {
            let (x, y) = (a[name].as_f64().unwrap(), b[name].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + x.abs()),
                "{name}: {x} vs {y}"
            );
        }
    }
    // Every rank's rollouts, in the step's order, as one process wrote them.
    for file in ["rollouts/step-00000003.jsonl", "eval/step-00000003.jsonl"] {
        let texts = |run: &Path| -> Vec<(String, String)> {
            read_jsonl(&run.join(file))
                .iter()
                .map(|r| (r["query"].to_string(), r["response"].to_string()))
                .collect()
        };
        assert_eq!(texts(single.path()), texts(parallel.path()), "{file}");
    }
    assert_same_final_weights(single.path(), parallel.path(), 1e-4);
}

/// A data-parallel job refuses steps it cannot share and per-rank whitening groups that a
/// rank boundary would cut, naming the field.
#[test]
fn data_parallel_jobs_refuse_steps_they_cannot_share() {
    assert!(check_ranks(1, ("rollout_batch_size", 1), Some((1, 3))).is_ok());
    let few = check_ranks(4, ("rollout_batch_size", 3), None).unwrap_err();
    assert!(
        few.to_string().contains("`rollout_batch_size`: is 3"),
        "{few}"
    );
    let groups = check_ranks(3, ("prompts_per_step", 2), None).unwrap_err();
    assert!(
        groups.to_string().contains("`prompts_per_step`"),
        "{groups}"
    );
    // 64 rollouts on 2 ranks: 32 each, whitened in groups of 16 (whole) but not of 24.
    assert!(check_ranks(2, ("rollout_batch_size", 64), Some((64, 16))).is_ok());
    let cut = check_ranks(2, ("rollout_batch_size", 64), Some((64, 24))).unwrap_err();
    assert!(cut.to_string().contains("`whiten_group_size`"), "{cut}");
}

/// LoRA mode trains adapters only: the policy base stays as loaded, and the reward model,
/// which shares its base with the value model, scores with the value adapters off.
#[test]
fn lora_mode_trains_adapters_on_shared_frozen_bases() {
    let fixture = fixture();
    let run = tempfile::tempdir().unwrap();
    let mut config = config(RlType::Factuality);
    config.lora = Some(tiny_lora());
    config.total_steps = 3;
    config.warmup_steps = 0;
    config.learning_rate = 1e-2;
    let mut trainer = PpoTrainer::new(
        &fixture.paths,
        Device::Cpu,
        &config,
        &prompts(),
        &[],
        &RunOptions::new(run.path()),
    )
    .unwrap();
    let trainable = trainer.steps.learner.params.num_parameters();
    // q_proj and v_proj adapters of 2 layers (r 4: 4·32 + 32·4 and 4·32 + 16·4) for policy and
    // value, plus the value head's 32 + 1.
    assert_eq!(trainable, 2 * 2 * (256 + 192) + 33);
    trainer.train(Some(2)).unwrap();
    let models = &trainer.steps.learner.models;
    let loaded = lincal_model::CausalLm::load(&fixture.paths.policy, Device::Cpu, None).unwrap();
    let name = "model.layers.0.self_attn.q_proj.weight";
    assert!(
        models.policy.model.var_store().variables()[name]
            .equal(&loaded.var_store().variables()[name])
    );
    let value = models.value.as_ref().unwrap();
    let adapters = value.lora.as_ref().unwrap();
    let moved = adapters
        .var_store()
        .variables()
        .iter()
        .filter(|(n, _)| n.contains("lora_B"))
        .map(|(_, t)| t.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(moved > 0.0, "the value adapters were trained");
    let tokenizer = Tokenizer::from_dir(&fixture.paths.reward_model).unwrap();
    let texts = vec!["t5 t6 t7".to_string(), "t9".to_string()];
    let fresh = RewardModel::load(&fixture.paths.reward_model, Device::Cpu, None)
        .unwrap()
        .score_texts(&tokenizer, &texts, 64, 64, BatchLimits::rows(2))
        .unwrap();
    let shared = &value.backbone;
    assert_eq!(
        value
            .without_adapters(|| shared.score_texts(
                &tokenizer,
                &texts,
                64,
                64,
                BatchLimits::rows(2)
            ))
            .unwrap(),
        fresh
    );
    assert_ne!(
        shared
            .score_texts(&tokenizer, &texts, 64, 64, BatchLimits::rows(2))
            .unwrap(),
        fresh
    );
    let summary = trainer.train(None).unwrap();
    let final_dir = summary.final_dir.unwrap();
    assert!(
        final_dir
            .join("adapter")
            .join("adapter_model.safetensors")
            .exists()
    );
}

/// Snapshots every step from step 2: weights-only policies in the Hugging Face layout (LoRA
/// adapters merged), kept when the finished run removes its checkpoints; the last equals
/// `final/`, and writing them leaves training as it was (the same final model as a run
/// without snapshots).
#[test]
fn snapshots_are_weights_only_policies_that_outlive_the_checkpoints() {
    let fixture = fixture();
    for lora in [None, Some(tiny_lora())] {
        let train = |snapshot_every: u64| {
            let run = tempfile::tempdir().unwrap();
            let config = PpoConfig {
                lora: lora.clone(),
                total_steps: 3,
                warmup_steps: 0,
                learning_rate: 1e-2,
                eval_every: 1,
                save_every: 1,
                snapshot_every,
                save_after: 2,
                ..config(RlType::DecisionBased)
            };
            PpoTrainer::new(
                &fixture.paths,
                Device::Cpu,
                &config,
                &prompts(),
                &prompts()[..2],
                &RunOptions::new(run.path()),
            )
            .unwrap()
            .train(None)
            .unwrap();
            run
        };
        let run = train(1);
        let snapshots = run.path().join(crate::run::SNAPSHOTS_DIR);
        let mut names: Vec<String> = std::fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["step-00000002", "step-00000003"]);
        assert!(!run.path().join("checkpoints").exists());
        let weights = |dir: &Path| {
            lincal_model::CausalLm::load(dir, Device::Cpu, None)
                .unwrap()
                .var_store()
                .variables()
        };
        let last = weights(&snapshots.join("step-00000003"));
        let final_weights = weights(&run.path().join("final"));
        assert_eq!(last.len(), final_weights.len());
        for (name, tensor) in &last {
            let gap = (tensor - &final_weights[name])
                .abs()
                .max()
                .double_value(&[]);
            assert!(gap < 1e-6, "{name}: {gap} (lora {})", lora.is_some());
        }
        Tokenizer::from_dir(&snapshots.join("step-00000002")).unwrap();
        let without = weights(&train(0).path().join("final"));
        for (name, tensor) in &final_weights {
            assert!(
                tensor.equal(&without[name]),
                "{name} (lora {})",
                lora.is_some()
            );
        }
    }
}

/// The LC reward on real (tiny) reader models equals the formula applied to what the
/// extractor said and the forecaster scored; the same seed extracts the same answers.
#[test]
fn the_decision_reward_combines_extraction_and_forecasts() {
    let fixture = fixture();
    let config = config(RlType::DecisionBased).reward;
    let dir = fixture.paths.answer_extractor.as_ref().unwrap();
    let forecaster =
        Rc::new(RewardModel::load(&fixture.paths.reward_model, Device::Cpu, None).unwrap());
    let tokenizer = Tokenizer::from_dir(&fixture.paths.reward_model).unwrap();
    let mut reward = DecisionReward::new(
        lincal_model::CausalLm::load(dir, Device::Cpu, None).unwrap(),
        Tokenizer::from_dir(dir).unwrap(),
        forecaster.clone(),
        Tokenizer::from_dir(&fixture.paths.reward_model).unwrap(),
        Templates::builtin().unwrap(),
        config.clone(),
    )
    .unwrap();
    let inputs = [
        RewardInput {
            question: "t40 t41",
            answer: "t50",
            paragraph: "t7 t8 t9",
        },
        RewardInput {
            question: "t42",
            answer: "t51",
            paragraph: "t10",
        },
    ];
    let context = ScoreContext {
        seed: 11,
        first_row: 0,
        evaluation: false,
    };
    let outputs = reward.score(&inputs, context).unwrap();
    assert_eq!(outputs, reward.score(&inputs, context).unwrap());
    let templates = Templates::builtin().unwrap();
    for (input, output) in inputs.iter().zip(&outputs) {
        let answers: Vec<String> =
            serde_json::from_value(output.details["answers"].clone()).unwrap();
        assert_eq!(
            answers,
            ExtractionParsing::Reference
                .candidates(output.details["extraction"].as_str().unwrap())
                .0
        );
        let candidates: Vec<String> = std::iter::once(input.answer.to_string())
            .chain(answers.iter().cloned())
            .collect();
        let texts: Vec<String> = candidates
            .iter()
            .map(|c| {
                templates
                    .forecast_probs_model(input.question, input.paragraph, c)
                    .unwrap()
            })
            .collect();
        let probabilities: Vec<f64> = forecaster
            .score_texts(&tokenizer, &texts, 1024, 64, BatchLimits::rows(7))
            .unwrap()
            .iter()
            .map(|&l| crate::sigmoid(f64::from(l)))
            .collect();
        let (expected, log_loss, normalization) =
            reward::decision_reward(probabilities[0], &probabilities[1..], &config);
        assert!(
            (output.reward - expected).abs() < 1e-6,
            "{output:?} vs {expected}"
        );
        assert!(
            (output.terms["log_loss"] - log_loss).abs() < 1e-6
                && (output.terms["normalization"] - normalization).abs() < 1e-6
        );
        assert_eq!(output.terms["answers"], answers.len() as f64);
    }
    // The Factuality reward thresholds the binary model's probability at 0.5.
    let mut binary = BinaryCorrectnessReward::new(
        forecaster.clone(),
        Tokenizer::from_dir(&fixture.paths.reward_model).unwrap(),
        Templates::builtin().unwrap(),
        config.clone(),
    )
    .unwrap();
    let outputs = binary.score(&inputs, context).unwrap();
    for (input, output) in inputs.iter().zip(&outputs) {
        let text = templates
            .binary_correctness_model(input.question, input.paragraph, input.answer)
            .unwrap();
        let logit = forecaster
            .score_texts(&tokenizer, &[text], 1024, 64, BatchLimits::rows(1))
            .unwrap()[0] as f64;
        assert_eq!(
            output.reward,
            if logit > 0.0 { 1.0 } else { 0.0 } + config.reward_offset
        );
    }
}

/// Padding as the reference (every response position counts) runs with responses padded to
/// `response_len`; long prompts are dropped from training and counted.
#[test]
fn reference_padding_and_dropped_prompts() {
    let fixture = fixture();
    let run = tempfile::tempdir().unwrap();
    let mut config = config(RlType::Factuality);
    config.reference_padding = true;
    config.total_steps = 1;
    let mut data = prompts();
    data.push(PpoPrompt {
        question_id: None,
        query: (3..40)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(" "),
        question: "t4".into(),
        answer: "t5".into(),
    });
    let mut trainer = PpoTrainer::new(
        &fixture.paths,
        Device::Cpu,
        &config,
        &data,
        &[],
        &RunOptions::new(run.path()),
    )
    .unwrap();
    assert_eq!(
        trainer.data_report(),
        &PpoDataReport {
            train_prompts: 12,
            dropped_long_prompts: 1,
            eval_prompts: 0
        }
    );
    trainer.train(None).unwrap();
    let record = &train_records(run.path())[0];
    assert!(
        record["policy_loss"].as_f64().unwrap().is_finite()
            && record["value_loss"].as_f64().unwrap().is_finite(),
        "{record}"
    );
}

#[test]
fn bad_settings_and_prompts_are_named() {
    let fixture = fixture();
    let run = tempfile::tempdir().unwrap();
    let err = PpoTrainer::new(
        &fixture.paths,
        Device::Cpu,
        &config(RlType::Factuality),
        &prompts()[..5],
        &[],
        &RunOptions::new(run.path()),
    )
    .err()
    .unwrap()
    .to_string();
    assert_eq!(
        err,
        "config field `rollout_batch_size`: is 8, but only 5 training prompts fit in query_len 40 \
         (0 longer ones dropped); give more prompts or lower rollout_batch_size"
    );
    let paths = PpoModelPaths {
        answer_extractor: None,
        ..fixture.paths.clone()
    };
    let err = PpoTrainer::new(
        &paths,
        Device::Cpu,
        &config(RlType::DecisionBased),
        &prompts(),
        &[],
        &RunOptions::new(run.path()),
    )
    .err()
    .unwrap()
    .to_string();
    assert_eq!(
        err,
        "config field `answer_extractor`: decision-based RL needs the ExtractAnswers model; \
         give its directory (or use rl_type = \"factuality\")"
    );
    let file = run.path().join("prompts.jsonl");
    std::fs::write(
        &file,
        "{\"query\": \"a\", \"question\": \"b\", \"answer\": \"c\"}\n\
         {\"query\": \"a\", \"question\": \"b\", \"answer\": \" \"}\n",
    )
    .unwrap();
    let err = PpoPrompt::read_jsonl(&file).unwrap_err().to_string();
    assert!(err.ends_with("prompts.jsonl:2: `answer` is empty"), "{err}");
    std::fs::write(&file, "{\"query\": \"a\", \"question\": \"b\"}\n").unwrap();
    let err = PpoPrompt::read_jsonl(&file).unwrap_err().to_string();
    assert!(
        err.contains("prompts.jsonl:1: missing field `answer`"),
        "{err}"
    );
}

/// The PPO step benchmark makes every model of a decision-based run from one causal LM (here
/// in LoRA mode) and times the trainer's step at the given geometry, with a profiler trace of
/// the timed step only.
#[test]
fn bench_times_one_step_at_the_given_geometry() {
    let fixture = fixture();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    let mut config = config(RlType::DecisionBased);
    config.rollout_batch_size = 4;
    config.step_batch_size = 4;
    config.query_len = 5;
    config.response_len = 3;
    config.lora = Some(tiny_lora());
    // The fused AdamW calls in the trace of the timed step after `warmup_steps`.
    let traced_updates = |warmup_steps: usize| {
        let steps = RlBenchSteps {
            warmup_steps,
            trace: Some(&trace),
        };
        let result = bench_ppo(&fixture.paths.policy, None, Device::Cpu, &config, steps).unwrap();
        let trace: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
        let updates = trace["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|event| event["name"] == "aten::_fused_adamw_")
            .count();
        (result, updates)
    };
    let (_, one_step) = traced_updates(0);
    let (result, updates) = traced_updates(1);
    assert!(one_step > 0);
    assert_eq!(updates, one_step, "the warm-up step is not traced");
    assert_eq!(
        (result.rollouts, result.query_len, result.response_len),
        (4, 5, 3)
    );
    assert!(
        result.generation_seconds > 0.0
            && result.reward_seconds > 0.0
            && result.update_seconds > 0.0
    );
    assert!(
        result.scoring_seconds >= result.reward_seconds
            && result.total_seconds
                >= result.generation_seconds + result.scoring_seconds + result.update_seconds
    );
    assert!(result.generated_tokens_per_second > 0.0);
    // LC's reward reports its two parts, which lie within the reward's time.
    let parts: Vec<&str> = result
        .reward_parts_seconds
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(parts, ["extraction", "forecast"]);
    let in_parts: f64 = result.reward_parts_seconds.values().sum();
    assert!(
        result.reward_parts_seconds.values().all(|&s| s > 0.0) && in_parts <= result.reward_seconds,
        "{:?} of {}",
        result.reward_parts_seconds,
        result.reward_seconds
    );
    // Trained: rank-4 adapters on q (32 → 32) and v (32 → 16) in 2 layers, for the policy and
    // the value backbone, 2 · 4 · (64 + 48) each, and the value head (32 weights, 1 bias).
    assert_eq!(result.trainable_parameters, 2 * 2 * 4 * (64 + 48) + 33);
    // The first step's policy is the reference and the rollouts' policy: both KLs are zero up
    // to the rounding of forward passes over differently shaped batches.
    assert!(
        result.first_step_kl.abs() < 1e-6 && result.first_step_approx_kl.abs() < 1e-6,
        "{} {}",
        result.first_step_kl,
        result.first_step_approx_kl
    );
    // The extractor's tokenizer has no pad token: it cannot stand in for every model.
    let err = bench_ppo(
        fixture.paths.answer_extractor.as_ref().unwrap(),
        None,
        Device::Cpu,
        &config,
        RlBenchSteps::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains(
            "tokenizer_config.json sets no pad_token; the benchmark uses this model as policy \
             and reward model"
        ),
        "{err}"
    );
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn ppo_trains_in_bf16_on_the_gpu() {
    let fixture = fixture();
    let run = tempfile::tempdir().unwrap();
    let mut config = config(RlType::DecisionBased);
    config.precision = Precision::Auto;
    config.total_steps = 3;
    config.eval_every = 2;
    let mut trainer = PpoTrainer::new(
        &fixture.paths,
        Device::Cuda(0),
        &config,
        &prompts(),
        &prompts()[..4],
        &RunOptions::new(run.path()),
    )
    .unwrap();
    assert_eq!(trainer.policy().kind(), tch::Kind::BFloat16);
    let summary = trainer.train(None).unwrap();
    eprintln!("gpu ppo: last step {:?}", summary.last_step);
    let record = &train_records(run.path())[0];
    // The first step's policy is the reference: KL zero up to bf16 rounding.
    assert!(record["kl"].as_f64().unwrap().abs() < 1e-3, "{record}");
    assert!(summary.final_dir.is_some());
}

/// The update's gradient checkpointing on the GPU in bf16 (LoRA mode, every layer of policy
/// and value model recomputed): the statistics of three steps (the value backbone's first
/// gradient comes in the second) are the plain update's, within bf16 rounding of the updated
/// weights.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn gradient_checkpointing_trains_as_the_plain_update_on_the_gpu() {
    let fixture = fixture();
    let mut config = config(RlType::DecisionBased);
    config.precision = Precision::Auto;
    config.lora = Some(tiny_lora());
    config.warmup_steps = 0;
    config.learning_rate = 1e-3;
    config.total_steps = 3;
    let train = |config: &PpoConfig| {
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = PpoTrainer::new(
            &fixture.paths,
            Device::Cuda(0),
            config,
            &prompts(),
            &[],
            &RunOptions::new(dir.path()),
        )
        .unwrap();
        assert_eq!(trainer.policy().kind(), tch::Kind::BFloat16);
        trainer.train(None).unwrap();
        dir
    };
    let plain = train(&config);
    let checkpointed = train(&PpoConfig {
        gradient_checkpointing: true,
        ..config
    });
    assert_same_statistics(plain.path(), checkpointed.path(), 1e-2);
}

/// One PPO step at the reference geometry (512 rollouts, 128 + 300 tokens) on SmolLM2-135M-
/// shaped random models in bf16, Factuality reward; the times are printed, not asserted.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn ppo_step_time_of_a_smollm2_shaped_model() {
    use crate::reward_model::HeadInit;
    use lincal_model::testing::write_tokenizer;
    let device = Device::Cuda(0);
    let shape = concat!(
        r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,"#,
        r#""num_hidden_layers":30,
        "num_attention_heads":9,"num_key_value_heads":3,"rms_norm_eps":1e-5,"#,
        r#""rope_theta":100000.0,"tie_word_embeddings":true,"eos_token_id":2}"#
    );
    let config = lincal_model::ModelConfig::from_json(shape).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer(dir.path(), 49151);
    let mut tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    tokenizer.add_special_token("pad_token", "[PAD]");
    tokenizer.save(dir.path()).unwrap();
    tch::manual_seed(0);
    let model = || lincal_model::CausalLm::new(config.clone(), device, tch::Kind::BFloat16);
    let reward_model = Rc::new(RewardModel::new(
        model(),
        HeadInit::Default { seed: 0 },
        "bench",
    ));
    let value = ValueModel::new(
        Rc::new(RewardModel::new(model(), HeadInit::Zero, "bench")),
        None,
    );
    let models = PpoModels::new(
        model(),
        None,
        Some(model()),
        value,
        Tokenizer::from_dir(dir.path()).unwrap(),
    )
    .unwrap();
    let ppo = PpoConfig::preset("factuality_ppo").unwrap();
    let mut reward = BinaryCorrectnessReward::new(
        reward_model,
        Tokenizer::from_dir(dir.path()).unwrap(),
        Templates::builtin().unwrap(),
        ppo.reward.clone(),
    )
    .unwrap();
    let steps = RlBenchSteps {
        warmup_steps: 1,
        trace: None,
    };
    let result = bench_ppo_step(models, &mut reward, &ppo, steps).unwrap();
    eprintln!(
        "bench ppo smollm2-135m bf16: {}",
        serde_json::to_string(&result).unwrap()
    );
    // The reference geometry ran, every part took time, and the first update started from the
    // rollouts' policy (the reference here is another random model: its KL is not zero).
    assert_eq!(
        (result.rollouts, result.query_len, result.response_len),
        (512, 128, 300)
    );
    assert!(
        result.generation_seconds > 0.0
            && result.scoring_seconds > 0.0
            && result.update_seconds > 0.0
    );
    assert!(
        result.first_step_approx_kl.abs() < 1e-2,
        "{}",
        result.first_step_approx_kl
    );
}

/// A loss that overflows stops the run at its step with an error that says what to do, before
/// it reaches the weights; the step before it stays logged.
#[test]
fn a_diverging_update_stops_the_run_and_names_the_step() {
    let fixture = fixture();
    let mut config = config(RlType::DecisionBased);
    config.warmup_steps = 0;
    config.learning_rate = 1e30;
    config.total_steps = 3;
    let dir = tempfile::tempdir().unwrap();
    let error = PpoTrainer::new(
        &fixture.paths,
        Device::Cpu,
        &config,
        &prompts(),
        &[],
        &RunOptions::new(dir.path()),
    )
    .unwrap()
    .train(None)
    .unwrap_err()
    .to_string();
    assert!(error.contains("diverged at step 2"), "{error}");
    assert!(error.contains("lower the learning rate"), "{error}");
    assert_eq!(train_records(dir.path()).len(), 1);
}
