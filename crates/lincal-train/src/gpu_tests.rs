//! GPU checks, run on a CUDA machine with `cargo test --features cuda -- --ignored`: bf16
//! mixed-precision training on the device, and training throughput of a SmolLM2-135M-shaped
//! model (printed, not asserted).

use crate::config::{Precision, RewardModelConfig, SftConfig};
use crate::data::{RewardExample, SftExample};
use crate::reward_model::{BatchLimits, HeadInit, RewardModel, RewardModelTrainer};
use crate::run::RunOptions;
use crate::sft::SftTrainer;
use crate::testutil::{quick_training, tiny_model_dir};
use lincal_model::{CausalLm, ModelConfig, Tokenizer};
use tch::{Device, Kind};

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_sft_and_reward_model_train_on_the_gpu() {
    let device = Device::Cuda(0);
    let model_dir = tiny_model_dir();
    let data: Vec<SftExample> = [
        ("t5 t6", " t20 t21 t22"),
        ("t7 t8 t9", " t23 t24"),
        ("t10", " t25 t26 t27 t28"),
        ("t11 t12", " t29"),
    ]
    .iter()
    .map(|(p, t)| SftExample {
        question_id: None,
        prompt: p.to_string(),
        target: t.to_string(),
    })
    .collect();
    let run = tempfile::tempdir().unwrap();
    let mut training = quick_training(1e-2, 60.0, 4, 2);
    training.precision = Precision::Auto;
    let config = SftConfig {
        model_max_length: 64,
        packing: false,
        pad_token: "[PAD]".into(),
        lora: None,
        training: training.clone(),
    };
    let mut trainer = SftTrainer::new(
        model_dir.path(),
        device,
        &config,
        &data,
        &data,
        &RunOptions::new(run.path()),
    )
    .unwrap();
    assert_eq!(trainer.model().kind(), Kind::BFloat16);
    let summary = trainer.train(None).unwrap();
    eprintln!("gpu sft: final eval loss {:?}", summary.eval);
    assert!(summary.eval[0].1 < 0.1);
    assert_eq!(
        CausalLm::load(summary.final_dir.as_ref().unwrap(), Device::Cpu, None)
            .unwrap()
            .kind(),
        Kind::Float
    );

    let examples: Vec<RewardExample> = [
        ("t5 t6 t7", 0.1),
        ("t8 t9", 0.35),
        ("t10 t11 t12 t13", 0.6),
        ("t14", 0.9),
    ]
    .iter()
    .map(|(t, l)| RewardExample {
        question_id: None,
        prompt: t.to_string(),
        label: *l,
    })
    .collect();
    let run = tempfile::tempdir().unwrap();
    let config = RewardModelConfig {
        model_max_length: 64,
        pad_token: "[PAD]".into(),
        lora: None,
        training: crate::config::TrainingConfig {
            epochs: 80.0,
            ..training
        },
    };
    let summary = RewardModelTrainer::new(
        model_dir.path(),
        device,
        &config,
        &examples,
        &examples,
        &RunOptions::new(run.path()),
    )
    .unwrap()
    .train(None)
    .unwrap();
    eprintln!("gpu reward model: final eval {:?}", summary.eval);
    assert!(
        summary
            .eval
            .iter()
            .find(|(n, _)| n == "eval_mse")
            .unwrap()
            .1
            < 5e-3
    );
}

