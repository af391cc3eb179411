#!/usr/bin/env bash
# Runs the GPU tests on the device machine: the binaries `cargo xtask gpu-build` puts in
# .gpu/tests (carry .gpu), each test at a time. Output in $OUT/gpu-tests.txt; exits non-zero
# when a test failed.
#   usage: bash bench/gpu/test.sh
set -uo pipefail
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu-tests.txt"
status=0
for binary in .gpu/tests/*; do
  echo "== $binary" | tee -a "$OUT/gpu-tests.txt"
  # Only the GPU tests are ignored in these binaries (`needs a CUDA GPU`).
  "$binary" --ignored --test-threads 1 --nocapture 2>&1 | tee -a "$OUT/gpu-tests.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
exit $status
