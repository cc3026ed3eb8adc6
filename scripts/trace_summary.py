#!/usr/bin/env python3
"""Sums the kernels of a Chrome trace by name and by kind, per step.

The trace comes from `mome bench train --trace PATH` (libtorch's Kineto profiler) or
from torch.profiler's `export_chrome_trace`. CUDA kernels ("cat": "kernel") are
summed when present, else the CPU operators ("cat": "cpu_op"; a nested operator's
time counts in its parent's too, so their sum exceeds the step).

    python3 scripts/trace_summary.py TRACE.json --steps 8 [--top 30] [--json OUT.json]

--steps: the steps the trace covers (warm-up + timed + profiled), to report ms per
step. The kinds are coarse groups of kernel names (matmul, attention, mome's own
kernels, layer norm, elementwise, reductions, optimizer, copies and casts, other).
"""
import argparse
import collections
import json
import re

KINDS = [
    ("mome add+ln", r"add_ln_"),
    ("mome CE / KD", r"softmax_xent|kd_xent"),
    ("attention", r"flash|fmha|attention|sdpa"),
    ("matmul", r"gemm|sm90_xmma|cutlass|cublas|matmul|nvjet|Kernel2"),
    ("layer norm", r"layer_norm|LayerNorm"),
    ("optimizer", r"adam|Adam|multi_tensor|foreach"),
    ("dropout", r"dropout|fused_dropout"),
    ("embedding", r"embedding|indexSelect|index_select|EmbeddingBag|scatter|index_add|indexFuncLarge"),
    ("copy / cast", r"copy|Copy|cast|to_kind|convert"),
    ("reduction", r"reduce|Reduce|sum|norm_kernel"),
    ("elementwise", r"elementwise|vectorized|unrolled|gelu|Gelu|mul|add|fill"),
]


def kind_of(name):
    for kind, pat in KINDS:
        if re.search(pat, name):
            return kind
    return "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--steps", type=int, default=1, help="steps the trace covers")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--json", help="also write the sums here")
    a = ap.parse_args()
    if a.steps <= 0:
        ap.error("--steps must be > 0")
    with open(a.trace) as f:
        t = json.load(f)
    events = t["traceEvents"] if isinstance(t, dict) else t
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    what = "CUDA kernels"
    if not kernels:
        what = "CPU operators"
        kernels = [e for e in events if e.get("cat") == "cpu_op" and "dur" in e]
    by_name = collections.defaultdict(lambda: [0, 0.0])
    by_kind = collections.defaultdict(float)
    for e in kernels:
        n = e.get("name", "?")
        by_name[n][0] += 1
        by_name[n][1] += e["dur"]
        by_kind[kind_of(n)] += e["dur"]
    total = sum(v[1] for v in by_name.values())
    per = 1e3 * a.steps  # µs -> ms per step
    print(f"{what}: {total / per:.2f} ms per step over {a.steps} steps, {len(kernels)} launches")
    print("\n| kind | ms/step | share |\n|---|---:|---:|")
    for k, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {us / per:.2f} | {100 * us / max(total, 1e-9):.1f}% |")
    print(f"\n| kernel | calls/step | ms/step | share |\n|---|---:|---:|---:|")
    rows = sorted(by_name.items(), key=lambda kv: -kv[1][1])
    for n, (calls, us) in rows[: a.top]:
        short = n if len(n) <= 100 else n[:97] + "..."
        short = short.replace("|", "/")
        print(f"| `{short}` | {calls / a.steps:.1f} | {us / per:.3f} | {100 * us / max(total, 1e-9):.1f}% |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {
                    "what": what,
                    "steps": a.steps,
                    "ms_per_step": total / per,
                    "kinds": {k: us / per for k, us in by_kind.items()},
                    "kernels": [
                        {"name": n, "calls_per_step": c / a.steps, "ms_per_step": us / per}
                        for n, (c, us) in rows
                    ],
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
