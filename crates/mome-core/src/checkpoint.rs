//! Checkpoints: `run_dir/checkpoints/step-00000100/` folders written atomically, pruned
//! to the last K.
//!
//! Layout of one checkpoint folder:
//!
//! | file | content |
//! |---|---|
//! | `model.safetensors` | every model variable, by VarStore name (fp32 master weights) |
//! | `optimizer.safetensors` | AdamW state: `step`, `exp_avg/<name>`, `exp_avg_sq/<name>` |
//! | `trainer_state.json` | [`TrainerState`] (step, tokens, data-source state, schedule, seed, ...) |
//! | extras | caller-supplied files, e.g. `config.json`, `tokenizer.json` |
//!
//! A folder is built under `step-XXXXXXXX.partial-<pid>` and renamed when complete, so
//! a crash leaves no folder that [`CheckpointManager::latest`] would pick up; it only
//! considers folders named exactly `step-<8+ digits>` holding the three core files.
//! The `.partial-<pid>` folders of writers that are gone (a run killed mid-save) are
//! removed when a manager opens the folder ([`CheckpointManager::new`], at the start
//! of every run); those of a live process are left alone (see
//! [`mome_data::fsutil::remove_stale_temporaries`]).
//!
//! **RNG and exact resume:** no generator state is saved. The trainer reseeds torch at
//! the start of every optimizer step with [`step_seed`]`(seed, step)` (and derives
//! host-side randomness from [`step_rng`]), so step `s` sees the same random numbers
//! whether or not the run was interrupted before it.

use std::path::{Path, PathBuf};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use crate::schedule::LrSchedule;
use crate::tensor_io::{read_safetensors, write_safetensors};
use mome_data::fsutil;

use crate::{Error, Result};

/// File name of the model weights in a checkpoint folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the optimizer state in a checkpoint folder.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File name of the trainer state in a checkpoint folder.
pub const STATE_FILE: &str = "trainer_state.json";

/// The seed of torch's generators for optimizer step `step` of a run seeded `seed`
/// (SHA-256 of both, first 8 bytes).
pub fn step_seed(seed: u64, step: u64) -> i64 {
    let mut h = Sha256::new();
    h.update(b"mome-step-seed");
    h.update(seed.to_le_bytes());
    h.update(step.to_le_bytes());
    let d = h.finalize();
    i64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// A host-side generator for optimizer step `step` of a run seeded `seed`.
pub fn step_rng(seed: u64, step: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(step_seed(seed, step) as u64)
}

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Tokens consumed so far (all micro-batches).
    pub tokens_seen: u64,
    /// The batch source's state after the last completed step.
    pub data_state: serde_json::Value,
    /// The learning-rate schedule in use.
    pub schedule: LrSchedule,
    /// The run's seed.
    pub seed: u64,
    /// Lines in `metrics.jsonl` when the checkpoint was written.
    pub metrics_lines: u64,
    /// Training wall time so far, in seconds, over all sessions.
    pub elapsed_s: f64,
    /// The training configuration, as JSON (informative).
    #[serde(default)]
    pub train_config: serde_json::Value,
    /// Version of mome-core that wrote the checkpoint.
    #[serde(default)]
    pub mome_core_version: String,
}

/// A checkpoint read back by [`CheckpointManager::load`].
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// The checkpoint folder.
    pub path: PathBuf,
    /// Model tensors, sorted by name.
    pub model: Vec<(String, Tensor)>,
    /// Optimizer state tensors, sorted by name.
    pub optimizer: Vec<(String, Tensor)>,
    /// The trainer state.
    pub state: TrainerState,
}

/// Writes, lists, loads and prunes the checkpoints of one folder.
#[derive(Debug, Clone)]
pub struct CheckpointManager {
    dir: PathBuf,
    keep_last: usize,
}

