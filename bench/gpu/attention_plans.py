# What a masked attention call costs on the host the first time its shapes are seen (cuDNN
# builds an execution plan per shape and stride; PyTorch caches it) and on the device each time
# after, for cuDNN's and the memory-efficient backends at the shapes lincal's RL step runs:
# decode steps of the 7B policy (head size 128) and of the 3B extractor (80) over a growing
# window of a key/value cache, and shared-prefix scoring passes (a full mask over T keys).
# usage: python3 attention_plans.py OUT.jsonl
import json
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

out = open(sys.argv[1], "a")
dev, dt = "cuda", torch.bfloat16


def timed(f):
    torch.cuda.synchronize()
    t = time.perf_counter()
    f()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def case(name, backend, shapes):
    """shapes: (q, k, v, bias) tuples, each new to the process; first-call and later-call
    seconds of each."""
    first, later = [], []
    with sdpa_kernel([backend]):
        for q, k, v, bias in shapes:
            run = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            try:
                first.append(timed(run))
            except RuntimeError as e:
                print(name, backend, "unsupported:", str(e)[:120])
                return
            later.append(min(timed(run) for _ in range(5)))
    record = {"case": name, "backend": str(backend), "shapes": len(shapes),
              "first_call_s": sum(first) / len(first), "later_call_ms": 1e3 * sum(later) / len(later),
              "first_minus_later_s_total": sum(first) - sum(later)}
    print(json.dumps(record))
    out.write(json.dumps(record) + "\n")


def decode(rows, heads, head_dim, capacity, windows):
    shapes = []
    for w in windows:
        q = torch.randn(rows, heads, 1, head_dim, device=dev, dtype=dt)
        k = torch.randn(rows, heads, capacity, head_dim, device=dev, dtype=dt).narrow(2, 0, w)
        v = torch.randn(rows, heads, capacity, head_dim, device=dev, dtype=dt).narrow(2, 0, w)
        bias = torch.zeros(rows, 1, 1, w, device=dev, dtype=dt)
        shapes.append((q, k, v, bias))
    return shapes


def scoring(rows, heads, head_dim, lengths):
    shapes = []
    for t in lengths:
        q, k, v = (torch.randn(rows, heads, t, head_dim, device=dev, dtype=dt) for _ in range(3))
        bias = torch.zeros(rows, 1, t, t, device=dev, dtype=dt).masked_fill(
            torch.ones(t, t, device=dev, dtype=torch.bool).triu(1), float("-inf"))
        shapes.append((q, k, v, bias))
    return shapes


torch.zeros(1, device=dev)
for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
    # Windows as lincal rounds them (an eighth of the power of two), capacities as a batch's
    # longest prompt plus the new tokens: 7B generation (128 + 300), extraction (~410 + 300).
    case("decode 7B 171 rows", backend, decode(171, 32, 128, 428, [144, 160, 192, 224, 256, 288, 320, 384, 428]))
    case("decode 3B 171 rows", backend, decode(171, 32, 80, 710, [448, 512, 576, 640, 710]))
    case("scoring 7B 8 rows", backend, scoring(8, 32, 128, [600, 616, 632, 648]))
    torch.cuda.empty_cache()
