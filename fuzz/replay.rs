//! The corpus replay shared by every crate's `tests/fuzz_replay.rs` (`#[path]`-included):
//! reading a fuzz target's seeds and minimised crash inputs, and running them through
//! the target's own check outside cargo-fuzz, so `cargo test` (CI, no nightly) keeps
//! every invariant the fuzzers keep. Used for the targets of `fuzz/` and of
//! `fuzz-torch/`.

use std::path::Path;

/// Every file of `<fuzz_dir>/seeds/<target>/` and `<fuzz_dir>/regressions/<target>/`
/// (the latter may be missing), sorted, with its bytes. Panics when the seed folder is
/// missing or both are empty.
pub fn corpus(fuzz_dir: &Path, target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            assert_ne!(kind, "seeds", "{} is missing", dir.display());
            continue;
        };
        files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    files.sort();
    assert!(!files.is_empty(), "no corpus for {target}");
    files
        .into_iter()
        .map(|f| (f.display().to_string(), std::fs::read(&f).unwrap()))
        .collect()
}

/// What [`replay`] saw: the inputs that broke the check (it panicked), and those the
/// check reported as loaded (a valid object rather than a typed error).
#[derive(Debug, Default)]
pub struct Replay {
    pub failed: Vec<String>,
    pub loaded: Vec<String>,
}

/// Runs every input through `check` (which returns whether the input loaded).
pub fn replay(inputs: Vec<(String, Vec<u8>)>, check: impl Fn(&[u8]) -> bool) -> Replay {
    let mut r = Replay::default();
    for (name, data) in inputs {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data))) {
            Err(_) => r.failed.push(name),
            Ok(true) => r.loaded.push(name),
            Ok(false) => {}
        }
    }
    r
}

impl Replay {
    /// Asserts that nothing broke the check, that no input whose file name is in
    /// `refused` loaded, and that one whose name ends with `valid` did.
    pub fn assert_outcome(&self, refused: &[&str], valid: &str) {
        assert!(
            self.failed.is_empty(),
            "invariants broken by {:#?}",
            self.failed
        );
        for name in &self.loaded {
            let base = name.rsplit('/').next().unwrap_or(name);
            assert!(!refused.contains(&base), "{base} loaded");
        }
        assert!(
            self.loaded.iter().any(|n| n.ends_with(valid)),
            "the valid seed {valid} did not load: {:?}",
            self.loaded
        );
    }
}
