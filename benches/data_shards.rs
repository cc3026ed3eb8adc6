//! Token shard benchmarks: encoding throughput (tokens/s) with the seed tokenizer
//! and shard read throughput (sequences/s from the memory map, seq_len 1024).
//!
//! Run: `cargo bench -p mome-data --bench data_shards`.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::fs;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mome_data::encode::{encode_dir, EncodeOptions};
use mome_data::shards::{ShardSet, ShardWriter};

const SEED_TOKENIZER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/seed/En_De_Fr_Py_Tokenizer/tokenizer.json"
);
const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const WORDS: &[&str] = &[
    "the",
    "history",
    "of",
    "Europe",
    "river",
    "Stadt",
    "und",
    "der",
    "Geschichte",
    "la",
    "ville",
    "est",
    "une",
    "capitale",
    "def",
    "return",
    "import",
    "numpy",
    "as",
    "np",
    "for",
    "in",
    "range(10):",
    "print(x)",
    "Wissenschaft",
    "université",
    "population",
    "1987",
    "was",
    "founded",
    "by",
    "über",
    "élève",
    "class",
    "Foo:",
    "self.value",
    "=",
    "None",
];

/// A deterministic xorshift so the sample does not depend on `rand` versions.
fn sample_docs(n_docs: usize, words_per_doc: usize) -> Vec<String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n_docs)
        .map(|_| {
            (0..words_per_doc)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    WORDS[(x % WORDS.len() as u64) as usize]
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn write_input(dir: &Path) {
    for (split, domain) in [("train", "en"), ("train", "de"), ("validation", "en")] {
        let docs = sample_docs(if split == "train" { 1000 } else { 200 }, 200);
        let body: String = docs
            .iter()
            .map(|t| format!("{}\n", serde_json::json!({ "text": t })))
            .collect();
        fs::create_dir_all(dir.join(split)).unwrap();
        fs::write(dir.join(split).join(format!("{domain}.jsonl")), body).unwrap();
    }
}

fn bench_encode(c: &mut Criterion) {
    let tok = tokenizers::Tokenizer::from_file(SEED_TOKENIZER)
        .unwrap_or_else(|e| panic!("seed tokenizer {SEED_TOKENIZER}: {e}"));
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("in");
    write_input(&input);
    let out = root.path().join("shards");
    let opts = EncodeOptions::for_tokenizer(&tok);
    let report = encode_dir(&input, &tok, SHA, &opts, &out).unwrap();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(report.total_tokens));
    g.bench_function("encode_dir_seed_tokenizer_tokens", |b| {
        b.iter(|| encode_dir(&input, &tok, SHA, &opts, &out).unwrap())
    });
    g.finish();
}

fn bench_read(c: &mut Criterion) {
    const SEQ_LEN: usize = 1024;
    const N: usize = 4096;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("shards");
    let mut w = ShardWriter::new(&dir, 32000, SEQ_LEN, SHA, 1, 2).unwrap();
    let mut seq = vec![0u32; SEQ_LEN];
    for i in 0..N {
        for (t, s) in seq.iter_mut().enumerate() {
            *s = ((i * 31 + t * 7) % 32000) as u32;
        }
        w.push_sequence("train", "en", &seq).unwrap();
    }
    w.finish().unwrap();
    let set = ShardSet::open(&dir).unwrap();
    // A fixed scattered order, like a shuffled sampler.
    let order: Vec<usize> = (0..N).map(|i| (i * 2654435761) % N).collect();
    let mut out = vec![0i64; SEQ_LEN];
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("read_sequence_by_name_seq1024", |b| {
        b.iter(|| {
            for &i in &order {
                set.read_sequence("train", "en", i, &mut out).unwrap();
            }
            out[0]
        })
    });
    let reader = set.reader("train", "en").unwrap();
    g.bench_function("domain_reader_seq1024", |b| {
        b.iter(|| {
            for &i in &order {
                reader.read_into_i64(i, &mut out).unwrap();
            }
            out[0]
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_encode, bench_read
}
criterion_main!(benches);
