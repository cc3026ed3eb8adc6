#!/usr/bin/env python3
"""Build the reproducible GPU training corpus (en, fr, de, py) under ``runs/gpu-corpus/``.

Everything comes from two registries: Debian binary packages (``apt-get download`` +
``dpkg-deb --fsys-tarfile | tar -x``, images skipped, nothing installed) and PyPI wheels (``pip download --no-deps``,
read with ``zipfile``, nothing installed). Versions are pinned below; the downloads
are cached (default ``~/.cache/mome/gpu-corpus-dl``) so a rerun does not download.

Splits (a package feeds exactly one split; asserted):

* ``train/{en,fr,de,py}.jsonl``   the training corpus
    en/fr/de: LibreOffice help (the same ~2,561 pages in each language, with one id per
    page shared by the three languages), GNOME user / developer / application help
    (Mallard and DocBook XML), GIMP help, GnuCash and Gnumeric help (en/de), the Debian
    Administrator's Handbook, the Debian Developer's Reference, the Debian installation
    guide, the Debian Edu manual, Debian history, the LilyPond manuals, KiCad and
    aptitude manuals.
    py: .py files of pinned PyPI wheels (numpy, scipy, sympy, django, pandas,
    scikit-learn, matplotlib).
* ``heldout/{en,fr,de,py}.jsonl`` router held-out set from other packages of the same
  kinds: ``debian-reference-{en,fr,de}``; PyPI ``networkx`` and ``sphinx``.
* ``eval/{en,fr,de,py}.jsonl``    reserved evaluation set, from exactly the reserved
  sources (never in train/heldout): Debian ``manpages``, ``manpages-dev``,
  ``manpages-fr``, ``manpages-de``, ``fortunes-min``, ``fortunes-de``, ``debian-faq*``,
  ``maint-guide*``; PyPI requests, rich, click, attrs, jinja2, flask, werkzeug, httpx,
  pytest, pluggy, markdown-it-py, typer, tqdm, pydantic, urllib3, packaging.
* ``gimp-help-common`` is downloaded only for its copyright file (``/usr/share/doc/
  gimp-help-*`` link to it); MANIFEST lists it with split ``license-only``.
* ``MANIFEST.json``, ``NOTICE`` and ``corpus.tar.xz`` (the four folders + MANIFEST +
  NOTICE under a top folder ``gpu-corpus/``, sorted names, fixed mtime, xz).

Record: ``{"id": ..., "text": ..., "source": "<package>/<path in the package>"}``.
Natural-language ids drop the language part of the path (``libreoffice-help/text/
swriter/guide/pagenumbers.html`` is the same page in en, fr and de), so
``mome data balance --id-field id --common-articles en,fr,de`` aligns them.

Cleaning: markup to paragraphs (navigation, tables of contents, code listings, index
terms, credits dropped), paragraphs under 3 words dropped, paragraphs of another
language dropped (function-word check; catches untranslated English in fr/de),
paragraphs de-duplicated by hash per domain (the eval set claims its paragraphs
first, then heldout, then train, so train never repeats an eval/heldout paragraph),
documents under 20 words dropped. Python: one record per file; files over 200 KB,
non-UTF-8, generated or vendored files dropped; identical files de-duplicated
(eval first). Records in each file are ordered by sha256(id): deterministic, and any
prefix is a mix of all sources.

Usage::

    apt-get update      # once, if the package lists are stale
    python3 scripts/build_gpu_corpus.py [--out runs/gpu-corpus] [--cache DIR]
        [--max-mb-per-domain 40] [--archive-limit-mb 50] [--keep-unpacked]

Standard library only (Python >= 3.10); needs apt-get, dpkg-deb, pip, groff
(man pages of the eval set; without groff a simple roff stripper is used).
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import html
import html.entities
import io
import json
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_demo_corpus as demo  # noqa: E402  (HTML extraction, language check, section split)

SCRIPT_VERSION = "1.0.0"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "runs" / "gpu-corpus"
DEFAULT_CACHE = Path(os.environ.get("MOME_CACHE", Path.home() / ".cache" / "mome")) / "gpu-corpus-dl"
DOMAINS = ("en", "fr", "de", "py")
NL = ("en", "fr", "de")

DEFAULT_MAX_MB = 40.0  # MB (10^6 bytes) of text per domain in train/
DEFAULT_ARCHIVE_LIMIT_MB = 50.0  # MiB
HELDOUT_BUDGET = 250_000  # bytes of text per domain
EVAL_BUDGET = {"en": 1_500_000, "fr": 1_500_000, "de": 1_500_000, "py": 1_500_000}

MIN_BLOCK_WORDS = 3  # words of 2+ letters; shorter paragraphs (menu paths, key lists) are dropped
DEDUP_MIN_WORDS = 8  # paragraphs this long are de-duplicated (shorter ones are steps like "Click OK.")
MIN_DOC_WORDS = 20
PY_MIN_BYTES = 256
PY_MAX_BYTES = 200_000
PY_MAX_LINE = 1000

# --------------------------------------------------------------------------- pinned sources

# Debian 12 (bookworm) versions measured when this script was written. A pinned version
# that the archive no longer has falls back to the current candidate (a warning, and
# MANIFEST records what was used) unless --strict-versions.
DEBIAN_PINS = {
    "libreoffice-help-en-us": "4:7.4.7-1+deb12u14",
    "libreoffice-help-fr": "4:7.4.7-1+deb12u14",
    "libreoffice-help-de": "4:7.4.7-1+deb12u14",
    "gnome-user-docs": "43.0-2",
    "gnome-devel-docs": "40.3-1",
    "gimp-help-en": "2.10.34-2",
    "gimp-help-fr": "2.10.34-2",
    "gimp-help-de": "2.10.34-2",
    "gnucash-docs": "4.13-1",
    "gnumeric-doc": "1.12.55-1",
    "debian-handbook": "11.20220922",
    "developers-reference": "12.18",
    "developers-reference-fr": "12.18",
    "developers-reference-de": "12.18",
    "installation-guide-amd64": "20230508+deb12u1",
    "debian-edu-doc-en": "2.12.23~deb12u1",
    "debian-edu-doc-fr": "2.12.23~deb12u1",
    "debian-edu-doc-de": "2.12.23~deb12u1",
    "debian-history": "2.28",
    "lilypond-doc-html": "2.24.1-2",
    "lilypond-doc-html-fr": "2.24.1-2",
    "lilypond-doc-html-de": "2.24.1-2",
    "kicad-doc-en": "6.0.11+dfsg-1",
    "kicad-doc-fr": "6.0.11+dfsg-1",
    "kicad-doc-de": "6.0.11+dfsg-1",
    "aptitude-doc-en": "0.8.13-5",
    "aptitude-doc-fr": "0.8.13-5",
    # GNOME application help (/usr/share/help/{C,fr,de}/<doc>/)
    "accerciser": "3.40.0-2",
    "aisleriot": "1:3.22.23-1",
    "baobab": "43.0-1",
    "brasero-common": "3.12.3-2",
    "cheese-common": "43.0-1",
    "eog": "43.2-1+deb12u1",
    "evince-common": "43.1-2+deb12u1",
    "evolution-common": "3.46.4-2+deb12u1",
    "file-roller": "43.0-1",
    "five-or-more": "1:3.32.3-1",
    "four-in-a-row": "1:3.38.1-1+b1",
    "gedit-common": "44.2-1",
    "glade": "3.40.0-3+b1",
    "gnome-boxes": "43.2-1",
    "gnome-calculator": "1:43.0.1-2",
    "gnome-chess": "1:43.1-1",
    "gnome-clocks": "43.0-1",
    "gnome-dictionary": "40.0-3",
    "gnome-klotski": "1:3.38.2-1",
    "gnome-logs": "43.0-1",
    "gnome-mahjongg": "1:3.38.3-2",
    "gnome-mines": "1:40.1-1",
    "gnome-nibbles": "1:3.38.2-2+b1",
    "gnome-photos": "43.0-2",
    "gnome-robots": "1:40.0-2",
    "gnome-sudoku": "1:43.1-1",
    "gnome-system-monitor": "42.0-2",
    "gnome-terminal-data": "3.46.8-1",
    "gnome-tetravex": "1:3.38.2-3",
    "hitori": "3.38.4-2",
    "iagno": "1:3.38.1-2",
    "lightsoff": "1:40.0.1-1",
    "orca": "43.1-1",
    "pitivi": "2022.06-1+b1",
    "polari": "43.0-1",
    "quadrapassel": "1:40.2-1",
    "rhythmbox-data": "3.4.6-2",
    "seahorse": "43.0-1",
    "shotwell-common": "0.30.17-1",
    "simple-scan": "42.5-2",
    "swell-foop": "1:41.1-1",
    "tali": "1:40.9-1",
    "totem-common": "43.0-2",
    "vinagre": "3.22.0-8.1",
    "zenity-common": "3.44.0-1",
    "gimp-help-common": "2.10.34-2",  # license-only: /usr/share/doc/gimp-help-* links to it
    # heldout
    "debian-reference-en": "2.100",
    "debian-reference-fr": "2.100",
    "debian-reference-de": "2.100",
    # eval (reserved)
    "manpages": "6.03-2",
    "manpages-dev": "6.03-2",
    "manpages-fr": "4.18.1-1",
    "manpages-de": "4.18.1-1",
    "fortunes-min": "1:1.99.1-7.3",
    "fortunes-de": "0.35-1",
    "debian-faq": "11.1",
    "debian-faq-fr": "11.1",
    "debian-faq-de": "11.1",
    "maint-guide": "1.2.53",
    "maint-guide-fr": "1.2.53",
    "maint-guide-de": "1.2.53",
}
GNOME_APPS = sorted(
    """accerciser aisleriot baobab brasero-common cheese-common eog evince-common evolution-common
    file-roller five-or-more four-in-a-row gedit-common glade gnome-boxes gnome-calculator
    gnome-chess gnome-clocks gnome-dictionary gnome-klotski gnome-logs gnome-mahjongg gnome-mines
    gnome-nibbles gnome-photos gnome-robots gnome-sudoku gnome-system-monitor gnome-terminal-data
    gnome-tetravex hitori iagno lightsoff orca pitivi polari quadrapassel rhythmbox-data seahorse
    shotwell-common simple-scan swell-foop tali totem-common vinagre zenity-common""".split()
)

# PyPI wheels (.py files are read from the wheel; no build step). Binary wheels are
# chosen for CPython 3.11 on manylinux x86-64 (the .py files do not depend on it).
PYPI_TRAIN = {
    "numpy": "2.4.6",
    "scipy": "1.17.1",
    "sympy": "1.14.0",
    "django": "5.2.20",
    "pandas": "3.1.1",
    "scikit-learn": "1.9.1",
    "matplotlib": "3.11.2",
}
PYPI_HELDOUT = {"networkx": "3.6.1", "sphinx": "9.0.4"}
PYPI_EVAL = {
    "requests": "2.34.2",
    "rich": "15.0.0",
    "click": "8.5.1",
    "attrs": "26.1.0",
    "jinja2": "3.1.6",
    "flask": "3.1.3",
    "werkzeug": "3.1.9",
    "httpx": "0.29.0",
    "pytest": "9.2.0",
    "pluggy": "1.7.0",
    "markdown-it-py": "4.3.0",
    "typer": "0.29.2",
    "tqdm": "4.70.1",
    "pydantic": "2.14.4",
    "urllib3": "2.8.0",
    "packaging": "26.4",
}
PIP_PLATFORM_ARGS = [
    "--only-binary", ":all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
    "--abi", "abi3", "--abi", "none",
    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
    "--platform", "manylinux_2_24_x86_64", "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64", "--platform", "any",
]

# Reserved for evaluation: these names (fnmatch-like prefixes) may never feed train/heldout.
RESERVED_DEBIAN_EXACT = {"manpages", "manpages-dev", "manpages-fr", "manpages-de"}
RESERVED_DEBIAN_PREFIX = ("fortunes", "fortune-", "debian-faq", "maint-guide")
RESERVED_PYPI = set(PYPI_EVAL)

LICENSE_FILE_RE = re.compile(r"(^|[/._-])(gfdl|fdl|gpl|lgpl|legal|licen[cs]es?|copying)([._-]|\d|$)", re.I)
# Generated pages that are lists/indexes, not prose.
INDEX_PAGE_RE = re.compile(r"(^|/)(search|genindex|ix\d+|[^/]*-index|index-[^/]*)\.(\w\w\.)?html$")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def die(msg: str) -> "NoReturn":  # type: ignore[name-defined]
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_reserved(kind: str, name: str) -> bool:
    if kind == "pypi":
        return canon(name) in {canon(n) for n in RESERVED_PYPI}
    return name in RESERVED_DEBIAN_EXACT or name.startswith(RESERVED_DEBIAN_PREFIX)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------- downloads


@dataclass
class Package:
    kind: str  # "debian" | "pypi"
    name: str
    version: str
    file: Path
    sha256: str
    split: str
    root: Path | None = None  # unpacked tree (debian)
    pinned: str = ""
    contrib: dict = field(default_factory=dict)  # output file -> {records, text_bytes, words}
    license_summary: str = ""
    license_from: str = ""  # package whose copyright file is used (doc folder symlink)
    license_text: str = ""


UNPACK_SKIP_EXT = ("png", "jpg", "jpeg", "gif", "svg", "ico", "pdf", "epub", "woff", "woff2", "ttf", "otf",
                   "ogg", "ogv", "webm", "mp3", "ly", "ods", "odt", "zip")


def deb_fields(deb: Path) -> dict[str, str]:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True, text=True)
    if out.returncode != 0:
        die(f"dpkg-deb could not read {deb}: {out.stderr.strip()}")
    return dict(line.split(": ", 1) for line in out.stdout.strip().splitlines())


def fetch_deb(name: str, split: str, cache: Path, unpack: Path, strict: bool) -> Package:
    debdir = cache / "debian"
    debdir.mkdir(parents=True, exist_ok=True)
    pin = DEBIAN_PINS.get(name, "")

    def cached() -> dict[str, Path]:
        found = {}
        for p in sorted(debdir.glob(f"{name}_*.deb")):
            f = deb_fields(p)
            if f.get("Package") == name:
                found[f["Version"]] = p
        return found

    have = cached()
    deb = have.get(pin)
    if deb is None:
        if shutil.which("apt-get") is None:
            die("apt-get not found: this script needs Debian (bookworm) with apt-get and dpkg-deb")
        spec = f"{name}={pin}" if pin else name
        log(f"  apt-get download {spec}")
        proc = subprocess.run(["apt-get", "download", spec], cwd=debdir, capture_output=True, text=True)
        if proc.returncode != 0 and pin:
            msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            if strict:
                die(f"could not download {spec} (apt-get exit {proc.returncode}): {' / '.join(msg[-2:])}\n"
                    "  The pinned version may be gone from the archive; rerun without --strict-versions.")
            log(f"  warning: pinned {spec} not available ({' / '.join(msg[-1:])}); using the current candidate")
            if have:
                deb = have[sorted(have)[-1]]
            else:
                proc = subprocess.run(["apt-get", "download", name], cwd=debdir, capture_output=True, text=True)
        if deb is None:
            have = cached()
            if proc.returncode != 0 or not have:
                die(f"could not download Debian package '{name}' (apt-get exit {proc.returncode}).\n"
                    f"  apt-get said: {proc.stderr.strip() or proc.stdout.strip()}\n"
                    "  Run `apt-get update` (package lists stale?) and check the package exists "
                    "in this release (`apt-cache policy " + name + "`).")
            deb = have.get(pin) or have[sorted(have)[-1]]
    fields = deb_fields(deb)
    root = unpack / name
    if not root.is_dir():
        tmp = unpack / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # = `dpkg-deb -x`, minus images/fonts/PDFs that are never read (~1.6 GB -> ~0.4 GB)
        p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        r = subprocess.run(["tar", "-x", "-C", str(tmp), "--no-same-owner",
                            *[f"--exclude=*.{e}" for e in UNPACK_SKIP_EXT]], stdin=p1.stdout, capture_output=True)
        p1.stdout.close()
        if p1.wait() != 0 or r.returncode != 0:
            die(f"unpacking {deb} failed (dpkg-deb --fsys-tarfile | tar -x): {r.stderr.decode(errors='replace').strip()}")
        tmp.rename(root)
    pkg = Package("debian", fields["Package"], fields["Version"], deb, sha256_file(deb), split, root, pin)
    if pin and pkg.version != pin:
        log(f"  note: {name} {pkg.version} used (pinned {pin})")
    return pkg


def fetch_wheel(name: str, version: str, split: str, cache: Path) -> Package:
    wdir = cache / "pypi"
    wdir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[-_.]+", "_", name).lower()

    def find() -> Path | None:
        for p in sorted(wdir.glob("*.whl")):
            parts = p.name.split("-")
            if re.sub(r"[-_.]+", "_", parts[0]).lower() == stem and parts[1] == version:
                return p
        return None

    whl = find()
    if whl is None:
        log(f"  pip download {name}=={version}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", str(wdir), *PIP_PLATFORM_ARGS, f"{name}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        whl = find()
        if proc.returncode != 0 or whl is None:
            die(f"could not download {name}=={version} from PyPI (pip exit {proc.returncode}).\n"
                f"  command: {' '.join(cmd)}\n  pip said: {(proc.stderr.strip() or proc.stdout.strip())[-1500:]}")
    return Package("pypi", name, version, whl, sha256_file(whl), split, pinned=version)


# --------------------------------------------------------------------------- documents


@dataclass
class Doc:
    domain: str
    id: str
    source: str  # <package>/<path>
    package: str
    blocks: list  # list[demo.Block] (natural language) or None
    text: str = ""  # python: the file


@dataclass
class NLSource:
    package: str
    base: str  # folder inside the package (language folder included)
    patterns: tuple[str, ...]
    fmt: str  # html | lohtml | xml | man | fortune
    id_prefix: str
    id_sub: tuple[str, str] | None = None  # regex, replacement applied to the relative path
    exclude: str | None = None  # regex on the relative path


def train_sources(lang: str) -> list[NLSource]:
    lo = {"en": "en-US", "fr": "fr", "de": "de"}[lang]
    hb = {"en": "en-US", "fr": "fr-FR", "de": "de-DE"}[lang]
    hl = {"en": "C", "fr": "fr", "de": "de"}[lang]
    s = [
        NLSource(f"libreoffice-help-{'en-us' if lang == 'en' else lang}", f"usr/share/libreoffice/help/{lo}",
                 ("**/*.html",), "lohtml", "libreoffice-help"),
        NLSource("gnome-user-docs", f"usr/share/help/{hl}", ("**/*.page", "**/*.xml", "**/*.docbook"), "xml", "gnome-user-docs"),
        NLSource("gnome-devel-docs", f"usr/share/help/{hl}", ("**/*.page", "**/*.xml", "**/*.docbook"), "xml", "gnome-devel-docs"),
    ]
    for app in GNOME_APPS:
        s.append(NLSource(app, f"usr/share/help/{hl}", ("**/*.page", "**/*.xml", "**/*.docbook"), "xml", app))
    if lang != "fr":  # no French translation in these packages
        s += [
            NLSource("gnucash-docs", f"usr/share/help/{hl}", ("**/*.xml", "**/*.docbook"), "xml", "gnucash-docs"),
            NLSource("gnumeric-doc", f"usr/share/help/{hl}", ("**/*.xml", "**/*.docbook", "**/*.page"), "xml", "gnumeric-doc"),
        ]
    s += [
        NLSource(f"gimp-help-{lang}", f"usr/share/gimp/2.0/help/{lang}", ("*.html",), "html", "gimp-help"),
        NLSource("debian-handbook", f"usr/share/doc/debian-handbook/html/{hb}", ("*.html",), "html", "debian-handbook"),
        NLSource("developers-reference" + ("" if lang == "en" else f"-{lang}"),
                 "usr/share/developers-reference" + ("" if lang == "en" else f"/{lang}"), ("*.html",), "html",
                 "developers-reference", exclude=r"^developers-reference\.html$"),  # the one-page copy
        NLSource("installation-guide-amd64", f"usr/share/doc/installation-guide-amd64/{lang}", ("*.html",), "html",
                 "installation-guide-amd64"),
        NLSource(f"debian-edu-doc-{lang}", f"usr/share/doc/debian-edu-doc-{lang}", ("debian-edu-bookworm-manual.html",),
                 "html", "debian-edu-doc"),
        NLSource("debian-history", "usr/share/doc/debian-history/docs", (f"*.{lang}.html",), "html", "debian-history",
                 id_sub=(rf"\.{lang}\.html$", ".html")),
        NLSource(f"kicad-doc-{lang}", f"usr/share/doc/kicad/help/{lang}", ("*.html",), "html", "kicad-doc"),
    ]
    if lang == "en":
        s.append(NLSource("lilypond-doc-html", "usr/share/doc/lilypond/html/Documentation", ("*/*.html",), "html",
                          "lilypond-doc", exclude=r"(^|/)(internals|snippets|misc|pictures|[0-9a-f]{2})/|\.[a-z]{2}\.html$"))
    else:
        s.append(NLSource(f"lilypond-doc-html-{lang}", "usr/share/doc/lilypond/html/Documentation", (f"*/*.{lang}.html",),
                          "html", "lilypond-doc", id_sub=(rf"\.{lang}\.html$", ".html"),
                          exclude=r"(^|/)(internals|snippets|misc|pictures|[0-9a-f]{2})/"))
    if lang in ("en", "fr"):
        s.append(NLSource(f"aptitude-doc-{lang}", f"usr/share/doc/aptitude/html/{lang}", ("*.html",), "html", "aptitude-doc"))
    return s


def heldout_sources(lang: str) -> list[NLSource]:
    return [NLSource(f"debian-reference-{lang}", "usr/share/debian-reference", (f"*.{lang}.html",), "html",
                     "debian-reference", id_sub=(rf"\.{lang}\.html$", ".html"))]


def eval_sources(lang: str) -> list[NLSource]:
    man = {"en": ["manpages", "manpages-dev"], "fr": ["manpages-fr"], "de": ["manpages-de"]}[lang]
    mdir = "usr/share/man" if lang == "en" else f"usr/share/man/{lang}"
    s = [NLSource(m, mdir, ("man*/*.gz",), "man", m) for m in man]
    if lang == "en":
        s.append(NLSource("fortunes-min", "usr/share/games/fortunes", ("*",), "fortune", "fortunes-min"))
    elif lang == "de":
        s.append(NLSource("fortunes-de", "usr/share/games/fortunes/de", ("*",), "fortune", "fortunes-de",
                          exclude=r"asciiart|\.u8$|\.dat$"))
    # (Debian 12 has no French fortune package.)
    suf = "" if lang == "en" else f"-{lang}"
    faq_dir = "usr/share/doc/debian/FAQ" + ("" if lang == "en" else f"/{lang}")
    s.append(NLSource(f"debian-faq{suf}", faq_dir, ("*.html",), "html", "debian-faq",
                      id_sub=(r"\.(en|fr|de)\.html$", ".html")))
    s.append(NLSource(f"maint-guide{suf}", f"usr/share/doc/maint-guide{suf}/html", ("*.html",), "html", "maint-guide",
                      id_sub=(r"\.(en|fr|de)\.html$", ".html")))
    return s


# --------------------------------------------------------------------------- HTML


class HtmlExtractor(demo.TextExtractor):
    """The demo builder's extractor, with a few more page chrome elements dropped."""

    extra_skip_tags = {"header", "aside", "footer", "form", "button", "input", "label", "noscript", "select", "iframe"}
    extra_skip_classes = {
        # LibreOffice help
        "related", "relatedtopics", "relatedbody", "howtogetheader", "bug", "debug", "noteicon", "iconcell",
        "MAC", "logo", "symbol", "dropdowns", "modules", "index-label", "contents-treeview",
        # LilyPond (texinfo) / Sphinx / misc
        "nav_table", "nav-panel", "navigation", "menu", "sphinxsidebar", "related", "headerlink", "footer",
        "header", "breadcrumb", "toc_current", "contents", "topic", "linenos", "highlight",
    }
    extra_skip_ids = {"DEBUG", "SearchFrame", "DonationFrame", "TopLeftHeader", "Contents", "Index", "tocframe",
                      "search", "navigation", "footer", "header", "sidebar", "langchooser"}

    def __init__(self, keep_tables: bool) -> None:
        super().__init__()
        self.keep_tables = keep_tables

    def _skipped(self, tag, attrs):  # type: ignore[override]
        classes = set((attrs.get("class") or "").split())
        if self.keep_tables and tag in ("table", "tr", "td", "th", "tbody", "thead"):
            return bool(classes & self.extra_skip_classes)
        if demo.TextExtractor._skipped(tag, attrs):
            return True
        if tag in self.extra_skip_tags or classes & self.extra_skip_classes:
            return True
        if tag == "p" and "embedded" in classes:  # LibreOffice "related topics" link lines
            return True
        return attrs.get("id") in self.extra_skip_ids and tag in ("div", "p", "section", "span", "ul", "nav")


