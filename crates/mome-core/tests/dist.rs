//! Data-parallel pieces on the CPU: environment parsing, batch slicing, gradient
//! buckets, the file rendezvous and its watchdog, and the trainer over an in-process
//! process group (threads) compared with the single-process run. NCCL tests (one
//! GPU) sit behind the `nccl` feature at the end.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mome_core::dist::{rank_rows, rank_seed, DistEnv, GradBuckets, LocalGroup, Session};
use mome_core::metrics::read_metrics;
use mome_core::{Batch, BatchSource, Error, Result, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Kind, Tensor};

/// torch's generator is process-global and the trainer reseeds it; the environment
/// is process-global too: tests that train or set variables run one at a time.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn env_of(vars: &[(&str, &str)]) -> Result<Option<DistEnv>> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    DistEnv::from_lookup(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
}

#[test]
fn env_parsing_validates_and_names_the_variable() {
    assert_eq!(env_of(&[]).unwrap(), None);
    let e = env_of(&[("MOME_WORLD_SIZE", "1")]).unwrap().unwrap();
    assert_eq!((e.rank, e.world_size, e.rendezvous.clone()), (0, 1, None));
    assert_eq!(e.join_timeout, Duration::from_secs(120));
    let e = env_of(&[
        ("MOME_WORLD_SIZE", "2"),
        ("MOME_RANK", "1"),
        ("MOME_RENDEZVOUS", "/tmp/x"),
        ("MOME_RENDEZVOUS_TIMEOUT_S", "2.5"),
        ("MOME_LAUNCHER_PID", "77"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(e.rank, 1);
    assert_eq!(e.rendezvous, Some(PathBuf::from("/tmp/x")));
    assert_eq!(e.join_timeout, Duration::from_millis(2500));
    assert_eq!(e.launcher_pid, Some(77));
    for (vars, needle) in [
        (vec![("MOME_WORLD_SIZE", "0")], "MOME_WORLD_SIZE"),
        (vec![("MOME_WORLD_SIZE", "two")], "MOME_WORLD_SIZE"),
        (
            vec![("MOME_WORLD_SIZE", "2"), ("MOME_RENDEZVOUS", "/tmp/x")],
            "MOME_RANK",
        ),
        (
            vec![
                ("MOME_WORLD_SIZE", "2"),
                ("MOME_RANK", "2"),
                ("MOME_RENDEZVOUS", "/tmp/x"),
            ],
            "MOME_RANK",
        ),
        (
            vec![("MOME_WORLD_SIZE", "2"), ("MOME_RANK", "0")],
            "MOME_RENDEZVOUS",
        ),
        (
            vec![
                ("MOME_WORLD_SIZE", "1"),
                ("MOME_RENDEZVOUS_TIMEOUT_S", "-1"),
            ],
            "MOME_RENDEZVOUS_TIMEOUT_S",
        ),
    ] {
        let err = env_of(&vars).unwrap_err().to_string();
        assert!(err.contains(needle), "{vars:?}: {err}");
    }
}

#[test]
fn batch_slicing_is_contiguous_and_needs_even_splits() {
    assert_eq!(rank_rows(8, 0, 2).unwrap(), (0, 4));
    assert_eq!(rank_rows(8, 1, 2).unwrap(), (4, 4));
    assert_eq!(rank_rows(12, 2, 3).unwrap(), (8, 4));
    assert_eq!(rank_rows(5, 0, 1).unwrap(), (0, 5));
    // The slices tile the batch exactly.
    let mut covered = Vec::new();
    for r in 0..4 {
        let (s, n) = rank_rows(16, r, 4).unwrap();
        covered.extend(s..s + n);
    }
    assert_eq!(covered, (0..16).collect::<Vec<_>>());
    let err = rank_rows(6, 0, 4).unwrap_err();
    assert!(matches!(err, Error::Config(_)));
    assert!(err.to_string().contains("6 sequences"), "{err}");
    assert!(err.to_string().contains("4 ranks"), "{err}");
    assert!(rank_rows(8, 2, 2).is_err());
    assert!(rank_rows(0, 0, 1).is_err());
}

#[test]
fn rank_zero_keeps_the_step_seed() {
    assert_eq!(rank_seed(12345, 0), 12345);
    assert_ne!(rank_seed(12345, 1), 12345);
    assert_ne!(rank_seed(12345, 1), rank_seed(12345, 2));
    // Pinned against an independent implementation of the derivation
    // (`python3 scripts/make_seed_fixture.py`): a change would break the exact
    // resume of existing data-parallel checkpoints.
    assert_eq!(rank_seed(12345, 1), 2444446963663632518);
    assert_eq!(rank_seed(12345, 2), -5548159046205333582);
    assert_eq!(rank_seed(-7, 1), 7691052880548656589);
    assert_eq!(
        rank_seed(mome_core::checkpoint::step_seed(1, 5), 3),
        6199206401318724019
    );
}

#[test]
fn buckets_group_by_kind_and_respect_the_cap() {
    let p = [
        (10, Kind::Float),
        (5, Kind::Float),
        (3, Kind::BFloat16),
        (20, Kind::Float),
        (1, Kind::Float),
    ];
    let b = GradBuckets::plan(&p, 16);
    assert_eq!(b.buckets, vec![vec![0, 1], vec![3], vec![4], vec![2]]);
    let b = GradBuckets::plan(&p, 1 << 20);
    assert_eq!(b.buckets, vec![vec![0, 1, 3, 4], vec![2]]);
}

fn session_env(dir: &Path, rank: usize, world: usize, timeout_s: f64) -> DistEnv {
    DistEnv {
        rank,
        world_size: world,
        rendezvous: Some(dir.to_path_buf()),
        join_timeout: Duration::from_secs_f64(timeout_s),
        peer_timeout: Duration::from_secs(30),
        launcher_pid: None,
    }
}

type Lost = Arc<Mutex<Vec<mome_core::dist::LostPeer>>>;

fn join_recording(env: &DistEnv) -> (Session, Lost) {
    let lost: Lost = Arc::new(Mutex::new(Vec::new()));
    let l = lost.clone();
    let s = Session::join_with(env, Box::new(move |p| l.lock().unwrap().push(p))).unwrap();
    (s, lost)
}

fn wait_for(lost: &Lost, limit: Duration) -> Option<mome_core::dist::LostPeer> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(p) = lost.lock().unwrap().first() {
            return Some(p.clone());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn rendezvous_shares_rank_zeros_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let other = std::thread::spawn(move || {
        let (mut s, lost) = join_recording(&session_env(&d, 1, 2, 20.0));
        let t = s.exchange_token(|| panic!("only rank 0 creates")).unwrap();
        s.mark_done().unwrap();
        assert!(lost.lock().unwrap().is_empty());
        t
    });
    std::thread::sleep(Duration::from_millis(200));
    let (mut s0, lost0) = join_recording(&session_env(dir.path(), 0, 2, 20.0));
    let t0 = s0.exchange_token(|| Ok(vec![7u8; 128])).unwrap();
    let t1 = other.join().unwrap();
    assert_eq!(t0, vec![7u8; 128]);
    assert_eq!(t1, t0);
    // Rank 1 is done: rank 0's watchdog does not report it.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(lost0.lock().unwrap().is_empty());
    s0.mark_done().unwrap();
    assert!(dir.path().join("rank-0.done").is_file());
    assert!(dir.path().join("rank-1.done").is_file());
}

#[test]
fn rendezvous_times_out_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (s, lost) = join_recording(&session_env(dir.path(), 1, 2, 1.0));
    let t = Instant::now();
    let err = s.exchange_token(|| unreachable!()).unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(err.contains("rank 1"), "{err}");
    assert!(err.contains("rank 0 did not publish"), "{err}");
    assert!(err.contains("MOME_RENDEZVOUS_TIMEOUT_S"), "{err}");
    // The watchdog also gives up on rank 0, which never joined.
    let p = wait_for(&lost, Duration::from_secs(5)).expect("watchdog report");
    assert_eq!(p.rank, Some(0));
    assert!(p.reason.contains("did not join"), "{}", p.reason);
}

#[test]
fn a_reused_rendezvous_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let env = session_env(dir.path(), 0, 1, 5.0);
    let (mut s, _) = join_recording(&env);
    s.mark_done().unwrap();
    drop(s);
    let err = Session::join_with(&env, Box::new(|_| {})).unwrap_err();
    assert!(err.to_string().contains("earlier run"), "{err}");
}

#[test]
fn watchdog_names_a_dead_peer() {
    let dir = tempfile::tempdir().unwrap();
    // A finished process stands for a crashed rank 1.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    std::fs::write(
        dir.path().join("rank-1.pid"),
        format!(
            "{pid}\n{}\n",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim()
        ),
    )
    .unwrap();
    let t = Instant::now();
    let (_s, lost) = join_recording(&session_env(dir.path(), 0, 2, 60.0));
    let p = wait_for(&lost, Duration::from_secs(10)).expect("watchdog report");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(p.rank, Some(1));
    assert!(p.reason.contains(&format!("pid {pid}")), "{}", p.reason);
    assert!(p.to_string().starts_with("lost rank 1"), "{p}");
}

