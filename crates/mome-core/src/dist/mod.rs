//! Several processes, one per GPU: the process group seen from one rank.
//!
//! A run of `N` ranks is `N` processes of the same command started by `mome launch
//! --gpus N -- <command>` (or by hand) with these environment variables:
//!
//! | variable | meaning |
//! |---|---|
//! | `MOME_WORLD_SIZE` | number of ranks `N` (>= 1) |
//! | `MOME_RANK` | this process's rank, `0..N` |
//! | `MOME_RENDEZVOUS` | a fresh folder shared by the ranks (required when `N > 1`) |
//! | `MOME_RENDEZVOUS_TIMEOUT_S` | how long a rank waits for the others to join (default 120) |
//! | `MOME_PEER_TIMEOUT_S` | a peer whose heartbeat is older than this is lost (default 30) |
//! | `MOME_LAUNCHER_PID` | set by `mome launch`: the ranks exit when the launcher is gone |
//!
//! [`DistEnv`] reads them; [`Session`] is the file-based rendezvous in the folder
//! (pid files, heartbeats, done / failed markers, the NCCL unique id written by rank 0
//! and polled for by the others) and the watchdog thread that ends this rank with an
//! error naming the lost peer when another rank dies; [`Collective`] is what the
//! [`crate::Trainer`] needs from the group (sum all-reduce and broadcast of tensors).
//! With the `nccl` feature, [`init_from_env`] returns an NCCL communicator
//! (`nccl::NcclGroup`) for CUDA devices; without it a world size above 1 is an error.
//!
//! Data parallelism ([`crate::Trainer::new_data_parallel`]): every rank draws the same
//! global batch from the seeded sampler and trains on its contiguous `1/N` of the rows
//! ([`rank_rows`]); gradients are summed over the ranks in flat buckets
//! ([`GradBuckets`]) and divided by `N` before clipping, so the update is the one of
//! the whole global batch on one device (same global batch semantics). By default
//! the buckets' sums start while backward still runs ([`OverlapReducer`]: hooks on
//! the gradient accumulation, through a small C++ shim over libtorch since tch has
//! none; NCCL runs them on a stream of its own).

mod hooks;
mod local;
mod overlap;
mod session;

#[cfg(feature = "nccl")]
pub mod nccl;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

pub use local::LocalGroup;
pub use overlap::{OverlapReducer, OVERLAP_BUCKET_ELEMENTS};
pub use session::{pid_alive, terminate, LostPeer, Session, EXIT_PEER_LOST};

/// Environment variable: number of ranks.
pub const ENV_WORLD_SIZE: &str = "MOME_WORLD_SIZE";
/// Environment variable: this process's rank.
pub const ENV_RANK: &str = "MOME_RANK";
/// Environment variable: the rendezvous folder.
pub const ENV_RENDEZVOUS: &str = "MOME_RENDEZVOUS";
/// Environment variable: join timeout in seconds.
pub const ENV_RENDEZVOUS_TIMEOUT: &str = "MOME_RENDEZVOUS_TIMEOUT_S";
/// Environment variable: peer heartbeat timeout in seconds.
pub const ENV_PEER_TIMEOUT: &str = "MOME_PEER_TIMEOUT_S";
/// Environment variable: pid of `mome launch`.
pub const ENV_LAUNCHER_PID: &str = "MOME_LAUNCHER_PID";

/// The process group as described by the environment (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct DistEnv {
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// The shared rendezvous folder (`None` only when `world_size == 1`).
    pub rendezvous: Option<PathBuf>,
    /// How long to wait for the other ranks to join.
    pub join_timeout: Duration,
    /// A peer whose last heartbeat is older than this is considered lost.
    pub peer_timeout: Duration,
    /// The launcher's pid, when started by `mome launch`.
    pub launcher_pid: Option<u32>,
}

fn parse_var<T: std::str::FromStr>(name: &str, value: &str, what: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| Error::Config(format!("{name} = {value:?}: expected {what}")))
}

