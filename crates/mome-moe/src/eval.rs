//! Evaluation of combination settings (method §7): per-domain validation loss and
//! perplexity, active and total parameters, throughput, time; Markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use mome_data::shards::ShardSet;
use mome_experts::eval::EvalBatch;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::config::{Setting, UsedExperts};
use crate::error::{Error, Result};
use crate::model::MoeModel;
use crate::routing::{ExpertChoice, ResolvedSetting, SequenceRouter};

/// Figures of one domain under one setting (the same as a single model's).
pub use mome_experts::eval::DomainEval;

/// Figures of one setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingEval {
    /// Position in the list of settings (1-based).
    pub index: usize,
    /// The setting.
    pub setting: Setting,
    /// Why the setting was not run (e.g. it needs a common expert the model lacks).
    pub skipped: Option<String>,
    /// domain -> figures.
    pub domains: BTreeMap<String, DomainEval>,
    /// Token-weighted mean loss over the domains (NaN for a skipped setting, written
    /// as `null` in JSON).
    #[serde(deserialize_with = "nan_if_null")]
    pub mean_loss: f64,
    /// Parameters a sequence runs through (largest over the evaluated sequences).
    pub active_parameters: i64,
    /// Sequences handled by each expert (an averaged sequence counts for each).
    pub expert_sequences: BTreeMap<String, usize>,
    /// Routing accuracy against the domain labels (only with a router).
    pub routing_accuracy: Option<f64>,
    /// Target tokens per second.
    pub tokens_per_second: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Reads a number, or `null` as NaN (how serde_json writes a NaN).
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Routing of one domain's sequences against the domain label.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainRouting {
    /// Sequences routed.
    pub sequences: usize,
    /// Sequences routed to the expert of their own domain.
    pub correct: usize,
    /// `correct / sequences`.
    pub accuracy: f64,
    /// Sequences whose routing was confident.
    pub confident: usize,
    /// Routed expert -> sequences.
    pub predicted: BTreeMap<String, usize>,
}

/// Routing accuracy of a router against the shards' domain labels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutingEval {
    /// The router's classes.
    pub classes: Vec<String>,
    /// Correct / routed over all domains.
    pub accuracy: f64,
    /// Sequences routed over all domains.
    pub sequences: usize,
    /// Per domain of the split.
    pub domains: BTreeMap<String, DomainRouting>,
}

/// What `mome moe eval` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// The split evaluated.
    pub split: String,
    /// Architecture of the model.
    pub arch: String,
    /// Distinct parameters of the whole model.
    pub total_parameters: i64,
    /// Sequences per domain evaluated (0 = all).
    pub max_sequences: usize,
    /// One entry per setting, in order.
    pub settings: Vec<SettingEval>,
    /// Routing accuracy per domain (only with a router).
    pub routing: Option<RoutingEval>,
}

/// How [`evaluate_settings`] reads the shards.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The split evaluated (normally `validation`).
    pub split: String,
    /// Sequences per domain (0 = all).
    pub max_sequences: usize,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Report settings that need a missing common expert as skipped instead of failing.
    pub skip_unavailable: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            split: "validation".into(),
            max_sequences: 0,
            batch_size: 8,
            skip_unavailable: false,
        }
    }
}