def html_blocks(path: Path, keep_tables: bool) -> list:
    parser = HtmlExtractor(keep_tables)
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return parser.blocks


# --------------------------------------------------------------------------- XML (Mallard, DocBook)

XML_SKIP = {
    "info", "bookinfo", "articleinfo", "chapterinfo", "sectioninfo", "sect1info", "sect2info", "prefaceinfo",
    "appendixinfo", "refentryinfo", "credit", "revision", "revhistory", "legalnotice", "copyright", "indexterm",
    "screen", "programlisting", "synopsis", "cmdsynopsis", "funcsynopsis", "literallayout", "media",
    "mediaobject", "inlinemediaobject", "imageobject", "screenshot", "graphic", "inlinegraphic", "links",
    "comment", "remark", "keywordset", "footnote", "table", "informaltable", "tgroup", "rules", "include",
    "authorgroup", "author", "othercredit", "editor", "publisher", "releaseinfo", "pubdate", "abstract",
    "script", "style", "figure", "example", "index", "toc", "titleabbrev", "subjectset", "date",
}
XML_INLINE = set(
    """app cmd code em emphasis file filename gui guibutton guilabel guimenu guimenuitem guisubmenu guiicon
    key keycap keycombo keyseq keysym guiseq menuchoice link ulink xref sys var input output span literal
    command option parameter replaceable userinput computeroutput systemitem envar application acronym
    abbrev quote citetitle firstterm glossterm foreignphrase phrase productname trademark email uri sub sup
    superscript subscript wordasword mousebutton accel shortcut interface markup tag function type varname
    classname constant property prompt package year name hardware medialabel citation anchor olink
    orgname errorcode errorname returnvalue structname structfield symbol token database filename
    methodname interfacename exceptionname lineannotation personname firstname surname othername""".split()
)
XML_SECTIONS = set(
    """page section sect1 sect2 sect3 sect4 sect5 chapter appendix preface article book part reference
    refentry refsect1 refsect2 refsect3 simplesect glossary glossdiv bibliography""".split()
)
XML_CODE_BLOCK = {"code"}  # block-level when its parent is not a text block
XML_TEXT_BLOCKS = {"p", "para", "simpara", "title", "subtitle", "term", "entry", "td", "th", "item", "listitem"}
IF_NS = "{http://projectmallard.org/if/1.0/}"
ENTITY_RE = re.compile(r"<!ENTITY\s+([\w.-]+)\s+(\"[^\"]*\"|'[^']*')\s*>", re.S)