fn parse_step_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.len() < 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl CheckpointManager {
    /// Manages checkpoints in `dir` (created on first save), keeping the last
    /// `keep_last` (0 keeps all). Opening the folder removes the partial checkpoint
    /// folders of writers that are gone, best effort (see
    /// [`Self::remove_stale_temporaries`]; garbage that cannot be removed does not stop
    /// a run).
    pub fn new(dir: impl Into<PathBuf>, keep_last: usize) -> Self {
        let m = Self {
            dir: dir.into(),
            keep_last,
        };
        let _ = m.remove_stale_temporaries();
        m
    }

    /// Removes the `step-XXXXXXXX.partial-<pid>` folders whose writer process is gone
    /// (a run killed mid-save); returns them. Those of live processes are kept.
    pub fn remove_stale_temporaries(&self) -> Result<Vec<PathBuf>> {
        Ok(fsutil::remove_stale_temporaries(&self.dir, |t| {
            t.kind == fsutil::TempKind::Partial && parse_step_dir(t.target).is_some()
        })?)
    }

    /// The folder holding the checkpoints.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder of the checkpoint of `step`.
    pub fn step_dir(&self, step: u64) -> PathBuf {
        self.dir.join(format!("step-{step:08}"))
    }

    /// Writes a checkpoint of `step` atomically, then prunes to the last K. Returns
    /// its folder. `extra_files` are `(file name, bytes)`; names must be plain file
    /// names distinct from the core files.
    pub fn save(
        &self,
        step: u64,
        model_tensors: &[(String, Tensor)],
        optimizer_state: &[(String, Tensor)],
        extra_files: &[(&str, &[u8])],
        state: &TrainerState,
    ) -> Result<PathBuf> {
        for (name, _) in extra_files {
            let plain = !name.is_empty()
                && !name.contains(['/', '\\'])
                && *name != "."
                && *name != ".."
                && ![MODEL_FILE, OPTIMIZER_FILE, STATE_FILE].contains(name);
            if !plain {
                return Err(Error::Checkpoint {
                    path: self.step_dir(step),
                    reason: format!("invalid extra file name `{name}`"),
                });
            }
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let dest = self.step_dir(step);
        let tmp = fsutil::AtomicDir::new(&dest)?;
        write_safetensors(&tmp.path().join(MODEL_FILE), model_tensors)?;
        write_safetensors(&tmp.path().join(OPTIMIZER_FILE), optimizer_state)?;
        for (name, bytes) in extra_files {
            fsutil::write_atomic(&tmp.path().join(name), bytes)?;
        }
        // The state file goes last: its presence marks a complete folder.
        fsutil::write_json_atomic(&tmp.path().join(STATE_FILE), state)?;
        let path = tmp.commit()?;
        self.prune()?;
        Ok(path)
    }

    /// Complete checkpoints as `(step, folder)`, oldest first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let Some(step) = entry.file_name().to_str().and_then(parse_step_dir) else {
                continue;
            };
            let p = entry.path();
            if p.is_dir()
                && [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE]
                    .iter()
                    .all(|f| p.join(f).is_file())
            {
                out.push((step, p));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The newest complete checkpoint, ignoring partial folders.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        Ok(self.list()?.pop().map(|(_, p)| p))
    }

    /// Deletes all but the newest `keep_last` complete checkpoints (none when 0).
    pub fn prune(&self) -> Result<()> {
        if self.keep_last == 0 {
            return Ok(());
        }
        let all = self.list()?;
        let n = all.len().saturating_sub(self.keep_last);
        for (_, p) in &all[..n] {
            std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
        }
        Ok(())
    }

    /// Reads a checkpoint folder; tensors are placed on `device`.
    pub fn load(path: &Path, device: Device) -> Result<LoadedCheckpoint> {
        for f in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
            if !path.join(f).is_file() {
                return Err(Error::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!("missing {f}"),
                });
            }
        }
        let sp = path.join(STATE_FILE);
        let bytes = std::fs::read(&sp).map_err(|e| Error::io(&sp, e))?;
        let state: TrainerState =
            serde_json::from_slice(&bytes).map_err(|e| Error::Checkpoint {
                path: sp.clone(),
                reason: e.to_string(),
            })?;
        Ok(LoadedCheckpoint {
            path: path.to_path_buf(),
            model: read_safetensors(&path.join(MODEL_FILE), device)?,
            optimizer: read_safetensors(&path.join(OPTIMIZER_FILE), device)?,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::ScheduleKind;
    use tch::Kind;

    fn state(step: u64) -> TrainerState {
        TrainerState {
            step,
            tokens_seen: step * 10,
            data_state: serde_json::json!({"pos": step}),
            schedule: LrSchedule {
                kind: ScheduleKind::Cosine,
                warmup_steps: 1,
                total_steps: 10,
                peak_lr: 1e-3,
                min_lr: 0.0,
            },
            seed: 7,
            metrics_lines: step,
            elapsed_s: 1.5,
            train_config: serde_json::Value::Null,
            mome_core_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    #[test]
    fn save_load_prune_and_ignore_partial() {
        let root = tempfile::tempdir().unwrap();
        let m = CheckpointManager::new(root.path().join("ck"), 2);
        assert_eq!(m.latest().unwrap(), None);
        let model = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))];
        let opt = vec![("step".to_string(), Tensor::from(3i64))];
        for s in [100, 200, 300] {
            let p = m
                .save(s, &model, &opt, &[("config.json", b"{\"a\":1}")], &state(s))
                .unwrap();
            assert_eq!(p, m.step_dir(s));
        }
        let steps: Vec<u64> = m.list().unwrap().iter().map(|x| x.0).collect();
        assert_eq!(steps, [200, 300], "pruned to the last 2");
        assert!(!m.step_dir(100).exists());
        // a partial folder of a later step (crash mid-save) and an incomplete folder
        let partial = m.dir().join("step-00000400.partial-999");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join(STATE_FILE), b"{}").unwrap();
        let incomplete = m.step_dir(500);
        std::fs::create_dir_all(&incomplete).unwrap();
        std::fs::write(incomplete.join(MODEL_FILE), b"").unwrap();
        assert_eq!(m.latest().unwrap(), Some(m.step_dir(300)));
        let ck = CheckpointManager::load(&m.step_dir(300), Device::Cpu).unwrap();
        assert_eq!(ck.state, state(300));
        assert!(ck.model[0].1.equal(&model[0].1));
        assert_eq!(ck.optimizer[0].1.kind(), Kind::Int64);
        assert_eq!(
            std::fs::read(m.step_dir(300).join("config.json")).unwrap(),
            b"{\"a\":1}"
        );
        assert!(CheckpointManager::load(&incomplete, Device::Cpu).is_err());
        // bad extra-file names are rejected
        let e = m
            .save(600, &model, &opt, &[("../x", b"")], &state(600))
            .unwrap_err();
        assert!(e.to_string().contains("../x"));
    }

    /// The pid of a process that has exited and been reaped.
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn opening_removes_partial_folders_of_dead_writers_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ck");
        let dead = dir.join(format!("step-00000004.partial-{}", dead_pid()));
        let mut sleeper = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let live = dir.join(format!("step-00000008.partial-{}", sleeper.id()));
        let mine = dir.join(format!("step-00000012.partial-{}", std::process::id()));
        let not_a_step = dir.join(format!("notes.partial-{}", dead_pid()));
        for d in [&dead, &live, &mine, &not_a_step] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join(MODEL_FILE), b"x").unwrap();
        }
        let m = CheckpointManager::new(&dir, 2);
        let (live_kept, mine_kept) = (live.exists(), mine.exists());
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert!(
            !dead.exists(),
            "a dead writer's partial checkpoint is removed"
        );
        assert!(live_kept, "a live writer's partial checkpoint is kept");
        assert!(mine_kept, "this process's partial checkpoint is kept");
        assert!(
            not_a_step.exists(),
            "only checkpoint temporaries are touched"
        );
        assert_eq!(m.latest().unwrap(), None);
        // Now that the sleeper is gone, its folder is stale too.
        assert_eq!(m.remove_stale_temporaries().unwrap(), vec![live]);
    }

    #[test]
    fn step_seeds_differ_and_repeat() {
        // Pinned against an independent implementation of the derivation
        // (`python3 scripts/make_seed_fixture.py`: SHA-256, then rand_core's PCG32
        // seeding and ChaCha8): a change would break the exact resume of existing
        // checkpoints.
        assert_eq!(step_seed(1, 5), 531350380416361558);
        assert_eq!(step_seed(1, 6), 6915671978327815464);
        assert_eq!(step_seed(2, 5), -8575489799331870382);
        assert_eq!(step_seed(3, 4), 5567185628554500265);
        assert_ne!(step_seed(1, 5), step_seed(1, 6));
        assert_ne!(step_seed(1, 5), step_seed(2, 5));
        use rand::Rng;
        let mut rng = step_rng(3, 4);
        let a: u64 = rng.gen();
        let b: u64 = rng.gen();
        assert_eq!(a, 14970523474534543987);
        assert_eq!(b, 5464762316124475253);
        // A fresh generator for the same step starts over.
        assert_eq!(step_rng(3, 4).gen::<u64>(), a);
    }
}
