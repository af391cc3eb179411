//! Causal-LM cross-entropy computed a slice of rows at a time, so that the f32 logits of a
//! whole batch (16 × 1024 tokens × 49,152 entries is 3.2 GB for SmolLM2, before autograd keeps
//! its copies) never sit in memory at once.
//!
//! Autograd would keep every slice's logits for the backward pass, so the gradients are
//! computed here, in the forward pass, while a slice's logits exist: with p = softmax(z) and y
//! the one-hot target, d(loss)/dz = p − y, d/dh = (p − y) W and d/dW = (p − y)ᵀ h. The result
//! is a scalar whose value is the summed loss and whose gradient with respect to the hidden
//! states and the output weight is the one just computed (a detached-gradient surrogate), so
//! callers back-propagate it like any loss. This is the idea of Liger's fused linear
//! cross-entropy, written with plain tensor operations.

use tch::{Kind, Tensor};

/// Bytes of f32 logits that one slice may hold; the slice's working set is a few times this.
const SLICE_LOGIT_BYTES: i64 = 256 << 20;

/// Rows per slice for a vocabulary of `vocab` entries (at least 1).
pub fn rows_per_slice(vocab: i64) -> i64 {
    (SLICE_LOGIT_BYTES / (4 * vocab.max(1))).max(1)
}

/// Sum over rows of −log softmax(h Wᵀ)[target] for hidden states `hidden` `[N, H]`, output
/// weight `weight` `[V, H]` and `targets` `[N]` (every target a valid token id), in f32 as
/// transformers upcasts logits before its loss (on a GPU the logits of bf16 or f16 inputs are
/// not rounded to that kind first, as transformers' are). The logits are formed `rows` rows
/// at a time.
///
/// Back-propagating the result gives `hidden` and `weight` (where they require grad) the
/// gradient of the plain `cross_entropy_loss(.., Reduction::Sum)` of the full logits.
pub fn cross_entropy_sum(hidden: &Tensor, weight: &Tensor, targets: &Tensor, rows: i64) -> Tensor {
    // Under `no_grad` (evaluation) the inputs require no grad and only the value is formed.
    let (hidden_grad, weight_grad) = (hidden.requires_grad(), weight.requires_grad());
    let count = hidden.size()[0];
    let rows = rows.max(1);
    let (loss, grad_hidden, grad_weight) = tch::no_grad(|| {
        let mut loss = Tensor::zeros([], (Kind::Float, hidden.device()));
        let mut grad_hidden = Vec::new();
        let mut grad_weight =
            weight_grad.then(|| Tensor::zeros(weight.size(), (Kind::Float, weight.device())));
        let (hidden, weight) = (hidden.detach(), weight.detach());
        let mut start = 0;
        while start < count {
            let len = rows.min(count - start);
            let h = hidden.narrow(0, start, len);
            let target = targets.narrow(0, start, len).unsqueeze(1);
            let log_probs = f32_product(&h, &weight.tr(), None).log_softmax(-1, Kind::Float);
            let target_log_probs = log_probs.gather(1, &target, false);
            loss -= target_log_probs.sum(Kind::Float);
            if hidden_grad || weight_grad {
                // p − y in the hidden states' kind for the two matmuls, as autograd would
                // round it: p is written in that kind straight from the log-probabilities,
                // then each target's entry becomes p − 1 = expm1(log p) computed in f32
                // (rounding p first would lose p − 1's digits where p is near 1).
                let mut grad_logits =
                    Tensor::empty([len, log_probs.size()[1]], (h.kind(), h.device()));
                let _ = log_probs.exp_out(&grad_logits);
                let target_grad = target_log_probs.expm1().to_kind(h.kind());
                let _ = grad_logits.scatter_(1, &target, &target_grad);
                if hidden_grad {
                    grad_hidden.push(grad_logits.matmul(&weight));
                }
                if let Some(grad_weight) = grad_weight.as_mut() {
                    *grad_weight = f32_product(&grad_logits.tr(), &h, Some(grad_weight));
                }
            }
            start += len;
        }
        let grad_hidden = hidden_grad.then(|| Tensor::cat(&grad_hidden, 0));
        (loss, grad_hidden, grad_weight)
    });
    let mut surrogate: Option<Tensor> = None;
    for (input, grad) in [(hidden, grad_hidden), (weight, grad_weight)] {
        if let Some(grad) = grad {
            let term = (input * grad).sum(Kind::Float);
            surrogate = Some(match surrogate {
                Some(sum) => sum + term,
                None => term,
            });
        }
    }
    match surrogate {
        // The surrogate's value cancels exactly (x − x = 0); its gradient is the one above.
        Some(surrogate) => &surrogate - surrogate.detach() + loss,
        None => loss,
    }
}

