"""Shared set-up of the fixture scripts (scripts/make_*_fixture.py): re-run the
calling script inside a private virtual environment that holds the Python packages
it needs, so that nothing is installed into the system Python.

    from fixture_venv import reexec_in_venv
    reexec_in_venv("/tmp/mome-pyarrow-venv", ["pyarrow"], unless_importable=["pyarrow"])

The venv is created on first use; the packages are installed once (a stamp file in
the venv records each install). The script is then re-executed with the venv's
interpreter and the same arguments; the environment variable MOME_FIXTURE_VENV_ACTIVE
(set to the venv path) stops the second run from doing it again.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ACTIVE = "MOME_FIXTURE_VENV_ACTIVE"


def log(msg):
    name = Path(sys.argv[0]).stem
    print(f"[{name}] {msg}", file=sys.stderr, flush=True)


def inside(venv):
    """Whether this process is the re-executed script inside `venv`."""
    return os.environ.get(ACTIVE) == str(Path(venv))


def _importable(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def pip_install(venv, args):
    """pip-installs `args` into `venv` once (a stamp file per distinct argument list)."""
    venv = Path(venv)
    stamp = venv / (".mome-installed-" + hashlib.sha256(" ".join(args).encode()).hexdigest()[:16])
    if stamp.exists():
        return
    log(f"installing {' '.join(args)} into {venv}")
    py = venv / "bin" / "python"
    subprocess.check_call([str(py), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"] + list(args))
    stamp.touch()


def reexec_in_venv(venv, packages, unless_importable=(), extra_installs=(), env=None):
    """Re-executes the running script inside `venv` with `packages` installed.

    Returns at once (no venv) when already inside it, or when every module of
    `unless_importable` (non-empty) imports in the current interpreter.
    `extra_installs`: further pip argument lists (e.g. an index URL and a pinned
    package). `env`: variables added to the re-executed script's environment.
    """
    venv = Path(venv)
    if inside(venv):
        return
    if unless_importable and all(_importable(m) for m in unless_importable):
        return
    py = venv / "bin" / "python"
    if not py.exists():
        log(f"creating venv {venv}")
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    pip_install(venv, list(packages))
    for args in extra_installs:
        pip_install(venv, list(args))
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env[ACTIVE] = str(venv)
    script = str(Path(sys.argv[0]).resolve())
    os.execve(str(py), [str(py), script] + sys.argv[1:], child_env)
