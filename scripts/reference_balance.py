#!/usr/bin/env python3
"""Re-implementation of the method's Python balancing tool (method.md §1).

This is the *reference* that the `data-bench` binary (`examples/data-bench`) times
mome's balancing against.
It does what the research tool's "balanced dataset creation tool" does:

* count each domain's total tokens with tiktoken's GPT-2 encoding (as the
  research tool does), one article at a time;
* ``limit = min_total * (1 + max_diff_percent / 100)``;
* walk the articles in order and keep an article only if every domain stays
  ``<= limit`` after adding it.

With ``--common-articles`` only ids present in every domain are kept, in the
first domain's order, and the walk is joint (article i is the same article in
each domain; kept only if every domain stays under the limit). Without it the
articles of different domains are unrelated, so each domain is walked on its
own under the common limit (the same rule mome's ``--strategy reference`` uses
then).

Inputs are JSONL files given as ``--domain NAME=PATH`` (repeatable); output is
``OUT/train/NAME.jsonl`` (``{"id", "text"}`` per line) plus
``OUT/balance_report.json``. One JSON line on stdout reports records, tokens
counted, seconds, tokens/s and peak RSS (``VmHWM``; ``resource.getrusage``'s
``ru_maxrss`` is printed too, see ``peak_rss_bytes``).

GPT-2 vocabulary, offline
-------------------------
``tiktoken.get_encoding("gpt2")`` downloads ``vocab.bpe``/``encoder.json`` from
the internet at run time, which this project must not need. The GPT-2 ranks
are taken instead from ``whisper/assets/gpt2.tiktoken``, shipped inside the
PyPI package ``openai-whisper`` (installed with ``--no-deps``; only the data
file is read, whisper itself is never imported). That file is byte-identical
to tiktoken's ``r50k_base.tiktoken`` (its sha256 is checked against the hash
tiktoken pins for r50k_base), and r50k_base has exactly GPT-2's merge ranks,
split pattern and ``<|endoftext|>`` = 50256. The encoding is built with
``tiktoken.Encoding("gpt2", pat_str, mergeable_ranks, special_tokens)``; the
counter is ``len(enc.encode_ordinary(text))`` (special-token text counts as
ordinary text, so code that mentions ``<|endoftext|>`` cannot crash the run).
``--gpt2-ranks PATH`` points at another copy of the file.

The selection functions do not import tiktoken, so tests can import this file
with any Python 3.
"""

import argparse
import importlib.util
import json
import os
import resource
import sys
import time

# tiktoken's pinned sha256 of r50k_base.tiktoken (= GPT-2's merge ranks).
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# tiktoken_ext.openai_public.r50k_pat_str (GPT-2's pattern, possessive form).
GPT2_PAT_STR = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)


def limit_for(totals, max_diff_percent):
    """``min_total * (1 + max_diff_percent / 100)``."""
    return min(totals) * (1.0 + max_diff_percent / 100.0) if totals else 0.0


def reference_select(counts, max_diff_percent):
    """The tool's rule over aligned counts ``counts[k][i]``.

    Returns ``(keep, limit)``: article i is kept iff every domain's running
    total stays ``<= limit`` after adding it.
    """
    limit = limit_for([sum(c) for c in counts], max_diff_percent)
    return joint_walk(counts, limit), limit


def joint_walk(counts, limit):
    """Keeps article i iff every domain's running total stays ``<= limit``."""
    n = len(counts[0]) if counts else 0
    totals = [0] * len(counts)
    keep = []
    for i in range(n):
        if all(t + c[i] <= limit for t, c in zip(totals, counts)):
            for k, c in enumerate(counts):
                totals[k] += c[i]
            keep.append(True)
        else:
            keep.append(False)
    return keep


def walk_select(counts, limit):
    """One domain walked on its own: keep each record that keeps the total <= limit."""
    total = 0
    keep = []
    for c in counts:
        if total + c <= limit:
            total += c
            keep.append(True)
        else:
            keep.append(False)
    return keep


def gpt2_ranks_path(explicit):
    if explicit:
        return explicit
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "reference_balance: no GPT-2 ranks: install `openai-whisper --no-deps` "
            "(it ships whisper/assets/gpt2.tiktoken) or pass --gpt2-ranks PATH"
        )
    return os.path.join(spec.submodule_search_locations[0], "assets", "gpt2.tiktoken")


def gpt2_encoding(ranks_path):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(ranks_path, expected_hash=R50K_SHA256)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
        explicit_n_vocab=50257,
    )


