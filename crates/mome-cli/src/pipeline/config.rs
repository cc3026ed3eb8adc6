//! The pipeline config (`mome pipeline --config FILE.toml`): one section per stage,
//! parsed with unknown keys rejected and validated as a whole before any stage runs.
//! Every key, its default and its range: docs/pipeline.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mome_core::trainer::TrainConfig;
use mome_core::{DeviceSpec, Precision};
use mome_data::sampler::SamplerKind;

use crate::train_cmd::{default_eval_batch, EvalSection};
use serde::Deserialize;

/// The whole pipeline config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Device, precision and seed shared by every stage.
    #[serde(default)]
    pub run: RunSection,
    /// The corpora and how they are balanced (stage `balance`).
    pub data: DataSection,
    /// The BPE tokenizer trained on the balanced data (stage `tokenizer`).
    #[serde(default)]
    pub tokenizer: TokenizerSection,
    /// Token shards (stage `encode`).
    #[serde(default)]
    pub encode: EncodeSection,
    /// The GPT-2 teacher trained on every domain (stage `teacher`).
    pub teacher: ModelSection,
    /// One student per domain distilled from the teacher (stage `students`).
    pub students: StudentsSection,
    /// The fixed / adaptive alpha KD comparison (stage `students`).
    #[serde(default)]
    pub kd: KdSection,
    /// The domain router (stage `router`).
    #[serde(default)]
    pub router: RouterSection,
    /// PLE, JEET and MoE-CE models (stage `moe`).
    pub moe: MoeSection,
    /// The 21-setting evaluation grid (stage `grid`).
    #[serde(default)]
    pub grid: GridSection,
    /// The catastrophic forgetting study (stage `forgetting`).
    #[serde(default)]
    pub forgetting: ForgettingSection,
}

/// `[run]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// auto | cpu | cuda | cuda:N
    #[serde(default)]
    pub device: DeviceSpec,
    /// fp32 | bf16 (bf16 needs CUDA); applied to every training stage.
    #[serde(default)]
    pub precision: Precision,
    /// Seed of the data split and of every training run.
    #[serde(default)]
    pub seed: u64,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            device: DeviceSpec::default(),
            precision: Precision::Fp32,
            seed: 0,
        }
    }
}

/// `[data]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// NAME = PATH (a JSONL / Parquet file or a folder) per domain.
    pub domains: BTreeMap<String, PathBuf>,
    /// Optional separate validation input per domain (NAME = PATH).
    #[serde(default)]
    pub valid: BTreeMap<String, PathBuf>,
    /// tokenizer.json used to count tokens while balancing.
    pub count_tokenizer: PathBuf,
    /// Fraction of each domain's records moved to validation.
    #[serde(default = "default_valid_fraction")]
    pub valid_fraction: f64,
    /// Allowed spread between the domains' token totals, in percent.
    #[serde(default = "default_max_diff")]
    pub max_diff_percent: f64,
    /// reference | subset | truncate (default: the balancer's choice).
    #[serde(default)]
    pub strategy: Option<String>,
    /// Keep only ids present in every domain (the method's `--common_articles`).
    #[serde(default)]
    pub common_articles: bool,
    /// Text field of JSONL / Parquet records.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// Id field of JSONL / Parquet records.
    #[serde(default)]
    pub id_field: Option<String>,
}

fn default_valid_fraction() -> f64 {
    0.1
}
fn default_max_diff() -> f64 {
    5.0
}
fn default_text_field() -> String {
    "text".into()
}

/// `[tokenizer]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSection {
    /// Vocabulary size.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Minimum pair frequency of a merge.
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
}

fn default_vocab() -> usize {
    32000
}
fn default_min_frequency() -> u64 {
    2
}

impl Default for TokenizerSection {
    fn default() -> Self {
        Self {
            vocab_size: default_vocab(),
            min_frequency: default_min_frequency(),
        }
    }
}

/// `[encode]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeSection {
    /// Tokens per sequence.
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
}

fn default_seq_len() -> usize {
    1024
}

impl Default for EncodeSection {
    fn default() -> Self {
        Self {
            seq_len: default_seq_len(),
        }
    }
}

