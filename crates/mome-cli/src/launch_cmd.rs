//! `mome launch`: several processes over the GPUs.
//!
//! - `mome launch --gpus N [--rendezvous DIR] -- <mome subcommand and args>`: data
//!   parallel. Starts `N` processes of this binary (ranks) with
//!   `CUDA_VISIBLE_DEVICES` = the rank's GPU (the rank-th entry of an existing
//!   `CUDA_VISIBLE_DEVICES`, else the rank), `MOME_RANK`, `MOME_WORLD_SIZE`,
//!   `MOME_RENDEZVOUS` (a fresh folder made in DIR, default the system temp folder,
//!   removed at the end) and `MOME_LAUNCHER_PID`. Each output line of a rank is
//!   prefixed with `[rank k]`. When a rank exits with a non-zero status or is
//!   killed, the launcher sends SIGTERM to the others, SIGKILL after `--grace-s`
//!   seconds, and exits with an error naming that rank and its status.
//! - `mome launch --gpus N --jobs FILE`: independent jobs (e.g. the PLE students, one
//!   per domain). Each non-empty line of FILE not starting with `#` is a shell
//!   command (`sh -c`; `mome` there is this binary); at most one job runs per GPU
//!   (slot) at a time, with `CUDA_VISIBLE_DEVICES` set to its GPU. Every job runs to
//!   its end; the jobs' output goes to stderr, prefixed with `[job i]`, so that
//!   stdout holds only the JSON report of all jobs; the command fails when a job
//!   failed. Without CUDA, `--gpus` is just the number of slots.
//!
//! `mome dist-selftest` (hidden) is a stand-in rank for the launcher's tests.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use mome_core::dist::{self, DistEnv, Session, EXIT_PEER_LOST};

/// Arguments of `mome launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Processes to start, one per GPU (with --jobs: GPU slots; without CUDA, slots).
    #[arg(long)]
    pub gpus: usize,
    /// Folder in which to make this launch's rendezvous folder (default: the
    /// system temp folder).
    #[arg(long)]
    pub rendezvous: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when stopping the other ranks.
    #[arg(long, default_value_t = 10.0)]
    pub grace_s: f64,
    /// Run the shell commands of FILE (one per line) as independent jobs over the
    /// GPUs instead of one data-parallel command.
    #[arg(long)]
    pub jobs: Option<PathBuf>,
    /// The mome subcommand and its arguments, after `--` (e.g. `-- train --config c.toml`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Arguments of the hidden `mome dist-selftest`: a stand-in rank that joins the
/// rendezvous (when `MOME_RENDEZVOUS` is set), prints the shared token and runs for
/// `--run-ms`; rank `--fail-rank` fails after `--fail-after-ms`.
#[derive(Debug, Args)]
pub struct SelftestArgs {
    /// The rank that fails.
    #[arg(long)]
    pub fail_rank: Option<usize>,
    /// Its exit status.
    #[arg(long, default_value_t = 3)]
    pub exit_code: i32,
    /// Fail with abort() (SIGABRT) instead of an exit status.
    #[arg(long)]
    pub abort: bool,
    /// Milliseconds before the failing rank fails.
    #[arg(long, default_value_t = 300)]
    pub fail_after_ms: u64,
    /// Milliseconds the other ranks run before finishing.
    #[arg(long, default_value_t = 120_000)]
    pub run_ms: u64,
}

/// Runs `mome launch`.
pub fn run_launch(a: LaunchArgs) -> Result<()> {
    if a.gpus == 0 {
        bail!("--gpus must be > 0");
    }
    if !a.grace_s.is_finite() || a.grace_s < 0.0 || a.grace_s > 50.0 {
        bail!("--grace-s = {}: expected 0..=50 seconds", a.grace_s);
    }
    match &a.jobs {
        Some(file) => {
            if !a.command.is_empty() {
                bail!("give either --jobs FILE or a command after `--`, not both");
            }
            run_jobs(&a, file)
        }
        None => {
            if a.command.is_empty() {
                bail!("nothing to launch: give a mome subcommand after `--` (e.g. `mome launch --gpus 2 -- train --config c.toml`) or --jobs FILE");
            }
            run_ranks(&a)
        }
    }
}

