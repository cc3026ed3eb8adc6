#!/usr/bin/env bash
# Issue 18's loss-curve check on one GPU, in one call: `mome train` of the student-3l
# shape (bf16, batch 32 x 1024, the bench config's optimizer) for STEPS steps on the
# GPU corpus (runs/gpu-corpus, encoded with the paper's 32000-token tokenizer), once per
# seed of SEEDS with each `[train.kernels] linear_ce` of MODES, every step logged
# (`log_every = 1`). scripts/curves_compare.py then prints, per mode, the largest gap
# from the reference run of the same seed, against the reference's own seed-to-seed
# spread. From the repository root:
#
#   MOME=.devbin/mome OUT=/tmp/curves bash scripts/gpu-curves.sh
#
# Needs runs/gpu-corpus/corpus.tar.xz (scripts/build_gpu_corpus.py). Output:
# $OUT/curves.json (every train line of every run), $OUT/curves.md, $OUT/log.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
MOME=${MOME:-.devbin/mome}
OUT=${OUT:-runs/curves-out}
STEPS=${STEPS:-200}
SEEDS=${SEEDS:-"1 2 3"}
MODES=${MODES:-"reference fused"}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
# shellcheck source=scripts/gpu-common.sh
. scripts/gpu-common.sh
gpu_torch_env
LOG=$OUT/log.txt
{ nvidia-smi -L || true; date -u; "$MOME" --version; } >"$LOG" 2>&1
TOK=data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json
W=runs/curves
t0=$(date +%s)
say() { echo "[gpu-curves $(( $(date +%s) - t0 )) s] $*" | tee -a "$LOG" >&2; }
if [ ! -e runs/gpu-corpus/train/en.jsonl ]; then
  tar -xJf runs/gpu-corpus/corpus.tar.xz -C runs || { say "runs/gpu-corpus/corpus.tar.xz missing or broken"; exit 2; }
fi
if [ ! -e "$W/shards/manifest.json" ]; then
  d=runs/gpu-corpus/train
  "$MOME" data balance --domain en=$d/en.jsonl --domain fr=$d/fr.jsonl --domain de=$d/de.jsonl \
    --domain py=$d/py.jsonl --valid-fraction 0.02 --seed 0 --max-diff-percent 5 --id-field id \
    --tokenizer "$TOK" --out "$W/balanced" >/dev/null 2>>"$LOG" || { say "balance failed"; exit 1; }
  "$MOME" data encode --tokenizer "$TOK" --input "$W/balanced" --seq-len 1024 --out "$W/shards" \
    >/dev/null 2>>"$LOG" || { say "encode failed"; exit 1; }
fi
say "shards ready"
echo "{" >"$OUT/runs.json"
sep=""
for seed in $SEEDS; do
  for m in $MODES; do
    run=$W/$m-$seed
    rm -rf "$run"
    cat >"$W/$m-$seed.toml" <<TOML
out_dir = "$run"
device = "cuda"
[model]
preset = "student-3l"
[data]
shards = "$W/shards"
tokenizer = "$TOK"
batch_size = 32
[eval]
max_sequences = 4
batch_size = 4
[train]
max_steps = $STEPS
log_every = 1
eval_every = 0
checkpoint_every = 0
seed = $seed
precision = "bf16"
clip_grad_norm = 1.0
quiet = true
optimizer = { lr = 3e-4, betas = [0.9, 0.95], weight_decay = 0.05 }
kernels = { linear_ce = "$m" }
TOML
    "$MOME" train --config "$W/$m-$seed.toml" --quiet >/dev/null 2>>"$LOG" || say "run $m seed $seed failed"
    say "$m seed $seed"
    printf '%s  "%s/%s": "%s/metrics.jsonl"\n' "$sep" "$m" "$seed" "$run" >>"$OUT/runs.json"
    sep=","
  done
done
echo "}" >>"$OUT/runs.json"
"$PYTHON" scripts/curves_compare.py "$OUT/runs.json" --json "$OUT/curves.json" | tee "$OUT/curves.md"
