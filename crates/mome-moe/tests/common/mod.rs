//! Synthetic shards and expert shapes shared by the data- and expert-parallel tests.
#![allow(dead_code)]

use std::path::Path;

use mome_data::shards::ShardWriter;
use mome_experts::Gpt2Config;

/// A dropout-free expert shape (runs on several ranks or devices compare exactly).
pub fn expert(vocab: i64, n_embd: i64, n_layer: i64) -> Gpt2Config {
    Gpt2Config {
        vocab_size: vocab,
        n_positions: 16,
        n_embd,
        n_layer,
        n_head: 2,
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        ..Gpt2Config::default()
    }
}

/// Shards of domains en, fr, py with `rows` train and validation sequences each of
/// `seq` deterministic tokens (`salt` varies them by domain).
pub fn shards(dir: &Path, vocab: i64, seq: usize, rows: usize, salt: usize, hash: &str) {
    let mut w = ShardWriter::new(dir, vocab as usize, seq, &hash.repeat(32), 1, 2).unwrap();
    for (k, d) in ["en", "fr", "py"].iter().enumerate() {
        for split in ["train", "validation"] {
            for i in 0..rows {
                let row: Vec<u32> = (0..seq)
                    .map(|j| {
                        ((k * salt + i * 3 + j * (k + 2) + i * j) % (vocab as usize - 3) + 3) as u32
                    })
                    .collect();
                w.push_sequence(split, d, &row).unwrap();
            }
        }
    }
    w.finish().unwrap();
}
