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
. "$(dirname "$0")/gpu-common.sh"
gpu_torch_env
LOG=$OUT/log.txt
{ nvidia-smi -L || true; date -u; } >"$LOG"
t0=$(date +%s)
gpu_shards_1024 "$LOG"
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
