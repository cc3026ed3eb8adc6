#!/usr/bin/env bash
# The README's main command: the method's data → tokenizer → shards → LM stages on the
# embedded demo corpus (data/demo/), on the CPU, offline. Output: runs/demo/.
#   balance (4 domains, 5% token spread) → train a BPE tokenizer → encode 256-token
#   shards → train a tiny GPT-2 → evaluate per domain → generate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-libtorch.sh
cargo build -p mome-cli --quiet
mome=target/debug/mome
out=runs/demo
mkdir -p "$out"
step() { printf '\n== %s\n' "$*" >&2; }

step "1/6 balance the four domains by token count (seed tokenizer counts tokens)"
$mome data balance \
    --domain en=data/demo/en.jsonl --domain fr=data/demo/fr.jsonl \
    --domain de=data/demo/de.jsonl --domain py=data/demo/py.jsonl \
    --valid-fraction 0.1 --max-diff-percent 5 \
    --tokenizer data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json \
    --out "$out/balanced" > "$out/balance_report.stdout.json"
python3 - "$out/balanced/balance_report.json" <<'PY' || cat "$out/balanced/balance_report.json"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"strategy {r['strategy']}, spread reached {r['spread_percent_reached']:.2f}% (max {r['max_diff_percent']}%)")
for d, v in r["domains"].items():
    print(f"  {d}: {v['tokens_before']} -> {v['tokens_after']} tokens, {v['records_after']} records")
PY

step "2/6 train an 8000-token BPE tokenizer (the method's kind) on the balanced data"
mkdir -p "$out/tokenizer"
$mome tokenizer train --input "$out/balanced" --vocab-size 8000 \
    --out "$out/tokenizer/tokenizer.json" > "$out/tokenizer/stats.json"
echo "wrote $out/tokenizer/tokenizer.json"

step "3/6 encode 256-token shards"
$mome data encode --tokenizer "$out/tokenizer/tokenizer.json" --input "$out/balanced" \
    --seq-len 256 --out "$out/shards" > "$out/encode_report.json"
$mome data stats "$out/shards" --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(json.dumps({k: s[k] for k in s if k != "splits"}))' || true

step "4/6 train a tiny GPT-2 (configs/train-tiny.toml)"
rm -rf "$out/train-tiny"
$mome train --config configs/train-tiny.toml --out "$out/train-tiny" > "$out/train_summary.json"

step "5/6 per-domain validation loss and perplexity"
$mome eval --model "$out/train-tiny/model" --shards "$out/shards"

step "6/6 generate"
$mome generate --model "$out/train-tiny/model" --tokenizer "$out/tokenizer/tokenizer.json" \
    --prompt "The Debian package manager" --prompt "Le système Debian" \
    --prompt "Das Debian-System" --prompt "def read_config(path):" --max-new-tokens 24 --seed 1

printf '\ndone: everything is in %s/\n' "$out" >&2
