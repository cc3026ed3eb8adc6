#!/usr/bin/env python3
"""Table of scripts/gpu-optim.sh's `mome bench train` lines: tokens/s per config and
variant (fused / flat / old binary), the ratio to the old binary (else to flat), the
clip and optimizer phases of `--profile`, and the same-global-batch 2-GPU bound
step / ((step - fixed) / 2 + fixed), with fixed = clip + optimizer (the part that
does not shrink with the batch; docs/performance.md)."""
import json
import sys


def main(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    by = {}
    for r in rows:
        by.setdefault(r["config"], {})[r["variant"]] = r
    print("| config | variant | tokens/s | vs reference | grad clip ms | optimizer ms | step ms (synced) | 2-GPU bound |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for cfg, vs in by.items():
        ref = vs.get("old") or vs.get("flat")
        for name in ("old", "flat", "fused"):
            r = vs.get(name)
            if r is None:
                continue
            ph = {p["name"]: p["ms"] for p in (r.get("profile") or {}).get("phases", [])}
            step = (r.get("profile") or {}).get("step_ms", float("nan"))
            fixed = ph.get("grad_clip", 0.0) + ph.get("optimizer", 0.0)
            bound = step / ((step - fixed) / 2 + fixed) if step == step and step > 0 else float("nan")
            print(
                f"| {cfg.split('/')[-1]} | {name} ({r.get('adamw', 'auto before fused')}) | {r['tokens_per_second']:,.0f} | "
                f"{r['tokens_per_second'] / ref['tokens_per_second']:.2f}x | {ph.get('grad_clip', float('nan')):.2f} | "
                f"{ph.get('optimizer', float('nan')):.2f} | {step:.1f} | {bound:.2f}x |"
            )


if __name__ == "__main__":
    main(sys.argv[1])
