"""Logits parity: transformers vs lincal on the same safetensors, f32 and bf16.
usage: parity.py MODEL_DIR NAME LINCAL OUT_JSONL"""
import json, subprocess, sys, torch, transformers
from safetensors.torch import load_file

model_dir, name, lincal, out = sys.argv[1:5]
torch.manual_seed(1)
config = transformers.AutoConfig.from_pretrained(model_dir)
ids = torch.randint(3, config.vocab_size, (2, 96))
json.dump(ids.tolist(), open("/tmp/ids.json", "w"))
for dtype, kind in [(torch.float32, "f32"), (torch.bfloat16, "bf16")]:
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, attn_implementation="sdpa").cuda().eval()
    with torch.no_grad():
        ref = model(ids.cuda()).logits.float().cpu()
    del model
    torch.cuda.empty_cache()
    subprocess.run([lincal, "bench", "logits", "--model", model_dir, "--ids", "/tmp/ids.json", "--out", "/tmp/logits.safetensors", "--device", "cuda", "--dtype", kind], check=True)
    ours = load_file("/tmp/logits.safetensors")["logits"]
    record = dict(model=name, dtype=kind, max_abs_err=(ours - ref).abs().max().item(),
                  rel_err=((ours - ref).norm() / ref.norm()).item(), ref_abs_max=ref.abs().max().item(),
                  argmax_agreement=(ours.argmax(-1) == ref.argmax(-1)).float().mean().item())
    print(json.dumps(record), flush=True)
    open(out, "a").write(json.dumps(record) + "\n")
