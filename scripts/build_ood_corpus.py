#!/usr/bin/env python3
"""Build the small out-of-domain (OOD) evaluation set shipped under ``data/ood/``.

Languages outside the router's classes (en, fr, de, py): Spanish (``es``) and
Italian (``it``), from the Debian Reference translations ``debian-reference-es``
and ``debian-reference-it`` of the running Debian release. The extraction is the
one of ``scripts/build_demo_corpus.py`` (imported from it): HTML to paragraphs,
tables / listings / navigation dropped, paragraphs left untranslated (English)
dropped, pages split into sections; then about ``--budget`` bytes of text per
language are taken as whole pages spread over the book.

Outputs (deterministic for a given set of package versions):

* ``data/ood/{es,it}.jsonl``           ``{"id", "text", "source", "label"}`` per record
  (``label`` is the language code, which no router class has)
* ``data/ood/licenses/<pkg>.copyright`` copyright files of the source packages
* ``data/ood/NOTICE``

Usage::

    python3 scripts/build_ood_corpus.py [--out data/ood] [--debs DIR] [--budget 100000]

Measure with ``mome router ood --router R --tokenizer T --input data/ood/es.jsonl
--input data/ood/it.jsonl`` (docs/router.md).
Standard library only (Python >= 3.11); needs ``apt-get`` and ``dpkg-deb``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_demo_corpus as demo  # noqa: E402  (reuse the demo corpus extraction)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "data" / "ood"
DEFAULT_BUDGET = 100_000  # bytes of UTF-8 text per language

OOD_LANGS = {"es": "debian-reference-es", "it": "debian-reference-it"}

# Function words of the OOD languages, for the "left untranslated (English)" filter of
# build_demo_corpus.looks_english, which reads demo.STOPWORDS[lang].
demo.STOPWORDS.setdefault(
    "es",
    set(
        "el la los las de del y es un una en que para por con no se su sus al lo como más pero "
        "o este esta estos estas ser puede son también si hay entre cuando sobre todo usted".split()
    ),
)
demo.STOPWORDS.setdefault(
    "it",
    set(
        "il lo la i gli le di del della dei delle e è un una in che per con non si su al alla "
        "come più ma o questo questa sono anche se tra quando tutto essere può nel nella".split()
    ),
)


def write_jsonl(path: Path, records: list[dict], label: str) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for r in records:
            rec = {"id": r["id"], "text": r["text"], "source": r["source"], "label": label}
            fh.write(json.dumps(rec, ensure_ascii=False))
            fh.write("\n")
    stats = {
        "records": len(records),
        "bytes": path.stat().st_size,
        "text_bytes": sum(demo.nbytes(r) for r in records),
        "words": sum(len(r["text"].split()) for r in records),
        "docs": len({r["_doc"] for r in records}),
    }
    demo.log(f"  wrote {path} : {stats['records']} records, {stats['bytes']} bytes, {stats['words']} words")
    return stats


def write_notice(out: Path, pkgs: dict[str, demo.Package], copyrights: dict[str, str], stats: dict) -> None:
    lines = [
        "mome out-of-domain evaluation set (data/ood/) - NOTICE",
        "=" * 54,
        "",
        "Spanish and Italian text for measuring how often the router is (wrongly)",
        "confident on languages outside its classes. Derived from the following Debian 12",
        "(bookworm) binary packages; text was extracted from their HTML documentation.",
        "Each package keeps its own license; the copyright files are reproduced in licenses/.",
        "",
    ]
    for name, pkg in pkgs.items():
        names = demo.license_names(copyrights[name]) if copyrights[name].startswith("Format:") else []
        lines += [
            f"* {pkg.name} {pkg.version}",
            "    used:      HTML pages under /usr/share/debian-reference/",
            f"    license:   {demo.LICENSE_SUMMARY['debian-reference']}",
        ]
        if names:
            lines.append(f"    copyright file License fields: {', '.join(names)}")
        lines.append(f"    full text: licenses/{name}.copyright")
        lines.append("")
    lines += ["Files and what they come from:"]
    for lang, name in OOD_LANGS.items():
        s = stats[lang]
        lines.append(
            f"  {lang}.jsonl  {name}: {s['records']} records from {s['docs']} pages, "
            f"{s['text_bytes']} bytes of text, {s['words']} words"
        )
    lines += [
        "",
        "Modifications: HTML markup, navigation, tables, code listings and footnotes were",
        "removed, paragraphs left untranslated (in English) were removed, and the pages",
        "were split into sections (same extraction as scripts/build_demo_corpus.py).",
        "",
        "Rebuild (on Debian, needs apt-get and dpkg-deb, no root install):",
        "  python3 scripts/build_ood_corpus.py",
        "",
    ]
    (out / "NOTICE").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: data/ood)")
    ap.add_argument("--debs", type=Path, default=None, help="folder with already downloaded .deb files to reuse")
    ap.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="bytes of text per language")
    ap.add_argument("--keep", action="store_true", help="keep the temporary download/unpack folder")
    args = ap.parse_args()

    out: Path = args.out.resolve()
    work = Path(tempfile.mkdtemp(prefix="mome-ood-corpus-"))
    debdir, unpack = work / "debs", work / "unpacked"
    debdir.mkdir()
    unpack.mkdir()
    demo.log(f"working folder: {work}")
    try:
        pkgs: dict[str, demo.Package] = {}
        copyrights: dict[str, str] = {}
        stats: dict[str, dict] = {}
        for lang, name in OOD_LANGS.items():
            pkg = demo.fetch(name, debdir, unpack, args.debs)
            pkgs[name] = pkg
            cfile = pkg.root / "usr" / "share" / "doc" / name / "copyright"
            if not cfile.is_file():
                demo.die(f"no copyright file found for {name} ({cfile})")
            copyrights[name] = cfile.read_text(encoding="utf-8")
            pages = sorted((pkg.root / "usr" / "share" / "debian-reference").glob(f"*.{lang}.html"))
            if not pages:
                demo.die(f"no HTML pages found in {name}")
            demo.log(f"  [{lang}] {name}: {len(pages)} pages")
            demo.DROPPED["untranslated"] = 0
            recs = demo.html_records(pkg, pages, lang)
            demo.log(f"  [{lang}] dropped {demo.DROPPED['untranslated']} paragraphs left untranslated (English)")
            chosen = demo.take_spread_pages(recs, args.budget)
            stats[lang] = write_jsonl(out / f"{lang}.jsonl", chosen, lang)
        lic_dir = out / "licenses"
        lic_dir.mkdir(parents=True, exist_ok=True)
        for name, text in copyrights.items():
            (lic_dir / f"{name}.copyright").write_text(text, encoding="utf-8")
        write_notice(out, pkgs, copyrights, stats)
        demo.log("done.")
    finally:
        if args.keep:
            demo.log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