fn parse_secs(name: &str, value: Option<String>, default: f64) -> Result<Duration> {
    let secs = match value {
        None => default,
        Some(v) => parse_var::<f64>(name, &v, "a number of seconds")?,
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 1e7 {
        return Err(Error::Config(format!(
            "{name} = {secs}: expected seconds > 0"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl DistEnv {
    /// Reads the process environment; `None` when `MOME_WORLD_SIZE` is not set.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`DistEnv::from_env`] with the variables given by `get` (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(ws) = get(ENV_WORLD_SIZE) else {
            return Ok(None);
        };
        let world_size: usize = parse_var(ENV_WORLD_SIZE, &ws, "a number of ranks >= 1")?;
        if world_size == 0 {
            return Err(Error::Config(format!("{ENV_WORLD_SIZE} = 0: must be >= 1")));
        }
        let rank: usize = match get(ENV_RANK) {
            Some(r) => parse_var(ENV_RANK, &r, "a rank >= 0")?,
            None if world_size == 1 => 0,
            None => {
                return Err(Error::Config(format!(
                    "{ENV_WORLD_SIZE} = {world_size} but {ENV_RANK} is not set"
                )))
            }
        };
        if rank >= world_size {
            return Err(Error::Config(format!(
                "{ENV_RANK} = {rank}: must be below {ENV_WORLD_SIZE} = {world_size}"
            )));
        }
        let rendezvous = get(ENV_RENDEZVOUS)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        if world_size > 1 && rendezvous.is_none() {
            return Err(Error::Config(format!(
                "{ENV_WORLD_SIZE} = {world_size} needs {ENV_RENDEZVOUS} (a fresh folder shared \
                 by the ranks; `mome launch` sets it)"
            )));
        }
        let launcher_pid = match get(ENV_LAUNCHER_PID) {
            Some(p) => Some(parse_var(ENV_LAUNCHER_PID, &p, "a process id")?),
            None => None,
        };
        Ok(Some(Self {
            rank,
            world_size,
            rendezvous,
            join_timeout: parse_secs(ENV_RENDEZVOUS_TIMEOUT, get(ENV_RENDEZVOUS_TIMEOUT), 120.0)?,
            peer_timeout: parse_secs(ENV_PEER_TIMEOUT, get(ENV_PEER_TIMEOUT), 30.0)?,
            launcher_pid,
        }))
    }

    /// Whether the environment asks for more than one rank.
    pub fn world_size_from_env() -> Result<usize> {
        Ok(Self::from_env()?.map_or(1, |e| e.world_size))
    }
}

/// What the training loop needs from a process group. Every rank calls the methods
/// in the same order with the same number of tensors of the same shapes and kinds.
pub trait Collective: Send + std::fmt::Debug {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Replaces each tensor, in place, by its sum over the ranks.
    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<()>;
    /// Replaces each tensor, in place, by rank `root`'s.
    fn broadcast(&mut self, tensors: &[Tensor], root: usize) -> Result<()>;
    /// Starts replacing `tensor` (contiguous) by its sum over the ranks, after the
    /// work already queued on the compute stream, without waiting for it: the
    /// caller keeps `tensor` alive and unchanged until [`Collective::wait_started`].
    /// May be called from a thread of libtorch's backward. The default runs the
    /// sum at once ([`Collective::all_reduce_sum`]); NCCL runs it on a stream of its
    /// own, so it overlaps the rest of backward.
    fn start_all_reduce_sum(&mut self, tensor: &Tensor) -> Result<()> {
        self.all_reduce_sum(std::slice::from_ref(tensor))
    }
    /// Makes the compute stream wait for the sums started since the last call.
    fn wait_started(&mut self) -> Result<()> {
        Ok(())
    }
    /// Called once when training ends: `Ok` marks this rank done, `Err(message)`
    /// failed (the peers' watchdogs then stop with that message).
    fn finish(&mut self, _outcome: std::result::Result<(), String>) {}
}

/// A process group shared between the [`crate::Trainer`] and the caller's loss code
/// (e.g. the adaptive KD weights, which need the losses of the whole global batch):
/// a cheap clone of one [`Collective`]. The collectives take a lock; all calls come
/// from the training thread of the rank, in the same order on every rank.
#[derive(Clone)]
pub struct GroupHandle {
    inner: Arc<Mutex<Box<dyn Collective>>>,
    rank: usize,
    world: usize,
}

impl std::fmt::Debug for GroupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupHandle")
            .field("rank", &self.rank)
            .field("world_size", &self.world)
            .finish()
    }
}

impl GroupHandle {
    /// Wraps a collective.
    pub fn new(group: Box<dyn Collective>) -> Self {
        let (rank, world) = (group.rank(), group.world_size());
        Self {
            inner: Arc::new(Mutex::new(group)),
            rank,
            world,
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// Runs `f` on the collective.
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn Collective) -> Result<T>) -> Result<T> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| Error::Distributed("the process group's lock is poisoned".into()))?;
        f(g.as_mut())
    }

    /// Replaces each tensor, in place, by its sum over the ranks.
    pub fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<()> {
        self.with(|g| g.all_reduce_sum(tensors))
    }

    /// Replaces each tensor, in place, by its mean over the ranks.
    pub fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<()> {
        self.all_reduce_sum(tensors)?;
        if self.world > 1 {
            tch::no_grad(|| -> Result<()> {
                for t in tensors {
                    let _ = t.shallow_clone().f_div_scalar_(self.world as f64)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Replaces each tensor, in place, by rank `root`'s.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        self.with(|g| g.broadcast(tensors, root))
    }

    /// Marks this rank done (`Ok`) or failed (see [`Collective::finish`]).
    pub fn finish(&self, outcome: std::result::Result<(), String>) {
        let _ = self.with(|g| {
            g.finish(outcome);
            Ok(())
        });
    }

    /// The rows `(start, len)` of a global batch of `rows` rows that this rank
    /// trains on ([`rank_rows`]).
    pub fn rows(&self, rows: usize) -> Result<(usize, usize)> {
        rank_rows(rows, self.rank, self.world)
    }
}

/// The per-row side data (e.g. a batch's sequence references) of the `local_rows`
/// rows this rank trains on: `items` as is when it already has one entry per local
/// row (a source that reads the rank's rows only), else the rank's slice of the
/// global batch's `items`.
pub fn local_items<'a, T>(
    items: &'a [T],
    local_rows: usize,
    group: Option<&GroupHandle>,
) -> Result<&'a [T]> {
    if items.len() == local_rows {
        return Ok(items);
    }
    let (start, len) = match group {
        Some(g) => g.rows(items.len())?,
        None => (0, items.len()),
    };
    if len != local_rows {
        return Err(Error::Other(format!(
            "{} batch items for {local_rows} rows: the source's items do not match the batch",
            items.len()
        )));
    }
    Ok(&items[start..start + len])
}

/// The values of `values` (any shape and float kind, on the device) averaged over the
/// ranks of `group` (as is without one), read back to the host: e.g. the losses of
/// the global batch, the same on every rank. Every rank calls it at the same point.
pub fn mean_to_host(values: &Tensor, group: Option<&GroupHandle>) -> Result<Vec<f64>> {
    let v = values.f_detach()?.f_to_kind(Kind::Float)?.f_reshape([-1])?;
    if let Some(g) = group {
        g.all_reduce_mean(std::slice::from_ref(&v))?;
    }
    Ok(Vec::<f64>::try_from(
        &v.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?,
    )?)
}

/// The contiguous rows `(start, len)` of a global batch of `rows` rows that rank
/// `rank` of `world_size` trains on: rank `r` takes rows `r * rows / N .. (r + 1) *
/// rows / N`. `rows` must be divisible by the world size (equal slices keep the mean
/// of the ranks' mean losses equal to the global batch's mean loss).
pub fn rank_rows(rows: usize, rank: usize, world_size: usize) -> Result<(usize, usize)> {
    if world_size == 0 || rank >= world_size {
        return Err(Error::Config(format!(
            "rank {rank} of world size {world_size}: the rank must be below the world size"
        )));
    }
    if rows % world_size != 0 || rows == 0 {
        return Err(Error::Config(format!(
            "a global batch of {rows} sequences cannot be split evenly over {world_size} \
             ranks: batch_size must be a positive multiple of the world size"
        )));
    }
    let per = rows / world_size;
    Ok((rank * per, per))
}

/// The torch seed of rank `rank` for an optimizer step whose single-process seed is
/// `step_seed`: rank 0 keeps it (a 1-rank run is exactly the plain run); other ranks
/// get an independent seed so that their dropout masks are not copies of rank 0's.
pub fn rank_seed(step_seed: i64, rank: usize) -> i64 {
    if rank == 0 {
        return step_seed;
    }
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"mome-rank-seed");
    h.update(step_seed.to_le_bytes());
    h.update((rank as u64).to_le_bytes());
    let d = h.finalize();
    i64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Gradients flattened into buckets for the all-reduce: parameters grouped by kind,
/// in order, each bucket holding at most `cap` elements (a larger parameter gets a
/// bucket of its own). One collective call reduces every bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GradBuckets {
    /// Per bucket, the indices of its parameters.
    pub buckets: Vec<Vec<usize>>,
}

/// The default bucket size: 32 Mi elements (128 MiB of fp32).
pub const DEFAULT_BUCKET_ELEMENTS: usize = 32 << 20;

impl GradBuckets {
    /// Plans buckets for parameters of the given `(numel, kind)`.
    pub fn plan(params: &[(usize, Kind)], cap: usize) -> Self {
        let cap = cap.max(1);
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut order: Vec<Kind> = Vec::new();
        for (_, k) in params {
            if !order.contains(k) {
                order.push(*k);
            }
        }
        for kind in order {
            let mut current: Vec<usize> = Vec::new();
            let mut size = 0usize;
            for (i, (n, k)) in params.iter().enumerate() {
                if *k != kind {
                    continue;
                }
                if !current.is_empty() && size + n > cap {
                    buckets.push(std::mem::take(&mut current));
                    size = 0;
                }
                current.push(i);
                size += n;
            }
            if !current.is_empty() {
                buckets.push(current);
            }
        }
        Self { buckets }
    }

    /// Replaces the gradients of `params` by their mean over the ranks of `group`:
    /// each bucket's gradients are concatenated, summed over the ranks in one
    /// collective call, divided by the world size and copied back. Parameters with
    /// `requires_grad = false` (frozen for this step, e.g. the other domain experts
    /// of JEET training) are skipped; every other parameter must have a gradient
    /// (the ranks run the same model on equal slices and freeze the same
    /// parameters, so the flat buffers agree).
    pub fn all_reduce_mean(
        &self,
        group: &mut dyn Collective,
        params: &[(String, Tensor)],
    ) -> Result<()> {
        self.all_reduce_mean_as(group, params, None)
    }

    /// [`GradBuckets::all_reduce_mean`] with the flat buckets cast to `kind` for the
    /// collective (e.g. bf16 to halve the traffic) and back after (`None`: as is).
    pub fn all_reduce_mean_as(
        &self,
        group: &mut dyn Collective,
        params: &[(String, Tensor)],
        kind: Option<Kind>,
    ) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            let mut grads: Vec<Vec<Tensor>> = Vec::with_capacity(self.buckets.len());
            let mut flats = Vec::with_capacity(self.buckets.len());
            for bucket in &self.buckets {
                let gs = bucket
                    .iter()
                    .map(|&i| &params[i])
                    .filter(|(_, p)| p.requires_grad())
                    .map(|(name, p)| required_grad(name, p, group.rank()))
                    .collect::<Result<Vec<_>>>()?;
                if gs.is_empty() {
                    continue;
                }
                flats.push(flatten_grads(&gs, kind)?);
                grads.push(gs);
            }
            group.all_reduce_sum(&flats)?;
            let world = group.world_size();
            for (flat, gs) in flats.iter_mut().zip(&grads) {
                unflatten_mean(flat, gs, world)?;
            }
            Ok(())
        })
    }
}

