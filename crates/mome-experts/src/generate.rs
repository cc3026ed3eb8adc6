//! Batched autoregressive generation with a KV cache.
//!
//! Prompts are left-padded to a common length; the padding mask and per-sequence
//! positions (`cumsum(mask) - 1`, so every prompt starts at position 0) are passed to
//! the model. The prompt is run once, then one token per step with the cache; each
//! sequence stops at its EOS. Sampling draws on the host from a ChaCha8 stream seeded by
//! `seed`, so a seed gives the same tokens on every device (up to float noise in the
//! logits).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::gpt2::{Gpt2Input, Gpt2LmHeadModel};

/// Per-layer cached keys and values, `[B, n_head, S, head_dim]` each, appended by every
/// forward pass that is given the cache; positions continue after `seq_len()`.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache for a stack of `n_layer` blocks.
    pub fn new(n_layer: usize) -> Self {
        Self {
            layers: (0..n_layer).map(|_| None).collect(),
        }
    }

    /// Number of layers the cache is for.
    pub fn n_layer(&self) -> usize {
        self.layers.len()
    }

    /// Number of cached positions (0 when empty).
    pub fn seq_len(&self) -> i64 {
        match self.layers.first() {
            Some(Some((k, _))) => k.size()[2],
            _ => 0,
        }
    }

    /// Batch size of the cached tensors, if any.
    pub fn batch_size(&self) -> Option<i64> {
        match self.layers.first() {
            Some(Some((k, _))) => Some(k.size()[0]),
            _ => None,
        }
    }

    /// Cached keys and values of layer `i`.
    pub fn layer(&self, i: usize) -> Option<(&Tensor, &Tensor)> {
        self.layers.get(i)?.as_ref().map(|(k, v)| (k, v))
    }

    /// Empties the cache.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }

    pub(crate) fn layer_mut(&mut self, i: usize) -> &mut Option<(Tensor, Tensor)> {
        &mut self.layers[i]
    }
}

/// How to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    /// Maximum number of new tokens per sequence.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy (argmax).
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens (0 = off). Sampling only.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches
    /// `top_p` (1.0 = off). Sampling only.
    pub top_p: f64,
    /// Seed of the sampling stream.
    pub seed: u64,
    /// A sequence stops after emitting this token (it is included in the output).
    pub eos_token_id: Option<i64>,
    /// Token used for left padding (masked out, never attended to).
    pub pad_token_id: i64,
}

impl Default for GenerationConfig {
    /// Greedy, 32 new tokens, no EOS, pad 0.
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            eos_token_id: None,
            pad_token_id: 0,
        }
    }
}

impl GenerationConfig {
    /// Checks ranges against the model's vocabulary.
    pub fn validate(&self, vocab_size: i64) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be >= 0 and finite, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.pad_token_id < 0 || self.pad_token_id >= vocab_size {
            return bad(format!(
                "pad_token_id {} is outside the vocabulary [0, {vocab_size})",
                self.pad_token_id
            ));
        }
        if let Some(e) = self.eos_token_id {
            if e < 0 || e >= vocab_size {
                return bad(format!(
                    "eos_token_id {e} is outside the vocabulary [0, {vocab_size})"
                ));
            }
        }
        Ok(())
    }
}