/// The GPU of each of `n` ranks / slots: the entries of an existing
/// `CUDA_VISIBLE_DEVICES`, else `0..n`.
fn visible_devices(n: usize) -> Result<Vec<String>> {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) if !v.trim().is_empty() => {
            let list: Vec<String> = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if list.len() < n {
                bail!(
                    "CUDA_VISIBLE_DEVICES={v} lists {} device(s); --gpus {n} needs {n}",
                    list.len()
                );
            }
            Ok(list.into_iter().take(n).collect())
        }
        _ => Ok((0..n).map(|i| i.to_string()).collect()),
    }
}

/// Copies `from` to our stdout or stderr line by line, each line prefixed.
fn pump(from: impl Read + Send + 'static, prefix: String, to_stderr: bool, done: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    let _ = if to_stderr {
                        let mut o = std::io::stderr().lock();
                        o.write_all(prefix.as_bytes())
                            .and_then(|_| o.write_all(&line))
                    } else {
                        let mut o = std::io::stdout().lock();
                        o.write_all(prefix.as_bytes())
                            .and_then(|_| o.write_all(&line))
                            .and_then(|_| o.flush())
                    };
                }
            }
        }
        let _ = done.send(());
    });
}

/// Spawns `cmd` with its stdout and stderr prefixed (its stdout to our stderr too
/// when `stdout_to_stderr`); returns the child.
fn spawn_prefixed(
    mut cmd: Command,
    prefix: &str,
    stdout_to_stderr: bool,
    done: &mpsc::Sender<()>,
) -> Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    if let Some(out) = child.stdout.take() {
        pump(out, format!("{prefix} "), stdout_to_stderr, done.clone());
    }
    if let Some(err) = child.stderr.take() {
        pump(err, format!("{prefix} "), true, done.clone());
    }
    Ok(child)
}

/// "exited with status 3" / "was killed by signal 9 (SIGKILL)".
fn describe(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        let extra = if code == EXIT_PEER_LOST {
            " (it stopped because a peer was lost)"
        } else {
            ""
        };
        return format!("exited with status {code}{extra}");
    }
    match status.signal() {
        Some(sig) => {
            let name = match sig {
                1 => " (SIGHUP)",
                2 => " (SIGINT)",
                6 => " (SIGABRT)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("was killed by signal {sig}{name}")
        }
        None => format!("ended with {status}"),
    }
}

/// Waits (at most `limit`) for `count` output pumps to finish.
fn drain(done: &mpsc::Receiver<()>, count: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    for _ in 0..count {
        let left = deadline.saturating_duration_since(Instant::now());
        if done.recv_timeout(left).is_err() {
            break;
        }
    }
}

