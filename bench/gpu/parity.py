"""Logits parity: transformers vs lincal on the same safetensors, in f32 and bf16.
bf16 is also compared with transformers' own f32 logits, next to transformers' bf16, so that
the bf16 error is read against the error bf16 arithmetic makes anyway.
usage: parity.py MODEL_DIR NAME LINCAL OUT_JSONL"""
import json, subprocess, sys, torch, transformers
from safetensors.torch import load_file

model_dir, name, lincal, out = sys.argv[1:5]
torch.manual_seed(1)
config = transformers.AutoConfig.from_pretrained(model_dir)
ids = torch.randint(3, config.vocab_size, (2, 96))
json.dump(ids.tolist(), open("/tmp/ids.json", "w"))

def rel(a, b):
    return ((a - b).norm() / b.norm()).item()

def hf_logits(dtype):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").cuda().eval()
    with torch.no_grad():
        logits = model(ids.cuda()).logits.float().cpu()
    del model
    torch.cuda.empty_cache()
    return logits

def lincal_logits(kind):
    subprocess.run([lincal, "bench", "logits", "--model", model_dir, "--ids", "/tmp/ids.json", "--out", "/tmp/logits.safetensors", "--device", "cuda", "--dtype", kind], check=True)
    return load_file("/tmp/logits.safetensors")["logits"]

hf32 = hf_logits(torch.float32)
for dtype, kind in [(torch.float32, "f32"), (torch.bfloat16, "bf16")]:
    ref = hf32 if kind == "f32" else hf_logits(dtype)
    ours = lincal_logits(kind)
    record = dict(model=name, dtype=kind, max_abs_err=(ours - ref).abs().max().item(), rel_err=rel(ours, ref),
                  ref_abs_max=ref.abs().max().item(), argmax_agreement=(ours.argmax(-1) == ref.argmax(-1)).float().mean().item(),
                  lincal_vs_hf_f32_rel=rel(ours, hf32), hf_vs_hf_f32_rel=rel(ref, hf32))
    print(json.dumps(record), flush=True)
    open(out, "a").write(json.dumps(record) + "\n")
