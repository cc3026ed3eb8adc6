//! Integration tests of token shards, batch samplers and encoding.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use mome_data::encode::{encode_dir, stats_json, EncodeOptions};
use mome_data::sampler::{Batch, BatchSampler, SamplerConfig, SamplerKind, SamplerState};
use mome_data::shards::{sha256_file, Manifest, ShardSet, ShardWriter, TokenDtype};
use mome_data::Error;

const SHA: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";
const SEED_TOKENIZER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/seed/En_De_Fr_Py_Tokenizer/tokenizer.json"
);

/// Sequence `i` of a domain numbered `d`: `[d, i % vocab, ...]`, distinct per (d, i).
fn seq(d: u32, i: u32, seq_len: usize, vocab: u32) -> Vec<u32> {
    (0..seq_len as u32)
        .map(|t| match t {
            0 => d,
            1 => i % vocab,
            _ => (i * 7 + t) % vocab,
        })
        .collect()
}

/// Writes `train` domains `name -> n sequences` (domain number = position).
fn write_set(dir: &Path, vocab: usize, seq_len: usize, domains: &[(&str, u32)]) -> Manifest {
    let mut w = ShardWriter::new(dir, vocab, seq_len, SHA, 1, 2)
        .unwrap()
        .with_max_file_bytes(3 * (seq_len as u64) * 4);
    for (d, (name, n)) in domains.iter().enumerate() {
        for i in 0..*n {
            w.push_sequence("train", name, &seq(d as u32, i, seq_len, vocab as u32))
                .unwrap();
        }
    }
    w.finish().unwrap()
}

fn round_trip(vocab: usize, dtype: TokenDtype) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("shards");
    let seq_len = 5;
    let mut w = ShardWriter::new(&dir, vocab, seq_len, SHA, 1, 2)
        .unwrap()
        .with_max_file_bytes(64);
    let big = (vocab - 1) as u32;
    for i in 0..20u32 {
        w.push_sequence("train", "en", &[1, i, big, big - i, 2])
            .unwrap();
    }
    for i in 0..3u32 {
        w.push_sequence("validation", "py_code", &[i, i, i, i, big])
            .unwrap();
    }
    let m = w.finish().unwrap();
    assert_eq!(m.dtype, dtype);
    assert!(m.splits["train"]["en"].files.len() > 1, "files rotated");
    let on_disk: Manifest =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(on_disk, m);

    let set = ShardSet::open(&dir).unwrap();
    assert_eq!(set.manifest(), &m);
    assert_eq!(set.seq_len(), seq_len);
    assert_eq!(set.vocab_size(), vocab);
    assert_eq!(set.splits(), vec!["train", "validation"]);
    assert_eq!(set.domains("validation").unwrap(), vec!["py_code"]);
    assert_eq!(set.num_sequences("train", "en").unwrap(), 20);
    let mut out = vec![0i64; seq_len];
    for i in 0..20u32 {
        set.read_sequence("train", "en", i as usize, &mut out)
            .unwrap();
        let want = [1, i as i64, big as i64, (big - i) as i64, 2];
        assert_eq!(out, want);
        assert_eq!(
            set.sequence("train", "en", i as usize).unwrap(),
            vec![1, i, big, big - i, 2]
        );
    }
    assert_eq!(
        set.sequence("validation", "py_code", 2).unwrap(),
        vec![2, 2, 2, 2, big]
    );
    let bytes: u64 = m.splits["train"]["en"]
        .files
        .iter()
        .map(|f| fs::metadata(dir.join(f)).unwrap().len())
        .sum();
    assert_eq!(bytes, 20 * seq_len as u64 * dtype.size() as u64);
}

#[test]
fn round_trip_u16() {
    round_trip(32000, TokenDtype::U16);
}

#[test]
fn round_trip_u32() {
    round_trip(70000, TokenDtype::U32);
}

