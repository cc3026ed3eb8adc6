//! Evaluation of a causal LM on token shards: per-domain mean next-token loss and
//! perplexity (method §7 reports these per language).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use mome_data::shards::ShardSet;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::{causal_lm_loss_sum, Error, Gpt2Input, Gpt2LmHeadModel, Result};

/// Per-domain evaluation figures.
#[derive(Debug, Clone, Serialize)]
pub struct DomainEval {
    /// Mean next-token cross-entropy (nats per token).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Target tokens evaluated.
    pub tokens: i64,
    /// Sequences evaluated.
    pub sequences: usize,
}

/// What `mome eval` prints.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The split evaluated.
    pub split: String,
    /// domain -> figures, in the shards' domain order.
    pub domains: BTreeMap<String, DomainEval>,
    /// Token-weighted mean loss over all domains.
    pub mean_loss: f64,
    /// `exp(mean_loss)`.
    pub mean_perplexity: f64,
    /// Target tokens evaluated over all domains.
    pub tokens: i64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Tokens per second.
    pub tokens_per_second: f64,
}

/// Evaluates `model` on every domain of `split` (no gradients, eval mode); at most
/// `max_sequences` per domain (0 = all), `batch_size` sequences per forward pass.
pub fn evaluate(
    model: &Gpt2LmHeadModel,
    shards: &ShardSet,
    split: &str,
    max_sequences: usize,
    batch_size: usize,
) -> Result<EvalReport> {
    if batch_size == 0 {
        return Err(Error::Config("evaluation batch_size must be > 0".into()));
    }
    let started = Instant::now();
    let seq_len = shards.seq_len();
    let device = model.device();
    let mut domains = BTreeMap::new();
    let (mut all_sum, mut all_tokens) = (0f64, 0i64);
    let _guard = tch::no_grad_guard();
    for domain in shards.domains(split)? {
        let reader = shards.reader(split, &domain)?;
        let n = match max_sequences {
            0 => reader.len(),
            m => m.min(reader.len()),
        };
        let (mut sum, mut tokens) = (Tensor::zeros([], (Kind::Double, device)), 0i64);
        let mut buf = vec![0i64; batch_size * seq_len];
        let mut start = 0;
        while start < n {
            let b = batch_size.min(n - start);
            for i in 0..b {
                reader.read_into_i64(start + i, &mut buf[i * seq_len..(i + 1) * seq_len])?;
            }
            let ids = Tensor::from_slice(&buf[..b * seq_len])
                .view([b as i64, seq_len as i64])
                .to_device(device);
            let out = model.forward(Gpt2Input::ids(&ids))?;
            let (s, c) = causal_lm_loss_sum(&out.logits, &ids, None)?;
            sum += s.to_kind(Kind::Double);
            tokens += c;
            start += b;
        }
        let sum = sum.double_value(&[]);
        let loss = sum / tokens.max(1) as f64;
        all_sum += sum;
        all_tokens += tokens;
        domains.insert(
            domain,
            DomainEval {
                loss,
                perplexity: loss.exp(),
                tokens,
                sequences: n,
            },
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let mean_loss = all_sum / all_tokens.max(1) as f64;
    Ok(EvalReport {
        split: split.to_string(),
        domains,
        mean_loss,
        mean_perplexity: mean_loss.exp(),
        tokens: all_tokens,
        seconds,
        tokens_per_second: all_tokens as f64 / seconds.max(1e-9),
    })
}

/// Opens shards and checks that `model` can read them (vocabulary and context length).
pub fn open_shards_for(model: &Gpt2LmHeadModel, path: &Path) -> Result<ShardSet> {
    let shards = ShardSet::open(path)?;
    let cfg = model.config();
    shards.check_vocab(cfg.vocab_size as usize)?;
    if shards.seq_len() as i64 > cfg.n_positions {
        return Err(Error::Config(format!(
            "the shards hold {}-token sequences but the model has only {} positions",
            shards.seq_len(),
            cfg.n_positions
        )));
    }
    Ok(shards)
}
