#!/usr/bin/env python3
"""Build the small demo corpus shipped under ``data/demo/``.

Domains: ``en``, ``fr``, ``de`` (natural language) and ``py`` (Python source).

Sources (and no others), all taken from Debian packages of the running Debian
release, fetched with ``apt-get download`` into a temporary folder and unpacked
there with ``dpkg-deb -x`` (nothing is installed system-wide):

* ``debian-handbook`` (en-US / fr-FR / de-DE)   -> main sets of en / fr / de
* ``debian-reference-en`` / ``-fr`` / ``-de``  -> held-out sets of en / fr / de (every
  k-th page); its other pages complete the main sets up to the budget (the Debian
  Reference has only ~0.3 MB of prose per language, too little for a main set)
* ``libpython3.X-stdlib`` (the .py files under /usr/lib/python3.X/)
                                                -> py (main and held-out, disjoint files)

``libpython3.X-minimal`` is downloaded as well, but only to read the Debian
copyright file (``/usr/share/doc/libpython3.X-stdlib`` is a symlink to
``libpython3.X-minimal``); no text is taken from it.

Outputs (deterministic for a given set of package versions):

* ``data/demo/{en,fr,de,py}.jsonl``          main sets, <= 1 MB of text each
* ``data/demo/heldout/{en,fr,de,py}.jsonl``  held-out sets, ~150 KB each
* ``data/demo/licenses/<pkg>.copyright``     copyright files of the source packages
* ``data/demo/NOTICE`` and ``data/demo/README.md``

Each JSONL line: ``{"id": "<package>/<relative path>[#section]", "text": "...",
"source": "<package> <version>"}``.

Usage::

    sudo apt-get update            # once, if the package lists are stale
    python3 scripts/build_demo_corpus.py [--out data/demo] [--debs DIR] [--keep]

Standard library only (Python >= 3.11); needs ``apt-get`` and ``dpkg-deb``.
"""

from __future__ import annotations

import argparse
import glob
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "data" / "demo"

PYTHON_VERSION = "3.11"  # Debian 12 "bookworm"; override with --python-version

LANGS = {
    # domain: (debian-reference package, debian-handbook language folder)
    "en": ("debian-reference-en", "en-US"),
    "fr": ("debian-reference-fr", "fr-FR"),
    "de": ("debian-reference-de", "de-DE"),
}
HANDBOOK = "debian-handbook"

MAIN_BUDGET = 1_000_000  # bytes of UTF-8 text per domain (main set)
HELDOUT_BUDGET = 150_000  # bytes of UTF-8 text per domain (held-out set)

MIN_WORDS = 300  # target lower bound for one natural-language record
MAX_WORDS = 5000  # upper bound for one natural-language record
MIN_PAGE_WORDS = 120  # pages with less text than this (TOCs, title pages) are dropped

PY_MIN_BYTES = 1024
PY_MAX_BYTES = 60 * 1024
PY_SKIP_DIRS = {"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages", "__pycache__"}

# Short license summaries for the NOTICE. The full texts are copied to licenses/.
LICENSE_SUMMARY = {
    "debian-reference": "GPL-2+ (GNU General Public License, version 2 or later; "
    "translations under the same terms)",
    "debian-handbook": "GPL-2.0+ or CC-BY-SA-3.0 (dual-licensed, at your choice)",
    "libpython": "Python Software Foundation License Version 2 (PSF License Agreement, "
    "with the historical BeOpen/CNRI/CWI licenses of the Python license stack); a few "
    "modules carry additional permissive notices (e.g. logging, multiprocessing, sqlite3, "
    "asyncio, tarfile, turtle), listed at the end of the copyright file",
}


def log(msg: str) -> None:
    print(msg, flush=True)


def die(msg: str) -> "NoReturn":  # type: ignore[name-defined]
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


# --------------------------------------------------------------------------- packages


@dataclass
class Package:
    name: str
    version: str
    deb: Path
    root: Path  # unpacked tree

    @property
    def source(self) -> str:
        return f"{self.name} {self.version}"