def _local(tag) -> str:
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _entities(text: str, path: Path) -> dict[str, str]:
    ents: dict[str, str] = {}
    m = re.search(r"<!DOCTYPE[^>\[]*?SYSTEM\s+[\"']([^\"']+)[\"']", text[:4000])
    if m and not m.group(1).startswith("http"):
        dtd = path.parent / m.group(1)
        if dtd.is_file():
            for name, val in ENTITY_RE.findall(dtd.read_text(encoding="utf-8", errors="replace")):
                ents.setdefault(name, val[1:-1])
    for name, val in ENTITY_RE.findall(text[:20000]):
        ents[name] = val[1:-1]
    return ents


def _resolve_entities(text: str, path: Path) -> str:
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    ents = _entities(text, path)
    text = re.sub(r"<!DOCTYPE[^\[>]*(\[.*?\]\s*)?>", "", text, count=1, flags=re.S)

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name in ("amp", "lt", "gt", "quot", "apos"):
            return m.group(0)
        if name in ents:
            return ents[name]
        cp = html.entities.name2codepoint.get(name)
        return chr(cp) if cp else ""

    for _ in range(3):  # entities that use entities
        new = re.sub(r"&([A-Za-z_][\w.-]*);", sub, text)
        if new == text:
            break
        text = new
    return text


