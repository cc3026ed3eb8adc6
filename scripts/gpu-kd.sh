#!/usr/bin/env bash
# The paper's KD comparison (issue 5) at paper model sizes on one CUDA GPU:
# configs/experiments/kd-gpu.toml on the demo corpus, balanced and encoded with the
# paper's tokenizer at 1024 tokens. Run from the repository root on the GPU machine:
#
#   MOME=.devbin/mome OUT=/tmp/kd-gpu-out bash scripts/gpu-kd.sh
#
# MOME: a release `mome` binary (built elsewhere with `cargo build --release -p mome-cli`).
# OUT:  where report.md, the PNGs, the metrics and the log are copied.
# TORCH_LIB (prepended to LD_LIBRARY_PATH) defaults to the lib folder of the
# machine's Python torch 2.11.
set -euo pipefail
MOME=${MOME:-target/release/mome}
OUT=${OUT:-runs/kd-gpu-out}
mkdir -p "$OUT"
if [ -z "${TORCH_LIB:-}" ]; then
  TORCH_LIB=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
fi
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
TOK=data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json
LOG=$OUT/log.txt
{ nvidia-smi -L || true; date -u; } >"$LOG"
t0=$(date +%s)
if [ ! -e runs/kd-gpu-data/balanced/balance_report.json ]; then
  "$MOME" data balance --domain en=data/demo/en.jsonl --domain fr=data/demo/fr.jsonl \
    --domain de=data/demo/de.jsonl --domain py=data/demo/py.jsonl --valid-fraction 0.1 \
    --seed 0 --max-diff-percent 5 --tokenizer "$TOK" --out runs/kd-gpu-data/balanced \
    >"$OUT/balance.json" 2>>"$LOG"
fi
if [ ! -e runs/shards-1024/manifest.json ]; then
  "$MOME" data encode --tokenizer "$TOK" --input runs/kd-gpu-data/balanced --seq-len 1024 \
    --out runs/shards-1024 >"$OUT/encode.json" 2>>"$LOG"
fi
"$MOME" data stats runs/shards-1024 --json >"$OUT/shards.json"
t1=$(date +%s)
echo "data: $((t1 - t0)) s" | tee -a "$LOG"
"$MOME" experiment kd --config configs/experiments/kd-gpu.toml >>"$LOG" 2>&1
t2=$(date +%s)
echo "experiment kd: $((t2 - t1)) s" | tee -a "$LOG"
cp runs/kd-gpu/report.md runs/kd-gpu/*.png "$OUT/" 2>/dev/null || true
# One archive for the raw metrics (the GPU machine's tool returns few files).
(cd runs/kd-gpu && find . -name '*.jsonl' -print0 | tar --null -czf "$OUT/metrics.tar.gz" -T -)
cat runs/kd-gpu/report.md
