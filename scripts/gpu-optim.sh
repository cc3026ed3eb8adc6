#!/usr/bin/env bash
# The fused optimizer step on one GPU (docs/performance.md, "Optimizer and clipping"):
#   1. the criterion bench benches/optim.rs on CUDA (AdamW fused / flat / per-param,
#      clipping foreach / per-parameter reference) for the student and teacher shapes;
#   2. `mome bench train --profile` of the configs in CONFIGS with `--adamw fused`
#      (the default) and `--adamw flat`, and with MOME_OLD (a `mome` binary built
#      before the fused kernels, optional) as the reference of the same run;
#   3. a table of tokens/s and the clip / optimizer phases (scripts/optim_compare.py).
# From the repository root on the GPU machine:
#
#   MOME=.devbin/mome OPTIM_BENCH=.devbin/optim-bench OUT=$OUT/optim bash scripts/gpu-optim.sh
#
# PARTS (default "bench train") picks the parts; CONFIGS defaults to
# "teacher-medium student-3l kd-cache-student-3l moe-ce".
set -uo pipefail
cd "$(dirname "$0")/.."
MOME=${MOME:-.devbin/mome}
OUT=${OUT:-runs/optim-out}
PARTS=${PARTS:-"bench train"}
CONFIGS=${CONFIGS:-"teacher-medium student-3l kd-cache-student-3l moe-ce"}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if [ -z "${TORCH_LIB:-}" ]; then
  TORCH_LIB=$("$PYTHON" -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
fi
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{ nvidia-smi -L || true; date -u; } >>"$OUT/log.txt" 2>&1
rc=0
case " $PARTS " in *" bench "*)
  if [ -n "${OPTIM_BENCH:-}" ]; then
    MOME_BENCH_DEVICES=cuda "$OPTIM_BENCH" --bench 2>>"$OUT/log.txt" | tee "$OUT/criterion.txt" | grep -E '^(adamw|clip)|time:' || rc=1
  else
    echo "[gpu-optim] OPTIM_BENCH not set: criterion bench skipped" >&2
  fi
;; esac
case " $PARTS " in *" train "*)
  : >"$OUT/bench.jsonl"
  for c in $CONFIGS; do
    for v in fused flat old; do
      if [ "$v" = old ]; then
        [ -n "${MOME_OLD:-}" ] || continue
        cmd=("$MOME_OLD" bench train --config "configs/bench/$c.toml" --json --profile)
      else
        cmd=("$MOME" bench train --config "configs/bench/$c.toml" --json --profile --adamw "$v")
      fi
      echo "== $c $v: ${cmd[*]}" >>"$OUT/log.txt"
      if ! "${cmd[@]}" 2>>"$OUT/log.txt" | grep '^{' | "$PYTHON" -c 'import json,sys
for l in sys.stdin:
    d=json.loads(l); d["variant"]=sys.argv[1]; print(json.dumps(d))' "$v" >>"$OUT/bench.jsonl"; then
        echo "[gpu-optim] $c $v failed (see log.txt)" >&2; rc=1
      fi
    done
  done
  "$PYTHON" scripts/optim_compare.py "$OUT/bench.jsonl" | tee "$OUT/compare.md"
;; esac
exit $rc
