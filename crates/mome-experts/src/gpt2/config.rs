//! The GPT-2 configuration (Hugging Face `config.json`) and the paper's presets.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};

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
    pub(crate) fn apply(self, x: &Tensor) -> Tensor {
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

    /// MLP inner size (`n_inner`, or `4 * n_embd`; saturating, so that an absurd
    /// `n_embd` read from a file is refused by [`Self::num_parameters`] rather than
    /// overflowing).
    pub fn inner_dim(&self) -> i64 {
        self.n_inner.unwrap_or(self.n_embd.saturating_mul(4))
    }

    /// Parameters of the token and position embeddings and, untied, the LM head
    /// (`None` when a size is not positive or the count overflows `u64`).
    pub fn embedding_parameters(&self) -> Option<u64> {
        let [v, p, e] = [self.vocab_size, self.n_positions, self.n_embd].map(u64::try_from);
        let (v, p, e) = (v.ok()?, p.ok()?, e.ok()?);
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        v.checked_mul(e)?
            .checked_mul(heads)?
            .checked_add(p.checked_mul(e)?)
    }

    /// Parameters of the blocks and the final layer norm (`None` when a size is not
    /// positive or the count overflows `u64`).
    pub fn stack_parameters(&self) -> Option<u64> {
        let [l, e, i] = [self.n_layer, self.n_embd, self.inner_dim()].map(u64::try_from);
        let (l, e, i) = (l.ok()?, e.ok()?, i.ok()?);
        // ln_1, ln_2: 2e each; c_attn: e*3e + 3e; attn c_proj: e*e + e; c_fc: e*i + i;
        // mlp c_proj: i*e + e.
        let e2 = e.checked_mul(e)?;
        let ei = e.checked_mul(i)?;
        let block = e2
            .checked_mul(4)?
            .checked_add(ei.checked_mul(2)?)?
            .checked_add(e.checked_mul(9)?)?
            .checked_add(i)?;
        l.checked_mul(block)?.checked_add(e.checked_mul(2)?)
    }

    /// Parameters of a [`crate::Gpt2LmHeadModel`] of this config (`None` when a size
    /// is not positive or the count overflows `u64`). The loaders compare it with the
    /// elements their weight files hold before building a model, so that a
    /// `config.json` cannot make them allocate more than the files hold.
    pub fn num_parameters(&self) -> Option<u64> {
        self.embedding_parameters()?
            .checked_add(self.stack_parameters()?)
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

    /// Reads and parses a Hugging Face `config.json` file; a parse error is an
    /// [`Error::ConfigFile`] naming the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&s).map_err(|e| Error::ConfigFile {
            path: path.to_path_buf(),
            reason: "not a valid GPT-2 config".into(),
            source: Some(e),
        })
    }

    /// [`Self::from_file`], then [`Self::validate`], with an invalid value reported as
    /// an [`Error::ConfigFile`] naming the file.
    pub fn from_file_checked(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg = Self::from_file(path)?;
        cfg.validate().map_err(|e| match e {
            Error::Config(reason) => Error::ConfigFile {
                path: path.to_path_buf(),
                reason,
                source: None,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// The config as Hugging Face `config.json` text, loadable by
    /// `transformers.GPT2LMHeadModel.from_pretrained`.
    pub fn to_hf_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

/// A named model shape: the base of a [`ModelSpec`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preset {
    /// [`Gpt2Config::teacher_medium`]: the paper's teacher (GPT-2 Medium shape).
    #[serde(rename = "teacher-medium")]
    TeacherMedium,
    /// [`Gpt2Config::student_6l`].
    #[serde(rename = "student-6l")]
    Student6l,
    /// [`Gpt2Config::student_3l`]: the paper's 3-layer student / MoE expert.
    #[serde(rename = "student-3l")]
    Student3l,
    /// Every field given by hand, on the 3-layer student's defaults.
    #[default]
    #[serde(rename = "custom")]
    Custom,
}

impl Preset {
    /// The preset's config for a vocabulary of `vocab_size`.
    pub fn config(self, vocab_size: i64) -> Gpt2Config {
        match self {
            Preset::TeacherMedium => Gpt2Config::teacher_medium(vocab_size),
            Preset::Student6l => Gpt2Config::student_6l(vocab_size),
            Preset::Student3l | Preset::Custom => Gpt2Config::student_3l(vocab_size),
        }
    }
}

/// A model shape as configs write it (`[model]`, `[student]`, `[teacher.model]`…):
/// a [`Preset`] plus Hugging Face GPT-2 fields that override it. Unknown keys are
/// rejected by name; [`ModelSpec::resolve`] checks the result.
///
/// ```
/// use mome_experts::{ModelSpec, Preset};
/// let spec: ModelSpec = toml::from_str("preset = \"student-3l\"\nn_head = 12").unwrap();
/// let cfg = spec.resolve(32000).unwrap();
/// assert_eq!((cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size), (3, 768, 12, 32000));
/// assert_eq!(spec.preset, Some(Preset::Student3l));
/// assert!(toml::from_str::<ModelSpec>("n_layers = 2").is_err()); // unknown key
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The base shape (default `custom`: the 3-layer student's fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// Vocabulary size (default: the shards' vocabulary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<i64>,
    /// Positions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_positions: Option<i64>,
    /// Hidden size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_embd: Option<i64>,
    /// Blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_layer: Option<i64>,
    /// Attention heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_head: Option<i64>,
    /// MLP inner size (default `4 * n_embd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_inner: Option<i64>,
    /// MLP activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_function: Option<Activation>,
    /// Residual dropout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resid_pdrop: Option<f64>,
    /// Embedding dropout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embd_pdrop: Option<f64>,
    /// Attention dropout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_pdrop: Option<f64>,
    /// Layer-norm epsilon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_norm_epsilon: Option<f64>,
    /// Initialisation standard deviation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initializer_range: Option<f64>,
    /// Tie the LM head to the token embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// `<s>` id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<i64>,
    /// `</s>` id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<i64>,
    /// Scale attention scores by `1/sqrt(head_dim)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_attn_weights: Option<bool>,
    /// Further divide attention scores by `layer_idx + 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_attn_by_inverse_layer_idx: Option<bool>,
}

impl ModelSpec {
    /// A preset with no overrides.
    pub fn preset(preset: Preset) -> Self {
        Self {
            preset: Some(preset),
            ..Self::default()
        }
    }

    /// Every field of `cfg` (the `custom` preset overridden everywhere): resolves to
    /// `cfg` itself (for callers that hold a config already).
    pub fn from_config(cfg: &Gpt2Config) -> Self {
        Self {
            preset: Some(Preset::Custom),
            vocab_size: Some(cfg.vocab_size),
            n_positions: Some(cfg.n_positions),
            n_embd: Some(cfg.n_embd),
            n_layer: Some(cfg.n_layer),
            n_head: Some(cfg.n_head),
            n_inner: cfg.n_inner,
            activation_function: Some(cfg.activation_function),
            resid_pdrop: Some(cfg.resid_pdrop),
            embd_pdrop: Some(cfg.embd_pdrop),
            attn_pdrop: Some(cfg.attn_pdrop),
            layer_norm_epsilon: Some(cfg.layer_norm_epsilon),
            initializer_range: Some(cfg.initializer_range),
            tie_word_embeddings: Some(cfg.tie_word_embeddings),
            bos_token_id: cfg.bos_token_id,
            eos_token_id: cfg.eos_token_id,
            scale_attn_weights: Some(cfg.scale_attn_weights),
            scale_attn_by_inverse_layer_idx: Some(cfg.scale_attn_by_inverse_layer_idx),
        }
    }

    /// The config: the preset for `vocab_size` (unless `vocab_size` is set here),
    /// then every given field; validated.
    pub fn resolve(&self, vocab_size: usize) -> Result<Gpt2Config> {
        let vocab = self.vocab_size.unwrap_or(vocab_size as i64);
        let mut c = self.preset.unwrap_or_default().config(vocab);
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            n_positions,
            n_embd,
            n_layer,
            n_head,
            activation_function,
            resid_pdrop,
            embd_pdrop,
            attn_pdrop,
            layer_norm_epsilon,
            initializer_range,
            tie_word_embeddings,
            scale_attn_weights,
            scale_attn_by_inverse_layer_idx
        );
        if self.n_inner.is_some() {
            c.n_inner = self.n_inner;
        }
        if self.bos_token_id.is_some() {
            c.bos_token_id = self.bos_token_id;
        }
        if self.eos_token_id.is_some() {
            c.eos_token_id = self.eos_token_id;
        }
        c.validate()?;
        Ok(c)
    }
}
