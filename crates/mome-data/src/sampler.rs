//! Seeded, deterministic, resumable batch samplers over one split of a
//! [`ShardSet`]. A sampler only decides *which* sequences form each batch; reading
//! them is [`ShardSet::read_sequence`]'s job.
//!
//! Kinds (see `docs/data-shards.md`):
//!
//! * `balanced` (method §8, single session with balanced batches): every batch holds
//!   `batch_size / N` sequences of each of the N domains. An epoch is
//!   `ceil(max_d n_d / (batch_size / N))` batches, so the largest domain is covered
//!   once; a domain that runs out restarts on a fresh shuffle (the largest one only
//!   to top up the final batch).
//! * `mixed`: one uniform random permutation of all sequences of all domains per
//!   epoch, cut into batches; the last partial batch is dropped.
//! * `blocks`: every batch comes from one domain, domains rotating round-robin in
//!   the configured order; each domain walks its own shuffle and restarts on a fresh
//!   one when it runs out. An epoch is `N * max_d ceil(n_d / batch_size)` batches, so
//!   every domain is fully covered once.
//! * `sequential` (method §8, sequential regime): all batches of the first domain,
//!   then all of the second, ...; `ceil(n_d / batch_size)` batches per domain (its
//!   last batch topped up from a fresh shuffle of the same domain).
//!
//! Every shuffle is a `ChaCha8Rng` permutation seeded from `(seed, epoch, domain,
//! pass)`, so a [`SamplerState`] (kind, seed, epoch, batch cursor) is enough to
//! resume exactly: permutations are recomputed, never stored.

use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::shards::ShardSet;
use crate::{Error, Result};

/// How batches are drawn from the domains of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Every batch holds `batch_size / N` sequences of each domain.
    Balanced,
    /// A uniform shuffle of all sequences of all domains.
    Mixed,
    /// Single-domain batches, domains round-robin.
    Blocks,
    /// All of domain 1, then all of domain 2, ...
    Sequential,
}

impl SamplerKind {
    /// All kinds, in documentation order.
    pub const ALL: [SamplerKind; 4] = [
        SamplerKind::Balanced,
        SamplerKind::Mixed,
        SamplerKind::Blocks,
        SamplerKind::Sequential,
    ];

    /// The lowercase name (`"balanced"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Balanced => "balanced",
            Self::Mixed => "mixed",
            Self::Blocks => "blocks",
            Self::Sequential => "sequential",
        }
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown sampler kind {s:?}; valid kinds: balanced, mixed, blocks, sequential"
                ))
            })
    }
}

/// Settings of a [`BatchSampler`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerConfig {
    /// How batches are drawn.
    pub kind: SamplerKind,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Seed of every shuffle.
    pub seed: u64,
    /// Domains to use, in order (the order matters for `sequential` and `blocks`);
    /// empty means every domain of the split, sorted by name.
    pub domains: Vec<String>,
}

/// One sequence of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeqRef {
    /// Index into [`BatchSampler::domains`].
    pub domain: usize,
    /// Sequence index within that domain.
    pub index: usize,
}

/// The sequences of one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The single domain of the batch (`blocks`, `sequential`); `None` when mixed.
    pub domain: Option<usize>,
    /// The sequences, `batch_size` of them.
    pub items: Vec<SeqRef>,
    /// The epoch this batch belongs to (0-based).
    pub epoch: u64,
}

/// Everything needed to resume a sampler exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerState {
    /// Sampler kind.
    pub kind: SamplerKind,
    /// Seed.
    pub seed: u64,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Domain names, in sampler order.
    pub domains: Vec<String>,
    /// Sequences per domain when the state was taken (guards against changed shards).
    pub domain_sizes: Vec<usize>,
    /// Current epoch.
    pub epoch: u64,
    /// Batches already produced in the current epoch.
    pub cursor: usize,
}

const MIXED_DOMAIN: u64 = u64::MAX;

fn permutation(seed: u64, epoch: u64, domain: u64, pass: u64, n: usize) -> Vec<usize> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..24].copy_from_slice(&domain.to_le_bytes());
    key[24..].copy_from_slice(&pass.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rng);
    perm
}

#[derive(Debug, Clone)]
struct PermCache {
    epoch: u64,
    pass: u64,
    perm: Vec<usize>,
}

