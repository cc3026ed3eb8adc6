//! Evaluation of a causal LM on token shards: per-domain mean next-token loss and
//! perplexity (method §7 reports these per language).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use mome_data::shards::ShardSet;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::{causal_lm_loss_sum, Error, Gpt2Input, Gpt2LmHeadModel, Result};

/// Per-domain evaluation figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// One forward pass of [`eval_shards`]: `[b, T]` token ids on the device, their
/// domain, and the index of the first sequence within the domain.
#[derive(Debug)]
pub struct EvalBatch<'a> {
    /// Token ids `[b, T]`, i64, on the evaluation device.
    pub ids: &'a Tensor,
    /// The domain of every sequence of the batch.
    pub domain: &'a str,
    /// The first sequence's index within `domain`.
    pub start: usize,
}

/// The callback of [`eval_shards`]: a batch → (summed loss, counted targets).
pub type BatchLossSum<'a, E> =
    dyn FnMut(&EvalBatch<'_>) -> std::result::Result<(Tensor, i64), E> + 'a;

/// The one shard-evaluation loop (LM evaluation, the MoE grid, the forgetting
/// study): every domain of `split`, at most `max_sequences` per domain (0 = all),
/// `batch_size` sequences per call of `loss_sum`, which returns the summed next-token
/// loss of the batch and its number of target tokens. No gradients; one host read
/// per domain. A domain whose loss is NaN or infinite is an
/// [`Error::NonFiniteLoss`] naming it, not a report of NaN figures.
pub fn eval_shards<E: From<Error>>(
    shards: &ShardSet,
    split: &str,
    max_sequences: usize,
    batch_size: usize,
    device: Device,
    loss_sum: &mut BatchLossSum<'_, E>,
) -> std::result::Result<EvalReport, E> {
    if batch_size == 0 {
        return Err(Error::Config("evaluation batch_size must be > 0".into()).into());
    }
    let started = Instant::now();
    let seq_len = shards.seq_len();
    let mut domains = BTreeMap::new();
    let (mut all_sum, mut all_tokens) = (0f64, 0i64);
    let _guard = tch::no_grad_guard();
    for domain in shards.domains(split).map_err(Error::from)? {
        let reader = shards.reader(split, &domain).map_err(Error::from)?;
        let n = match max_sequences {
            0 => reader.len(),
            m => m.min(reader.len()),
        };
        let zero = Tensor::f_zeros([], (Kind::Double, device)).map_err(Error::from)?;
        let (mut sum, mut tokens) = (zero, 0i64);
        let mut buf = vec![0i64; batch_size * seq_len];
        let mut start = 0;
        while start < n {
            let b = batch_size.min(n - start);
            for i in 0..b {
                reader
                    .read_into_i64(start + i, &mut buf[i * seq_len..(i + 1) * seq_len])
                    .map_err(Error::from)?;
            }
            let ids = Tensor::f_from_slice(&buf[..b * seq_len])
                .and_then(|t| t.f_view([b as i64, seq_len as i64]))
                .and_then(|t| t.f_to_device(device))
                .map_err(Error::from)?;
            let (s, c) = loss_sum(&EvalBatch {
                ids: &ids,
                domain: &domain,
                start,
            })?;
            sum = s
                .f_to_kind(Kind::Double)
                .and_then(|s| sum.f_add(&s))
                .map_err(Error::from)?;
            tokens += c;
            start += b;
        }
        let sum = sum.f_double_value(&[]).map_err(Error::from)?;
        let loss = sum / tokens.max(1) as f64;
        if !loss.is_finite() {
            return Err(Error::NonFiniteLoss {
                split: split.to_string(),
                domain,
                loss,
            }
            .into());
        }
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

/// Evaluates `model` on every domain of `split` (no gradients, eval mode); at most
/// `max_sequences` per domain (0 = all), `batch_size` sequences per forward pass.
pub fn evaluate(
    model: &Gpt2LmHeadModel,
    shards: &ShardSet,
    split: &str,
    max_sequences: usize,
    batch_size: usize,
) -> Result<EvalReport> {
    eval_shards(
        shards,
        split,
        max_sequences,
        batch_size,
        model.device(),
        &mut |b: &EvalBatch<'_>| -> Result<(Tensor, i64)> {
            let out = model.forward_compute_logits(Gpt2Input::ids(b.ids))?;
            causal_lm_loss_sum(&out.logits, b.ids, None)
        },
    )
}

impl EvalReport {
    /// The eval line of `metrics.jsonl`: `val_loss`, `val_ppl`, `val_loss_<d>`,
    /// `val_ppl_<d>`.
    pub fn metrics_json(&self) -> serde_json::Value {
        let mut v =
            serde_json::json!({"val_loss": self.mean_loss, "val_ppl": self.mean_perplexity});
        for (d, e) in &self.domains {
            v[format!("val_loss_{d}")] = serde_json::json!(e.loss);
            v[format!("val_ppl_{d}")] = serde_json::json!(e.perplexity);
        }
        v
    }
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

/// The eval callback of a training job: `model` on the `validation` split of
/// `shards` with `eval`'s sizes, as the eval line of `metrics.jsonl`
/// ([`EvalReport::metrics_json`]).
pub fn validation_metrics(
    model: &Gpt2LmHeadModel,
    shards: &ShardSet,
    eval: &mome_core::job::EvalParams,
) -> Result<serde_json::Value> {
    let r = evaluate(
        model,
        shards,
        "validation",
        eval.max_sequences,
        eval.batch_size,
    )?;
    Ok(r.metrics_json())
}

/// Loads the model folder `model_dir` (`config.json` + `model.safetensors`) on
/// `device` and [`evaluate`]s it on `split` of the shards at `shards` (checked with
/// [`open_shards_for`]): the library side of `mome eval`.
pub fn evaluate_dir(
    model_dir: &Path,
    shards: &Path,
    split: &str,
    max_sequences: usize,
    batch_size: usize,
    device: Device,
) -> Result<EvalReport> {
    let (_vs, model) = Gpt2LmHeadModel::from_pretrained(model_dir, device)?;
    let shards = open_shards_for(&model, shards)?;
    evaluate(&model, &shards, split, max_sequences, batch_size)
}
