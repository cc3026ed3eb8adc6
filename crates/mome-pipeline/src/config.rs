//! The pipeline config (`mome pipeline --config FILE.toml`): one section per stage,
//! each built from the library job types (model shapes, training settings,
//! distillation settings, the KD comparison, the forgetting study), parsed once with
//! unknown keys rejected and checked as a whole ([`PipelineConfig::check`]) before
//! any stage runs. Every key, its default and its range: `docs/pipeline.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mome_core::job::EvalParams;
use mome_core::{DeviceSpec, Precision, TrainConfig};
use mome_data::balance::Strategy;
use mome_data::sampler::SamplerKind;
use mome_distill::experiment::StrategyKind;
use mome_distill::{DistillSettings, KdLoss};
use mome_experts::ModelSpec;
use mome_moe::forgetting::ForgettingParams;
use mome_moe::Arch;
use mome_router::ClassifierKind;
use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, Result};

/// The whole pipeline config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Device, precision and seed shared by every stage and every model.
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
    pub teacher: TeacherStage,
    /// One student per domain distilled from the teacher (stage `students`).
    pub students: StudentsStage,
    /// The fixed / adaptive alpha KD comparison (stage `students`).
    #[serde(default)]
    pub kd: KdStage,
    /// The domain router (stage `router`).
    #[serde(default)]
    pub router: RouterSection,
    /// PLE, JEET and MoE-CE models (stage `moe`).
    pub moe: MoeStage,
    /// The 21-setting evaluation grid (stage `grid`).
    #[serde(default)]
    pub grid: GridSection,
    /// The catastrophic forgetting study (stage `forgetting`).
    #[serde(default)]
    pub forgetting: ForgettingStage,
}

/// `[run]`
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// `auto` | `cpu` | `cuda` | `cuda:N`.
    #[serde(default)]
    pub device: DeviceSpec,
    /// `fp32` | `bf16` (bf16 needs CUDA); every model of every stage, frozen teachers
    /// included.
    #[serde(default)]
    pub precision: Precision,
    /// Seed of the data split and of every training run.
    #[serde(default)]
    pub seed: u64,
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
fn default_vocab() -> usize {
    32000
}
fn default_min_frequency() -> u64 {
    2
}
fn default_seq_len() -> usize {
    1024
}
fn default_sampler() -> SamplerKind {
    // `mome train`'s `[data] sampler` default, from its one place.
    mome_core::job::DataParams::new("", 1).sampler
}
fn default_true() -> bool {
    true
}
fn default_alpha() -> f64 {
    // `mome experiment kd`'s `[kd] alpha` default, from its one place.
    mome_distill::experiment::KdSection::default().alpha
}
fn default_eval_batch() -> usize {
    EvalParams::default().batch_size
}

/// `[data]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// NAME = PATH (a JSONL / Parquet file or a folder) per domain.
    pub domains: BTreeMap<String, PathBuf>,
    /// Optional separate validation input per domain (NAME = PATH).
    #[serde(default)]
    pub valid: BTreeMap<String, PathBuf>,
    /// `tokenizer.json` used to count tokens while balancing.
    pub count_tokenizer: PathBuf,
    /// Fraction of each domain's records moved to validation (default 0.1).
    #[serde(default = "default_valid_fraction")]
    pub valid_fraction: f64,
    /// Allowed spread between the domains' token totals, in percent (default 5).
    #[serde(default = "default_max_diff")]
    pub max_diff_percent: f64,
    /// `reference` | `subset` | `truncate` (default: the balancer's choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Keep only ids present in every domain (the method's `--common_articles`).
    #[serde(default)]
    pub common_articles: bool,
    /// Text field of JSONL / Parquet records (default `text`).
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// Id field of JSONL / Parquet records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_field: Option<String>,
}

/// `[tokenizer]`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSection {
    /// Vocabulary size (default 32000).
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Minimum pair frequency of a merge (default 2).
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeSection {
    /// Tokens per sequence (default 1024).
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
}

