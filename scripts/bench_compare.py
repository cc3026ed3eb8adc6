#!/usr/bin/env python3
"""Reads JSON lines from `mome bench train --json` and scripts/bench_reference.py
(stdin or files) and prints, per config, tokens/s, MFU and the ratios of mome to
each reference measured in the same run."""
import json, sys, fileinput

rows = [json.loads(l) for l in fileinput.input() if l.strip().startswith("{")]
by_cfg = {}
for r in rows:
    by_cfg.setdefault(r["config"], {})[r["implementation"]] = r
print("| config | impl | tokens/s | ms/step | MFU | peak MiB | mome / impl |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for cfg, impls in by_cfg.items():
    ours = impls.get("mome")
    for name, r in impls.items():
        ratio = f"{ours['tokens_per_second'] / r['tokens_per_second']:.2f}x" if ours and name != "mome" else ""
        print(f"| {cfg.split('/')[-1]} | {name} | {r['tokens_per_second']:.0f} | {r['step_seconds']*1e3:.1f} | "
              f"{r['mfu']*100:.1f}% | {r.get('peak_gpu_memory_mib')} | {ratio} |")