/// Evaluates `settings` on every domain of `opts.split`.
///
/// Sequences of domain `d` are routed to `d`'s expert by label (or by `router` when
/// given, which then also yields routing accuracy), then combined by each setting.
/// Everything is checked before any forward pass: every domain of the split must be
/// an expert, the router's classes must be experts, settings must name experts.
/// With `skip_unavailable`, settings that need a common expert the model lacks are
/// reported as skipped instead of failing.
pub fn evaluate_settings(
    model: &MoeModel,
    shards: &ShardSet,
    settings: &[Setting],
    opts: &EvalOptions,
    router: Option<&dyn SequenceRouter>,
) -> Result<EvalReport> {
    let EvalOptions {
        ref split,
        max_sequences,
        batch_size,
        skip_unavailable,
    } = *opts;
    let split = split.as_str();
    if batch_size == 0 {
        return Err(Error::Config("evaluation batch_size must be > 0".into()));
    }
    let cfg = model.config();
    shards.check_vocab(cfg.expert.vocab_size as usize)?;
    if shards.seq_len() as i64 > cfg.expert.n_positions {
        return Err(Error::Config(format!(
            "the shards hold {}-token sequences but the experts have only {} positions",
            shards.seq_len(),
            cfg.expert.n_positions
        )));
    }
    let domains = shards.domains(split)?;
    let unknown: Vec<&String> = domains
        .iter()
        .filter(|d| cfg.domain_index(d).is_none())
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Routing(format!(
            "split {split} has domains {unknown:?} without an expert (experts: {:?})",
            cfg.domains
        )));
    }
    let class_map = match router {
        Some(r) => Some(crate::routing::ClassMap::new(r.classes(), cfg)?),
        None => None,
    };
    let mut resolved = Vec::new();
    for s in settings {
        match ResolvedSetting::new(s, cfg) {
            Ok(r) => resolved.push(Ok(r)),
            Err(Error::Config(m)) if skip_unavailable && s.common && !cfg.common_expert => {
                resolved.push(Err(m))
            }
            Err(e) => return Err(e),
        }
    }
    let seq_len = shards.seq_len();
    let device = model.device();
    let n = cfg.domains.len();
    let _guard = tch::no_grad_guard();
    // Route every evaluated sequence once; every setting reuses the choices.
    let mut routed: BTreeMap<String, Vec<ExpertChoice>> = BTreeMap::new();
    let mut routing_eval = None;
    if let (Some(r), Some(map)) = (router, &class_map) {
        let mut per = BTreeMap::new();
        let (mut all_ok, mut all_n) = (0usize, 0usize);
        for domain in &domains {
            let label = cfg.domain_index(domain).expect("checked");
            let reader = shards.reader(split, domain)?;
            let count = match max_sequences {
                0 => reader.len(),
                m => m.min(reader.len()),
            };
            let mut buf = vec![0i64; seq_len];
            let mut choices = Vec::with_capacity(count);
            let mut d = DomainRouting {
                sequences: count,
                correct: 0,
                accuracy: 0.0,
                confident: 0,
                predicted: BTreeMap::new(),
            };
            for i in 0..count {
                reader.read_into_i64(i, &mut buf)?;
                let ids: Vec<u32> = buf.iter().map(|&x| x as u32).collect();
                let c = map.choice(&r.route(&ids)?)?;
                d.correct += usize::from(c.expert == label);
                d.confident += usize::from(c.confident);
                *d.predicted
                    .entry(cfg.domains[c.expert].clone())
                    .or_default() += 1;
                choices.push(c);
            }
            d.accuracy = d.correct as f64 / count.max(1) as f64;
            all_ok += d.correct;
            all_n += count;
            per.insert(domain.clone(), d);
            routed.insert(domain.clone(), choices);
        }
        routing_eval = Some(RoutingEval {
            classes: r.classes().to_vec(),
            accuracy: all_ok as f64 / all_n.max(1) as f64,
            sequences: all_n,
            domains: per,
        });
    }
    let mut out = Vec::new();
    for (index, (s, r)) in settings.iter().zip(resolved).enumerate() {
        let setting = match r {
            Ok(r) => r,
            Err(why) => {
                out.push(SettingEval {
                    index: index + 1,
                    setting: s.clone(),
                    skipped: Some(why),
                    domains: BTreeMap::new(),
                    mean_loss: f64::NAN,
                    active_parameters: 0,
                    expert_sequences: BTreeMap::new(),
                    routing_accuracy: None,
                    tokens_per_second: 0.0,
                    seconds: 0.0,
                });
                continue;
            }
        };
        let mut active_parameters = 0i64;
        let mut usage: BTreeMap<String, usize> = BTreeMap::new();
        let r = mome_experts::eval::eval_shards(
            shards,
            split,
            max_sequences,
            batch_size,
            device,
            &mut |b: &EvalBatch<'_>| -> Result<(Tensor, i64)> {
                let rows = b.ids.size()[0] as usize;
                let label = cfg
                    .domain_index(b.domain)
                    .ok_or_else(|| Error::Routing(format!("domain {} has no expert", b.domain)))?;
                let choices = match routed.get(b.domain) {
                    Some(c) => c[b.start..b.start + rows].to_vec(),
                    None => vec![ExpertChoice::label(label, n); rows],
                };
                let o = model.forward_resolved(b.ids, &choices, &setting, false)?;
                for a in &o.active {
                    active_parameters = active_parameters.max(model.active_parameters(a)?);
                    for id in a {
                        *usage.entry(model.expert_name(*id).to_string()).or_default() += 1;
                    }
                }
                Ok(mome_experts::causal_lm_loss_sum(&o.logits, b.ids, None)?)
            },
        )?;
        out.push(SettingEval {
            index: index + 1,
            setting: s.clone(),
            skipped: None,
            domains: r.domains,
            mean_loss: r.mean_loss,
            active_parameters,
            expert_sequences: usage,
            routing_accuracy: routing_eval.as_ref().map(|r| r.accuracy),
            tokens_per_second: r.tokens_per_second,
            seconds: r.seconds,
        });
    }
    Ok(EvalReport {
        split: split.to_string(),
        arch: model.arch().name().to_string(),
        total_parameters: model.total_parameters(),
        max_sequences,
        settings: out,
        routing: routing_eval,
    })
}