#[test]
fn watchdog_reports_a_failed_peer_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s1, _) = join_recording(&session_env(dir.path(), 1, 2, 60.0));
    let (_s0, lost0) = join_recording(&session_env(dir.path(), 0, 2, 60.0));
    s1.mark_failed("non-finite loss at optimizer step 3")
        .unwrap();
    let p = wait_for(&lost0, Duration::from_secs(5)).expect("watchdog report");
    assert_eq!(p.rank, Some(1));
    assert!(p.reason.contains("non-finite loss"), "{}", p.reason);
}

#[test]
fn a_failing_health_check_stops_the_rank() {
    let dir = tempfile::tempdir().unwrap();
    let (s, lost) = join_recording(&session_env(dir.path(), 0, 1, 60.0));
    s.on_check(Box::new(|| {
        Some("NCCL reported an error: remote error".into())
    }));
    let p = wait_for(&lost, Duration::from_secs(5)).expect("watchdog report");
    assert_eq!(p.rank, None);
    assert_eq!(p.to_string(), "NCCL reported an error: remote error");
}

#[test]
fn dropping_an_unfinished_session_marks_it_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = join_recording(&session_env(dir.path(), 1, 2, 60.0));
    drop(s);
    let msg = std::fs::read_to_string(dir.path().join("rank-1.failed")).unwrap();
    assert!(msg.contains("before finishing"), "{msg}");
}