/// Reward-model scoring with texts that begin alike sharing rows (segment masks through the
/// GPU's attention kernels) gives each text the logit it has alone, and the CPU's in f32.
#[test]
#[ignore = "needs a CUDA GPU"]
fn shared_prefix_scoring_equals_scoring_alone_on_the_gpu() {
    let backbone = lincal_model::testing::random_model(lincal_model::testing::tiny_llama(false), 9);
    let model = RewardModel::new(backbone, HeadInit::Default { seed: 1 }, "tiny");
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    lincal_model::testing::write_tokenizer(dir.path(), 64);
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    let texts: Vec<String> = [
        "t3 t4 t5 t6 t7 t8",
        "t3 t4 t5 t6 t9",
        "t3 t4 t5 t6 t7 t8 t10 t11",
        "t12 t13",
        "t3 t4 t5 t6",
    ]
    .map(String::from)
    .to_vec();
    // Four texts share a row, one of them all prefix.
    let rows = crate::data::tokenize_reward_texts(&tokenizer, &texts, 64).unwrap();
    assert_eq!(crate::data::pack_shared_prefixes(&rows, 64).len(), 2);
    let cpu = model
        .score_texts(&tokenizer, &texts, 64, 0, BatchLimits::rows(8))
        .unwrap();
    for (kind, tolerance) in [(Kind::Float, 1e-4), (Kind::BFloat16, 3e-2)] {
        let gpu = RewardModel::load(dir.path(), Device::Cuda(0), Some(kind)).unwrap();
        let shared = gpu
            .score_texts(&tokenizer, &texts, 64, 0, BatchLimits::rows(8))
            .unwrap();
        for (i, text) in texts.iter().enumerate() {
            let alone = gpu
                .score_texts(
                    &tokenizer,
                    std::slice::from_ref(text),
                    64,
                    0,
                    BatchLimits::rows(1),
                )
                .unwrap()[0];
            let (to_alone, to_cpu) = ((shared[i] - alone).abs(), (shared[i] - cpu[i]).abs());
            eprintln!("{kind:?} {text}: |shared - alone| {to_alone}, |shared - cpu f32| {to_cpu}");
            assert!(
                to_alone <= tolerance && to_cpu <= tolerance,
                "{kind:?} {text}"
            );
        }
    }
}