#[test]
fn reader_errors_are_typed_and_list_alternatives() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    write_set(&dir, 100, 4, &[("de", 3), ("en", 2)]);
    let set = ShardSet::open(&dir).unwrap();
    let e = set.domains("test").unwrap_err();
    assert!(matches!(e, Error::UnknownSplit { .. }));
    assert!(e.to_string().contains("train"), "{e}");
    let e = set.num_sequences("train", "fr").unwrap_err();
    assert!(matches!(e, Error::UnknownDomain { .. }));
    assert!(e.to_string().contains("\"de\", \"en\""), "{e}");
    let mut out = vec![0i64; 4];
    assert!(matches!(
        set.read_sequence("train", "en", 2, &mut out),
        Err(Error::SequenceIndex {
            index: 2,
            len: 2,
            ..
        })
    ));
    let mut short = vec![0i64; 3];
    assert!(matches!(
        set.read_sequence("train", "en", 0, &mut short),
        Err(Error::SequenceLength {
            expected: 4,
            found: 3
        })
    ));
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn fresh(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    write_set(&dir, 100, 4, &[("en", 5)]);
    dir
}

#[test]
fn manifest_validation_errors() {
    let root = tempfile::tempdir().unwrap();

    let dir = fresh(root.path(), "newer");
    edit_manifest(&dir, |v| {
        v["format_version"] = 2.into();
        v["new_field"] = 1.into();
    });
    let e = ShardSet::open(&dir).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ShardsVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("upgrade"), "{e}");

    let dir = fresh(root.path(), "format");
    edit_manifest(&dir, |v| v["format"] = "other".into());
    let e = ShardSet::open(&dir).unwrap_err();
    assert!(matches!(e, Error::Shards { .. }) && e.to_string().contains("mome-shards"));

    let dir = fresh(root.path(), "unknown_field");
    edit_manifest(&dir, |v| v["extra"] = 1.into());
    let e = ShardSet::open(&dir).unwrap_err();
    assert!(e.to_string().contains("extra"), "{e}");

    let dir = fresh(root.path(), "count");
    edit_manifest(&dir, |v| {
        v["splits"]["train"]["en"]["sequences"] = 6.into();
        v["splits"]["train"]["en"]["tokens"] = 24.into();
    });
    let e = ShardSet::open(&dir).unwrap_err();
    assert!(e.to_string().contains("5 sequences"), "{e}");

    let dir = fresh(root.path(), "ragged");
    let f = dir.join("train/en/shard-00000.bin");
    let mut bytes = fs::read(&f).unwrap();
    bytes.push(0);
    fs::write(&f, bytes).unwrap();
    let e = ShardSet::open(&dir).unwrap_err();
    match &e {
        Error::Shards { path, reason } => {
            assert_eq!(path, &f);
            assert!(reason.contains("not a multiple"), "{reason}");
        }
        other => panic!("wrong error {other}"),
    }

    let dir = fresh(root.path(), "missing");
    fs::remove_file(dir.join("train/en/shard-00000.bin")).unwrap();
    let e = ShardSet::open(&dir).unwrap_err();
    assert!(matches!(e, Error::Shards { .. }), "{e}");
    assert!(
        e.to_string().contains("shard-00000.bin") && e.to_string().contains("missing"),
        "{e}"
    );

    let dir = fresh(root.path(), "escape");
    edit_manifest(&dir, |v| {
        v["splits"]["train"]["en"]["files"][0] = "../../etc/passwd.bin".into()
    });
    assert!(ShardSet::open(&dir).is_err());
}

#[test]
fn tokenizer_and_vocab_checks() {
    let root = tempfile::tempdir().unwrap();
    let dir = fresh(root.path(), "s");
    let set = ShardSet::open(&dir).unwrap();
    set.check_tokenizer(SHA).unwrap();
    set.check_tokenizer(&SHA.to_uppercase()).unwrap();
    let other = "f".repeat(64);
    let e = set.check_tokenizer(&other).unwrap_err();
    assert!(matches!(e, Error::TokenizerMismatch { .. }));
    assert!(e.to_string().contains(SHA) && e.to_string().contains(&other));
    set.check_vocab(100).unwrap();
    set.check_vocab(128).unwrap();
    assert!(matches!(
        set.check_vocab(99),
        Err(Error::VocabMismatch {
            shards: 100,
            model: 99
        })
    ));
}

