//! MoE configuration (`moe_config.json`) and the combination settings of method §6–§7.

use std::fmt;
use std::str::FromStr;

use mome_experts::Gpt2Config;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name of the common expert in settings, reports and folder names.
pub const COMMON: &str = "common";

/// How the experts were obtained (method §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// Pre-trained Language Experts: separately distilled students, frozen. Each
    /// expert keeps its own token/position embedding and LM head.
    Ple,
    /// Joint Expert Embedding Training: one shared embedding and head, experts
    /// trained jointly on single-domain batches.
    Jeet,
    /// JEET plus a common expert trained on every batch.
    #[serde(alias = "moe_ce")]
    MoeCe,
}

impl Arch {
    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Ple => "ple",
            Arch::Jeet => "jeet",
            Arch::MoeCe => "moe-ce",
        }
    }

    /// Whether the experts share one token/position embedding and LM head.
    pub fn shared_embeddings(self) -> bool {
        !matches!(self, Arch::Ple)
    }
}

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ple" => Ok(Arch::Ple),
            "jeet" => Ok(Arch::Jeet),
            "moe-ce" | "moe_ce" => Ok(Arch::MoeCe),
            other => Err(Error::Config(format!(
                "unknown arch {other:?} (expected ple, jeet or moe-ce)"
            ))),
        }
    }
}

fn default_true() -> bool {
    true
}

/// The whole MoE configuration, written as `moe_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeConfig {
    /// How the experts were obtained.
    pub arch: Arch,
    /// Domain names, one expert each, in expert order (any number >= 1).
    pub domains: Vec<String>,
    /// Shape of every expert (and of the common expert). `vocab_size`, `n_embd` and
    /// `n_positions` are those of the shared embedding; `tie_word_embeddings` decides
    /// whether the LM head is the token embedding (true) or a separate matrix.
    pub expert: Gpt2Config,
    /// Whether the model has a common expert (MoE-CE; optional for PLE).
    pub common_expert: bool,
    /// Sequences whose routing is not confident go to the common expert alone (when
    /// the model has one) in routed settings.
    #[serde(default = "default_true")]
    pub low_confidence_to_common: bool,
}

