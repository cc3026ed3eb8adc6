//! The invariants of the mome-data fuzz targets, one function per target: arbitrary
//! bytes as a file that mome reads give a typed error or a valid object, never a
//! panic or an allocation sized by a field of the input. Shared by the cargo-fuzz
//! targets (`fuzz/fuzz_targets/*.rs`, `#[path]`-included) and by the corpus replay
//! of plain `cargo test -p mome-data --test fuzz_replay` over `fuzz/seeds/<target>/`
//! and `fuzz/regressions/<target>/`. A violated invariant panics.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mome_data::corpus::{self, CorpusSpec, SourceKind, Utf8Policy};
use mome_data::shards::{ShardSet, ShardWriter};

/// This process's scratch folder: inputs are written there to be read back (the
/// corpus replay removes it when done).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mome-fuzz-data-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

fn write(name: &str, data: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, data).expect("scratch write");
    p
}

/// Every record of a corpus file, or a typed error with a message; the records'
/// total text is bounded by the file (no record is made out of nothing).
fn read_corpus(path: &Path, kind: SourceKind, data: &[u8], policy: Utf8Policy) {
    let spec = CorpusSpec {
        paths: vec![path.to_path_buf()],
        kind: Some(kind),
        id_field: Some("id".into()),
        on_invalid_utf8: policy,
        ..CorpusSpec::default()
    };
    let reader = match corpus::open(&spec) {
        Ok(r) => r,
        Err(e) => {
            assert!(!mome_data::error::chain(&e).is_empty());
            return;
        }
    };
    let mut text = 0usize;
    for r in reader {
        match r {
            Ok(rec) => {
                text += rec.text.len();
                assert!(
                    text <= data.len() * 6 + 64,
                    "{text} bytes of text out of a {}-byte file",
                    data.len()
                );
            }
            Err(e) => {
                assert!(!mome_data::error::chain(&e).is_empty());
                return;
            }
        }
    }
}

/// `corpus_jsonl`: the first byte picks the invalid-UTF-8 policy, the rest is the
/// JSON Lines file.
pub fn corpus_jsonl(data: &[u8]) {
    let (policy, body) = match data.split_first() {
        Some((b, rest)) if b % 2 == 1 => (Utf8Policy::Skip, rest),
        Some((_, rest)) => (Utf8Policy::Error, rest),
        None => (Utf8Policy::Error, data),
    };
    let p = write("corpus.jsonl", body);
    read_corpus(&p, SourceKind::Jsonl, body, policy);
}

/// `corpus_parquet`: the bytes as a `.parquet` file.
pub fn corpus_parquet(data: &[u8]) {
    let p = write("corpus.parquet", data);
    read_corpus(&p, SourceKind::Parquet, data, Utf8Policy::Error);
}

/// `tokenizer_json`: the bytes as `tokenizer.json`; a tokenizer that loads encodes
/// and decodes a text without panicking.
pub fn tokenizer_json(data: &[u8]) {
    let p = write("tokenizer.json", data);
    match mome_data::tokenizer::load_tokenizer(&p) {
        Ok((tok, sha)) => {
            assert_eq!(sha.len(), 64);
            if let Ok(enc) = tok.encode("def f(x): return x  # héllo", false) {
                let _ = tok.decode(enc.get_ids(), false);
            }
        }
        Err(e) => assert!(!mome_data::error::chain(&e).is_empty()),
    }
}

const SHA: &str = "ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01";

/// A shard folder as bytes: `manifest.json`, then each `.bin` file (relative path,
/// content).
type Folder = (Vec<u8>, Vec<(String, Vec<u8>)>);

/// A small valid shard folder (made once): seq_len 4, vocabulary 300 (u16 ids),
/// train/en (3 sequences), train/py (1), validation/en (1).
fn template() -> &'static Folder {
    static T: OnceLock<Folder> = OnceLock::new();
    T.get_or_init(|| {
        let dir = scratch().join("template");
        let mut w = ShardWriter::new(&dir, 300, 4, SHA, 1, 2).expect("template writer");
        for (split, domain, ids) in [
            ("train", "en", [1u32, 5, 6, 2]),
            ("train", "en", [1, 7, 299, 2]),
            ("train", "en", [1, 8, 9, 2]),
            ("train", "py", [1, 10, 11, 2]),
            ("validation", "en", [1, 12, 13, 2]),
        ] {
            w.push_sequence(split, domain, &ids)
                .expect("template sequence");
        }
        w.finish().expect("template");
        let manifest = std::fs::read(dir.join("manifest.json")).expect("template manifest");
        let mut bins = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("template folder") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "bin") {
                    let rel = p.strip_prefix(&dir).expect("inside").display().to_string();
                    bins.push((rel, std::fs::read(&p).expect("bin")));
                }
            }
        }
        bins.sort();
        (manifest, bins)
    })
}

/// The template manifest, for seeds.
pub fn template_manifest() -> Vec<u8> {
    template().0.clone()
}

/// `shards`: the first byte picks what the rest replaces in a valid shard folder:
/// 0 the manifest, 1 the first `.bin` file, 2 both (manifest, then a 0xFF byte,
/// then the `.bin` file). `ShardSet::open` gives a typed error or a set that holds
/// no more sequences than its files and reads each back with `seq_len` ids.
pub fn shards(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let (manifest, bins) = template();
    let dir = scratch().join("shards");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("shard folder");
    let (m, first_bin): (&[u8], Option<&[u8]>) = match mode % 3 {
        0 => (body, None),
        1 => (manifest, Some(body)),
        _ => match body.iter().position(|&b| b == 0xFF) {
            Some(i) => (&body[..i], Some(&body[i + 1..])),
            None => (body, Some(&[][..])),
        },
    };
    std::fs::write(dir.join("manifest.json"), m).expect("manifest");
    for (i, (rel, bytes)) in bins.iter().enumerate() {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("bin folder");
        }
        let content = match (i, first_bin) {
            (0, Some(b)) => b,
            _ => bytes.as_slice(),
        };
        std::fs::write(&p, content).expect("bin");
    }
    let set = match ShardSet::open(&dir) {
        Ok(s) => s,
        Err(e) => {
            assert!(!mome_data::error::chain(&e).is_empty());
            return;
        }
    };
    let on_disk: usize = bins.len() * 4096 + data.len();
    for split in set.splits() {
        for domain in set.domains(&split).expect("a listed split has domains") {
            let n = set.num_sequences(&split, &domain).expect("a listed domain");
            assert!(
                n.saturating_mul(set.seq_len()) <= on_disk,
                "{split}/{domain}: {n} sequences of {} from {on_disk} bytes",
                set.seq_len()
            );
            for i in 0..n.min(16) {
                match set.sequence(&split, &domain, i) {
                    // Ids are returned as stored (the samplers check them against
                    // the vocabulary).
                    Ok(ids) => assert_eq!(ids.len(), set.seq_len()),
                    Err(e) => assert!(!mome_data::error::chain(&e).is_empty()),
                }
            }
        }
    }
}