/// A deterministic, infinite, resumable batch sampler (see the module docs).
#[derive(Debug, Clone)]
///
/// ```
/// use mome_data::sampler::{BatchSampler, SamplerConfig, SamplerKind};
/// use mome_data::shards::{ShardSet, ShardWriter};
///
/// # fn main() -> mome_data::Result<()> {
/// let tmp = tempfile::tempdir().unwrap();
/// let dir = tmp.path().join("shards");
/// // 3 `en` and 1 `py` sequences of 4 tokens.
/// let mut w = ShardWriter::new(&dir, 100, 4, &"0".repeat(64), 1, 2)?;
/// for i in 0..3 {
///     w.push_sequence("train", "en", &[1, 10 + i, 11, 12])?;
/// }
/// w.push_sequence("train", "py", &[1, 50, 51, 52])?;
/// w.finish()?;
/// let shards = ShardSet::open(&dir)?;
///
/// // `balanced`: every batch of 4 holds 2 `en` and 2 `py` sequences; the smaller
/// // domain restarts until the largest is covered.
/// let cfg = SamplerConfig { kind: SamplerKind::Balanced, batch_size: 4, seed: 0, domains: vec![] };
/// let mut s = BatchSampler::new(&shards, "train", cfg)?;
/// assert_eq!(s.domains(), ["en", "py"]);
/// let b = s.next_batch();
/// assert_eq!(b.items.iter().filter(|r| r.domain == 0).count(), 2);
///
/// // Resumable: a restored sampler continues with the same batches.
/// let state = s.state();
/// let next = s.next_batch();
/// let cfg2 = SamplerConfig { kind: SamplerKind::Balanced, batch_size: 4, seed: 0, domains: vec![] };
/// let mut r = BatchSampler::new(&shards, "train", cfg2)?;
/// r.restore(&state)?;
/// assert_eq!(r.next_batch(), next);
/// # Ok(())
/// # }
/// ```
pub struct BatchSampler {
    kind: SamplerKind,
    batch_size: usize,
    seed: u64,
    domains: Vec<String>,
    sizes: Vec<usize>,
    /// `mixed`: cumulative sequence offsets of the domains (len N + 1).
    offsets: Vec<usize>,
    /// `sequential`: cumulative batch offsets of the domains (len N + 1).
    batch_starts: Vec<usize>,
    epoch_len: usize,
    epoch: u64,
    cursor: usize,
    caches: Vec<Option<PermCache>>,
    mixed_cache: Option<PermCache>,
}