#[test]
fn pid_alive_sees_running_and_finished_processes() {
    assert!(mome_core::dist::pid_alive(std::process::id()));
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    assert!(mome_core::dist::pid_alive(child.id()));
    mome_core::dist::terminate(child.id(), false).unwrap();
    let t = Instant::now();
    // Not reaped yet: a zombie counts as gone.
    while mome_core::dist::pid_alive(child.id()) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "SIGTERM not delivered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait().unwrap();
}

// ---------------------------------------------------------------------------------
// The trainer over an in-process group (one thread per rank).

const V: i64 = 16;
const D: i64 = 24;

/// 8 sequences of `x_{t+1} = (x_t + 3) mod V` per batch; batch `n` depends only on `n`.
struct Arith {
    next: u64,
    rows: usize,
}

impl BatchSource for Arith {
    fn next_batch(&mut self) -> Result<Batch> {
        let mut rng = ChaCha8Rng::seed_from_u64(500 + self.next);
        self.next += 1;
        let mut v = Vec::new();
        for _ in 0..self.rows {
            let mut x: i64 = rng.gen_range(0..V);
            for _ in 0..9 {
                v.push(x);
                x = (x + 3) % V;
            }
        }
        Ok(Batch::ids(
            Tensor::from_slice(&v).view([self.rows as i64, 9]),
        ))
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "next": self.next })
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.next = state["next"].as_u64().unwrap_or(0);
        Ok(())
    }
}

/// A tiny next-token model without dropout; `init_seed` differs per rank to show
/// that rank 0's weights are broadcast.
fn model(vs: &nn::VarStore, init_seed: i64) -> impl Fn(&Tensor) -> Result<Tensor> {
    tch::manual_seed(init_seed);
    let r = vs.root();
    let init = nn::Init::Randn {
        mean: 0.0,
        stdev: 0.3,
    };
    let wte = (&r / "wte").var("weight", &[V, D], init);
    let fc = (&r / "fc").var("weight", &[D, D], init);
    let fcb = (&r / "fc").var("bias", &[D], nn::Init::Const(0.0));
    let head = (&r / "head").var("weight", &[V, D], init);
    move |b: &Tensor| {
        let t = b.size()[1];
        let (x, y) = (b.narrow(1, 0, t - 1), b.narrow(1, 1, t - 1));
        let h = Tensor::embedding(&wte, &x, -1, false, false);
        let h = h.linear(&fc, Some(&fcb)).gelu("none");
        let logits = h.linear::<Tensor>(&head, None);
        Ok(logits
            .view([-1, V])
            .cross_entropy_for_logits(&y.reshape([-1])))
    }
}

