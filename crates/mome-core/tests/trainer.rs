//! Trainer tests on a tiny next-token model (CPU; CUDA tests behind `--features cuda`).

use std::path::Path;

use mome_core::metrics::read_metrics;
use mome_core::schedule::ScheduleKind;
use mome_core::{Batch, BatchSource, Error, Precision, Result, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Tensor};

const V: i64 = 16;

/// torch's generator is process-global (and the trainer reseeds it every step), so
/// tests that initialise or train models run one at a time.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}
const D: i64 = 32;

/// Sequences `x_{t+1} = (x_t + 3) mod V` from a random start; batch `n` depends only on
/// `n`, so the source's state is just the next index. `fail_at` simulates a crash.
struct Arith {
    next: u64,
    fail_at: Option<u64>,
}

impl Arith {
    fn new() -> Self {
        Self {
            next: 0,
            fail_at: None,
        }
    }
}

impl BatchSource for Arith {
    fn next_batch(&mut self) -> Result<Batch> {
        if self.fail_at == Some(self.next) {
            return Err(Error::Other(format!(
                "simulated crash at batch {}",
                self.next
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + self.next);
        self.next += 1;
        let mut v = Vec::new();
        for _ in 0..4 {
            let mut x: i64 = rng.gen_range(0..V);
            for _ in 0..9 {
                v.push(x);
                x = (x + 3) % V;
            }
        }
        Ok(Batch::ids(Tensor::from_slice(&v).view([4, 9])))
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "next": self.next })
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.next = state["next"]
            .as_u64()
            .ok_or_else(|| Error::Other(format!("bad state {state}")))?;
        Ok(())
    }
}

struct TinyLm {
    wte: Tensor,
    fc_w: Tensor,
    fc_b: Tensor,
    ln_w: Tensor,
    ln_b: Tensor,
    head_w: Tensor,
    precision: Precision,
}

impl TinyLm {
    fn new(vs: &nn::VarStore, init_seed: i64, precision: Precision) -> Self {
        tch::manual_seed(init_seed);
        let r = vs.root();
        Self {
            wte: (&r / "wte").var(
                "weight",
                &[V, D],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.5,
                },
            ),
            fc_w: (&r / "fc").var(
                "weight",
                &[D, D],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.2,
                },
            ),
            fc_b: (&r / "fc").var("bias", &[D], nn::Init::Const(0.0)),
            ln_w: (&r / "ln_f").var("weight", &[D], nn::Init::Const(1.0)),
            ln_b: (&r / "ln_f").var("bias", &[D], nn::Init::Const(0.0)),
            head_w: (&r / "head").var(
                "weight",
                &[V, D],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.2,
                },
            ),
            precision,
        }
    }

    fn loss(&self, batch: &Tensor, train: bool) -> Result<Tensor> {
        let p = self.precision;
        let t = batch.size()[1];
        let x = batch.narrow(1, 0, t - 1);
        let y = batch.narrow(1, 1, t - 1);
        let h = Tensor::embedding(&self.wte, &x, -1, false, false);
        let h = p.linear(&h, &self.fc_w, Some(&self.fc_b)).gelu("none");
        let h = h.dropout(0.1, train);
        let h = p
            .to_fp32(&h)
            .layer_norm([D], Some(&self.ln_w), Some(&self.ln_b), 1e-5, false);
        let logits = p.to_fp32(&p.linear(&h, &self.head_w, None));
        Ok(logits
            .view([-1, V])
            .cross_entropy_for_logits(&y.reshape([-1])))
    }
}

fn cfg(max_steps: u64) -> TrainConfig {
    let mut c = TrainConfig::new(max_steps, 1e-2);
    c.log_every = 1;
    c.warmup_steps = 2;
    c.schedule = ScheduleKind::Cosine;
    c.min_lr = 1e-3;
    c.clip_grad_norm = Some(1.0);
    c.optimizer.weight_decay = 0.01;
    c.seed = 42;
    c.quiet = true;
    c
}

