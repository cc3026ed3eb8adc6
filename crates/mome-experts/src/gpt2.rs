//! GPT-2 in tch with Hugging Face parameter names.
//!
//! Variable paths equal the keys of `transformers.GPT2LMHeadModel`:
//! `transformer.wte.weight`, `transformer.wpe.weight`,
//! `transformer.h.{i}.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}.{weight,bias}`,
//! `transformer.ln_f.{weight,bias}` and, only for untied models, `lm_head.weight`.
//! Linear layers use the HF `Conv1D` layout: weight `[in, out]`, `y = x @ W + b`.
//!
//! Mixed precision: parameters stay fp32 (master weights). Every linear layer and the
//! attention run in the model's `compute_kind` (weights and inputs are cast to it);
//! layer norms run in fp32; the residual stream stays fp32 (an fp32 residual plus a
//! low-precision branch promotes to fp32); logits are returned as fp32.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Reduction, Tensor};

use crate::error::{Error, Result};
use crate::generate::KvCache;

/// Activation of the MLP, named as in Hugging Face's `activation_function`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Tanh approximation of GELU (GPT-2's original); also read from `gelu_pytorch_tanh`.
    #[default]
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluNew,
    /// Exact (erf) GELU.
    #[serde(rename = "gelu")]
    Gelu,
    /// ReLU.
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::GeluNew => x.gelu("tanh"),
            Activation::Gelu => x.gelu("none"),
            Activation::Relu => x.relu(),
        }
    }
}

/// A GPT-2 configuration that reads and writes Hugging Face's `config.json`.
///
/// Missing fields take Hugging Face's `GPT2Config` defaults; fields this crate does not
/// use (`n_ctx`, `summary_*`, `transformers_version`, ...) are kept in `extra` and
/// written back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Maximum sequence length (number of position embeddings).
    pub n_positions: i64,
    /// Hidden size.
    pub n_embd: i64,
    /// Number of blocks.
    pub n_layer: i64,
    /// Number of attention heads.
    pub n_head: i64,
    /// MLP inner size; `null` means `4 * n_embd`.
    pub n_inner: Option<i64>,
    /// MLP activation.
    pub activation_function: Activation,
    /// Dropout on the attention and MLP outputs (before the residual add).
    pub resid_pdrop: f64,
    /// Dropout on the embeddings.
    pub embd_pdrop: f64,
    /// Dropout on the attention probabilities.
    pub attn_pdrop: f64,
    /// Layer-norm epsilon.
    pub layer_norm_epsilon: f64,
    /// Standard deviation of the normal initialisation.
    pub initializer_range: f64,
    /// Whether the LM head shares the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<i64>,
    /// End-of-sequence token id.
    pub eos_token_id: Option<i64>,
    /// Always `"gpt2"`.
    pub model_type: String,
    /// Hugging Face architecture names (`["GPT2LMHeadModel"]`).
    pub architectures: Vec<String>,
    /// Scale attention scores by `1/sqrt(head_dim)`.
    pub scale_attn_weights: bool,
    /// Further divide attention scores by `layer_idx + 1`.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// HF's fp16-stability switch; accepted, has no effect here (scores are computed by
    /// `scaled_dot_product_attention` in the compute kind).
    pub reorder_and_upcast_attn: bool,
    /// Whether HF should use its KV cache by default.
    pub use_cache: bool,
    /// Every other field of `config.json`, kept as is.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for Gpt2Config {
    /// Hugging Face's `GPT2Config()` defaults (GPT-2 small, vocabulary 50257).
    fn default() -> Self {
        Self {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_inner: None,
            activation_function: Activation::GeluNew,
            resid_pdrop: 0.1,
            embd_pdrop: 0.1,
            attn_pdrop: 0.1,
            layer_norm_epsilon: 1e-5,
            initializer_range: 0.02,
            tie_word_embeddings: true,
            bos_token_id: Some(50256),
            eos_token_id: Some(50256),
            model_type: "gpt2".to_string(),
            architectures: vec!["GPT2LMHeadModel".to_string()],
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            reorder_and_upcast_attn: false,
            use_cache: true,
            extra: serde_json::Map::new(),
        }
    }
}

