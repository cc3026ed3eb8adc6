//! The MoE folder: save, load (validated), expert export, PLE assembly.
//!
//! ```text
//! DIR/moe_config.json                      MoeConfig
//! DIR/shared.safetensors                   shared.wte.weight, shared.wpe.weight[, lm_head.weight]
//!                                          (JEET / MoE-CE only)
//! DIR/experts/<domain>/config.json         one Hugging Face GPT2LMHeadModel per expert, the
//! DIR/experts/<domain>/model.safetensors   shared embeddings and head copied in
//! DIR/common/{config.json,model.safetensors}  the common expert likewise
//! ```
//! Every expert folder loads on its own with `Gpt2LmHeadModel::from_pretrained` or
//! `transformers.GPT2LMHeadModel.from_pretrained`. The folder is written atomically.

use std::path::{Path, PathBuf};

use mome_core::tensor_io::{load_into, read_safetensors, write_safetensors};
use mome_data::fsutil::AtomicDir;
use mome_experts::{Gpt2Config, Gpt2LmHeadModel};
use tch::{nn, Device, Kind, Tensor};

use crate::config::{Arch, ExpertId, MoeConfig, COMMON};
use crate::error::{Error, Result};
use crate::model::MoeModel;

/// `moe_config.json`.
pub const CONFIG_FILE: &str = "moe_config.json";
/// `shared.safetensors`.
pub const SHARED_FILE: &str = "shared.safetensors";
/// `router.json`: the optional router of the model (a mome-router file).
pub const ROUTER_FILE: &str = "router.json";

/// The router saved in a MoE folder (`router.json`), if there is one. Its classes
/// are checked against the model's domains by [`crate::routing::check_router_classes`].
pub fn load_router(dir: &Path) -> Result<Option<mome_router::Router>> {
    let path = dir.join(ROUTER_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(mome_router::Router::load(&path)?))
}

fn write_json(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, format!("{text}\n")).map_err(|e| Error::io(path, e))
}

/// The folder of an expert, relative to the MoE folder.
pub fn expert_subdir(name: &str) -> PathBuf {
    if name == COMMON {
        PathBuf::from(COMMON)
    } else {
        Path::new("experts").join(name)
    }
}