fn dp_cfg(steps: u64, grad_accum: u64) -> TrainConfig {
    let mut c = TrainConfig::new(steps, 1e-2);
    c.log_every = 1;
    c.grad_accum = grad_accum;
    c.clip_grad_norm = Some(0.5);
    c.optimizer.weight_decay = 0.01;
    c.seed = 3;
    c.quiet = true;
    c
}

fn losses(run_dir: &Path) -> Vec<f64> {
    read_metrics(&run_dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

fn weights(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    mome_core::tensor_io::named_tensors(vs)
}

type RankResult = Result<(Vec<(String, Tensor)>, mome_core::TrainSummary)>;

/// Trains one rank per entry of `dirs` (its run folder) on threads; every rank must
/// succeed or fail at the same collective (a lone failure would leave the others
/// waiting at the barrier).
fn train_ranks(dirs: &[PathBuf], c: TrainConfig, rows: usize, resume: bool) -> Vec<RankResult> {
    let world = dirs.len();
    let mut handles = Vec::new();
    for (rank, g) in LocalGroup::new(world).into_iter().enumerate() {
        let (dir, c) = (dirs[rank].clone(), c.clone());
        // Initialised here, one after the other (the generator is process-global).
        let vs = nn::VarStore::new(Device::Cpu);
        let f = model(&vs, 10 + rank as i64);
        handles.push(std::thread::spawn(move || -> RankResult {
            let mut t = Trainer::with_collective(c, &vs, &dir, resume, Some(Box::new(g)))?;
            assert_eq!((t.rank(), t.world_size()), (rank, world));
            let mut loss_fn = |b: &Tensor| {
                assert_eq!(b.size()[0] as usize, rows / world);
                f(b)
            };
            let s = t.run(&mut Arith { next: 0, rows }, &mut loss_fn, None, &[])?;
            Ok((weights(&vs), s))
        }));
    }
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Trains `world` ranks on threads in `dir`; returns rank 0's final weights and the
/// summaries.
fn train_dp(
    world: usize,
    dir: &Path,
    c: TrainConfig,
    rows: usize,
) -> (Vec<(String, Tensor)>, Vec<mome_core::TrainSummary>) {
    let dirs = vec![dir.to_path_buf(); world];
    let mut out: Vec<_> = train_ranks(&dirs, c, rows, false)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let summaries = out.iter().map(|(_, s)| s.clone()).collect();
    (out.swap_remove(0).0, summaries)
}

fn train_single(dir: &Path, c: TrainConfig, rows: usize) -> Vec<(String, Tensor)> {
    let vs = nn::VarStore::new(Device::Cpu);
    let f = model(&vs, 10);
    let mut t = Trainer::new(c, &vs, dir, false).unwrap();
    t.run(
        &mut Arith { next: 0, rows },
        &mut |b: &Tensor| f(b),
        None,
        &[],
    )
    .unwrap();
    weights(&vs)
}

fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    mome_core::tensor_io::max_abs_diff(a, b).unwrap()
}

#[test]
fn two_ranks_match_one_process_on_the_global_batch() {
    let _g = lock();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let single = train_single(a.path(), dp_cfg(12, 2), 8);
    let (dp, summaries) = train_dp(2, b.path(), dp_cfg(12, 2), 8);
    let (l1, l2) = (losses(a.path()), losses(b.path()));
    assert_eq!(l1.len(), 12);
    assert_eq!(l2.len(), 12);
    for (x, y) in l1.iter().zip(&l2) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{l1:?} vs {l2:?}");
    }
    assert!(l1[11] < l1[0]);
    let d = max_diff(&single, &dp);
    assert!(d < 1e-4, "weights differ by {d}");
    // Rank 0 alone wrote metrics and checkpoints; both report the same global loss
    // and global token count.
    assert_eq!(summaries[0].final_loss, summaries[1].final_loss);
    assert_eq!(summaries[0].tokens_seen, 12 * 2 * 8 * 9);
    assert_eq!(summaries[1].tokens_seen, summaries[0].tokens_seen);
    assert!(summaries[0].last_checkpoint.is_some());
    assert!(summaries[1].last_checkpoint.is_none());
    assert_eq!(
        std::fs::read_dir(b.path().join("checkpoints"))
            .unwrap()
            .count(),
        1
    );
}

/// Both ranks resume from rank 0's checkpoint and continue exactly like a straight
/// run; ranks at different steps are refused.
/// The overlapped reduction (started from gradient hooks during backward, the
/// default) and the reduction after backward compute the same per-element sums:
/// bit-identical weights and losses, with gradient accumulation and bf16 traffic too.
#[test]
fn overlapped_reduction_equals_reduction_after_backward() {
    let _g = lock();
    for (ga, reduce) in [
        (1, mome_core::GradReduce::Fp32),
        (2, mome_core::GradReduce::Fp32),
        (1, mome_core::GradReduce::Bf16),
    ] {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut on = dp_cfg(8, ga);
        on.grad_reduce = reduce;
        assert!(on.grad_overlap, "overlap is the default");
        let mut off = on.clone();
        off.grad_overlap = false;
        let (w_on, _) = train_dp(2, a.path(), on, 8);
        let (w_off, _) = train_dp(2, b.path(), off, 8);
        assert_eq!(max_diff(&w_on, &w_off), 0.0, "grad_accum {ga}, {reduce:?}");
        assert_eq!(losses(a.path()), losses(b.path()));
    }
}

/// `shard_update`: each rank clips and updates its share, then broadcasts it; the
/// run equals the full update up to the summation order of the gradient norm, and
/// a resume (moments gathered on rank 0 before the checkpoint) continues it exactly.
#[test]
fn sharded_update_matches_the_full_update_and_resumes() {
    let _g = lock();
    let cfg = |steps, shard| {
        let mut c = dp_cfg(steps, 1);
        c.schedule = mome_core::schedule::ScheduleKind::Constant;
        c.shard_update = shard;
        c
    };
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (full, _) = train_dp(2, a.path(), cfg(10, false), 8);
    let (sharded, _) = train_dp(2, b.path(), cfg(10, true), 8);
    let d = max_diff(&full, &sharded);
    assert!(d <= 1e-6, "weights differ by {d}");
    let (la, lb) = (losses(a.path()), losses(b.path()));
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{la:?} vs {lb:?}");
    }
    // Both ranks end with the same weights.
    let dirs = vec![c.path().to_path_buf(); 2];
    let first: Vec<_> = train_ranks(&dirs, cfg(6, true), 8, false)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(max_diff(&first[0].0, &first[1].0), 0.0);
    let resumed: Vec<_> = train_ranks(&dirs, cfg(10, true), 8, true)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(resumed[0].1.start_step, 6);
    let d = max_diff(&sharded, &resumed[0].0);
    assert!(d <= 1e-6, "resumed weights differ by {d}");
    assert_eq!(max_diff(&resumed[0].0, &resumed[1].0), 0.0);
}