impl Default for EncodeSection {
    fn default() -> Self {
        Self {
            seq_len: default_seq_len(),
        }
    }
}

/// A stage's `[*.train]`: mome-core's [`TrainConfig`] without `precision`, `seed`
/// and `quiet`, which come from `[run]` and the command line.
fn stage_train<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<TrainConfig, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    if let Some(obj) = v.as_object() {
        for k in ["precision", "seed", "quiet"] {
            if obj.contains_key(k) {
                return Err(serde::de::Error::custom(format!(
                    "{k}: set it in [run] (it applies to every stage)"
                )));
            }
        }
    }
    serde_json::from_value(v).map_err(serde::de::Error::custom)
}

/// `[teacher]`: the GPT-2 trained on every domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherStage {
    /// The shape: a preset and/or Hugging Face GPT-2 fields.
    pub model: ModelSpec,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// `balanced` | `mixed` (default) | `blocks` | `sequential`.
    #[serde(default = "default_sampler")]
    pub sampler: SamplerKind,
    /// Validation during and after training.
    #[serde(default)]
    pub eval: EvalParams,
    /// Training (`precision` and `seed` come from `[run]`).
    #[serde(deserialize_with = "stage_train")]
    pub train: TrainConfig,
}

/// `[students]`: one student per domain, distilled from the teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentsStage {
    /// Domains with a student (default: every `[data]` domain).
    #[serde(default)]
    pub domains: Vec<String>,
    /// The student shape.
    pub model: ModelSpec,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Validation.
    #[serde(default)]
    pub eval: EvalParams,
    /// Loss, temperature, strategy and KD chunk of every distillation of the run
    /// (students, the KD comparison's temperature and chunk, JEET / MoE-CE).
    #[serde(default)]
    pub distill: DistillSettings,
    /// Training (`precision` and `seed` come from `[run]`).
    #[serde(deserialize_with = "stage_train")]
    pub train: TrainConfig,
}

fn default_kd_losses() -> Vec<KdLoss> {
    vec![KdLoss::ForwardKl]
}
fn default_kd_strategies() -> Vec<StrategyKind> {
    vec![StrategyKind::Fixed, StrategyKind::Adaptive]
}

/// `[kd]`: the KD comparison (`mome experiment kd`) run in the `students` stage. Its
/// temperature and KD chunk are `[students.distill]`'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdStage {
    /// Run it (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Strategies compared (CE only always runs; default fixed and adaptive).
    #[serde(default = "default_kd_strategies")]
    pub strategies: Vec<StrategyKind>,
    /// KD losses compared (default forward KL).
    #[serde(default = "default_kd_losses")]
    pub losses: Vec<KdLoss>,
    /// `alpha` of the fixed runs, initial `alpha` of the adaptive runs (default 0.5).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Adaptive history length (default `max(20, max_steps / 100)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<usize>,
    /// Steps of every run (default `[students.train] max_steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Seeds: every run repeated with each, mean ± sd in the report (default: the
    /// run's seed once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
}

impl Default for KdStage {
    fn default() -> Self {
        Self {
            enabled: true,
            strategies: default_kd_strategies(),
            losses: default_kd_losses(),
            alpha: default_alpha(),
            history: None,
            max_steps: None,
            seeds: Vec::new(),
        }
    }
}

fn default_classifier() -> ClassifierKind {
    ClassifierKind::Logreg
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

/// `[router]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    /// The MoE's router: `logreg` (default) | `nb` | `svm` | `tree`.
    #[serde(default = "default_classifier")]
    pub classifier: ClassifierKind,
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
    /// Compare every classifier (confusion matrices) (default true).
    #[serde(default = "default_true")]
    pub compare: bool,
    /// Fraction of documents held out for the comparison's in-domain test.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Folder of held-out JSONL files from other sources (label = file stem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout: Option<PathBuf>,
    /// The paper's scikit-learn router export, added to the comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_params: Option<PathBuf>,
}

