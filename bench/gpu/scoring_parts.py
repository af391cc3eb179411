# Where a scoring forward pass (no gradients, left-padded rows of about 600 tokens at batch
# 512, as PPO's reward model and log-prob passes run) spends its attention time: lincal's
# masked attention (an additive [B, 1, T, T] bias from the padding and causal masks, query
# heads folded onto their key head for grouped attention) by each kernel, against plain causal
# attention without a mask. Prints one JSON line per measurement and appends them to the file.
# usage: python3 scoring_parts.py OUT.jsonl
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import timing
from timing import reporter

dev, kind = "cuda", torch.bfloat16
report = reporter(sys.argv[1])


def timed(fn):
    return timing.timed(fn, iters=10, warmup=2)


torch.manual_seed(0)
for name, b, t, heads, kv_heads, d, layers in (("smollm2-135m", 512, 600, 9, 3, 64, 30),
                                               ("llama2-7b", 128, 600, 32, 32, 128, 32)):
    q = torch.randn(b, heads, t, d, device=dev, dtype=kind)
    k = torch.randn(b, kv_heads, t, d, device=dev, dtype=kind)
    v = torch.randn(b, kv_heads, t, d, device=dev, dtype=kind)
    # Left padding of 0-63 tokens per row; the causal mask over real keys (layers.rs
    # `attention_mask`, then `attention_bias`).
    pad = torch.randint(0, 64, (b,), device=dev)
    real = torch.arange(t, device=dev).unsqueeze(0) >= pad.unsqueeze(1)
    causal = torch.ones(t, t, device=dev, dtype=torch.bool).tril()
    diagonal = torch.eye(t, device=dev, dtype=torch.bool)
    mask = (causal.unsqueeze(0) & real.unsqueeze(1)).unsqueeze(1) | diagonal
    bias = torch.zeros(mask.shape, device=dev, dtype=kind).masked_fill(~mask, float("-inf"))
    group = heads // kv_heads

    def lincal(backends=None):
        # layers.rs `attend_grouped`
        qf = q.reshape(b, kv_heads, group * t, d)
        bf = bias.unsqueeze(2).expand(b, 1, group, t, t).reshape(b, 1, group * t, t) if group > 1 else bias
        if backends is None:
            return F.scaled_dot_product_attention(qf, k, v, attn_mask=bf)
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(qf, k, v, attn_mask=bf)

    for label, backends in (("lincal", None), ("lincal cudnn", [SDPBackend.CUDNN_ATTENTION]),
                            ("lincal efficient", [SDPBackend.EFFICIENT_ATTENTION]),
                            ("lincal math", [SDPBackend.MATH])):
        try:
            ms = timed(lambda: lincal(backends))
            report(model=name, kernel=label, batch=b, tokens=t, ms_per_layer=ms, ms_per_pass=ms * layers)
        except Exception as e:
            report(model=name, kernel=label, error=str(e)[:200])
    fold_ms = timed(lambda: bias.unsqueeze(2).expand(b, 1, group, t, t).reshape(b, 1, group * t, t)) if group > 1 else 0.0
    report(model=name, kernel="bias fold copy alone", ms_per_layer=fold_ms, ms_per_pass=fold_ms * layers)
    ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=group > 1))
    report(model=name, kernel="causal, no mask (floor)", batch=b, tokens=t, ms_per_layer=ms, ms_per_pass=ms * layers)
    del q, k, v, bias, mask
    torch.cuda.empty_cache()