/// A model trained by a stage: `[teacher]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The shape: a preset and/or Hugging Face GPT-2 fields (as `mome train`'s `[model]`).
    pub model: toml::Table,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// balanced | mixed | blocks | sequential
    #[serde(default = "default_sampler")]
    pub sampler: SamplerKind,
    /// Validation during and after training.
    #[serde(default)]
    pub eval: EvalSection,
    /// mome-core's `TrainConfig` (`precision` and `seed` come from `[run]`).
    pub train: toml::Table,
}

fn default_sampler() -> SamplerKind {
    SamplerKind::Mixed
}

/// `[students]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentsSection {
    /// Domains that get a student (default: every `[data] domains`).
    #[serde(default)]
    pub domains: Vec<String>,
    /// The student shape.
    pub model: toml::Table,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Validation during and after training.
    #[serde(default)]
    pub eval: EvalSection,
    /// `mome distill`'s `[distill]` (loss, temperature, strategy).
    #[serde(default)]
    pub distill: toml::Table,
    /// mome-core's `TrainConfig` of each student.
    pub train: toml::Table,
}

/// `[kd]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdSection {
    /// Run `mome experiment kd` in the `students` stage.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// fixed | adaptive | alternating (CE only always runs too).
    #[serde(default = "default_kd_strategies")]
    pub strategies: Vec<String>,
    /// forward_kl | teacher_weighted_ce | reverse_kl | jensen_shannon
    #[serde(default = "default_kd_losses")]
    pub losses: Vec<String>,
    /// KD temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// alpha of fixed runs, initial alpha of adaptive ones.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Adaptive history length (default max(20, max_steps/100)).
    #[serde(default)]
    pub history: Option<usize>,
    /// Steps of every KD run (default: `[students.train] max_steps`).
    #[serde(default)]
    pub max_steps: Option<u64>,
}

fn default_true() -> bool {
    true
}
fn default_kd_strategies() -> Vec<String> {
    vec!["fixed".into(), "adaptive".into()]
}
fn default_kd_losses() -> Vec<String> {
    vec!["forward_kl".into()]
}
fn default_temperature() -> f64 {
    2.0
}
fn default_alpha() -> f64 {
    0.5
}

impl Default for KdSection {
    fn default() -> Self {
        Self {
            enabled: true,
            strategies: default_kd_strategies(),
            losses: default_kd_losses(),
            temperature: default_temperature(),
            alpha: default_alpha(),
            history: None,
            max_steps: None,
        }
    }
}

/// `[router]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    /// logreg | nb | svm | tree: the router the MoE uses.
    #[serde(default = "default_classifier")]
    pub classifier: String,
    /// Passage lengths in tokens of the training passages.
    #[serde(default = "default_passages")]
    pub passage_lengths: Vec<usize>,
    /// Max training passages per class.
    #[serde(default = "default_max_per_class")]
    pub max_per_class: usize,
    /// Minimum document frequency of a kept id.
    #[serde(default = "default_min_df")]
    pub min_df: usize,
    /// Maximum number of feature columns.
    #[serde(default = "default_max_features")]
    pub max_features: usize,
    /// Run `mome router compare` (every classifier, confusion matrices).
    #[serde(default = "default_true")]
    pub compare: bool,
    /// Fraction of documents held out for the comparison's in-domain test.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Folder of held-out JSONL files from other sources (label = file stem).
    #[serde(default)]
    pub heldout: Option<PathBuf>,
    /// The paper's scikit-learn router export, added to the comparison.
    #[serde(default)]
    pub reference_params: Option<PathBuf>,
}

fn default_classifier() -> String {
    "logreg".into()
}
fn default_passages() -> Vec<usize> {
    vec![16, 32, 64, 128, 1024]
}
fn default_max_per_class() -> usize {
    1500
}
fn default_min_df() -> usize {
    2
}
fn default_max_features() -> usize {
    20000
}
fn default_test_fraction() -> f64 {
    0.2
}

impl Default for RouterSection {
    fn default() -> Self {
        toml::from_str("").expect("router defaults")
    }
}