/// `a b` (plus `accumulator`) in f32. Products of bf16 or f16 matrices accumulate in f32 on
/// the GPU anyway: cuBLAS writes them as f32 directly, a pass less than rounding to the
/// inputs' kind and casting back (and no rounding). Elsewhere the product is cast.
fn f32_product(a: &Tensor, b: &Tensor, accumulator: Option<&Tensor>) -> Tensor {
    if a.device().is_cuda() && matches!(a.kind(), Kind::BFloat16 | Kind::Half) {
        return match accumulator {
            Some(sum) => sum.addmm_dtype(a, b, Kind::Float),
            None => a.mm_dtype(b, Kind::Float),
        };
    }
    let product = a.matmul(b).to_kind(Kind::Float);
    match accumulator {
        Some(sum) => sum + product,
        None => product,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tch::{Device, Reduction};

    fn inputs(seed: i64) -> (Tensor, Tensor, Tensor) {
        tch::manual_seed(seed);
        let hidden = Tensor::randn([11, 6], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let weight = Tensor::randn([19, 6], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let targets = Tensor::randint(19, [11], (Kind::Int64, Device::Cpu));
        (hidden, weight, targets)
    }

    fn plain(hidden: &Tensor, weight: &Tensor, targets: &Tensor) -> Tensor {
        hidden.matmul(&weight.tr()).cross_entropy_loss::<Tensor>(
            targets,
            None,
            Reduction::Sum,
            -100,
            0.0,
        )
    }

    fn clear_grad(t: &Tensor) {
        let mut grad = t.grad();
        if grad.defined() {
            let _ = grad.zero_();
        }
    }

    fn grads(loss: &Tensor, hidden: &Tensor, weight: &Tensor) -> (Tensor, Tensor) {
        clear_grad(hidden);
        clear_grad(weight);
        // Scaled as the trainers divide a micro-batch's loss before backward.
        (loss / 3.0).backward();
        (hidden.grad().copy(), weight.grad().copy())
    }

    fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{what}: max difference {diff}");
    }

    /// Relative differences (loss, hidden gradient, weight gradient) of the loss of bf16
    /// inputs on `device` from autograd's plain loss of the same values computed on the CPU
    /// in f32.
    pub(crate) fn bf16_differences_from_f32(device: Device) -> (f64, f64, f64) {
        tch::manual_seed(11);
        let (rows, hidden, vocab) = (300, 64, 5000);
        let h =
            (Tensor::randn([rows, hidden], (Kind::Float, device)) * 2.0).to_kind(Kind::BFloat16);
        let w =
            (Tensor::randn([vocab, hidden], (Kind::Float, device)) * 0.3).to_kind(Kind::BFloat16);
        let targets = Tensor::randint(vocab, [rows], (Kind::Int64, device));
        let on_cpu = |t: &Tensor| t.to_kind(Kind::Double).to_device(Device::Cpu);
        let grads_of = |loss: &Tensor, h: &Tensor, w: &Tensor| {
            loss.backward();
            (on_cpu(loss), on_cpu(&h.grad()), on_cpu(&w.grad()))
        };
        let (h32, w32) = (
            h.to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .set_requires_grad(true),
            w.to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .set_requires_grad(true),
        );
        let want = grads_of(
            &plain(&h32, &w32, &targets.to_device(Device::Cpu)),
            &h32,
            &w32,
        );
        let (hb, wb) = (h.set_requires_grad(true), w.set_requires_grad(true));
        // Uneven slices of 7 rows, so that several slices run.
        let got = grads_of(&cross_entropy_sum(&hb, &wb, &targets, 7), &hb, &wb);
        let relative = crate::testutil::relative_difference;
        let loss = relative(&got.0, &want.0);
        let (grad_h, grad_w) = (relative(&got.1, &want.1), relative(&got.2, &want.2));
        eprintln!(
            "{device:?}: relative differences: loss {loss:e}, gradients {grad_h:e}, {grad_w:e}"
        );
        (loss, grad_h, grad_w)
    }

    /// On the CPU the logits are rounded to bf16 before their f32 loss (as transformers'
    /// bf16 head does), which moves the loss by a few 1e-5 and each softmax entry by up to
    /// 2^-8 of its logit; the gradients are rounded to bf16 for the matmuls.
    #[test]
    fn bf16_inputs_give_the_f32_loss_and_gradients_within_rounding() {
        let (loss, grad_h, grad_w) = bf16_differences_from_f32(Device::Cpu);
        assert!(loss < 1e-4, "loss differs by {loss:e}");
        assert!(
            grad_h < 2e-2 && grad_w < 2e-2,
            "gradients differ by {grad_h:e}, {grad_w:e}"
        );
    }

    /// Where the target's probability is near 1, its gradient entry p − 1 is far smaller than
    /// p: computed in f32 it survives the rounding to bf16 (p = 0.99986 rounds to 1, and
    /// bf16(p) − 1 would be 0, so the hidden state's gradient would vanish).
    #[test]
    fn a_confident_target_keeps_its_gradient_in_bf16() {
        let hidden = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let weight = Tensor::from_slice(&[10.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).view([4, 2]);
        let targets = Tensor::from_slice(&[0i64]);
        // p = e^10 / (e^10 + 3); the hidden gradient is (p − 1) · 10 in its first entry.
        let p = 10f64.exp() / (10f64.exp() + 3.0);
        let want = (p - 1.0) * 10.0;
        let h = hidden.to_kind(Kind::BFloat16).set_requires_grad(true);
        let w = weight.to_kind(Kind::BFloat16);
        cross_entropy_sum(&h, &w, &targets, 1).backward();
        let got = h.grad().to_kind(Kind::Double).double_value(&[0, 0]);
        assert!(
            (got - want).abs() < 1e-2 * want.abs(),
            "{got} against {want}"
        );
    }

    #[test]
    fn slices_give_the_plain_loss_and_gradients() {
        let (hidden, weight, targets) = inputs(3);
        let expected = plain(&hidden, &weight, &targets);
        let (want_h, want_w) = grads(&expected, &hidden, &weight);
        // One row, uneven slices, exactly the rows, and more than the rows.
        for rows in [1, 4, 11, 64] {
            let loss = cross_entropy_sum(&hidden, &weight, &targets, rows);
            assert_close(&loss, &expected, &format!("loss with {rows} rows a slice"));
            let (got_h, got_w) = grads(&loss, &hidden, &weight);
            assert_close(&got_h, &want_h, &format!("hidden gradient, {rows} rows"));
            assert_close(&got_w, &want_w, &format!("weight gradient, {rows} rows"));
        }
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_the_hidden_states_still_do() {
        let (hidden, weight, targets) = inputs(5);
        let expected = plain(&hidden, &weight, &targets);
        let (want_h, _) = grads(&expected, &hidden, &weight);
        let frozen = weight.detach();
        let loss = cross_entropy_sum(&hidden, &frozen, &targets, 4);
        clear_grad(&hidden);
        (&loss / 3.0).backward();
        assert_close(&hidden.grad(), &want_h, "hidden gradient");
        assert!(!frozen.grad().defined());
    }

    #[test]
    fn the_value_is_the_hand_computed_loss() {
        // Two rows over a vocabulary of 2 with an identity head: logits are the hidden states.
        let hidden = Tensor::from_slice(&[0.0f32, 0.0, 2.0, 0.0]).reshape([2, 2]);
        let weight = Tensor::eye(2, (Kind::Float, Device::Cpu));
        let targets = Tensor::from_slice(&[1i64, 0]);
        let loss = cross_entropy_sum(&hidden, &weight, &targets, 1).double_value(&[]);
        let expected = 2f64.ln() + (1.0 + (-2f64).exp()).ln();
        assert!((loss - expected).abs() < 1e-6, "{loss} against {expected}");
    }

    #[test]
    fn without_grad_it_is_the_value_alone() {
        let (hidden, weight, targets) = inputs(7);
        let expected = plain(&hidden, &weight, &targets).double_value(&[]);
        let loss = tch::no_grad(|| cross_entropy_sum(&hidden, &weight, &targets, 2));
        assert!(!loss.requires_grad());
        assert!((loss.double_value(&[]) - expected).abs() < 1e-4);
    }

    #[test]
    fn slices_are_sized_from_the_vocabulary() {
        assert_eq!(rows_per_slice(32_000), (256 << 20) / (4 * 32_000));
        assert_eq!(rows_per_slice(1 << 40), 1);
    }
}
