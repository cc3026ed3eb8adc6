//! Text generation with a mixture of modular experts.
//!
//! Each prompt is routed once, on its token ids ([`route_prompts`]); the
//! [`Setting`] turns the routing into the prompt's active experts (the routed
//! expert, plus the common expert, or every used expert when averaging, exactly as
//! in [`MoeModel::forward`]). Those experts then generate together, each with its
//! own [`KvCache`]: at every step each active expert runs on the new token, the
//! outputs are combined by the setting's rule (mean of the final hidden states per
//! embedding set, then the head; for PLE, whose experts have their own heads, this
//! is the mean of the experts' logits) and one token is chosen.
//!
//! Decoding is that of `mome_experts::generate` (left padding, per-sequence
//! positions, greedy or temperature / top-k / top-p sampling from a ChaCha8 stream
//! seeded by `seed`, stop at EOS), so a prompt routed to one expert gets the tokens
//! the expert exported alone (`export-expert`) generates. Prompts with different
//! active experts are generated in groups (in order of their experts), which share
//! one sampling stream.

use std::collections::BTreeMap;

use mome_experts::generate::{decode, PromptBatch};
use mome_experts::{GenerationConfig, KvCache};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::config::{ExpertId, Setting};
use crate::error::{Error, Result};
use crate::model::MoeModel;
use crate::routing::{ClassMap, ExpertChoice, ResolvedSetting, Routing, SequenceRouter};

/// One generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeGeneration {
    /// What the router said about the prompt (its class index and probabilities).
    pub routing: Routing,
    /// The routing mapped onto the model's experts.
    pub choice: ExpertChoice,
    /// The experts that generated (domain experts in order, then the common one).
    pub active: Vec<ExpertId>,
    /// The new tokens (ending with EOS when one was produced).
    pub tokens: Vec<i64>,
}

/// Routes each prompt with `router` (its classes are checked against the experts
/// first): the router's answer and the matching [`ExpertChoice`].
pub fn route_prompts(
    model: &MoeModel,
    router: &dyn SequenceRouter,
    prompts: &[Vec<i64>],
) -> Result<Vec<(Routing, ExpertChoice)>> {
    let map = ClassMap::new(router.classes(), model.config())?;
    prompts
        .iter()
        .map(|p| {
            let ids: Vec<u32> = p.iter().map(|&i| i.max(0) as u32).collect();
            let r = router.route(&ids)?;
            let c = map.choice(&r)?;
            Ok((r, c))
        })
        .collect()
}

/// Routes every prompt with `router`, then generates with [`generate`].
pub fn generate_routed(
    model: &MoeModel,
    router: &dyn SequenceRouter,
    setting: &Setting,
    prompts: &[Vec<i64>],
    cfg: &GenerationConfig,
) -> Result<Vec<MoeGeneration>> {
    let resolved = ResolvedSetting::new(setting, model.config())?;
    let routed = route_prompts(model, router, prompts)?;
    let choices: Vec<ExpertChoice> = routed.iter().map(|(_, c)| c.clone()).collect();
    let tokens = generate(model, prompts, &choices, setting, cfg)?;
    Ok(routed
        .into_iter()
        .zip(tokens)
        .map(|((routing, choice), tokens)| MoeGeneration {
            active: resolved.active(&choice),
            routing,
            choice,
            tokens,
        })
        .collect())
}

