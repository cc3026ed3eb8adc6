#!/usr/bin/env bash
# The fused linear cross-entropy on the GPU (docs/performance.md, "Fused linear
# cross-entropy"), in one call: the CUDA tests of the kernels, then `mome bench train`
# of each config of CONFIGS with every `--linear-ce` of MODES (same process binary,
# same card), then, while BUDGET_S lasts, the compiled PyTorch reference of each config
# of COMPILED. KD_CONFIGS (default: the KD configs) get every `--linear-kd` of MODES
# the same way (the student's head, CE and KD fused), and LN_CONFIGS (default: none) every
# `--add-layer-norm` of LN_MODES (default: fused reference; the blocks' residual add +
# layer norm). Every JSON line goes to $OUT/bench.jsonl, the tests' output to
# $OUT/cuda-tests.txt, stderr to $OUT/log.txt; $OUT/compare.md gets the ratio table.
# An empty CONFIGS, KD_CONFIGS or COMPILED skips that part.
#
#   MOME=.devbin/mome KERNEL_TESTS=.devbin/kernels OUT=/tmp/lce bash scripts/gpu-linear-ce.sh
#
# KERNEL_TESTS: test binaries built with `--features cuda`, space-separated: mome-core's
# `kernels` (`cargo test --release -p mome-core --features cuda --test kernels --no-run`)
# mome-distill's `linear_kd_cuda` (the same with `-p mome-distill`) and mome-experts'
# `cuda` (`-p mome-experts --features cuda --test cuda`).
set -uo pipefail
cd "$(dirname "$0")/.."
MOME=${MOME:-.devbin/mome}
OUT=${OUT:-runs/linear-ce-out}
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-240}
CONFIGS=${CONFIGS-"student-3l moe-ce"}
MODES=${MODES:-"fused reference chunked"}
COMPILED=${COMPILED-"student-3l"}
KD_CONFIGS=${KD_CONFIGS-"kd-online-student-3l kd-cache-student-3l"}
LN_CONFIGS=${LN_CONFIGS:-}
LN_MODES=${LN_MODES:-"fused reference"}
mkdir -p "$OUT"
# shellcheck source=scripts/gpu-common.sh
. scripts/gpu-common.sh
gpu_torch_env
start=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - start))); }
{ nvidia-smi -L || true; date -u; "$MOME" --version; } >"$OUT/log.txt" 2>&1
: >"$OUT/bench.jsonl"
: >"$OUT/cuda-tests.txt"
for tb in ${KERNEL_TESTS:-}; do
  "$tb" --test-threads 1 >>"$OUT/cuda-tests.txt" 2>&1
  echo "[gpu-linear-ce] CUDA tests $tb: exit $? ($(grep -c '\.\.\. ok' "$OUT/cuda-tests.txt") ok so far)" | tee -a "$OUT/log.txt" >&2
done
# bench_modes FLAG "MODES" CONFIGS...: `mome bench train` of each config with each
# FLAG value of MODES.
bench_modes() {
  local flag=$1 modes=$2 c m t0; shift 2
  for c in "$@"; do
    for m in $modes; do
      t0=$(date +%s)
      "$MOME" bench train --config "configs/bench/$c.toml" --json --profile "$flag" "$m" \
        2>>"$OUT/log.txt" | grep '^{' >>"$OUT/bench.jsonl"
      echo "[gpu-linear-ce] mome $c $flag $m: exit ${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s" | tee -a "$OUT/log.txt" >&2
    done
  done
}
# shellcheck disable=SC2086
bench_modes --linear-ce "$MODES" $CONFIGS
# shellcheck disable=SC2086
bench_modes --linear-kd "$MODES" $KD_CONFIGS
# shellcheck disable=SC2086
bench_modes --add-layer-norm "$LN_MODES" $LN_CONFIGS
for c in $COMPILED; do
  l=$(left)
  if [ "$l" -le 10 ]; then echo "[gpu-linear-ce] skipped compiled $c (budget spent)" | tee -a "$OUT/log.txt" >&2; continue; fi
  timeout "$l" "$PYTHON" scripts/bench_reference.py --config "configs/bench/$c.toml" --compile \
    2>>"$OUT/log.txt" | grep '^{' >>"$OUT/bench.jsonl"
  echo "[gpu-linear-ce] compiled $c: exit ${PIPESTATUS[0]}" | tee -a "$OUT/log.txt" >&2
done
"$PYTHON" scripts/bench_compare.py "$OUT/bench.jsonl" >"$OUT/compare.md" 2>>"$OUT/log.txt" || true
"$PYTHON" - "$OUT/bench.jsonl" <<'EOF' | tee -a "$OUT/compare.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| config | implementation | linear_ce | linear_kd | add_layer_norm | tokens/s | ms/step | peak MiB | loss |")
print("|---|---|---|---|---|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r.get('config','?').split('/')[-1]} | {r.get('implementation','?')} | {r.get('linear_ce', r.get('mode', ''))} | {r.get('linear_kd') or ''} | {r.get('add_layer_norm') or ''} | "
          f"{r.get('tokens_per_second', 0):,.0f} | {1e3 * r.get('step_seconds', 0):.1f} | "
          f"{r.get('peak_gpu_memory_mib') or ''} | {r.get('final_loss', float('nan')):.4f} |")
EOF
