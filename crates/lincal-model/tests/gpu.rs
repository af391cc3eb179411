//! The GPU's fast paths against the plain ones, on tiny random models: CUDA-graph decoding
//! against eager decoding, the flash-attention path (no mask) against the masked one, and the
//! GPU forward against the CPU's. Compiled with the `cuda` feature only; `cargo xtask
//! gpu-build` puts this binary in `.gpu/tests/` and `bench/gpu/test.sh` runs it on the device
//! machine.
#![cfg(feature = "cuda")]

use lincal_model::generate::{BatchRequest, SamplingParams, generate_batch};
use lincal_model::layers::attention_mask;
use lincal_model::testing::*;
use lincal_model::{CausalLm, ModelConfig};
use tch::{Device, Kind, Tensor};

const GPU: Device = Device::Cuda(0);

/// `config` with random weights, on the GPU in `kind`.
fn gpu_model(config: ModelConfig, kind: Kind) -> CausalLm {
    let dir = tempfile::tempdir().unwrap();
    random_model(config, 5)
        .save(dir.path(), usize::MAX)
        .unwrap();
    CausalLm::load(dir.path(), GPU, Some(kind)).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
        .abs()
        .max()
        .double_value(&[])
}

fn logits(model: &CausalLm, ids: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let positions = Tensor::arange(ids.size()[1], (Kind::Int64, ids.device()))
        .unsqueeze(0)
        .expand_as(ids);
    tch::no_grad(|| model.logits(&model.forward(ids, &positions, mask, None)))
}

fn ids(device: Device) -> Tensor {
    Tensor::from_slice(&(0..80).map(|i| (i * 7 + 3) % 64).collect::<Vec<i64>>())
        .view([2, 40])
        .to_device(device)
}

/// 300 sampled tokens of a left-padded batch cross two 128-slot windows (three graphs). The
/// graphs replay the kernels eager decoding launches: the same tokens, and in f32 the same
/// log-probs bit for bit; in bf16 within 1e-2.
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_graph_decoding_equals_eager_decoding() {
    for kind in [Kind::Float, Kind::BFloat16] {
        for config in [tiny_llama(false), tiny_neox()] {
            let mut model = gpu_model(config, kind);
            let prompts = vec![vec![3i64, 4, 5], (10..20).collect::<Vec<i64>>()];
            let params = SamplingParams {
                temperature: 1.0,
                max_new_tokens: 300,
                ..Default::default()
            };
            let mut decode = |graphs: bool| {
                model.set_cuda_graphs(graphs);
                generate_batch(&model, &BatchRequest::new(&prompts, &[7, 8], &params), None)
                    .unwrap()
            };
            let (eager, graphed) = (decode(false), decode(true));
            assert!(
                eager.tokens.equal(&graphed.tokens),
                "{kind:?}: the tokens differ"
            );
            assert_eq!(eager.lengths, vec![300, 300]);
            let diff = max_abs_diff(&eager.logprobs, &graphed.logprobs);
            let tolerance = if kind == Kind::Float { 0.0 } else { 1e-2 };
            assert!(diff <= tolerance, "{kind:?}: log-probs differ by {diff}");
        }
    }
}

/// Plain causal attention goes to PyTorch's flash kernel, a mask to another one: the same
/// logits within f32 rounding (1e-5) or bf16 rounding (logits of size ~2, 5e-2).
#[test]
#[ignore = "needs a CUDA GPU"]
fn flash_attention_equals_masked_attention() {
    for (kind, tolerance) in [(Kind::Float, 1e-5), (Kind::BFloat16, 5e-2)] {
        for config in [tiny_llama(true), tiny_neox()] {
            let model = gpu_model(config, kind);
            let ids = ids(GPU);
            let all = Tensor::ones(ids.size(), (Kind::Int64, GPU));
            let mask = attention_mask(&all, 0, ids.size()[1]);
            let diff = max_abs_diff(
                &logits(&model, &ids, None),
                &logits(&model, &ids, Some(&mask)),
            );
            assert!(diff <= tolerance, "{kind:?}: logits differ by {diff}");
        }
    }
}

/// The GPU computes the CPU's logits in f32 (matmuls without TF32), within 1e-5 of logits of
/// size ~2, with and without a mask.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_forward_equals_cpu_forward_in_f32() {
    let mut errors = Vec::new();
    for config in [tiny_llama(false), tiny_llama(true), tiny_neox()] {
        let cpu = random_model(config.clone(), 5);
        let gpu = gpu_model(config, Kind::Float);
        let cpu_ids = ids(Device::Cpu);
        let all = Tensor::ones(cpu_ids.size(), (Kind::Int64, Device::Cpu));
        let mask = attention_mask(&all, 0, cpu_ids.size()[1]);
        errors.push((
            max_abs_diff(
                &logits(&cpu, &cpu_ids, None),
                &logits(&gpu, &ids(GPU), None).to_device(Device::Cpu),
            ),
            max_abs_diff(
                &logits(&cpu, &cpu_ids, Some(&mask)),
                &logits(&gpu, &ids(GPU), Some(&mask.to_device(GPU))).to_device(Device::Cpu),
            ),
        ));
    }
    eprintln!("gpu vs cpu logits (plain, masked): {errors:?}");
    assert!(
        errors
            .iter()
            .all(|&(plain, masked)| plain <= 1e-5 && masked <= 1e-5),
        "{errors:?}"
    );
}

/// PyTorch's attention kernels on the GPU (causal, and with lincal's boolean mask) against
/// attention written out (softmax(QKᵀ/√d + mask)·V), for head sizes 8 (the tiny models') to 128.
#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_kernels_equal_written_out_attention() {
    let mut errors = Vec::new();
    for head_dim in [8i64, 16, 64, 128] {
        let _rng = lincal_model::lock_libtorch_rng();
        tch::manual_seed(head_dim);
        let shape = [2, 4, 40, head_dim];
        let (q, k, v) = (
            Tensor::randn(shape, (Kind::Float, GPU)),
            Tensor::randn(shape, (Kind::Float, GPU)),
            Tensor::randn(shape, (Kind::Float, GPU)),
        );
        let causal = Tensor::ones([40, 40], (Kind::Bool, GPU)).tril(0);
        let scores = q.matmul(&k.transpose(-2, -1)) / (head_dim as f64).sqrt();
        let written = scores
            .masked_fill(&causal.logical_not(), f64::NEG_INFINITY)
            .softmax(-1, Kind::Float)
            .matmul(&v);
        let flash = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            true,
            None,
            false,
        );
        let masked = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(causal.view([1, 1, 40, 40])),
            0.0,
            false,
            None,
            false,
        );
        errors.push((
            head_dim,
            max_abs_diff(&flash, &written),
            max_abs_diff(&masked, &written),
        ));
    }
    eprintln!("attention kernels vs written out (head dim, causal, masked): {errors:?}");
    assert!(
        errors.iter().all(|&(_, a, b)| a <= 1e-5 && b <= 1e-5),
        "{errors:?}"
    );
}