/// Applies temperature, top-k and top-p to `[B, V]` fp32 logits and samples one token
/// per row on the host.
fn sample(logits: &Tensor, cfg: &GenerationConfig, rng: &mut ChaCha8Rng) -> Result<Vec<i64>> {
    let v = logits.size()[1];
    let mut z = logits / cfg.temperature;
    if cfg.top_k > 0 && (cfg.top_k as i64) < v {
        let (vals, _) = z.f_topk(cfg.top_k as i64, -1, true, true)?;
        let kth = vals.narrow(1, cfg.top_k as i64 - 1, 1);
        z = z.masked_fill(&z.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if cfg.top_p < 1.0 {
        let (sorted, idx) = z.sort(-1, true);
        let probs = sorted.softmax(-1, Kind::Float);
        let before = probs.cumsum(-1, Kind::Float) - &probs;
        let sorted = sorted.masked_fill(&before.gt(cfg.top_p), f64::NEG_INFINITY);
        z = z.full_like(f64::NEG_INFINITY).scatter(-1, &idx, &sorted);
    }
    let probs = z
        .softmax(-1, Kind::Float)
        .to_kind(Kind::Double)
        .to_device(tch::Device::Cpu);
    let probs = Vec::<f64>::try_from(&probs.reshape([-1]))?;
    let mut out = Vec::new();
    for (r, row) in probs.chunks(v as usize).enumerate() {
        // NaN or +inf logits (or a row of -inf) give NaN probabilities: say so.
        if row.iter().any(|p| !p.is_finite()) {
            return Err(Error::NonFiniteLogits { row: r });
        }
        let total: f64 = row.iter().sum();
        let u = rng.gen::<f64>() * total;
        let mut acc = 0.0;
        let mut pick = None;
        for (i, &p) in row.iter().enumerate() {
            if p > 0.0 {
                acc += p;
                pick = Some(i);
                if u < acc {
                    break;
                }
            }
        }
        let pick = pick.ok_or(Error::NonFiniteLogits { row: r })?;
        out.push(pick as i64);
    }
    Ok(out)
}

/// The first row of `[B, V]` logits holding a NaN, if any.
fn first_nan_row(logits: &Tensor) -> Result<Option<usize>> {
    let rows = logits
        .f_isnan()?
        .f_any_dim(-1, false)?
        .f_to_kind(Kind::Int64)?
        .f_to_device(Device::Cpu)?;
    Ok(Vec::<i64>::try_from(&rows)?.iter().position(|&x| x != 0))
}

/// The next token of each row of `[B, V]` fp32 logits: argmax when
/// `cfg.temperature == 0`, otherwise temperature, top-k and top-p then one draw per
/// row from `rng`. [`generate`] and the MoE's generation both decode with it. Logits
/// that leave nothing to pick (NaN; for sampling also +inf or a row of -inf) are an
/// [`Error::NonFiniteLogits`] naming the row.
pub fn next_tokens(
    logits: &Tensor,
    cfg: &GenerationConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<i64>> {
    if cfg.temperature == 0.0 {
        if let Some(row) = first_nan_row(logits)? {
            return Err(Error::NonFiniteLogits { row });
        }
        Ok(Vec::<i64>::try_from(
            &logits.argmax(-1, false).to_device(tch::Device::Cpu),
        )?)
    } else {
        sample(logits, cfg, rng)
    }
}

/// Generates up to `cfg.max_new_tokens` tokens after each prompt, batched.
///
/// Returns, for each prompt, only the new tokens (ending with EOS when one was
/// produced). Prompts must be non-empty, in the vocabulary, and
/// `longest prompt + max_new_tokens <= n_positions`. Runs without gradients.
pub fn generate(
    model: &Gpt2LmHeadModel,
    prompts: &[Vec<i64>],
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<i64>>> {
    let mcfg = model.config();
    cfg.validate(mcfg.vocab_size)?;
    let b = prompts.len();
    if b == 0 {
        return Ok(Vec::new());
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::Input(format!("prompt {i} is empty")));
        }
        if let Some(&id) = p.iter().find(|&&id| id < 0 || id >= mcfg.vocab_size) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: mcfg.vocab_size,
            });
        }
    }
    let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if (max_len + cfg.max_new_tokens) as i64 > mcfg.n_positions {
        return Err(Error::Input(format!(
            "longest prompt ({max_len}) + max_new_tokens ({}) exceeds n_positions ({})",
            cfg.max_new_tokens, mcfg.n_positions
        )));
    }
    if cfg.max_new_tokens == 0 {
        return Ok(vec![Vec::new(); b]);
    }
    let refs: Vec<&[i64]> = prompts.iter().map(Vec::as_slice).collect();
    let batch = PromptBatch::left_padded(&refs, cfg.pad_token_id, model.device());
    tch::no_grad(|| {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut cache = KvCache::new(mcfg.n_layer as usize);
        decode(batch, cfg, &mut rng, |ids, positions, mask| {
            let o = model.forward(
                Gpt2Input::ids(ids)
                    .attention_mask(mask)
                    .position_ids(positions)
                    .cache(&mut cache),
            )?;
            Ok(o.logits.select(1, -1))
        })
    })
}

