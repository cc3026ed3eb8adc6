#!/usr/bin/env bash
# Issue 8's benchmark in one command on the GPU machine: every config of
# configs/bench/ (except tiny-cpu) with `mome bench train --json --profile`, then the
# PyTorch + transformers reference (scripts/bench_reference.py) eager, then compiled
# (torch.compile), all JSON lines into $OUT/bench.jsonl, then the ratio tables of
# scripts/bench_compare.py (also written to $OUT/compare.md). From the repository root:
#
#   MOME=.devbin/mome OUT=/tmp/bench-out bash scripts/gpu-bench.sh
#
# MOME: a release `mome` binary (built elsewhere with `cargo build --release -p mome-cli`).
# OUT:  where bench.jsonl, compare.md and log.txt (stderr of every run) go.
# TORCH_LIB (prepended to LD_LIBRARY_PATH) defaults to the lib folder of the
# machine's Python torch 2.11; PYTHON defaults to python3 (torch + transformers).
# BUDGET_S (default 450): wall-clock budget of the whole script. The mome runs and
# the eager references come first (about 10-20 s each); the compiled references,
# whose compilation takes most of the time, run in the order of COMPILED (default:
# the MoE configs, then the KD and LM configs) while time is left, each cut by
# `timeout` at the budget's end; skipped or cut ones are named in log.txt and on
# stderr. REF_PROFILE=1 adds the reference's torch.profiler kernel tables (stderr,
# into log.txt). CONFIGS overrides the list of configs (names without .toml);
# MOME_ARGS / REF_ARGS add arguments to every mome / reference run. TRACE=1 adds, after
# the mome runs, one kernel trace per config (`mome bench train --trace`, 3 warm-up +
# 3 timed steps) summed per kernel by scripts/trace_summary.py into $OUT/traces.md.
# A CPU smoke test:
#   CONFIGS=tiny-cpu COMPILED=tiny-cpu MOME=target/debug/mome MOME_ARGS="--vocab-size 512 --mode moe-ce" \
#   REF_ARGS="--device cpu --vocab-size 512 --mode moe-ce" bash scripts/gpu-bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
MOME=${MOME:-.devbin/mome}
OUT=${OUT:-runs/bench-out}
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
CONFIGS=${CONFIGS:-"moe-jeet moe-ce kd-online-student-3l kd-cache-student-3l student-3l teacher-medium student-6l"}
COMPILED=${COMPILED:-"moe-jeet moe-ce kd-cache-student-3l kd-online-student-3l student-3l teacher-medium student-6l"}
mkdir -p "$OUT"
if [ -z "${TORCH_LIB:-}" ]; then
  TORCH_LIB=$("$PYTHON" -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
fi
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
JSONL=$OUT/bench.jsonl
LOG=$OUT/log.txt
: >"$JSONL"
{ nvidia-smi -L || true; date -u; "$MOME" --version || true;
  "$PYTHON" -c 'import torch,transformers;print("torch",torch.__version__,"transformers",transformers.__version__)' || true; } >"$LOG" 2>&1
start=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - start))); }

# run NAME CMD...: appends the command's JSON line to bench.jsonl, its stderr to log.txt;
# cut at the end of the budget.
run() {
  local name=$1; shift
  local l; l=$(left)
  if [ "$l" -le 5 ]; then
    echo "[gpu-bench] skipped (budget spent): $name" | tee -a "$LOG" >&2
    return
  fi
  local t0; t0=$(date +%s)
  echo "== $name: $*" >>"$LOG"
  timeout "$l" "$@" 2>>"$LOG" | grep '^{' >>"$JSONL"
  local rc=${PIPESTATUS[0]}
  local msg="[gpu-bench] $name: $(( $(date +%s) - t0 )) s"
  if [ "$rc" -eq 124 ]; then msg="$msg (cut at the budget's end)"; elif [ "$rc" -ne 0 ]; then msg="$msg (exit $rc, see log.txt)"; fi
  echo "$msg" | tee -a "$LOG" >&2
}

prof=()
if [ "${REF_PROFILE:-0}" = 1 ]; then prof=(--profile); fi
for c in $CONFIGS; do
  # shellcheck disable=SC2086
  run "mome $c" "$MOME" bench train --config "configs/bench/$c.toml" --json --profile ${MOME_ARGS:-}
done
if [ "${TRACE:-0}" = 1 ]; then
  : >"$OUT/traces.md"
  for c in $CONFIGS; do
    # shellcheck disable=SC2086
    run "trace $c" "$MOME" bench train --config "configs/bench/$c.toml" --warmup 3 --steps 3 \
      --trace "$OUT/trace-$c.json" ${MOME_ARGS:-}
    if [ -e "$OUT/trace-$c.json" ]; then
      { echo "## $c"; echo; "$PYTHON" scripts/trace_summary.py "$OUT/trace-$c.json" --steps 6 --top 25; echo; } \
        >>"$OUT/traces.md" 2>>"$LOG"
      rm -f "$OUT/trace-$c.json"
    fi
  done
fi
for c in $CONFIGS; do
  # shellcheck disable=SC2086
  run "eager $c" "$PYTHON" scripts/bench_reference.py --config "configs/bench/$c.toml" "${prof[@]}" ${REF_ARGS:-}
done
for c in $COMPILED; do
  case " $CONFIGS " in *" $c "*) ;; *) continue ;; esac
  # shellcheck disable=SC2086
  run "compiled $c" "$PYTHON" scripts/bench_reference.py --config "configs/bench/$c.toml" --compile ${REF_ARGS:-}
done
echo "[gpu-bench] total $(( $(date +%s) - start )) s; $(wc -l <"$JSONL") JSON lines in $JSONL" | tee -a "$LOG" >&2
"$PYTHON" scripts/bench_compare.py "$JSONL" | tee "$OUT/compare.md"
