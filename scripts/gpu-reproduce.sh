#!/usr/bin/env bash
# The reduced-scale reproduction (configs/gpu.toml, docs/reproduction.md) on one GPU,
# in steps of at most STEP_SECONDS each: every call runs `mome pipeline` until it
# finishes or the step's time is up (SIGTERM; the pipeline resumes from its stage
# records and checkpoints on the next call), then packs what the report needs.
# From the repository root, with the corpus archive of scripts/build_gpu_corpus.py:
#
#   MOME=.devbin/mome OUT=/tmp/repro bash scripts/gpu-reproduce.sh   # again until it says done
#
# Needs: runs/gpu-corpus/corpus.tar.xz (14.2 MiB; unpacked on the first call) and a
# CUDA build of mome. Output in $OUT: log.txt (appended by every call), status.txt
# ("done" or "unfinished"), and when done report.md and summaries.tar.xz (every
# .json, .jsonl, .md, .toml and .png of runs/gpu:
# the typed summaries, metrics and configs, no weights), enough to rebuild the report
# elsewhere with `mome pipeline --config configs/gpu.toml --out runs/gpu --only report`.
set -uo pipefail
cd "$(dirname "$0")/.."
MOME=${MOME:-.devbin/mome}
OUT=${OUT:-runs/gpu-reproduce-out}
STEP_SECONDS=${STEP_SECONDS:-540}
RUN=runs/gpu
mkdir -p "$OUT"
# shellcheck source=scripts/gpu-common.sh
. scripts/gpu-common.sh
gpu_torch_env
LOG=$OUT/log.txt
{ echo "== step at $(date -u +%FT%TZ)"; nvidia-smi -L || true; "$MOME" --version; } >>"$LOG" 2>&1

if [ ! -e runs/gpu-corpus/train/en.jsonl ]; then
  [ -e runs/gpu-corpus/corpus.tar.xz ] || {
    echo "[gpu-reproduce] runs/gpu-corpus/corpus.tar.xz is missing: run scripts/build_gpu_corpus.py" >&2
    exit 2
  }
  tar -xJf runs/gpu-corpus/corpus.tar.xz -C runs || { echo "[gpu-reproduce] unpacking failed" >&2; exit 2; }
fi

t0=$(date +%s)
timeout --signal=TERM --kill-after=20 "$STEP_SECONDS" \
  "$MOME" pipeline --config configs/gpu.toml --out "$RUN" >>"$LOG" 2>&1
rc=$?
t1=$(date +%s)
echo "[gpu-reproduce] pipeline step: $((t1 - t0)) s, exit $rc" | tee -a "$LOG" >&2
grep -E '^\[[0-9]+/[0-9]+\] [a-z]+: (done|skipped)' "$LOG" | tail -n 12 >&2

if [ "$rc" -eq 0 ] && [ -e "$RUN/report.md" ]; then
  echo done >"$OUT/status.txt"
  cp "$RUN/report.md" "$OUT/report.md"
  find "$RUN" -type f \
    \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.toml' -o -name '*.png' \) \
    -not -path '*/checkpoints/*' -not -name 'tokenizer.json' -print0 \
    | tar --null -cJf "$OUT/summaries.tar.xz" --files-from=-
  exit 0
fi
echo unfinished >"$OUT/status.txt"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "[gpu-reproduce] the step's $STEP_SECONDS s are up: run this script again to resume" >&2
  exit 0
fi
echo "[gpu-reproduce] the pipeline failed (exit $rc): see $LOG" >&2
tail -n 40 "$LOG" >&2
exit 1
