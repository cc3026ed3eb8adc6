#!/usr/bin/env python3
"""Loss curves of the same training with and without a fused kernel (issue 18).

  curves_compare.py RUNS.json [--json OUT.json] [--skip N]

RUNS.json maps "MODE/SEED" to a `metrics.jsonl` (train lines every step). Mode
`reference` is the baseline. Prints, for each other mode, the per-step gap from the
reference run of the same seed (largest and mean absolute, steps after the first N),
next to the reference's own run-to-run spread: the per-step standard deviation over
its seeds (mean and largest), and the largest gap between two reference seeds.
The agreement criterion: a mode's mean gap is below the reference's mean spread.
Standard library only.
"""
import argparse
import itertools
import json
import statistics


def losses(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if r.get("kind") == "train":
            out[r["step"]] = r["loss"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("--json")
    ap.add_argument("--skip", type=int, default=10, help="steps left out at the start")
    a = ap.parse_args()
    runs = {}
    for key, path in json.load(open(a.runs)).items():
        mode, seed = key.split("/")
        try:
            runs.setdefault(mode, {})[seed] = losses(path)
        except OSError as e:
            print(f"missing run {key}: {e}")
    if a.json:
        json.dump(runs, open(a.json, "w"))
    ref = runs.get("reference", {})
    if len(ref) < 2:
        print("need at least two reference seeds")
        return 1
    steps = sorted(set.intersection(*(set(c) for c in ref.values())))
    steps = [s for s in steps if s > a.skip]
    sd = [statistics.stdev(c[s] for c in ref.values()) for s in steps]
    pair = max(
        max(abs(x[s] - y[s]) for s in steps)
        for x, y in itertools.combinations(ref.values(), 2)
    )
    print(f"steps {steps[0]}..{steps[-1]}, seeds {sorted(ref)}")
    print()
    print("| run | mean abs gap | max abs gap | final loss (mean over seeds) |")
    print("|---|---:|---:|---:|")
    finals = [c[steps[-1]] for c in ref.values()]
    print(
        f"| reference, seed-to-seed spread (std) | {statistics.mean(sd):.4f} | {max(sd):.4f} "
        f"| {statistics.mean(finals):.4f} |"
    )
    print(f"| reference, largest gap of two seeds | | {pair:.4f} | |")
    verdicts = []
    for mode, curves in sorted(runs.items()):
        if mode == "reference":
            continue
        gaps = []
        for seed, c in curves.items():
            r = ref.get(seed)
            if r is None:
                continue
            gaps += [abs(c[s] - r[s]) for s in steps if s in c]
        if not gaps:
            continue
        fin = [c[steps[-1]] for c in curves.values() if steps[-1] in c]
        print(
            f"| {mode} vs reference, same seed | {statistics.mean(gaps):.4f} | {max(gaps):.4f} "
            f"| {statistics.mean(fin):.4f} |"
        )
        ok = statistics.mean(gaps) < statistics.mean(sd)
        verdicts.append(f"{mode}: {'agrees' if ok else 'DIFFERS'} (mean gap {statistics.mean(gaps):.4f} vs spread {statistics.mean(sd):.4f})")
    print()
    for v in verdicts:
        print(v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
