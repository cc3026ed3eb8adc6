//! The GPT-2 stack (an MoE expert), the transformer (`GPT2Model`) and the LM head
//! model (`GPT2LMHeadModel`).

use mome_core::linear_ce::LinearHead;
use tch::{nn, Device, Kind, Tensor};

use mome_core::fusion::{FusionMode, KernelConfig};

use super::layers::{build_attn_mask, check_float_kind, BlockInput, Gpt2Block, LayerNorm};
use super::Gpt2Config;
use crate::error::{Error, Result};
use crate::generate::KvCache;

/// Output of [`Gpt2Stack::forward`].
#[derive(Debug)]
pub struct StackOutput {
    /// `ln_f` of the last block's output, `[B, T, n_embd]`.
    pub last_hidden_state: Tensor,
    /// With `output_hidden_states`: the input, the outputs of blocks `0..n_layer-1`,
    /// and finally `last_hidden_state` (HF convention, `n_layer + 1` tensors).
    pub hidden_states: Option<Vec<Tensor>>,
}

/// A stack of GPT-2 blocks plus the final layer norm, fed hidden states: what an MoE
/// expert is. Built at `p` it owns `p.h.{i}.*` and `p.ln_f.*`.
#[derive(Debug)]
pub struct Gpt2Stack {
    blocks: Vec<Gpt2Block>,
    ln_f: LayerNorm,
    n_embd: i64,
    compute_kind: Kind,
    add_layer_norm: FusionMode,
}

/// The kind of `a + b` for the float kinds of a residual stream and a branch.
fn promoted(a: Kind, b: Kind) -> Kind {
    if a == b {
        a
    } else if a == Kind::Double || b == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

impl Gpt2Stack {
    /// Builds the stack at `p` (e.g. `transformer`) with GPT-2 initialisation; compute
    /// kind fp32.
    pub fn new(p: &nn::Path, cfg: &Gpt2Config) -> Result<Self> {
        cfg.validate()?;
        let h = p.sub("h");
        let blocks = (0..cfg.n_layer)
            .map(|i| Gpt2Block::new(&h.sub(i), cfg, i))
            .collect();
        Ok(Self {
            blocks,
            ln_f: LayerNorm::new(&p.sub("ln_f"), cfg.n_embd, cfg.layer_norm_epsilon),
            n_embd: cfg.n_embd,
            compute_kind: Kind::Float,
            add_layer_norm: FusionMode::default(),
        })
    }

    /// Number of blocks.
    pub fn n_layer(&self) -> usize {
        self.blocks.len()
    }

    /// The kind matmuls and attention run in.
    pub fn compute_kind(&self) -> Kind {
        self.compute_kind
    }

    /// Sets the kind matmuls and attention run in (Float, BFloat16, Half or Double).
    pub fn set_compute_kind(&mut self, kind: Kind) -> Result<()> {
        check_float_kind(kind)?;
        self.compute_kind = kind;
        Ok(())
    }

    /// Applies the `[train.kernels]` keys that concern the stack (`add_layer_norm`).
    pub fn set_kernels(&mut self, kernels: &KernelConfig) {
        self.add_layer_norm = kernels.add_layer_norm;
    }

    /// The `add_layer_norm` mode the blocks run with (see [`Gpt2Stack::set_kernels`]).
    pub fn add_layer_norm(&self) -> FusionMode {
        self.add_layer_norm
    }

    /// Runs the blocks and `ln_f` over `hidden` `[B, T, n_embd]`.
    ///
    /// `attention_mask` is `[B, past + T]` (1 = keep, 0 = pad), where `past` is the
    /// length already in `cache`; the cache gets this call's keys and values appended.
    pub fn forward(
        &self,
        hidden: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        output_hidden_states: bool,
        train: bool,
    ) -> Result<StackOutput> {
        let size = hidden.size();
        if size.len() != 3 || size[2] != self.n_embd {
            return Err(Error::Input(format!(
                "hidden states must be [batch, seq, {}], got {size:?}",
                self.n_embd
            )));
        }
        let (b, t) = (size[0], size[1]);
        let past = match cache.as_deref() {
            Some(c) => {
                if c.n_layer() != self.blocks.len() {
                    return Err(Error::Input(format!(
                        "KV cache has {} layers, the stack has {}",
                        c.n_layer(),
                        self.blocks.len()
                    )));
                }
                if c.seq_len() > 0 && c.batch_size() != Some(b) {
                    return Err(Error::Input(format!(
                        "KV cache holds batch {:?}, input has batch {b}",
                        c.batch_size()
                    )));
                }
                c.seq_len()
            }
            None => 0,
        };
        let mask = build_attn_mask(attention_mask, b, t, past, hidden.device())?;
        let mut all = output_hidden_states.then(Vec::new);
        let add_ln = self.add_layer_norm.resolve_add_ln();
        let mut h = hidden.shallow_clone();
        let mut pending: Option<(Tensor, f64)> = None;
        for (i, block) in self.blocks.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|c| c.layer_mut(i));
            let out = block.forward(
                &h,
                BlockInput {
                    pending: pending.as_ref().map(|(m, p)| (m, *p)),
                    mask: &mask,
                    kv,
                    kind: self.compute_kind,
                    train,
                    add_ln,
                },
            )?;
            if let Some(all) = all.as_mut() {
                all.push(out.input);
            }
            h = out.hidden;
            pending = Some((out.mlp, out.mlp_dropout));
        }
        // ln_f's output keeps the residual stream's kind (fp32 for fp32 parameters).
        let out_kind = match &pending {
            Some((m, _)) => promoted(h.kind(), m.kind()),
            None => h.kind(),
        };
        let last = self
            .ln_f
            .add_forward(&h, pending.as_ref().map(|(m, p)| (m, *p)), out_kind, add_ln)?
            .normed;
        if let Some(all) = all.as_mut() {
            all.push(last.shallow_clone());
        }
        Ok(StackOutput {
            last_hidden_state: last,
            hidden_states: all,
        })
    }

    /// Parameters with names relative to the stack's path (`h.0.ln_1.weight`, ...).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            b.named(&format!("h.{i}"), &mut out);
        }
        self.ln_f.named("ln_f", &mut out);
        out
    }
}

