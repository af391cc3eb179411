//! The GPU's fast paths against the plain ones, on tiny random models: CUDA-graph decoding
//! against eager decoding, the flash-attention path (no mask) against the masked one, the
//! GPU forward against the CPU's, lincal's kernels and joined projections against PyTorch's
//! operations, a prefill in passes against one pass. Compiled with the `cuda` feature only; `cargo xtask
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

/// The rotary kernel against PyTorch's operations on the GPU, forward and backward, bit for
/// bit: in f32, bf16 and f16; in Llama's [B, T, heads, D] layout with the tables' axes
/// swapped and in the [B, heads, T, D] layout of a strided slice (GPT-NeoX's fused
/// projection), each with full and partial rotation; with one row's tables broadcast over the
/// batch, and with a non-contiguous upstream gradient. Inputs the kernel does not take fall
/// back for that call only.
#[test]
#[ignore = "needs a CUDA GPU"]
fn rotary_kernel_equals_pytorch_operations_bit_for_bit() {
    use lincal_model::kernels;
    use lincal_model::layers::{apply_rotary_unfused, rotary_cos_sin, rotary_inv_freq};
    tch::manual_seed(11);
    let positions =
        Tensor::from_slice2(&[[0i64, 1, 2, 7, 300, 9], [5, 6, 9, 11, 4095, 0]]).to_device(GPU);
    let cases = [
        (64, 64, true, false),
        (64, 64, false, false),
        (24, 16, false, false),
        (24, 16, true, false),
        (64, 64, true, true),
    ];
    for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
        for (head_dim, rotary_dim, bthd, one_row_tables) in cases {
            let inv_freq = rotary_inv_freq(rotary_dim, 10_000.0, None);
            let inv_freq = Tensor::from_slice(&inv_freq)
                .to_kind(Kind::Float)
                .to_device(GPU);
            let rows = if one_row_tables { 1 } else { 2 };
            let (cos, signed_sin) = rotary_cos_sin(&inv_freq, &positions.narrow(0, 0, rows), kind);
            // A projection's output: 3 heads of `head_dim`, then a strided slice of each head.
            let projection =
                Tensor::randn([2, 6, 3, 2 * head_dim], (kind, GPU)).set_requires_grad(true);
            let (x, cos, signed_sin) = if bthd {
                (
                    projection.narrow(-1, 0, head_dim),
                    cos.transpose(1, 2),
                    signed_sin.transpose(1, 2),
                )
            } else {
                (
                    projection.narrow(-1, head_dim, head_dim).transpose(1, 2),
                    cos,
                    signed_sin,
                )
            };
            let upstream = Tensor::randn(
                [x.size()[3], x.size()[0], x.size()[1], x.size()[2]],
                (kind, GPU),
            )
            .permute([1, 2, 3, 0]);
            let run = |rotate: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor| {
                let out = rotate(&x, &cos, &signed_sin);
                let grad = Tensor::run_backward(
                    &[(&out * &upstream).sum(Kind::Float)],
                    &[&projection],
                    false,
                    false,
                );
                (out.detach(), grad[0].shallow_clone())
            };
            let (fused, fused_grad) = run(&|x: &Tensor, cos: &Tensor, sin: &Tensor| {
                kernels::rotary(x, cos, sin).expect("the rotary kernel ran")
            });
            let (plain, plain_grad) = run(&apply_rotary_unfused);
            let case = format!(
                "{kind:?}, head {head_dim}, rotary {rotary_dim}, [B, T, H, D] {bthd}, \
                 one row's tables {one_row_tables}"
            );
            assert_eq!(fused.size(), plain.size(), "{case}");
            for (what, a, b) in [
                ("outputs", &fused, &plain),
                ("gradients", &fused_grad, &plain_grad),
            ] {
                assert!(
                    a.to_kind(Kind::Float).equal(&b.to_kind(Kind::Float)),
                    "{case}: {what} differ by {}",
                    max_abs_diff(a, b)
                );
            }
            // The rotation moved something: the test would pass for a kernel that copies.
            assert!(max_abs_diff(&fused, &x) > 0.1, "{case}");
        }
    }
    let inv_freq = Tensor::from_slice(&rotary_inv_freq(8, 10_000.0, None)).to_device(GPU);
    let (cos, sin) = rotary_cos_sin(&inv_freq.to_kind(Kind::Float), &positions, Kind::Double);
    let x = Tensor::randn([2, 1, 6, 8], (Kind::Double, GPU));
    assert!(kernels::rotary(&x, &cos, &sin).is_none(), "no f64 kernel");
    let (cos, sin) = (cos.to_kind(Kind::Float), sin.to_kind(Kind::Float));
    let x = x.to_kind(Kind::Float);
    let cos_with_grad = cos.copy().set_requires_grad(true);
    assert!(
        kernels::rotary(&x, &cos_with_grad, &sin).is_none(),
        "tables with gradients"
    );
    assert!(
        kernels::rotary(&x, &cos, &sin).is_some(),
        "refusals must not turn it off"
    );
}

