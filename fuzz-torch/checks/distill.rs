//! The invariants of the `teacher_cache` fuzz target (mome-distill): a teacher
//! cache folder (valid, 2 sequences of 4 positions, top-3 of 16 tokens) with its
//! `manifest.json`, its id file or its log-prob file replaced by the input opens
//! with a typed error with a message, or as a cache whose rows read back as
//! `[1, seq_len, top_k]` tensors of ids inside the vocabulary (or a typed error).
//! Shared by `fuzz-torch/fuzz_targets/teacher_cache.rs` (`#[path]`-included) and by
//! `cargo test -p mome-distill --test fuzz_replay`. A violated invariant panics.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mome_distill::cache::{synthetic_cache, TeacherCache, CACHE_MANIFEST};
use tch::Device;

/// This process's scratch folder (the corpus replay removes it when done).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mome-fuzz-distill-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

/// The template's files: `(relative path, bytes)`, the manifest first (made once).
pub fn template() -> &'static Vec<(String, Vec<u8>)> {
    static T: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    T.get_or_init(|| {
        tch::manual_seed(0);
        let dir = scratch().join("template");
        let cache = synthetic_cache(&dir, 2, 4, 3, 16, 1.0).expect("template cache");
        let mut files = vec![CACHE_MANIFEST.to_string()];
        for domains in cache.manifest().splits.values() {
            for d in domains.values() {
                files.push(d.ids_file.clone());
                files.push(d.values_file.clone());
            }
        }
        files
            .into_iter()
            .map(|f| {
                let bytes = std::fs::read(dir.join(&f)).expect("template file");
                (f, bytes)
            })
            .collect()
    })
}

/// The first byte picks the file the rest replaces: 0 `manifest.json`, 1 the id
/// file, 2 the log-prob file.
/// Returns whether the input loaded.
pub fn teacher_cache(data: &[u8]) -> bool {
    let Some((&mode, body)) = data.split_first() else {
        return false;
    };
    let files = template();
    let which = mode as usize % files.len();
    let dir = scratch().join("cache");
    let _ = std::fs::remove_dir_all(&dir);
    for (i, (rel, bytes)) in files.iter().enumerate() {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("inside")).expect("cache folder");
        std::fs::write(&p, if i == which { body } else { bytes }).expect("cache file");
    }
    let cache = match TeacherCache::open(&dir) {
        Ok(c) => c,
        Err(e) => {
            assert!(!mome_data::error::chain(&e).is_empty());
            return false;
        }
    };
    let m = cache.manifest().clone();
    assert!(m.top_k >= 1 && m.top_k <= m.vocab_size && m.seq_len >= 1);
    for (split, domains) in &m.splits {
        for (domain, d) in domains {
            for i in 0..d.sequences.min(4) as usize {
                match cache.rows(split, &[(domain, i)], Device::Cpu) {
                    Ok(t) => {
                        assert_eq!(
                            t.ids.size(),
                            [1, m.seq_len as i64, m.top_k as i64],
                            "{split}/{domain} row {i}"
                        );
                        assert_eq!(t.logprobs.size(), t.ids.size());
                        let max = t.ids.max().int64_value(&[]);
                        let min = t.ids.min().int64_value(&[]);
                        assert!(min >= 0 && max < m.vocab_size as i64, "ids {min}..{max}");
                    }
                    Err(e) => assert!(!mome_data::error::chain(&e).is_empty()),
                }
            }
            let past = usize::try_from(d.sequences).unwrap_or(usize::MAX);
            assert!(cache.rows(split, &[(domain, past)], Device::Cpu).is_err());
        }
    }
    true
}

/// The seed inputs (written to `fuzz-torch/seeds/teacher_cache/` for cargo-fuzz):
/// each valid file, and manifests with sizes whose products overflow.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let files = template();
    let mut out: Vec<(String, Vec<u8>)> = files
        .iter()
        .enumerate()
        .map(|(i, (f, b))| {
            let name = f.replace('/', "_");
            (format!("valid_{name}"), [&[i as u8][..], b].concat())
        })
        .collect();
    let manifest: serde_json::Value = serde_json::from_slice(&files[0].1).expect("manifest");
    let mut edit = |name: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let mut m = manifest.clone();
        f(&mut m);
        out.push((
            name.to_string(),
            [&[0u8][..], &serde_json::to_vec(&m).expect("json")].concat(),
        ));
    };
    edit("seq_len_overflow", &|m| {
        m["seq_len"] = (u64::MAX / 2).into()
    });
    edit("top_k_overflow", &|m| m["top_k"] = u64::MAX.into());
    edit("top_k_zero", &|m| m["top_k"] = 0.into());
    edit("top_k_above_vocab", &|m| m["top_k"] = 17.into());
    edit("sequences_overflow", &|m| {
        m["splits"]["train"]["bench"]["sequences"] = (u64::MAX / 3).into()
    });
    edit("vocab_below_ids", &|m| m["vocab_size"] = 3.into());
    out
}
