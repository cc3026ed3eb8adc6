#!/usr/bin/env bash
# The README's test command: installs what it needs (libtorch, once), then runs
# formatting, lints and every test of the workspace on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-libtorch.sh
# A fresh build of every test binary with full debug info and incremental caches
# takes about 13 GB of disk; CI machines have run out of it. Line tables keep
# backtraces readable at a fraction of that.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
export CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}
export CARGO_PROFILE_TEST_DEBUG=${CARGO_PROFILE_TEST_DEBUG:-line-tables-only}
for c in rustfmt clippy; do
    if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "[test] installing the $c component" >&2
        rustup component add "$c"
    fi
done

echo "[test] cargo fmt --check" >&2
cargo fmt --all -- --check
echo "[test] cargo clippy --workspace --all-targets -- -D warnings" >&2
cargo clippy --workspace --all-targets -- -D warnings
echo "[test] cargo package (every library crate)" >&2
bash scripts/package-check.sh
echo "[test] cargo test --workspace" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set -o pipefail
cargo test --workspace 2>&1 | tee "$log"
# One closing line over every test binary and doctest of the workspace.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "workspace: %d passed, %d failed\n", p, f }' "$log"
