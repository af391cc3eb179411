# Where the time of a traced benchmark went (`lincal bench sft|generate|ppo|grpo --trace FILE`):
# GPU kernels totalled by name and by kind (matrix products, attention, normalisation,
# element-wise, reductions, copies, communication), with the share of the traced span the
# device was busy; on a CPU trace, the operators' inclusive time instead (an operator's time
# holds the operators it calls, so those rows overlap). Prints a table and, with OUT.jsonl,
# appends one JSON line per row.
# usage: python3 trace_summary.py TRACE.json [TOP] [OUT.jsonl]
import collections
import json
import sys

KINDS = [  # first match wins; names are CUDA kernel names, lower-cased
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("matmul", ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "matmul")),
    ("norm", ("rms_norm", "layer_norm", "norm_")),
    ("reduce", ("reduce", "softmax", "cumsum", "scan", "sort", "topk", "argmax")),
    ("copy", ("memcpy", "memset", "copy", "cat", "index", "gather", "scatter")),
    ("communication", ("nccl",)),
    ("optimizer", ("adam",)),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "pointwise")),
]


def kind_of(name):
    lower = name.lower()
    for kind, needles in KINDS:
        if any(n in lower for n in needles):
            return kind
    return "other"


def main(path, top=25, out=None):
    events = json.load(open(path))["traceEvents"]
    timed = [e for e in events if e.get("ph") == "X" and "dur" in e]
    kernels = [e for e in timed if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    rows = kernels or [e for e in timed if e.get("cat") == "cpu_op"]
    if not rows:
        sys.exit(f"{path}: no kernel or operator events to total")
    what = "kernel" if kernels else "cpu operator (inclusive)"
    span = (max(e["ts"] + e["dur"] for e in timed) - min(e["ts"] for e in timed)) / 1e3
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for e in rows:
        by_name[e["name"]][0] += e["dur"] / 1e3
        by_name[e["name"]][1] += 1
    busy = sum(ms for ms, _ in by_name.values())
    records = []
    print(f"{path}: {len(rows)} {what} events, {busy:.1f} ms of them in a {span:.1f} ms span")
    if kernels:
        print(f"  the device was busy {100 * busy / span:.1f}% of the span")
        records.append({"trace": path, "busy_ms": busy, "span_ms": span})
    if kernels:
        by_kind = collections.Counter()
        for name, (ms, _) in by_name.items():
            by_kind[kind_of(name)] += ms
        for kind, ms in by_kind.most_common():
            print(f"  {kind:<14} {ms:10.2f} ms  {100 * ms / busy:5.1f}%")
            records.append({"trace": path, "kind": kind, "ms": ms, "share": ms / busy})
    print(f"{'ms':>10} {'calls':>7} {'share':>6}  name")
    for name, (ms, calls) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{ms:10.2f} {calls:7d} {100 * ms / busy:5.1f}%  {name[:110]}")
        records.append({"trace": path, "name": name, "ms": ms, "calls": calls})
    if out:
        with open(out, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25,
         sys.argv[3] if len(sys.argv) > 3 else None)
