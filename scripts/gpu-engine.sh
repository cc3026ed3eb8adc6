#!/usr/bin/env bash
# The "one engine" measurements on one GPU, in one call: for each config, `mome bench
# train` (the production step on random tokens) and the production command itself
# (`mome train`, `mome distill` or `mome moe train`, same model, batch, precision and
# KD settings, on real shards), then the table of scripts/engine_compare.py; plus the
# AdamW and KD-chunk comparisons on the bench. From the repository root:
#
#   MOME=.devbin/mome OUT=/tmp/engine bash scripts/gpu-engine.sh
#
# CONFIGS (names in configs/bench/, default: student-3l teacher-medium kd-online-student-3l
# kd-cache-student-3l moe-ce), STEPS (production steps, default 40), EXTRA=0 skips the
# AdamW / KD-chunk comparison. Output: $OUT/bench.jsonl, $OUT/runs.json, $OUT/engine.md,
# $OUT/log.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
MOME=${MOME:-.devbin/mome}
OUT=${OUT:-runs/engine-out}
STEPS=${STEPS:-40}
CONFIGS=${CONFIGS:-"student-3l teacher-medium kd-online-student-3l kd-cache-student-3l moe-ce"}
mkdir -p "$OUT"
# shellcheck source=scripts/gpu-common.sh
. scripts/gpu-common.sh
gpu_torch_env
LOG=$OUT/log.txt
{ nvidia-smi -L || true; date -u; "$MOME" --version; } >"$LOG" 2>&1
TOK=data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json
W=runs/engine
mkdir -p "$W"
t0=$(date +%s)
say() { echo "[gpu-engine $(( $(date +%s) - t0 )) s] $*" | tee -a "$LOG" >&2; }

gpu_shards_1024 "$LOG"
say "shards ready"
# A teacher-medium folder (one step: only its shape matters here) and its top-K cache.
if [ ! -e "$W/teacher/model/model.safetensors" ]; then
  cat >"$W/teacher.toml" <<EOF
out_dir = "$W/teacher"
device = "cuda"
[model]
preset = "teacher-medium"
[data]
shards = "runs/shards-1024"
batch_size = 8
[eval]
max_sequences = 2
batch_size = 2
[train]
max_steps = 1
precision = "bf16"
quiet = true
optimizer = { lr = 3e-4 }
EOF
  "$MOME" train --config "$W/teacher.toml" >/dev/null 2>>"$LOG" || { say "teacher failed"; exit 1; }
fi
if [ ! -e "$W/cache/manifest.json" ]; then
  "$MOME" teacher-cache build --teacher "$W/teacher/model" --shards runs/shards-1024 --top-k 64 \
    --temperature 2 --bf16 --batch-size 16 --out "$W/cache" >/dev/null 2>>"$LOG" || { say "cache failed"; exit 1; }
fi
say "teacher and cache ready"

: >"$OUT/bench.jsonl"
echo "{" >"$OUT/runs.json"
sep=""
for c in $CONFIGS; do
  "$MOME" bench train --config "configs/bench/$c.toml" --json --profile 2>>"$LOG" | grep '^{' >>"$OUT/bench.jsonl"
  say "bench $c"
  run="$W/run-$c"
  rm -rf "$run"
  cmd=$(python3 scripts/engine_compare.py config "configs/bench/$c.toml" "$W/$c.toml" \
        --shards runs/shards-1024 --tokenizer "$TOK" --teacher "$W/teacher/model" \
        --cache "$W/cache" --steps "$STEPS" --run-dir "$run")
  # shellcheck disable=SC2086
  "$MOME" $cmd --config "$W/$c.toml" --quiet >"$OUT/prod-$c.json" 2>>"$LOG" || say "production $c failed"
  say "production $c ($cmd)"
  printf '%s  "%s": "%s"\n' "$sep" "$c" "$run" >>"$OUT/runs.json"
  sep=","
done
echo "}" >>"$OUT/runs.json"
python3 scripts/engine_compare.py table "$OUT/bench.jsonl" "$OUT/runs.json" | tee "$OUT/engine.md"

if [ "${EXTRA:-1}" = 1 ]; then
  : >"$OUT/extra.jsonl"
  for a in flat fused; do
    for c in student-3l teacher-medium; do
      "$MOME" bench train --config "configs/bench/$c.toml" --json --adamw "$a" 2>>"$LOG" | grep '^{' >>"$OUT/extra.jsonl"
    done
  done
  for k in 0 512; do
    "$MOME" bench train --config configs/bench/kd-online-student-3l.toml --json --kd-chunk "$k" 2>>"$LOG" | grep '^{' >>"$OUT/extra.jsonl"
  done
  python3 - "$OUT/extra.jsonl" <<'PY' | tee -a "$OUT/engine.md"
import json, sys
print("\n| config | adamw | kd_chunk | tokens/s | peak MiB |\n|---|---|---|---:|---:|")
for l in open(sys.argv[1]):
    r = json.loads(l)
    k = (r.get("kd") or {}).get("kd_chunk", "–")
    print(f"| {r['config'].split('/')[-1]} | {r['adamw']} | {k} | {r['tokens_per_second']:,.0f} | {r['peak_gpu_memory_mib']} |")
PY
fi
say "done"