def fetch(name: str, debdir: Path, unpack_root: Path, cache: Path | None) -> Package:
    """Download (or reuse from --debs) and unpack one package."""
    debs = sorted(glob.glob(str(debdir / f"{name}_*.deb")))
    if not debs and cache is not None:
        cached = sorted(glob.glob(str(cache / f"{name}_*.deb")))
        if cached:
            log(f"  reuse {cached[-1]}")
            shutil.copy2(cached[-1], debdir)
            debs = sorted(glob.glob(str(debdir / f"{name}_*.deb")))
    if not debs:
        log(f"  apt-get download {name}")
        if shutil.which("apt-get") is None:
            die("apt-get not found: this script must run on Debian (or pass --debs DIR with the .deb files)")
        proc = subprocess.run(["apt-get", "download", name], cwd=debdir, capture_output=True, text=True)
        debs = sorted(glob.glob(str(debdir / f"{name}_*.deb")))
        if proc.returncode != 0 or not debs:
            die(
                f"could not download package '{name}' (apt-get exit code {proc.returncode}).\n"
                f"  apt-get said: {proc.stderr.strip() or proc.stdout.strip()}\n"
                "  Check that the Debian package lists are up to date (`apt-get update`) and that "
                "the package exists in this release (for Python, see --python-version)."
            )
    deb = Path(debs[-1])
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True, text=True, check=True
    ).stdout
    meta = dict(line.split(": ", 1) for line in fields.strip().splitlines())
    root = unpack_root / name
    root.mkdir(parents=True, exist_ok=True)
    log(f"  dpkg-deb -x {deb.name} -> {root}")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return Package(meta["Package"], meta["Version"], deb, root)


# --------------------------------------------------------------------------- HTML -> text

BLOCK_TAGS = {
    "p", "div", "li", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "section", "article", "table", "tr", "td", "th", "title", "body",
    "br", "hr", "caption", "figure", "figcaption", "header", "footer", "main",
}
VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr", "source"}
# Elements whose whole content is dropped.
SKIP_TAGS = {"head", "script", "style", "nav", "pre", "table", "img", "object", "svg", "map", "sup"}
SKIP_CLASSES = {
    "navheader", "navfooter", "toc", "list-of-tables", "list-of-figures", "list-of-examples",
    "table", "informaltable", "example", "informalexample", "screen", "programlisting",
    "footnotes", "footnote", "mediaobject", "figure", "informalfigure", "index", "indexterm",
    "legalnotice", "docnav", "breadcrumbs", "revhistory", "author", "authorgroup", "othercredit",
    "editor", "copyright", "abstract-nav", "url",
}
SKIP_IDS = {"banner", "title"}  # debian-handbook page banner ("Download the ebook") and logo bar
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


@dataclass
class Block:
    level: int  # 0 = paragraph, 1..6 = heading
    anchor: str | None
    text: str

    @property
    def words(self) -> int:
        return len(self.text.split())


