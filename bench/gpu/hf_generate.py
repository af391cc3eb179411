"""transformers `generate` throughput, the peer of `lincal bench generate`: random 128-token
prompts, 300 new tokens forced (min_new_tokens), temperature 0.7, top_k 0, top_p 1.0, bf16, SDPA.
usage: hf_generate.py MODEL_DIR NAME BATCHES OUT_JSONL"""
import json, sys, time, torch, transformers

model_dir, name, batches, out = sys.argv[1], sys.argv[2], [int(b) for b in sys.argv[3].split(",")], sys.argv[4]
model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
vocab = model.config.vocab_size
kwargs = dict(do_sample=True, temperature=0.7, top_k=0, top_p=1.0, pad_token_id=0)
with torch.no_grad():
    model.generate(torch.randint(3, vocab, (2, 128), device="cuda"), max_new_tokens=8, **kwargs)
    for batch in batches:
        prompts = torch.randint(3, vocab, (batch, 128), device="cuda")
        torch.cuda.synchronize(); start = time.perf_counter()
        result = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=300, min_new_tokens=300, **kwargs)
        torch.cuda.synchronize(); seconds = time.perf_counter() - start
        new = (result.shape[1] - 128) * batch
        record = dict(bench="generate", engine="transformers " + transformers.__version__, model=name, batch=batch,
                      prompt_len=128, new_tokens=300, seconds=seconds, tokens_per_s=new / seconds)
        print(json.dumps(record), flush=True)
        open(out, "a").write(json.dumps(record) + "\n")