/// Inputs of a forward pass. Exactly one of `input_ids` and `inputs_embeds` is set.
#[derive(Debug, Default)]
pub struct Gpt2Input<'a> {
    /// Token ids `[B, T]` (Int64).
    pub input_ids: Option<&'a Tensor>,
    /// Input embeddings `[B, T, n_embd]`, used instead of the `wte` lookup; position
    /// embeddings are still added (as in Hugging Face).
    pub inputs_embeds: Option<&'a Tensor>,
    /// `[B, past + T]`, 1 = keep, 0 = pad.
    pub attention_mask: Option<&'a Tensor>,
    /// Positions `[B, T]` or `[1, T]`; default `past..past + T` (Hugging Face's default,
    /// independent of the padding mask).
    pub position_ids: Option<&'a Tensor>,
    /// KV cache, extended by this call.
    pub cache: Option<&'a mut KvCache>,
    /// Return every hidden state (HF convention, `n_layer + 1` tensors).
    pub output_hidden_states: bool,
    /// Training mode: dropout on.
    pub train: bool,
    /// Skip the `[0, vocab)` range check of `input_ids` (the ids are known valid,
    /// e.g. read from shards that were checked against the vocabulary). The check
    /// reads a min/max back to the host, which on CUDA is a device synchronisation
    /// per forward pass; an out-of-range id then fails inside the embedding kernel
    /// instead of as [`Error::TokenOutOfRange`].
    pub trusted_ids: bool,
}

impl<'a> Gpt2Input<'a> {
    /// Inputs given as token ids.
    pub fn ids(input_ids: &'a Tensor) -> Self {
        Self {
            input_ids: Some(input_ids),
            ..Self::default()
        }
    }

    /// Inputs given as embeddings (replacing the `wte` lookup).
    pub fn embeds(inputs_embeds: &'a Tensor) -> Self {
        Self {
            inputs_embeds: Some(inputs_embeds),
            ..Self::default()
        }
    }

    /// Sets the padding mask.
    pub fn attention_mask(mut self, mask: &'a Tensor) -> Self {
        self.attention_mask = Some(mask);
        self
    }

    /// Sets explicit position ids.
    pub fn position_ids(mut self, positions: &'a Tensor) -> Self {
        self.position_ids = Some(positions);
        self
    }