fn losses(run_dir: &Path) -> Vec<(u64, f64)> {
    read_metrics(&run_dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// Trains a fresh model in `dir`; returns the trainer's result.
fn train(
    c: TrainConfig,
    dir: &Path,
    resume: bool,
    source: &mut Arith,
    init_seed: i64,
) -> Result<mome_core::TrainSummary> {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = TinyLm::new(&vs, init_seed, Precision::Fp32);
    let mut trainer = Trainer::new(c, &vs, dir, resume)?;
    let mut loss_fn = |b: &Tensor| model.loss(b, true);
    trainer.run(
        source,
        &mut loss_fn,
        None,
        &[("config.json", b"{}".to_vec())],
    )
}

#[test]
fn training_lowers_the_loss() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let s = train(cfg(60), dir.path(), false, &mut Arith::new(), 1).unwrap();
    let l = losses(dir.path());
    assert_eq!(l.len(), 60);
    let first = l[0].1;
    let last = s.final_loss.unwrap();
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    assert_eq!(s.final_step, 60);
    assert_eq!(s.tokens_seen, 60 * 36);
    let m = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    for key in ["loss", "lr", "tokens_per_s", "grad_norm", "elapsed_s"] {
        assert!(m[5][key].as_f64().unwrap().is_finite(), "{key}");
    }
    assert!(dir
        .path()
        .join("checkpoints/step-00000060/config.json")
        .is_file());
}

/// `[train] adamw` picks the implementation: on the CPU `auto` is `fused` (bit for
/// bit), and `per-param` follows the same curve to float rounding. The key parses
/// from its kebab-case names and rejects others.
#[test]
fn adamw_choice_is_used_and_the_curves_agree() {
    use mome_core::optim::AdamWImpl;
    let _g = lock();
    let run = |imp: AdamWImpl| {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(20);
        c.adamw = imp;
        train(c, dir.path(), false, &mut Arith::new(), 1).unwrap();
        losses(dir.path())
    };
    let (auto, fused, per_param) = (
        run(AdamWImpl::Auto),
        run(AdamWImpl::Fused),
        run(AdamWImpl::PerParam),
    );
    assert_eq!(auto, fused);
    assert_eq!(fused.len(), 20);
    // The choice reaches the optimizer: the two kernels round differently.
    assert_ne!(fused, per_param);
    for ((s, a), (_, b)) in fused.iter().zip(&per_param) {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs(),
            "step {s}: fused {a} vs per-param {b}"
        );
    }
    let mut v = serde_json::to_value(cfg(20)).unwrap();
    assert_eq!(v["adamw"], "auto");
    v["adamw"] = "per-param".into();
    let c: TrainConfig = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(c.adamw, AdamWImpl::PerParam);
    v["adamw"] = "fast".into();
    let e = serde_json::from_value::<TrainConfig>(v)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fast") && e.contains("fused"), "{e}");
}

#[test]
fn same_seed_gives_bit_identical_losses() {
    let _g = lock();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut c = cfg(12);
    c.grad_accum = 2;
    train(c.clone(), a.path(), false, &mut Arith::new(), 1).unwrap();
    train(c.clone(), b.path(), false, &mut Arith::new(), 1).unwrap();
    let (la, lb) = (losses(a.path()), losses(b.path()));
    assert_eq!(la.len(), 12);
    assert_eq!(la, lb);
    // a different run seed changes dropout masks, hence the losses
    let d = tempfile::tempdir().unwrap();
    c.seed = 43;
    train(c, d.path(), false, &mut Arith::new(), 1).unwrap();
    assert_ne!(la, losses(d.path()));
}

