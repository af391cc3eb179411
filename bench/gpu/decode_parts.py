# Where a decode step spends its time, piece by piece, for the Llama-2-7B shape at batch 256:
# attention over the KV cache as lincal runs it (SDPA with an additive mask over a window of
# the [B, H, capacity, D] cache), the same attention by other kernels, the step's matrix
# products; then lincal's sampling step (generate.rs `sample_next`, the same operations) at
# that shape and at the SmolLM2 extractor's (512 rows of 49,152), with and without top-p.
# Prints one JSON line per measurement and appends them to the file given.
# usage: python3 decode_parts.py OUT.jsonl
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import timing
from timing import reporter

B, H, D, LAYERS, HIDDEN, FFN, VOCAB = 256, 32, 128, 32, 4096, 11008, 32000
PROMPT, NEW = 128, 300
CAPACITY = PROMPT + NEW
dev, kind = "cuda", torch.bfloat16
report = reporter(sys.argv[1])


def timed(fn):
    return timing.timed(fn, iters=50, warmup=3)


torch.manual_seed(0)
q = torch.randn(B, H, 1, D, device=dev, dtype=kind)
# lincal's layout: [B, H, capacity, D]
cache_k = torch.randn(B, H, CAPACITY, D, device=dev, dtype=kind)
cache_v = torch.randn(B, H, CAPACITY, D, device=dev, dtype=kind)
# flash's layout: [B, capacity, H, D], flattened to [B * capacity, H, D] for the varlen call
flat_k = cache_k.transpose(1, 2).contiguous().view(B * CAPACITY, H, D)
flat_v = cache_v.transpose(1, 2).contiguous().view(B * CAPACITY, H, D)
cu_q = torch.arange(B + 1, device=dev, dtype=torch.int32)
cu_k = torch.arange(B + 1, device=dev, dtype=torch.int32) * CAPACITY
q_flat = q.view(B, H, D)

for length in (160, 288, CAPACITY):
    # generate.rs `window`: multiples of an eighth of the next power of two, at least 32
    # (run 23 measured the earlier multiples of 128).
    step = max(32, (1 << (length - 1).bit_length()) // 8)
    visible = min(math.ceil(length / step) * step, CAPACITY)
    bias = torch.zeros(B, 1, 1, visible, device=dev, dtype=kind)
    bias[..., length:] = float("-inf")
    k, v = cache_k[:, :, :visible], cache_v[:, :, :visible]
    needed_gb = B * length * H * D * 2 * 2 / 1e9
    reference = F.scaled_dot_product_attention(
        q.float(), cache_k[:, :, :length].float(), cache_v[:, :, :length].float())
    # Exactly the keys so far (no rounding up to a window), as lincal would with more graphs.
    exact = bias[..., :length].contiguous()
    run_exact = lambda: F.scaled_dot_product_attention(
        q, cache_k[:, :, :length], cache_v[:, :, :length], attn_mask=exact)
    ms = timed(run_exact)
    report(kernel="sdpa-masked exact", length=length, visible=length, ms_per_layer=ms,
           ms_per_step=ms * LAYERS, gb_per_s=needed_gb / ms * 1e3,
           max_error=(run_exact().float() - reference).abs().max().item())
    for name, backends in [("sdpa-masked-window (lincal)", None),
                           ("sdpa-masked-window efficient", [SDPBackend.EFFICIENT_ATTENTION]),
                           ("sdpa-masked-window cudnn", [SDPBackend.CUDNN_ATTENTION]),
                           ("sdpa-masked-window math", [SDPBackend.MATH])]:
        try:
            def run():
                if backends is None:
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
                with sdpa_kernel(backends):
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            error = (run().float() - reference).abs().max().item()
            ms = timed(run)
            report(kernel=name, length=length, visible=visible, ms_per_layer=ms,
                   ms_per_step=ms * LAYERS, gb_per_s=needed_gb / ms * 1e3, max_error=error)
        except Exception as e:  # a kernel that does not take this input
            report(kernel=name, length=length, error=str(e)[:200])
    used = torch.full((B,), length, device=dev, dtype=torch.int32)

    def flash():
        return torch.ops.aten._flash_attention_forward(
            q_flat, flat_k, flat_v, cu_q, cu_k, 1, CAPACITY, 0.0, False, False,
            seqused_k=used)[0]
    try:
        error = (flash().view(B, H, 1, D).float() - reference).abs().max().item()
        ms = timed(flash)
        report(kernel="flash varlen seqused_k", length=length, ms_per_layer=ms,
               ms_per_step=ms * LAYERS, gb_per_s=needed_gb / ms * 1e3, max_error=error)
    except Exception as e:
        report(kernel="flash varlen seqused_k", length=length, error=str(e)[:200])

# The step's matrix products at M = B rows: per layer q, k, v, o, gate, up, down; then the head.
x = torch.randn(B, HIDDEN, device=dev, dtype=kind)
h = torch.randn(B, FFN, device=dev, dtype=kind)
w_attn = [torch.randn(HIDDEN, HIDDEN, device=dev, dtype=kind) for _ in range(4)]
w_up = [torch.randn(FFN, HIDDEN, device=dev, dtype=kind) for _ in range(2)]
w_down = torch.randn(HIDDEN, FFN, device=dev, dtype=kind)
head = torch.randn(VOCAB, HIDDEN, device=dev, dtype=kind)


def layer_matmuls():
    for w in w_attn:
        F.linear(x, w)
    for w in w_up:
        F.linear(x, w)
    F.linear(h, w_down)


ms_layer = timed(layer_matmuls)
ms_head = timed(lambda: F.linear(x, head))
weight_gb = (4 * HIDDEN * HIDDEN + 3 * HIDDEN * FFN) * 2 / 1e9
report(kernel="matmuls", ms_per_layer=ms_layer, ms_per_step=ms_layer * LAYERS + ms_head,
       head_ms=ms_head, weight_gb_per_s=weight_gb / ms_layer * 1e3)


def sample_next(logits, uniform, temperature, top_p):
    """generate.rs `sample_next`, operation for operation (top_k off)."""
    logits = logits.float()
    scaled = logits / temperature
    logprobs_all = scaled.log_softmax(-1)
    filtered = scaled
    if top_p < 1.0:
        sorted_, order = filtered.sort(-1, descending=True)
        probs = sorted_.softmax(-1)
        before = probs.cumsum(-1) - probs
        drop_sorted = before > top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        filtered = filtered.masked_fill(drop, float("-inf"))
    cdf = filtered.softmax(-1).cumsum(-1)
    target = uniform.unsqueeze(-1) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(logits.shape[1] - 1)
    return tokens, logprobs_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


for rows, vocab in ((256, 32000), (512, 49152)):
    logits = torch.randn(rows, vocab, device=dev, dtype=kind)
    uniform = torch.rand(rows, device=dev)
    for temperature, top_p in ((0.7, 1.0), (0.3, 0.9)):
        ms = timed(lambda: sample_next(logits, uniform, temperature, top_p))
        report(kernel="sample_next", rows=rows, vocab=vocab, temperature=temperature, top_p=top_p,
               ms_per_step=ms)
    ms = timed(lambda: logits.float().sort(-1, descending=True))
    report(kernel="sort alone", rows=rows, vocab=vocab, ms_per_step=ms)