class XmlWalker:
    def __init__(self) -> None:
        self.blocks: list = []
        self.buf: list[str] = []
        self.depth = 0
        self.anchors: list[str | None] = []
        self.title_level: int | None = None

    def flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self.buf)).strip()
        self.buf = []
        if not text:
            return
        if self.title_level is not None:
            anchor = next((a for a in reversed(self.anchors) if a), None)
            self.blocks.append(demo.Block(max(1, min(6, self.title_level)), anchor, text))
        else:
            self.blocks.append(demo.Block(0, None, text))

    def skip(self, el, tag: str, parent_tag: str) -> bool:
        if tag in XML_SKIP or not tag:
            return True
        if tag in XML_CODE_BLOCK and parent_tag not in XML_TEXT_BLOCKS and parent_tag not in XML_INLINE:
            return True
        test = el.get(IF_NS + "test")
        return bool(test) and not test.startswith("!")

    def walk(self, el, parent_tag: str = "") -> None:
        tag = _local(el.tag)
        if self.skip(el, tag, parent_tag):
            return
        if tag == "choose":  # Mallard conditional: the <if:else> branch, else the first <if:when>
            kids = [c for c in el if _local(c.tag) == "else"] or [c for c in el if _local(c.tag) == "when"][:1]
            for c in kids:
                for cc in c:
                    self.walk(cc, "when")
                    if cc.tail:
                        self.buf.append(cc.tail)
            return
        inline = tag in XML_INLINE
        section = tag in XML_SECTIONS
        if not inline:
            self.flush()
        if section:
            self.depth += 1
            self.anchors.append(el.get("id"))
        if tag == "title" and parent_tag in XML_SECTIONS:
            self.title_level = self.depth
        if tag in ("keyseq", "keycombo", "guiseq", "menuchoice"):
            sep = "+" if tag in ("keyseq", "keycombo") else " ▸ "
            parts = [re.sub(r"\s+", " ", "".join(c.itertext())).strip() for c in el if _local(c.tag) not in XML_SKIP]
            self.buf.append(sep.join(p for p in parts if p))
        else:
            if el.text:
                self.buf.append(el.text)
            for c in el:
                self.walk(c, tag)
                if c.tail:
                    self.buf.append(c.tail)
        if not inline:
            self.flush()
        if tag == "title":
            self.title_level = None
        if section:
            self.depth -= 1
            self.anchors.pop()