#[test]
fn resume_after_crash_matches_straight_run() {
    let _g = lock();
    let mut c = cfg(10);
    c.grad_accum = 2;
    c.checkpoint_every = 3;
    c.keep_last = 2;
    let straight = tempfile::tempdir().unwrap();
    train(c.clone(), straight.path(), false, &mut Arith::new(), 1).unwrap();

    let crashed = tempfile::tempdir().unwrap();
    // crash in the first micro-batch of step 8: checkpoints at 3 and 6, metrics to 7
    let mut src = Arith {
        next: 0,
        fail_at: Some(14),
    };
    let e = train(c.clone(), crashed.path(), false, &mut src, 1).unwrap_err();
    assert!(e.to_string().contains("simulated crash"), "{e}");
    assert_eq!(losses(crashed.path()).len(), 7);
    let ckpts =
        mome_core::checkpoint::CheckpointManager::new(crashed.path().join("checkpoints"), 2);
    let steps: Vec<u64> = ckpts.list().unwrap().iter().map(|x| x.0).collect();
    assert_eq!(steps, [3, 6]);

    // without --resume the folder is refused
    let e = train(c.clone(), crashed.path(), false, &mut Arith::new(), 1).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");

    // resume in a fresh process-like state: new VarStore with another init, new source
    let s = train(c.clone(), crashed.path(), true, &mut Arith::new(), 999).unwrap();
    assert_eq!(s.start_step, 6);
    assert_eq!(s.final_step, 10);
    assert_eq!(s.tokens_seen, 10 * 2 * 36);
    let (a, b) = (losses(straight.path()), losses(crashed.path()));
    assert_eq!(
        b.iter().map(|x| x.0).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(a, b, "resumed losses differ from the straight run");
    // keep_last = 2: checkpoints 3, 6, 9, 10 -> 9, 10
    let steps: Vec<u64> = ckpts.list().unwrap().iter().map(|x| x.0).collect();
    assert_eq!(steps, [9, 10]);
    // final weights are identical too
    let wa = mome_core::tensor_io::read_safetensors(
        &straight
            .path()
            .join("checkpoints/step-00000010/model.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let wb = mome_core::tensor_io::read_safetensors(
        &crashed
            .path()
            .join("checkpoints/step-00000010/model.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na}");
    }
}

/// Temporaries left by a killed run (a partial checkpoint folder, a half-rewritten
/// metrics file) are removed when the next run opens the folder; those of a live
/// process are kept.
#[test]
fn the_next_run_removes_temporaries_of_dead_writers_only() {
    let _g = lock();
    let mut c = cfg(6);
    c.checkpoint_every = 3;
    let dir = tempfile::tempdir().unwrap();
    let mut src = Arith {
        next: 0,
        fail_at: Some(4),
    };
    train(c.clone(), dir.path(), false, &mut src, 1).unwrap_err();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let live = sleeper.id();
    let ck = dir.path().join("checkpoints");
    let stale_ck = ck.join(format!("step-00000006.partial-{dead}"));
    let live_ck = ck.join(format!("step-00000006.partial-{live}"));
    for d in [&stale_ck, &live_ck] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("model.safetensors"), b"partial").unwrap();
    }
    let stale_m = dir.path().join(format!("metrics.jsonl.tmp-{dead}"));
    let live_m = dir.path().join(format!("metrics.jsonl.tmp-{live}"));
    std::fs::write(&stale_m, b"{}").unwrap();
    std::fs::write(&live_m, b"{}").unwrap();

    let s = train(c, dir.path(), true, &mut Arith::new(), 2);
    let kept = (live_ck.exists(), live_m.exists());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(s.unwrap().final_step, 6);
    assert!(!stale_ck.exists(), "stale partial checkpoint removed");
    assert!(!stale_m.exists(), "stale metrics temporary removed");
    assert_eq!(kept, (true, true), "a live writer's temporaries are kept");
    assert!(ck.join("step-00000006").is_dir());
}

