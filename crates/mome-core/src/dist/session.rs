//! The file-based rendezvous of the ranks and the watchdog that keeps a rank from
//! waiting forever on a dead peer.
//!
//! Files in the rendezvous folder (each written atomically: temp file + rename):
//! - `rank-K.pid`: pid and host name of rank `K` (written when it joins);
//! - `rank-K.beat`: rank `K`'s heartbeat (milliseconds since the epoch), rewritten
//!   every 0.5 s by its watchdog thread;
//! - `rank-K.done` / `rank-K.failed`: rank `K` finished / failed (with the message);
//! - `unique-id`: the NCCL unique id, hex, written by rank 0 and polled for by the
//!   others (at most the join timeout).
//!
//! The watchdog thread of each rank checks every 0.5 s that each peer that has not
//! finished is still there: a `failed` marker, a pid that no longer runs (same host),
//! a heartbeat older than the peer timeout, or a peer that has not joined within the
//! join timeout make it call the abort hooks (the NCCL communicator's
//! `ncclCommAbort`), mark this rank failed, print an error naming the lost rank and
//! exit the process with [`EXIT_PEER_LOST`] (forced with `abort()` if exiting takes
//! more than 10 s). It also ends the rank when `mome launch` (`MOME_LAUNCHER_PID`)
//! is gone, or when a registered health check reports a problem (the NCCL
//! communicator's asynchronous error, `ncclCommGetAsyncError`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::DistEnv;
use crate::{Error, Result};

/// Exit status of a rank that stopped because a peer was lost (`mome launch` names
/// the rank that failed first, not the ranks that stopped because of it).
pub const EXIT_PEER_LOST: i32 = 86;

const POLL: Duration = Duration::from_millis(500);
const EXIT_GRACE: Duration = Duration::from_secs(10);
const ID_FILE: &str = "unique-id";

/// What made the watchdog give up: a lost peer rank, or (`rank: None`) the
/// launcher gone or an error reported by a health check (NCCL's asynchronous
/// errors).
#[derive(Debug, Clone, PartialEq)]
pub struct LostPeer {
    /// The lost rank (`None`: not a rank; see `reason`).
    pub rank: Option<usize>,
    /// Why it is considered lost.
    pub reason: String,
}

impl std::fmt::Display for LostPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.rank {
            Some(r) => write!(f, "lost rank {r}: {}", self.reason),
            None => write!(f, "{}", self.reason),
        }
    }
}

/// Whether process `pid` is running (not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Err(e) if e == rustix::io::Errno::SRCH => return false,
        _ => {}
    }
    // A zombie still answers kill(pid, 0): look at its state in /proc.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => true,
    }
}

/// Sends SIGTERM (`force`: SIGKILL) to process `pid`.
pub fn terminate(pid: u32, force: bool) -> std::io::Result<()> {
    let p = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("invalid pid {pid}")))?;
    let sig = if force {
        rustix::process::Signal::KILL
    } else {
        rustix::process::Signal::TERM
    };
    rustix::process::kill_process(p, sig).map_err(std::io::Error::from)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically (temp file in the same folder + rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn rank_file(dir: &Path, rank: usize, ext: &str) -> PathBuf {
    dir.join(format!("rank-{rank}.{ext}"))
}

type Hook = Box<dyn Fn() + Send + Sync>;
type Check = Box<dyn Fn() -> Option<String> + Send + Sync>;

enum OnLost {
    Exit,
    Call(Box<dyn FnOnce(LostPeer) + Send>),
}

/// The default reaction to a lost peer: abort hooks, `failed` marker, error message,
/// exit (forced after [`EXIT_GRACE`]).
fn exit_lost(shared: &Shared, dir: &Path, rank: usize, lost: LostPeer) -> ! {
    std::thread::spawn(|| {
        std::thread::sleep(EXIT_GRACE);
        eprintln!("error: exiting took more than 10 s; aborting the process");
        std::process::abort();
    });
    if let Ok(hooks) = shared.hooks.lock() {
        for h in hooks.iter() {
            h();
        }
    }
    let _ = write_atomic(
        &rank_file(dir, rank, "failed"),
        format!("stopped because it {lost}").as_bytes(),
    );
    eprintln!("error: rank {rank}: {lost}; stopping this rank");
    std::process::exit(EXIT_PEER_LOST);
}

struct Shared {
    stop: AtomicBool,
    hooks: Mutex<Vec<Hook>>,
    checks: Mutex<Vec<Check>>,
}

impl Shared {
    /// The first problem reported by a health check.
    fn run_checks(&self) -> Option<LostPeer> {
        let checks = self.checks.lock().ok()?;
        checks
            .iter()
            .find_map(|c| c())
            .map(|reason| LostPeer { rank: None, reason })
    }
}

/// This rank's membership of the group: its files in the rendezvous folder and its
/// watchdog thread (see the module docs). Dropping a session that was not marked
/// done marks it failed, so that the peers stop instead of waiting.
pub struct Session {
    rank: usize,
    world_size: usize,
    dir: PathBuf,
    join_timeout: Duration,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    finished: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("dir", &self.dir)
            .finish()
    }
}

