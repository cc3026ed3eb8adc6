#!/usr/bin/env bash
# The README's main command: every stage of the method on the embedded demo corpus
# (data/demo/: en, fr, de, py), on the CPU, offline, with one command:
#   balance → tokenizer → encode → teacher → students (+ KD comparison) → router →
#   moe (PLE, JEET, MoE-CE) → grid (21 settings) → forgetting → report.md
# Output: runs/demo/ (one folder per stage, report.md). Re-running skips the stages
# that are complete and up to date (docs/pipeline.md); `--from STAGE` / `--only STAGE`
# re-run part of it. Extra arguments are passed to `mome pipeline`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-libtorch.sh
cargo build -p mome-cli --quiet
# `cargo run` finds the binary wherever the target folder is (CARGO_TARGET_DIR too).
cargo run -p mome-cli --quiet -- pipeline --config configs/demo.toml --out runs/demo "$@" >/dev/null
printf '\ndone: the report is runs/demo/report.md (every stage: runs/demo/<stage>/)\n' >&2
