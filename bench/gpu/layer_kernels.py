# What a decoder layer's small operations cost, as lincal wrote them and in fewer kernels:
# RMSNorm as transformers writes it (eight element-wise kernels) against PyTorch's fused
# `rms_norm` followed by the weight's product, and rotary embeddings with `rotate_half` built by
# `cat` against a `roll` times a sine whose first half is negated. Each is timed replayed in a
# CUDA graph (as decode steps run), with its kernel count from the profiler and how far its
# output is from the plain form's (bf16). Training shapes also time forward plus backward.
# usage: python3 layer_kernels.py OUT.jsonl
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import timing
from timing import reporter

dev, kind = "cuda", torch.bfloat16
report = reporter(sys.argv[1])
EPS = 1e-5


def graph_ms(fn, iters=200):
    """Milliseconds per replay of `fn` captured in a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def kernels(fn):
    """How many device kernels one call of `fn` launches."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def rms_plain(x, w):
    # layers.rs `rms_norm` before: transformers' LlamaRMSNorm.
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype)


def rms_fused(x, w):
    return w * F.rms_norm(x, (x.shape[-1],), None, EPS)


def rotary_cat(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def rotary_roll(x, cos, signed_sin):
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


def compare(a, b):
    diff = (a.float() - b.float()).abs()
    return dict(max_abs_diff=diff.max().item(), equal_fraction=(a == b).float().mean().item())


torch.manual_seed(0)
for name, rows, hidden, heads, head_dim in (("llama2-7b decode", 256, 4096, 32, 128),
                                            ("smollm2-135m decode", 512, 576, 9, 64)):
    x = torch.randn(rows, 1, hidden, device=dev, dtype=kind)
    w = (1 + 0.1 * torch.randn(hidden, device=dev)).to(kind)
    for label, fn in (("rmsnorm plain", rms_plain), ("rmsnorm fused", rms_fused)):
        report(shape=name, op=label, kernels=kernels(lambda: fn(x, w)), graph_ms=graph_ms(lambda: fn(x, w)),
               **compare(fn(x, w), rms_plain(x, w)))
    q = torch.randn(rows, 1, heads * head_dim, device=dev, dtype=kind).view(rows, 1, heads, head_dim).transpose(1, 2)
    angles = torch.rand(rows, 1, 1, head_dim // 2, device=dev) * 100
    cos = torch.cat((angles.cos(), angles.cos()), -1).to(kind)
    sin = torch.cat((angles.sin(), angles.sin()), -1).to(kind)
    signed = torch.cat((-angles.sin(), angles.sin()), -1).to(kind)
    report(shape=name, op="rotary cat", kernels=kernels(lambda: rotary_cat(q, cos, sin)),
           graph_ms=graph_ms(lambda: rotary_cat(q, cos, sin)))
    report(shape=name, op="rotary roll", kernels=kernels(lambda: rotary_roll(q, cos, signed)),
           graph_ms=graph_ms(lambda: rotary_roll(q, cos, signed)),
           **compare(rotary_roll(q, cos, signed), rotary_cat(q, cos, sin)))

# Training: forward and backward of the norm over a batch of tokens.
for name, tokens, hidden in (("llama2-7b sft 4x1024", 4096, 4096), ("smollm2-135m sft 16x1024", 16384, 576)):
    x = torch.randn(tokens, hidden, device=dev, dtype=kind, requires_grad=True)
    w = (1 + 0.1 * torch.randn(hidden, device=dev)).to(kind).requires_grad_()
    g = torch.randn(tokens, hidden, device=dev, dtype=kind)
    outputs = {}
    for label, fn in (("rmsnorm plain", rms_plain), ("rmsnorm fused", rms_fused)):
        def step():
            x.grad = w.grad = None
            fn(x, w).backward(g)
        step()
        outputs[label] = (fn(x, w).detach(), x.grad.clone(), w.grad.clone())
        report(shape=name, op=label + " forward+backward", kernels=kernels(step), eager_ms=timing.timed(step, iters=50))
    plain, fused = outputs["rmsnorm plain"], outputs["rmsnorm fused"]
    for part, a, b in zip(("output", "input grad", "weight grad"), plain, fused):
        report(shape=name, op="rmsnorm fused vs plain", part=part, **compare(b, a),
               max_rel_diff=((a.float() - b.float()).abs().max() / a.float().abs().max()).item())