def xml_blocks(path: Path) -> list | None:
    raw = path.read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff")
    text = _resolve_entities(raw, path)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        if "junk after document element" not in str(e):
            log(f"    skip {path.name} (XML error: {e})")
            return None
        # a fragment (several top-level elements, included by entity from a main file)
        body = re.sub(r"^\s*<\?xml[^>]*\?>", "", text)
        try:
            root = ET.fromstring(f"<fragment>{body}</fragment>")
        except ET.ParseError as e2:
            log(f"    skip {path.name} (XML error: {e2})")
            return None
    w = XmlWalker()
    w.walk(root)
    w.flush()
    return w.blocks


# --------------------------------------------------------------------------- man pages, fortunes


def man_blocks(path: Path) -> list:
    import gzip

    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    src = raw.decode("utf-8", errors="replace")
    if re.match(r"\s*\.so\s", src) and len(src) < 200:
        return []  # a link to another page
    text = None
    if shutil.which("groff"):
        proc = subprocess.run(
            ["groff", "-mandoc", "-Tutf8", "-k", "-t", "-rHY=0", "-dAD=l", "-rLL=200n", "-P-cbou"],
            input=raw, capture_output=True, env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        if proc.returncode == 0:
            text = proc.stdout.decode("utf-8", errors="replace")
    if text is None:  # crude roff stripper
        lines = []
        for line in src.splitlines():
            if line.startswith(('.\\"', "'\\\"")):
                continue
            if line.startswith("."):
                m = re.match(r"\.(SH|SS)\s+(.*)", line)
                lines.append("" if not m else "\n" + m.group(2).strip('"') + "\n")
                if line.startswith((".PP", ".P", ".LP", ".TP", ".IP", ".sp", ".br")):
                    lines.append("")
                continue
            lines.append(re.sub(r"\\f[BIRP]|\\f\(..|\\[&e-]|\\\(..", "", line))
        text = "\n".join(lines)
    lines = text.splitlines()
    nonblank = [i for i, l in enumerate(lines) if l.strip()]
    if len(nonblank) >= 2:  # page header and footer lines
        lines = lines[nonblank[0] + 1: nonblank[-1]]
    blocks, cur = [], []
    for line in lines + [""]:
        if line.strip():
            if not line.startswith(" ") and line.strip().isupper():  # section heading (NAME, BESCHREIBUNG)
                if cur:
                    blocks.append(demo.Block(0, None, re.sub(r"\s+", " ", " ".join(cur)).strip()))
                blocks.append(demo.Block(1, None, line.strip()))
                cur = []
                continue
            cur.append(line.strip())
        elif cur:
            blocks.append(demo.Block(0, None, re.sub(r"\s+", " ", " ".join(cur)).strip()))
            cur = []
    return [b for b in blocks if sum(c.isalpha() for c in b.text) >= 0.5 * len(b.text)]


def fortune_blocks(path: Path) -> list:
    try:
        src = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return []
    blocks = []
    for entry in re.split(r"^%\s*$", src, flags=re.M):
        t = re.sub(r"\s+", " ", entry).strip()
        if t:
            blocks.append(demo.Block(0, None, t))
    return blocks


# --------------------------------------------------------------------------- NL documents

FOREIGN = {"en": ("fr", "de"), "fr": ("en", "de"), "de": ("en", "fr")}
DROPPED: dict[str, int] = {}


def wrong_language(text: str, lang: str) -> bool:
    if lang != "en":
        return demo.looks_english(text, lang) or _looks_other(text, lang, "fr" if lang == "de" else "de")
    return _looks_other(text, "en", "fr") or _looks_other(text, "en", "de")


def _looks_other(text: str, lang: str, other: str) -> bool:
    tokens = re.findall(r"[^\W\d_]+", text.lower())
    o = sum(t in demo.STOPWORDS[other] for t in tokens)
    t = sum(t in demo.STOPWORDS[lang] for t in tokens)
    return o >= 3 and o > 2 * t


def letter_words(text: str) -> int:
    return len(re.findall(r"[^\W\d_]{2,}", text))


def para_hash(text: str) -> bytes:
    return hashlib.sha1(re.sub(r"\W+", " ", text.lower()).strip().encode()).digest()


def clean_blocks(blocks: list, lang: str) -> list:
    out = []
    for b in blocks:
        text = b.text.strip()
        if letter_words(text) < MIN_BLOCK_WORDS:
            DROPPED["short"] = DROPPED.get("short", 0) + 1
            continue
        if re.fullmatch(r"(https?://|www\.)\S+", text):
            continue
        if wrong_language(text, lang):
            DROPPED[f"wrong-language-{lang}"] = DROPPED.get(f"wrong-language-{lang}", 0) + 1
            continue
        out.append(demo.Block(b.level, b.anchor, text))
    return out


def nl_docs(src: NLSource, pkg: Package, lang: str) -> list[Doc]:
    base = pkg.root / src.base
    if not base.is_dir():
        log(f"    warning: {pkg.name}: no folder {src.base}")
        return []
    files = sorted({p for pat in src.patterns for p in base.glob(pat) if p.is_file() and not p.is_symlink()})
    docs = []
    for f in files:
        rel = f.relative_to(base).as_posix()
        if src.exclude and re.search(src.exclude, rel):
            continue
        if LICENSE_FILE_RE.search(f.name) or INDEX_PAGE_RE.search(rel) or "Common_Content" in rel:
            continue
        if src.fmt in ("html", "lohtml"):
            blocks = html_blocks(f, keep_tables=src.fmt == "lohtml")
        elif src.fmt == "xml":
            blocks = xml_blocks(f)
            if blocks is None:
                continue
        elif src.fmt == "man":
            blocks = man_blocks(f)
        else:
            if f.suffix in (".dat", ".u8") or f.name == "off":
                continue
            blocks = fortune_blocks(f)
        blocks = clean_blocks(blocks, lang)
        if not blocks:
            continue
        rid = rel
        if src.id_sub:
            rid = re.sub(src.id_sub[0], src.id_sub[1], rid)
        if src.fmt == "man":
            rid = re.sub(r"\.gz$", "", rid)
        docs.append(Doc(lang, f"{src.id_prefix}/{rid}", f"{pkg.name}/{f.relative_to(pkg.root).as_posix()}",
                        pkg.name, blocks))
    return docs


def doc_records(doc: Doc, seen: set[bytes]) -> list[dict]:
    """Paragraph de-duplication against `seen` (updated), then split long documents at
    section headings (demo.split_sections, 300-5000 words)."""
    kept = []
    for b in doc.blocks:
        if letter_words(b.text) < DEDUP_MIN_WORDS:
            kept.append(b)
            continue
        h = para_hash(b.text)
        if h in seen:
            DROPPED["duplicate-paragraph"] = DROPPED.get("duplicate-paragraph", 0) + 1
            continue
        seen.add(h)
        kept.append(b)
    if sum(b.words for b in kept) < MIN_DOC_WORDS or all(b.level for b in kept):
        return []
    segs = demo.split_sections(kept)
    recs, ids = [], set()
    for n, seg in enumerate(segs):
        if len(segs) == 1:
            rid = doc.id
        else:
            anchor = next((b.anchor for b in seg if b.level and b.anchor), None) or f"part{n + 1}"
            rid, k = f"{doc.id}#{anchor}", 2
            while rid in ids:
                rid, k = f"{doc.id}#{anchor}:{k}", k + 1
        ids.add(rid)
        recs.append({"id": rid, "text": "\n\n".join(b.text for b in seg), "source": doc.source,
                     "_pkg": doc.package, "_doc": doc.id})
    return recs


# --------------------------------------------------------------------------- Python

PY_SKIP_PARTS = {"tests", "test", "_vendor", "vendor", "vendored", "_vendored", "externals", "_external", "third_party",
                 "thirdparty", "array_api_compat", "array_api_extra", "__pycache__", "_build"}
GENERATED_RE = re.compile(r"generated by|auto-?generated|do not edit|automatically generated|autogenerated", re.I)


def py_records(pkg: Package) -> list[dict]:
    recs = []
    with zipfile.ZipFile(pkg.file) as z:
        for info in sorted(z.infolist(), key=lambda i: i.filename):
            name = info.filename
            if not name.endswith(".py") or ".dist-info/" in name or ".data/" in name:
                continue
            parts = name.split("/")
            if set(parts[:-1]) & PY_SKIP_PARTS or parts[-1].startswith("test_") or parts[-1] == "conftest.py":
                continue
            if info.file_size < PY_MIN_BYTES or info.file_size > PY_MAX_BYTES:
                continue
            data = z.read(info)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if GENERATED_RE.search(text[:2000]) or "\x00" in text:
                continue
            if max((len(l) for l in text.splitlines()), default=0) > PY_MAX_LINE:
                continue
            recs.append({"id": f"{pkg.name}/{name}", "text": text, "source": f"{pkg.name}/{name}",
                         "_pkg": pkg.name, "_doc": name})
    return recs


def dedupe_files(recs: list[dict], seen: set[bytes]) -> list[dict]:
    out = []
    for r in recs:
        h = hashlib.sha1(r["text"].encode()).digest()
        if h in seen:
            DROPPED["duplicate-file"] = DROPPED.get("duplicate-file", 0) + 1
            continue
        seen.add(h)
        out.append(r)
    return out


# --------------------------------------------------------------------------- selection


def nbytes(r: dict) -> int:
    return len(r["text"].encode("utf-8"))


def spread(recs: list[dict], budget: int) -> list[dict]:
    """Deterministic pick spread evenly over the (sorted) candidates, up to `budget` bytes."""
    total = sum(nbytes(r) for r in recs)
    if total <= budget:
        return list(recs)
    step = max(1, total // max(1, budget))
    chosen, size = set(), 0
    for off in range(step):
        for i in range(off, len(recs), step):
            if i in chosen or size + nbytes(recs[i]) > budget:
                continue
            chosen.add(i)
            size += nbytes(recs[i])
        if size >= budget * 0.95:
            break
    return [recs[i] for i in sorted(chosen)]


def fair_share(recs: list[dict], budget: int, group=lambda r: r["_pkg"]) -> list[dict]:
    """Split `budget` equally between the groups (packages); a group that needs less
    gives the rest to the others; each group is picked with spread()."""
    groups: dict[str, list[dict]] = {}
    for r in recs:
        groups.setdefault(group(r), []).append(r)
    sizes = {g: sum(nbytes(r) for r in rs) for g, rs in groups.items()}
    if sum(sizes.values()) <= budget:
        return list(recs)
    alloc, left, pending = {}, budget, sorted(groups)
    while pending:
        share = left // len(pending)
        small = [g for g in pending if sizes[g] <= share]
        if not small:
            for g in pending:
                alloc[g] = share
            break
        for g in small:
            alloc[g] = sizes[g]
            left -= sizes[g]
            pending.remove(g)
    out = []
    for g in sorted(groups):
        out.extend(spread(groups[g], alloc[g]))
    return out


def shuffle_key(r: dict) -> bytes:
    return hashlib.sha256(r["id"].encode("utf-8")).digest()


# --------------------------------------------------------------------------- output


def write_jsonl(path: Path, recs: list[dict]) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    recs = sorted(recs, key=shuffle_key)
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)), f"duplicate ids in {path}"
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for r in recs:
            fh.write(json.dumps({"id": r["id"], "text": r["text"], "source": r["source"]}, ensure_ascii=False))
            fh.write("\n")
    return {
        "records": len(recs),
        "documents": len({(r["_pkg"], r["_doc"]) for r in recs}),
        "bytes": path.stat().st_size,
        "text_bytes": sum(nbytes(r) for r in recs),
        "words": sum(len(r["text"].split()) for r in recs),
        "sha256": sha256_file(path),
    }


