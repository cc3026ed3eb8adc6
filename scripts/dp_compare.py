#!/usr/bin/env python3
"""Compares the loss curves and speed of data-/expert-parallel runs with the first run
of each family (the 1-process run): `dp_compare.py RUN_DIR...` (missing folders are
skipped). Reads each folder's metrics.jsonl (train lines, written by rank 0) and prints
a Markdown table: steps, final loss, max relative loss difference to the baseline over
the common logged steps, and tokens/s (mean of the log windows after the first)."""
import json
import os
import sys


def train_lines(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        lines = [json.loads(l) for l in f if l.strip()]
    return [l for l in lines if l.get("kind") == "train"]


def family(run):
    return os.path.basename(run.rstrip("/")).split("-")[0]


def main():
    runs = [r for r in sys.argv[1:] if os.path.exists(os.path.join(r, "metrics.jsonl"))]
    base = {}
    print("| run | steps | final loss | max rel. diff vs 1 process | tokens/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in runs:
        lines = train_lines(r)
        losses = {l["step"]: l["loss"] for l in lines}
        tps = [l["tokens_per_s"] for l in lines[1:]] or [l["tokens_per_s"] for l in lines]
        speed = sum(tps) / len(tps)
        fam = family(r)
        if fam not in base:
            base[fam] = (losses, speed)
            diff, up = "baseline", "1.00×"
        else:
            b, s0 = base[fam]
            common = sorted(set(b) & set(losses))
            d = max(abs(losses[s] - b[s]) / abs(b[s]) for s in common) if common else float("nan")
            diff, up = f"{d:.2e}", f"{speed / s0:.2f}×"
        last = lines[-1]
        print(f"| {os.path.basename(r)} | {last['step']} | {last['loss']:.4f} | {diff} | {speed:,.0f} | {up} |")


if __name__ == "__main__":
    main()