impl Default for RouterSection {
    fn default() -> Self {
        Self {
            classifier: default_classifier(),
            passage_lengths: default_passages(),
            max_per_class: default_max_per_class(),
            min_df: default_min_df(),
            max_features: default_max_features(),
            compare: true,
            test_fraction: default_test_fraction(),
            heldout: None,
            reference_params: None,
        }
    }
}

fn default_archs() -> Vec<Arch> {
    vec![Arch::Ple, Arch::Jeet, Arch::MoeCe]
}

/// `[moe]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeStage {
    /// Models made: `ple` (from the students), `jeet`, `moe-ce`.
    #[serde(default = "default_archs")]
    pub archs: Vec<Arch>,
    /// Expert shape of JEET / MoE-CE (default: `[students.model]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// Sequences per single-domain batch (JEET / MoE-CE).
    pub batch_size: usize,
    /// Non-confident routings go to the common expert alone (default true).
    #[serde(default = "default_true")]
    pub low_confidence_to_common: bool,
    /// Train JEET / MoE-CE by KD from the teacher with `[students.distill]`
    /// (default true); false: cross-entropy on the data.
    #[serde(default = "default_true")]
    pub kd: bool,
    /// Validation during training.
    #[serde(default)]
    pub eval: EvalParams,
    /// Training of JEET / MoE-CE (`precision` and `seed` come from `[run]`).
    #[serde(deserialize_with = "stage_train")]
    pub train: TrainConfig,
}

/// `[grid]`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSection {
    /// Validation sequences per domain and setting (0 = all).
    #[serde(default)]
    pub max_sequences: usize,
    /// Sequences per forward pass.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Route every sequence with the router stage's router (and report routing
    /// accuracy) (default true); false: route by the domain label.
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgettingStage {
    /// Run the study (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Its `mome experiment forgetting` config file (required when enabled); read
    /// into [`ForgettingParams`] with [`PipelineConfig::load`]. The shards,
    /// tokenizer, device, precision and seed are this run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
    /// The study's settings, from `config` (filled by [`PipelineConfig::load`]).
    #[serde(skip)]
    pub params: Option<ForgettingParams>,
}

impl Default for ForgettingStage {
    fn default() -> Self {
        Self {
            enabled: true,
            config: None,
            params: None,
        }
    }
}

fn check_file(what: &str, p: &Path) -> Result<()> {
    if !p.exists() {
        return Err(Error::Config(format!(
            "{what}: {} does not exist",
            p.display()
        )));
    }
    Ok(())
}

fn range_f(what: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if !v.is_finite() || v < lo || v > hi {
        return Err(Error::Config(format!(
            "{what} = {v}: must be in [{lo}, {hi}]"
        )));
    }
    Ok(())
}

fn positive(what: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::Config(format!("{what} must be > 0")));
    }
    Ok(())
}

/// Adds `section` to an error of a library check.
fn within<T, E: std::fmt::Display>(section: &str, r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| Error::Config(format!("invalid [{section}]: {e}")))
}

