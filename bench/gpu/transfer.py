"""Host<->device copy speed of a model's weights, pageable against pinned host memory.

Decides whether parking an idle frozen model in host memory between an RL step's phases
(generation, scoring, extraction, update) can pay: each phase it frees memory for costs a
copy out and a copy back.
usage: python3 bench/gpu/transfer.py GIB OUT.jsonl
"""
import json
import sys
import time

import torch

gib, out = float(sys.argv[1]), sys.argv[2]
n = int(gib * 2**30) // 2
device_tensor = torch.randn(n // 1024, 1024, device="cuda", dtype=torch.bfloat16)


def timed(label, fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    row = {"copy": label, "gib": gib, "seconds": seconds, "gib_per_s": gib / seconds}
    print(json.dumps(row))
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    return result


pageable = timed("device to pageable host", lambda: device_tensor.to("cpu"))
pinned = timed("allocate pinned host", lambda: torch.empty_like(pageable, pin_memory=True))
timed("device to pinned host", lambda: pinned.copy_(device_tensor, non_blocking=True))
timed("device to pinned host (again)", lambda: pinned.copy_(device_tensor, non_blocking=True))
del device_tensor
torch.cuda.empty_cache()
back = timed("pageable host to device", lambda: pageable.to("cuda"))
del back
torch.cuda.empty_cache()
back = timed("pinned host to device", lambda: pinned.to("cuda", non_blocking=True))