impl EvalReport {
    /// A Markdown table: one row per setting, loss (perplexity) per domain.
    pub fn to_markdown(&self) -> String {
        let domains: Vec<String> = self
            .settings
            .iter()
            .find(|s| s.skipped.is_none())
            .map(|s| s.domains.keys().cloned().collect())
            .unwrap_or_default();
        let mut md = String::new();
        let _ = writeln!(
            md,
            "MoE evaluation ({}, split {}, total parameters {}, {} sequences per domain)\n",
            self.arch,
            self.split,
            self.total_parameters,
            if self.max_sequences == 0 {
                "all".to_string()
            } else {
                format!("at most {}", self.max_sequences)
            }
        );
        let mut head = "| # | common | used experts | average |".to_string();
        let mut rule = "|---|---|---|---|".to_string();
        for d in &domains {
            let _ = write!(head, " {d} loss (ppl) |");
            rule.push_str("---|");
        }
        head.push_str(" mean loss | active params | tokens/s | seconds |");
        rule.push_str("---|---|---|---|");
        let _ = writeln!(md, "{head}\n{rule}");
        for s in &self.settings {
            let used = match &s.setting.used {
                UsedExperts::All => "all".to_string(),
                UsedExperts::None => "none".to_string(),
                UsedExperts::Some(v) => v.join(" "),
            };
            let tf = |b: bool| if b { "T" } else { "F" };
            let mut row = format!(
                "| {} | {} | {} | {} |",
                s.index,
                tf(s.setting.common),
                used,
                tf(s.setting.average)
            );
            if let Some(why) = &s.skipped {
                for _ in &domains {
                    row.push_str(" – |");
                }
                let _ = write!(row, " skipped: {why} | | | |");
            } else {
                for d in &domains {
                    match s.domains.get(d) {
                        Some(e) => {
                            let _ = write!(row, " {:.4} ({:.1}) |", e.loss, e.perplexity);
                        }
                        None => row.push_str(" – |"),
                    }
                }
                let _ = write!(
                    row,
                    " {:.4} | {} | {:.0} | {:.2} |",
                    s.mean_loss, s.active_parameters, s.tokens_per_second, s.seconds
                );
            }
            let _ = writeln!(md, "{row}");
        }
        if let Some(r) = &self.routing {
            let _ = writeln!(
                md,
                "\nRouting accuracy against the domain labels: {:.2}% of {} sequences (router classes {}).\n",
                100.0 * r.accuracy,
                r.sequences,
                r.classes.join(", ")
            );
            let _ = writeln!(
                md,
                "| domain | sequences | accuracy | confident | routed to |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|");
            for (d, x) in &r.domains {
                let to: Vec<String> = x
                    .predicted
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                let _ = writeln!(
                    md,
                    "| {d} | {} | {:.2}% | {} | {} |",
                    x.sequences,
                    100.0 * x.accuracy,
                    x.confident,
                    to.join(", ")
                );
            }
        }
        md
    }
}

/// Evaluates the MoE folder `model_dir` on `shards` (see [`evaluate_settings`]),
/// routing with the router file `router` when given (checked against the model's
/// domains and the shards' tokenizer before the model is loaded): the library side
/// of `mome moe eval` and of the pipeline's `grid` stage.
pub fn evaluate_dir(
    model_dir: &std::path::Path,
    shards: &std::path::Path,
    settings: &[Setting],
    opts: &EvalOptions,
    router: Option<&std::path::Path>,
    device: tch::Device,
) -> Result<EvalReport> {
    let router = match router {
        Some(p) => {
            let r = mome_router::Router::load(p)?;
            let cfg_path = model_dir.join(crate::io::CONFIG_FILE);
            let cfg: crate::config::MoeConfig = serde_json::from_slice(
                &std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?,
            )?;
            crate::routing::check_router_classes(r.classes(), &cfg)?;
            Some(r)
        }
        None => None,
    };
    let (_vs, model) = MoeModel::load(model_dir, device)?;
    let shards = ShardSet::open(shards)?;
    if let Some(want) = router.as_ref().and_then(|r| r.tokenizer_sha256()) {
        shards.check_tokenizer(want)?;
    }
    evaluate_settings(
        &model,
        &shards,
        settings,
        opts,
        router.as_ref().map(|r| r as &dyn SequenceRouter),
    )
}

impl EvalReport {
    /// Writes `report.json` and `report.md` into `dir`, each atomically.
    pub fn write(&self, dir: &std::path::Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        mome_data::fsutil::write_atomic(
            &dir.join("report.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )?;
        mome_data::fsutil::write_atomic(&dir.join("report.md"), self.to_markdown().as_bytes())?;
        Ok(())
    }
}