/// `[moe]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeSection {
    /// Models made: ple (from the students), jeet, moe-ce.
    #[serde(default = "default_archs")]
    pub archs: Vec<String>,
    /// Expert shape of JEET / MoE-CE (default: `[students.model]`).
    #[serde(default)]
    pub model: Option<toml::Table>,
    /// Sequences per single-domain batch (JEET / MoE-CE).
    pub batch_size: usize,
    /// Non-confident routings go to the common expert alone.
    #[serde(default = "default_true")]
    pub low_confidence_to_common: bool,
    /// Train JEET / MoE-CE by KD from the teacher (`[students.distill]` settings);
    /// false: plain cross-entropy on the data.
    #[serde(default = "default_true")]
    pub kd: bool,
    /// Validation during training.
    #[serde(default)]
    pub eval: EvalSection,
    /// mome-core's `TrainConfig` of JEET / MoE-CE.
    pub train: toml::Table,
}

fn default_archs() -> Vec<String> {
    vec!["ple".into(), "jeet".into(), "moe-ce".into()]
}

/// `[grid]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSection {
    /// Validation sequences per domain and setting (0 = all).
    #[serde(default)]
    pub max_sequences: usize,
    /// Sequences per forward pass.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Route every sequence with the router stage's router (and report routing
    /// accuracy); false: route by the domain label.
    #[serde(default = "default_true")]
    pub router: bool,
}

impl Default for GridSection {
    fn default() -> Self {
        Self {
            max_sequences: 0,
            batch_size: default_eval_batch(),
            router: true,
        }
    }
}

/// `[forgetting]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgettingSection {
    /// Run `mome experiment forgetting`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Its config file (required when enabled); the shards are this run's.
    #[serde(default)]
    pub config: Option<PathBuf>,
}

impl Default for ForgettingSection {
    fn default() -> Self {
        Self {
            enabled: true,
            config: None,
        }
    }
}

/// The known MoE architectures.
pub const ARCHS: [&str; 3] = ["ple", "jeet", "moe-ce"];

fn check_file(what: &str, p: &Path) -> Result<()> {
    if !p.exists() {
        bail!("{what}: {} does not exist", p.display());
    }
    Ok(())
}

fn range_f(what: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if !v.is_finite() || v < lo || v > hi {
        bail!("{what} = {v}: must be in [{lo}, {hi}]");
    }
    Ok(())
}

fn positive(what: &str, v: usize) -> Result<()> {
    if v == 0 {
        bail!("{what} must be > 0");
    }
    Ok(())
}

/// A parsed `[train]` table with `[run]`'s precision and seed filled in.
pub fn train_config(section: &str, t: &toml::Table, run: &RunSection) -> Result<TrainConfig> {
    for k in ["precision", "seed", "quiet"] {
        if t.contains_key(k) {
            bail!("[{section}.train] {k}: set it in [run] (it applies to every stage)");
        }
    }
    let mut tc: TrainConfig = toml::Value::Table(t.clone())
        .try_into()
        .with_context(|| format!("invalid [{section}.train]"))?;
    tc.precision = run.precision;
    tc.seed = run.seed;
    tc.validate()
        .with_context(|| format!("invalid [{section}.train]"))?;
    Ok(tc)
}

/// Checks a `[*.model]` table against the vocabulary and sequence length.
fn check_model(section: &str, t: &toml::Table, vocab: usize, seq_len: usize) -> Result<()> {
    let cfg = crate::train_cmd::model_config(t, vocab)
        .with_context(|| format!("invalid [{section}.model]"))?;
    if (cfg.vocab_size as usize) < vocab {
        bail!(
            "[{section}.model] vocab_size = {} is smaller than [tokenizer] vocab_size = {vocab}",
            cfg.vocab_size
        );
    }
    if (cfg.n_positions as usize) < seq_len {
        bail!(
            "[{section}.model] n_positions = {} is smaller than [encode] seq_len = {seq_len}",
            cfg.n_positions
        );
    }
    Ok(())
}

fn check_eval(section: &str, e: &EvalSection) -> Result<()> {
    positive(&format!("[{section}.eval] batch_size"), e.batch_size)
}