#[test]
fn writer_rejects_token_ids_outside_vocab() {
    let root = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::new(&root.path().join("s"), 32000, 3, SHA, 1, 2).unwrap();
    let e = w.push_sequence("train", "en", &[1, 32000, 2]).unwrap_err();
    assert!(matches!(
        e,
        Error::TokenOutOfRange {
            id: 32000,
            position: 1,
            vocab_size: 32000,
            ..
        }
    ));
}

// ---------------------------------------------------------------- samplers

struct Fixture {
    _root: tempfile::TempDir,
    set: ShardSet,
}

/// train: a = 10, b = 4, c = 7 sequences.
fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    write_set(&dir, 1000, 3, &[("a", 10), ("b", 4), ("c", 7)]);
    let set = ShardSet::open(&dir).unwrap();
    Fixture { _root: root, set }
}

fn sampler(f: &Fixture, kind: SamplerKind, batch_size: usize, seed: u64) -> BatchSampler {
    sampler_with(f, kind, batch_size, seed, &[])
}

fn sampler_with(
    f: &Fixture,
    kind: SamplerKind,
    batch_size: usize,
    seed: u64,
    domains: &[&str],
) -> BatchSampler {
    BatchSampler::new(
        &f.set,
        "train",
        SamplerConfig {
            kind,
            batch_size,
            seed,
            domains: domains.iter().map(|s| s.to_string()).collect(),
        },
    )
    .unwrap()
}

fn take(s: &mut BatchSampler, n: usize) -> Vec<Batch> {
    (0..n).map(|_| s.next_batch()).collect()
}

/// The sequence a SeqRef points to really is in the shards (domain number check).
fn check_refs(f: &Fixture, s: &BatchSampler, batches: &[Batch]) {
    for b in batches {
        for r in &b.items {
            let name = &s.domains()[r.domain];
            let seq = f.set.sequence("train", name, r.index).unwrap();
            let all = f.set.domains("train").unwrap();
            let number = all.iter().position(|d| d == name).unwrap() as u32;
            assert_eq!(seq[0], number);
            assert_eq!(seq[1], r.index as u32);
        }
    }
}

fn per_domain(batches: &[Batch], n: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); n];
    for b in batches {
        for r in &b.items {
            out[r.domain].push(r.index);
        }
    }
    out
}

fn distinct(v: &[usize]) -> BTreeSet<usize> {
    v.iter().copied().collect()
}

#[test]
fn balanced_batches_hold_equal_shares_and_cover_the_largest_domain() {
    let f = fixture();
    let mut s = sampler(&f, SamplerKind::Balanced, 6, 7);
    assert_eq!(s.domains(), ["a", "b", "c"]);
    assert_eq!(s.epoch_len(), 5); // ceil(10 / 2)
    let epoch = take(&mut s, 5);
    check_refs(&f, &s, &epoch);
    for b in &epoch {
        assert_eq!(b.domain, None);
        assert_eq!(b.epoch, 0);
        assert_eq!(b.items.len(), 6);
        for d in 0..3 {
            assert_eq!(b.items.iter().filter(|r| r.domain == d).count(), 2);
        }
    }
    let got = per_domain(&epoch, 3);
    // The largest domain is covered exactly once in an epoch.
    assert_eq!(distinct(&got[0]), (0..10).collect());
    assert_eq!(got[0].len(), 10);
    // Smaller domains restart: b (4) is walked 2.5 times, c (7) 1.4 times.
    assert_eq!(distinct(&got[1]), (0..4).collect());
    assert_eq!(distinct(&got[2]), (0..7).collect());
    // Within each pass of a smaller domain no sequence repeats.
    assert_eq!(distinct(&got[1][..4]).len(), 4);
    assert_eq!(distinct(&got[1][4..8]).len(), 4);
    assert_eq!(distinct(&got[2][..7]).len(), 7);
    let next = s.next_batch();
    assert_eq!(next.epoch, 1);
}

