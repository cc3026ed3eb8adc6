#!/usr/bin/env bash
# `mome pipeline --config configs/paper-smoke.toml` on one GPU (the paper's model
# sizes on the demo corpus, steps cut), then `mome distill` alone with the same
# student job and an explicitly bf16 teacher, and the students' tokens/s of both
# (median of each run's metrics.jsonl windows after the first). From the repository
# root:
#
#   MOME=.devbin/mome OUT=/tmp/smoke bash scripts/gpu-smoke.sh
#
# Output: $OUT/smoke.md, $OUT/report.md (the pipeline's), $OUT/log.txt. The run folder
# is runs/paper-smoke (a rerun resumes it).
set -uo pipefail
cd "$(dirname "$0")/.."
MOME=${MOME:-.devbin/mome}
OUT=${OUT:-runs/smoke-out}
mkdir -p "$OUT"
# shellcheck source=scripts/gpu-common.sh
. scripts/gpu-common.sh
gpu_torch_env
LOG=$OUT/log.txt
{ nvidia-smi -L || true; date -u; "$MOME" --version; } >"$LOG" 2>&1
t0=$(date +%s)
"$MOME" pipeline --config configs/paper-smoke.toml --out runs/paper-smoke 2>>"$LOG" \
  || { echo "[gpu-smoke] pipeline failed: see $LOG" >&2; tail -n 40 "$LOG" >&2; exit 1; }
t1=$(date +%s)
echo "[gpu-smoke] pipeline: $((t1 - t0)) s" | tee -a "$LOG" >&2
cp runs/paper-smoke/report.md "$OUT/report.md"
# The same student job alone, teacher bf16 stated explicitly.
sed -e 's#^out_dir = .*#out_dir = "runs/smoke-distill-en"#' runs/paper-smoke/students/distill-en.toml \
  >runs/smoke-distill-en.toml
if ! grep -q '^bf16 = true' runs/smoke-distill-en.toml; then
  sed -i 's#^\[teacher\]$#[teacher]\nbf16 = true#' runs/smoke-distill-en.toml
fi
rm -rf runs/smoke-distill-en
"$MOME" distill --config runs/smoke-distill-en.toml --quiet >/dev/null 2>>"$LOG" \
  || { echo "[gpu-smoke] distill failed" >&2; exit 1; }
echo "[gpu-smoke] distill: $(( $(date +%s) - t1 )) s" | tee -a "$LOG" >&2
python3 - "$OUT/smoke.md" <<'PY'
import json, statistics, sys
def tps(d):
    rows = [json.loads(l) for l in open(f"{d}/metrics.jsonl") if l.strip()]
    t = [r["tokens_per_s"] for r in rows if r.get("kind") == "train"]
    return statistics.median(t[1:]), len(t) - 1
out = ["| run | tokens/s (median of windows after the first) | windows |", "|---|---:|---:|"]
base, _ = tps("runs/smoke-distill-en")
for name, d in [("mome distill (bf16 teacher), en", "runs/smoke-distill-en")] + [
        (f"pipeline student {x}", f"runs/paper-smoke/students/{x}") for x in ["en", "fr", "de", "py"]]:
    v, n = tps(d)
    out.append(f"| {name} | {v:,.0f} ({v / base:.3f}) | {n} |")
stage = json.load(open("runs/paper-smoke/students/stage.json"))
out.append(f"\nstudents stage wall: {stage['wall_seconds']:.1f} s")
text = "\n".join(out)
print(text)
open(sys.argv[1], "w").write(text + "\n")
PY
