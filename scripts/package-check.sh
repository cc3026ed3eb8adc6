#!/usr/bin/env bash
# Checks that every library crate of the workspace can be packaged for crates.io:
# `cargo package --no-verify --allow-dirty` (metadata, the files a crate needs lie
# inside it, path dependencies carry versions).
#
# The crates come from `cargo metadata --no-deps`: every workspace member with a
# library target whose `publish` is not false, so a new library crate is covered
# without editing this script; binaries (mome-cli) and the example programs
# (`publish = false`) are skipped.
#
# The workspace crates are not on crates.io, so a crate that depends on others
# (mome-core on mome-data, …) is packaged together with its workspace
# dependencies in one call (`-p CRATE -p DEP …`): cargo then resolves them from
# the packages it is making instead of failing with "no matching package named
# `mome-data` found" in the crates.io index.
#
# Targets declared outside a crate (`[[bench]] path = "../../benches/…"`, an
# example in `examples/`) are left out of its package with a warning; that is
# allowed, and the warnings are printed.
#
# Usage: bash scripts/package-check.sh   (from anywhere; exit 1 if a crate fails)
set -euo pipefail
cd "$(dirname "$0")/.."

# One line per library crate: the crate, then its workspace dependencies
# (transitively, every dependency kind), space-separated.
plan=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys

meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
pkgs = {p["name"]: p for p in meta["packages"] if p["id"] in members}

def is_library(p):
    kinds = {k for t in p["targets"] for k in t["kind"]}
    publishable = p.get("publish") != []
    return publishable and bool(kinds & {"lib", "rlib", "dylib", "proc-macro"})

def workspace_deps(name):
    seen, todo = [], [name]
    while todo:
        n = todo.pop()
        for d in pkgs[n]["dependencies"]:
            if d.get("path") and d["name"] in pkgs and d["name"] not in seen and d["name"] != name:
                seen.append(d["name"])
                todo.append(d["name"])
    return sorted(seen)

for name in sorted(n for n, p in pkgs.items() if is_library(p)):
    print(" ".join([name] + workspace_deps(name)))
')

if [[ -z "$plan" ]]; then
    echo "[package-check] no library crate found" >&2
    exit 1
fi

failed=()
while read -r crate deps; do
    args=(-p "$crate")
    for d in $deps; do
        args+=(-p "$d")
    done
    echo "[package-check] $crate${deps:+ (with its workspace dependencies: $deps)}" >&2
    if ! cargo package --no-verify --allow-dirty "${args[@]}"; then
        failed+=("$crate")
    fi
done <<<"$plan"

n=$(wc -l <<<"$plan")
if ((${#failed[@]})); then
    echo "[package-check] FAILED: ${failed[*]} (of $n library crates)" >&2
    exit 1
fi
echo "[package-check] all $n library crates package" >&2
