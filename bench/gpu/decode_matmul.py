# The matrix products of a decode step (one token per row) as lincal runs them: seven per
# layer (q, k, v, o, gate, up, down), against four with q, k, v and gate, up each one product
# of concatenated weights, for the Llama-2-7B and SmolLM2-135M shapes at the batch sizes
# generation and the PPO rollouts run. Each variant runs a whole step's layers (and the output
# projection) in one CUDA graph, with cuBLAS and with cuBLASLt. Prints milliseconds per step,
# the achieved TFLOP/s, and the largest difference between the two variants' outputs (they
# should be equal: a row of a product does not depend on the other columns).
# usage: python3 decode_matmul.py OUT.jsonl
import sys

import torch

import timing
from timing import reporter

report = reporter(sys.argv[1])
dev, kind = "cuda", torch.bfloat16
torch.manual_seed(0)
# name: hidden, q width, k/v width, ffn, layers, vocabulary
SHAPES = {
    "llama2-7b": (4096, 4096, 4096, 11008, 32, 32000),
    "smollm2-135m": (576, 576, 192, 1536, 30, 49152),
}


for name, (hidden, q_dim, kv_dim, ffn, layers, vocab) in SHAPES.items():
    def w(o, i):
        return torch.randn(o, i, device=dev, dtype=kind) / i**0.5

    qkv = [w(q_dim + 2 * kv_dim, hidden) for _ in range(layers)]
    gate_up = [w(2 * ffn, hidden) for _ in range(layers)]
    o = [w(hidden, q_dim) for _ in range(layers)]
    down = [w(hidden, ffn) for _ in range(layers)]
    head = w(vocab, hidden)
    # The separate weights are views of the concatenated ones, as stored fused.
    split_qkv = [m.split([q_dim, kv_dim, kv_dim]) for m in qkv]
    split_gate_up = [m.split([ffn, ffn]) for m in gate_up]
    flop_per_row = 2 * layers * hidden * (q_dim + 2 * kv_dim + q_dim + 3 * ffn) + 2 * hidden * vocab
    for batch in (64, 128, 256):
        x = torch.randn(batch, hidden, device=dev, dtype=kind)
        a = torch.randn(batch, q_dim, device=dev, dtype=kind)
        f = torch.randn(batch, ffn, device=dev, dtype=kind)
        outs = {}

        def separate():
            out = []
            for i in range(layers):
                out += [x @ p.T for p in split_qkv[i]]
                out.append(a @ o[i].T)
                out += [x @ p.T for p in split_gate_up[i]]
                out.append(f @ down[i].T)
            out.append(x @ head.T)
            outs["separate"] = out

        def fused():
            out = []
            for i in range(layers):
                out += list((x @ qkv[i].T).split([q_dim, kv_dim, kv_dim], -1))
                out.append(a @ o[i].T)
                out += list((x @ gate_up[i].T).split([ffn, ffn], -1))
                out.append(f @ down[i].T)
            out.append(x @ head.T)
            outs["fused"] = out

        for library in ("cublas", "cublaslt"):
            torch.backends.cuda.preferred_blas_library(library)
            for variant, fn in (("separate", separate), ("fused", fused)):
                ms = timing.timed(timing.graphed(fn), iters=50)
                report(part="decode matrix products", shape=name, batch=batch, blas=library,
                       variant=variant, ms_per_step=round(ms, 3),
                       tflops=round(flop_per_row * batch / ms / 1e9, 1))
            diff = max((p.float() - q.float()).abs().max().item()
                       for p, q in zip(outs["separate"], outs["fused"]))
            report(part="decode matrix products", shape=name, batch=batch, blas=library,
                   max_abs_diff_fused_vs_separate=diff)
    torch.backends.cuda.preferred_blas_library("cublas")
