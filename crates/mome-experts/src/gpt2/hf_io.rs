//! Hugging Face checkpoints: `save_pretrained` / `from_pretrained` in the layout of
//! `transformers.GPT2LMHeadModel` (`config.json` + `model.safetensors`, HF keys).

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use super::{Gpt2Config, Gpt2LmHeadModel};
use crate::error::{Error, Result};

/// Name of the weights file written by [`Gpt2LmHeadModel::save_pretrained`].
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the config file written by [`Gpt2LmHeadModel::save_pretrained`].
pub const CONFIG_FILE: &str = "config.json";

impl Gpt2LmHeadModel {
    /// Writes `config.json` and `model.safetensors` (fp32, HF keys; a tied model omits
    /// `lm_head.weight` like Hugging Face) into `dir`, each file atomically
    /// ([`mome_data::fsutil::write_atomic`], which also removes the temporaries of
    /// these files left in `dir` by a killed writer).
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tensors = self
            .named_parameters()
            .into_iter()
            .map(|(n, t)| Ok((n, t.f_detach()?.f_to_kind(Kind::Float)?)))
            .collect::<Result<Vec<_>>>()?;
        mome_core::tensor_io::write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
        let text = self.config.to_hf_json()? + "\n";
        mome_data::fsutil::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
        Ok(())
    }

    /// Loads a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`) into
    /// a new var store on `device`.
    ///
    /// Accepted beyond the exact key set: HF's `transformer.h.{i}.attn.bias` /
    /// `.attn.masked_bias` buffers (ignored), an `lm_head.weight` in a tied model when
    /// it equals `wte` (ignored), and files written by the bare `GPT2Model` (keys
    /// without the `transformer.` prefix). Anything else that does not fit is an
    /// [`Error::Checkpoint`] naming every missing, unexpected and mismatched key. An
    /// invalid `config.json` is an [`Error::ConfigFile`] and a tensor holding NaN or
    /// infinity an [`Error::NonFiniteTensor`], each naming the file (and the tensor).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: Device) -> Result<(nn::VarStore, Self)> {
        let dir = dir.as_ref();
        let cfg = Gpt2Config::from_file_checked(dir.join(CONFIG_FILE))?;
        let path = dir.join(WEIGHTS_FILE);
        // The model is built (allocated) from the config before the weights are read:
        // a config plainly larger than the weights file is refused first.
        let held = mome_core::tensor_io::safetensors_param_count(&path)?;
        if mome_core::tensor_io::config_exceeds_weights(cfg.num_parameters(), held) {
            return Err(Error::Checkpoint {
                path,
                missing: vec![],
                unexpected: vec![],
                mismatched: vec![format!(
                    "{CONFIG_FILE} describes a model of {} parameters, the file holds {held}",
                    cfg.num_parameters()
                        .map_or_else(|| "more than 2^64".into(), |n| n.to_string())
                )],
            });
        }
        let vs = nn::VarStore::new(device);
        // The construction draws a random initialisation (then overwritten): never
        // in the middle of another thread's seeded one (mome_core::rng).
        let model = {
            let _g = mome_core::rng::lock_default_generator();
            Self::new(&vs.root(), &cfg)?
        };
        let tensors = mome_core::tensor_io::read_safetensors(&path, Device::Cpu)?;
        model.load_hf_tensors(&vs, tensors, &path)?;
        Ok((vs, model))
    }

    /// Loads HF-keyed tensors into this model, which must have been built at the root
    /// of `vs`; `source` names the origin in errors. See [`Self::from_pretrained`].
    /// The first tensor (in the order given) that holds NaN or infinity is an
    /// [`Error::NonFiniteTensor`]; nothing is loaded then.
    pub fn load_hf_tensors(
        &self,
        vs: &nn::VarStore,
        tensors: Vec<(String, Tensor)>,
        source: &Path,
    ) -> Result<()> {
        let has_prefix = tensors.iter().any(|(n, _)| n.starts_with("transformer."));
        let mut kept = Vec::with_capacity(tensors.len());
        let mut lm_head = None;
        for (file_name, t) in tensors {
            let name = if has_prefix || file_name == "lm_head.weight" {
                file_name.clone()
            } else {
                format!("transformer.{file_name}")
            };
            let parts: Vec<&str> = name.split('.').collect();
            let is_buffer = matches!(
                parts.as_slice(),
                ["transformer", "h", i, "attn", "bias" | "masked_bias"] if i.parse::<u64>().is_ok()
            );
            if is_buffer {
                continue;
            }
            // One reduction per tensor: cheap next to reading the file.
            let finite = t
                .f_isfinite()
                .and_then(|f| f.f_all())
                .and_then(|f| f.f_to_kind(Kind::Int64))
                .and_then(|f| f.f_int64_value(&[]))?;
            if finite == 0 {
                return Err(Error::NonFiniteTensor {
                    path: source.to_path_buf(),
                    name: file_name,
                });
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