#[test]
fn nan_loss_names_the_step() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = TinyLm::new(&vs, 1, Precision::Fp32);
    let mut c = cfg(10);
    c.log_every = 5; // detection is deferred to the log step but names step 3
    let mut trainer = Trainer::new(c, &vs, dir.path(), false).unwrap();
    let mut calls = 0;
    let mut loss_fn = |b: &Tensor| {
        calls += 1;
        let l = model.loss(b, true)?;
        Ok(if calls == 3 { l * f64::NAN } else { l })
    };
    let e = trainer
        .run(&mut Arith::new(), &mut loss_fn, None, &[])
        .unwrap_err();
    match e {
        Error::NonFinite { step, ref what, .. } => {
            assert_eq!(step, 3);
            assert!(what == "loss" || what == "grad_norm", "{what}");
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    assert!(e.to_string().contains("step 3"));
    assert!(
        trainer.checkpoints().unwrap().latest().unwrap().is_none(),
        "nothing saved after NaN"
    );
}

#[test]
fn eval_runs_at_interval_and_end() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = TinyLm::new(&vs, 1, Precision::Fp32);
    let mut c = cfg(7);
    c.eval_every = 3;
    c.log_every = 2;
    let mut trainer = Trainer::new(c, &vs, dir.path(), false).unwrap();
    let mut loss_fn = |b: &Tensor| model.loss(b, true);
    let mut eval_src = Arith {
        next: 10_000,
        fail_at: None,
    };
    let mut eval = |step: u64| -> Result<serde_json::Value> {
        let l = model
            .loss(&eval_src.next_batch()?.ids, false)?
            .double_value(&[]);
        Ok(serde_json::json!({ "val_loss": l, "seen_step": step }))
    };
    let s = trainer
        .run(&mut Arith::new(), &mut loss_fn, Some(&mut eval), &[])
        .unwrap();
    let m = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    let evals: Vec<u64> = m
        .iter()
        .filter(|v| v["kind"] == "eval")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evals, [3, 6, 7]);
    let trains: Vec<u64> = m
        .iter()
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(trains, [2, 4, 6, 7]);
    assert_eq!(s.last_eval.unwrap()["seen_step"], 7);
}

