# Where the time of a traced benchmark went (`lincal bench sft|generate|ppo|grpo --trace FILE`):
# GPU kernels totalled by name and by kind (matrix products, attention, normalisation,
# element-wise, reductions, copies, communication), with the share of the traced span the
# device was busy; on a CPU trace, the operators' inclusive time instead (an operator's time
# holds the operators it calls, so those rows overlap). Where the trace holds ranges of
# lincal's timed parts (generation, reward/extraction, update, ...: `TimedPart`), each part's
# kernels are also totalled by kind, a kernel going to the innermost part that launched it.
# Prints a table and, with OUT.jsonl, appends one JSON line per row.
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
    if kernels:
        records += by_part(path, timed, kernels)
    if out:
        with open(out, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")


def by_part(path, timed, kernels):
    """Each timed part's kernels by kind: a kernel belongs to the innermost part whose range
    holds its launch (found through the launch's correlation id; the kernel's own start where
    there is none, which parts allow since each waits for its kernels before it closes)."""
    parts = sorted((e for e in timed if e.get("cat") == "user_annotation"),
                   key=lambda e: (e["ts"], -e["dur"]))
    if not parts:
        return []
    # Parts nest: a part's name is the path of the parts holding it.
    names, open_parts = [], []
    for e in parts:
        while open_parts and open_parts[-1]["ts"] + open_parts[-1]["dur"] < e["ts"] + e["dur"]:
            open_parts.pop()
        names.append("/".join([o["name"] for o in open_parts] + [e["name"]]))
        open_parts.append(e)
    launches = {e["args"]["correlation"]: e["ts"] for e in timed
                if e.get("cat") in ("cuda_runtime", "cuda_driver")  # cuLaunchKernel: NVRTC, NCCL
                and "correlation" in e.get("args", {})}

    def part_of(kernel):
        ts = launches.get(kernel.get("args", {}).get("correlation"), kernel["ts"])
        inner = None
        for name, e in zip(names, parts):
            if e["ts"] > ts:
                break
            if ts <= e["ts"] + e["dur"]:
                inner = name
        return inner or "(outside every part)"

    totals = collections.defaultdict(collections.Counter)
    by_name = collections.defaultdict(collections.Counter)
    for k in kernels:
        part = part_of(k)
        totals[part][kind_of(k["name"])] += k["dur"] / 1e3
        by_name[part][k["name"]] += k["dur"] / 1e3
    spans = collections.defaultdict(float)
    for name, e in zip(names, parts):
        spans[name] += e["dur"] / 1e3
    idle = idle_by_part(timed, kernels, names, parts)
    records = []
    print("by part (its own kernels' ms, those of the parts inside it apart; its wall-clock span"
          " summed over its ranges, the parts inside it included), its top kernels, and where"
          " the host was while the device idled in it (the innermost operator or CUDA call of"
          " each thread, looked up every 10 us of idle time):")
    for name in sorted(totals, key=lambda n: -sum(totals[n].values())):
        busy = sum(totals[name].values())
        kinds = ", ".join(f"{kind} {ms:.1f}" for kind, ms in totals[name].most_common())
        print(f"  {name:<28} {busy:10.1f} ms of {spans.get(name, 0):10.1f} ms: {kinds}")
        for kernel, ms in by_name[name].most_common(8):
            print(f"      {ms:9.1f} ms  {kernel[:100]}")
        idle_ms, hosts = idle.get(name, (0.0, collections.Counter()))
        print(f"    idle {idle_ms:.1f} ms, the host meanwhile in:")
        for host, ms in hosts.most_common(10):
            print(f"      {ms:9.1f} ms  {host[:100]}")
        records.append({"trace": path, "part": name, "busy_ms": busy,
                        "span_ms": spans.get(name), "kinds": dict(totals[name]),
                        "top_kernels": dict(by_name[name].most_common(8)),
                        "idle_ms": idle_ms, "idle_host": dict(hosts.most_common(10))})
    return records


def idle_by_part(timed, kernels, names, parts, step_us=10.0):
    """Per part, the device's idle time inside its ranges (between kernels and copies, the
    parts inside it apart) and what each host thread was doing meanwhile: its innermost
    operator or CUDA runtime call (a thread's events nest), looked up once per `step_us` of a
    gap (and once in a shorter gap or remainder, which counts its own length)."""
    busy = []
    for start, end in sorted((k["ts"], k["ts"] + k["dur"]) for k in kernels):
        if busy and start <= busy[-1][1]:
            busy[-1][1] = max(busy[-1][1], end)
        else:
            busy.append([start, end])
    host = sorted((e for e in timed if e.get("cat") in ("cpu_op", "cuda_runtime", "cuda_driver")),
                  key=lambda e: (e["ts"], -e["dur"]))
    result = collections.defaultdict(lambda: [0.0, collections.Counter()])
    open_parts, next_part = [], 0
    stacks, next_host = collections.defaultdict(list), 0
    for (_, gap_start), (gap_end, _) in zip(busy, busy[1:]):
        start = gap_start
        while start < gap_end:
            weight = min(step_us, gap_end - start)
            t = start + weight / 2
            # `parts` come sorted by start, a part before those inside it.
            while next_part < len(parts) and parts[next_part]["ts"] <= t:
                open_parts.append((parts[next_part], names[next_part]))
                next_part += 1
            open_parts = [(e, n) for e, n in open_parts if e["ts"] + e["dur"] >= t]
            while next_host < len(host) and host[next_host]["ts"] <= t:
                stacks[host[next_host]["tid"]].append(host[next_host])
                next_host += 1
            if open_parts:
                r = result[open_parts[-1][1]]
                r[0] += weight / 1e3
                for tid in stacks:
                    stacks[tid] = [e for e in stacks[tid] if e["ts"] + e["dur"] >= t]
                    if stacks[tid]:
                        r[1][f"thread {tid}: {stacks[tid][-1]['name']}"] += weight / 1e3
            start += step_us
    return {name: (ms, hosts) for name, (ms, hosts) in result.items()}


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25,
         sys.argv[3] if len(sys.argv) > 3 else None)