#[test]
fn mixed_is_a_permutation_of_all_sequences() {
    let f = fixture();
    let mut s = sampler(&f, SamplerKind::Mixed, 4, 3);
    assert_eq!(s.epoch_len(), 5); // 21 / 4, partial batch dropped
    let epoch = take(&mut s, 5);
    check_refs(&f, &s, &epoch);
    let all: BTreeSet<(usize, usize)> = epoch
        .iter()
        .flat_map(|b| b.items.iter().map(|r| (r.domain, r.index)))
        .collect();
    assert_eq!(all.len(), 20, "no repeats within an epoch");
    assert!(epoch
        .iter()
        .all(|b| b.domain.is_none() && b.items.len() == 4));
    // Batches mix domains.
    assert!(epoch.iter().any(|b| {
        let ds: BTreeSet<usize> = b.items.iter().map(|r| r.domain).collect();
        ds.len() > 1
    }));
    let e1 = take(&mut s, 5);
    assert!(e1.iter().all(|b| b.epoch == 1));
    assert_ne!(
        epoch,
        e1.iter()
            .map(|b| Batch {
                epoch: 0,
                ..b.clone()
            })
            .collect::<Vec<_>>()
    );
}

#[test]
fn blocks_rotate_single_domain_batches_and_cover_every_domain() {
    let f = fixture();
    let mut s = sampler(&f, SamplerKind::Blocks, 3, 11);
    assert_eq!(s.epoch_len(), 12); // 3 domains x ceil(10 / 3) rounds
    let epoch = take(&mut s, 12);
    check_refs(&f, &s, &epoch);
    for (i, b) in epoch.iter().enumerate() {
        assert_eq!(b.domain, Some(i % 3));
        assert!(b.items.iter().all(|r| Some(r.domain) == b.domain));
        assert_eq!(b.items.len(), 3);
    }
    let got = per_domain(&epoch, 3);
    for (d, n) in [(0, 10), (1, 4), (2, 7)] {
        assert_eq!(distinct(&got[d]), (0..n).collect(), "domain {d}");
        assert_eq!(
            distinct(&got[d][..n]).len(),
            n,
            "first pass is a permutation"
        );
    }
}

#[test]
fn sequential_walks_domains_in_the_given_order() {
    let f = fixture();
    let mut s = sampler_with(&f, SamplerKind::Sequential, 3, 5, &["c", "a", "b"]);
    assert_eq!(s.domains(), ["c", "a", "b"]);
    assert_eq!(s.epoch_len(), 3 + 4 + 2);
    let epoch = take(&mut s, 9);
    check_refs(&f, &s, &epoch);
    let order: Vec<usize> = epoch.iter().map(|b| b.domain.unwrap()).collect();
    assert_eq!(order, vec![0, 0, 0, 1, 1, 1, 1, 2, 2]);
    let got = per_domain(&epoch, 3);
    for (d, n) in [(0, 7), (1, 10), (2, 4)] {
        assert_eq!(distinct(&got[d][..n]), (0..n).collect(), "domain {d}");
    }
    // Shuffled within the domain, not in storage order.
    assert_ne!(got[1][..10], (0..10).collect::<Vec<_>>()[..]);
    assert_eq!(s.next_batch().domain, Some(0));
}

#[test]
fn samplers_are_deterministic_per_seed() {
    let f = fixture();
    for kind in SamplerKind::ALL {
        let a = take(&mut sampler(&f, kind, 6, 42), 30);
        let b = take(&mut sampler(&f, kind, 6, 42), 30);
        let c = take(&mut sampler(&f, kind, 6, 43), 30);
        assert_eq!(a, b, "{kind}");
        assert_ne!(a, c, "{kind}");
    }
}