/// `grad_reduce = "bf16"`: the gradients cross in bf16, so the run is close to the
/// fp32 one but not equal to it.
#[test]
fn bf16_gradient_reduction_is_close_to_fp32() {
    let _g = lock();
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let single = train_single(a.path(), dp_cfg(12, 1), 8);
    let (fp32, _) = train_dp(2, b.path(), dp_cfg(12, 1), 8);
    let mut cfg = dp_cfg(12, 1);
    cfg.grad_reduce = mome_core::GradReduce::Bf16;
    let (bf16, _) = train_dp(2, c.path(), cfg, 8);
    assert!(max_diff(&single, &fp32) < 1e-4);
    let d = max_diff(&single, &bf16);
    assert!(d > 1e-6, "bf16 reduction left the weights unchanged ({d})");
    assert!(d < 2e-2, "bf16 reduction moved the weights by {d}");
    let (l1, l3) = (losses(a.path()), losses(c.path()));
    for (x, y) in l1.iter().zip(&l3) {
        assert!((x - y).abs() <= 1e-2 * x.abs().max(1.0), "{l1:?} vs {l3:?}");
    }
}

#[test]
fn ranks_resume_from_the_same_checkpoint() {
    let _g = lock();
    // A constant schedule: the learning rates do not depend on max_steps.
    let cfg = |steps| {
        let mut c = dp_cfg(steps, 1);
        c.schedule = mome_core::schedule::ScheduleKind::Constant;
        c
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (straight, _) = train_dp(2, a.path(), cfg(10), 8);
    let dirs = vec![b.path().to_path_buf(); 2];
    for r in train_ranks(&dirs, cfg(6), 8, false) {
        r.unwrap();
    }
    let resumed: Vec<_> = train_ranks(&dirs, cfg(10), 8, true)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(resumed[0].1.start_step, 6);
    assert_eq!(resumed[1].1.start_step, 6);
    let (la, lb) = (losses(a.path()), losses(b.path()));
    assert_eq!(lb.len(), 10);
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{la:?} vs {lb:?}");
    }
    let d = max_diff(&straight, &resumed[0].0);
    assert!(d <= 1e-6, "weights differ by {d}");

    // Rank 0 resumes at step 10, rank 1 (another folder, no checkpoint) at 0.
    let c = tempfile::tempdir().unwrap();
    let errs = train_ranks(
        &[b.path().to_path_buf(), c.path().to_path_buf()],
        cfg(12),
        8,
        true,
    );
    for e in errs {
        let e = e.unwrap_err().to_string();
        assert!(e.contains("different steps"), "{e}");
    }
}