    /// Uses (and extends) a KV cache.
    pub fn cache(mut self, cache: &'a mut KvCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Requests every hidden state.
    pub fn output_hidden_states(mut self, yes: bool) -> Self {
        self.output_hidden_states = yes;
        self
    }

    /// Sets training mode (dropout).
    pub fn train(mut self, yes: bool) -> Self {
        self.train = yes;
        self
    }

    /// Skips the id range check (no host synchronisation; see [`Gpt2Input::trusted_ids`]).
    pub fn trusted_ids(mut self, yes: bool) -> Self {
        self.trusted_ids = yes;
        self
    }
}

/// Checks that every id of `ids` lies in `[0, limit)` with one min/max reduction.
fn check_id_range(ids: &Tensor, limit: i64, what: &str) -> Result<()> {
    if ids.numel() == 0 {
        return Ok(());
    }
    let (lo, hi) = ids.f_aminmax(None, false)?;
    let (lo, hi) = (lo.f_int64_value(&[])?, hi.f_int64_value(&[])?);
    if lo < 0 || hi >= limit {
        let id = if lo < 0 { lo } else { hi };
        return Err(if what == "token" {
            Error::TokenOutOfRange {
                id,
                vocab_size: limit,
            }
        } else {
            Error::Input(format!("{what} id {id} is outside [0, {limit})"))
        });
    }
    Ok(())
}

pub(crate) fn check_int_kind(t: &Tensor, what: &str) -> Result<()> {
    match t.kind() {
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => Ok(()),
        k => Err(Error::Input(format!(
            "{what} must be an integer tensor, got {k:?}"
        ))),
    }
}

/// Token + position embeddings followed by a [`Gpt2Stack`]; built at `transformer`.
#[derive(Debug)]
pub struct Gpt2Model {
    wte: Tensor,
    wpe: Tensor,
    stack: Gpt2Stack,
    embd_pdrop: f64,
    vocab_size: i64,
    n_positions: i64,
    n_embd: i64,
}

/// Output of [`Gpt2Model::forward`].
#[derive(Debug)]
pub struct Gpt2ModelOutput {
    /// Final hidden states after `ln_f`, `[B, T, n_embd]`.
    pub last_hidden_state: Tensor,
    /// All hidden states (HF convention), when requested.
    pub hidden_states: Option<Vec<Tensor>>,
}

impl Gpt2Model {
    /// Builds `wte`, `wpe`, `h.*` and `ln_f` at `p` (normally `root/transformer`).
    pub fn new(p: &nn::Path, cfg: &Gpt2Config) -> Result<Self> {
        cfg.validate()?;
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: cfg.initializer_range,
        };
        let wte = p
            .sub("wte")
            .var("weight", &[cfg.vocab_size, cfg.n_embd], init);
        let wpe = p
            .sub("wpe")
            .var("weight", &[cfg.n_positions, cfg.n_embd], init);
        Ok(Self {
            wte,
            wpe,
            stack: Gpt2Stack::new(p, cfg)?,
            embd_pdrop: cfg.embd_pdrop,
            vocab_size: cfg.vocab_size,
            n_positions: cfg.n_positions,
            n_embd: cfg.n_embd,
        })
    }

    /// The token embedding matrix `[vocab, n_embd]`.
    pub fn wte(&self) -> &Tensor {
        &self.wte
    }

    /// The position embedding matrix `[n_positions, n_embd]`.
    pub fn wpe(&self) -> &Tensor {
        &self.wpe
    }

    /// The blocks and final layer norm.
    pub fn stack(&self) -> &Gpt2Stack {
        &self.stack
    }

    /// Mutable access to the stack (e.g. to set its compute kind).
    pub fn stack_mut(&mut self) -> &mut Gpt2Stack {
        &mut self.stack
    }

    /// Embeds tokens (`wte[ids]`, or `inputs_embeds` as given) and adds `wpe[positions]`,
    /// then applies embedding dropout when `train`. Ids are range-checked first.
    pub fn embed(
        &self,
        input_ids: Option<&Tensor>,
        inputs_embeds: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        past: i64,
        train: bool,
    ) -> Result<Tensor> {
        self.embed_checked(input_ids, inputs_embeds, position_ids, past, train, true)
    }