/// On the GPU too a generation's passes, which compute a Llama layer's q, k, v and gate, up
/// as one product each over weights loaded back to back, give the logits of passes that
/// compute them one by one: within f32 rounding, and in bf16 within its rounding (cuBLAS may
/// pick another kernel for the wider product).
#[test]
#[ignore = "needs a CUDA GPU"]
fn joined_projections_equal_separate_ones_on_the_gpu() {
    for (kind, tolerance) in [(Kind::Float, 1e-5), (Kind::BFloat16, 3e-2)] {
        let model = gpu_model(tiny_llama(false), kind);
        let vars = model.var_store().variables();
        let (q, k) = (
            &vars["model.layers.1.self_attn.q_proj.weight"],
            &vars["model.layers.1.self_attn.k_proj.weight"],
        );
        assert_eq!(
            q.data_ptr() as usize + q.numel() * kind.elt_size_in_bytes(),
            k.data_ptr() as usize,
            "q and k lie back to back after loading on the GPU"
        );
        let ids = ids(GPU);
        let separate = logits(&model, &ids, None);
        let joined = lincal_model::lora::with_frozen_adapters(|| logits(&model, &ids, None));
        let diff = max_abs_diff(&separate, &joined);
        println!("{kind:?}: joined vs separate logits {diff}");
        assert!(diff < tolerance, "{kind:?}: {diff}");
    }
}

/// 60 prompts of 300 tokens prefill in two passes (`PREFILL_TOKENS` holds 54 such rows), the
/// last 10 alone in one: rows 50–59 decode the same greedy tokens either way, log-probs
/// within f32 rounding (1e-4), in the first pass's rows and the second's.
#[test]
#[ignore = "needs a CUDA GPU"]
fn prefill_passes_decode_as_one_pass_on_the_gpu() {
    use lincal_model::generate::PREFILL_TOKENS;
    let model = gpu_model(tiny_llama(false), Kind::Float);
    let prompts: Vec<Vec<i64>> = (0..60)
        .map(|row| (0..300).map(|i| (i * 7 + row * 13 + 3) % 64).collect())
        .collect();
    assert_eq!(PREFILL_TOKENS / 300, 54);
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 8,
        ..Default::default()
    };
    let generate = |prompts: &[Vec<i64>]| {
        let seeds: Vec<u64> = (0..prompts.len() as u64).collect();
        generate_batch(&model, &BatchRequest::new(prompts, &seeds, &params), None).unwrap()
    };
    let (all, last) = (generate(&prompts), generate(&prompts[50..]));
    let rows = all.tokens.narrow(0, 50, 10);
    assert!(rows.equal(&last.tokens), "the tokens differ");
    let diff = max_abs_diff(&all.logprobs.narrow(0, 50, 10), &last.logprobs);
    assert!(diff <= 1e-4, "log-probs differ by {diff}");
}
