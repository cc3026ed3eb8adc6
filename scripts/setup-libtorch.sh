#!/usr/bin/env bash
# Installs libtorch for tch 0.24 once: the PyPI wheel torch==2.11.0 (CUDA build, ~4.7 GB)
# into a cache outside the repository, then links <repo>/.libtorch to its `torch` folder,
# which .cargo/config.toml hands to torch-sys as LIBTORCH.
#
#   MOME_CACHE   cache root (default: $XDG_CACHE_HOME/mome or ~/.cache/mome)
#   PYTHON       python interpreter with pip (default: python3)
#
# Idempotent: a finished install carries a marker file and is never redone; an
# interrupted one is left in a *.partial folder and redone from scratch.
set -euo pipefail

TORCH_VERSION=2.11.0
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${MOME_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mome}
dest="$cache/torch-$TORCH_VERSION"
py=${PYTHON:-python3}

say() { printf '[setup-libtorch] %s\n' "$*" >&2; }

if [ ! -f "$dest/.mome-complete" ]; then
    command -v "$py" >/dev/null 2>&1 || { say "error: '$py' not found; install Python 3 with pip, or set PYTHON"; exit 1; }
    "$py" -m pip --version >/dev/null 2>&1 || { say "error: '$py -m pip' is not available; install pip (e.g. apt-get install python3-pip)"; exit 1; }
    mkdir -p "$cache"
    partial="$dest.partial"
    rm -rf "$partial"
    say "installing torch==$TORCH_VERSION from PyPI into $dest (one time, ~4.7 GB)"
    if ! "$py" -m pip install --disable-pip-version-check --no-input --quiet \
            --target "$partial" "torch==$TORCH_VERSION" >&2; then
        say "error: pip could not install torch==$TORCH_VERSION (is PyPI reachable? see the pip output above)"
        rm -rf "$partial"
        exit 1
    fi
    [ -f "$partial/torch/lib/libtorch_cpu.so" ] || { say "error: the installed wheel has no torch/lib/libtorch_cpu.so"; exit 1; }
    rm -rf "$dest"
    mv "$partial" "$dest"
    touch "$dest/.mome-complete"
    say "installed"
else
    say "torch==$TORCH_VERSION already installed in $dest"
fi

link="$repo/.libtorch"
if [ "$(readlink "$link" 2>/dev/null || true)" != "$dest/torch" ]; then
    rm -rf "$link"
    ln -s "$dest/torch" "$link"
    say "linked $link -> $dest/torch"
fi
