#!/usr/bin/env bash
# Data-parallel `mome distill` and `mome moe train` (issue 9) on the GPUs of this
# machine: the same config as one plain process, as one NCCL rank under
# `mome launch --gpus 1` (the data-parallel code path, which must match the plain
# run), and, with two or more GPUs, as two ranks (data parallel) and with the MoE
# experts spread over two GPUs (expert parallel); the PLE students as independent
# jobs over the GPUs; `mome train` of the student and the teacher as one process and
# as one NCCL rank with the all-reduce overlapped with backward and after it; with
# two GPUs also the scaling of `mome train` (student and teacher, same global batch
# with and without the overlap and with the sharded update, and same batch per GPU
# with fp32 and bf16 gradient traffic), of `mome distill` likewise, and the kill
# test. Loss curves and tokens/s
# are compared at the end (scripts/dp_compare.py; the loss difference means
# something only for runs with the baseline's global batch). Run from the
# repository root:
#
#   MOME=.devbin/mome OUT=/tmp/dp-out bash scripts/gpu-dp.sh
#
# MOME: a release `mome` built with `cargo build --release -p mome-cli --features nccl`.
# OUT:  where the log, the comparison and an archive of the metrics go.
# STEPS_KD / STEPS_MOE: optimizer steps of the KD and MoE runs (default 200 / 60).
# PARTS: which parts to run (default all: "kd moe ple train scaling kill"; "scaling"
#        and "kill" need two GPUs). On a 2-GPU host the whole script takes about
#        10 minutes; split it over calls with e.g. PARTS="kd moe ple train" then
#        PARTS="scaling kill". Runs already complete in runs/dp are kept; the
#        comparison at the end covers every run folder present.
set -euo pipefail
MOME=${MOME:-target/release/mome}
OUT=${OUT:-runs/dp-out}
STEPS_KD=${STEPS_KD:-200}
STEPS_MOE=${STEPS_MOE:-60}
PARTS=${PARTS:-kd moe ple train scaling kill}
mkdir -p "$OUT" runs/dp
. "$(dirname "$0")/gpu-common.sh"
gpu_torch_env
LOG=$OUT/log.txt
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
{ nvidia-smi -L; date -u; echo "gpus: $GPUS; parts: $PARTS"; } >>"$LOG"
step() { echo "== $*" | tee -a "$LOG"; }
want() { [[ " $PARTS " == *" $1 "* ]]; }
# run DIR CMD...: runs CMD (which writes DIR) unless DIR holds a finished run; a
# partial one (no .done marker) is removed first.
run() {
  local d=$1
  shift
  [ -e "$d/.done" ] && return 0
  rm -rf "$d"
  "$@" >>"$LOG" 2>&1
  touch "$d/.done"
}

gpu_shards_1024 "$LOG"
if want kd || want moe || want ple || want scaling; then
  step "teacher (30 steps of configs/dp/teacher-medium.toml)"
  run runs/dp/teacher-medium "$MOME" train --config configs/dp/teacher-medium.toml --max-steps 30 --quiet
fi

KD=configs/dp/distill-student-3l.toml
if want kd; then
  step "distill: 1 process, launch --gpus 1 (NCCL, one rank)$([ "$GPUS" -ge 2 ] && echo ', launch --gpus 2')"
  run runs/dp/kd-1gpu "$MOME" distill --config $KD --out runs/dp/kd-1gpu --max-steps "$STEPS_KD" --quiet
  run runs/dp/kd-nccl1 "$MOME" launch --gpus 1 -- distill --config $KD --out runs/dp/kd-nccl1 --max-steps "$STEPS_KD" --quiet
  if [ "$GPUS" -ge 2 ]; then
    run runs/dp/kd-2gpu "$MOME" launch --gpus 2 -- distill --config $KD --out runs/dp/kd-2gpu --max-steps "$STEPS_KD" --quiet
  fi
fi

MOE=configs/dp/moe-ce.toml
if want moe; then
  step "moe train: 1 process, launch --gpus 1$([ "$GPUS" -ge 2 ] && echo ', launch --gpus 2 (data parallel), --expert-devices cuda:0,cuda:1 (expert parallel)')"
  run runs/dp/moe-1gpu "$MOME" moe train --config $MOE --out runs/dp/moe-1gpu --max-steps "$STEPS_MOE" --quiet
  run runs/dp/moe-nccl1 "$MOME" launch --gpus 1 -- moe train --config $MOE --out runs/dp/moe-nccl1 --max-steps "$STEPS_MOE" --quiet
  if [ "$GPUS" -ge 2 ]; then
    run runs/dp/moe-2gpu "$MOME" launch --gpus 2 -- moe train --config $MOE --out runs/dp/moe-2gpu --max-steps "$STEPS_MOE" --quiet
    run runs/dp/moe-ep2 "$MOME" moe train --config $MOE --out runs/dp/moe-ep2 --max-steps "$STEPS_MOE" --expert-devices cuda:0,cuda:1 --quiet
  fi
fi

if want ple; then
  step "PLE students: 4 independent distillations (one per domain) over $GPUS GPU(s), launch --jobs"
  rm -rf runs/dp/ple
  mkdir -p runs/dp/ple
  : >runs/dp/ple/jobs.txt
  for d in en fr de py; do
    sed -e "s|^out_dir = .*|out_dir = \"runs/dp/ple/$d\"|" \
        -e "s|^sampler = \"mixed\"|sampler = \"mixed\"\ndomains = [\"$d\"]|" $KD >runs/dp/ple/$d.toml
    echo "mome distill --config runs/dp/ple/$d.toml --max-steps 50 --quiet" >>runs/dp/ple/jobs.txt
  done
  "$MOME" launch --gpus "$GPUS" --jobs runs/dp/ple/jobs.txt >"$OUT/ple-jobs.json" 2>>"$LOG"
  cat "$OUT/ple-jobs.json"