/// The sliced cross-entropy in bf16 on the GPU (logits written in f32 by cuBLAS, gradients
/// rounded to bf16 for the matmuls) against autograd's plain f32 loss of the same values.
#[test]
#[ignore = "needs a CUDA GPU"]
fn sliced_cross_entropy_in_bf16_on_the_gpu_equals_the_f32_loss() {
    let (loss, grad_h, grad_w) =
        crate::cross_entropy::tests::bf16_differences_from_f32(Device::Cuda(0));
    // f32 logits: the loss within f32's rounding; gradients rounded to bf16 once.
    assert!(loss < 1e-5, "loss differs by {loss:e}");
    assert!(
        grad_h < 1e-2 && grad_w < 1e-2,
        "gradients differ by {grad_h:e}, {grad_w:e}"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sft_throughput_of_a_smollm2_shaped_model() {
    let config = ModelConfig::from_json(concat!(
        r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,"#,
        r#""num_hidden_layers":30,
        "num_attention_heads":9,"num_key_value_heads":3,"rms_norm_eps":1e-5,"#,
        r#""rope_theta":100000.0,"tie_word_embeddings":true}"#,
    ))
    .unwrap();
    tch::manual_seed(0);
    let model = CausalLm::new(config, Device::Cuda(0), Kind::BFloat16);
    for (batch, len) in [(8, 1024), (16, 1024)] {
        let settings = crate::bench::SftBenchSettings {
            batch_size: batch,
            seq_len: len,
            steps: 10,
            warmup_steps: 3,
            recomputed: None,
            master_weights: true,
            trace: None,
        };
        let result = crate::bench::bench_sft(&model, &settings).unwrap();
        eprintln!(
            "bench sft smollm2-135m bf16 batch {batch} x {len}: {}",
            serde_json::to_string(&result).unwrap()
        );
        // The timed steps trained every token of the batch, in a positive time.
        assert_eq!((result.steps, result.tokens_per_step), (10, batch * len));
        assert!(result.seconds_per_step > 0.0 && result.tokens_per_second.is_finite());
        assert_eq!(result.parameters, 134_515_008);
    }
}

/// NCCL through the data-parallel communicator as a job of one rank (a job of several needs
/// several GPUs): the library loads from PyTorch's wheel, the unique id reaches
/// `ncclCommInitRank`, and all-reduce, an in-place all-gather and the barrier run on device
/// tensors of three kinds.
#[test]
#[ignore = "needs a CUDA GPU"]
fn nccl_collectives_run_in_a_job_of_one() {
    use crate::distributed::{Communicator, NcclRank};
    let device = Device::Cuda(0);
    let comm = NcclRank::connect(0, 1, "127.0.0.1:29511").unwrap();
    for kind in [Kind::Float, Kind::BFloat16, Kind::Double] {
        let values = tch::Tensor::from_slice(&[1.5f32, -2.0, 4.0]).to_kind(kind);
        let mut summed = values.to_device(device);
        comm.all_reduce_sum(&mut summed).unwrap();
        assert!(summed.to_device(Device::Cpu).equal(&values), "{kind:?}");
        let mut full = tch::Tensor::zeros([3], (kind, device));
        comm.all_gather(&values.to_device(device), &mut full)
            .unwrap();
        assert!(full.to_device(Device::Cpu).equal(&values), "{kind:?}");
        let mut whole = values.to_device(device);
        comm.all_gather(&whole.shallow_clone(), &mut whole).unwrap();
        assert!(
            whole.to_device(Device::Cpu).equal(&values),
            "in place, {kind:?}"
        );
    }
    comm.barrier().unwrap();
    let error = comm
        .all_reduce_sum(&mut tch::Tensor::from_slice(&[1.0f32]))
        .unwrap_err();
    assert!(
        error.to_string().contains("needs a contiguous GPU tensor"),
        "{error}"
    );
}

/// An offloaded model's weights wait in pinned host memory and their device memory goes back
/// to the driver; reloaded, the model decodes (CUDA graphs, joined projections) exactly the
/// tokens it did, also after generating with its adapters merged (which offloads it). 8
/// layers of a 1024-wide Llama with LoRA on q and v: 0.24 GiB in bf16, far above the
/// driver's granularity.
#[test]
#[ignore = "needs a CUDA GPU"]
fn an_offloaded_model_frees_its_memory_and_decodes_as_before_once_reloaded() {
    use crate::memory::device_memory;
    use lincal_model::{BatchRequest, SamplingParams, generate_batch};
    let gpu = Device::Cuda(0);
    let config = ModelConfig::from_json(
        r#"{"model_type":"llama","vocab_size":4096,"hidden_size":1024,
        "intermediate_size":4096,"num_hidden_layers":8,"num_attention_heads":8,
        "num_key_value_heads":8,"tie_word_embeddings":false}"#,
    )
    .unwrap();
    let lora = lincal_model::lora::LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
    };
    let (model, adapters) = lincal_model::lora::with_lora(&lora, gpu, 1, || {
        Ok(CausalLm::new(config, gpu, Kind::BFloat16))
    })
    .unwrap();
    tch::no_grad(|| {
        for (name, var) in adapters.var_store().variables() {
            if name.contains("lora_B") {
                var.shallow_clone().copy_(&(var.randn_like() * 0.02));
            }
        }
    });
    let weights = model.var_store().variables();
    let bytes: i64 = weights.values().map(|t| t.numel() as i64 * 2).sum();
    let prompts = vec![vec![3i64, 4, 5], (10..40).collect()];
    let params = SamplingParams {
        temperature: 1.0,
        max_new_tokens: 64,
        ..Default::default()
    };
    let decode = || {
        generate_batch(&model, &BatchRequest::new(&prompts, &[7, 8], &params), None)
            .unwrap()
            .tokens
    };
    let before = decode();
    model.keep_host_copy().unwrap();
    let free = || device_memory(gpu).unwrap().free as i64;
    let resident = free();
    model.offload();
    let freed = free() - resident;
    assert!(freed >= bytes * 9 / 10, "{freed} of {bytes} bytes freed");
    assert!(
        weights
            .values()
            .all(|t| t.device() == Device::Cpu && t.is_pinned(gpu))
    );
    model.reload();
    assert!(weights.values().all(|t| t.device() == gpu));
    assert!(
        decode().equal(&before),
        "the reloaded model decodes as before"
    );
    let merged = model.with_merged_adapters(&adapters, decode).unwrap();
    assert!(model.is_offloaded());
    model.reload();
    assert!(
        decode().equal(&before),
        "the base is back after merged generation"
    );
    let same = f64::try_from(
        merged
            .eq_tensor(&before)
            .to_kind(Kind::Float)
            .mean(Kind::Float),
    );
    eprintln!(
        "merged generation: {:?} of the tokens as with the adapters apart",
        same
    );
}