class TextExtractor(html.parser.HTMLParser):
    """Turns a DocBook-style HTML page into a list of paragraphs/headings."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.stack: list[tuple[str, bool]] = []  # (tag, skipping-started-here)
        self.skip_depth = 0
        self.buf: list[str] = []
        self.heading: tuple[int, str | None] | None = None  # (level, anchor) while inside h1..h6
        self.pending_anchor: str | None = None

    # -- helpers
    def flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self.buf)).strip()
        self.buf = []
        if not text:
            return
        if self.heading is not None:
            level, anchor = self.heading
            self.blocks.append(Block(level, anchor or self.pending_anchor, text))
            self.pending_anchor = None
        else:
            self.blocks.append(Block(0, None, text))

    @staticmethod
    def _skipped(tag: str, attrs: dict[str, str | None]) -> bool:
        if tag in SKIP_TAGS:
            return True
        classes = set((attrs.get("class") or "").split())
        if classes & SKIP_CLASSES:
            return True
        if attrs.get("id") in SKIP_IDS and tag in ("div", "p"):
            return True
        return False

    # -- parser callbacks
    def handle_starttag(self, tag: str, attrs_list) -> None:
        attrs = dict(attrs_list)
        if tag in VOID_TAGS:
            if tag in ("br", "hr") and not self.skip_depth:
                self.buf.append(" ")
            return
        skip = self._skipped(tag, attrs)
        self.stack.append((tag, skip))
        if skip:
            self.skip_depth += 1
            return
        if self.skip_depth:
            return
        ident = attrs.get("id")
        if tag in HEADINGS:
            self.flush()
            self.heading = (HEADINGS[tag], None)
        elif tag in BLOCK_TAGS:
            self.flush()
        if ident and self.heading is not None and self.heading[1] is None:
            self.heading = (self.heading[0], ident)
        elif ident and tag in ("a", "div", "section"):
            # DocBook puts the section id on an empty <a id> just before/inside the title.
            self.pending_anchor = ident

    def handle_startendtag(self, tag: str, attrs_list) -> None:
        if self.skip_depth:
            return
        attrs = dict(attrs_list)
        ident = attrs.get("id")
        if tag in ("br", "hr"):
            self.buf.append(" ")
        if ident and tag == "a":
            if self.heading is not None and self.heading[1] is None:
                self.heading = (self.heading[0], ident)
            else:
                self.pending_anchor = ident

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS:
            return
        # pop up to and including the matching tag (tolerates sloppy HTML)
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                break
        else:
            return
        while len(self.stack) > i:
            t, skip = self.stack.pop()
            if skip:
                self.skip_depth -= 1
                continue
            if self.skip_depth:
                continue
            if t in HEADINGS:
                self.flush()
                self.heading = None
            elif t in BLOCK_TAGS:
                self.flush()

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.buf.append(data)

    def close(self) -> None:
        super().close()
        self.flush()


# Frequent function words, used to drop paragraphs left untranslated (in English)
# in the French and German documentation.
STOPWORDS = {
    "en": set(
        "the and of to is that it for with as are this be by you can which from or not "
        "have has were they their its if when these than but should would into some "
        "such more there been only other all any each what how".split()
    ),
    "fr": set(
        "le la les de des du et est une un dans que qui pour par sur pas ne au aux ce cette ces "
        "il elle sont avec plus ou sa son ses leur vous nous être peut mais comme si tout tous "
        "aussi été l d qu c n s".split()
    ),
    "de": set(
        "der die das und ist nicht ein eine einen dem den des zu mit sich auf für von im werden "
        "wird sind auch oder wenn kann als bei nach aus wie durch dass diese dieser noch nur sie "
        "ihre zum zur über einer eines haben hat es man was".split()
    ),
}
DROPPED = {"untranslated": 0}


def looks_english(text: str, lang: str) -> bool:
    tokens = re.findall(r"[^\W\d_]+", text.lower())
    en = sum(t in STOPWORDS["en"] for t in tokens)
    tgt = sum(t in STOPWORDS[lang] for t in tokens)
    if en >= 3 and en > 2 * tgt:
        return True
    # short blocks (headings, list items): any English function word and none of the language
    return en >= 1 and tgt == 0 and len(tokens) >= 3


def html_blocks(path: Path, lang: str) -> list[Block]:
    parser = TextExtractor()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    blocks = []
    for b in parser.blocks:
        # drop leftovers that are pure punctuation/numbers (e.g. emptied list items)
        if not re.search(r"[^\W\d_]{2}", b.text):
            continue
        if lang != "en" and looks_english(b.text, lang):
            DROPPED["untranslated"] += 1
            continue
        blocks.append(b)
    return blocks


def _words(blocks: list[Block]) -> int:
    return sum(b.words for b in blocks)


def split_sections(blocks: list[Block]) -> list[list[Block]]:
    """Split a page into segments of at most MAX_WORDS words, cutting at the
    highest-level headings first, then merging neighbours smaller than MIN_WORDS."""
    if _words(blocks) <= MAX_WORDS:
        return [blocks]
    levels = sorted({b.level for b in blocks[1:] if b.level})
    parts: list[list[Block]] = []
    if levels:
        lvl = levels[0]
        for b in blocks:
            if parts and not (b.level and b.level <= lvl):
                parts[-1].append(b)
            else:
                parts.append([b])
        if len(parts) == 1:  # only the first block was such a heading
            levels = levels[1:]
    if not levels or len(parts) <= 1:
        # no usable heading: cut between paragraphs
        parts, cur = [], []
        for b in blocks:
            if cur and _words(cur) + b.words > MAX_WORDS:
                parts.append(cur)
                cur = []
            cur.append(b)
        if cur:
            parts.append(cur)
        return merge_small(parts)
    out: list[list[Block]] = []
    for p in parts:
        out.extend(split_sections(p))
    return merge_small(out)


def merge_small(parts: list[list[Block]]) -> list[list[Block]]:
    merged: list[list[Block]] = []
    for p in parts:
        if merged and (_words(merged[-1]) < MIN_WORDS or _words(p) < MIN_WORDS) and _words(merged[-1]) + _words(p) <= MAX_WORDS:
            merged[-1] = merged[-1] + p
        else:
            merged.append(list(p))
    return merged


def html_records(pkg: Package, pages: list[Path], lang: str) -> list[dict]:
    records = []
    for page in pages:
        rel = page.relative_to(pkg.root).as_posix()
        blocks = html_blocks(page, lang)
        if _words(blocks) < MIN_PAGE_WORDS:
            log(f"    skip {rel} ({_words(blocks)} words)")
            continue
        segments = split_sections(blocks)
        seen: set[str] = set()
        for n, seg in enumerate(segments):
            if len(segments) == 1:
                rid = f"{pkg.name}/{rel}"
            else:
                anchor = next((b.anchor for b in seg if b.level and b.anchor), None) or f"part{n + 1}"
                rid = f"{pkg.name}/{rel}#{anchor}"
                k = 2
                while rid in seen:
                    rid = f"{pkg.name}/{rel}#{anchor}:{k}"
                    k += 1
            seen.add(rid)
            text = "\n\n".join(b.text for b in seg)
            records.append({"id": rid, "text": text, "source": pkg.source, "_doc": rel})
    return records


# --------------------------------------------------------------------------- python


def py_records(pkg: Package, libdir: Path) -> list[dict]:
    records = []
    files = sorted(p for p in libdir.rglob("*.py") if p.is_file() and not p.is_symlink())
    for f in files:
        rel_lib = f.relative_to(libdir)
        if set(rel_lib.parts[:-1]) & PY_SKIP_DIRS or rel_lib.name.startswith("test_"):
            continue
        size = f.stat().st_size
        if size < PY_MIN_BYTES or size > PY_MAX_BYTES:
            continue
        try:
            text = f.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            log(f"    skip {rel_lib} (not UTF-8)")
            continue
        rel = f.relative_to(pkg.root).as_posix()
        records.append({"id": f"{pkg.name}/{rel}", "text": text, "source": pkg.source, "_doc": rel})
    return records


# --------------------------------------------------------------------------- selection


def nbytes(rec: dict) -> int:
    return len(rec["text"].encode("utf-8"))


def take_in_order(records: list[dict], budget: int) -> list[dict]:
    """Records in sorted order until the next one would exceed the budget."""
    out, total = [], 0
    for r in records:
        if total + nbytes(r) > budget:
            break
        out.append(r)
        total += nbytes(r)
    return out


def take_spread(records: list[dict], budget: int) -> list[dict]:
    """Deterministic selection spread evenly over the sorted candidates (so the
    held-out set covers many topics), output in sorted order."""
    total_all = sum(nbytes(r) for r in records)
    if total_all <= budget:
        return list(records)
    step = max(1, total_all // budget)
    chosen: set[int] = set()
    total = 0
    for offset in range(step):
        for i in range(offset, len(records), step):
            if i in chosen:
                continue
            if total + nbytes(records[i]) > budget:
                continue
            chosen.add(i)
            total += nbytes(records[i])
        if total >= budget * 0.9:
            break
    return [records[i] for i in sorted(chosen)]


def take_spread_pages(records: list[dict], budget: int) -> list[dict]:
    """Like take_spread, but takes whole pages (documents): every k-th page of the
    sorted list first, then the pages in between, until the budget is reached."""
    pages = sorted({r["_doc"] for r in records})
    by_page = {p: [r for r in records if r["_doc"] == p] for p in pages}
    total_all = sum(nbytes(r) for r in records)
    step = max(1, round(total_all / budget))
    order = [p for off in range(step) for p in pages[off::step]]
    chosen: list[dict] = []
    total = 0
    for p in order:
        size = sum(nbytes(r) for r in by_page[p])
        if total + size <= budget:
            chosen.extend(by_page[p])
            total += size
        elif total < budget * 0.8:
            # page too big to take whole: take its leading sections that fit
            for r in by_page[p]:
                if total + nbytes(r) > budget:
                    break
                chosen.append(r)
                total += nbytes(r)
        if total >= budget * 0.9:
            break
    index = {id(r): i for i, r in enumerate(records)}
    return sorted(chosen, key=lambda r: index[id(r)])


# --------------------------------------------------------------------------- output


def write_jsonl(path: Path, records: list[dict]) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for r in records:
            fh.write(json.dumps({"id": r["id"], "text": r["text"], "source": r["source"]}, ensure_ascii=False))
            fh.write("\n")
    stats = {
        "file": path.relative_to(path.parents[1] if path.parent.name == "heldout" else path.parent).as_posix(),
        "records": len(records),
        "bytes": path.stat().st_size,
        "text_bytes": sum(nbytes(r) for r in records),
        "words": sum(len(r["text"].split()) for r in records),
        "docs": len({r["_doc"] for r in records}),
    }
    log(f"  wrote {path} : {stats['records']} records, {stats['bytes']} bytes, {stats['words']} words")
    return stats


def license_names(copyright_text: str) -> list[str]:
    """`License:` short names of a DEP-5 copyright file (empty if not machine-readable)."""
    names = []
    for m in re.finditer(r"^License:[ \t]*(\S.*)$", copyright_text, flags=re.M):
        name = m.group(1).strip()
        if len(name) <= 60 and name not in names:
            names.append(name)
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: data/demo)")
    ap.add_argument("--debs", type=Path, default=None, help="folder with already downloaded .deb files to reuse")
    ap.add_argument("--python-version", default=PYTHON_VERSION, help="CPython version of libpython3.X-stdlib")
    ap.add_argument("--keep", action="store_true", help="keep the temporary download/unpack folder")
    args = ap.parse_args()

    out: Path = args.out.resolve()
    work = Path(tempfile.mkdtemp(prefix="mome-demo-corpus-"))
    debdir, unpack = work / "debs", work / "unpacked"
    debdir.mkdir()
    unpack.mkdir()
    log(f"working folder: {work}")
    py_pkg_name = f"libpython{args.python_version}-stdlib"
    py_min_name = f"libpython{args.python_version}-minimal"
    try:
        log("== download and unpack")
        pkgs: dict[str, Package] = {}
        for name in [LANGS[d][0] for d in LANGS] + [HANDBOOK, py_pkg_name]:
            pkgs[name] = fetch(name, debdir, unpack, args.debs)

        # ---- copyright files
        log("== copyright files")
        copyrights: dict[str, str] = {}
        extra_license_files: dict[str, Path] = {}
        for name, pkg in pkgs.items():
            docdir = pkg.root / "usr" / "share" / "doc" / name
            if docdir.is_symlink():
                # e.g. /usr/share/doc/libpython3.11-stdlib -> libpython3.11-minimal
                target = os.readlink(docdir).rstrip("/").split("/")[-1]
                log(f"  /usr/share/doc/{name} is a symlink to {target}; fetching {target} for its copyright file")
                tpkg = fetch(target, debdir, unpack, args.debs)
                cfile = tpkg.root / "usr" / "share" / "doc" / target / "copyright"
            else:
                cfile = docdir / "copyright"
            if not cfile.is_file():
                die(f"no copyright file found for {name} ({cfile})")
            copyrights[name] = cfile.read_text(encoding="utf-8")
        py_license = pkgs[py_pkg_name].root / "usr" / "lib" / f"python{args.python_version}" / "LICENSE.txt"
        if py_license.is_file():
            extra_license_files[f"{py_pkg_name}.LICENSE.txt"] = py_license

        # ---- records
        log("== extract text")
        stats_main: dict[str, dict] = {}
        stats_held: dict[str, dict] = {}
        hb = pkgs[HANDBOOK]
        hb_html = hb.root / "usr" / "share" / "doc" / HANDBOOK / "html"
        hb_langs = sorted(p.name for p in hb_html.iterdir() if p.is_dir()) if hb_html.is_dir() else []
        log(f"  debian-handbook languages: {' '.join(hb_langs)}")
        for dom, (refname, hblang) in LANGS.items():
            ref = pkgs[refname]
            suffix = refname.rsplit("-", 1)[1]
            pages = sorted((ref.root / "usr" / "share" / "debian-reference").glob(f"*.{suffix}.html"))
            if not pages:
                die(f"no HTML pages found in {refname}")
            log(f"  [{dom}] {refname}: {len(pages)} pages")
            DROPPED["untranslated"] = 0
            ref_recs = html_records(ref, pages, dom)
            # Held-out set first: whole debian-reference pages, spread over the book.
            held_recs = take_spread_pages(ref_recs, HELDOUT_BUDGET)
            held_pages = {r["_doc"] for r in held_recs}
            rest = [r for r in ref_recs if r["_doc"] not in held_pages]
            # Main set: debian-handbook in this language (~0.7-1 MB of prose), then the
            # debian-reference pages that are not held out, in sorted order, up to the budget.
            if hblang in hb_langs:
                hb_pages = sorted((hb_html / hblang).glob("*.html"))
                log(f"  [{dom}] {HANDBOOK}/{hblang}: {len(hb_pages)} pages")
                main_cands = html_records(hb, hb_pages, dom) + rest
            else:
                log(f"  [{dom}] {HANDBOOK} has no {hblang}: main set from {refname} only")
                main_cands = rest
            main_recs = take_in_order(main_cands, MAIN_BUDGET)
            if dom != "en":
                log(f"  [{dom}] dropped {DROPPED['untranslated']} paragraphs left untranslated (English)")
            log(f"  [{dom}] held-out pages: {', '.join(sorted(p.rsplit('/', 1)[1] for p in held_pages))}")
            stats_main[dom] = write_jsonl(out / f"{dom}.jsonl", main_recs)
            stats_held[dom] = write_jsonl(out / "heldout" / f"{dom}.jsonl", held_recs)

        py = pkgs[py_pkg_name]
        libdir = py.root / "usr" / "lib" / f"python{args.python_version}"
        py_all = py_records(py, libdir)
        log(f"  [py] {py_pkg_name}: {len(py_all)} eligible .py files")
        py_main = take_in_order(py_all, MAIN_BUDGET)
        used = {r["_doc"] for r in py_main}
        py_held = take_spread([r for r in py_all if r["_doc"] not in used], HELDOUT_BUDGET)
        stats_main["py"] = write_jsonl(out / "py.jsonl", py_main)
        stats_held["py"] = write_jsonl(out / "heldout" / "py.jsonl", py_held)

        # ---- licenses, NOTICE, README
        log("== licenses, NOTICE, README")
        lic_dir = out / "licenses"
        lic_dir.mkdir(parents=True, exist_ok=True)
        for name, text in copyrights.items():
            (lic_dir / f"{name}.copyright").write_text(text, encoding="utf-8")
        for fname, src in extra_license_files.items():
            shutil.copyfile(src, lic_dir / fname)
        write_notice(out, pkgs, copyrights, py_pkg_name, py_min_name, extra_license_files)
        write_readme(out, pkgs, stats_main, stats_held, py_pkg_name)
        log("done.")
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def write_notice(out: Path, pkgs: dict[str, Package], copyrights: dict[str, str], py_pkg: str, py_min: str, extra: dict) -> None:
    lines = [
        "mome demo corpus (data/demo/) - NOTICE",
        "=" * 38,
        "",
        "The files in this folder are derived from the following Debian 12 (bookworm)",
        "binary packages. Text was extracted from their HTML documentation (natural",
        "languages) or copied verbatim from the Python source files (py). Each package",
        "keeps its own license; the copyright files are reproduced in licenses/.",
        "",
    ]
    for name, pkg in pkgs.items():
        if name.startswith("debian-reference"):
            summary, used = LICENSE_SUMMARY["debian-reference"], "HTML pages under /usr/share/debian-reference/"
        elif name == "debian-handbook":
            summary, used = LICENSE_SUMMARY["debian-handbook"], "HTML pages under /usr/share/doc/debian-handbook/html/{en-US,fr-FR,de-DE}/"
        else:
            summary, used = LICENSE_SUMMARY["libpython"], f".py files under /usr/lib/python{name[len('libpython'):-len('-stdlib')]}/"
        names = license_names(copyrights[name]) if copyrights[name].startswith("Format:") else []
        lines += [
            f"* {pkg.name} {pkg.version}",
            f"    used:      {used}",
            f"    license:   {summary}",
        ]
        if names:
            lines.append(f"    copyright file License fields: {', '.join(names)}")
        lines.append(f"    full text: licenses/{name}.copyright")
        if name == py_pkg:
            lines.append(
                f"               (Debian ships /usr/share/doc/{py_pkg} as a symlink to {py_min}; the copyright"
            )
            lines.append(f"               file was read from the {py_min} package of the same version)")
            for fname in extra:
                lines.append(f"               licenses/{fname} (upstream license shipped in {py_pkg})")
        lines.append("")
    lines += [
        "Files and what they come from:",
        "  en.jsonl, fr.jsonl, de.jsonl           debian-handbook (en-US / fr-FR / de-DE), then",
        "                                         debian-reference-en / -fr / -de pages not held out",
        "  heldout/en.jsonl, fr.jsonl, de.jsonl   debian-reference-en / -fr / -de (other pages)",
        f"  py.jsonl, heldout/py.jsonl             {py_pkg} (disjoint sets of files)",
        "",
        "Modifications: HTML markup, navigation, tables, code listings and footnotes were",
        "removed, paragraphs left untranslated (in English) in the French and German",
        "documentation were removed, and the documents were split into sections. Python",
        "files are unmodified.",
        "",
        "Rebuild (on Debian, needs apt-get and dpkg-deb, no root install):",
        "  python3 scripts/build_demo_corpus.py",
        "",
    ]
    (out / "NOTICE").write_text("\n".join(lines), encoding="utf-8")


def write_readme(out: Path, pkgs: dict[str, Package], main: dict, held: dict, py_pkg: str) -> None:
    def table(stats: dict[str, dict], prefix: str) -> list[str]:
        rows = [
            "| file | records | documents | file bytes | text bytes | words |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for dom, s in stats.items():
            rows.append(f"| `{prefix}{dom}.jsonl` | {s['records']} | {s['docs']} | {s['bytes']:,} | {s['text_bytes']:,} | {s['words']:,} |")
        return rows

    versions = [f"- `{p.name}` {p.version}" for p in pkgs.values()]
    text = "\n".join(
        [
            "# Demo corpus",
            "",
            "A small, redistributable corpus for demos, tests and smoke-training of mome's",
            "modular multilingual models: one file per domain (`en`, `fr`, `de`, `py`), plus",
            "a disjoint held-out set for router robustness tests.",
            "Generated by `scripts/build_demo_corpus.py` - do not edit by hand.",
            "",
            "## Contents",
            "",
            "| domain | main set (`<domain>.jsonl`) | held-out set (`heldout/<domain>.jsonl`) |",
            "|---|---|---|",
            "| en | `debian-handbook` en-US (The Debian Administrator's Handbook), then `debian-reference-en` pages not held out | `debian-reference-en` (Debian Reference) pages |",
            "| fr | `debian-handbook` fr-FR, then `debian-reference-fr` pages not held out | `debian-reference-fr` pages |",
            "| de | `debian-handbook` de-DE, then `debian-reference-de` pages not held out | `debian-reference-de` pages |",
            f"| py | `{py_pkg}` .py files, in sorted path order | other `{py_pkg}` .py files |",
            "",
            "The held-out sets never share a document (HTML page / .py file) with the main",
            "sets. For the natural languages the held-out pages are chapters of the",
            "Debian Reference, a different book (and author) from the handbook that makes up",
            "most of the main sets. The Debian Reference alone has only ~0.3 MB of prose per",
            "language once tables and listings are removed, too little for the main sets, so",
            "the main sets are the handbook plus the Debian Reference chapters not held out.",
            "",
            "The French set is smaller than the others: about a quarter of the paragraphs of",
            "the French handbook (Debian 11 edition) are still untranslated English and were",
            "removed, and there is no other French source in the allowed packages.",
            "",
            "Main sets:",
            "",
            *table(main, ""),
            "",
            "Held-out sets:",
            "",
            *table(held, "heldout/"),
            "",
            "Words are whitespace-separated tokens; text bytes are the UTF-8 size of the",
            "`text` fields; documents are distinct HTML pages / .py files.",
            "",
            "## Record format",
            "",
            "JSON Lines, UTF-8, one record per line:",
            "",
            "```json",
            '{"id": "<package>/<relative path>[#section]", "text": "...", "source": "<package> <version>"}',
            "```",
            "",
            "- `id`: package name, path of the file inside the package, and for HTML pages",
            "  split into several records the anchor of the section the record starts at.",
            "- `text`: for natural languages, paragraphs separated by a blank line (`\\n\\n`),",
            "  whitespace collapsed inside paragraphs, headings kept as their own paragraph;",
            "  for Python, the file verbatim.",
            "- `source`: Debian binary package and its exact version.",
            "",
            "## How it was built",
            "",
            "1. `apt-get download` of the packages below into a temporary folder, unpacked",
            "   there with `dpkg-deb -x` (nothing installed):",
            *[f"   {v}" for v in versions],
            f"   (`{py_pkg.replace('-stdlib', '-minimal')}` of the same version is fetched too, only for its",
            f"   copyright file: `/usr/share/doc/{py_pkg}` is a symlink to it.)",
            "2. HTML to text with `html.parser`: `<head>`, navigation headers/footers, tables",
            "   of contents, tables (mostly package lists), code listings (`<pre>`, examples),",
            "   footnotes, URL lines and index terms are dropped; inline markup (`<code>`,",
            "   links) keeps its text. In fr/de, paragraphs that a function-word count shows",
            "   to be untranslated English are dropped.",
            f"3. Pages are split at section headings into records of about {MIN_WORDS}-{MAX_WORDS} words",
            f"   (small neighbouring sections are merged); pages under {MIN_PAGE_WORDS} words",
            "   (title/TOC pages) are dropped.",
            f"4. Python: every `.py` file of {PY_MIN_BYTES}-{PY_MAX_BYTES} bytes, except test suites",
            "   (`test/`, `tests/`, `idle_test/`, `test_*.py`) and `idlelib/`.",
            f"5. Held-out sets first: about {HELDOUT_BUDGET:,} bytes of text, picked evenly over the",
            "   sorted candidates for topic variety (natural languages: every k-th Debian",
            "   Reference page with all its sections, only the leading sections of the last",
            "   page when it does not fit; Python: every k-th file not in the main set).",
            f"6. Main sets: the remaining records in sorted path order (sections in page order)",
            f"   until {MAIN_BUDGET:,} bytes of text (Python: the main set is taken first, the",
            "   held-out files from the rest).",
            "",
            "Rebuild (Debian 12; deterministic for the same package versions):",
            "",
            "```sh",
            "python3 scripts/build_demo_corpus.py",
            "```",
            "",
            "Licenses: see `NOTICE` and `licenses/`.",
            "",
        ]
    )
    (out / "README.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