#[test]
fn bad_configs_are_rejected_with_the_field_name() {
    let _g = lock();
    let e = serde_json::from_str::<TrainConfig>(r#"{"max_steps": 5, "lr_max": 1.0}"#).unwrap_err();
    assert!(e.to_string().contains("lr_max"), "{e}");
    let ok: TrainConfig =
        serde_json::from_str(r#"{"max_steps": 5, "optimizer": {"lr": 0.1}, "precision": "bf16"}"#)
            .unwrap();
    assert_eq!(ok.precision, Precision::Bf16);
    assert_eq!(ok.grad_accum, 1);
    type Edit = Box<dyn Fn(&mut TrainConfig)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("max_steps", Box::new(|c| c.max_steps = 0)),
        ("grad_accum", Box::new(|c| c.grad_accum = 0)),
        ("log_every", Box::new(|c| c.log_every = 0)),
        ("warmup_steps", Box::new(|c| c.warmup_steps = 100)),
        (
            "clip_grad_norm",
            Box::new(|c| c.clip_grad_norm = Some(-1.0)),
        ),
        ("min_lr", Box::new(|c| c.min_lr = 1.0)),
        ("optimizer.lr", Box::new(|c| c.optimizer.lr = f64::NAN)),
        ("betas.0", Box::new(|c| c.optimizer.betas.0 = 1.5)),
        ("eps", Box::new(|c| c.optimizer.eps = 0.0)),
    ];
    for (field, edit) in cases {
        let mut c = cfg(10);
        edit(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
        let vs = nn::VarStore::new(Device::Cpu);
        let dir = tempfile::tempdir().unwrap();
        assert!(Trainer::new(c, &vs, dir.path(), false).is_err());
    }
    // bf16 on the CPU is refused before any work
    let mut c = cfg(10);
    c.precision = Precision::Bf16;
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = TinyLm::new(&vs, 1, Precision::Fp32);
    let dir = tempfile::tempdir().unwrap();
    let e = Trainer::new(c, &vs, dir.path(), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bf16"), "{e}");
    assert!(!dir.path().join("metrics.jsonl").exists());
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use mome_core::optim::{AdamW, AdamWConfig, AdamWImpl};

    fn train_on_cuda(precision: Precision, dir: &Path) -> Vec<(u64, f64)> {
        let vs = nn::VarStore::new(Device::Cuda(0));
        let model = TinyLm::new(&vs, 1, precision);
        let mut c = cfg(80);
        c.precision = precision;
        let mut trainer = Trainer::new(c, &vs, dir, false).unwrap();
        let mut loss_fn = |b: &Tensor| model.loss(b, true);
        trainer
            .run(&mut Arith::new(), &mut loss_fn, None, &[])
            .unwrap();
        losses(dir)
    }

    /// bf16 matmuls with fp32 master weights track fp32 training: both learn, and the
    /// mean losses over the last 10 steps differ by at most 2% of the initial loss
    /// (a relative bound on the final loss is ill-posed: both runs reach ~0.01).
    #[test]
    fn bf16_tracks_fp32() {
        let _g = lock();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let l32 = train_on_cuda(Precision::Fp32, a.path());
        let l16 = train_on_cuda(Precision::Bf16, b.path());
        let tail = |l: &[(u64, f64)]| l[l.len() - 10..].iter().map(|x| x.1).sum::<f64>() / 10.0;
        let (t32, t16) = (tail(&l32), tail(&l16));
        assert!(
            t32 < 0.5 * l32[0].1,
            "fp32 did not learn: {} -> {t32}",
            l32[0].1
        );
        assert!(
            t16 < 0.5 * l16[0].1,
            "bf16 did not learn: {} -> {t16}",
            l16[0].1
        );
        assert!(
            (t16 - t32).abs() <= 0.02 * l32[0].1,
            "bf16 {t16} vs fp32 {t32} (initial {})",
            l32[0].1
        );
    }

    /// Flat equals PerParam (the same kernels); the fused kernel
    /// (`_fused_adamw_`'s CUDA kernel) equals them to float rounding.
    #[test]
    fn adamw_implementations_agree_on_cuda() {
        let _g = lock();
        let run = |imp: AdamWImpl| {
            let vs = nn::VarStore::new(Device::Cuda(0));
            let model = TinyLm::new(&vs, 5, Precision::Fp32);
            let mut opt = AdamW::new(
                &vs,
                AdamWConfig {
                    lr: 1e-2,
                    weight_decay: 0.1,
                    ..Default::default()
                },
            )
            .unwrap()
            .with_impl(imp);
            let mut src = Arith::new();
            for _ in 0..5 {
                let b = src.next_batch().unwrap().ids.to_device(Device::Cuda(0));
                model.loss(&b, false).unwrap().backward();
                opt.step(1e-2).unwrap();
                opt.zero_grad();
            }
            mome_core::tensor_io::named_tensors(&vs)
                .into_iter()
                .map(|(n, t)| (n, t.to_device(Device::Cpu)))
                .collect::<Vec<_>>()
        };
        let (a, b, c) = (
            run(AdamWImpl::PerParam),
            run(AdamWImpl::Flat),
            run(AdamWImpl::Fused),
        );
        for (((na, ta), (_, tb)), (_, tc)) in a.iter().zip(&b).zip(&c) {
            let d = (ta - tb).abs().max().double_value(&[]);
            assert!(d <= 1e-6, "{na}: flat vs per-param, max abs diff {d}");
            let d = (ta - tc).abs().max().double_value(&[]);
            assert!(d <= 2e-6, "{na}: fused vs per-param, max abs diff {d}");
        }
    }
}