def make_archive(out: Path, members: list[str], dest: Path) -> int:
    tmp = dest.with_suffix(".tmp")
    with lzma.open(tmp, "wb", preset=9, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64) as xz:
        with tarfile.open(fileobj=xz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            dirs = set()
            for m in sorted(members):
                parts = m.split("/")
                for i in range(1, len(parts)):
                    dirs.add("/".join(parts[:i]))
            entries = sorted([(d, True) for d in dirs] + [(m, False) for m in members])
            for name, is_dir in [("", True)] + entries:
                arc = "gpu-corpus" + (f"/{name}" if name else "")
                ti = tarfile.TarInfo(arc)
                ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
                if is_dir:
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(ti)
                else:
                    data = (out / name).read_bytes()
                    ti.size, ti.mode = len(data), 0o644
                    tar.addfile(ti, io.BytesIO(data))
    tmp.replace(dest)
    return dest.stat().st_size


# --------------------------------------------------------------------------- licenses

PYPI_LICENSE_FILE_RE = re.compile(r"\.dist-info/(licenses/.*|LICEN[CS]E.*|COPYING.*|NOTICE.*|AUTHORS.*)$", re.I)


LICENSE_PHRASES = [
    (r"GNU (?:Lesser|Library) General Public License|\bLGPL", "LGPL"),
    (r"GNU General Public License|\bGPL\b", "GPL"),
    (r"GNU Free Documentation License|\bG?FDL\b", "GFDL"),
    (r"Creative Commons|CC-BY-SA", "CC-BY-SA"),
    (r"Apache License", "Apache"),
    (r"Mozilla Public License|\bMPL\b", "MPL"),
    (r"\bBSD\b", "BSD"),
    (r"\bMIT\b", "MIT"),
]


def debian_license(pkg: Package, other_root) -> None:
    """Copyright file of a Debian package; where /usr/share/doc/<pkg> is a symlink to
    another package's folder (gimp-help-* -> gimp-help-common, manpages-dev ->
    manpages), `other_root(name)` gives that package's unpacked tree."""
    docdir = pkg.root / "usr" / "share" / "doc" / pkg.name
    cfile = docdir / "copyright"
    if docdir.is_symlink():
        target = os.readlink(docdir).rstrip("/").split("/")[-1]
        cfile = other_root(target) / "usr" / "share" / "doc" / target / "copyright"
        pkg.license_from = target
    if not cfile.is_file():
        pkg.license_summary = "(no copyright file in the package)"
        return
    text = cfile.read_text(encoding="utf-8", errors="replace")
    pkg.license_text = text
    names = demo.license_names(text) if text.startswith("Format:") else []
    if not names:  # free-form copyright file: name the licenses it mentions
        for pat, short in LICENSE_PHRASES:
            m = re.search(pat, text, re.I)
            if m:
                ver = re.search(r"version (\d(?:\.\d)?)", text[m.start(): m.start() + 200], re.I)
                name = short + (f"-{ver.group(1)}" if ver and short in ("GPL", "LGPL", "GFDL") else "")
                if name not in names:
                    names.append(name)
        names = [n + " (free-form copyright file)" for n in names[:1]] + names[1:]
    pkg.license_summary = ", ".join(names) if names else "see the copyright file"


def pypi_license(pkg: Package) -> None:
    with zipfile.ZipFile(pkg.file) as z:
        meta_name = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
        meta = z.read(meta_name).decode("utf-8", errors="replace") if meta_name else ""
        head = meta.split("\n\n", 1)[0]
        expr = re.findall(r"^License-Expression:\s*(.+)$", head, re.M)
        lic = re.findall(r"^License:\s*(.+)$", head, re.M)
        classifiers = re.findall(r"^Classifier:\s*License :: (.+)$", head, re.M)
        parts = expr or ([lic[0].strip()] if lic and len(lic[0]) < 100 else []) or classifiers
        pkg.license_summary = "; ".join(parts) if parts else "see the license files"
        texts = []
        for n in sorted(z.namelist()):
            if PYPI_LICENSE_FILE_RE.search(n):
                texts.append(f"--- {n}\n" + z.read(n).decode("utf-8", errors="replace").strip())
        if not texts and lic and len(lic[0]) >= 100:
            texts.append(lic[0])
        pkg.license_text = "\n\n".join(texts)


def write_notice(out: Path, pkgs: list[Package]) -> None:
    lines = [
        "mome GPU corpus (runs/gpu-corpus/) - NOTICE",
        "=" * 44,
        "",
        "Built by scripts/build_gpu_corpus.py from the Debian 12 (bookworm) binary packages",
        "and PyPI wheels listed below. Natural-language text was extracted from their",
        "documentation (markup, navigation, code listings and tables of contents removed,",
        "paragraphs in another language and duplicate paragraphs removed, long documents",
        "split into sections); Python files are copied verbatim. Each source keeps its own",
        "license; the summaries come from the Debian copyright files (DEP-5 License fields)",
        "and the wheels' METADATA; the full copyright/license texts follow the list.",
        "",
    ]
    for split in ("train", "heldout", "eval", "license-only"):
        lines += [f"[{split}]", ""]
        for p in [p for p in pkgs if p.split == split]:
            lines.append(f"* {p.name} {p.version} ({p.kind})")
            lines.append(f"    license: {p.license_summary}")
            if p.license_from:
                lines.append(f"    (copyright file of {p.license_from}: /usr/share/doc/{p.name} is a symlink to it)")
        lines.append("")
    lines += ["", "Full copyright / license texts", "=" * 30, ""]
    first: dict[str, str] = {}
    for p in pkgs:
        where = (f"/usr/share/doc/{p.license_from or p.name}/copyright" if p.kind == "debian"
                 else "wheel license files / METADATA")
        text = p.license_text.strip() or "(none found)"
        same = first.setdefault(text, p.name)
        if same != p.name:
            text = f"(identical to the text given for {same} above)"
        lines += ["-" * 78, f"{p.name} {p.version} ({p.kind}; {where})", "-" * 78, text, ""]
    (out / "NOTICE").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: runs/gpu-corpus)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                    help="download cache (default: ~/.cache/mome/gpu-corpus-dl, or $MOME_CACHE/gpu-corpus-dl)")
    ap.add_argument("--max-mb-per-domain", type=float, default=DEFAULT_MAX_MB,
                    help=f"cap on the train text per domain, MB (10^6 bytes) of UTF-8 text (default {DEFAULT_MAX_MB:g})")
    ap.add_argument("--archive-limit-mb", type=float, default=DEFAULT_ARCHIVE_LIMIT_MB,
                    help="corpus.tar.xz must not exceed this many MiB; the train cap is lowered until it fits "
                    f"(default {DEFAULT_ARCHIVE_LIMIT_MB:g})")
    ap.add_argument("--strict-versions", action="store_true",
                    help="fail if a pinned Debian version is no longer downloadable (default: use the candidate)")
    ap.add_argument("--keep-unpacked", action="store_true",
                    help="unpack into <cache>/unpacked and keep it for the next run (default: a temporary folder)")
    args = ap.parse_args()
    t0 = time.time()
    out: Path = args.out.resolve()
    cache: Path = args.cache.expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    # unpacked trees: reused across runs with --keep-unpacked, else private to this run
    unpack = cache / "unpacked" if args.keep_unpacked else Path(tempfile.mkdtemp(prefix="unpacked-", dir=cache))
    if not args.keep_unpacked:
        atexit.register(shutil.rmtree, unpack, True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on kill too
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("train", "heldout", "eval"):
        shutil.rmtree(out / sub, ignore_errors=True)
    log(f"output: {out}\ncache:  {cache}")

    # ---- which package feeds which split
    plan: dict[str, str] = {}  # debian package -> split

    def add(name: str, split: str) -> None:
        if plan.setdefault(name, split) != split:
            die(f"package {name} would feed both {plan[name]} and {split}")

    srcs = {sp: {l: f(l) for l in NL} for sp, f in (("train", train_sources), ("heldout", heldout_sources),
                                                       ("eval", eval_sources))}
    for sp in srcs:
        for l in NL:
            for s in srcs[sp][l]:
                add(s.package, sp)
    pypi_plan = {**{n: ("train", v) for n, v in PYPI_TRAIN.items()},
                 **{n: ("heldout", v) for n, v in PYPI_HELDOUT.items()},
                 **{n: ("eval", v) for n, v in PYPI_EVAL.items()}}
    assert len(pypi_plan) == len(PYPI_TRAIN) + len(PYPI_HELDOUT) + len(PYPI_EVAL), "a PyPI package is in two splits"
    for name, sp in list(plan.items()) + [(n, s) for n, (s, _) in pypi_plan.items()]:
        kind = "pypi" if name in pypi_plan else "debian"
        if (sp == "eval") != is_reserved(kind, name):
            die(f"{kind} package {name}: split {sp}, but reserved={is_reserved(kind, name)}")

    # ---- downloads
    log("== download (cached) and unpack")
    pkgs: dict[str, Package] = {}
    for name in sorted(plan):
        pkgs[name] = fetch_deb(name, plan[name], cache, unpack, args.strict_versions)
    for name, (sp, ver) in sorted(pypi_plan.items()):
        pkgs["pypi:" + name] = fetch_wheel(name, ver, sp, cache)
    log(f"  {len(pkgs)} packages ready ({time.time() - t0:.0f} s)")

    # ---- extraction, in claim order eval -> heldout -> train
    log("== extract")
    selected: dict[str, dict[str, list[dict]]] = {sp: {} for sp in ("eval", "heldout", "train")}
    train_cands: dict[str, list[dict]] = {}
    for dom in DOMAINS:
        seen: set[bytes] = set()
        for sp in ("eval", "heldout", "train"):
            if dom == "py":
                names = {"eval": PYPI_EVAL, "heldout": PYPI_HELDOUT, "train": PYPI_TRAIN}[sp]
                cands = []
                for n in sorted(names):
                    cands += dedupe_files(py_records(pkgs["pypi:" + n]), seen if sp != "train" else set())
                if sp == "train":  # identical files: within train, and against the claimed eval/heldout ones
                    claimed = seen
                    cands = dedupe_files(cands, claimed)
            else:
                cands = []
                for s in srcs[sp][dom]:
                    t1 = time.time()
                    docs = nl_docs(s, pkgs[s.package], dom)
                    recs = []
                    for d in docs:
                        recs += doc_records(d, seen)
                    cands += recs
                    log(f"  [{dom}/{sp}] {s.package}: {len(docs)} documents -> {len(recs)} records, "
                        f"{sum(nbytes(r) for r in recs):,} bytes ({time.time() - t1:.1f} s)")
            if sp == "train":
                train_cands[dom] = cands
                continue
            budget = EVAL_BUDGET[dom] if sp == "eval" else HELDOUT_BUDGET
            chosen = fair_share(cands, budget)
            selected[sp][dom] = chosen
            if dom != "py":
                # paragraphs of eval/heldout candidates that were not chosen are released
                # again (train may use them); the chosen ones stay claimed.
                keep, chosen_ids = set(), {r["id"] for r in chosen}
                for r in chosen:
                    for para in r["text"].split("\n\n"):
                        keep.add(para_hash(para))
                for r in cands:
                    if r["id"] in chosen_ids:
                        continue
                    for para in r["text"].split("\n\n"):
                        h = para_hash(para)
                        if h not in keep:
                            seen.discard(h)
            log(f"  [{dom}/{sp}] {len(chosen)} of {len(cands)} records, {sum(nbytes(r) for r in chosen):,} bytes")
        if dom == "py":
            log(f"  [py/train] {len(train_cands['py'])} files, {sum(nbytes(r) for r in train_cands['py']):,} bytes")
    log(f"  dropped: {json.dumps(DROPPED, sort_keys=True)}")

    # ---- licenses
    def other_root(name: str) -> Path:
        if name not in pkgs:  # downloaded only for its copyright file; feeds no split
            pkgs[name] = fetch_deb(name, "license-only", cache, unpack, args.strict_versions)
            debian_license(pkgs[name], other_root)
        return pkgs[name].root

    for p in list(pkgs.values()):
        if p.kind == "debian":
            debian_license(p, other_root)
        else:
            pypi_license(p)

    # ---- write, archive; lower the train cap until the archive fits
    cap = args.max_mb_per_domain
    limit = args.archive_limit_mb * 1024 * 1024
    for attempt in range(6):
        log(f"== write (train cap {cap:.2f} MB of text per domain)")
        selected["train"] = {d: fair_share(train_cands[d], int(cap * 1e6)) for d in DOMAINS}
        stats: dict[str, dict] = {}
        for p in pkgs.values():
            p.contrib = {}
        for sp in ("train", "heldout", "eval"):
            for dom in DOMAINS:
                rel = f"{sp}/{dom}.jsonl"
                recs = selected[sp][dom]
                stats[rel] = write_jsonl(out / rel, recs)
                for r in recs:
                    key = ("pypi:" + r["_pkg"]) if ("pypi:" + r["_pkg"]) in pkgs else r["_pkg"]
                    c = pkgs[key].contrib.setdefault(rel, {"records": 0, "text_bytes": 0, "words": 0})
                    c["records"] += 1
                    c["text_bytes"] += nbytes(r)
                    c["words"] += len(r["text"].split())
                s = stats[rel]
                log(f"  {rel}: {s['records']:,} records, {s['bytes']:,} bytes, {s['words']:,} words")
        # no package in two splits (by what was actually written)
        for p in pkgs.values():
            sps = {k.split("/")[0] for k in p.contrib}
            assert len(sps) <= 1 and (not sps or sps == {p.split}), f"{p.name} feeds {sps}"
            if not p.contrib and p.split != "license-only":
                log(f"  note: {p.name} contributed no record")
        write_notice(out, list(pkgs.values()))
        manifest = {
            "script": "scripts/build_gpu_corpus.py",
            "script_version": SCRIPT_VERSION,
            "command": " ".join(["scripts/build_gpu_corpus.py"] + sys.argv[1:]),
            "train_cap_mb_per_domain": round(cap, 3),
            "heldout_budget_bytes": HELDOUT_BUDGET,
            "eval_budget_bytes": EVAL_BUDGET,
            "record_format": {"id": "package-based id, language part of the path removed",
                              "text": "paragraphs separated by a blank line; python: the file",
                              "source": "<package>/<path inside the package>"},
            "files": stats,
            "packages": [
                {"name": p.name, "version": p.version, "source": p.kind, "file": p.file.name, "sha256": p.sha256,
                 "split": p.split, "pinned_version": p.pinned, "license": p.license_summary,
                 **({"license_file_from": p.license_from} if p.license_from else {}),
                 "outputs": dict(sorted(p.contrib.items()))}
                for p in sorted(pkgs.values(), key=lambda p: (p.split, p.kind, p.name))
            ],
            "dropped": dict(sorted(DROPPED.items())),
        }
        (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        members = [f"{sp}/{d}.jsonl" for sp in ("train", "heldout", "eval") for d in DOMAINS] + ["MANIFEST.json", "NOTICE"]
        log("== archive (xz -9, single thread; a few minutes)")
        size = make_archive(out, members, out / "corpus.tar.xz")
        log(f"  corpus.tar.xz: {size:,} bytes ({size / 1048576:.2f} MiB)")
        if size <= limit:
            break
        cap = cap * (limit / size) * 0.95
        log(f"  over {args.archive_limit_mb:g} MiB: lowering the train cap to {cap:.2f} MB and rebuilding")
    else:
        die("could not bring the archive under the limit")

    info = {"seconds": round(time.time() - t0, 1), "archive_bytes": size,
            "archive_sha256": sha256_file(out / "corpus.tar.xz"),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "build-info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    print(f"corpus.tar.xz: {size:,} bytes ({size / 1048576:.2f} MiB) -> {out / 'corpus.tar.xz'}")
    log(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