/// Removes the launch's rendezvous folder when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_ranks(a: &LaunchArgs) -> Result<()> {
    let n = a.gpus;
    let devices = visible_devices(n)?;
    let exe = std::env::current_exe().context("locating the mome binary")?;
    let base = a.rendezvous.clone().unwrap_or_else(std::env::temp_dir);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = base.join(format!("mome-launch-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("making the rendezvous folder {}", dir.display()))?;
    let _cleanup = RemoveDir(dir.clone());
    eprintln!(
        "launch: {n} rank(s) of `mome {}` on GPU(s) {}; rendezvous {}",
        a.command.join(" "),
        devices.join(","),
        dir.display()
    );
    let (done_tx, done_rx) = mpsc::channel();
    let mut children: Vec<Child> = Vec::with_capacity(n);
    for (rank, gpu) in devices.iter().enumerate() {
        let mut cmd = Command::new(&exe);
        cmd.args(&a.command)
            .env("CUDA_VISIBLE_DEVICES", gpu)
            .env(dist::ENV_RANK, rank.to_string())
            .env(dist::ENV_WORLD_SIZE, n.to_string())
            .env(dist::ENV_RENDEZVOUS, &dir)
            .env(dist::ENV_LAUNCHER_PID, std::process::id().to_string());
        match spawn_prefixed(cmd, &format!("[rank {rank}]"), false, &done_tx) {
            Ok(c) => children.push(c),
            Err(e) => {
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e);
            }
        }
    }
    drop(done_tx);
    let grace = Duration::from_secs_f64(a.grace_s);
    let mut status: Vec<Option<ExitStatus>> = vec![None; n];
    let mut failure: Option<(usize, ExitStatus)> = None;
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        let mut newly_failed: Vec<(usize, ExitStatus)> = Vec::new();
        for (rank, child) in children.iter_mut().enumerate() {
            if status[rank].is_some() {
                continue;
            }
            if let Some(s) = child.try_wait().context("waiting for a rank")? {
                status[rank] = Some(s);
                if !s.success() && failure.is_none() {
                    newly_failed.push((rank, s));
                }
            }
        }
        if failure.is_none() && !newly_failed.is_empty() {
            // Name the rank that failed first, not one that stopped because of it.
            newly_failed.sort_by_key(|(r, s)| (s.code() == Some(EXIT_PEER_LOST), *r));
            let (rank, s) = newly_failed[0];
            eprintln!(
                "launch: rank {rank} {}; stopping the other ranks",
                describe(&s)
            );
            failure = Some((rank, s));
            for (r, child) in children.iter().enumerate() {
                if status[r].is_none() {
                    let _ = dist::terminate(child.id(), false);
                }
            }
            kill_at = Some(Instant::now() + grace);
        }
        if status.iter().all(Option::is_some) {
            break;
        }
        if let (Some(t), false) = (kill_at, killed) {
            if Instant::now() >= t {
                for (r, child) in children.iter_mut().enumerate() {
                    if status[r].is_none() {
                        eprintln!("launch: rank {r} still running after SIGTERM; sending SIGKILL");
                        let _ = child.kill();
                    }
                }
                killed = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drain(&done_rx, 2 * n, Duration::from_secs(2));
    match failure {
        None => {
            eprintln!("launch: all {n} rank(s) finished");
            Ok(())
        }
        Some((rank, s)) => {
            let others: Vec<String> = status
                .iter()
                .enumerate()
                .filter(|(r, _)| *r != rank)
                .map(|(r, st)| match st {
                    Some(st) => format!("rank {r} {}", describe(st)),
                    None => format!("rank {r} unknown"),
                })
                .collect();
            bail!(
                "lost rank {rank}: it {}; the other ranks were stopped ({})",
                describe(&s),
                if others.is_empty() {
                    "none".to_string()
                } else {
                    others.join(", ")
                }
            )
        }
    }
}

/// The jobs of a jobs file: non-empty lines not starting with `#`.
fn read_jobs(file: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the jobs file {}", file.display()))?;
    let jobs: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if jobs.is_empty() {
        bail!("{}: no jobs (one shell command per line)", file.display());
    }
    Ok(jobs)
}

struct Running {
    job: usize,
    child: Child,
    started: Instant,
}

fn run_jobs(a: &LaunchArgs, file: &Path) -> Result<()> {
    let jobs = read_jobs(file)?;
    let devices = visible_devices(a.gpus)?;
    let exe = std::env::current_exe().context("locating the mome binary")?;
    // `mome` in a job line is this binary.
    let mut path = std::ffi::OsString::new();
    if let Some(d) = exe.parent() {
        path.push(d);
        path.push(":");
    }
    path.push(std::env::var_os("PATH").unwrap_or_default());
    eprintln!(
        "launch: {} job(s) from {} over {} GPU slot(s) ({})",
        jobs.len(),
        file.display(),
        devices.len(),
        devices.join(",")
    );
    let (done_tx, done_rx) = mpsc::channel();
    let mut queue: VecDeque<usize> = (0..jobs.len()).collect();
    let mut slots: Vec<Option<Running>> = (0..devices.len()).map(|_| None).collect();
    let mut report: Vec<Option<serde_json::Value>> = vec![None; jobs.len()];
    let mut failed: Vec<String> = Vec::new();
    loop {
        for (slot, gpu) in devices.iter().enumerate() {
            if slots[slot].is_some() {
                continue;
            }
            let Some(job) = queue.pop_front() else {
                break;
            };
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(&jobs[job])
                .env("CUDA_VISIBLE_DEVICES", gpu)
                .env("MOME_SLOT", slot.to_string())
                .env("PATH", &path)
                .env_remove(dist::ENV_RANK)
                .env_remove(dist::ENV_WORLD_SIZE)
                .env_remove(dist::ENV_RENDEZVOUS)
                .env_remove(dist::ENV_LAUNCHER_PID);
            eprintln!("launch: job {job} started on GPU {gpu}: {}", jobs[job]);
            let started = Instant::now();
            match spawn_prefixed(cmd, &format!("[job {job}]"), true, &done_tx) {
                Ok(child) => {
                    slots[slot] = Some(Running {
                        job,
                        child,
                        started,
                    })
                }
                Err(e) => {
                    eprintln!("launch: job {job} could not start: {e:#}");
                    failed.push(format!("job {job} (could not start: {e})"));
                    report[job] = Some(serde_json::json!({
                        "job": job, "command": jobs[job], "gpu": gpu,
                        "ok": false, "status": format!("could not start: {e}"), "seconds": 0.0,
                    }));
                }
            }
        }
        for (slot, gpu) in devices.iter().enumerate() {
            let Some(r) = slots[slot].as_mut() else {
                continue;
            };
            let Some(s) = r.child.try_wait().context("waiting for a job")? else {
                continue;
            };
            let secs = r.started.elapsed().as_secs_f64();
            let job = r.job;
            let desc = describe(&s);
            if s.success() {
                eprintln!("launch: job {job} (GPU {gpu}) finished in {secs:.1} s");
            } else {
                eprintln!("launch: job {job} (GPU {gpu}) FAILED: it {desc} after {secs:.1} s");
                failed.push(format!("job {job} ({desc})"));
            }
            report[job] = Some(serde_json::json!({
                "job": job, "command": jobs[job], "gpu": gpu,
                "ok": s.success(), "status": desc, "seconds": secs,
            }));
            slots[slot] = None;
        }
        if queue.is_empty() && slots.iter().all(Option::is_none) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(done_tx);
    drain(&done_rx, 2 * jobs.len(), Duration::from_secs(2));
    let ok = jobs.len() - failed.len();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "jobs": report,
            "succeeded": ok,
            "failed": failed.len(),
        }))?
    );
    if !failed.is_empty() {
        bail!(
            "{} of {} job(s) failed: {}",
            failed.len(),
            jobs.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Runs the hidden `mome dist-selftest`.
pub fn run_selftest(a: SelftestArgs) -> Result<()> {
    let env = DistEnv::from_env()?
        .context("dist-selftest needs MOME_WORLD_SIZE (run it under `mome launch`)")?;
    println!(
        "rank {} of {} started (pid {})",
        env.rank,
        env.world_size,
        std::process::id()
    );
    let mut session = match &env.rendezvous {
        Some(_) => Some(Session::join(&env)?),
        None => None,
    };
    if let Some(s) = &session {
        let token = s.exchange_token(|| {
            use sha2::Digest;
            let seed = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
            Ok(sha2::Sha256::digest(seed.as_bytes())[..16].to_vec())
        })?;
        println!("rank {}: token {}", env.rank, hex::encode(token));
    }
    if a.fail_rank == Some(env.rank) {
        std::thread::sleep(Duration::from_millis(a.fail_after_ms));
        eprintln!("rank {}: failing on purpose", env.rank);
        if a.abort {
            std::process::abort();
        }
        std::process::exit(a.exit_code);
    }
    std::thread::sleep(Duration::from_millis(a.run_ms));
    if let Some(s) = session.as_mut() {
        s.mark_done()?;
    }
    println!("rank {} done", env.rank);
    Ok(())
}