    fn embed_checked(
        &self,
        input_ids: Option<&Tensor>,
        inputs_embeds: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        past: i64,
        train: bool,
        check_ids: bool,
    ) -> Result<Tensor> {
        let device = self.wte.device();
        let tok = match (input_ids, inputs_embeds) {
            (Some(ids), None) => {
                check_int_kind(ids, "input_ids")?;
                if ids.dim() != 2 {
                    return Err(Error::Input(format!(
                        "input_ids must be [batch, seq], got {:?}",
                        ids.size()
                    )));
                }
                if check_ids {
                    check_id_range(ids, self.vocab_size, "token")?;
                }
                Tensor::f_embedding(&self.wte, &ids.to_device(device), -1, false, false)?
            }
            (None, Some(e)) => {
                let s = e.size();
                if s.len() != 3 || s[2] != self.n_embd {
                    return Err(Error::Input(format!(
                        "inputs_embeds must be [batch, seq, {}], got {s:?}",
                        self.n_embd
                    )));
                }
                e.to_device(device)
            }
            (Some(_), Some(_)) => {
                return Err(Error::Input(
                    "give either input_ids or inputs_embeds, not both".into(),
                ))
            }
            (None, None) => return Err(Error::Input("give input_ids or inputs_embeds".into())),
        };
        let size = tok.size();
        let (b, t) = (size[0], size[1]);
        if past + t > self.n_positions {
            return Err(Error::Input(format!(
                "sequence length {} (cached {past} + new {t}) exceeds n_positions {}",
                past + t,
                self.n_positions
            )));
        }
        let pos = match position_ids {
            Some(p) => {
                check_int_kind(p, "position_ids")?;
                let ps = p.size();
                if ps.len() != 2 || ps[1] != t || (ps[0] != b && ps[0] != 1) {
                    return Err(Error::Input(format!(
                        "position_ids must be [{b}, {t}] or [1, {t}], got {ps:?}"
                    )));
                }
                check_id_range(p, self.n_positions, "position")?;
                p.to_device(device)
            }
            None => Tensor::arange_start(past, past + t, (Kind::Int64, device)).unsqueeze(0),
        };
        let pe = Tensor::f_embedding(&self.wpe, &pos, -1, false, false)?;
        Ok((tok + pe).dropout(self.embd_pdrop, train))
    }

    /// Embeddings followed by the stack.
    pub fn forward(&self, input: Gpt2Input<'_>) -> Result<Gpt2ModelOutput> {
        let Gpt2Input {
            input_ids,
            inputs_embeds,
            attention_mask,
            position_ids,
            cache,
            output_hidden_states,
            train,
            trusted_ids,
        } = input;
        let past = cache.as_deref().map_or(0, KvCache::seq_len);
        let h = self.embed_checked(
            input_ids,
            inputs_embeds,
            position_ids,
            past,
            train,
            !trusted_ids,
        )?;
        let out = self
            .stack
            .forward(&h, attention_mask, cache, output_hidden_states, train)?;
        Ok(Gpt2ModelOutput {
            last_hidden_state: out.last_hidden_state,
            hidden_states: out.hidden_states,
        })
    }

    /// Parameters with names relative to the model's path (`wte.weight`, `h.0...`).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            ("wte.weight".to_string(), self.wte.shallow_clone()),
            ("wpe.weight".to_string(), self.wpe.shallow_clone()),
        ];
        out.extend(self.stack.named_parameters());
        out
    }
}

/// Output of [`Gpt2LmHeadModel::forward`].
#[derive(Debug)]
pub struct Gpt2Output {
    /// Logits `[B, T, vocab]`, fp32.
    pub logits: Tensor,
    /// Final hidden states after `ln_f`, `[B, T, n_embd]`.
    pub last_hidden_state: Tensor,
    /// The embeddings and each block's output (the last one after `ln_f`), when
    /// requested: `n_layer + 1` tensors, HF convention.
    pub hidden_states: Option<Vec<Tensor>>,
}

/// Parameter counts, the way the paper's tables count them.
///
/// `total` counts every distinct parameter once (a tied LM head is the token embedding
/// and is not counted again; an untied `lm_head.weight` is counted). `embedding` is
/// `wte` + `wpe` (+ an untied `lm_head`), `non_embedding = total - embedding`.
/// `trainable` counts the parameters that currently require gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamCount {
    /// All distinct parameters.
    pub total: i64,
    /// Parameters that require gradients.
    pub trainable: i64,
    /// Token and position embeddings plus an untied LM head.
    pub embedding: i64,
    /// `total - embedding`.
    pub non_embedding: i64,
}

/// GPT-2 with a language-modelling head (`transformers.GPT2LMHeadModel`).
#[derive(Debug)]
pub struct Gpt2LmHeadModel {
    pub(super) config: Gpt2Config,
    transformer: Gpt2Model,
    pub(super) lm_head: Option<Tensor>,
    compute_kind: Kind,
}