/// The gradient of parameter `name`, which every rank must have (the ranks run the
/// same model on equal slices and freeze the same parameters).
fn required_grad(name: &str, p: &Tensor, rank: usize) -> Result<Tensor> {
    let g = p.grad();
    if !g.defined() {
        return Err(Error::Distributed(format!(
            "parameter `{name}` has no gradient on rank {rank}: every rank must produce \
             gradients for the same parameters"
        )));
    }
    Ok(g)
}

/// `grads` concatenated into one flat tensor, cast to `kind` when given (call under
/// `no_grad`).
fn flatten_grads(grads: &[Tensor], kind: Option<Kind>) -> Result<Tensor> {
    let views = grads
        .iter()
        .map(|g| g.f_reshape([-1]))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let flat = Tensor::f_cat(&views, 0)?;
    Ok(match kind {
        Some(k) if flat.kind() != k => flat.f_to_kind(k)?,
        _ => flat,
    })
}

/// The sums over `world` ranks in `flat` divided by `world` and copied back into
/// `grads`, the tensors [`flatten_grads`] concatenated (call under `no_grad`).
fn unflatten_mean(flat: &mut Tensor, grads: &[Tensor], world: usize) -> Result<()> {
    if world > 1 {
        let _ = flat.f_div_scalar_(world as f64)?;
    }
    let mut off = 0i64;
    for g in grads {
        let n = g.numel() as i64;
        g.shallow_clone()
            .f_copy_(&flat.f_narrow(0, off, n)?.f_view_as(g)?)?;
        off += n;
    }
    Ok(())
}

