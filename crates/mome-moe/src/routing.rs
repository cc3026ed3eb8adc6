//! Per-sequence routing: the [`SequenceRouter`] trait, the [`LabelRouter`] and the
//! combination of a routing with a [`Setting`] into each sequence's active experts.
//!
//! The learned router of `mome-router` implements [`SequenceRouter`] (below): its
//! class names, its predicted class index and probabilities for the sequence's token
//! ids, and whether the prediction passed its confidence threshold.
//! [`crate::MoeModel::route_batch`] checks the classes against the experts before
//! routing anything.

use tch::{Kind, Tensor};

use crate::config::{ExpertId, MoeConfig, Setting, UsedExperts};
use crate::error::{Error, Result};

/// What a router says about one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Index into the router's [`SequenceRouter::classes`].
    pub label: usize,
    /// One probability per class (same order as the classes).
    pub probabilities: Vec<f32>,
    /// Whether the router is confident (otherwise the sequence may go to the common
    /// expert alone, see [`MoeConfig::low_confidence_to_common`]).
    pub confident: bool,
}

/// Anything that routes one token sequence to a class (= a domain name).
pub trait SequenceRouter {
    /// Class names, in the order of [`Routing::label`] and
    /// [`Routing::probabilities`]; each must be a domain of the model.
    fn classes(&self) -> &[String];
    /// Routes one sequence of token ids.
    fn route(&self, ids: &[u32]) -> Result<Routing>;
}

impl SequenceRouter for mome_router::Router {
    fn classes(&self) -> &[String] {
        mome_router::Router::classes(self)
    }

    fn route(&self, ids: &[u32]) -> Result<Routing> {
        let r = mome_router::Router::route(self, ids);
        Ok(Routing {
            label: r.index,
            probabilities: r.probabilities.iter().map(|&p| p as f32).collect(),
            confident: r.confident,
        })
    }
}

/// Routes every sequence to one known domain label with probability 1 (training and
/// evaluation on labelled, single-domain shards).
#[derive(Debug, Clone)]
pub struct LabelRouter {
    classes: Vec<String>,
    label: usize,
}

impl LabelRouter {
    /// A router over `classes` that answers `label` for every sequence.
    pub fn new(classes: Vec<String>, label: &str) -> Result<Self> {
        let idx = classes.iter().position(|c| c == label).ok_or_else(|| {
            Error::Routing(format!(
                "label {label:?} is not one of the classes {classes:?}"
            ))
        })?;
        Ok(Self {
            classes,
            label: idx,
        })
    }
}

impl SequenceRouter for LabelRouter {
    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn route(&self, _ids: &[u32]) -> Result<Routing> {
        let mut probabilities = vec![0.0; self.classes.len()];
        probabilities[self.label] = 1.0;
        Ok(Routing {
            label: self.label,
            probabilities,
            confident: true,
        })
    }
}

/// A routing mapped onto the model's experts: what [`crate::MoeModel::forward`]
/// takes per sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertChoice {
    /// The routed domain expert.
    pub expert: usize,
    /// One probability per domain expert (0 for experts the router does not know).
    pub probabilities: Vec<f32>,
    /// Whether the routing is confident.
    pub confident: bool,
}

impl ExpertChoice {
    /// A confident choice of domain expert `expert` among `n_experts`.
    pub fn label(expert: usize, n_experts: usize) -> Self {
        let mut probabilities = vec![0.0; n_experts];
        if expert < n_experts {
            probabilities[expert] = 1.0;
        }
        Self {
            expert,
            probabilities,
            confident: true,
        }
    }
}

/// The map from a router's classes to the model's domain experts, checked before
/// any routing happens.
#[derive(Debug, Clone)]
pub struct ClassMap {
    to_expert: Vec<usize>,
    n_experts: usize,
}

impl ClassMap {
    /// Every class must name a domain of the model; errors list all that do not.
    pub fn new(classes: &[String], cfg: &MoeConfig) -> Result<Self> {
        if classes.is_empty() {
            return Err(Error::Routing("the router has no classes".into()));
        }
        let unknown: Vec<&String> = classes
            .iter()
            .filter(|c| cfg.domain_index(c).is_none())
            .collect();
        if !unknown.is_empty() {
            return Err(Error::Routing(format!(
                "router classes {unknown:?} are not experts of the model (experts: {:?})",
                cfg.domains
            )));
        }
        Ok(Self {
            to_expert: classes
                .iter()
                .map(|c| cfg.domain_index(c).expect("checked"))
                .collect(),
            n_experts: cfg.domains.len(),
        })
    }

    /// Maps one routing onto the experts.
    pub fn choice(&self, r: &Routing) -> Result<ExpertChoice> {
        if r.label >= self.to_expert.len() || r.probabilities.len() != self.to_expert.len() {
            return Err(Error::Routing(format!(
                "routing label {} / {} probabilities do not fit {} classes",
                r.label,
                r.probabilities.len(),
                self.to_expert.len()
            )));
        }
        let mut probabilities = vec![0.0; self.n_experts];
        for (c, p) in r.probabilities.iter().enumerate() {
            probabilities[self.to_expert[c]] += p;
        }
        Ok(ExpertChoice {
            expert: self.to_expert[r.label],
            probabilities,
            confident: r.confident,
        })
    }
}

