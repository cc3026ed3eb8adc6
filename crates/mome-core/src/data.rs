//! Token shards as a [`BatchSource`]: `[B, T]` batches read from memory-mapped
//! shards (mome-data) in the order of a seeded, resumable sampler (method §8's
//! balanced / sequential regimes, JEET's per-domain blocks, or mixed).

use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;

use mome_data::sampler::{BatchSampler, SamplerConfig, SeqRef};
use mome_data::shards::ShardSet;
use tch::{Device, Tensor};

use crate::trainer::{Batch, BatchSource};
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
    fn next_batch(&mut self) -> Result<Batch> {
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
        // On the host, before the device sees them: every id below the vocabulary
        // (the model's forward can then skip its own check, a device sync).
        let vocab = self.shards.vocab_size() as i64;
        if let Some(bad) = self.buf.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(Error::Config(format!(
                "{}: token id {bad} in {}/{} is outside the manifest's vocabulary of {vocab}",
                self.shards.root().display(),
                self.split,
                items
                    .iter()
                    .map(|i| self.sampler.domains()[i.domain].as_str())
                    .next()
                    .unwrap_or("?"),
            )));
        }
        self.last_items.clear();
        self.last_items.extend_from_slice(items);
        Ok(Batch {
            ids: Tensor::f_from_slice(&self.buf)?.f_view([items.len() as i64, seq_len as i64])?,
            items: items.to_vec(),
            domain: batch.domain,
            aux: Vec::new(),
        })
    }

    fn domains(&self) -> Vec<String> {
        self.sampler.domains().to_vec()
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

/// Random token batches of a fixed shape: what `mome bench train` feeds the
/// production step instead of shards. Batch `k` is `randint(vocab)` drawn from a
/// generator seeded with `(seed, k)` on the CPU (so the host-to-device copy is the
/// one of shard batches), with `items` numbering the sequences round-robin over
/// `rows` sequences of one domain (`domain_names[0]`, e.g. a synthetic teacher
/// cache's), and, with several domains, `domain = k mod domains` (the `blocks`
/// sampler's order).
#[derive(Debug, Clone)]
pub struct RandomBatches {
    vocab: i64,
    batch_size: usize,
    seq_len: usize,
    rows: usize,
    domains: Vec<String>,
    seed: u64,
    next: u64,
}

impl RandomBatches {
    /// `[batch_size, seq_len]` batches of ids below `vocab`; `items` cycle over
    /// `rows` sequences (≥ 1); `domains` are the names batches cycle through
    /// (one-domain batches; empty: no domain).
    pub fn new(
        vocab: i64,
        batch_size: usize,
        seq_len: usize,
        rows: usize,
        domains: Vec<String>,
        seed: u64,
    ) -> Result<Self> {
        if vocab < 1 || batch_size == 0 || seq_len == 0 || rows == 0 {
            return Err(Error::Config(format!(
                "random batches: vocab {vocab}, batch {batch_size}, seq_len {seq_len}, rows {rows}: each must be > 0"
            )));
        }
        Ok(Self {
            vocab,
            batch_size,
            seq_len,
            rows,
            domains,
            seed,
            next: 0,
        })
    }
}

impl BatchSource for RandomBatches {
    fn next_batch(&mut self) -> Result<Batch> {
        let k = self.next;
        self.next += 1;
        let mut rng = crate::checkpoint::step_rng(self.seed, k);
        let ids: Vec<i64> = (0..self.batch_size * self.seq_len)
            .map(|_| rand::Rng::gen_range(&mut rng, 0..self.vocab))
            .collect();
        let nd = self.domains.len();
        let domain = (nd > 0).then(|| (k as usize) % nd);
        let items = (0..self.batch_size)
            .map(|i| SeqRef {
                domain: domain.unwrap_or(0),
                index: (k as usize * self.batch_size + i) % self.rows,
            })
            .collect();
        Ok(Batch {
            ids: Tensor::f_from_slice(&ids)?
                .f_view([self.batch_size as i64, self.seq_len as i64])?,
            items,
            domain,
            aux: Vec::new(),
        })
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "next": self.next })
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.next = state["next"]
            .as_u64()
            .ok_or_else(|| Error::Config(format!("random batches: bad state {state}")))?;
        Ok(())
    }
    fn domains(&self) -> Vec<String> {
        self.domains.clone()
    }
}

