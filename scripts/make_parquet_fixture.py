#!/usr/bin/env python3
"""Writes the tiny Wiki40B-style parquet fixture used by mome-data's tests.

Creates crates/mome-data/tests/fixtures/wiki40b_tiny/{en,fr,de}.parquet with the
columns `wikidata_id` (string) and `text`. The id sets overlap but differ; the
French and German versions of an article are about 30% longer than the English one.

Usage: python3 scripts/make_parquet_fixture.py   (creates a temp venv with pyarrow)
"""
import os

from fixture_venv import reexec_in_venv

VENV = "/tmp/mome-pyarrow-venv"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "mome-data", "tests", "fixtures", "wiki40b_tiny")


def ensure_venv():
    reexec_in_venv(VENV, ["pyarrow"], unless_importable=["pyarrow"])


def article(title, body):
    return f"\n_START_ARTICLE_\n{title}\n_START_PARAGRAPH_\n{body}"


BASE = {
    "Q1": ("Paris", "Paris is the capital of France."),
    "Q2": ("Berlin", "Berlin is the capital of Germany. It has many museums."),
    "Q3": ("Python", "Python is a programming language. It is widely used."),
    "Q4": ("Rhine", "The Rhine is a river."),
    "Q5": ("Alps", "The Alps are a mountain range in Europe. They are high."),
    "Q6": ("Moon", "The Moon orbits the Earth."),
    "Q7": ("Music", "Music is an art form. It uses sound and rhythm."),
    "Q8": ("Bread", "Bread is a staple food."),
    "Q9": ("Tea", "Tea is a drink."),
    "Q10": ("Snow", "Snow is frozen water."),
}
FR = " Cette version française est plus longue que l'original anglais."
DE = " Diese deutsche Fassung ist länger als das englische Original, ß."
IDS = {
    "en": ["Q1", "Q2", "Q3", "Q4", "Q5", "Q6", "Q7", "Q8"],
    "fr": ["Q2", "Q1", "Q3", "Q4", "Q5", "Q6", "Q9", "Q8"],
    "de": ["Q1", "Q2", "Q3", "Q5", "Q4", "Q6", "Q7", "Q10"],
}


def main():
    ensure_venv()
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(OUT, exist_ok=True)
    for lang, ids in IDS.items():
        texts = []
        for i in ids:
            title, body = BASE[i]
            extra = {"en": "", "fr": FR, "de": DE}[lang]
            texts.append(article(title, body + extra))
        table = pa.table({"wikidata_id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string())})
        pq.write_table(table, os.path.join(OUT, f"{lang}.parquet"), compression="snappy")
        print("wrote", os.path.join(OUT, f"{lang}.parquet"), len(ids), "rows")


if __name__ == "__main__":
    main()
