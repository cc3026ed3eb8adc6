//! Progress reporting: an indicatif bar with ETA when stderr is a terminal, plain
//! log lines every N steps otherwise (logs, CI, `nohup`), or nothing in quiet mode.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug)]
enum Mode {
    Bar(ProgressBar),
    Lines { every: u64 },
    Quiet,
}

/// Reports training progress on stderr.
#[derive(Debug)]
pub struct Progress {
    mode: Mode,
    total: u64,
    start_step: u64,
    started: Instant,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bar on a terminal, lines otherwise.
    Auto,
    /// Plain lines every N steps.
    Lines(u64),
    /// Nothing.
    Quiet,
}

impl Progress {
    /// A reporter for steps `start_step+1..=total`. `Auto` uses a bar when stderr is a
    /// terminal, otherwise a line every `line_every` steps.
    pub fn new(total: u64, start_step: u64, mode: ProgressMode, line_every: u64) -> Self {
        let mode = match mode {
            ProgressMode::Quiet => Mode::Quiet,
            ProgressMode::Lines(n) => Mode::Lines { every: n.max(1) },
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{elapsed_precise} [{bar:30}] {pos}/{len} eta {eta_precise} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_position(start_step);
                bar.reset_eta();
                Mode::Bar(bar)
            }
            ProgressMode::Auto => Mode::Lines {
                every: line_every.max(1),
            },
        };
        Self {
            mode,
            total,
            start_step,
            started: Instant::now(),
        }
    }

    /// The plain line for `step` (what `Lines` mode prints), with an ETA from the rate
    /// of this session.
    pub fn line(&self, step: u64, msg: &str) -> String {
        let done = step.saturating_sub(self.start_step);
        let secs = self.started.elapsed().as_secs_f64();
        let eta = if done > 0 {
            secs / done as f64 * self.total.saturating_sub(step) as f64
        } else {
            f64::NAN
        };
        format!("step {step}/{} {msg} eta {}", self.total, fmt_secs(eta))
    }

    /// Reports that `step` is done; `msg` is shown with it (e.g. loss and lr).
    pub fn update(&self, step: u64, msg: &str) {
        match &self.mode {
            Mode::Bar(bar) => {
                bar.set_position(step);
                if !msg.is_empty() {
                    bar.set_message(msg.to_string());
                }
            }
            Mode::Lines { every } => {
                if step % every == 0 || step == self.total {
                    eprintln!("{}", self.line(step, msg));
                }
            }
            Mode::Quiet => {}
        }
    }

    /// Prints a message without breaking the bar (nothing in quiet mode).
    pub fn println(&self, msg: &str) {
        match &self.mode {
            Mode::Bar(bar) => bar.println(msg),
            Mode::Lines { .. } => eprintln!("{msg}"),
            Mode::Quiet => {}
        }
    }

    /// Ends the bar.
    pub fn finish(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish();
        }
    }
}

fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    let s = s.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_line_has_step_and_eta() {
        let p = Progress::new(100, 0, ProgressMode::Quiet, 10);
        let l = p.line(0, "loss 1.0");
        assert!(l.starts_with("step 0/100 loss 1.0 eta ?"), "{l}");
        let l = p.line(50, "x");
        assert!(l.contains("eta 0:00:00"), "{l}");
        assert_eq!(fmt_secs(3723.0), "1:02:03");
    }
}