#[test]
fn state_restore_continues_exactly() {
    let f = fixture();
    for kind in SamplerKind::ALL {
        for skip in [0, 4, 7, 13] {
            let mut s = sampler(&f, kind, 6, 9);
            take(&mut s, skip);
            let state = s.state();
            let json = serde_json::to_string(&state).unwrap();
            let want = take(&mut s, 25);
            let mut r = sampler(&f, kind, 6, 9);
            take(&mut r, 2); // a different position; restore must override it
            let back: SamplerState = serde_json::from_str(&json).unwrap();
            r.restore(&back).unwrap();
            assert_eq!(take(&mut r, 25), want, "{kind} after {skip}");
        }
    }
}

#[test]
fn restore_rejects_foreign_states() {
    let f = fixture();
    let state = sampler(&f, SamplerKind::Blocks, 6, 1).state();
    let mut other_kind = sampler(&f, SamplerKind::Mixed, 6, 1);
    assert!(matches!(
        other_kind.restore(&state),
        Err(Error::SamplerState(_))
    ));
    let mut other_seed = sampler(&f, SamplerKind::Blocks, 6, 2);
    let e = other_seed.restore(&state).unwrap_err();
    assert!(e.to_string().contains("seed"), "{e}");
    let mut other_domains = sampler_with(&f, SamplerKind::Blocks, 6, 1, &["a", "b"]);
    assert!(other_domains.restore(&state).is_err());
    let mut bad = state.clone();
    bad.cursor = 10_000;
    assert!(sampler(&f, SamplerKind::Blocks, 6, 1)
        .restore(&bad)
        .is_err());
    let mut sizes = state;
    sizes.domain_sizes[0] += 1;
    assert!(sampler(&f, SamplerKind::Blocks, 6, 1)
        .restore(&sizes)
        .is_err());
}

#[test]
fn sampler_config_validation() {
    let f = fixture();
    let cfg = |kind, batch_size, domains: &[&str]| SamplerConfig {
        kind,
        batch_size,
        seed: 0,
        domains: domains.iter().map(|s| s.to_string()).collect(),
    };
    let new = |c| BatchSampler::new(&f.set, "train", c);
    assert!(new(cfg(SamplerKind::Mixed, 0, &[])).is_err());
    let e = new(cfg(SamplerKind::Balanced, 4, &[])).unwrap_err();
    assert!(e.to_string().contains("divisible"), "{e}");
    let e = new(cfg(SamplerKind::Blocks, 2, &["a", "zz"])).unwrap_err();
    assert!(matches!(e, Error::UnknownDomain { .. }), "{e}");
    assert!(new(cfg(SamplerKind::Blocks, 2, &["a", "a"])).is_err());
    let e = new(cfg(SamplerKind::Mixed, 22, &[])).unwrap_err();
    assert!(e.to_string().contains("fewer than one batch"), "{e}");
    assert!(BatchSampler::new(&f.set, "validation", cfg(SamplerKind::Mixed, 2, &[])).is_err());
}

// ---------------------------------------------------------------- encoding

fn seed_tokenizer() -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(SEED_TOKENIZER)
        .unwrap_or_else(|e| panic!("seed tokenizer at {SEED_TOKENIZER}: {e}"))
}

fn write_jsonl(path: &Path, texts: &[&str]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let body: String = texts
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{}\n", serde_json::json!({"wikidata_id": i, "text": t})))
        .collect();
    fs::write(path, body).unwrap();
}