impl Gpt2LmHeadModel {
    /// Builds the model at `p` (normally the var store root, so that variable names are
    /// the Hugging Face keys) with GPT-2 initialisation; compute kind fp32.
    pub fn new(p: &nn::Path, cfg: &Gpt2Config) -> Result<Self> {
        cfg.validate()?;
        let transformer = Gpt2Model::new(&p.sub("transformer"), cfg)?;
        let lm_head = (!cfg.tie_word_embeddings).then(|| {
            p.sub("lm_head").var(
                "weight",
                &[cfg.vocab_size, cfg.n_embd],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: cfg.initializer_range,
                },
            )
        });
        Ok(Self {
            config: cfg.clone(),
            transformer,
            lm_head,
            compute_kind: Kind::Float,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Embeddings + blocks.
    pub fn transformer(&self) -> &Gpt2Model {
        &self.transformer
    }

    /// The LM head matrix `[vocab, n_embd]` (the token embedding when tied).
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.transformer.wte)
    }

    /// The device of the parameters.
    pub fn device(&self) -> Device {
        self.transformer.wte.device()
    }

    /// The kind matmuls and attention run in.
    pub fn compute_kind(&self) -> Kind {
        self.compute_kind
    }

    /// Sets the kind matmuls and attention run in (Float, BFloat16, Half or Double).
    /// Parameters stay as they are (fp32 master weights).
    pub fn set_compute_kind(&mut self, kind: Kind) -> Result<()> {
        check_float_kind(kind)?;
        self.transformer.stack.set_compute_kind(kind)?;
        self.compute_kind = kind;
        Ok(())
    }

    /// Applies the `[train.kernels]` keys that concern the model's blocks
    /// ([`Gpt2Stack::set_kernels`]); the LM head's loss takes its keys from the
    /// objective.
    pub fn set_kernels(&mut self, kernels: &KernelConfig) {
        self.transformer.stack.set_kernels(kernels);
    }

    /// The LM head: `hidden @ lm_head^T` with both cast to the compute kind; the
    /// logits have the compute kind (bf16 under bf16 compute), not yet fp32.
    pub fn lm_head_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = LinearHead {
            hidden,
            weight: self.lm_head_weight(),
            compute: self.compute_kind,
        };
        Ok(head.logits()?)
    }

    /// Forward pass; logits for every position, fp32.
    pub fn forward(&self, input: Gpt2Input<'_>) -> Result<Gpt2Output> {
        let mut out = self.forward_compute_logits(input)?;
        if out.logits.kind() != Kind::Float {
            out.logits = out.logits.f_to_kind(Kind::Float)?;
        }
        Ok(out)
    }

    /// Forward pass with the logits left in the compute kind (bf16 under bf16
    /// compute): no full-vocabulary fp32 copy is made here. The losses
    /// ([`causal_lm_loss`], mome-distill's KD losses) upcast inside their
    /// log-softmax, so the fp32 `[B, T, V]` tensor exists once instead of two or
    /// three times. Same values as [`Self::forward`] up to that cast.
    pub fn forward_compute_logits(&self, input: Gpt2Input<'_>) -> Result<Gpt2Output> {
        let out = self.transformer.forward(input)?;
        let logits = self.lm_head_logits(&out.last_hidden_state)?;
        Ok(Gpt2Output {
            logits,
            last_hidden_state: out.last_hidden_state,
            hidden_states: out.hidden_states,
        })
    }

    /// Parameters under their Hugging Face keys (no `lm_head.weight` when tied).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .transformer
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (format!("transformer.{n}"), t))
            .collect();
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.shallow_clone()));
        }
        out
    }

    /// Model FLOPs per trained token at `seq_len`, forward and backward:
    /// `6·(non-embedding parameters + vocab·d) + 12·layers·seq_len·d` (the LM head
    /// counts, embedding lookups do not). A forward alone is a third of it.
    pub fn train_flops_per_token(&self, seq_len: i64) -> f64 {
        let cfg = &self.config;
        let head = cfg.vocab_size * cfg.n_embd;
        6.0 * (self.param_count().non_embedding + head) as f64
            + 12.0 * (cfg.n_layer * seq_len * cfg.n_embd) as f64
    }

    /// Parameter counts (see [`ParamCount`]).
    pub fn param_count(&self) -> ParamCount {
        let mut c = ParamCount {
            total: 0,
            trainable: 0,
            embedding: 0,
            non_embedding: 0,
        };
        for (name, t) in self.named_parameters() {
            let n = t.numel() as i64;
            c.total += n;
            if t.requires_grad() {
                c.trainable += n;
            }
            if matches!(
                name.as_str(),
                "transformer.wte.weight" | "transformer.wpe.weight" | "lm_head.weight"
            ) {
                c.embedding += n;
            }
        }
        c.non_embedding = c.total - c.embedding;
        c
    }
}