impl Gpt2Config {
    fn preset(vocab_size: i64, n_layer: i64, n_embd: i64, n_head: i64) -> Self {
        Self {
            vocab_size,
            n_positions: 1024,
            n_embd,
            n_layer,
            n_head,
            resid_pdrop: 0.1,
            layer_norm_epsilon: 1e-5,
            // the project's tokenizer: <s> = 1, </s> = 2 (method.md §2)
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            ..Self::default()
        }
    }

    /// The paper's teacher: GPT-2 Medium shape (24 layers, 1024 wide, 16 heads, 1024
    /// positions), dropout 0.1, eps 1e-5, `<s>`=1, `</s>`=2.
    pub fn teacher_medium(vocab_size: i64) -> Self {
        Self::preset(vocab_size, 24, 1024, 16)
    }

    /// The paper's 6-layer student (6 layers, 768 wide, 12 heads, 1024 positions).
    pub fn student_6l(vocab_size: i64) -> Self {
        Self::preset(vocab_size, 6, 768, 12)
    }

    /// The paper's 3-layer student / MoE expert (3 layers, 768 wide, 6 heads).
    pub fn student_3l(vocab_size: i64) -> Self {
        Self::preset(vocab_size, 3, 768, 6)
    }

    /// MLP inner size (`n_inner`, or `4 * n_embd`).
    pub fn inner_dim(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.n_embd / self.n_head
    }

    /// Checks sizes, divisibility, dropout ranges and token ids.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_inner", self.inner_dim()),
        ] {
            if v <= 0 {
                return bad(format!("{name} must be positive, got {v}"));
            }
        }
        if self.n_embd % self.n_head != 0 {
            return bad(format!(
                "n_embd ({}) must be divisible by n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        for (name, p) in [
            ("resid_pdrop", self.resid_pdrop),
            ("embd_pdrop", self.embd_pdrop),
            ("attn_pdrop", self.attn_pdrop),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            return bad(format!(
                "layer_norm_epsilon must be positive, got {}",
                self.layer_norm_epsilon
            ));
        }
        if !(self.initializer_range >= 0.0 && self.initializer_range.is_finite()) {
            return bad(format!(
                "initializer_range must be >= 0, got {}",
                self.initializer_range
            ));
        }
        if self.model_type != "gpt2" {
            return bad(format!(
                "model_type must be \"gpt2\", got {:?}",
                self.model_type
            ));
        }
        for (name, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            if let Some(id) = id {
                if id < 0 || id >= self.vocab_size {
                    return bad(format!(
                        "{name} {id} is outside the vocabulary [0, {})",
                        self.vocab_size
                    ));
                }
            }
        }
        Ok(())
    }

    /// Parses a Hugging Face `config.json` text.
    pub fn from_json_str(s: &str) -> Result<Self> {
        Ok(serde_json::from_str(s)?)
    }

    /// Reads and parses a Hugging Face `config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&s)
    }

    /// The config as Hugging Face `config.json` text, loadable by
    /// `transformers.GPT2LMHeadModel.from_pretrained`.
    pub fn to_hf_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

fn check_float_kind(kind: Kind) -> Result<()> {
    match kind {
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => Ok(()),
        other => Err(Error::Config(format!(
            "compute kind must be a floating kind (Float, BFloat16, Half, Double), got {other:?}"
        ))),
    }
}

/// HF `Conv1D`: weight `[in, out]`, `y = x @ W + b`.
#[derive(Debug)]
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
    n_out: i64,
}

impl Conv1D {
    fn new(p: &nn::Path, n_in: i64, n_out: i64, std: f64) -> Self {
        let weight = p.var(
            "weight",
            &[n_in, n_out],
            nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        );
        let bias = p.var("bias", &[n_out], nn::Init::Const(0.0));
        Self {
            weight,
            bias,
            n_out,
        }
    }