#[test]
fn one_rank_group_is_exactly_the_plain_run() {
    let _g = lock();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let single = train_single(a.path(), dp_cfg(6, 1), 8);
    let (dp, _) = train_dp(1, b.path(), dp_cfg(6, 1), 8);
    assert_eq!(losses(a.path()), losses(b.path()));
    assert_eq!(max_diff(&single, &dp), 0.0);
}

#[test]
fn an_uneven_split_is_a_config_error() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let mut handles = Vec::new();
    for g in LocalGroup::new(2) {
        let d = dir.path().to_path_buf();
        handles.push(std::thread::spawn(move || {
            let vs = nn::VarStore::new(Device::Cpu);
            let f = model(&vs, 1);
            let mut t =
                Trainer::with_collective(dp_cfg(3, 1), &vs, &d, false, Some(Box::new(g))).unwrap();
            t.run(
                &mut Arith { next: 0, rows: 5 },
                &mut |b: &Tensor| f(b),
                None,
                &[],
            )
            .unwrap_err()
            .to_string()
        }));
    }
    for h in handles {
        let e = h.join().unwrap();
        assert!(e.contains("5 sequences") && e.contains("2 ranks"), "{e}");
    }
}

#[test]
fn the_single_process_trainer_refuses_several_ranks() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let vars = [
        ("MOME_WORLD_SIZE", "2"),
        ("MOME_RANK", "0"),
        ("MOME_RENDEZVOUS", "/nonexistent"),
    ];
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let _f = model(&vs, 1);
    let r = Trainer::new(dp_cfg(1, 1), &vs, dir.path(), false);
    let dp = Trainer::new_data_parallel(dp_cfg(1, 1), &vs, dir.path(), false);
    for (k, _) in vars {
        std::env::remove_var(k);
    }
    let e = r.unwrap_err().to_string();
    assert!(e.contains("is single-process"), "{e}");
    // Without NCCL (or on the CPU) a world of 2 is an error naming the cause.
    let e = dp.unwrap_err().to_string();
    assert!(e.contains("MOME_WORLD_SIZE"), "{e}");
}

#[cfg(feature = "nccl")]
mod nccl {
    use super::*;
    use mome_core::dist::nccl::{nccl_version, unique_id, NcclGroup};
    use mome_core::dist::{Collective, GroupHandle, OverlapReducer};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Loads libnccl (no GPU needed).
    #[test]
    fn nccl_library_loads() {
        let v = nccl_version().unwrap();
        assert!(v >= 22800, "NCCL {v}");
    }

