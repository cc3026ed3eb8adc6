//! # mome-data
//!
//! The data half of mome (method.md §1, §2, §8): corpus readers, token balancing
//! across domains, the tokenizer, token shards and batch samplers. This crate never
//! depends on libtorch.

pub mod balance;
pub mod corpus;
pub mod encode;
pub mod error;
pub mod fsutil;
pub mod sampler;
pub mod shards;
pub mod tokenizer;

pub use error::{Error, Result};