fi

# `mome train` of the student and the teacher: one plain process, then one NCCL rank
# with the all-reduce overlapped with backward (gradient hooks, the default) and
# after backward (`grad_overlap = false`): the overlap machinery's cost on one GPU.
noov() {  # $1 config, $2 output: the config with grad_overlap = false
  sed 's/^precision = "bf16"$/precision = "bf16"\ngrad_overlap = false/' "$1" >"$2"
}
for c in student-3l teacher-medium; do
  noov configs/dp/$c.toml runs/dp/$c-noov.toml
done
if want train || want scaling; then
  for c in student-3l teacher-medium; do
    C=configs/dp/$c.toml
    step "train $c: 1 process$(want train && echo '; launch --gpus 1 with and without overlap')"
    run runs/dp/$c-1gpu "$MOME" train --config $C --out runs/dp/$c-1gpu --quiet
    if want train; then
      run runs/dp/$c-nccl1 "$MOME" launch --gpus 1 -- train --config $C --out runs/dp/$c-nccl1 --quiet
      run runs/dp/$c-nccl1-noov "$MOME" launch --gpus 1 -- train --config runs/dp/$c-noov.toml --out runs/dp/$c-nccl1-noov --quiet
    fi
  done
fi

if [ "$GPUS" -ge 2 ] && want scaling; then
  # Scaling of `mome train` and `mome distill` on 2 GPUs: the same global batch as
  # the 1-GPU run (strong scaling: half the batch per GPU; with and without the
  # overlap, and with the sharded update), and the same batch per GPU (weak
  # scaling: twice the global batch), with fp32 and bf16 gradient traffic.
  variants() {  # $1 config, $2 output prefix
    local b
    b=$(grep -m1 '^batch_size' "$1" | awk '{print $3}')
    sed "s/^batch_size = $b\$/batch_size = $((2 * b))/" "$1" >"$2-weak.toml"
    sed 's/^precision = "bf16"$/precision = "bf16"\ngrad_reduce = "bf16"/' "$2-weak.toml" >"$2-weak-bf16.toml"
    sed 's/^precision = "bf16"$/precision = "bf16"\nshard_update = true/' "$1" >"$2-shard.toml"
  }
  for c in student-3l teacher-medium; do
    C=configs/dp/$c.toml
    variants $C runs/dp/$c
    step "train $c: 2 GPUs (same global batch: overlap, no overlap, sharded update), 2 GPUs (same batch per GPU; fp32 and bf16 gradients)"
    run runs/dp/$c-2gpu "$MOME" launch --gpus 2 -- train --config $C --out runs/dp/$c-2gpu --quiet
    run runs/dp/$c-2gpu-noov "$MOME" launch --gpus 2 -- train --config runs/dp/$c-noov.toml --out runs/dp/$c-2gpu-noov --quiet
    run runs/dp/$c-2gpu-shard "$MOME" launch --gpus 2 -- train --config runs/dp/$c-shard.toml --out runs/dp/$c-2gpu-shard --quiet
    run runs/dp/$c-2gpu-weak "$MOME" launch --gpus 2 -- train --config runs/dp/$c-weak.toml --out runs/dp/$c-2gpu-weak --quiet
    run runs/dp/$c-2gpu-weak-bf16 "$MOME" launch --gpus 2 -- train --config runs/dp/$c-weak-bf16.toml --out runs/dp/$c-2gpu-weak-bf16 --quiet
  done
  variants $KD runs/dp/kd
  step "distill: 2 GPUs, same batch per GPU (fp32 and bf16 gradients)"
  run runs/dp/kd-2gpu-weak "$MOME" launch --gpus 2 -- distill --config runs/dp/kd-weak.toml --out runs/dp/kd-2gpu-weak --max-steps "$STEPS_KD" --quiet
  run runs/dp/kd-2gpu-weak-bf16 "$MOME" launch --gpus 2 -- distill --config runs/dp/kd-weak-bf16.toml --out runs/dp/kd-2gpu-weak-bf16 --max-steps "$STEPS_KD" --quiet
fi

if [ "$GPUS" -ge 2 ] && want kill; then
  step "kill test: kill -9 of rank 1 mid-run, then --resume"
  rm -rf runs/dp/kill
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
  runs/dp/student-3l-2gpu runs/dp/student-3l-2gpu-noov runs/dp/student-3l-2gpu-shard runs/dp/student-3l-2gpu-weak runs/dp/student-3l-2gpu-weak-bf16 \
  runs/dp/teacher-medium-1gpu runs/dp/teacher-medium-nccl1 runs/dp/teacher-medium-nccl1-noov \
  runs/dp/teacher-medium-2gpu runs/dp/teacher-medium-2gpu-noov runs/dp/teacher-medium-2gpu-shard runs/dp/teacher-medium-2gpu-weak runs/dp/teacher-medium-2gpu-weak-bf16 \
  runs/dp/moe-1gpu runs/dp/moe-nccl1 runs/dp/moe-2gpu runs/dp/moe-ep2 | tee "$OUT/compare.md"
(cd runs/dp && find . -name '*.jsonl' -print0 | tar --null -czf "$OUT/metrics.tar.gz" -T -)