/// Work a [`Prefetch`] does on each batch on its thread (e.g. read a teacher
/// cache's rows into [`Batch::aux`]), given the source's domain names
/// ([`BatchSource::domains`], which [`Batch::items`] index).
pub type PrefetchHook = Box<dyn FnMut(&mut Batch, &[String]) -> Result<()> + Send>;

type Produced = std::result::Result<(Batch, serde_json::Value), String>;

/// A [`BatchSource`] that reads its inner source `depth` batches ahead on a thread
/// of its own, runs an optional hook on each batch there, and (for a CUDA device)
/// pins the batch in page-locked memory, so that the trainer's host-to-device copy
/// is asynchronous and the reading overlaps the device's work.
///
/// Same batches, same order: the thread starts at the first batch, after
/// [`BatchSource::restore`] and [`BatchSource::read_rank_slice`] reached the inner
/// source, and [`BatchSource::state`] is the inner source's position after the last
/// batch handed out (not after the ones read ahead), so checkpoints resume exactly.
pub struct Prefetch<S: BatchSource + Send + 'static> {
    inner: Option<S>,
    hook: Option<PrefetchHook>,
    pin: Option<Device>,
    depth: usize,
    domains: Vec<String>,
    state: serde_json::Value,
    rx: Option<Receiver<Produced>>,
    handle: Option<JoinHandle<()>>,
}

impl<S: BatchSource + Send + 'static> Prefetch<S> {
    /// Reads `inner` `depth` (≥ 1) batches ahead for `device` (pinned when CUDA),
    /// running `hook` on each.
    pub fn new(inner: S, device: Device, depth: usize, hook: Option<PrefetchHook>) -> Self {
        Self {
            domains: inner.domains(),
            state: inner.state(),
            inner: Some(inner),
            hook,
            pin: device.is_cuda().then_some(device),
            depth: depth.max(1),
            rx: None,
            handle: None,
        }
    }

    fn start(&mut self) -> Result<()> {
        let mut inner = self
            .inner
            .take()
            .ok_or_else(|| Error::Other("prefetch: the reader thread stopped".into()))?;
        let mut hook = self.hook.take();
        let pin = self.pin;
        let domains = self.domains.clone();
        let (tx, rx): (SyncSender<Produced>, _) = std::sync::mpsc::sync_channel(self.depth);
        let handle = std::thread::Builder::new()
            .name("mome-prefetch".into())
            .spawn(move || {
                let _guard = tch::no_grad_guard();
                loop {
                    let r = (|| -> Result<(Batch, serde_json::Value)> {
                        let mut b = inner.next_batch()?;
                        if let Some(h) = hook.as_mut() {
                            h(&mut b, &domains)?;
                        }
                        if let Some(d) = pin {
                            b.ids = b.ids.f_pin_memory(d)?;
                            b.aux = b
                                .aux
                                .iter()
                                .map(|t| t.f_pin_memory(d))
                                .collect::<std::result::Result<_, _>>()?;
                        }
                        Ok((b, inner.state()))
                    })();
                    let failed = r.is_err();
                    if tx.send(r.map_err(|e| e.to_string())).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Other(format!("prefetch: cannot start the reader thread: {e}")))?;
        self.rx = Some(rx);
        self.handle = Some(handle);
        Ok(())
    }
}

impl<S: BatchSource + Send + 'static> BatchSource for Prefetch<S> {
    fn next_batch(&mut self) -> Result<Batch> {
        if self.rx.is_none() {
            self.start()?;
        }
        let rx = self
            .rx
            .as_ref()
            .ok_or_else(|| Error::Other("prefetch: not started".into()))?;
        let (batch, state) = rx
            .recv()
            .map_err(|_| Error::Other("prefetch: the reader thread ended".into()))?
            .map_err(Error::Other)?;
        self.state = state;
        Ok(batch)
    }
    fn state(&self) -> serde_json::Value {
        self.state.clone()
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let inner = self.inner.as_mut().ok_or_else(|| {
            Error::Other("prefetch: restore after the first batch is not supported".into())
        })?;
        inner.restore(state)?;
        self.state = inner.state();
        Ok(())
    }
    fn read_rank_slice(&mut self, rank: usize, world: usize) -> Result<bool> {
        match self.inner.as_mut() {
            Some(inner) => inner.read_rank_slice(rank, world),
            None => Ok(false),
        }
    }
    fn domains(&self) -> Vec<String> {
        self.domains.clone()
    }
}

impl<S: BatchSource + Send + 'static> Drop for Prefetch<S> {
    fn drop(&mut self) {
        // Dropping the receiver makes the thread's next send fail, which ends it.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
