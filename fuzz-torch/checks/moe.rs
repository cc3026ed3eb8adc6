//! The invariants of the `moe_folder` fuzz target (mome-moe): a MoE folder (valid,
//! JEET with two tiny experts) with one file replaced by the input
//! (`moe_config.json`, `shared.safetensors`, or an expert's `config.json` or
//! `model.safetensors`) loads with a typed error with a message, or as a model
//! whose config validates and which holds no more parameters than the folder's
//! weight files. Shared by `fuzz-torch/fuzz_targets/moe_folder.rs`
//! (`#[path]`-included) and by `cargo test -p mome-moe --test fuzz_replay`. A
//! violated invariant panics.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mome_experts::Gpt2Config;
use mome_moe::config::{Arch, MoeConfig};
use mome_moe::model::MoeModel;
use tch::{nn, Device};

/// This process's scratch folder (the corpus replay removes it when done).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mome-fuzz-moe-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

/// The files the target replaces, in mode order.
pub const FILES: [&str; 4] = [
    "moe_config.json",
    "shared.safetensors",
    "experts/a/config.json",
    "experts/a/model.safetensors",
];

/// Every file of the template folder, `(relative path, bytes)`, [`FILES`] first
/// (made once).
pub fn template() -> &'static Vec<(String, Vec<u8>)> {
    static T: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    T.get_or_init(|| {
        tch::manual_seed(0);
        let cfg = MoeConfig {
            arch: Arch::Jeet,
            domains: vec!["a".into(), "b".into()],
            expert: Gpt2Config {
                vocab_size: 16,
                n_positions: 8,
                n_embd: 8,
                n_layer: 1,
                n_head: 2,
                bos_token_id: Some(1),
                eos_token_id: Some(2),
                ..Gpt2Config::default()
            },
            common_expert: false,
            low_confidence_to_common: true,
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = MoeModel::new(&vs.root(), &cfg).expect("template model");
        let dir = scratch().join("template");
        model.save(&dir).expect("template folder");
        let mut rest = vec![
            "experts/b/config.json".to_string(),
            "experts/b/model.safetensors".to_string(),
        ];
        let mut all: Vec<String> = FILES.iter().map(|s| s.to_string()).collect();
        all.append(&mut rest);
        all.into_iter()
            .map(|f| {
                let bytes = std::fs::read(dir.join(&f)).expect("template file");
                (f, bytes)
            })
            .collect()
    })
}

/// The first byte picks the file of [`FILES`] the rest replaces.
/// Returns whether the input loaded.
pub fn moe_folder(data: &[u8]) -> bool {
    let Some((&mode, body)) = data.split_first() else {
        return false;
    };
    let which = mode as usize % FILES.len();
    let dir = scratch().join("moe");
    let _ = std::fs::remove_dir_all(&dir);
    let mut on_disk = 0usize;
    for (i, (rel, bytes)) in template().iter().enumerate() {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("inside")).expect("moe folder");
        let content = if i == which { body } else { bytes.as_slice() };
        on_disk += content.len();
        std::fs::write(&p, content).expect("moe file");
    }
    match MoeModel::load(&dir, Device::Cpu) {
        Ok((vs, model)) => {
            model
                .config()
                .validate()
                .expect("a loaded model's config validates");
            let held: usize = vs.variables().values().map(|t| t.numel()).sum();
            assert!(held <= on_disk, "{held} parameters out of {on_disk} bytes");
            true
        }
        Err(e) => {
            assert!(!mome_data::error::chain(&e).is_empty());
            false
        }
    }
}

fn with_json(mode: u8, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&template()[mode as usize].1).expect("template json");
    edit(&mut v);
    [&[mode][..], &serde_json::to_vec(&v).expect("json")].concat()
}

/// The seed inputs (written to `fuzz-torch/seeds/moe_folder/` for cargo-fuzz): each
/// valid file, and configs far larger than the weight files.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let t = template();
    let mut out: Vec<(String, Vec<u8>)> = FILES
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = f.replace('/', "_");
            (format!("valid_{name}"), [&[i as u8][..], &t[i].1].concat())
        })
        .collect();
    out.push((
        "expert_vocab_huge".into(),
        with_json(0, |v| {
            v["expert"]["vocab_size"] = 1_000_000_000_000i64.into()
        }),
    ));
    out.push((
        "expert_n_embd_overflow".into(),
        with_json(0, |v| v["expert"]["n_embd"] = (i64::MAX / 2).into()),
    ));
    out.push((
        "many_domains".into(),
        with_json(0, |v| {
            v["domains"] = (0..1000).map(|i| format!("d{i}")).collect();
        }),
    ));
    out.push((
        "ple_common".into(),
        with_json(0, |v| {
            v["arch"] = "ple".into();
            v["common_expert"] = true.into();
        }),
    ));
    out.push((
        "expert_config_other_shape".into(),
        with_json(2, |v| v["n_layer"] = 2.into()),
    ));
    out
}