    /// Makes an NCCL unique id (no GPU needed).
    #[test]
    fn unique_ids_have_128_bytes_and_differ() {
        let (a, b) = (unique_id().unwrap(), unique_id().unwrap());
        assert_eq!(a.len(), 128);
        assert_ne!(a, b);
    }

    fn one_rank() -> NcclGroup {
        let env = DistEnv {
            rank: 0,
            world_size: 1,
            rendezvous: None,
            join_timeout: Duration::from_secs(30),
            peer_timeout: Duration::from_secs(30),
            launcher_pid: None,
        };
        NcclGroup::init(&env, Device::Cuda(0)).unwrap()
    }

    #[test]
    fn world_of_one_all_reduce_and_broadcast_are_identity() {
        let _g = lock();
        let mut g = one_rank();
        let dev = Device::Cuda(0);
        let a = Tensor::randn([1000], (Kind::Float, dev));
        let b = Tensor::randn([7, 3], (Kind::BFloat16, dev));
        let c = Tensor::randn([4, 6], (Kind::Float, dev)).transpose(0, 1); // non-contiguous
        let (a0, b0, c0) = (a.copy(), b.copy(), c.copy());
        g.all_reduce_sum(&[a.shallow_clone(), b.shallow_clone(), c.shallow_clone()])
            .unwrap();
        assert!(a.equal(&a0) && b.equal(&b0) && c.equal(&c0));
        g.broadcast(&[a.shallow_clone()], 0).unwrap();
        assert!(a.equal(&a0));
        let cpu = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        assert!(g.all_reduce_sum(&[cpu]).is_err());
    }

    /// Trains the tiny model on `cuda:0` in `dir` (through `group` if given); the
    /// final weights on the CPU.
    fn run_cuda(
        dir: &Path,
        cfg: TrainConfig,
        group: Option<Box<dyn Collective>>,
    ) -> Vec<(String, Tensor)> {
        let vs = nn::VarStore::new(Device::Cuda(0));
        let f = model(&vs, 10);
        let mut t = Trainer::with_collective(cfg, &vs, dir, false, group).unwrap();
        t.run(
            &mut Arith { next: 0, rows: 8 },
            &mut |b: &Tensor| f(b),
            None,
            &[],
        )
        .unwrap();
        weights(&vs)
            .into_iter()
            .map(|(n, t)| (n, t.to_device(Device::Cpu)))
            .collect()
    }

    fn assert_same_run(a: &Path, b: &Path, wa: &[(String, Tensor)], wb: &[(String, Tensor)]) {
        // Identical arithmetic: equal unless a CUDA kernel is non-deterministic.
        let (la, lb) = (losses(a), losses(b));
        assert_eq!(la.len(), 8);
        for (x, y) in la.iter().zip(&lb) {
            assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{la:?} vs {lb:?}");
        }
        let d = max_diff(wa, wb);
        assert!(d <= 1e-6, "weights differ by {d}");
    }

    /// Through the NCCL group, one rank trains exactly like the plain trainer (the
    /// all-reduce overlapped with backward: gradient hooks on libtorch's CUDA
    /// backward thread, NCCL on its own stream).
    #[test]
    fn world_of_one_trainer_matches_the_plain_run() {
        let _g = lock();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let plain = run_cuda(a.path(), dp_cfg(8, 2), None);
        let dp = run_cuda(b.path(), dp_cfg(8, 2), Some(Box::new(one_rank())));
        assert_same_run(a.path(), b.path(), &plain, &dp);
    }

    /// The overlapped reduction and the one after backward, through NCCL.
    #[test]
    fn world_of_one_overlap_matches_reduction_after_backward() {
        let _g = lock();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut off = dp_cfg(8, 1);
        off.grad_overlap = false;
        let w_on = run_cuda(a.path(), dp_cfg(8, 1), Some(Box::new(one_rank())));
        let w_off = run_cuda(b.path(), off, Some(Box::new(one_rank())));
        assert_same_run(a.path(), b.path(), &w_on, &w_off);
    }