    fn forward(&self, x: &Tensor, kind: Kind) -> Tensor {
        let mut out_size = x.size();
        let n_in = *out_size.last().expect("Conv1D input has at least one dim");
        *out_size.last_mut().expect("non-empty") = self.n_out;
        let x2 = x.to_kind(kind).reshape([-1, n_in]);
        self.bias
            .to_kind(kind)
            .addmm(&x2, &self.weight.to_kind(kind))
            .reshape(out_size)
    }

    fn named(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}.weight"), self.weight.shallow_clone()));
        out.push((format!("{prefix}.bias"), self.bias.shallow_clone()));
    }
}

/// Layer norm computed in fp32, output cast back to the input kind.
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    dim: i64,
}

impl LayerNorm {
    fn new(p: &nn::Path, dim: i64, eps: f64) -> Self {
        let weight = p.var("weight", &[dim], nn::Init::Const(1.0));
        let bias = p.var("bias", &[dim], nn::Init::Const(0.0));
        Self {
            weight,
            bias,
            eps,
            dim,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        x.to_kind(Kind::Float)
            .layer_norm(
                [self.dim],
                Some(&self.weight.to_kind(Kind::Float)),
                Some(&self.bias.to_kind(Kind::Float)),
                self.eps,
                true,
            )
            .to_kind(kind)
    }

    fn named(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}.weight"), self.weight.shallow_clone()));
        out.push((format!("{prefix}.bias"), self.bias.shallow_clone()));
    }
}

/// The attention mask handed to every block of one forward pass.
#[derive(Debug)]
struct AttnMask {
    /// Boolean `[B or 1, 1, T, S]`, `true` = may attend.
    mask: Option<Tensor>,
    is_causal: bool,
}

/// Builds the mask for `t` new positions after `past` cached ones.
///
/// Without padding and cache: `is_causal`. Otherwise an explicit boolean mask
/// combining causality and the `[B, past + t]` padding mask (1 = keep). Each query may
/// always attend to itself so that padded query rows never see an all-masked row (which
/// would give NaN); their outputs are meaningless and must be ignored by the caller.
fn build_attn_mask(
    attention_mask: Option<&Tensor>,
    b: i64,
    t: i64,
    past: i64,
    device: Device,
) -> Result<AttnMask> {
    let s = past + t;
    if attention_mask.is_none() && past == 0 {
        return Ok(AttnMask {
            mask: None,
            is_causal: t > 1,
        });
    }
    if attention_mask.is_none() && t == 1 {
        return Ok(AttnMask {
            mask: None,
            is_causal: false,
        });
    }
    let q = Tensor::arange(t, (Kind::Int64, device)).view([t, 1]) + past;
    let k = Tensor::arange(s, (Kind::Int64, device)).view([1, s]);
    let causal = k.le_tensor(&q).view([1, 1, t, s]);
    let mask = match attention_mask {
        None => causal,
        Some(m) => {
            if m.size() != [b, s] {
                return Err(Error::Input(format!(
                    "attention_mask must have shape [{b}, {s}] (batch, cached + new positions), got {:?}",
                    m.size()
                )));
            }
            let keep = m.to_device(device).ne(0).view([b, 1, 1, s]);
            let diag = k.eq_tensor(&q).view([1, 1, t, s]);
            causal.logical_and(&keep).logical_or(&diag)
        }
    };
    Ok(AttnMask {
        mask: Some(mask),
        is_causal: false,
    })
}

#[derive(Debug)]
struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: i64,
    head_dim: i64,
    scale: f64,
    attn_pdrop: f64,
    resid_pdrop: f64,
}

