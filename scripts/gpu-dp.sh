#!/usr/bin/env bash
# Data-parallel `mome distill` and `mome moe train` (issue 9) on the GPUs of this
# machine: the same config as one plain process, as one NCCL rank under
# `mome launch --gpus 1` (the data-parallel code path, which must match the plain
# run), and, with two or more GPUs, as two ranks (data parallel) and with the MoE
# experts spread over two GPUs (expert parallel). Loss curves and tokens/s are
# compared at the end (scripts/dp_compare.py). Run from the repository root:
#
#   MOME=.devbin/mome OUT=/tmp/dp-out bash scripts/gpu-dp.sh
#
# MOME: a release `mome` built with `cargo build --release -p mome-cli --features nccl`.
# OUT:  where the log, the comparison and an archive of the metrics go.
# STEPS_KD / STEPS_MOE: optimizer steps of the KD and MoE runs (default 200 / 60).
set -euo pipefail
MOME=${MOME:-target/release/mome}
OUT=${OUT:-runs/dp-out}
STEPS_KD=${STEPS_KD:-200}
STEPS_MOE=${STEPS_MOE:-60}
mkdir -p "$OUT"
if [ -z "${TORCH_LIB:-}" ]; then
  TORCH_LIB=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
fi
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
TOK=data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json
LOG=$OUT/log.txt
GPUS=$(nvidia-smi -L | wc -l)
{ nvidia-smi -L; date -u; echo "gpus: $GPUS"; } >"$LOG"
step() { echo "== $*" | tee -a "$LOG"; }

if [ ! -e runs/kd-gpu-data/balanced/balance_report.json ]; then
  "$MOME" data balance --domain en=data/demo/en.jsonl --domain fr=data/demo/fr.jsonl \
    --domain de=data/demo/de.jsonl --domain py=data/demo/py.jsonl --valid-fraction 0.1 \
    --seed 0 --max-diff-percent 5 --tokenizer "$TOK" --out runs/kd-gpu-data/balanced \
    >/dev/null 2>>"$LOG"
fi
if [ ! -e runs/shards-1024/manifest.json ]; then
  "$MOME" data encode --tokenizer "$TOK" --input runs/kd-gpu-data/balanced --seq-len 1024 \
    --out runs/shards-1024 >/dev/null 2>>"$LOG"
fi
step "teacher (30 steps of configs/dp/teacher-medium.toml)"
"$MOME" train --config configs/dp/teacher-medium.toml --max-steps 30 --quiet >>"$LOG" 2>&1

KD=configs/dp/distill-student-3l.toml
step "distill, 1 process"
"$MOME" distill --config $KD --out runs/dp/kd-1gpu --max-steps "$STEPS_KD" --quiet >>"$LOG" 2>&1
step "distill, launch --gpus 1 (NCCL, one rank)"
"$MOME" launch --gpus 1 -- distill --config $KD --out runs/dp/kd-nccl1 --max-steps "$STEPS_KD" --quiet >>"$LOG" 2>&1
if [ "$GPUS" -ge 2 ]; then
  step "distill, launch --gpus 2"
  "$MOME" launch --gpus 2 -- distill --config $KD --out runs/dp/kd-2gpu --max-steps "$STEPS_KD" --quiet >>"$LOG" 2>&1
fi

MOE=configs/dp/moe-ce.toml
step "moe train, 1 process"
"$MOME" moe train --config $MOE --out runs/dp/moe-1gpu --max-steps "$STEPS_MOE" --quiet >>"$LOG" 2>&1
step "moe train, launch --gpus 1 (NCCL, one rank)"
"$MOME" launch --gpus 1 -- moe train --config $MOE --out runs/dp/moe-nccl1 --max-steps "$STEPS_MOE" --quiet >>"$LOG" 2>&1
if [ "$GPUS" -ge 2 ]; then
  step "moe train, launch --gpus 2 (data parallel)"
  "$MOME" launch --gpus 2 -- moe train --config $MOE --out runs/dp/moe-2gpu --max-steps "$STEPS_MOE" --quiet >>"$LOG" 2>&1
  step "moe train, --expert-devices cuda:0,cuda:1 (expert parallel)"
  "$MOME" moe train --config $MOE --out runs/dp/moe-ep2 --max-steps "$STEPS_MOE" --expert-devices cuda:0,cuda:1 --quiet >>"$LOG" 2>&1
fi

step "PLE students: 4 independent distillations (one per domain) over $GPUS GPU(s), launch --jobs"
mkdir -p runs/dp/ple
: >runs/dp/ple/jobs.txt
for d in en fr de py; do
  sed -e "s|^out_dir = .*|out_dir = \"runs/dp/ple/$d\"|" \
      -e "s|^sampler = \"mixed\"|sampler = \"mixed\"\ndomains = [\"$d\"]|" $KD >runs/dp/ple/$d.toml
  echo "mome distill --config runs/dp/ple/$d.toml --max-steps 50 --quiet" >>runs/dp/ple/jobs.txt
done
"$MOME" launch --gpus "$GPUS" --jobs runs/dp/ple/jobs.txt >"$OUT/ple-jobs.json" 2>>"$LOG"
cat "$OUT/ple-jobs.json"

python3 scripts/dp_compare.py runs/dp/kd-1gpu runs/dp/kd-nccl1 runs/dp/kd-2gpu \
  runs/dp/moe-1gpu runs/dp/moe-nccl1 runs/dp/moe-2gpu runs/dp/moe-ep2 | tee "$OUT/compare.md"
(cd runs/dp && find . -name '*.jsonl' -print0 | tar --null -czf "$OUT/metrics.tar.gz" -T -)
