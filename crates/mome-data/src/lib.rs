//! # mome-data
//!
//! The data half of mome (method.md §1, §2, §8): corpus readers, token balancing
//! across domains, the tokenizer, token shards and batch samplers. This crate never
//! depends on libtorch.
//!
//! ## Pipeline
//! 1. [`corpus`] streams records (`id`, `text`) from JSONL, Parquet, text folders
//!    and Python source trees;
//! 2. [`balance`] balances the domains by token count (the method's `reference`
//!    rule, or the `subset` / `truncate` fixes) into `DIR/{train,validation}/*.jsonl`;
//! 3. [`tokenizer`] trains or loads a `tokenizer.json`;
//! 4. [`encode`] packs tokenised documents into fixed-length sequences written by a
//!    [`shards::ShardWriter`] (little-endian u16/u32 arrays + `manifest.json`,
//!    documented in `docs/data-shards.md`), read back memory-mapped by
//!    [`shards::ShardSet`];
//! 5. [`sampler::BatchSampler`] draws seeded, resumable batches of sequence
//!    indices (`balanced`, `mixed`, `blocks`, `sequential`);
//! 6. [`bench`](mod@bench) holds timing and memory helpers (peak RSS, fastest run,
//!    MB/s); the balancing benchmark against the method's Python tool is the
//!    `data-bench` workspace binary (`examples/data-bench`,
//!    `cargo run --release -p data-bench -- …`), outside this library.
//!
//! ## Example: shards and a sampler
//! ```
//! use mome_data::sampler::{BatchSampler, SamplerConfig, SamplerKind};
//! use mome_data::shards::{ShardSet, ShardWriter};
//!
//! # fn main() -> mome_data::Result<()> {
//! let tmp = tempfile::tempdir().unwrap();
//! let dir = tmp.path().join("shards");
//! // vocab 32000 (stored as u16), 8 tokens per sequence, BOS 1, EOS 2.
//! let sha = "ab".repeat(32); // the tokenizer file's sha256 (hex)
//! let mut w = ShardWriter::new(&dir, 32_000, 8, &sha, 1, 2)?;
//! for d in ["de", "en", "fr", "py"] {
//!     for i in 0..4u32 {
//!         w.push_sequence("train", d, &[1, 100 + i, 5, 6, 7, 8, 9, 2])?;
//!     }
//! }
//! w.push_sequence("validation", "en", &[1, 3, 4, 5, 6, 7, 8, 2])?;
//! let manifest = w.finish()?; // atomic: the folder appears only now
//! assert_eq!(manifest.seq_len, 8);
//!
//! // Readers memory-map the shards.
//! let shards = ShardSet::open(&dir)?;
//! assert_eq!(shards.domains("train")?, ["de", "en", "fr", "py"]);
//! assert_eq!(shards.num_sequences("train", "py")?, 4);
//! assert_eq!(shards.sequence("train", "en", 2)?, vec![1, 102, 5, 6, 7, 8, 9, 2]);
//!
//! // `blocks`: each batch comes from one domain, the domains in turn.
//! let cfg = SamplerConfig {
//!     kind: SamplerKind::Blocks,
//!     batch_size: 2,
//!     seed: 42,
//!     domains: vec![],
//! };
//! let mut sampler = BatchSampler::new(&shards, "train", cfg)?;
//! let mut seen = Vec::new();
//! for _ in 0..4 {
//!     let batch = sampler.next_batch();
//!     let d = batch.domain.expect("blocks batches have one domain");
//!     assert!(batch.items.iter().all(|r| r.domain == d));
//!     let mut ids = vec![0u32; shards.seq_len()];
//!     let reader = shards.reader("train", &sampler.domains()[d])?;
//!     reader.read_into_u32(batch.items[0].index, &mut ids)?;
//!     assert_eq!(ids[0], 1); // every sequence starts with BOS here
//!     seen.push(d);
//! }
//! seen.sort();
//! assert_eq!(seen, [0, 1, 2, 3]); // four batches: one per domain
//! # Ok(())
//! # }
//! ```

pub mod balance;
pub mod bench;
pub mod corpus;
pub mod count;
pub mod encode;
pub mod error;
pub mod fsutil;
pub mod params;
pub mod sampler;
pub mod shards;
pub mod tokenizer;

pub use error::{Error, Result};