impl PipelineConfig {
    /// Reads a pipeline config file (unknown keys are errors naming the key).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading pipeline config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid pipeline config {}", path.display()))
    }

    /// Domains with a student (in `[data] domains` order when not given).
    pub fn student_domains(&self) -> Vec<String> {
        if self.students.domains.is_empty() {
            self.data.domains.keys().cloned().collect()
        } else {
            self.students.domains.clone()
        }
    }

    /// The JEET / MoE-CE expert shape.
    pub fn moe_model(&self) -> &toml::Table {
        self.moe.model.as_ref().unwrap_or(&self.students.model)
    }

    /// Every check that can run before any stage: ranges, names, files, sub-configs.
    pub fn validate(&self) -> Result<()> {
        let d = &self.data;
        if d.domains.len() < 2 {
            bail!("[data] domains: give at least two domains (NAME = PATH)");
        }
        for (name, p) in &d.domains {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                bail!("[data] domains: name {name:?} must be letters, digits, '_' or '-'");
            }
            check_file(&format!("[data] domains.{name}"), p)?;
        }
        for (name, p) in &d.valid {
            if !d.domains.contains_key(name) {
                bail!("[data] valid.{name}: no domain named {name:?} in [data] domains");
            }
            check_file(&format!("[data] valid.{name}"), p)?;
        }
        check_file("[data] count_tokenizer", &d.count_tokenizer)?;
        range_f("[data] valid_fraction", d.valid_fraction, 0.0, 0.9)?;
        if d.valid.is_empty() && d.valid_fraction == 0.0 {
            bail!("[data] valid_fraction = 0 and no [data] valid: the later stages need a validation split");
        }
        range_f("[data] max_diff_percent", d.max_diff_percent, 0.0, 1000.0)?;
        if let Some(s) = &d.strategy {
            if !["reference", "subset", "truncate"].contains(&s.as_str()) {
                bail!("[data] strategy = {s:?}: expected reference, subset or truncate");
            }
        }
        let t = &self.tokenizer;
        if !(256..=65535).contains(&t.vocab_size) {
            bail!(
                "[tokenizer] vocab_size = {}: must be in [256, 65535]",
                t.vocab_size
            );
        }
        if t.min_frequency == 0 {
            bail!("[tokenizer] min_frequency must be > 0");
        }
        let seq = self.encode.seq_len;
        if !(8..=65536).contains(&seq) {
            bail!("[encode] seq_len = {seq}: must be in [8, 65536]");
        }
        let vocab = t.vocab_size;
        if self.run.precision == Precision::Bf16 && !matches!(self.run.device, DeviceSpec::Cuda(_))
        {
            bail!("[run] precision = \"bf16\" needs device = \"cuda\" (or \"cuda:N\")");
        }

        // teacher
        check_model("teacher", &self.teacher.model, vocab, seq)?;
        positive("[teacher] batch_size", self.teacher.batch_size)?;
        check_eval("teacher", &self.teacher.eval)?;
        train_config("teacher", &self.teacher.train, &self.run)?;

        // students
        for s in &self.students.domains {
            if !d.domains.contains_key(s) {
                bail!("[students] domains: {s:?} is not in [data] domains");
            }
        }
        check_model("students", &self.students.model, vocab, seq)?;
        positive("[students] batch_size", self.students.batch_size)?;
        check_eval("students", &self.students.eval)?;
        let st = train_config("students", &self.students.train, &self.run)?;
        let _: mome_distill::DistillSettings = toml::Value::Table(self.students.distill.clone())
            .try_into()
            .context("invalid [students.distill]")?;

        // kd
        let k = &self.kd;
        if k.enabled {
            if k.strategies.is_empty() {
                bail!("[kd] strategies: give at least one of fixed, adaptive, alternating");
            }
            for s in &k.strategies {
                if !["fixed", "adaptive", "alternating"].contains(&s.as_str()) {
                    bail!("[kd] strategies: unknown {s:?} (fixed, adaptive, alternating)");
                }
            }
            if k.losses.is_empty() {
                bail!("[kd] losses: give at least one loss");
            }
            let _: Vec<mome_distill::KdLoss> = toml::Value::Array(
                k.losses.iter().map(|l| toml::Value::String(l.clone())).collect(),
            )
            .try_into()
            .context("[kd] losses: expected forward_kl, teacher_weighted_ce, reverse_kl or jensen_shannon")?;
            range_f("[kd] temperature", k.temperature, 1e-3, 100.0)?;
            range_f("[kd] alpha", k.alpha, 0.0, 1.0)?;
            if k.history == Some(0) {
                bail!("[kd] history must be > 0");
            }
            if let Some(m) = k.max_steps {
                if m == 0 {
                    bail!("[kd] max_steps must be > 0");
                }
                if st.warmup_steps > m {
                    bail!(
                        "[kd] max_steps = {m} is below [students.train] warmup_steps = {}",
                        st.warmup_steps
                    );
                }
            }
        }

        // router
        let r = &self.router;
        if !["logreg", "nb", "svm", "tree"].contains(&r.classifier.as_str()) {
            bail!(
                "[router] classifier = {:?}: expected logreg, nb, svm or tree",
                r.classifier
            );
        }
        if r.passage_lengths.is_empty() || r.passage_lengths.contains(&0) {
            bail!("[router] passage_lengths: give lengths > 0");
        }
        positive("[router] max_per_class", r.max_per_class)?;
        positive("[router] min_df", r.min_df)?;
        positive("[router] max_features", r.max_features)?;
        if !(r.test_fraction > 0.0 && r.test_fraction < 1.0) {
            bail!(
                "[router] test_fraction = {}: must be in (0, 1)",
                r.test_fraction
            );
        }
        if let Some(h) = &r.heldout {
            check_file("[router] heldout", h)?;
        }
        if let Some(p) = &r.reference_params {
            check_file("[router] reference_params", p)?;
        }

        // moe
        let m = &self.moe;
        if m.archs.is_empty() {
            bail!("[moe] archs: give at least one of ple, jeet, moe-ce");
        }
        for a in &m.archs {
            if !ARCHS.contains(&a.as_str()) {
                bail!("[moe] archs: unknown {a:?} (ple, jeet, moe-ce)");
            }
        }
        let mut seen = m.archs.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != m.archs.len() {
            bail!("[moe] archs: an architecture is listed twice");
        }
        if m.archs.iter().any(|a| a == "ple") && self.student_domains().len() < 2 {
            bail!("[moe] archs: ple needs at least two students");
        }
        check_model("moe", self.moe_model(), vocab, seq)?;
        positive("[moe] batch_size", m.batch_size)?;
        check_eval("moe", &m.eval)?;
        train_config("moe", &m.train, &self.run)?;

        positive("[grid] batch_size", self.grid.batch_size)?;

        let f = &self.forgetting;
        if f.enabled {
            let Some(c) = &f.config else {
                bail!("[forgetting] config: give the `mome experiment forgetting` config file (or set enabled = false)");
            };
            check_file("[forgetting] config", c)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[test]
    fn paper_config_parses_with_the_paper_sizes() {
        let c = PipelineConfig::load(&repo().join("configs/paper.toml")).unwrap();
        assert_eq!(c.run.precision, Precision::Bf16);
        assert!(matches!(c.run.device, DeviceSpec::Cuda(_)));
        assert_eq!(c.tokenizer.vocab_size, 32000);
        assert_eq!(c.encode.seq_len, 1024);
        let m = crate::train_cmd::model_config(&c.teacher.model, 32000).unwrap();
        assert_eq!((m.n_layer, m.n_embd, m.n_head), (24, 1024, 16));
        let s = crate::train_cmd::model_config(&c.students.model, 32000).unwrap();
        assert_eq!((s.n_layer, s.n_embd, s.n_head), (3, 768, 12));
        assert_eq!(s.n_positions, 1024);
        train_config("teacher", &c.teacher.train, &c.run).unwrap();
        train_config("students", &c.students.train, &c.run).unwrap();
        train_config("moe", &c.moe.train, &c.run).unwrap();
        assert_eq!(c.moe.archs, ["ple", "jeet", "moe-ce"]);
    }

    #[test]
    fn demo_config_parses() {
        let c = PipelineConfig::load(&repo().join("configs/demo.toml")).unwrap();
        assert_eq!(c.data.domains.len(), 4);
        assert!(matches!(c.run.device, DeviceSpec::Cpu));
    }
}