impl MoeConfig {
    /// Checks domain names, the expert shape and the arch/common combination.
    pub fn validate(&self) -> Result<()> {
        if self.domains.is_empty() {
            return Err(Error::Config("at least one domain is needed".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in &self.domains {
            if !mome_data::shards::valid_domain_name(d) || d.contains('.') {
                return Err(Error::Config(format!(
                    "domain name {d:?} is not valid (letters, digits, '_' or '-')"
                )));
            }
            if d == COMMON {
                return Err(Error::Config(format!(
                    "domain name {COMMON:?} is reserved for the common expert"
                )));
            }
            if !seen.insert(d) {
                return Err(Error::Config(format!("domain {d:?} is listed twice")));
            }
        }
        self.expert.validate()?;
        match (self.arch, self.common_expert) {
            (Arch::MoeCe, false) => Err(Error::Config(
                "arch moe-ce needs common_expert = true".into(),
            )),
            (Arch::Jeet, true) => Err(Error::Config(
                "arch jeet has no common expert (use moe-ce)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Index of a domain's expert.
    pub fn domain_index(&self, name: &str) -> Option<usize> {
        self.domains.iter().position(|d| d == name)
    }
}

/// One expert of the model: a domain expert (index into the domains) or the common one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ExpertId {
    /// The expert of domain `i`.
    Domain(usize),
    /// The common expert.
    Common,
}

/// Which domain experts a setting may use (method §7's `used_experts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsedExperts {
    /// Every domain expert.
    All,
    /// No domain expert (only the common expert answers).
    None,
    /// These domain experts, by name.
    Some(Vec<String>),
}

/// A combination setting `(common, used_experts, average)` of method §7.
///
/// - `average = false`, `used` non-empty: each sequence goes to its routed expert if
///   it is in `used`, otherwise to the `used` expert with the highest routing
///   probability (ties: first in `used`); plus the common expert when `common`.
///   A non-confident routing goes to the common expert alone when the model has one
///   and `low_confidence_to_common` is set.
/// - `average = true`: every sequence uses all experts of `used` (plus the common one
///   when `common`), whatever the routing.
/// - `used = none`: the common expert alone (`common` must be true).
///
/// The output hidden state is the mean of the active experts' final hidden states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    /// Include the common expert.
    pub common: bool,
    /// Domain experts that may be used.
    pub used: UsedExperts,
    /// Average all used experts instead of picking the routed one.
    pub average: bool,
}

impl Setting {
    /// The routed expert alone, plus the common expert when `common`.
    pub fn routed(common: bool) -> Self {
        Self {
            common,
            used: UsedExperts::All,
            average: false,
        }
    }

    /// A short label, e.g. `common=T used=en+py average=F`.
    pub fn label(&self) -> String {
        let tf = |b: bool| if b { "T" } else { "F" };
        format!(
            "common={} used={} average={}",
            tf(self.common),
            self.used_str(),
            tf(self.average)
        )
    }

    fn used_str(&self) -> String {
        match &self.used {
            UsedExperts::All => "all".into(),
            UsedExperts::None => "none".into(),
            UsedExperts::Some(v) => v.join("+"),
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "common={},used={},average={}",
            self.common,
            self.used_str(),
            self.average
        )
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" => Ok(true),
        "false" | "f" | "0" | "no" => Ok(false),
        _ => Err(Error::Config(format!(
            "setting {key}={v:?}: expected true or false"
        ))),
    }
}

impl FromStr for Setting {
    type Err = Error;

    /// Parses `common=true,used=en+py,average=false` (keys in any order; `used`
    /// is `all`, `none` or names joined by `+`; missing keys: common=false,
    /// used=all, average=false).
    fn from_str(s: &str) -> Result<Self> {
        let mut out = Setting::routed(false);
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("setting part {part:?} is not key=value")))?;
            let (k, v) = (k.trim(), v.trim());
            match k {
                "common" => out.common = parse_bool(k, v)?,
                "average" => out.average = parse_bool(k, v)?,
                "used" => {
                    out.used = match v {
                        "all" => UsedExperts::All,
                        "none" | "" => UsedExperts::None,
                        list => UsedExperts::Some(
                            list.split('+').map(|x| x.trim().to_string()).collect(),
                        ),
                    }
                }
                other => {
                    return Err(Error::Config(format!(
                        "unknown setting key {other:?} (expected common, used, average)"
                    )))
                }
            }
        }
        Ok(out)
    }
}

/// The 21 settings of method §7, in the method's order, as
/// `(common expert, used experts, average)`.
pub const PAPER_GRID: [(bool, &[&str], bool); 21] = [
    (false, &["en", "fr", "de", "py"], false),
    (false, &["en"], false),
    (true, &["en"], false),
    (false, &["fr"], false),
    (true, &["fr"], false),
    (false, &["de"], false),
    (true, &["de"], false),
    (false, &["py"], false),
    (true, &["py"], false),
    (true, &["en", "fr", "de", "py"], false),
    (true, &[], false),
    (false, &["en", "py"], false),
    (false, &["fr", "py"], false),
    (false, &["de", "py"], false),
    (false, &["en", "py"], true),
    (false, &["fr", "py"], true),
    (false, &["de", "py"], true),
    (true, &["en", "py"], false),
    (true, &["fr", "py"], false),
    (true, &["de", "py"], false),
    (false, &["en", "fr", "de", "py"], true),
];

/// [`PAPER_GRID`] as settings.
pub fn paper_grid() -> Vec<Setting> {
    PAPER_GRID
        .iter()
        .map(|(common, used, average)| Setting {
            common: *common,
            used: if used.is_empty() {
                UsedExperts::None
            } else {
                UsedExperts::Some(used.iter().map(|s| s.to_string()).collect())
            },
            average: *average,
        })
        .collect()
}
