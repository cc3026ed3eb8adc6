//! Loading a frozen teacher.

use std::path::Path;

use mome_data::shards::sha256_file;
use mome_experts::Gpt2LmHeadModel;
use tch::{nn, Device, Kind};

use crate::{Error, Result};

/// sha256 of `dir/model.safetensors` (what a teacher cache is tied to).
pub fn teacher_sha256(dir: &Path) -> Result<String> {
    check_teacher_dir(dir)?;
    Ok(sha256_file(&dir.join("model.safetensors"))?)
}

fn check_teacher_dir(dir: &Path) -> Result<()> {
    let missing = |reason: String| Error::MissingTeacher {
        path: dir.to_path_buf(),
        reason,
    };
    if !dir.is_dir() {
        return Err(missing("no such folder".into()));
    }
    for f in ["config.json", "model.safetensors"] {
        if !dir.join(f).is_file() {
            return Err(missing(format!(
                "no {f} (expected a model folder written by `mome train` / save_pretrained)"
            )));
        }
    }
    Ok(())
}

/// Loads the teacher in `dir` on `device`, frozen (no parameter requires grad; call
/// its forward in eval mode under `no_grad`), optionally stored and run in bf16.
/// Returns the var store (keep it alive), the model and the weights' sha256.
pub fn load_teacher(
    dir: &Path,
    device: Device,
    bf16: bool,
) -> Result<(nn::VarStore, Gpt2LmHeadModel, String)> {
    let sha = teacher_sha256(dir)?;
    let (mut vs, mut model) = Gpt2LmHeadModel::from_pretrained(dir, device)?;
    vs.freeze();
    if bf16 {
        vs.bfloat16();
        model.set_compute_kind(Kind::BFloat16)?;
    }
    Ok((vs, model, sha))
}
