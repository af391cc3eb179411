# What one decoder layer of the Llama-2-7B shape keeps for its backward pass (bf16, 4 x 1024
# tokens, no checkpointing): transformers' LlamaDecoderLayer against lincal's layer restated
# in PyTorch with the operations `crates/lincal-model/src/llama.rs` runs (fused rms_norm times
# the weight, rotary as x*cos + roll(x)*signed_sin, causal SDPA, SiLU-gated MLP). Every
# tensor autograd saves is counted once by its storage, weights excluded, grouped by shape and
# type; the time of a forward plus backward pass is printed beside it.
# usage: python3 saved_activations.py OUT.jsonl
import collections
import sys

import torch
import torch.nn.functional as F
import transformers
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

import timing
from timing import reporter

dev, kind = "cuda", torch.bfloat16
report = reporter(sys.argv[1])
B, T, H, HEADS, D = 4, 1024, 4096, 32, 128
config = transformers.LlamaConfig(
    hidden_size=H, intermediate_size=11008, num_attention_heads=HEADS, num_key_value_heads=HEADS,
    num_hidden_layers=1, vocab_size=32000, rms_norm_eps=1e-5)
config._attn_implementation = "sdpa"
layer = LlamaDecoderLayer(config, layer_idx=0).to(dev, kind)
weights = {p.untyped_storage().data_ptr() for p in layer.parameters()}
positions = torch.arange(T, device=dev)[None].expand(B, T)
x0 = torch.randn(B, T, H, device=dev, dtype=kind)
cos, sin = LlamaRotaryEmbedding(config).to(dev)(x0, positions)
cos4, sin4 = cos[:, None].to(kind), sin[:, None].to(kind)
signed_sin = torch.cat([-sin4[..., : D // 2], sin4[..., D // 2:]], -1)


def transformers_layer(x):
    out = layer(x, attention_mask=None, position_ids=positions, position_embeddings=(cos, sin))
    return out[0] if isinstance(out, tuple) else out


def lincal_layer(x):
    def norm(x, w):
        return w * F.rms_norm(x, (H,), eps=1e-5)

    def rotary(t):
        return t * cos4 + t.roll(D // 2, -1) * signed_sin

    a = layer.self_attn
    h = norm(x, layer.input_layernorm.weight)
    q, k, v = (p(h).view(B, T, HEADS, D).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
    out = F.scaled_dot_product_attention(rotary(q), rotary(k), v, is_causal=True)
    x = x + a.o_proj(out.transpose(1, 2).reshape(B, T, H))
    h = norm(x, layer.post_attention_layernorm.weight)
    m = layer.mlp
    return x + m.down_proj(F.silu(m.gate_proj(h)) * m.up_proj(h))


for name, run in [("transformers", transformers_layer), ("lincal", lincal_layer)]:
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = (tuple(t.shape), str(t.dtype), storage.nbytes())
        return t

    x = x0.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = run(x)
    groups = collections.Counter((shape, dtype) for shape, dtype, _ in saved.values())
    mib = sum(n for _, _, n in saved.values()) / 2**20

    def step():
        x = x0.clone().requires_grad_(True)
        run(x).sum().backward()

    del y
    report(layer=name, saved_mib=round(mib, 1), forward_backward_ms=timing.timed(step, 10),
           saved=[f"{n} x {shape} {dtype}" for (shape, dtype), n in sorted(groups.items())])