/// The process group of this process from the environment, for a model on `device`.
///
/// `None` when `MOME_WORLD_SIZE` is not set, or is 1 and no NCCL communicator applies
/// (a build without the `nccl` feature, or a CPU device): the run is then exactly the
/// single-process run. With the `nccl` feature and a CUDA device, an NCCL
/// communicator (also for a world size of 1, so that the path can be tested on one
/// GPU). A world size above 1 without the feature or on the CPU is an error.
pub fn init_from_env(device: Device) -> Result<Option<Box<dyn Collective>>> {
    let Some(env) = DistEnv::from_env()? else {
        return Ok(None);
    };
    #[cfg(feature = "nccl")]
    if device.is_cuda() {
        return Ok(Some(Box::new(nccl::NcclGroup::init(&env, device)?)));
    }
    if env.world_size == 1 {
        return Ok(None);
    }
    if cfg!(feature = "nccl") {
        Err(Error::Distributed(format!(
            "{ENV_WORLD_SIZE} = {}: data parallelism needs CUDA devices (the model is on {device:?})",
            env.world_size
        )))
    } else {
        Err(Error::Distributed(format!(
            "{ENV_WORLD_SIZE} = {}: this mome was built without the `nccl` feature; build it \
             with `cargo build --release -p mome-cli --features nccl` for data parallelism",
            env.world_size
        )))
    }
}
