#!/usr/bin/env bash
# Data-parallel `mome distill` and `mome moe train` (issue 9) on the GPUs of this
# machine: the same config as one plain process, as one NCCL rank under
# `mome launch --gpus 1` (the data-parallel code path, which must match the plain
# run), and, with two or more GPUs, as two ranks (data parallel) and with the MoE
# experts spread over two GPUs (expert parallel); the PLE students as independent
# jobs over the GPUs; `mome train` of the student and the teacher as one process and
# as one NCCL rank with the all-reduce overlapped with backward and after it; with
# two GPUs also the scaling of `mome train` (student and teacher, same global batch
# with and without the overlap, and same batch per GPU with fp32 and bf16 gradient
# traffic), of `mome distill` likewise, and the kill test. Loss curves and tokens/s
# are compared at the end (scripts/dp_compare.py; the loss difference means
# something only for runs with the baseline's global batch). Run from the
# repository root:
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
. "$(dirname "$0")/gpu-common.sh"
gpu_torch_env
LOG=$OUT/log.txt
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
{ nvidia-smi -L; date -u; echo "gpus: $GPUS"; } >"$LOG"
step() { echo "== $*" | tee -a "$LOG"; }

gpu_shards_1024 "$LOG"
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

# `mome train` of the student and the teacher: one plain process, then one NCCL rank
# with the all-reduce overlapped with backward (gradient hooks, the default) and
# after backward (`grad_overlap = false`): the overlap machinery's cost on one GPU.
noov() {  # $1 config, $2 output: the config with grad_overlap = false
  sed 's/^precision = "bf16"$/precision = "bf16"\ngrad_overlap = false/' "$1" >"$2"
}
for c in student-3l teacher-medium; do
  C=configs/dp/$c.toml
  noov $C runs/dp/$c-noov.toml
  step "train $c: 1 process; launch --gpus 1 with and without overlap"
  "$MOME" train --config $C --out runs/dp/$c-1gpu --quiet >>"$LOG" 2>&1
  "$MOME" launch --gpus 1 -- train --config $C --out runs/dp/$c-nccl1 --quiet >>"$LOG" 2>&1
  "$MOME" launch --gpus 1 -- train --config runs/dp/$c-noov.toml --out runs/dp/$c-nccl1-noov --quiet >>"$LOG" 2>&1
done

if [ "$GPUS" -ge 2 ]; then
  # Scaling of `mome train` and `mome distill` on 2 GPUs: the same global batch as
  # the 1-GPU run (strong scaling: half the batch per GPU; with and without the
  # overlap), and the same batch per GPU (weak scaling: twice the global batch),
  # with fp32 and bf16 gradient traffic.
  variants() {  # $1 config, $2 output prefix
    local b
    b=$(grep -m1 '^batch_size' "$1" | awk '{print $3}')
    sed "s/^batch_size = $b\$/batch_size = $((2 * b))/" "$1" >"$2-weak.toml"
    sed 's/^precision = "bf16"$/precision = "bf16"\ngrad_reduce = "bf16"/' "$2-weak.toml" >"$2-weak-bf16.toml"
  }
  for c in student-3l teacher-medium; do
    C=configs/dp/$c.toml
    variants $C runs/dp/$c
    step "train $c: 2 GPUs (same global batch, with and without overlap), 2 GPUs (same batch per GPU; fp32 and bf16 gradients)"
    "$MOME" launch --gpus 2 -- train --config $C --out runs/dp/$c-2gpu --quiet >>"$LOG" 2>&1
    "$MOME" launch --gpus 2 -- train --config runs/dp/$c-noov.toml --out runs/dp/$c-2gpu-noov --quiet >>"$LOG" 2>&1
    "$MOME" launch --gpus 2 -- train --config runs/dp/$c-weak.toml --out runs/dp/$c-2gpu-weak --quiet >>"$LOG" 2>&1
    "$MOME" launch --gpus 2 -- train --config runs/dp/$c-weak-bf16.toml --out runs/dp/$c-2gpu-weak-bf16 --quiet >>"$LOG" 2>&1
  done
  variants $KD runs/dp/kd
  step "distill: 2 GPUs, same batch per GPU (fp32 and bf16 gradients)"
  "$MOME" launch --gpus 2 -- distill --config runs/dp/kd-weak.toml --out runs/dp/kd-2gpu-weak --max-steps "$STEPS_KD" --quiet >>"$LOG" 2>&1
  "$MOME" launch --gpus 2 -- distill --config runs/dp/kd-weak-bf16.toml --out runs/dp/kd-2gpu-weak-bf16 --max-steps "$STEPS_KD" --quiet >>"$LOG" 2>&1

  step "kill test: kill -9 of rank 1 mid-run, then --resume"
  RDV=$(mktemp -d)
  KILL_LOG=$OUT/kill.log
  ( "$MOME" launch --gpus 2 --rendezvous "$RDV" -- train --config configs/dp/student-3l.toml \
      --out runs/dp/kill --max-steps 1000 --quiet >"$KILL_LOG" 2>&1; echo "launch rc=$?" >>"$KILL_LOG" ) &
  LP=$!
  sleep 30
  PID1=$(head -1 "$(find "$RDV" -name rank-1.pid | head -1)")
  T0=$(date +%s.%N)
  kill -9 "$PID1"
  wait $LP || true
  T1=$(date +%s.%N)
  python3 -c "print(f'launch ended {$T1 - $T0:.2f} s after kill -9 of rank 1 (pid $PID1)')" | tee -a "$KILL_LOG"
  "$MOME" launch --gpus 2 -- train --config configs/dp/student-3l.toml --out runs/dp/kill \
    --max-steps 1000 --resume --quiet >>"$KILL_LOG" 2>&1 && echo "resume rc=0" >>"$KILL_LOG" || echo "resume rc=$?" >>"$KILL_LOG"
  grep -E "error|lost rank|resumed|rc=|launch ended" "$KILL_LOG" | tail -8
fi

python3 scripts/dp_compare.py runs/dp/kd-1gpu runs/dp/kd-nccl1 runs/dp/kd-2gpu \
  runs/dp/kd-2gpu-weak runs/dp/kd-2gpu-weak-bf16 \
  runs/dp/student-3l-1gpu runs/dp/student-3l-nccl1 runs/dp/student-3l-nccl1-noov \
  runs/dp/student-3l-2gpu runs/dp/student-3l-2gpu-noov runs/dp/student-3l-2gpu-weak runs/dp/student-3l-2gpu-weak-bf16 \
  runs/dp/teacher-medium-1gpu runs/dp/teacher-medium-nccl1 runs/dp/teacher-medium-nccl1-noov \
  runs/dp/teacher-medium-2gpu runs/dp/teacher-medium-2gpu-noov runs/dp/teacher-medium-2gpu-weak runs/dp/teacher-medium-2gpu-weak-bf16 \
  runs/dp/moe-1gpu runs/dp/moe-nccl1 runs/dp/moe-2gpu runs/dp/moe-ep2 | tee "$OUT/compare.md"
(cd runs/dp && find . -name '*.jsonl' -print0 | tar --null -czf "$OUT/metrics.tar.gz" -T -)
