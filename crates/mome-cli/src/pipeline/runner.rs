//! Child processes of a stage and the run's progress display.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::stages::Cmd;

/// Quotes an argument for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./=:,+-@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The command line of `cmd` as a user can paste it into a shell.
pub fn command_line(exe: &Path, cmd: &Cmd) -> String {
    let mut s = shell_quote(&exe.display().to_string());
    for a in &cmd.args {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    if let Some(out) = &cmd.stdout {
        s.push_str(" > ");
        s.push_str(&shell_quote(&out.display().to_string()));
    }
    s
}

/// `step X/Y` in a child's progress line.
pub fn parse_step(line: &str) -> Option<(u64, u64)> {
    let mut rest = line;
    while let Some(i) = rest.find("step ") {
        rest = &rest[i + 5..];
        let (a, tail) = split_num(rest)?;
        if let Some(tail) = tail.strip_prefix('/') {
            if let Some((b, _)) = split_num(tail) {
                return Some((a, b));
            }
        }
    }
    None
}

fn split_num(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

enum Mode {
    Bar(ProgressBar),
    Lines { last: Cell<Instant> },
    Quiet,
}

/// One progress display for the whole run: a bar on a terminal, plain lines
/// otherwise, nothing with `--quiet`.
pub struct Display {
    mode: Mode,
    total: usize,
    prefix: RefCell<String>,
    label: RefCell<String>,
    has_len: Cell<bool>,
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:.bold} {spinner} {elapsed_precise} {msg}")
        .expect("valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:.bold} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta_precise} {msg}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

impl Display {
    /// A display for `total` stages.
    pub fn new(total: usize, quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(spinner_style());
            bar.enable_steady_tick(Duration::from_millis(200));
            Mode::Bar(bar)
        } else {
            Mode::Lines {
                last: Cell::new(Instant::now()),
            }
        };
        Self {
            mode,
            total,
            prefix: RefCell::new(String::new()),
            label: RefCell::new(String::new()),
            has_len: Cell::new(false),
        }
    }

    /// Prints a line (above the bar on a terminal; nothing when quiet).
    pub fn println(&self, msg: &str) {
        match &self.mode {
            Mode::Bar(b) => b.println(msg),
            Mode::Lines { .. } => eprintln!("{msg}"),
            Mode::Quiet => {}
        }
    }

    /// Stage `i` (0-based) starts.
    pub fn stage_start(&self, i: usize, name: &str, why: &str) {
        let prefix = format!("[{}/{}] {name}", i + 1, self.total);
        self.println(&format!("{prefix}: running ({why})"));
        *self.prefix.borrow_mut() = prefix.clone();
        if let Mode::Bar(b) = &self.mode {
            b.set_prefix(prefix);
            b.set_message("");
        }
    }

    /// Command `j` of `n` of the current stage starts.
    pub fn cmd_start(&self, j: usize, n: usize, label: &str) {
        let label = if n > 1 {
            format!("({}/{n}) {label}", j + 1)
        } else {
            label.to_string()
        };
        self.has_len.set(false);
        match &self.mode {
            Mode::Bar(b) => {
                b.set_style(spinner_style());
                b.set_length(0);
                b.set_position(0);
                b.reset_eta();
                b.reset_elapsed();
                b.set_message(label.clone());
            }
            Mode::Lines { last } => {
                eprintln!("{}: {label}", self.prefix.borrow());
                last.set(Instant::now());
            }
            Mode::Quiet => {}
        }
        *self.label.borrow_mut() = label;
    }

    /// A line the child wrote on stderr.
    pub fn child_line(&self, line: &str) {
        let step = parse_step(line);
        match &self.mode {
            Mode::Bar(b) => {
                if let Some((x, y)) = step {
                    if !self.has_len.get() {
                        b.set_style(bar_style());
                        self.has_len.set(true);
                    }
                    b.set_length(y);
                    b.set_position(x.min(y));
                } else if let Some(m) = line.strip_prefix("== ") {
                    b.set_message(format!("{} {}", self.label.borrow(), m.trim()));
                }
            }
            Mode::Lines { last } => {
                let header = line.starts_with("== ");
                if header || (step.is_some() && last.get().elapsed() >= Duration::from_secs(10)) {
                    eprintln!("{}: {}", self.prefix.borrow(), line.trim());
                    last.set(Instant::now());
                }
            }
            Mode::Quiet => {}
        }
    }

    /// Stage `i` finished (or was skipped).
    pub fn stage_done(&self, i: usize, name: &str, what: &str) {
        self.println(&format!("[{}/{}] {name}: {what}", i + 1, self.total));
        if let Mode::Bar(b) = &self.mode {
            b.set_style(spinner_style());
            b.set_message("");
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Mode::Bar(b) = &self.mode {
            b.finish_and_clear();
        }
    }
}

/// File holding the id of the running child process of a stage.
pub const PID_FILE: &str = "child.pid";

/// Fails when a child process of an earlier, interrupted run still writes into the
/// stage folder `dir` (the pipeline was killed without its children).
pub fn check_orphan(dir: &Path) -> Result<()> {
    let Ok(pid) = std::fs::read_to_string(dir.join(PID_FILE)) else {
        return Ok(());
    };
    let pid = pid.trim();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if cmdline.contains(&dir.display().to_string()) {
        bail!(
            "process {pid} of an interrupted run still writes into {}: stop it (`kill {pid}`) or let it finish, then run again",
            dir.display()
        );
    }
    Ok(())
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `mome <cmd.args>` as a child of this process: stderr is copied to `log`
/// (and drives the progress display), stdout goes to `cmd.stdout` or to `log`.
pub fn run_cmd(exe: &Path, cmd: &Cmd, log: &Path, display: &Display) -> Result<()> {
    let mut logf = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    writeln!(logf, "$ {}", command_line(exe, cmd))?;
    logf.flush()?;
    let stdout = match &cmd.stdout {
        Some(p) => {
            Stdio::from(File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => Stdio::from(logf.try_clone()?),
    };
    let mut child = Command::new(exe)
        .args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    // Written while the child runs: a re-run finds it if this process was killed
    // alone and the child lives on (see `check_orphan`).
    let pid_file = log.with_file_name(PID_FILE);
    std::fs::write(&pid_file, child.id().to_string())?;
    let stderr = child.stderr.take().context("child stderr")?;
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        logf.write_all(&buf)?;
        let text = String::from_utf8_lossy(&buf);
        for part in text.split('\r') {
            let part = part.trim_end();
            if !part.is_empty() {
                display.child_line(part);
            }
        }
    }
    let status = child.wait()?;
    logf.flush()?;
    let _ = std::fs::remove_file(&pid_file);
    if !status.success() {
        bail!(
            "`mome {}` exited with {status}",
            cmd.args.first().map_or("", String::as_str)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_parsed() {
        assert_eq!(
            parse_step("step 10/400 loss 8.8 eta 0:00:10"),
            Some((10, 400))
        );
        assert_eq!(parse_step("eval at step 5 loss"), None);
        assert_eq!(parse_step("== run ce_only"), None);
        assert_eq!(parse_step("x step 3 y step 7/9"), Some((7, 9)));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a/b.toml"), "a/b.toml");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
