# What LoRA adds to a decode step of the Llama-2-7B shape (batch 128, as the 7B PPO step's
# generation runs, r = 16 on all seven projections): the seven projections of one layer in a
# CUDA graph, without adapters, with the update in f32 as lincal computed it before SPEED.md
# entry 15 (PEFT without autocast: f32 input copy, A, B, scale, mixed sum, cast back), as entry
# 15 computes it (A and scale·B cast to bf16 in the graph, the sum formed by addmm), and as
# lora.rs computes it in generation since entry 18 (the casts made once, outside the graph).
# Prints milliseconds per layer and per 32-layer step, and the bf16 update's largest
# difference from the f32 one.
# usage: python3 lora_decode.py OUT.jsonl
import sys

import torch

import timing
from timing import reporter

B, HIDDEN, FFN, R, LAYERS = 128, 4096, 11008, 16, 32
dev, kind = "cuda", torch.bfloat16
report = reporter(sys.argv[1])
torch.manual_seed(0)
shapes = [(HIDDEN, HIDDEN)] * 4 + [(HIDDEN, FFN), (HIDDEN, FFN), (FFN, HIDDEN)]
weights = [torch.randn(o, i, device=dev, dtype=kind) / i**0.5 for i, o in shapes]
adapters = [(torch.randn(R, i, device=dev) / i**0.5, torch.randn(o, R, device=dev) * 0.01)
            for i, o in shapes]
inputs = [torch.randn(B, 1, i, device=dev, dtype=kind) for i, _ in shapes]
scale = 2.0


def plain():
    return [x @ w.T for x, w in zip(inputs, weights)]


def lincal_f32():
    outs = []
    for x, w, (a, b) in zip(inputs, weights, adapters):
        out = x @ w.T
        update = (x.float() @ a.T) @ b.T * scale
        outs.append((out + update).to(kind))
    return outs


def bf16_folded():
    outs = []
    for x, w, (a, b) in zip(inputs, weights, adapters):
        out = (x @ w.T).view(B, -1)
        down = x.view(B, -1) @ a.to(kind).T
        outs.append(out.addmm(down, (b * scale).to(kind).T).view(B, 1, -1))
    return outs


# Entry 18: within one generation call the factors are cast once, outside the graph.
factors = [(a.to(kind), (b * scale).to(kind)) for a, b in adapters]


def bf16_factors_once():
    outs = []
    for x, w, (a, up) in zip(inputs, weights, factors):
        out = (x @ w.T).view(B, -1)
        outs.append(out.addmm(x.view(B, -1) @ a.T, up.T).view(B, 1, -1))
    return outs


reference = lincal_f32()
error = max((a.float() - b.float()).abs().max().item() for a, b in zip(bf16_folded(), reference))
for name, fn in [("plain", plain), ("f32 update (before entry 15)", lincal_f32), ("bf16 update, scale in B (entry 15)", bf16_folded),
                 ("bf16 update, factors cast once a call (entry 18)", bf16_factors_once)]:
    ms = timing.timed(timing.graphed(fn), iters=200)
    report(part="lora decode projections", variant=name, batch=B, r=R, ms_per_layer=ms,
           ms_per_step=ms * LAYERS, max_abs_diff_from_f32=error if "bf16" in name else 0.0)