/// Checks that a router's classes are exactly the model's domains (in any order):
/// every class an expert, every expert a class. Errors name what is missing on
/// either side. (The forward pass itself only needs every class to be an expert.)
pub fn check_router_classes(classes: &[String], cfg: &MoeConfig) -> Result<()> {
    let unknown: Vec<&String> = classes
        .iter()
        .filter(|c| cfg.domain_index(c).is_none())
        .collect();
    let unrouted: Vec<&String> = cfg
        .domains
        .iter()
        .filter(|d| !classes.contains(d))
        .collect();
    if unknown.is_empty() && unrouted.is_empty() {
        return Ok(());
    }
    let mut why = Vec::new();
    if !unknown.is_empty() {
        why.push(format!(
            "router classes {unknown:?} are not experts of the model"
        ));
    }
    if !unrouted.is_empty() {
        why.push(format!("experts {unrouted:?} are not router classes"));
    }
    Err(Error::Routing(format!(
        "the router's classes {classes:?} do not match the experts {:?}: {}",
        cfg.domains,
        why.join("; ")
    )))
}

/// Routes every row of `ids` `[B, T]` with `router`; the classes are checked first.
pub fn route_batch(
    router: &dyn SequenceRouter,
    cfg: &MoeConfig,
    ids: &Tensor,
) -> Result<Vec<ExpertChoice>> {
    let map = ClassMap::new(router.classes(), cfg)?;
    let size = ids.size();
    if size.len() != 2 {
        return Err(Error::Input(format!(
            "ids must be [batch, seq], got {size:?}"
        )));
    }
    let flat = Vec::<i64>::try_from(
        &ids.to_device(tch::Device::Cpu)
            .to_kind(Kind::Int64)
            .reshape([-1]),
    )?;
    let t = size[1] as usize;
    flat.chunks(t.max(1))
        .take(size[0] as usize)
        .map(|row| {
            let row: Vec<u32> = row.iter().map(|&x| x as u32).collect();
            map.choice(&router.route(&row)?)
        })
        .collect()
}

/// A [`Setting`] with expert names resolved against a model; built by
/// [`ResolvedSetting::new`], which checks everything before any work.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSetting {
    /// The setting as given.
    pub setting: Setting,
    /// Domain experts the setting may use, in the setting's order.
    pub used: Vec<usize>,
    /// Whether the common expert is added.
    pub common: bool,
    /// Whether the used experts are averaged.
    pub average: bool,
    low_conf_to_common: bool,
    has_common: bool,
}

impl ResolvedSetting {
    /// Resolves names; errors on unknown domains, a common expert the model lacks, or
    /// a setting that leaves no expert.
    pub fn new(setting: &Setting, cfg: &MoeConfig) -> Result<Self> {
        let used: Vec<usize> = match &setting.used {
            UsedExperts::All => (0..cfg.domains.len()).collect(),
            UsedExperts::None => vec![],
            UsedExperts::Some(names) => {
                let unknown: Vec<&String> = names
                    .iter()
                    .filter(|n| cfg.domain_index(n).is_none())
                    .collect();
                if !unknown.is_empty() {
                    return Err(Error::Routing(format!(
                        "setting {setting} uses {unknown:?}, which are not experts of the model (experts: {:?})",
                        cfg.domains
                    )));
                }
                let mut v: Vec<usize> = Vec::new();
                for n in names {
                    let i = cfg.domain_index(n).expect("checked");
                    if !v.contains(&i) {
                        v.push(i);
                    }
                }
                v
            }
        };
        if setting.common && !cfg.common_expert {
            return Err(Error::Config(format!(
                "setting {setting} needs a common expert; the model has none"
            )));
        }
        if used.is_empty() && !setting.common {
            return Err(Error::Config(format!(
                "setting {setting} uses no expert at all"
            )));
        }
        Ok(Self {
            setting: setting.clone(),
            used,
            common: setting.common,
            average: setting.average,
            low_conf_to_common: cfg.low_confidence_to_common,
            has_common: cfg.common_expert,
        })
    }

    /// The experts one sequence uses, sorted (domain experts first, then common).
    pub fn active(&self, choice: &ExpertChoice) -> Vec<ExpertId> {
        let mut out = Vec::new();
        if self.average {
            out.extend(self.used.iter().map(|&i| ExpertId::Domain(i)));
        } else if !self.used.is_empty() {
            if !choice.confident && self.low_conf_to_common && self.has_common {
                return vec![ExpertId::Common];
            }
            let pick = if self.used.contains(&choice.expert) {
                choice.expert
            } else {
                let p = |i: usize| choice.probabilities.get(i).copied().unwrap_or(0.0);
                let mut best = self.used[0];
                for &u in &self.used[1..] {
                    if p(u) > p(best) {
                        best = u;
                    }
                }
                best
            };
            out.push(ExpertId::Domain(pick));
        }
        if self.common {
            out.push(ExpertId::Common);
        }
        out.sort();
        out
    }
}
