#!/usr/bin/env python3
"""The "one engine" check: `mome bench train` against the production command.

  engine_compare.py config BENCH.toml OUT.toml --shards S --tokenizer T [--teacher DIR]
      [--cache DIR] [--steps N] [--log-every K] [--run-dir DIR]
      Writes the production config (`mome train`, `mome distill` or `mome moe train`)
      of a bench config: the same model, batch, precision, optimizer and KD settings,
      on real shards; prints the command name (train | distill | moe train).
  engine_compare.py table BENCH.jsonl RUNS.json
      Prints the Markdown table: bench tokens/s against the production run's tokens/s
      (median of its metrics.jsonl windows after the first), and their ratio.

Standard library only (tomllib, Python >= 3.11).
"""
import argparse
import json
import statistics
import sys
import tomllib


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def dump(doc):
    """A small TOML writer: top-level keys, then one table per dict."""
    lines = [f"{k} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def make_config(a):
    cfg = tomllib.load(open(a.bench, "rb"))
    bench = cfg.pop("bench", {})
    kd = cfg.pop("distill", {})
    mode = bench.get("mode", "lm")
    train = dict(cfg["train"])
    train.update(max_steps=a.steps, log_every=a.log_every, eval_every=0, checkpoint_every=0)
    data = {"shards": a.shards, "tokenizer": a.tokenizer, "batch_size": cfg["data"]["batch_size"]}
    doc = {"out_dir": a.run_dir, "device": cfg.get("device", "cuda")}
    eval_ = {"max_sequences": 4, "batch_size": 4}
    if mode == "lm":
        doc.update(model=cfg["model"], data=data, eval=eval_, train=train)
        cmd = "train"
    elif mode in ("kd-online", "kd-cache"):
        teacher = {"dir": a.teacher} if mode == "kd-online" else {"cache": a.cache}
        doc.update(teacher=teacher, student=cfg["model"], data=data, eval=eval_,
                   distill=kd, train=train)
        cmd = "distill"
    elif mode in ("moe-jeet", "moe-ce"):
        moe = {"arch": "jeet" if mode == "moe-jeet" else "moe-ce",
               "domains": bench.get("domains", ["en", "fr", "de", "py"])}
        doc.update(moe=moe, model=cfg["model"], data=data, eval=eval_, train=train)
        cmd = "moe train"
    else:
        sys.exit(f"unknown mode {mode}")
    open(a.out, "w").write(dump(doc))
    print(cmd)


def production_tps(run_dir):
    rows = [json.loads(l) for l in open(f"{run_dir}/metrics.jsonl") if l.strip()]
    tps = [r["tokens_per_s"] for r in rows if r.get("kind") == "train"]
    if len(tps) < 2:
        sys.exit(f"{run_dir}: fewer than two train windows")
    return statistics.median(tps[1:]), len(tps) - 1


def table(a):
    bench = {}
    for line in open(a.bench_jsonl):
        if line.startswith("{"):
            r = json.loads(line)
            bench[r["config"].split("/")[-1].removesuffix(".toml")] = r
    runs = json.load(open(a.runs))
    print("| config | mode | bench tokens/s | production tokens/s (windows) | production / bench | bench peak MiB |")
    print("|---|---|---:|---:|---:|---:|")
    worst = 0.0
    for name, run_dir in runs.items():
        b = bench.get(name)
        if b is None:
            print(f"| {name} | – | missing | – | – | – |")
            continue
        p, n = production_tps(run_dir)
        ratio = p / b["tokens_per_second"]
        worst = max(worst, abs(ratio - 1))
        print(f"| {name} | {b['mode']} | {b['tokens_per_second']:,.0f} | {p:,.0f} ({n}) | "
              f"{ratio:.3f} | {b.get('peak_gpu_memory_mib')} |")
    print(f"\nlargest deviation: {100 * worst:.1f}%")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config")
    c.add_argument("bench")
    c.add_argument("out")
    c.add_argument("--shards", required=True)
    c.add_argument("--tokenizer", required=True)
    c.add_argument("--teacher")
    c.add_argument("--cache")
    c.add_argument("--steps", type=int, default=40)
    c.add_argument("--log-every", type=int, default=10)
    c.add_argument("--run-dir", required=True)
    t = sub.add_parser("table")
    t.add_argument("bench_jsonl")
    t.add_argument("runs")
    a = ap.parse_args()
    make_config(a) if a.cmd == "config" else table(a)


if __name__ == "__main__":
    main()
