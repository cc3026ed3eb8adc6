//! What every training job shares: the `[data]` and `[eval]` sections of its config,
//! the batch source a checked job opens from them, and reading a TOML config.
//!
//! Each job (mome-experts' LM training, mome-distill's distillation, mome-moe's MoE
//! training and experiments) is an unchecked `…Params` type that serde reads from a
//! config file or a pipeline section, and a checked `…Job` made by
//! [`crate::ParamGuard::check`]. These sections are the parts they have in common;
//! their defaults live here and nowhere else.

use std::path::{Path, PathBuf};

use mome_data::sampler::{SamplerConfig, SamplerKind};
use mome_data::shards::ShardSet;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::data::{Prefetch, PrefetchHook, ShardBatches};
use crate::trainer::BatchSource;
use crate::{Error, Result};

fn default_sampler() -> SamplerKind {
    SamplerKind::Mixed
}
fn default_true() -> bool {
    true
}
fn default_eval_max() -> usize {
    64
}
fn default_eval_batch() -> usize {
    8
}

/// `[data]`: the training shards and how batches are drawn from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataParams {
    /// Shard folder made by `mome data encode`.
    pub shards: PathBuf,
    /// Optional `tokenizer.json`, checked against the shards' tokenizer hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// `balanced` | `mixed` (default) | `blocks` | `sequential`.
    #[serde(default = "default_sampler")]
    pub sampler: SamplerKind,
    /// Sequences per micro-batch (the global batch under data parallelism).
    pub batch_size: usize,
    /// Domains to train on, in order (empty: all).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Read each batch (and a teacher cache's rows) one step ahead on a thread of its
    /// own, pinned for an asynchronous copy on CUDA ([`Prefetch`]). Same batches,
    /// same order, exact resume. Default `true`.
    #[serde(default = "default_true")]
    pub prefetch: bool,
}

impl DataParams {
    /// Shards at `shards`, `batch_size` sequences per batch, defaults otherwise.
    pub fn new(shards: impl Into<PathBuf>, batch_size: usize) -> Self {
        Self {
            shards: shards.into(),
            tokenizer: None,
            sampler: default_sampler(),
            batch_size,
            domains: Vec::new(),
            prefetch: true,
        }
    }

    /// Checks what needs no file: a batch of at least one sequence.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Config("[data] batch_size must be > 0".into()));
        }
        Ok(())
    }

    /// Opens the shards and checks them against `tokenizer` (when given).
    pub fn open(&self) -> Result<ShardSet> {
        let shards = ShardSet::open(&self.shards)?;
        if let Some(tok) = &self.tokenizer {
            let (_, sha) = mome_data::tokenizer::load_tokenizer(tok)?;
            shards.check_tokenizer(&sha)?;
        }
        Ok(shards)
    }

    /// The training batches of `shards`' `split` in this section's sampler order
    /// (`sampler` overrides the section's), read ahead for `device` when `prefetch`
    /// is on, with `hook` run on each batch on the reader thread.
    pub fn source(
        &self,
        shards: ShardSet,
        split: &str,
        seed: u64,
        sampler: Option<SamplerKind>,
        device: Device,
        hook: Option<PrefetchHook>,
    ) -> Result<Box<dyn BatchSource>> {
        let inner = ShardBatches::new(
            shards,
            split,
            SamplerConfig {
                kind: sampler.unwrap_or(self.sampler),
                batch_size: self.batch_size,
                seed,
                domains: self.domains.clone(),
            },
        )?;
        Ok(prefetched(inner, self.prefetch, device, hook))
    }
}

/// `source` read ahead by a [`Prefetch`] when `prefetch` (with `hook`), else as is
/// (running `hook` inline).
pub fn prefetched<S: BatchSource + Send + 'static>(
    source: S,
    prefetch: bool,
    device: Device,
    hook: Option<PrefetchHook>,
) -> Box<dyn BatchSource> {
    match (prefetch, hook) {
        (true, hook) => Box::new(Prefetch::new(source, device, 2, hook)),
        (false, None) => Box::new(source),
        (false, Some(hook)) => Box::new(Hooked {
            domains: source.domains(),
            inner: source,
            hook,
        }),
    }
}

/// A source whose batches go through a hook inline (prefetch off).
struct Hooked<S> {
    inner: S,
    hook: PrefetchHook,
    domains: Vec<String>,
}

impl<S: BatchSource> BatchSource for Hooked<S> {
    fn next_batch(&mut self) -> Result<crate::Batch> {
        let mut b = self.inner.next_batch()?;
        (self.hook)(&mut b, &self.domains)?;
        Ok(b)
    }
    fn state(&self) -> serde_json::Value {
        self.inner.state()
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.inner.restore(state)
    }
    fn read_rank_slice(&mut self, rank: usize, world: usize) -> Result<bool> {
        self.inner.read_rank_slice(rank, world)
    }
    fn domains(&self) -> Vec<String> {
        self.inner.domains()
    }
}

/// `[eval]`: validation during training (also each stage's `[*.eval]` in a pipeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalParams {
    /// Validation sequences per domain at each evaluation (0: all). Default 64.
    #[serde(default = "default_eval_max")]
    pub max_sequences: usize,
    /// Sequences per forward pass. Default 8.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
}

impl Default for EvalParams {
    fn default() -> Self {
        Self {
            max_sequences: default_eval_max(),
            batch_size: default_eval_batch(),
        }
    }
}

impl EvalParams {
    /// A forward pass of at least one sequence.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Config("[eval] batch_size must be > 0".into()));
        }
        Ok(())
    }
}

/// Reads a TOML file into `T`; unknown keys are errors naming the key, and every
/// error names the file.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Reads a JSON file into `T`; every error names the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Data parallel (`mome launch`): the `(rank, world size)` of this process from the
/// environment (`(0, 1)` without it), checking that a global batch of `batch_size`
/// sequences splits evenly over the ranks.
pub fn data_parallel_rank(batch_size: usize) -> Result<(usize, usize)> {
    let (rank, world) =
        crate::dist::DistEnv::from_env()?.map_or((0, 1), |e| (e.rank, e.world_size));
    if batch_size % world != 0 {
        return Err(Error::Config(format!(
            "[data] batch_size = {batch_size} cannot be split over {world} ranks: it must be a multiple of the world size (the global batch is split, see docs/gpu.md)"
        )));
    }
    Ok((rank, world))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_take_their_defaults_and_reject_unknown_keys() {
        let d: DataParams = toml::from_str("shards = \"s\"\nbatch_size = 4").unwrap();
        assert_eq!(d, DataParams::new("s", 4));
        assert!(d.prefetch);
        assert_eq!(d.sampler, SamplerKind::Mixed);
        let e: EvalParams = toml::from_str("").unwrap();
        assert_eq!((e.max_sequences, e.batch_size), (64, 8));
        let err = toml::from_str::<DataParams>("shards = \"s\"\nbatch_size = 4\nbatch = 2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch"), "{err}");
        assert!(DataParams::new("s", 0).validate().is_err());
        assert!(EvalParams {
            batch_size: 0,
            ..EvalParams::default()
        }
        .validate()
        .is_err());
    }
}
