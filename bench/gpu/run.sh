#!/usr/bin/env bash
# Runs GPU checks and benchmarks on the device machine, results under $OUT.
# usage: bench/gpu/run.sh STEP...   STEP: parity:NAME | lincal:NAME | eager:NAME | hf:NAME
#   | train-parity:NAME | sft:NAME | sft-ckpt:NAME | hf-sft:NAME | hf-sft-ckpt:NAME | ppo:NAME
#   | ppo-large-batches:NAME | ppo-auto:NAME | grpo:NAME | grpo-auto:NAME | serve:NAME
#   | sampling:NAME
#   (NAME: smollm2-135m | llama2-7b; eager = lincal without CUDA graphs; -ckpt = with gradient
#    checkpointing. The SFT benchmarks run 16 x 1024 tokens for SmolLM2 and 4 x 1024 for the 7B,
#    which fits one 80 GB GPU only with gradient checkpointing and pure bf16 weights and AdamW
#    state. ppo: one LC PPO step at 512 rollouts of 128 + 300 tokens, full fine-tuning for
#    SmolLM2, LoRA for the 7B; ppo-large-batches generates, scores and updates in larger
#    batches than the reference's (for SmolLM2, whose memory allows); ppo-auto and grpo-auto
#    choose those batch sizes from free memory (auto_batch_sizes); grpo: one LC GRPO step at
#    64 prompts x 8 responses, the same models and settings as ppo (for llama2-7b both take the
#    reference's extractor shape, RedPajama-INCITE-3B, a GPT-NeoX); serve: `lincal serve` in
#    process under 1, 16, 64 and 256 streaming clients (128 + 300 tokens, 2 requests each),
#    then `bench generate` at the same batch sizes; sampling: `bench generate` at batch 256 as
#    PPO samples (temperature 0.7), as the extractor does in training (0.3, top-k 50) and in
#    evaluation (0.3, top-p 0.9), and watching for a stop string that never comes.
#    train-parity, ppo, grpo, serve and sampling need the SmolLM2 tokenizer carried in
#    .gpu/tokenizer, which `cargo xtask gpu-build` copies there.)
# Every step's peak device memory (nvidia-smi, sampled every 250 ms) goes to $OUT/memory.jsonl.
# Needs .gpu/lincal from `cargo xtask gpu-build`, carried with the call. To compare two builds
# in one call, LINCAL=PATH runs another binary, and BUILD=NAME adds "(NAME)" to its labels.
# SFT_FLAGS adds flags to lincal's sft steps (e.g. "--recomputed-layers 8" for llama2-7b).
# PPO_FLAGS adds flags to lincal's ppo and grpo steps (e.g. "--set gradient_checkpointing=true").
# WARMUP=N runs N untimed steps before the timed one of llama2-7b's ppo and grpo steps (default 0:
# its first step, which also builds cuDNN plans and CUDA graphs; SmolLM2's run one).
# TRACE=1 traces the timed part of lincal's sft, ppo, grpo and lincal (generation, then at
# batch 256 only) steps, and two steps of hf-sft, with PyTorch's profiler: each trace's kernels are totalled by
# trace_summary.py into $OUT/trace_summary.jsonl and the trace is kept gzipped in $OUT.
set -uo pipefail
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
export PYTHONUNBUFFERED=1
lincal=${LINCAL:-$PWD/.gpu/lincal}
# The 7B's RL steps extract answers with a model of the reference extractor's shape.
extractor_for() {
  [ "$1" = llama2-7b ] || return 0
  local dir=/tmp/models/redpajama-3b-ppo
  [ -f "$dir/config.json" ] || python3 bench/gpu/make_models.py redpajama-3b "$dir" "$PWD/.gpu/tokenizer"
  ppo_flags+=(--extractor "$dir")
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/device.txt"
for step in "$@"; do
  what=${step%%:*}; name=${step#*:}; model=/tmp/models/$name; label=$name${BUILD:+ ($BUILD)}
  # RL, serving and sampling steps run on a copy with the SmolLM2 tokenizer, the rest on the bare model.
  case $what in
    ppo*|grpo*|serve|sampling) [ -f "$model-ppo/config.json" ] || python3 bench/gpu/make_models.py "$name" "$model-ppo" "$PWD/.gpu/tokenizer" ;;
    *) [ -f "$model/config.json" ] || python3 bench/gpu/make_models.py "$name" "$model" ;;
  esac
  case $name in
    llama2-7b) sft_batch=4; sft_flags=(--gradient-checkpointing --no-master-weights); hf_precisions=bf16; hf_ckpt=checkpointing;
      ppo_flags=(--warmup "${WARMUP:-0}" --set lora.r=16 --set lora.alpha=32 --set lora.dropout=0.05
        --set 'lora.target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]' --set reward.extractor_batch_size=32) ;;
    *) sft_batch=16; sft_flags=(); hf_precisions=autocast-bf16,bf16; hf_ckpt=""; ppo_flags=(--warmup 1) ;;
  esac
  echo "== $step"
  trace_file=$OUT/${step//[:]/-}${BUILD:+-$BUILD}.trace.json; trace_file=${trace_file// /_}
  trace=(); gen_batch=64,256
  [ -n "${TRACE:-}" ] && { trace=(--trace "$trace_file"); gen_batch=256; }
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > /tmp/memory.txt 2>/dev/null &
  sampler=$!
  trap 'kill $sampler 2>/dev/null' EXIT
  # A failing step is reported and the next one runs.
  case $what in
    parity) python3 bench/gpu/parity.py "$model" "$name" "$lincal" "$OUT/parity.jsonl" ;;
    lincal) "$lincal" bench generate --model "$model" --label "$label" --batch $gen_batch --device cuda --dtype bf16 --verify "${trace[@]}" --json "$OUT/generate.jsonl" ;;
    eager) "$lincal" bench generate --model "$model" --label "$label" --batch 64,256 --device cuda --dtype bf16 --no-cuda-graph --verify --json "$OUT/generate.jsonl" ;;
    train-parity) python3 bench/gpu/train.py parity "$model" "$PWD/.gpu/tokenizer" "$lincal" "$OUT/train-parity.jsonl" ;;
    sft) "$lincal" bench sft --model "$model" --label "$label" --batch $sft_batch --seq-len 1024 --device cuda --dtype bf16 "${sft_flags[@]}" ${SFT_FLAGS:-} "${trace[@]}" --json "$OUT/sft.jsonl" ;;
    sft-ckpt) "$lincal" bench sft --model "$model" --label "$label" --batch $sft_batch --seq-len 1024 --device cuda --dtype bf16 "${sft_flags[@]}" --gradient-checkpointing --json "$OUT/sft.jsonl" ;;
    hf-sft) HF_TRACE_DIR=${TRACE:+$OUT} python3 bench/gpu/train.py bench "$model" $sft_batch 1024 "$OUT/sft.jsonl" "$name" $hf_precisions $hf_ckpt ;;
    hf-sft-ckpt) python3 bench/gpu/train.py bench "$model" $sft_batch 1024 "$OUT/sft.jsonl" "$name" $hf_precisions checkpointing ;;
    ppo|ppo-large-batches|ppo-auto)
      extractor_for "$name"
      [ $what = ppo-large-batches ] && ppo_flags+=(--set generation_batch_size=512 --set forward_batch_size=64 --set micro_batch_size=16
        --set reward.extractor_batch_size=512 --set reward.score_batch_size=128)
      [ $what = ppo-auto ] && ppo_flags+=(--set auto_batch_sizes=true)
      "$lincal" bench ppo --model "$model-ppo" --label "$label" --preset lc_ppo --device cuda "${ppo_flags[@]}" ${PPO_FLAGS:-} "${trace[@]}" --json "$OUT/ppo.jsonl" ;;
    grpo|grpo-auto)
      extractor_for "$name"
      [ $what = grpo-auto ] && ppo_flags+=(--set auto_batch_sizes=true)
      "$lincal" bench grpo --model "$model-ppo" --label "$label" --preset lc_grpo --device cuda "${ppo_flags[@]}" ${PPO_FLAGS:-} "${trace[@]}" --json "$OUT/grpo.jsonl" ;;
    serve)
      "$lincal" bench serve --model "$model-ppo" --label "$label" --clients 1,16,64,256 --max-batch 256 --device cuda --dtype bf16 --json "$OUT/serve.jsonl" &&
      "$lincal" bench generate --model "$model-ppo" --label "$label" --batch 1,16,64,256 --device cuda --dtype bf16 --json "$OUT/generate.jsonl" ;;
    sampling)
      sample() { "$lincal" bench generate --model "$model-ppo" --label "$label" --batch 256 --device cuda --dtype bf16 "$@" --json "$OUT/generate.jsonl"; }
      sample && sample --temperature 0.3 --top-k 50 && sample --temperature 0.3 --top-p 0.9 && sample --stop NEVER-SEEN-STOP-STRING ;;
    hf) python3 bench/gpu/hf_generate.py "$model" "$name" 64,256 "$OUT/generate.jsonl" ;;
    *) echo "unknown step $step" ;;
  esac || echo "step $step failed"
  kill $sampler; wait $sampler 2>/dev/null || true
  for traced in "$trace_file" "$OUT"/hf-sft-*.trace.json; do
    [ -f "$traced" ] || continue
    python3 bench/gpu/trace_summary.py "$traced" 30 "$OUT/trace_summary.jsonl"
    gzip -f "$traced"
  done
  peak=$(sort -n /tmp/memory.txt | tail -1)
  echo "peak device memory: $peak MiB"
  echo "{\"step\": \"$step\", \"peak_device_mib\": $peak}" >> "$OUT/memory.jsonl"
done
