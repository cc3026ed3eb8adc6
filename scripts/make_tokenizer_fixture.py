#!/usr/bin/env python3
"""Writes crates/mome-data/tests/fixtures/tokenizer_parity.json with Python
`tokenizers` encodings of sample texts under the seed tokenizer, so that the Rust
test tests/tokenizer_parity.rs can check id- and decode-parity.

Usage:
  python3 scripts/make_tokenizer_fixture.py [--seed PATH]
  python3 scripts/make_tokenizer_fixture.py --check-trained tokenizer.json
      (loads a tokenizer written by `mome tokenizer train` in Python and checks
       the special ids, BOS, byte fallback and round trip)
A temp venv with `tokenizers` is created in /tmp when the module is missing.
"""
import argparse
import json
import os

from fixture_venv import reexec_in_venv

VENV = "/tmp/mome-tokenizers-venv"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SEED = os.path.join(os.path.dirname(ROOT), "shared", "seed", "En_De_Fr_Py_Tokenizer", "tokenizer.json")
OUT = os.path.join(ROOT, "crates", "mome-data", "tests", "fixtures", "tokenizer_parity.json")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! This is a test of the English tokenizer, with numbers 12345 and 3.14.",
    "L'été dernier, nous sommes allés à Montréal ; c'était très agréable, n'est-ce pas ?",
    "Œuvres complètes : « Ça va », dit-il, en français.",
    "Die Straße in München ist schön. Übermäßig große Äpfel schmecken süß.",
    "def greet(name):\n    \"\"\"Say hello.\"\"\"\n    if name:\n        return f'Hello, {name}!'\n    return None\n",
    "class A:\n\tdef f(self, x):\n\t\treturn x * 2  # tabs\n",
    "Emoji: 😀🎉👍🏽 and 🇫🇷 flags",
    "",
    "   leading, inner     runs   and trailing spaces   ",
    "\n\n\nnew\r\nlines\t\ttabs",
    "Rare: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ⅧⅨ ꙮ ᚠᚢᚦ 漢字 ∮ E⋅da = Q",
]


def ensure_tokenizers():
    reexec_in_venv(VENV, ["tokenizers"], unless_importable=["tokenizers"])


def check_trained(path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    assert tok.token_to_id("<unk>") == 0, "<unk> must be id 0"
    assert tok.token_to_id("<s>") == 1, "<s> must be id 1"
    assert tok.token_to_id("</s>") == 2, "</s> must be id 2"
    enc = tok.encode("Hello world ꙮ")
    assert enc.ids[0] == 1, "BOS must be added"
    assert 0 not in enc.ids, "byte fallback must avoid <unk>"
    assert tok.decode(enc.ids) == "Hello world ꙮ", tok.decode(enc.ids)
    print(f"OK: {path} loads in Python tokenizers {__import__('tokenizers').__version__}, "
          f"vocab {tok.get_vocab_size()}, ids {enc.ids}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", default=DEFAULT_SEED)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--check-trained")
    args = ap.parse_args()
    ensure_tokenizers()
    import tokenizers
    from tokenizers import Tokenizer

    if args.check_trained:
        check_trained(args.check_trained)
        return
    tok = Tokenizer.from_file(args.seed)
    cases = []
    for text in TEXTS:
        with_special = tok.encode(text, add_special_tokens=True)
        without = tok.encode(text, add_special_tokens=False)
        cases.append({
            "text": text,
            "ids_with_special": with_special.ids,
            "ids_without_special": without.ids,
            "tokens_without_special": without.tokens,
            "decoded": tok.decode(with_special.ids, skip_special_tokens=True),
        })
    doc = {
        "generator": "scripts/make_tokenizer_fixture.py",
        "python_tokenizers_version": tokenizers.__version__,
        "tokenizer": "shared/seed/En_De_Fr_Py_Tokenizer/tokenizer.json",
        "cases": cases,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", args.out, len(cases), "cases")


if __name__ == "__main__":
    main()