impl Attention {
    fn new(p: &nn::Path, cfg: &Gpt2Config, layer_idx: i64) -> Self {
        let c = cfg.n_embd;
        let std = cfg.initializer_range;
        let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
        let mut scale = if cfg.scale_attn_weights {
            1.0 / (cfg.head_dim() as f64).sqrt()
        } else {
            1.0
        };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer_idx + 1) as f64;
        }
        Self {
            c_attn: Conv1D::new(&p.sub("c_attn"), c, 3 * c, std),
            c_proj: Conv1D::new(&p.sub("c_proj"), c, c, proj_std),
            n_head: cfg.n_head,
            head_dim: cfg.head_dim(),
            scale,
            attn_pdrop: cfg.attn_pdrop,
            resid_pdrop: cfg.resid_pdrop,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &AttnMask,
        kv: Option<&mut Option<(Tensor, Tensor)>>,
        kind: Kind,
        train: bool,
    ) -> Tensor {
        let size = x.size();
        let (b, t, c) = (size[0], size[1], size[2]);
        let qkv = self.c_attn.forward(x, kind);
        let parts = qkv.split(c, -1);
        let heads = |z: &Tensor| {
            z.reshape([b, t, self.n_head, self.head_dim])
                .transpose(1, 2)
        };
        let q = heads(&parts[0]);
        let mut k = heads(&parts[1]);
        let mut v = heads(&parts[2]);
        if let Some(slot) = kv {
            if let Some((pk, pv)) = slot.take() {
                k = Tensor::cat(&[pk, k], 2);
                v = Tensor::cat(&[pv, v], 2);
            }
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
        }
        let y = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask.mask.as_ref(),
            if train { self.attn_pdrop } else { 0.0 },
            mask.is_causal,
            self.scale,
            false,
        );
        let y = y.transpose(1, 2).reshape([b, t, c]);
        self.c_proj
            .forward(&y, kind)
            .dropout(self.resid_pdrop, train)
    }
}

#[derive(Debug)]
struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    act: Activation,
    resid_pdrop: f64,
}

impl Mlp {
    fn new(p: &nn::Path, cfg: &Gpt2Config) -> Self {
        let std = cfg.initializer_range;
        let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
        Self {
            c_fc: Conv1D::new(&p.sub("c_fc"), cfg.n_embd, cfg.inner_dim(), std),
            c_proj: Conv1D::new(&p.sub("c_proj"), cfg.inner_dim(), cfg.n_embd, proj_std),
            act: cfg.activation_function,
            resid_pdrop: cfg.resid_pdrop,
        }
    }

    fn forward(&self, x: &Tensor, kind: Kind, train: bool) -> Tensor {
        let h = self.act.apply(&self.c_fc.forward(x, kind));
        self.c_proj
            .forward(&h, kind)
            .dropout(self.resid_pdrop, train)
    }
}