/// Generates up to `cfg.max_new_tokens` tokens after each prompt; `choices[i]` is
/// prompt `i`'s routing and `setting` decides its active experts.
///
/// Returns only the new tokens of each prompt. Prompts must be non-empty, in the
/// vocabulary, and `longest prompt + max_new_tokens <= n_positions`; everything is
/// checked before any forward pass. Runs without gradients.
pub fn generate(
    model: &MoeModel,
    prompts: &[Vec<i64>],
    choices: &[ExpertChoice],
    setting: &Setting,
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<i64>>> {
    let mcfg = model.config();
    let e = &mcfg.expert;
    let resolved = ResolvedSetting::new(setting, mcfg)?;
    cfg.validate(e.vocab_size)?;
    if choices.len() != prompts.len() {
        return Err(Error::Routing(format!(
            "{} routings for {} prompts",
            choices.len(),
            prompts.len()
        )));
    }
    let n = mcfg.domains.len();
    for (i, c) in choices.iter().enumerate() {
        if c.expert >= n || c.probabilities.len() != n {
            return Err(Error::Routing(format!(
                "prompt {i}: routed to expert {} with {} probabilities; the model has {n} domain experts",
                c.expert,
                c.probabilities.len()
            )));
        }
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::Input(format!("prompt {i} is empty")));
        }
        if let Some(&id) = p.iter().find(|&&id| id < 0 || id >= e.vocab_size) {
            return Err(Error::Input(format!(
                "prompt {i}: token id {id} is outside the vocabulary [0, {})",
                e.vocab_size
            )));
        }
        if (p.len() + cfg.max_new_tokens) as i64 > e.n_positions {
            return Err(Error::Input(format!(
                "prompt {i} ({} tokens) + max_new_tokens ({}) exceeds n_positions ({})",
                p.len(),
                cfg.max_new_tokens,
                e.n_positions
            )));
        }
    }
    let mut out = vec![Vec::new(); prompts.len()];
    if cfg.max_new_tokens == 0 || prompts.is_empty() {
        return Ok(out);
    }
    let mut groups: BTreeMap<Vec<ExpertId>, Vec<usize>> = BTreeMap::new();
    for (i, c) in choices.iter().enumerate() {
        groups.entry(resolved.active(c)).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    tch::no_grad(|| -> Result<()> {
        for (active, rows) in &groups {
            let group: Vec<&Vec<i64>> = rows.iter().map(|&i| &prompts[i]).collect();
            let tokens = generate_group(model, active, &group, cfg, &mut rng)?;
            for (&i, t) in rows.iter().zip(tokens) {
                out[i] = t;
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// The experts of `active` grouped by the embeddings (and head) they read.
fn by_embeddings(model: &MoeModel, active: &[ExpertId]) -> Result<Vec<Vec<ExpertId>>> {
    let mut sets: Vec<(usize, Vec<ExpertId>)> = Vec::new();
    for &id in active {
        let key = model.embedding_index(id)?;
        match sets.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(id),
            None => sets.push((key, vec![id])),
        }
    }
    Ok(sets.into_iter().map(|(_, v)| v).collect())
}

/// One decoding step of the active experts: logits `[B, vocab]` of the last position.
fn step_logits(
    model: &MoeModel,
    sets: &[Vec<ExpertId>],
    caches: &mut BTreeMap<ExpertId, KvCache>,
    ids: &Tensor,
    positions: &Tensor,
    mask: &Tensor,
    n_active: usize,
) -> Result<Tensor> {
    let mut logits: Option<Tensor> = None;
    for set in sets {
        let emb = model.embeddings_of(set[0])?;
        let h0 = Tensor::f_embedding(emb.wte(), ids, -1, false, false)?
            + Tensor::f_embedding(emb.wpe(), positions, -1, false, false)?;
        let mut sum: Option<Tensor> = None;
        let mut kind = Kind::Float;
        for id in set {
            let stack = model.stack(*id)?;
            kind = stack.compute_kind();
            let cache = caches
                .get_mut(id)
                .ok_or_else(|| Error::Routing(format!("internal: no cache for {id:?}")))?;
            let dev = model.expert_device(*id);
            let h = if dev == h0.device() {
                stack.forward(&h0, Some(mask), Some(cache), false, false)?
            } else {
                let m = mask.f_to_device(dev)?;
                stack.forward(&h0.f_to_device(dev)?, Some(&m), Some(cache), false, false)?
            }
            .last_hidden_state;
            let last = h
                .select(1, h.size()[1] - 1)
                .to_kind(Kind::Float)
                .to_device(h0.device());
            sum = Some(match sum {
                None => last,
                Some(s) => s + last,
            });
        }
        let mean = sum.expect("non-empty set") * (1.0 / n_active as f64);
        let part = mean
            .to_kind(kind)
            .f_linear::<Tensor>(&emb.head().to_kind(kind), None)?
            .to_kind(Kind::Float);
        logits = Some(match logits {
            None => part,
            Some(l) => l + part,
        });
    }
    logits.ok_or_else(|| Error::Routing("no active expert".into()))
}

fn generate_group(
    model: &MoeModel,
    active: &[ExpertId],
    prompts: &[&Vec<i64>],
    cfg: &GenerationConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<i64>>> {
    if active.is_empty() {
        return Err(Error::Routing("a prompt has no active expert".into()));
    }
    let refs: Vec<&[i64]> = prompts.iter().map(|p| p.as_slice()).collect();
    let batch = PromptBatch::left_padded(&refs, cfg.pad_token_id, model.device());
    let sets = by_embeddings(model, active)?;
    let mut caches: BTreeMap<ExpertId, KvCache> = BTreeMap::new();
    for &id in active {
        caches.insert(id, KvCache::new(model.stack(id)?.n_layer()));
    }
    let n_active = active.len();
    decode(batch, cfg, rng, |ids, positions, mask| {
        step_logits(model, &sets, &mut caches, ids, positions, mask, n_active)
    })
}
