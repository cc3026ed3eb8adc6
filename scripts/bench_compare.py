#!/usr/bin/env python3
"""Reads JSON lines from `mome bench train --json` and scripts/bench_reference.py
(stdin or files) and prints, per config and mode, tokens/s, MFU and the ratios of
mome to each reference measured in the same run; then the KD cache/online ratio
of each implementation, the MoE-CE / JEET step ratio of each implementation (the
common expert's cost), and the `--profile` breakdowns found (mome's phases,
PyTorch's top kernels)."""
import json, fileinput

rows = [json.loads(l) for l in fileinput.input() if l.strip().startswith("{")]
by_cfg = {}
for r in rows:
    key = (r["config"].split("/")[-1], r.get("mode", "lm"))
    by_cfg.setdefault(key, {})[r["implementation"]] = r
print("| config | mode | impl | tokens/s | ms/step | MFU | peak MiB | mome / impl |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
for (cfg, mode), impls in by_cfg.items():
    ours = impls.get("mome")
    for name, r in impls.items():
        ratio = f"{ours['tokens_per_second'] / r['tokens_per_second']:.2f}x" if ours and name != "mome" else ""
        print(f"| {cfg} | {mode} | {name} | {r['tokens_per_second']:.0f} | {r['step_seconds']*1e3:.1f} | "
              f"{r['mfu']*100:.1f}% | {r.get('peak_gpu_memory_mib')} | {ratio} |")

# KD from the teacher cache vs online KD, per implementation (issue 8: >= 2x).
online = {i: r for (c, m), d in by_cfg.items() if m == "kd-online" for i, r in d.items()}
cached = {i: r for (c, m), d in by_cfg.items() if m == "kd-cache" for i, r in d.items()}
if online and cached:
    print("\n| impl | KD cache tokens/s | KD online tokens/s | cache / online |")
    print("| --- | ---: | ---: | ---: |")
    for i in sorted(set(online) & set(cached)):
        c, o = cached[i]["tokens_per_second"], online[i]["tokens_per_second"]
        print(f"| {i} | {c:.0f} | {o:.0f} | {c / o:.2f}x |")

# MoE-CE (routed + common expert) vs JEET (routed expert only), per implementation.
jeet = {i: r for (c, m), d in by_cfg.items() if m == "moe-jeet" for i, r in d.items()}
moece = {i: r for (c, m), d in by_cfg.items() if m == "moe-ce" for i, r in d.items()}
if jeet and moece:
    print("\n| impl | JEET tokens/s | MoE-CE tokens/s | MoE-CE / JEET |")
    print("| --- | ---: | ---: | ---: |")
    for i in sorted(set(jeet) & set(moece)):
        j, c = jeet[i]["tokens_per_second"], moece[i]["tokens_per_second"]
        print(f"| {i} | {j:.0f} | {c:.0f} | {c / j:.2f}x |")

for (cfg, mode), impls in by_cfg.items():
    for name, r in impls.items():
        p = r.get("profile")
        if p:
            cast = p.get("weight_cast_probe_ms")
            print(f"\n{cfg} [{mode}] {name}: {p['steps']} synchronised steps, {p['step_ms']:.1f} ms/step "
                  f"(unsynchronised {r['step_seconds']*1e3:.1f})"
                  + (f"; weight casts once: {cast:.2f} ms" if cast is not None else ""))
            print("| phase | ms | % |")
            print("| --- | ---: | ---: |")
            for ph in p["phases"]:
                print(f"| {ph['name']} | {ph['ms']:.2f} | {ph['pct']:.1f}% |")
        k = r.get("profile_top_kernels")
        if k:
            print(f"\n{cfg} [{mode}] {name}: top kernels ({r['profile_device_ms_per_step']:.1f} device ms/step)")
            print("| kernel | ms/step | % | calls/step |")
            print("| --- | ---: | ---: | ---: |")
            for e in k:
                print(f"| {e['name'][:80]} | {e['ms_per_step']:.2f} | {e['pct']:.1f}% | {e['calls_per_step']:.0f} |")
