"""Training checks on the device machine.
  train.py parity MODEL_DIR TOKENIZER_DIR LINCAL OUT_JSONL
      lincal sft and lincal reward-model train briefly on the GPU; their saved models load in
      transformers and give the same logits (SFT) and scores (reward model) as lincal does.
  train.py bench MODEL_DIR BATCH SEQ_LEN OUT_JSONL LABEL [PRECISIONS] [checkpointing]
      transformers + PyTorch training steps (SDPA, fused torch AdamW) on random tokens, in the
      given precisions (default both): autocast-bf16, bf16 autocast over f32 weights (what
      lincal does by default: bf16 compute, f32 masters), and bf16, pure bf16 weights (lincal's
      pure_bf16); with `checkpointing`, gradient checkpointing on. With HF_TRACE_DIR set, two
      more steps of each precision are traced by PyTorch's profiler into that directory."""
import json, os, shutil, subprocess, sys, time, torch, transformers
from safetensors.torch import load_file

def record(out, **fields):
    print(json.dumps(fields), flush=True)
    open(out, "a").write(json.dumps(fields) + "\n")

def rel(a, b):
    return ((a - b).norm() / b.norm()).item()

def lincal_run(lincal, *args):
    subprocess.run([lincal, *args], check=True)

def parity(model_dir, tokenizer_dir, lincal, out):
    base = "/tmp/train-base"
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(model_dir, base)
    for name in os.listdir(tokenizer_dir):
        if name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(os.path.join(tokenizer_dir, name), base)
    topics = ["the Eiffel Tower", "photosynthesis", "the Apollo 11 mission", "Marie Curie", "the Nile", "jazz", "volcanoes", "the printing press"]
    with open("/tmp/sft.jsonl", "w") as f:
        for i in range(32):
            topic = topics[i % len(topics)]
            f.write(json.dumps({"prompt": f"Write a paragraph about {topic}.\n", "target": f" I am about {50 + i}% sure that {topic} is well known."}) + "\n")
    with open("/tmp/rm.jsonl", "w") as f:
        for i in range(32):
            f.write(json.dumps({"prompt": f"Question {i}: is {topics[i % len(topics)]} famous? Answer: yes", "label": (i % 10) / 10}) + "\n")
    small = ["--set", "training.batch_size=8", "--set", "training.micro_batch_size=8", "--set", "training.eval_batch_size=8", "--set", "training.epochs=1", "--device", "cuda"]
    lincal_run(lincal, "sft", "--model", base, "--out", "/tmp/sft-run", "--preset", "lc_sft", "--train", "/tmp/sft.jsonl", "--eval", "/tmp/sft.jsonl", *small)
    sft = "/tmp/sft-run/final"
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(sft, "tokenizer.json"))
    ids = torch.tensor([tokenizer(f"Write a paragraph about {t}. It is a topic many know.")["input_ids"][:12] for t in topics])
    json.dump(ids.tolist(), open("/tmp/ids.json", "w"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        ref = hf(ids.cuda()).logits.float().cpu()
    del hf
    lincal_run(lincal, "bench", "logits", "--model", sft, "--ids", "/tmp/ids.json", "--out", "/tmp/logits.safetensors", "--device", "cuda", "--dtype", "f32")
    ours = load_file("/tmp/logits.safetensors")["logits"]
    record(out, check="sft checkpoint in transformers", dtype="f32", max_abs_err=(ours - ref).abs().max().item(), rel_err=rel(ours, ref), argmax_agreement=(ours.argmax(-1) == ref.argmax(-1)).float().mean().item())

    lincal_run(lincal, "reward-model", "--model", sft, "--out", "/tmp/rm-run", "--preset", "forecast_probs", "--train", "/tmp/rm.jsonl", "--eval", "/tmp/rm.jsonl", *small)
    rm = "/tmp/rm-run/final"
    lincal_run(lincal, "score", "--model", rm, "--input", "/tmp/rm.jsonl", "--output", "/tmp/rm.scores.jsonl", "--device", "cuda", "--dtype", "f32")
    ours = torch.tensor([json.loads(l)["score"] for l in open("/tmp/rm.scores.jsonl")])
    config = json.load(open(os.path.join(rm, "config.json")))
    backbone = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config["backbone_config"])).float()
    tensors = {}
    for name in sorted(os.listdir(rm)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(rm, name)))
    prefix = "backbone_model."
    missing, unexpected = backbone.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=False)
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    backbone = backbone.cuda().eval()
    weight, bias = tensors["reward_head.weight"].cuda().float(), tensors["reward_head.bias"].cuda().float()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(rm, "tokenizer.json"))
    ref = []
    with torch.no_grad():
        for line in open("/tmp/rm.jsonl"):
            row = torch.tensor([tokenizer(json.loads(line)["prompt"])["input_ids"]]).cuda()
            hidden = backbone.model(row).last_hidden_state[:, -1].float()
            ref.append((hidden @ weight.T + bias).item())
    ref = torch.tensor(ref)
    record(out, check="reward model in transformers (one text at a time vs lincal's left-padded batches)", dtype="f32", max_abs_err=(ours - ref).abs().max().item(), score_abs_max=ref.abs().max().item())

def bench(model_dir, batch, seq_len, out, label, precisions="autocast-bf16,bf16", checkpointing=""):
    trace_dir = os.environ.get("HF_TRACE_DIR")
    for precision in precisions.split(","):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").cuda().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        torch.cuda.reset_peak_memory_stats()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), device="cuda")
        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision != "bf16"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        started = time.perf_counter()
        steps = 10
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / steps
        if trace_dir:  # two more steps under the profiler, summarised like lincal's traces
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as profiler:
                for _ in range(2):
                    step()
                torch.cuda.synchronize()
            profiler.export_chrome_trace(os.path.join(trace_dir, f"hf-sft-{label}-{precision}.trace.json"))
        record(out, bench="sft", engine=f"transformers {transformers.__version__} ({precision})", model=label, batch=batch, seq_len=seq_len, tokens_per_s=batch * seq_len / seconds, seconds_per_step=seconds,
               gradient_checkpointing=bool(checkpointing), peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30)
        del model, optimizer
        torch.cuda.empty_cache()

if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "parity":
        parity(*args)
    else:
        bench(args[0], int(args[1]), int(args[2]), *args[3:])
