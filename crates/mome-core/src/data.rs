//! Token shards as a [`BatchSource`]: `[B, T]` batches read from memory-mapped
//! shards (mome-data) in the order of a seeded, resumable sampler (method §8's
//! balanced / sequential regimes, JEET's per-domain blocks, or mixed).

use mome_data::sampler::{BatchSampler, SamplerConfig, SeqRef};
use mome_data::shards::ShardSet;
use tch::Tensor;

use crate::trainer::BatchSource;
use crate::{Error, Result};

/// Batches of `[B, T]` token ids read from mmap'd shards in sampler order.
pub struct ShardBatches {
    shards: ShardSet,
    sampler: BatchSampler,
    split: String,
    buf: Vec<i64>,
    last_domain: Option<usize>,
    last_items: Vec<SeqRef>,
    /// Data parallel: (rank, world) whose rows alone are read.
    slice: Option<(usize, usize)>,
}

impl ShardBatches {
    /// The sampler's domains, in order.
    pub fn domains(&self) -> &[String] {
        self.sampler.domains()
    }

    /// The domain (index into [`ShardBatches::domains`]) of the last batch, for
    /// single-domain samplers (`blocks`, `sequential`); `None` for mixed batches.
    pub fn last_domain(&self) -> Option<usize> {
        self.last_domain
    }

    /// The sequences of the last batch, in row order: (domain index into
    /// [`ShardBatches::domains`], sequence index within that domain). Lets a caller
    /// map batch rows to per-sequence side data (e.g. a teacher cache). With
    /// [`BatchSource::read_rank_slice`], the rank's rows only.
    pub fn last_items(&self) -> &[SeqRef] {
        &self.last_items
    }

    /// The split read from.
    pub fn split(&self) -> &str {
        &self.split
    }

    /// The shards read from.
    pub fn shards(&self) -> &ShardSet {
        &self.shards
    }

    /// A source over `split` of `shards` with the given sampler.
    pub fn new(shards: ShardSet, split: &str, cfg: SamplerConfig) -> Result<Self> {
        let sampler = BatchSampler::new(&shards, split, cfg)?;
        Ok(Self {
            shards,
            sampler,
            split: split.to_string(),
            buf: Vec::new(),
            last_domain: None,
            last_items: Vec::new(),
            slice: None,
        })
    }
}

impl BatchSource for ShardBatches {
    fn next_batch(&mut self) -> Result<Tensor> {
        let batch = self.sampler.next_batch();
        self.last_domain = batch.domain;
        let items = match self.slice {
            Some((rank, world)) => {
                let (start, len) = crate::dist::rank_rows(batch.items.len(), rank, world)?;
                &batch.items[start..start + len]
            }
            None => &batch.items[..],
        };
        let seq_len = self.shards.seq_len();
        self.buf.resize(items.len() * seq_len, 0);
        for (i, item) in items.iter().enumerate() {
            let domain = &self.sampler.domains()[item.domain];
            self.shards.read_sequence(
                &self.split,
                domain,
                item.index,
                &mut self.buf[i * seq_len..(i + 1) * seq_len],
            )?;
        }
        self.last_items.clear();
        self.last_items.extend_from_slice(items);
        Ok(Tensor::from_slice(&self.buf).view([items.len() as i64, seq_len as i64]))
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.sampler.state()).unwrap_or(serde_json::Value::Null)
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let s = serde_json::from_value(state.clone()).map_err(|e| Error::Checkpoint {
            path: self.shards.root().to_path_buf(),
            reason: format!("bad sampler state in checkpoint: {e}"),
        })?;
        Ok(self.sampler.restore(&s)?)
    }

    fn read_rank_slice(&mut self, rank: usize, world: usize) -> Result<bool> {
        // Checks rank < world (a batch of `world` rows always splits).
        crate::dist::rank_rows(world, rank, world)?;
        self.slice = (world > 1).then_some((rank, world));
        Ok(true)
    }
}