struct Watch {
    rank: usize,
    world_size: usize,
    dir: PathBuf,
    host: String,
    join_timeout: Duration,
    peer_timeout: Duration,
    launcher_pid: Option<u32>,
    started: Instant,
}

impl Watch {
    fn read_pid(&self, peer: usize) -> Option<(u32, String)> {
        let text = std::fs::read_to_string(rank_file(&self.dir, peer, "pid")).ok()?;
        let mut lines = text.lines();
        let pid = lines.next()?.trim().parse().ok()?;
        Some((pid, lines.next().unwrap_or("").trim().to_string()))
    }

    fn check_peer(&self, peer: usize) -> Option<LostPeer> {
        let lost = |reason: String| {
            Some(LostPeer {
                rank: Some(peer),
                reason,
            })
        };
        if let Ok(msg) = std::fs::read_to_string(rank_file(&self.dir, peer, "failed")) {
            return lost(format!("it failed: {}", msg.trim()));
        }
        if rank_file(&self.dir, peer, "done").exists() {
            return None;
        }
        match self.read_pid(peer) {
            Some((pid, host)) => {
                if host == self.host && !pid_alive(pid) {
                    // It may have finished between the two checks.
                    if rank_file(&self.dir, peer, "done").exists() {
                        return None;
                    }
                    return lost(format!(
                        "its process (pid {pid}) ended without finishing (crashed, killed or \
                         exited early)"
                    ));
                }
                let beat = std::fs::read_to_string(rank_file(&self.dir, peer, "beat"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok());
                if let Some(ms) = beat {
                    let age = now_ms().saturating_sub(ms);
                    if age > self.peer_timeout.as_millis() as u64 {
                        return lost(format!(
                            "no heartbeat for {:.1} s (process {pid} frozen or unreachable)",
                            age as f64 / 1000.0
                        ));
                    }
                }
                None
            }
            None if self.started.elapsed() > self.join_timeout => lost(format!(
                "it did not join the rendezvous in {} within {:.0} s",
                self.dir.display(),
                self.join_timeout.as_secs_f64()
            )),
            None => None,
        }
    }

    fn check(&self) -> Option<LostPeer> {
        for peer in (0..self.world_size).filter(|&p| p != self.rank) {
            if let Some(l) = self.check_peer(peer) {
                return Some(l);
            }
        }
        match self.launcher_pid {
            Some(pid) if !pid_alive(pid) => Some(LostPeer {
                rank: None,
                reason: format!("lost the launcher: `mome launch` (pid {pid}) is gone"),
            }),
            _ => None,
        }
    }
}

impl Session {
    /// Joins the group described by `env` (which must name a rendezvous folder):
    /// writes this rank's pid file and starts the watchdog, which ends the process
    /// when a peer is lost (see the module docs).
    pub fn join(env: &DistEnv) -> Result<Self> {
        Self::start(env, OnLost::Exit)
    }

    /// Like [`Session::join`] with `on_lost` called (once, on the watchdog thread)
    /// instead of ending the process.
    pub fn join_with(env: &DistEnv, on_lost: Box<dyn FnOnce(LostPeer) + Send>) -> Result<Self> {
        Self::start(env, OnLost::Call(on_lost))
    }

