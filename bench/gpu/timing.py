"""What the GPU micro-benchmarks share: CUDA-event timing and JSON-lines reports."""
import json

import torch


def timed(fn, iters, warmup=3):
    """Milliseconds per call of `fn`, timed by CUDA events after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def graphed(fn):
    """`fn` captured in a CUDA graph (after one warm-up call on a side stream, as PyTorch
    asks): returns the function that replays it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def reporter(path):
    """A function that prints its keyword arguments as a JSON line and appends it to `path`."""
    out = open(path, "a")

    def report(**record):
        line = json.dumps(record)
        print(line, flush=True)
        out.write(line + "\n")
        out.flush()

    return report