def read_jsonl(path, text_field, id_field):
    """Yields ``(id, text)``; the id defaults to ``path:line``."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"reference_balance: {path}:{n}: malformed JSON: {e}")
            if text_field not in rec:
                sys.exit(f"reference_balance: {path}:{n}: no field {text_field!r}")
            rid = rec.get(id_field) if id_field else None
            yield (str(rid) if rid is not None else f"{path}:{n}"), rec[text_field]


def count_domain(enc, paths, args):
    """Pass 1 over one domain: ids and GPT-2 token counts, article by article."""
    ids, counts = [], []
    for p in paths:
        for rid, text in read_jsonl(p, args.text_field, args.id_field):
            ids.append(rid)
            counts.append(len(enc.encode_ordinary(text)))
    return ids, counts


def write_kept(paths, args, wanted_order, out_path):
    """Pass 2: writes the records whose ordinals are in ``wanted_order``, in that order."""
    want = {o: i for i, o in enumerate(wanted_order)}
    kept = [None] * len(wanted_order) if wanted_order != sorted(wanted_order) else None
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as w:
        o = 0
        for p in paths:
            for rid, text in read_jsonl(p, args.text_field, args.id_field):
                if o in want:
                    line = json.dumps({"id": rid, "text": text}, ensure_ascii=False) + "\n"
                    if kept is None:
                        w.write(line)
                    else:
                        kept[want[o]] = line
                o += 1
        if kept is not None:
            w.writelines(kept)
    os.replace(tmp, out_path)


def peak_rss_bytes():
    """Peak RSS of this process.

    ``VmHWM`` of /proc/self/status where it exists: ``getrusage``'s ``ru_maxrss``
    is kept across fork+exec on Linux, so in a child of a large parent it reports
    the parent's size. Elsewhere ``getrusage`` (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--domain", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-diff-percent", type=float, default=5.0)
    ap.add_argument("--common-articles", action="store_true")
    ap.add_argument("--common-domains", default="", help="comma-separated; default all")
    ap.add_argument("--text-field", default="text")
    ap.add_argument("--id-field", default=None)
    ap.add_argument("--gpt2-ranks", default=None, help="path of gpt2.tiktoken")
    args = ap.parse_args()

    domains = {}
    for d in args.domain:
        name, sep, path = d.partition("=")
        if not sep or not name or not path:
            sys.exit(f"reference_balance: `{d}`: expected NAME=PATH")
        domains.setdefault(name, []).append(path)
    names = list(domains)

    t0 = time.perf_counter()
    enc = gpt2_encoding(gpt2_ranks_path(args.gpt2_ranks))
    t_load = time.perf_counter() - t0

    t1 = time.perf_counter()
    scans = {n: count_domain(enc, domains[n], args) for n in names}
    count_seconds = time.perf_counter() - t1
    tokens_counted = sum(sum(c) for _, c in scans.values())
    for n in names:
        if not scans[n][1]:
            sys.exit(f"reference_balance: domain {n}: no record")

    aligned = []
    if args.common_articles:
        aligned = [n for n in names if not args.common_domains or n in args.common_domains.split(",")]
    free = [n for n in names if n not in aligned]
    order = {}
    limit = 0.0
    if aligned:
        maps = [{} for _ in aligned]
        for m, n in zip(maps, aligned):
            for i, rid in enumerate(scans[n][0]):
                m.setdefault(rid, i)
        pos = [[] for _ in aligned]
        for i, rid in enumerate(scans[aligned[0]][0]):
            if maps[0][rid] != i or not all(rid in m for m in maps[1:]):
                continue
            for k, m in enumerate(maps):
                pos[k].append(m[rid])
        acounts = [[scans[n][1][o] for o in p] for n, p in zip(aligned, pos)]
        totals = [sum(c) for c in acounts] + [sum(scans[n][1]) for n in free]
        limit = limit_for(totals, args.max_diff_percent)
        keep = joint_walk(acounts, limit)
        for k, n in enumerate(aligned):
            order[n] = [o for o, x in zip(pos[k], keep) if x]
    else:
        limit = limit_for([sum(scans[n][1]) for n in names], args.max_diff_percent)
    for n in free:
        order[n] = [i for i, x in enumerate(walk_select(scans[n][1], limit)) if x]

    os.makedirs(os.path.join(args.out, "train"), exist_ok=True)
    report = {"counter": "tiktoken gpt2", "limit": limit, "domains": {}}
    for n in names:
        write_kept(domains[n], args, order[n], os.path.join(args.out, "train", f"{n}.jsonl"))
        report["domains"][n] = {
            "records_before": len(scans[n][1]),
            "tokens_before": sum(scans[n][1]),
            "records_after": len(order[n]),
            "tokens_after": sum(scans[n][1][o] for o in order[n]),
        }
    with open(os.path.join(args.out, "balance_report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    seconds = time.perf_counter() - t0
    import tiktoken

    print(
        json.dumps(
            {
                "counter": "tiktoken gpt2 (r50k ranks from openai-whisper's gpt2.tiktoken)",
                "tiktoken_version": getattr(tiktoken, "__version__", "unknown"),
                "python": sys.version.split()[0],
                "records": sum(len(c) for _, c in scans.values()),
                "records_kept": sum(len(o) for o in order.values()),
                "tokens_counted": tokens_counted,
                "load_seconds": t_load,
                "count_seconds": count_seconds,
                "seconds": seconds,
                "tokens_per_second": tokens_counted / max(seconds, 1e-9),
                "peak_rss_bytes": peak_rss_bytes(),
                "getrusage_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "limit": limit,
            }
        )
    )


if __name__ == "__main__":
    main()