    fn start(env: &DistEnv, on_lost: OnLost) -> Result<Self> {
        let dir = env.rendezvous.clone().ok_or_else(|| {
            Error::Config(format!(
                "{}: a session needs a rendezvous folder",
                super::ENV_RENDEZVOUS
            ))
        })?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let pid_file = rank_file(&dir, env.rank, "pid");
        let stale: Vec<PathBuf> = ["pid", "done", "failed"]
            .iter()
            .map(|ext| rank_file(&dir, env.rank, ext))
            .chain((env.rank == 0).then(|| dir.join(ID_FILE)))
            .filter(|p| p.exists())
            .collect();
        if let Some(p) = stale.first() {
            return Err(Error::Distributed(format!(
                "rank {}: the rendezvous folder {} already holds {} from an earlier run; \
                 use a fresh folder for every run (`mome launch` makes one)",
                env.rank,
                dir.display(),
                p.display()
            )));
        }
        let host = host_name();
        write_atomic(
            &rank_file(&dir, env.rank, "beat"),
            now_ms().to_string().as_bytes(),
        )?;
        write_atomic(
            &pid_file,
            format!("{}\n{host}\n", std::process::id()).as_bytes(),
        )?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            hooks: Mutex::new(Vec::new()),
            checks: Mutex::new(Vec::new()),
        });
        let watch = Watch {
            rank: env.rank,
            world_size: env.world_size,
            dir: dir.clone(),
            host,
            join_timeout: env.join_timeout,
            peer_timeout: env.peer_timeout,
            launcher_pid: env.launcher_pid,
            started: Instant::now(),
        };
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("mome-watchdog-rank-{}", env.rank))
            .spawn(move || {
                let beat = rank_file(&watch.dir, watch.rank, "beat");
                while !sh.stop.load(Ordering::SeqCst) {
                    let _ = write_atomic(&beat, now_ms().to_string().as_bytes());
                    if let Some(lost) = watch.check().or_else(|| sh.run_checks()) {
                        if !sh.stop.load(Ordering::SeqCst) {
                            match on_lost {
                                OnLost::Exit => exit_lost(&sh, &watch.dir, watch.rank, lost),
                                OnLost::Call(f) => f(lost),
                            }
                        }
                        return;
                    }
                    std::thread::sleep(POLL);
                }
            })
            .map_err(|e| Error::Distributed(format!("cannot start the watchdog thread: {e}")))?;
        Ok(Self {
            rank: env.rank,
            world_size: env.world_size,
            dir,
            join_timeout: env.join_timeout,
            shared,
            thread: Some(thread),
            finished: false,
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The rendezvous folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Registers a hook the default watchdog runs before ending the process (e.g.
    /// `ncclCommAbort`, so that no GPU kernel keeps waiting on the lost peer).
    pub fn on_abort(&self, hook: Box<dyn Fn() + Send + Sync>) {
        if let Ok(mut h) = self.shared.hooks.lock() {
            h.push(hook);
        }
    }

    /// Registers a health check the watchdog runs every 0.5 s: `Some(reason)` stops
    /// the rank like a lost peer (e.g. an asynchronous NCCL error).
    pub fn on_check(&self, check: Box<dyn Fn() -> Option<String> + Send + Sync>) {
        if let Ok(mut c) = self.shared.checks.lock() {
            c.push(check);
        }
    }

    /// Shares a token (the NCCL unique id): rank 0 calls `create` and writes the
    /// result to `unique-id` atomically; the other ranks poll for that file for at
    /// most the join timeout and return its bytes.
    pub fn exchange_token(&self, create: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
        let path = self.dir.join(ID_FILE);
        if self.rank == 0 {
            let bytes = create()?;
            write_atomic(&path, hex::encode(&bytes).as_bytes())?;
            return Ok(bytes);
        }
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                return hex::decode(text.trim()).map_err(|e| {
                    Error::Distributed(format!("{}: not a hex token: {e}", path.display()))
                });
            }
            if started.elapsed() > self.join_timeout {
                return Err(Error::Distributed(format!(
                    "rank {}: rank 0 did not publish the rendezvous id {} within {:.0} s; \
                     did rank 0 start and reach the rendezvous? (timeout: {})",
                    self.rank,
                    path.display(),
                    self.join_timeout.as_secs_f64(),
                    super::ENV_RENDEZVOUS_TIMEOUT
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_watchdog(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Marks this rank done (its peers stop watching it) and stops the watchdog.
    pub fn mark_done(&mut self) -> Result<()> {
        self.stop_watchdog();
        self.finished = true;
        write_atomic(&rank_file(&self.dir, self.rank, "done"), b"done\n")
    }

    /// Marks this rank failed with `message` (its peers' watchdogs stop with it) and
    /// stops the watchdog.
    pub fn mark_failed(&mut self, message: &str) -> Result<()> {
        self.stop_watchdog();
        self.finished = true;
        write_atomic(
            &rank_file(&self.dir, self.rank, "failed"),
            message.as_bytes(),
        )
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.mark_failed("it stopped before finishing (error or early exit)");
        } else {
            self.stop_watchdog();
        }
    }
}