#[test]
fn encode_dir_with_the_seed_tokenizer() {
    let tok = seed_tokenizer();
    let sha = sha256_file(Path::new(SEED_TOKENIZER)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("balanced");
    let en = [
        "The quick brown fox jumps over the lazy dog.",
        "Paris is the capital of France.",
        "A second, somewhat longer English document about tokenisation and packing.",
    ];
    let de = ["Der schnelle braune Fuchs springt über den faulen Hund."];
    let py = ["def add(a, b):\n    return a + b\n"];
    write_jsonl(&input.join("train/en.jsonl"), &en);
    write_jsonl(&input.join("train/de.jsonl"), &de);
    write_jsonl(&input.join("validation/py.jsonl"), &py);
    fs::write(input.join("train/notes.txt"), "ignored").unwrap();
    let out = root.path().join("shards");
    let opts = EncodeOptions {
        seq_len: 8,
        batch_docs: 2,
        // py has validation data only.
        allow_empty_domains: true,
        ..EncodeOptions::for_tokenizer(&tok)
    };
    assert_eq!((opts.bos_id, opts.eos_id), (1, 2));
    let report = encode_dir(&input, &tok, &sha, &opts, &out).unwrap();

    let set = ShardSet::open(&out).unwrap();
    set.check_tokenizer(&sha).unwrap();
    assert_eq!(set.vocab_size(), tok.get_vocab_size(true));
    assert_eq!(set.manifest().dtype, TokenDtype::U16);
    let mut expected_streams = BTreeMap::new();
    for (split, domain, texts) in [
        ("train", "en", &en[..]),
        ("train", "de", &de[..]),
        ("validation", "py", &py[..]),
    ] {
        let mut stream = Vec::new();
        for t in texts {
            let ids = tok.encode(*t, false).unwrap().get_ids().to_vec();
            assert!(
                !ids.is_empty() && ids[0] != 1,
                "no BOS from the tokenizer itself"
            );
            stream.push(1);
            stream.extend(ids);
            stream.push(2);
        }
        let stats = &report.splits[split][domain];
        assert_eq!(stats.documents, texts.len() as u64);
        assert_eq!(
            stats.tokens_kept + stats.tokens_dropped,
            stream.len() as u64,
            "{split}/{domain}"
        );
        assert_eq!(stats.sequences, (stream.len() / 8) as u64);
        assert_eq!(stats.tokens_dropped, (stream.len() % 8) as u64);
        expected_streams.insert((split, domain), stream);
    }
    for ((split, domain), stream) in &expected_streams {
        let n = set.num_sequences(split, domain).unwrap();
        let got: Vec<u32> = (0..n)
            .flat_map(|i| set.sequence(split, domain, i).unwrap())
            .collect();
        assert_eq!(&got[..], &stream[..n * 8], "{split}/{domain}");
        assert_eq!(got[0], 1, "BOS at the first document start");
    }
    let total: u64 = expected_streams.values().map(|s| s.len() as u64).sum();
    assert_eq!(report.total_tokens, total);
    assert_eq!(report.total_documents, 5);
    assert!(report.tokens_per_second > 0.0);
    let stats = stats_json(&set);
    assert_eq!(stats["seq_len"], 8);
    assert_eq!(stats["total_sequences"], report.total_sequences);
    assert_eq!(
        stats["splits"]["train"]["domains"]["en"]["tokens"],
        report.splits["train"]["en"].tokens_kept
    );
}

#[test]
fn malformed_json_line_names_file_and_line() {
    let tok = seed_tokenizer();
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("balanced");
    let f = input.join("train/fr.jsonl");
    fs::create_dir_all(f.parent().unwrap()).unwrap();
    fs::write(
        &f,
        "{\"text\": \"Bonjour\"}\n{\"text\": \"Salut\"}\n{\"text\": oops}\n",
    )
    .unwrap();
    let out = root.path().join("shards");
    let e = encode_dir(&input, &tok, SHA, &EncodeOptions::default(), &out).unwrap_err();
    assert!(matches!(e, Error::JsonLine { line: 3, .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("fr.jsonl:3"), "{msg}");
    assert!(msg.contains("malformed JSON"), "{msg}");
    assert!(!out.exists());
}
