#!/usr/bin/env bash
# Runs GPU checks and benchmarks on the device machine, results under $OUT.
# usage: bench/gpu/run.sh STEP...   STEP: parity:NAME | lincal:NAME | eager:NAME | hf:NAME
#   | train-parity:NAME | sft:NAME | hf-sft:NAME
#   (NAME: smollm2-135m | llama2-7b; eager = lincal without CUDA graphs; train-parity needs the
#    SmolLM2 tokenizer carried in .gpu/tokenizer, which `cargo xtask gpu-build` copies there)
# Needs .gpu/lincal from `cargo xtask gpu-build`, carried with the call.
set -euo pipefail
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
export PYTHONUNBUFFERED=1
lincal=$PWD/.gpu/lincal
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/device.txt"
for step in "$@"; do
  what=${step%%:*}; name=${step#*:}; model=/tmp/models/$name
  [ -f "$model/config.json" ] || python3 bench/gpu/make_models.py "$name" "$model"
  echo "== $step"
  case $what in
    parity) python3 bench/gpu/parity.py "$model" "$name" "$lincal" "$OUT/parity.jsonl" ;;
    lincal) "$lincal" bench generate --model "$model" --label "$name" --batch 64,256 --device cuda --dtype bf16 --verify --json "$OUT/generate.jsonl" ;;
    eager) "$lincal" bench generate --model "$model" --label "$name" --batch 64,256 --device cuda --dtype bf16 --no-cuda-graph --verify --json "$OUT/generate.jsonl" ;;
    train-parity) python3 bench/gpu/train.py parity "$model" "$PWD/.gpu/tokenizer" "$lincal" "$OUT/train-parity.jsonl" ;;
    sft) "$lincal" bench sft --model "$model" --label "$name" --batch 16 --seq-len 1024 --device cuda --dtype bf16 --json "$OUT/sft.jsonl" ;;
    hf-sft) python3 bench/gpu/train.py bench "$model" 16 1024 "$OUT/sft.jsonl" "$name" ;;
    hf) python3 bench/gpu/hf_generate.py "$model" "$name" 64,256 "$OUT/generate.jsonl" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