impl MoeModel {
    /// An expert as Hugging Face `GPT2LMHeadModel` tensors and config: its stack
    /// under `transformer.h.*` / `transformer.ln_f.*`, the embeddings and head it
    /// reads under `transformer.wte/wpe` and `lm_head.weight` (untied models only).
    pub fn expert_hf_tensors(&self, id: ExpertId) -> Result<(Gpt2Config, Vec<(String, Tensor)>)> {
        let emb = self.embeddings_of(id)?;
        let mut v = vec![
            (
                "transformer.wte.weight".to_string(),
                emb.wte().shallow_clone(),
            ),
            (
                "transformer.wpe.weight".to_string(),
                emb.wpe().shallow_clone(),
            ),
        ];
        if !self.config().expert.tie_word_embeddings {
            v.push(("lm_head.weight".to_string(), emb.head().shallow_clone()));
        }
        for (n, t) in self.stack(id)?.named_parameters() {
            v.push((format!("transformer.{n}"), t));
        }
        let v = v
            .into_iter()
            .map(|(n, t)| Ok((n, t.f_detach()?.f_to_kind(Kind::Float)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok((self.config().expert.clone(), v))
    }

    fn write_expert(&self, id: ExpertId, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (cfg, tensors) = self.expert_hf_tensors(id)?;
        write_safetensors(&dir.join(mome_experts::gpt2::WEIGHTS_FILE), &tensors)?;
        write_json(
            &dir.join(mome_experts::gpt2::CONFIG_FILE),
            &cfg.to_hf_json()?,
        )
    }

    /// Writes one expert as a standalone Hugging Face GPT-2 folder (atomically).
    pub fn export_expert(&self, name: &str, out: &Path) -> Result<PathBuf> {
        let id = self.expert_id(name)?;
        let tmp = AtomicDir::new(out)?;
        self.write_expert(id, tmp.path())?;
        Ok(tmp.commit()?)
    }

    /// Saves the whole model as a folder (see the module docs), atomically.
    pub fn save(&self, out: &Path) -> Result<PathBuf> {
        self.save_with_router(out, None)
    }

    /// Saves the model and, when given, its router as `router.json` (whose classes
    /// must be exactly the model's domains), in one atomic folder.
    pub fn save_with_router(
        &self,
        out: &Path,
        router: Option<&mome_router::Router>,
    ) -> Result<PathBuf> {
        if let Some(r) = router {
            crate::routing::check_router_classes(r.classes(), self.config())?;
        }
        let tmp = AtomicDir::new(out)?;
        let root = tmp.path();
        if let Some(r) = router {
            let path = root.join(ROUTER_FILE);
            std::fs::write(&path, r.to_json()?).map_err(|e| Error::io(&path, e))?;
        }
        write_json(
            &root.join(CONFIG_FILE),
            &serde_json::to_string_pretty(self.config())?,
        )?;
        if self.arch().shared_embeddings() {
            let shared = self
                .shared_parameters()
                .into_iter()
                .map(|(n, t)| Ok((n, t.f_detach()?.f_to_kind(Kind::Float)?)))
                .collect::<Result<Vec<_>>>()?;
            write_safetensors(&root.join(SHARED_FILE), &shared)?;
        }
        for id in self.expert_ids() {
            self.write_expert(id, &root.join(expert_subdir(self.expert_name(id))))?;
        }
        Ok(tmp.commit()?)
    }

    /// Loads a folder written by [`MoeModel::save`] into a new var store on `device`.
    ///
    /// Every expert's `config.json` must have the shape of `moe_config.json`'s
    /// `expert`; with shared embeddings, the copies inside each expert folder must
    /// equal `shared.safetensors`. All missing, unexpected and mismatched keys are
    /// listed in one [`Error::Checkpoint`].
    pub fn load(dir: &Path, device: Device) -> Result<(nn::VarStore, MoeModel)> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: MoeConfig = serde_json::from_str(&text)?;
        cfg.validate()?;
        check_sizes(dir, &cfg)?;
        let vs = nn::VarStore::new(device);
        // Its random initialisation (then overwritten) must not interleave with
        // another thread's seeded one (mome_core::rng).
        let model = {
            let _g = mome_core::rng::lock_default_generator();
            MoeModel::new(&vs.root(), &cfg)?
        };
        let shared = cfg.arch.shared_embeddings();
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        let (mut missing, mut unexpected, mut mismatched) = (vec![], vec![], vec![]);
        let mut shared_t: Vec<(String, Tensor)> = Vec::new();
        if shared {
            shared_t = read_safetensors(&dir.join(SHARED_FILE), Device::Cpu)?;
            tensors.extend(shared_t.iter().map(|(n, t)| (n.clone(), t.shallow_clone())));
        }
        let find = |name: &str| {
            shared_t
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
        };
        for id in model.expert_ids() {
            let name = model.expert_name(id).to_string();
            let sub = dir.join(expert_subdir(&name));
            let ecfg = Gpt2Config::from_file(sub.join(mome_experts::gpt2::CONFIG_FILE))?;
            for (field, a, b) in shape_fields(&ecfg, &cfg.expert) {
                if a != b {
                    mismatched.push(format!(
                        "{}/config.json {field}: {a} (moe_config.json: {b})",
                        expert_subdir(&name).display()
                    ));
                }
            }
            let prefix = if name == COMMON {
                COMMON.to_string()
            } else {
                format!("experts.{name}")
            };
            let file = sub.join(mome_experts::gpt2::WEIGHTS_FILE);
            for (key, t) in read_safetensors(&file, Device::Cpu)? {
                let rest = key.strip_prefix("transformer.");
                let emb_key = match key.as_str() {
                    "transformer.wte.weight" => Some(("shared.wte.weight", "wte.weight")),
                    "transformer.wpe.weight" => Some(("shared.wpe.weight", "wpe.weight")),
                    "lm_head.weight" => Some(("lm_head.weight", "lm_head.weight")),
                    _ => None,
                };
                let label = format!("{}: {key}", expert_subdir(&name).display());
                match (emb_key, rest) {
                    (Some((shared_name, own)), _) => {
                        if shared {
                            match find(shared_name) {
                                Some(s) if s.size() == t.size() && s.equal(&t) => {}
                                Some(_) => mismatched.push(format!(
                                    "{label}: differs from {SHARED_FILE} {shared_name}"
                                )),
                                None if key == "lm_head.weight"
                                    && cfg.expert.tie_word_embeddings =>
                                {
                                    if !find("shared.wte.weight")
                                        .is_some_and(|w| w.size() == t.size() && w.equal(&t))
                                    {
                                        mismatched.push(format!(
                                            "{label}: tied head differs from shared.wte.weight"
                                        ));
                                    }
                                }
                                None => unexpected.push(label),
                            }
                        } else if key == "lm_head.weight" && cfg.expert.tie_word_embeddings {
                            // a tied head written out by other tools: must equal wte
                        } else {
                            tensors.push((format!("{prefix}.{own}"), t));
                        }
                    }
                    (None, Some(r)) if r.starts_with("h.") || r.starts_with("ln_f.") => {
                        if r.ends_with(".attn.bias") || r.ends_with(".attn.masked_bias") {
                            continue;
                        }
                        tensors.push((format!("{prefix}.{r}"), t));
                    }
                    _ => unexpected.push(label),
                }
            }
        }
        match load_into(&vs, &tensors, true) {
            Ok(_) if missing.is_empty() && unexpected.is_empty() && mismatched.is_empty() => {
                Ok((vs, model))
            }
            Ok(_) => Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                missing,
                unexpected,
                mismatched,
            }),
            Err(mome_core::Error::LoadMismatch {
                missing: m,
                unexpected: u,
                mismatched: mm,
            }) => {
                missing.extend(m);
                unexpected.extend(u);
                mismatched.extend(mm.iter().map(ToString::to_string));
                Err(Error::Checkpoint {
                    path: dir.to_path_buf(),
                    missing,
                    unexpected,
                    mismatched,
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Refuses a `moe_config.json` that describes plainly more parameters than the
/// folder's weight files hold ([`mome_core::tensor_io::config_exceeds_weights`]),
/// before the model is built (allocated) from it.
fn check_sizes(dir: &Path, cfg: &MoeConfig) -> Result<()> {
    let shared = cfg.arch.shared_embeddings();
    let mut files = Vec::new();
    if shared {
        files.push(dir.join(SHARED_FILE));
    }
    let mut names: Vec<&str> = cfg.domains.iter().map(String::as_str).collect();
    if cfg.common_expert {
        names.push(COMMON);
    }
    for name in &names {
        files.push(
            dir.join(expert_subdir(name))
                .join(mome_experts::gpt2::WEIGHTS_FILE),
        );
    }
    let mut held = 0u64;
    for f in &files {
        held = held.saturating_add(mome_core::tensor_io::safetensors_param_count(f)?);
    }
    let e = &cfg.expert;
    let n = names.len() as u64;
    let needed = if shared {
        e.stack_parameters()
            .and_then(|s| s.checked_mul(n))
            .and_then(|s| s.checked_add(e.embedding_parameters()?))
    } else {
        e.num_parameters().and_then(|p| p.checked_mul(n))
    };
    if mome_core::tensor_io::config_exceeds_weights(needed, held) {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            missing: vec![],
            unexpected: vec![],
            mismatched: vec![format!(
                "{CONFIG_FILE} describes a model of {} parameters, its weight files hold {held}",
                needed.map_or_else(|| "more than 2^64".into(), |p| p.to_string())
            )],
        });
    }
    Ok(())
}

/// The fields that make two expert configs the same shape.
fn shape_fields(a: &Gpt2Config, b: &Gpt2Config) -> Vec<(&'static str, String, String)> {
    vec![
        (
            "vocab_size",
            a.vocab_size.to_string(),
            b.vocab_size.to_string(),
        ),
        (
            "n_positions",
            a.n_positions.to_string(),
            b.n_positions.to_string(),
        ),
        ("n_embd", a.n_embd.to_string(), b.n_embd.to_string()),
        ("n_layer", a.n_layer.to_string(), b.n_layer.to_string()),
        ("n_head", a.n_head.to_string(), b.n_head.to_string()),
        (
            "n_inner",
            a.inner_dim().to_string(),
            b.inner_dim().to_string(),
        ),
        (
            "activation_function",
            format!("{:?}", a.activation_function),
            format!("{:?}", b.activation_function),
        ),
        (
            "layer_norm_epsilon",
            a.layer_norm_epsilon.to_string(),
            b.layer_norm_epsilon.to_string(),
        ),
        (
            "tie_word_embeddings",
            a.tie_word_embeddings.to_string(),
            b.tie_word_embeddings.to_string(),
        ),
        (
            "scale_attn_weights",
            a.scale_attn_weights.to_string(),
            b.scale_attn_weights.to_string(),
        ),
        (
            "scale_attn_by_inverse_layer_idx",
            a.scale_attn_by_inverse_layer_idx.to_string(),
            b.scale_attn_by_inverse_layer_idx.to_string(),
        ),
    ]
}

/// Assembles a PLE model from separately trained `GPT2LMHeadModel` folders
/// (`(domain, folder)` in expert order, plus an optional common expert). Each expert
/// keeps its own embeddings and head: PLE experts are independent students, trained
/// apart, so their embedding spaces differ and cannot be shared. All experts must
/// have the same shape; the model is frozen (`requires_grad = false`).
pub fn build_ple(
    experts: &[(String, PathBuf)],
    common: Option<&Path>,
    device: Device,
) -> Result<(nn::VarStore, MoeModel)> {
    if experts.is_empty() {
        return Err(Error::Config("PLE needs at least one --expert".into()));
    }
    let mut loaded = Vec::new();
    for (name, dir) in experts {
        let (_vs, m) = Gpt2LmHeadModel::from_pretrained(dir, Device::Cpu).map_err(|e| {
            Error::Config(format!("loading expert {name} from {}: {e}", dir.display()))
        })?;
        loaded.push((name.clone(), dir.clone(), m));
    }
    let common_model = match common {
        Some(dir) => Some(
            Gpt2LmHeadModel::from_pretrained(dir, Device::Cpu)
                .map_err(|e| {
                    Error::Config(format!("loading common expert from {}: {e}", dir.display()))
                })?
                .1,
        ),
        None => None,
    };
    let base = loaded[0].2.config().clone();
    let mut problems = Vec::new();
    let others = loaded
        .iter()
        .map(|(n, d, m)| (n.clone(), d.clone(), m.config()))
        .chain(
            common
                .zip(common_model.as_ref())
                .map(|(d, m)| (COMMON.to_string(), d.to_path_buf(), m.config())),
        );
    for (name, dir, c) in others {
        for (field, a, b) in shape_fields(c, &base) {
            if a != b {
                problems.push(format!(
                    "{name} ({}): {field} = {a}, first expert has {b}",
                    dir.display()
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Config(format!(
            "PLE experts must have one shape: {}",
            problems.join("; ")
        )));
    }
    let cfg = MoeConfig {
        arch: Arch::Ple,
        domains: experts.iter().map(|(n, _)| n.clone()).collect(),
        expert: base,
        common_expert: common.is_some(),
        low_confidence_to_common: true,
    };
    let vs = nn::VarStore::new(device);
    let model = {
        let _g = mome_core::rng::lock_default_generator();
        MoeModel::new(&vs.root(), &cfg)?
    };
    let mut tensors = Vec::new();
    let sources = loaded
        .iter()
        .map(|(n, _, m)| (format!("experts.{n}"), m))
        .chain(common_model.as_ref().map(|m| (COMMON.to_string(), m)));
    for (prefix, m) in sources {
        for (key, t) in m.named_parameters() {
            let own = key.strip_prefix("transformer.").unwrap_or(&key);
            tensors.push((format!("{prefix}.{own}"), t));
        }
    }
    load_into(&vs, &tensors, true)?;
    model.set_all_trainable(false);
    Ok((vs, model))
}

/// What [`assemble_ple`] wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PleSummary {
    /// The MoE folder.
    pub model_dir: PathBuf,
    /// Always `ple`.
    pub arch: crate::config::Arch,
    /// The expert domains, in order.
    pub experts: Vec<String>,
    /// Whether a common expert was added.
    pub common_expert: bool,
    /// The router's classes, when a router was saved with the model.
    pub router: Option<Vec<String>>,
    /// Parameters of the whole model.
    pub total_parameters: i64,
}

/// Assembles a PLE model from separately trained GPT-2 folders (`(domain, dir)` in
/// expert order, and an optional common expert) and saves it to `out` with the
/// router file `router` (whose classes must be exactly the expert domains; checked
/// before any expert is loaded): the library side of `mome moe build`.
pub fn assemble_ple(
    experts: &[(String, PathBuf)],
    common: Option<&Path>,
    router: Option<&Path>,
    out: &Path,
) -> Result<PleSummary> {
    let router = match router {
        Some(p) => {
            let r = mome_router::Router::load(p)?;
            let probe = MoeConfig {
                arch: crate::config::Arch::Ple,
                domains: experts.iter().map(|(n, _)| n.clone()).collect(),
                expert: mome_experts::Gpt2Config::default(),
                common_expert: common.is_some(),
                low_confidence_to_common: true,
            };
            crate::routing::check_router_classes(r.classes(), &probe)?;
            Some(r)
        }
        None => None,
    };
    let (_vs, model) = build_ple(experts, common, Device::Cpu)?;
    let model_dir = model.save_with_router(out, router.as_ref())?;
    Ok(PleSummary {
        model_dir,
        arch: crate::config::Arch::Ple,
        experts: model.domains().to_vec(),
        common_expert: model.config().common_expert,
        router: router.as_ref().map(|r| r.classes().to_vec()),
        total_parameters: model.total_parameters(),
    })
}
