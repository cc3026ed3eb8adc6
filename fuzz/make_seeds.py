#!/usr/bin/env python3
"""Writes the seed corpora of the mome-data fuzz targets and of import_sklearn into
fuzz/seeds/<target>/ (committed; replayed by `cargo test -p mome-data --test
fuzz_replay` and `cargo test -p mome-router --test fuzz_replay`). Deterministic:
run again, same files.

    python3 fuzz/make_seeds.py          # from the repository root, ../shared beside it

Inputs: crates/mome-data/tests/fixtures/wiki40b_tiny/en.parquet (Parquet seeds) and
../shared/seed/reference_router_params.json (shrunk to 6 vocabulary columns for the
scikit-learn export seeds).
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
SHA = "ab01" * 16


def put(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def dumps(v):
    return json.dumps(v, separators=(",", ":")).encode()


# corpus_jsonl: the first byte picks the UTF-8 policy (odd: skip), then the file.
put("corpus_jsonl", "valid", b"\x00" + b'{"id": "a", "text": "hello"}\n{"id": 7, "text": "x"}\n')
put("corpus_jsonl", "blank_and_crlf", b"\x00" + b'\n{"id": "a", "text": "hi"}\r\n\r\n')
put("corpus_jsonl", "invalid_utf8_error", b"\x00" + b'{"id": "a", "text": "a \xff b"}\n')
put("corpus_jsonl", "invalid_utf8_skip", b"\x01" + b'{"id": "a", "text": "a \xff b"}\n{"id": "b", "text": "ok"}\n')
put("corpus_jsonl", "not_an_object", b"\x00" + b"[1, 2]\n\"text\"\n")
put("corpus_jsonl", "missing_text", b"\x00" + b'{"id": "a"}\n')
put("corpus_jsonl", "text_not_string", b"\x00" + b'{"id": "a", "text": 5}\n')
put("corpus_jsonl", "id_float", b"\x00" + b'{"id": 1e308, "text": "x"}\n')
put("corpus_jsonl", "deep_nesting", b"\x00" + b'{"id": "a", "x": ' + b"[" * 200 + b"]" * 200 + b', "text": "t"}\n')
put("corpus_jsonl", "truncated", b"\x00" + b'{"id": "a", "text": "abc')

# corpus_parquet: a real file, truncated and with its footer bytes damaged.
pq = open(os.path.join(ROOT, "crates/mome-data/tests/fixtures/wiki40b_tiny/en.parquet"), "rb").read()
put("corpus_parquet", "wiki40b_en", pq)
put("corpus_parquet", "truncated_half", pq[: len(pq) // 2])
put("corpus_parquet", "magic_only", b"PAR1PAR1")
damaged = bytearray(pq)
damaged[-8:-4] = (0x7FFFFFFF).to_bytes(4, "little")  # footer length beyond the file
put("corpus_parquet", "footer_length_huge", bytes(damaged))
damaged = bytearray(pq)
for i in range(len(pq) // 3, len(pq) // 3 + 64):
    damaged[i] ^= 0x5A
put("corpus_parquet", "middle_flipped", bytes(damaged))

# tokenizer_json: small tokenizers of two models, and broken ones.
wordlevel = {
    "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
    "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
    "decoder": None,
    "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "def": 1, "f": 2}, "unk_token": "[UNK]"},
}
bpe = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [{"id": 3, "content": "<s>", "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True}],
    "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                                           "trim_offsets": True, "use_regex": True},
    "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True,
                                        "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None,
              "continuing_subword_prefix": None, "end_of_word_suffix": None,
              "fuse_unk": False, "byte_fallback": False,
              "vocab": {"d": 0, "e": 1, "de": 2, "<s>": 3}, "merges": ["d e"]},
}
put("tokenizer_json", "wordlevel", dumps(wordlevel))
put("tokenizer_json", "bpe", dumps(bpe))
broken = json.loads(json.dumps(bpe))
broken["model"]["merges"] = ["d x"]  # a merge of a token not in the vocabulary
put("tokenizer_json", "bpe_unknown_merge", dumps(broken))
broken = json.loads(json.dumps(bpe))
broken["added_tokens"][0]["id"] = 2**32 + 5
put("tokenizer_json", "added_token_id_huge", dumps(broken))
put("tokenizer_json", "not_json", b"{ tokenizer")
put("tokenizer_json", "empty_object", b"{}")

# shards: byte 0 picks what replaces part of a valid folder (see data_checks::shards).
def manifest(**over):
    m = {
        "format": "mome-shards", "format_version": 1, "tokenizer_sha256": SHA,
        "vocab_size": 300, "seq_len": 4, "dtype": "u16", "bos_id": 1, "eos_id": 2,
        "splits": {
            "train": {
                "en": {"files": ["train/en/shard-00000.bin"], "sequences": 3, "tokens": 12},
                "py": {"files": ["train/py/shard-00000.bin"], "sequences": 1, "tokens": 4},
            },
            "validation": {
                "en": {"files": ["validation/en/shard-00000.bin"], "sequences": 1, "tokens": 4},
            },
        },
    }
    m.update(over)
    return m


def shard_seed(name, mode, m=None, bin_bytes=None):
    body = b""
    if mode in (0, 2):
        body += dumps(m)
    if mode == 2:
        body += b"\xff"
    if mode in (1, 2):
        body += bin_bytes
    put("shards", name, bytes([mode]) + body)


shard_seed("valid_manifest", 0, manifest())
shard_seed("seq_len_huge", 0, manifest(seq_len=2**62))
shard_seed("seq_len_u64_max", 0, manifest(seq_len=2**64 - 1))
m = manifest()
m["splits"]["train"]["en"].update(sequences=2**62, tokens=2**64 - 4)
shard_seed("sequences_huge", 0, m)
m = manifest()
m["splits"]["train"]["en"]["sequences"] = 4  # files hold 3
m["splits"]["train"]["en"]["tokens"] = 16
shard_seed("count_disagrees", 0, m)
m = manifest()
m["splits"]["train"]["en"]["files"] = ["../../etc/passwd.bin"]
shard_seed("path_escapes", 0, m)
m = manifest()
m["splits"]["train"]["en"]["files"] = ["train/en/missing.bin"]
shard_seed("file_missing", 0, m)
shard_seed("dtype_u32", 0, manifest(dtype="u32"))
shard_seed("vocab_too_big", 0, manifest(vocab_size=70000))
shard_seed("version_2", 0, manifest(format_version=2))
shard_seed("bin_truncated", 1, bin_bytes=b"\x01\x00\x05")
shard_seed("bin_one_more_sequence", 1, bin_bytes=bytes(range(32)))
shard_seed("bin_empty", 1, bin_bytes=b"")
shard_seed("both_ids_beyond_vocab", 2, manifest(), bytes([0xFE]) * 24)

# import_sklearn: the reference export shrunk to 6 vocabulary columns.
ref_path = os.path.join(ROOT, "..", "shared", "seed", "reference_router_params.json")
if not os.path.exists(ref_path):
    sys.exit(f"{ref_path} is missing (../shared beside the repository)")
ref = json.load(open(ref_path))
keep = sorted(ref["tfidf"]["vocabulary"].items(), key=lambda kv: kv[1])[:6]
cols = [c for _, c in keep]
small = json.loads(json.dumps(ref))
small["tfidf"]["vocabulary"] = {w: i for i, (w, _) in enumerate(keep)}
small["tfidf"]["idf"] = [ref["tfidf"]["idf"][c] for c in cols]
small["tfidf"]["n_features"] = len(cols)
small["logistic_regression"]["coef"] = [[row[c] for c in cols] for row in ref["logistic_regression"]["coef"]]
small["samples"] = [dict(s, probabilities=s["probabilities"]) for s in ref["samples"][:2]]
put("import_sklearn", "reference_6_columns", dumps(small))
bad = json.loads(json.dumps(small))
bad["logistic_regression"]["coef"][1][2] = 1e308
put("import_sklearn", "coef_1e308", dumps(bad))
bad = json.loads(json.dumps(small))
bad["tfidf"]["idf"][0] = -1.0
put("import_sklearn", "idf_negative", dumps(bad))
bad = json.loads(json.dumps(small))
bad["tfidf"]["vocabulary"] = {"10": 0, "100": 0}
put("import_sklearn", "vocabulary_duplicate_column", dumps(bad))
bad = json.loads(json.dumps(small))
bad["logistic_regression"]["intercept"] = bad["logistic_regression"]["intercept"][:2]
put("import_sklearn", "intercept_short", dumps(bad))
bad = json.loads(json.dumps(small))
bad["samples"][0]["token_ids"] = [2**32 - 1, 0, 4294967295]
put("import_sklearn", "sample_ids_extreme", dumps(bad))
put("import_sklearn", "not_json", b"{\"tfidf\": ")
print("seeds written to", SEEDS)
