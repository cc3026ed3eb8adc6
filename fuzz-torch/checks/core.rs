//! The invariants of the `checkpoint` fuzz target (mome-core): the resume path of
//! [`Trainer::new`] on a run folder whose one checkpoint (valid, of a tiny model at
//! step 1) has one file replaced by the input (`trainer_state.json`,
//! `model.safetensors` or `optimizer.safetensors`, or the run's `metrics.jsonl`) gives a typed error with a
//! message, or a trainer resumed at the checkpoint's step, within `max_steps`.
//! Shared by `fuzz-torch/fuzz_targets/checkpoint.rs` (`#[path]`-included) and by
//! `cargo test -p mome-core --test fuzz_replay`. A violated invariant panics.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mome_core::checkpoint::{
    CheckpointManager, TrainerState, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE,
};
use mome_core::optim::{AdamW, STEP_KEY};
use mome_core::tensor_io::named_tensors;
use mome_core::{TrainConfig, Trainer};
use tch::{nn, Device, Tensor};

/// This process's scratch folder (the corpus replay removes it when done).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mome-fuzz-core-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

const MAX_STEPS: u64 = 4;
const FILES: [&str; 3] = [STATE_FILE, MODEL_FILE, OPTIMIZER_FILE];

/// A tiny model: `l.weight [2, 3]`, `l.bias [2]`.
fn model() -> nn::VarStore {
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = nn::linear(vs.root() / "l", 3, 2, Default::default());
    vs
}

fn config() -> TrainConfig {
    let mut c = TrainConfig::new(MAX_STEPS, 1e-3);
    c.quiet = true;
    c
}

/// The three files of a valid checkpoint of step 1, in [`FILES`] order (made once).
pub fn template() -> &'static [Vec<u8>; 3] {
    static T: OnceLock<[Vec<u8>; 3]> = OnceLock::new();
    T.get_or_init(|| {
        let vs = model();
        let opt = AdamW::new(&vs, config().optimizer).expect("template optimizer");
        let mut state = opt.state_tensors();
        for (name, t) in state.iter_mut() {
            if name == STEP_KEY {
                *t = Tensor::from(1i64);
            }
        }
        let cfg = config();
        let ts = TrainerState {
            step: 1,
            tokens_seen: 8,
            data_state: serde_json::json!({"next": 1}),
            schedule: cfg.lr_schedule(),
            seed: cfg.seed,
            metrics_lines: 0,
            elapsed_s: 0.5,
            train_config: serde_json::Value::Null,
            mome_core_version: "0.1.0".into(),
        };
        let m = CheckpointManager::new(scratch().join("template"), 0);
        let dir = m
            .save(1, &named_tensors(&vs), &state, &[], &ts)
            .expect("template checkpoint");
        FILES.map(|f| std::fs::read(dir.join(f)).expect("template file"))
    })
}

/// The run's `metrics.jsonl` beside the checkpoint (resuming keeps its lines up to
/// the checkpoint's step).
const METRICS: &[u8] = b"{\"step\":1,\"loss\":2.5}\n{\"step\":2,\"loss\":2.4}\n";

/// The first byte picks the file the rest replaces: 0 `trainer_state.json`, 1
/// `model.safetensors`, 2 `optimizer.safetensors`, 3 the run's `metrics.jsonl`.
/// Returns whether the input loaded.
pub fn checkpoint(data: &[u8]) -> bool {
    let Some((&mode, body)) = data.split_first() else {
        return false;
    };
    let which = (mode % 4) as usize;
    let run = scratch().join("run");
    let _ = std::fs::remove_dir_all(&run);
    let ck = run.join("checkpoints").join("step-00000001");
    std::fs::create_dir_all(&ck).expect("checkpoint folder");
    let metrics: &[u8] = if which == 3 { body } else { METRICS };
    std::fs::write(run.join("metrics.jsonl"), metrics).expect("metrics");
    for (i, (f, bytes)) in FILES.iter().zip(template()).enumerate() {
        let content = if i == which { body } else { bytes.as_slice() };
        std::fs::write(ck.join(f), content).expect("checkpoint file");
    }
    let vs = model();
    match Trainer::new(config(), &vs, &run, true) {
        Ok(t) => {
            assert_eq!(t.step(), 1, "resumed from the only checkpoint");
            assert!(t.step() <= MAX_STEPS);
            assert!(t.resumed_from().is_some());
            for (name, v) in named_tensors(&vs) {
                assert_eq!(v.device(), Device::Cpu, "{name}");
            }
            true
        }
        Err(e) => {
            assert!(!mome_data::error::chain(&e).is_empty());
            false
        }
    }
}

/// The seed inputs (written to `fuzz-torch/seeds/checkpoint/` for cargo-fuzz): each
/// file of the valid checkpoint, and states with extreme numbers.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let t = template();
    let mut out: Vec<(String, Vec<u8>)> = FILES
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("valid_{f}"), [&[i as u8][..], &t[i]].concat()))
        .collect();
    out.push(("valid_metrics.jsonl".into(), [&[3u8][..], METRICS].concat()));
    let state: serde_json::Value = serde_json::from_slice(&t[0]).expect("template state");
    for (name, field, value) in [
        ("step_max", "step", serde_json::json!(u64::MAX)),
        ("step_past_max_steps", "step", serde_json::json!(5)),
        ("seed_other", "seed", serde_json::json!(7)),
        ("elapsed_nan", "elapsed_s", serde_json::json!("NaN")),
        ("elapsed_1e308", "elapsed_s", serde_json::json!(1e308)),
        ("schedule_null", "schedule", serde_json::Value::Null),
    ] {
        let mut s = state.clone();
        s[field] = value;
        out.push((
            name.to_string(),
            [&[0u8][..], &serde_json::to_vec(&s).expect("json")].concat(),
        ));
    }
    out
}