impl PipelineConfig {
    /// Reads a pipeline config file (unknown keys are errors naming the key), makes
    /// its paths absolute (relative to the current directory, as every mome config)
    /// and reads the forgetting study's config.
    pub fn load(path: &Path) -> Result<Self> {
        let mut cfg: PipelineConfig = mome_core::job::read_toml(path)?;
        let abs = |p: &mut PathBuf| -> Result<()> {
            *p = std::path::absolute(&*p).map_err(|e| Error::io(&*p, e))?;
            Ok(())
        };
        for p in cfg.data.domains.values_mut() {
            abs(p)?;
        }
        for p in cfg.data.valid.values_mut() {
            abs(p)?;
        }
        abs(&mut cfg.data.count_tokenizer)?;
        for p in [
            cfg.router.heldout.as_mut(),
            cfg.router.reference_params.as_mut(),
            cfg.forgetting.config.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            abs(p)?;
        }
        if let (true, Some(c)) = (cfg.forgetting.enabled, &cfg.forgetting.config) {
            check_file("[forgetting] config", c)?;
            cfg.forgetting.params = Some(mome_core::job::read_toml(c)?);
        }
        Ok(cfg)
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
    pub fn moe_model(&self) -> &ModelSpec {
        self.moe.model.as_ref().unwrap_or(&self.students.model)
    }

    /// A stage's training settings with `[run]`'s precision and seed.
    pub fn train(&self, t: &TrainConfig) -> TrainConfig {
        let mut t = t.clone();
        t.precision = self.run.precision;
        t.seed = self.run.seed;
        t
    }

    /// Every check that can run before any stage: ranges, names, files, and each
    /// stage's model shape and training settings (the checks that need the shards
    /// run when the stage builds its job).
    pub fn check(&self) -> Result<()> {
        let d = &self.data;
        if d.domains.len() < 2 {
            return Err(Error::Config(
                "[data] domains: give at least two domains (NAME = PATH)".into(),
            ));
        }
        for (name, p) in &d.domains {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(Error::Config(format!(
                    "[data] domains: name {name:?} must be letters, digits, '_' or '-'"
                )));
            }
            check_file(&format!("[data] domains.{name}"), p)?;
        }
        for (name, p) in &d.valid {
            if !d.domains.contains_key(name) {
                return Err(Error::Config(format!(
                    "[data] valid.{name}: no domain named {name:?} in [data] domains"
                )));
            }
            check_file(&format!("[data] valid.{name}"), p)?;
        }
        check_file("[data] count_tokenizer", &d.count_tokenizer)?;
        range_f("[data] valid_fraction", d.valid_fraction, 0.0, 0.9)?;
        if d.valid.is_empty() && d.valid_fraction == 0.0 {
            return Err(Error::Config("[data] valid_fraction = 0 and no [data] valid: the later stages need a validation split".into()));
        }
        range_f("[data] max_diff_percent", d.max_diff_percent, 0.0, 1000.0)?;
        let t = &self.tokenizer;
        if !(256..=65535).contains(&t.vocab_size) {
            return Err(Error::Config(format!(
                "[tokenizer] vocab_size = {}: must be in [256, 65535]",
                t.vocab_size
            )));
        }
        if t.min_frequency == 0 {
            return Err(Error::Config(
                "[tokenizer] min_frequency must be > 0".into(),
            ));
        }
        let seq = self.encode.seq_len;
        if !(8..=65536).contains(&seq) {
            return Err(Error::Config(format!(
                "[encode] seq_len = {seq}: must be in [8, 65536]"
            )));
        }
        if self.run.precision == Precision::Bf16 && !matches!(self.run.device, DeviceSpec::Cuda(_))
        {
            return Err(Error::Config(
                "[run] precision = \"bf16\" needs device = \"cuda\" (or \"cuda:N\")".into(),
            ));
        }
        let vocab = t.vocab_size;
        let model = |section: &str, m: &ModelSpec| -> Result<()> {
            let cfg = within(&format!("{section}.model"), m.resolve(vocab))?;
            if (cfg.vocab_size as usize) < vocab {
                return Err(Error::Config(format!(
                    "[{section}.model] vocab_size = {} is smaller than [tokenizer] vocab_size = {vocab}",
                    cfg.vocab_size
                )));
            }
            if (cfg.n_positions as usize) < seq {
                return Err(Error::Config(format!(
                    "[{section}.model] n_positions = {} is smaller than [encode] seq_len = {seq}",
                    cfg.n_positions
                )));
            }
            Ok(())
        };
        let train = |section: &str, tc: &TrainConfig| -> Result<()> {
            within(&format!("{section}.train"), self.train(tc).validate())
        };
        let eval = |section: &str, e: &EvalParams| -> Result<()> {
            within(&format!("{section}.eval"), e.validate())
        };

        model("teacher", &self.teacher.model)?;
        positive("[teacher] batch_size", self.teacher.batch_size)?;
        eval("teacher", &self.teacher.eval)?;
        train("teacher", &self.teacher.train)?;

        for s in &self.students.domains {
            if !d.domains.contains_key(s) {
                return Err(Error::Config(format!(
                    "[students] domains: {s:?} is not in [data] domains"
                )));
            }
        }
        model("students", &self.students.model)?;
        positive("[students] batch_size", self.students.batch_size)?;
        eval("students", &self.students.eval)?;
        train("students", &self.students.train)?;
        within("students.distill", self.students.distill.validate())?;

        let k = &self.kd;
        if k.enabled {
            within("kd", self.kd_section().validate())?;
            if let Some(m) = k.max_steps {
                if m == 0 {
                    return Err(Error::Config("[kd] max_steps must be > 0".into()));
                }
                if self.students.train.warmup_steps > m {
                    return Err(Error::Config(format!(
                        "[kd] max_steps = {m} is below [students.train] warmup_steps = {}",
                        self.students.train.warmup_steps
                    )));
                }
            }
        }

        let r = &self.router;
        if r.passage_lengths.is_empty() || r.passage_lengths.contains(&0) {
            return Err(Error::Config(
                "[router] passage_lengths: give lengths > 0".into(),
            ));
        }
        positive("[router] max_per_class", r.max_per_class)?;
        positive("[router] min_df", r.min_df)?;
        positive("[router] max_features", r.max_features)?;
        if !(r.test_fraction > 0.0 && r.test_fraction < 1.0) {
            return Err(Error::Config(format!(
                "[router] test_fraction = {}: must be in (0, 1)",
                r.test_fraction
            )));
        }
        if let Some(h) = &r.heldout {
            check_file("[router] heldout", h)?;
        }
        if let Some(p) = &r.reference_params {
            check_file("[router] reference_params", p)?;
        }

        let m = &self.moe;
        if m.archs.is_empty() {
            return Err(Error::Config(
                "[moe] archs: give at least one of ple, jeet, moe-ce".into(),
            ));
        }
        let mut seen = m.archs.clone();
        seen.sort_by_key(|a| a.name());
        seen.dedup();
        if seen.len() != m.archs.len() {
            return Err(Error::Config(
                "[moe] archs: an architecture is listed twice".into(),
            ));
        }
        if m.archs.contains(&Arch::Ple) && self.student_domains().len() < 2 {
            return Err(Error::Config(
                "[moe] archs: ple needs at least two students".into(),
            ));
        }
        model("moe", self.moe_model())?;
        positive("[moe] batch_size", m.batch_size)?;
        eval("moe", &m.eval)?;
        train("moe", &m.train)?;

        positive("[grid] batch_size", self.grid.batch_size)?;

        let f = &self.forgetting;
        if f.enabled {
            let Some(p) = &f.params else {
                return Err(Error::Config("[forgetting] config: give the `mome experiment forgetting` config file (or set enabled = false)".into()));
            };
            within("forgetting", self.train(&p.train).validate())?;
            within("forgetting", p.student.resolve(vocab))?;
        }
        Ok(())
    }

    /// The KD comparison's `[kd]` of mome-distill: this section's strategies, losses
    /// and alpha with `[students.distill]`'s temperature and KD chunk.
    pub fn kd_section(&self) -> mome_distill::experiment::KdSection {
        mome_distill::experiment::KdSection {
            temperature: self.students.distill.temperature,
            alpha: self.kd.alpha,
            history: self.kd.history,
            losses: self.kd.losses.clone(),
            strategies: self.kd.strategies.clone(),
            kd_chunk: self.students.distill.kd_chunk,
            seeds: self.kd.seeds.clone(),
        }
    }
}