impl BatchSampler {
    /// Builds a sampler over `split` of `shards`, validating the config.
    pub fn new(shards: &ShardSet, split: &str, cfg: SamplerConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(Error::Config("batch_size must be > 0".into()));
        }
        let domains = if cfg.domains.is_empty() {
            shards.domains(split)?
        } else {
            cfg.domains.clone()
        };
        for (i, d) in domains.iter().enumerate() {
            if domains[..i].contains(d) {
                return Err(Error::Config(format!(
                    "domain {d:?} is listed twice in the sampler domains"
                )));
            }
        }
        let mut sizes = Vec::with_capacity(domains.len());
        for d in &domains {
            let n = shards.num_sequences(split, d)?;
            if n == 0 {
                return Err(Error::Config(format!(
                    "domain {d:?} of split {split:?} holds no sequence; drop it from the sampler domains"
                )));
            }
            sizes.push(n);
        }
        let n = domains.len();
        if n == 0 {
            return Err(Error::Config(format!("split {split:?} has no domain")));
        }
        let b = cfg.batch_size;
        let mut offsets = vec![0];
        for s in &sizes {
            offsets.push(offsets.last().unwrap() + s);
        }
        let mut batch_starts = vec![0];
        for s in &sizes {
            batch_starts.push(batch_starts.last().unwrap() + s.div_ceil(b));
        }
        let max_n = *sizes.iter().max().expect("n > 0");
        let epoch_len = match cfg.kind {
            SamplerKind::Balanced => {
                if b % n != 0 {
                    return Err(Error::Config(format!(
                        "balanced sampling needs batch_size divisible by the number of domains \
                         ({n}); got batch_size {b}, use e.g. {}",
                        (b / n).max(1) * n
                    )));
                }
                max_n.div_ceil(b / n)
            }
            SamplerKind::Mixed => {
                let total = offsets[n];
                if total < b {
                    return Err(Error::Config(format!(
                        "mixed sampling: split {split:?} holds {total} sequences, fewer than one \
                         batch of {b}; lower batch_size"
                    )));
                }
                total / b
            }
            SamplerKind::Blocks => n * max_n.div_ceil(b),
            SamplerKind::Sequential => batch_starts[n],
        };
        Ok(Self {
            kind: cfg.kind,
            batch_size: b,
            seed: cfg.seed,
            domains,
            sizes,
            offsets,
            batch_starts,
            epoch_len,
            epoch: 0,
            cursor: 0,
            caches: vec![None; n],
            mixed_cache: None,
        })
    }

    /// Domain names, in sampler order ([`SeqRef::domain`] indexes this).
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Sequences per domain, in sampler order.
    pub fn domain_sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The sampler kind.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// Batches per epoch.
    pub fn epoch_len(&self) -> usize {
        self.epoch_len
    }

    /// Current epoch (of the next batch).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Position `p` of domain `d`'s stream in this epoch: the concatenation of
    /// fresh shuffles (passes) of the domain.
    fn stream(&mut self, d: usize, p: usize) -> usize {
        let n = self.sizes[d];
        let pass = (p / n) as u64;
        let cache = &mut self.caches[d];
        let fresh = !matches!(cache, Some(c) if c.epoch == self.epoch && c.pass == pass);
        if fresh {
            *cache = Some(PermCache {
                epoch: self.epoch,
                pass,
                perm: permutation(self.seed, self.epoch, d as u64, pass, n),
            });
        }
        cache.as_ref().expect("filled above").perm[p % n]
    }

    fn mixed_item(&mut self, g: usize) -> SeqRef {
        let fresh = !matches!(&self.mixed_cache, Some(c) if c.epoch == self.epoch);
        if fresh {
            let total = *self.offsets.last().expect("n > 0");
            self.mixed_cache = Some(PermCache {
                epoch: self.epoch,
                pass: 0,
                perm: permutation(self.seed, self.epoch, MIXED_DOMAIN, 0, total),
            });
        }
        let flat = self.mixed_cache.as_ref().expect("filled above").perm[g];
        let domain = self.offsets.partition_point(|&o| o <= flat) - 1;
        SeqRef {
            domain,
            index: flat - self.offsets[domain],
        }
    }

    fn block(&mut self, d: usize, j: usize) -> Vec<SeqRef> {
        let b = self.batch_size;
        (0..b)
            .map(|i| SeqRef {
                domain: d,
                index: self.stream(d, j * b + i),
            })
            .collect()
    }

    /// The next batch; wraps into the next epoch (with new shuffles) forever.
    pub fn next_batch(&mut self) -> Batch {
        let b = self.batch_size;
        let n = self.domains.len();
        let cur = self.cursor;
        let (domain, items) = match self.kind {
            SamplerKind::Balanced => {
                let k = b / n;
                let mut items = Vec::with_capacity(b);
                for d in 0..n {
                    for i in 0..k {
                        let index = self.stream(d, cur * k + i);
                        items.push(SeqRef { domain: d, index });
                    }
                }
                (None, items)
            }
            SamplerKind::Mixed => (None, (0..b).map(|i| self.mixed_item(cur * b + i)).collect()),
            SamplerKind::Blocks => {
                let d = cur % n;
                (Some(d), self.block(d, cur / n))
            }
            SamplerKind::Sequential => {
                let d = self.batch_starts.partition_point(|&s| s <= cur) - 1;
                let j = cur - self.batch_starts[d];
                (Some(d), self.block(d, j))
            }
        };
        let batch = Batch {
            domain,
            items,
            epoch: self.epoch,
        };
        self.cursor += 1;
        if self.cursor == self.epoch_len {
            self.cursor = 0;
            self.epoch += 1;
        }
        batch
    }

    /// A snapshot from which [`restore`](Self::restore) resumes exactly.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            kind: self.kind,
            seed: self.seed,
            batch_size: self.batch_size,
            domains: self.domains.clone(),
            domain_sizes: self.sizes.clone(),
            epoch: self.epoch,
            cursor: self.cursor,
        }
    }

    /// Resumes from `state`, which must come from a sampler with the same kind,
    /// seed, batch size, domains and domain sizes.
    pub fn restore(&mut self, state: &SamplerState) -> Result<()> {
        let mismatch = |what: &str, ours: String, theirs: String| {
            Err(Error::SamplerState(format!(
                "{what} differs: sampler has {ours}, state has {theirs}"
            )))
        };
        if state.kind != self.kind {
            return mismatch("kind", self.kind.to_string(), state.kind.to_string());
        }
        if state.seed != self.seed {
            return mismatch("seed", self.seed.to_string(), state.seed.to_string());
        }
        if state.batch_size != self.batch_size {
            return mismatch(
                "batch_size",
                self.batch_size.to_string(),
                state.batch_size.to_string(),
            );
        }
        if state.domains != self.domains {
            return mismatch(
                "domain list",
                format!("{:?}", self.domains),
                format!("{:?}", state.domains),
            );
        }
        if state.domain_sizes != self.sizes {
            return mismatch(
                "sequences per domain (were the shards re-encoded?)",
                format!("{:?}", self.sizes),
                format!("{:?}", state.domain_sizes),
            );
        }
        if state.cursor >= self.epoch_len {
            return Err(Error::SamplerState(format!(
                "cursor {} is past the epoch length {}",
                state.cursor, self.epoch_len
            )));
        }
        self.epoch = state.epoch;
        self.cursor = state.cursor;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for k in SamplerKind::ALL {
            assert_eq!(k.name().parse::<SamplerKind>().unwrap(), k);
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.name())
            );
        }
        let e = "random".parse::<SamplerKind>().unwrap_err().to_string();
        assert!(e.contains("balanced, mixed, blocks, sequential"), "{e}");
    }

    #[test]
    fn permutations_depend_on_every_key_part() {
        let base = permutation(1, 2, 3, 4, 100);
        let mut sorted = base.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(base, permutation(1, 2, 3, 4, 100));
        assert_ne!(base, permutation(9, 2, 3, 4, 100));
        assert_ne!(base, permutation(1, 9, 3, 4, 100));
        assert_ne!(base, permutation(1, 2, 9, 4, 100));
        assert_ne!(base, permutation(1, 2, 3, 9, 100));
    }
}