/// A batch of prompts left-padded to a common length, on a device: ids and attention
/// mask `[B, L]`, and positions `cumsum(mask) - 1` (every prompt starts at 0).
#[derive(Debug)]
pub struct PromptBatch {
    /// Token ids, padding on the left.
    pub ids: Tensor,
    /// 1 for prompt tokens, 0 for padding.
    pub mask: Tensor,
    /// Position of each token within its own prompt (0 on padding).
    pub positions: Tensor,
}

impl PromptBatch {
    /// Left-pads `prompts` with `pad_token_id` (callers check that no prompt is empty).
    pub fn left_padded(prompts: &[&[i64]], pad_token_id: i64, device: Device) -> Self {
        let b = prompts.len();
        let max_len = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * max_len);
        let mut mask = Vec::with_capacity(b * max_len);
        for p in prompts {
            let pad = max_len - p.len();
            ids.extend(std::iter::repeat_n(pad_token_id, pad).chain(p.iter().copied()));
            mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, p.len())));
        }
        let (bi, li) = (b as i64, max_len as i64);
        let ids = Tensor::from_slice(&ids).view([bi, li]).to_device(device);
        let mask = Tensor::from_slice(&mask).view([bi, li]).to_device(device);
        let positions = (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
        Self {
            ids,
            mask,
            positions,
        }
    }
}

/// The token-by-token loop every generator shares (the dense one above and the MoE's).
///
/// `step(ids, positions, mask)` runs the model and returns the next-token logits
/// `[B, vocab]` of the last position; it is called once with the whole prompt batch,
/// then with one token per sequence (the attention mask grows by one column each
/// time, positions advance by one), so a KV cache lives in the closure. Tokens are
/// drawn with [`next_tokens`]; a sequence stops at its EOS (later steps feed it
/// `pad_token_id`), all stop after `max_new_tokens`. Returns the new tokens per prompt.
pub fn decode<E, F>(
    batch: PromptBatch,
    cfg: &GenerationConfig,
    rng: &mut ChaCha8Rng,
    mut step: F,
) -> std::result::Result<Vec<Vec<i64>>, E>
where
    E: From<Error>,
    F: FnMut(&Tensor, &Tensor, &Tensor) -> std::result::Result<Tensor, E>,
{
    let PromptBatch {
        ids,
        mut mask,
        positions,
    } = batch;
    let b = ids.size()[0];
    let device = ids.device();
    let mut out = vec![Vec::new(); b as usize];
    if cfg.max_new_tokens == 0 || b == 0 {
        return Ok(out);
    }
    let mut done = vec![false; b as usize];
    let mut next_pos = positions.narrow(1, positions.size()[1] - 1, 1) + 1;
    let mut logits = step(&ids, &positions, &mask)?;
    for k in 0..cfg.max_new_tokens {
        let next = next_tokens(&logits, cfg, rng)?;
        let mut feed = Vec::with_capacity(b as usize);
        for (i, &tok) in next.iter().enumerate() {
            if done[i] {
                feed.push(cfg.pad_token_id);
                continue;
            }
            out[i].push(tok);
            feed.push(tok);
            if cfg.eos_token_id == Some(tok) {
                done[i] = true;
            }
        }
        if k + 1 == cfg.max_new_tokens || done.iter().all(|&d| d) {
            break;
        }
        let inp = Tensor::from_slice(&feed).view([b, 1]).to_device(device);
        mask = Tensor::cat(&[&mask, &mask.ones_like().narrow(1, 0, 1)], 1);
        let pos = next_pos.shallow_clone();
        next_pos = &next_pos + 1;
        logits = step(&inp, &pos, &mask)?;
    }
    Ok(out)
}