/// One pre-LN GPT-2 block: `h = x + attn(ln_1(x)); out = h + mlp(ln_2(h))`.
#[derive(Debug)]
pub struct Gpt2Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Gpt2Block {
    /// Builds block `layer_idx` at `p` (e.g. `transformer.h.3`).
    pub fn new(p: &nn::Path, cfg: &Gpt2Config, layer_idx: i64) -> Self {
        Self {
            ln_1: LayerNorm::new(&p.sub("ln_1"), cfg.n_embd, cfg.layer_norm_epsilon),
            attn: Attention::new(&p.sub("attn"), cfg, layer_idx),
            ln_2: LayerNorm::new(&p.sub("ln_2"), cfg.n_embd, cfg.layer_norm_epsilon),
            mlp: Mlp::new(&p.sub("mlp"), cfg),
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &AttnMask,
        kv: Option<&mut Option<(Tensor, Tensor)>>,
        kind: Kind,
        train: bool,
    ) -> Tensor {
        let h = x + self
            .attn
            .forward(&self.ln_1.forward(x), mask, kv, kind, train);
        let m = self.mlp.forward(&self.ln_2.forward(&h), kind, train);
        h + m
    }

    fn named(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.ln_1.named(&format!("{prefix}.ln_1"), out);
        self.attn
            .c_attn
            .named(&format!("{prefix}.attn.c_attn"), out);
        self.attn
            .c_proj
            .named(&format!("{prefix}.attn.c_proj"), out);
        self.ln_2.named(&format!("{prefix}.ln_2"), out);
        self.mlp.c_fc.named(&format!("{prefix}.mlp.c_fc"), out);
        self.mlp.c_proj.named(&format!("{prefix}.mlp.c_proj"), out);
    }
}

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
        let mut h = hidden.shallow_clone();
        for (i, block) in self.blocks.iter().enumerate() {
            if let Some(all) = all.as_mut() {
                all.push(h.shallow_clone());
            }
            let kv = cache.as_deref_mut().map(|c| c.layer_mut(i));
            h = block.forward(&h, &mask, kv, self.compute_kind, train);
        }
        let last = self.ln_f.forward(&h);
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

fn check_int_kind(t: &Tensor, what: &str) -> Result<()> {
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

/// Name of the weights file written by [`Gpt2LmHeadModel::save_pretrained`].
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the config file written by [`Gpt2LmHeadModel::save_pretrained`].
pub const CONFIG_FILE: &str = "config.json";

/// GPT-2 with a language-modelling head (`transformers.GPT2LMHeadModel`).
#[derive(Debug)]
pub struct Gpt2LmHeadModel {
    config: Gpt2Config,
    transformer: Gpt2Model,
    lm_head: Option<Tensor>,
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

    /// The LM head: `hidden @ lm_head^T` with both cast to the compute kind; the
    /// logits have the compute kind (bf16 under bf16 compute), not yet fp32.
    pub fn lm_head_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let k = self.compute_kind;
        let w = self.lm_head_weight();
        let w = if w.kind() == k {
            w.shallow_clone()
        } else {
            w.f_to_kind(k)?
        };
        let h = if hidden.kind() == k {
            hidden.shallow_clone()
        } else {
            hidden.f_to_kind(k)?
        };
        Ok(h.f_linear::<Tensor>(&w, None)?)
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

    /// Writes `config.json` and `model.safetensors` (fp32, HF keys; a tied model omits
    /// `lm_head.weight` like Hugging Face) into `dir`, each file atomically.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tensors = self
            .named_parameters()
            .into_iter()
            .map(|(n, t)| Ok((n, t.f_detach()?.f_to_kind(Kind::Float)?)))
            .collect::<Result<Vec<_>>>()?;
        mome_core::tensor_io::write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
        let cfg_path = dir.join(CONFIG_FILE);
        let tmp = dir.join(format!(".{CONFIG_FILE}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, self.config.to_hf_json()? + "\n").map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        Ok(())
    }

    /// Loads a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`) into
    /// a new var store on `device`.
    ///
    /// Accepted beyond the exact key set: HF's `transformer.h.{i}.attn.bias` /
    /// `.attn.masked_bias` buffers (ignored), an `lm_head.weight` in a tied model when
    /// it equals `wte` (ignored), and files written by the bare `GPT2Model` (keys
    /// without the `transformer.` prefix). Anything else that does not fit is an
    /// [`Error::Checkpoint`] naming every missing, unexpected and mismatched key.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: Device) -> Result<(nn::VarStore, Self)> {
        let dir = dir.as_ref();
        let cfg = Gpt2Config::from_file(dir.join(CONFIG_FILE))?;
        cfg.validate()?;
        let vs = nn::VarStore::new(device);
        let model = Self::new(&vs.root(), &cfg)?;
        let path = dir.join(WEIGHTS_FILE);
        let tensors = mome_core::tensor_io::read_safetensors(&path, Device::Cpu)?;
        model.load_hf_tensors(&vs, tensors, &path)?;
        Ok((vs, model))
    }

    /// Loads HF-keyed tensors into this model, which must have been built at the root
    /// of `vs`; `source` names the origin in errors. See [`Self::from_pretrained`].
    pub fn load_hf_tensors(
        &self,
        vs: &nn::VarStore,
        tensors: Vec<(String, Tensor)>,
        source: &Path,
    ) -> Result<()> {
        let has_prefix = tensors.iter().any(|(n, _)| n.starts_with("transformer."));
        let mut kept = Vec::with_capacity(tensors.len());
        let mut lm_head = None;
        for (name, t) in tensors {
            let name = if has_prefix || name == "lm_head.weight" {
                name
            } else {
                format!("transformer.{name}")
            };
            let parts: Vec<&str> = name.split('.').collect();
            let is_buffer = matches!(
                parts.as_slice(),
                ["transformer", "h", i, "attn", "bias" | "masked_bias"] if i.parse::<u64>().is_ok()
            );
            if is_buffer {
                continue;
            }
            if name == "lm_head.weight" && self.lm_head.is_none() {
                lm_head = Some(t);
                continue;
            }
            kept.push((name, t));
        }
        let checkpoint_err = |missing, unexpected, mismatched| Error::Checkpoint {
            path: source.to_path_buf(),
            missing,
            unexpected,
            mismatched,
        };
        if let Some(head) = lm_head {
            let wte = kept.iter().find(|(n, _)| n == "transformer.wte.weight");
            let same = wte.is_some_and(|(_, w)| {
                w.size() == head.size() && w.to_kind(Kind::Float).equal(&head.to_kind(Kind::Float))
            });
            if !same {
                return Err(checkpoint_err(
                    vec![],
                    vec![],
                    vec!["lm_head.weight: the model ties it to transformer.wte.weight but the file's differs".into()],
                ));
            }
        }
        match mome_core::tensor_io::load_into(vs, &kept, true) {
            Ok(_) => Ok(()),
            Err(mome_core::Error::LoadMismatch {
                missing,
                unexpected,
                mismatched,
            }) => Err(checkpoint_err(
                missing,
                unexpected,
                mismatched.iter().map(ToString::to_string).collect(),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

fn shifted_targets(
    logits: &Tensor,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let ls = logits.size();
    let is = input_ids.size();
    if ls.len() != 3 || is.len() != 2 || ls[0] != is[0] || ls[1] != is[1] {
        return Err(Error::Input(format!(
            "logits [B, T, V] and input_ids [B, T] disagree: {ls:?} vs {is:?}"
        )));
    }
    check_int_kind(input_ids, "input_ids")?;
    let (t, v) = (ls[1], ls[2]);
    if t < 2 {
        return Err(Error::Input(format!(
            "need at least 2 positions for a next-token loss, got {t}"
        )));
    }
    let device = logits.device();
    let logits = logits
        .narrow(1, 0, t - 1)
        .to_kind(Kind::Float)
        .reshape([-1, v]);
    let mut targets = input_ids
        .to_device(device)
        .to_kind(Kind::Int64)
        .narrow(1, 1, t - 1);
    if let Some(m) = attention_mask {
        if m.size() != is {
            return Err(Error::Input(format!(
                "attention_mask must have the shape of input_ids {is:?}, got {:?}",
                m.size()
            )));
        }
        let m = m.to_device(device).ne(0);
        let keep = m.narrow(1, 0, t - 1).logical_and(&m.narrow(1, 1, t - 1));
        targets = targets.where_self(&keep, &Tensor::from(-100i64).to_device(device));
    }
    Ok((logits, targets.reshape([-1])))
}

/// Shifted next-token cross-entropy, fp32, summed over counted targets.
///
/// Target `ids[:, t+1]` is predicted from position `t`; with a mask it counts only when
/// both positions are real (mask 1). For right padding this is exactly Hugging Face's
/// `labels = ids` with pads set to -100; for left padding it also skips the first real
/// token, whose context is only padding. Returns `(sum, count)`.
pub fn causal_lm_loss_sum(
    logits: &Tensor,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
) -> Result<(Tensor, i64)> {
    let (logits, targets) = shifted_targets(logits, input_ids, attention_mask)?;
    let count = targets.ne(-100).sum(Kind::Int64).f_int64_value(&[])?;
    let sum = logits.f_cross_entropy_loss::<Tensor>(&targets, None, Reduction::Sum, -100, 0.0)?;
    Ok((sum, count))
}

/// Targets aligned with *every* position: `[B * T]` with `ids[:, t+1]` at position
/// `t` and -100 (ignored) at the last position and where the mask drops a pair, and
/// the logits as a `[B * T, V]` view (no copy of the full-vocabulary tensor).
fn aligned_targets(
    logits: &Tensor,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let ls = logits.size();
    let is = input_ids.size();
    if ls.len() != 3 || is.len() != 2 || ls[0] != is[0] || ls[1] != is[1] {
        return Err(Error::Input(format!(
            "logits [B, T, V] and input_ids [B, T] disagree: {ls:?} vs {is:?}"
        )));
    }
    check_int_kind(input_ids, "input_ids")?;
    let (b, t, v) = (ls[0], ls[1], ls[2]);
    if t < 2 {
        return Err(Error::Input(format!(
            "need at least 2 positions for a next-token loss, got {t}"
        )));
    }
    let device = logits.device();
    let ids = input_ids.to_device(device).to_kind(Kind::Int64);
    let ignore = Tensor::full([b, 1], -100i64, (Kind::Int64, device));
    let mut targets = Tensor::cat(&[ids.narrow(1, 1, t - 1), ignore], 1);
    if let Some(m) = attention_mask {
        if m.size() != is {
            return Err(Error::Input(format!(
                "attention_mask must have the shape of input_ids {is:?}, got {:?}",
                m.size()
            )));
        }
        let m = m.to_device(device).ne(0);
        let pair = m.narrow(1, 0, t - 1).logical_and(&m.narrow(1, 1, t - 1));
        let keep = Tensor::cat(&[pair, Tensor::zeros([b, 1], (Kind::Bool, device))], 1);
        targets = targets.where_self(&keep, &Tensor::from(-100i64).to_device(device));
    }
    Ok((logits.reshape([-1, v]), targets.reshape([-1])))
}

/// Mean shifted next-token cross-entropy over counted targets (see
/// [`causal_lm_loss_sum`]), fp32, differentiable. No host synchronisation: with no
/// counted target at all the result is 0.
///
/// `logits` may be fp32 or the compute kind (bf16): the upcast happens inside one
/// `log_softmax(.., Float)` over all positions (the last one is ignored through its
/// target), so no shifted copy and no separate fp32 copy of the logits is made.
pub fn causal_lm_loss(
    logits: &Tensor,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (logits, targets) = aligned_targets(logits, input_ids, attention_mask)?;
    let count = targets.ne(-100).sum(Kind::Float).clamp_min(1.0);
    let sum = logits
        .f_log_softmax(-1, Kind::Float)?
        .f_nll_loss::<Tensor>(&targets, None, Reduction::Sum, -100)?;
    Ok(sum / count)
}

#[cfg(test)]
mod loss_tests {
    use super::*;

    /// The original formulation: shifted copy + cross_entropy.
    fn reference(logits: &Tensor, ids: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (l, t) = shifted_targets(logits, ids, mask).unwrap();
        let count = t.ne(-100).sum(Kind::Float).clamp_min(1.0);
        l.cross_entropy_loss::<Tensor>(&t, None, Reduction::Sum, -100, 0.0) / count
    }

    #[test]
    fn aligned_loss_equals_shifted_cross_entropy_value_and_grad() {
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let ids = Tensor::randint(50, [3, 7], (Kind::Int64, Device::Cpu));
        let mask = Tensor::ones([3, 7], (Kind::Int64, Device::Cpu));
        let _ = mask.narrow(1, 5, 2).narrow(0, 1, 1).fill_(0);
        for m in [None, Some(&mask)] {
            let z = (Tensor::randn([3, 7, 50], opts) * 3.0).set_requires_grad(true);
            let a = causal_lm_loss(&z, &ids, m).unwrap();
            let ga = Tensor::run_backward(&[&a], &[&z], false, false).remove(0);
            let b = reference(&z, &ids, m);
            let gb = Tensor::run_backward(&[&b], &[&z], false, false).remove(0);
            let (va, vb) = (a.double_value(&[]), b.double_value(&[]));
            assert!((va - vb).abs() < 1e-5 * vb.abs().max(1.0), "{va} vs {vb}");
            let gd = (&ga - &gb).abs().max().double_value(&[]);
            assert!(gd < 1e-6, "grad diff {gd}");
        }
    }

    #[test]
    fn bf16_logits_upcast_inside_the_loss() {
        tch::manual_seed(4);
        let ids = Tensor::randint(40, [2, 5], (Kind::Int64, Device::Cpu));
        let z = Tensor::randn([2, 5, 40], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let a = causal_lm_loss(&z, &ids, None).unwrap();
        assert_eq!(a.kind(), Kind::Float);
        let b = reference(&z.to_kind(Kind::Float), &ids, None);
        assert!((a.double_value(&[]) - b.double_value(&[])).abs() < 1e-5);
    }
}