    /// A started all-reduce runs on NCCL's stream after the compute stream's earlier
    /// work, and the compute stream waits for it at `wait_started`.
    #[test]
    fn started_all_reduce_is_ordered_with_the_compute_stream() {
        let _g = lock();
        let mut g = one_rank();
        let dev = Device::Cuda(0);
        let x = Tensor::randn([1 << 22], (Kind::Float, dev));
        // Written by a kernel just queued on the compute stream.
        let y = &x * 3.0;
        g.start_all_reduce_sum(&y).unwrap();
        // More compute-stream work while the collective may still run.
        let m = Tensor::randn([2048, 2048], (Kind::Float, dev));
        let _ = m.matmul(&m);
        g.wait_started().unwrap();
        let z = &y - &x * 3.0;
        assert_eq!(z.abs().max().double_value(&[]), 0.0);
        let cpu = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        assert!(g.start_all_reduce_sum(&cpu).is_err());
    }

    /// An NCCL rank that records, per started sum, whether the test was inside
    /// backward at the time.
    #[derive(Debug)]
    struct Recording {
        inner: NcclGroup,
        in_backward: Arc<AtomicBool>,
        starts: Arc<Mutex<Vec<bool>>>,
    }

    impl Collective for Recording {
        fn rank(&self) -> usize {
            self.inner.rank()
        }
        fn world_size(&self) -> usize {
            self.inner.world_size()
        }
        fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<()> {
            self.inner.all_reduce_sum(tensors)
        }
        fn broadcast(&mut self, tensors: &[Tensor], root: usize) -> Result<()> {
            self.inner.broadcast(tensors, root)
        }
        fn start_all_reduce_sum(&mut self, tensor: &Tensor) -> Result<()> {
            let during = self.in_backward.load(Ordering::SeqCst);
            self.starts.lock().unwrap().push(during);
            self.inner.start_all_reduce_sum(tensor)
        }
        fn wait_started(&mut self) -> Result<()> {
            self.inner.wait_started()
        }
    }

    /// On CUDA the hooks run on libtorch's backward thread: with one bucket per
    /// weight, every bucket after the first step starts inside backward, on NCCL's
    /// stream, while the remaining backward kernels run, and the gradients that come
    /// back equal those of a plain backward.
    #[test]
    fn cuda_buckets_start_during_backward_and_keep_the_gradients() {
        let _g = lock();
        let dev = Device::Cuda(0);
        let vs = nn::VarStore::new(dev);
        tch::manual_seed(5);
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.05,
        };
        let ws: Vec<Tensor> = (0..6)
            .map(|i| vs.root().var(&format!("w{i}"), &[1024, 1024], init))
            .collect();
        let named: Vec<(String, Tensor)> = ws
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("w{i}"), w.shallow_clone()))
            .collect();
        let in_backward = Arc::new(AtomicBool::new(false));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let group = GroupHandle::new(Box::new(Recording {
            inner: one_rank(),
            in_backward: in_backward.clone(),
            starts: starts.clone(),
        }));
        // A cap below one weight (1 Mi elements): one bucket per weight.
        let mut r = OverlapReducer::new(group, &named, None, 1 << 19);
        let x = Tensor::randn([512, 1024], (Kind::Float, dev));
        let loss_of = |k: f64| {
            let mut h = x.shallow_clone();
            for w in &ws {
                h = h.matmul(w).tanh();
            }
            h.square().sum(Kind::Float) * k
        };
        let zero = || {
            for w in &ws {
                w.shallow_clone().zero_grad();
            }
        };
        for step in 0..4 {
            let k = 1.0 + step as f64;
            zero();
            let loss = loss_of(k);
            r.arm().unwrap();
            in_backward.store(true, Ordering::SeqCst);
            loss.backward();
            in_backward.store(false, Ordering::SeqCst);
            r.finish().unwrap();
            let reduced: Vec<Tensor> = ws.iter().map(|w| w.grad().copy()).collect();
            zero();
            loss_of(k).backward();
            for (i, (a, w)) in reduced.iter().zip(&ws).enumerate() {
                let b = w.grad();
                let d = (a - &b).abs().max().double_value(&[]);
                let m = b.abs().max().double_value(&[]);
                assert!(
                    m > 0.0 && d <= 1e-6 * m,
                    "step {step}, w{i}: {d} vs max {m}"
                );
            }
        }
        let starts = starts.lock().unwrap().clone();
        assert_eq!(starts.len(), 4 * 6, "{starts:?}");
        assert!(starts[..6].iter().all(|d| !d), "{starts:?}");
        assert!(starts[6..].iter().all(|d| *d), "{starts:?}");
    }
}
