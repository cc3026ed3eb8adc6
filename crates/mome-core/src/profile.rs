//! Phase timing of the training step, on the production path.
//!
//! The trainer's step ([`crate::Trainer`]) and every objective mark their phases
//! on a [`Profiler`]. A disabled profiler (what training uses) does nothing, not even
//! read the clock; an enabled one (`mome bench train --profile`) synchronises the
//! device at every mark, so each phase's time is the device time of the kernels it
//! queued, and averages them per step.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Device;

/// A kernel-level trace of the whole process (libtorch's Kineto profiler, the one
/// behind `torch.profiler`): every CPU operator and, on CUDA, every kernel with its
/// device time, written as a Chrome trace (`mome bench train --trace`;
/// `scripts/trace_summary.py` sums the kernels by name). One at a time per process.
#[derive(Debug)]
pub struct KernelTrace {
    running: bool,
}

impl KernelTrace {
    /// Starts tracing (CUDA kernels too when `device` is CUDA).
    pub fn start(device: Device) -> crate::Result<Self> {
        crate::fused::trace_start(device.is_cuda())?;
        Ok(Self { running: true })
    }

    /// Stops tracing and writes the trace to `path` (through a temporary file beside
    /// it, renamed when complete).
    pub fn finish(mut self, path: &std::path::Path) -> crate::Result<()> {
        self.running = false;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = std::path::PathBuf::from(tmp);
        crate::fused::trace_stop(Some(&tmp))?;
        std::fs::rename(&tmp, path).map_err(|e| crate::Error::Io {
            path: path.to_path_buf(),
            source: e,
        })
    }
}

impl Drop for KernelTrace {
    fn drop(&mut self) {
        if self.running {
            // Stopped without a file: the profiler is disabled, the events dropped.
            let _ = crate::fused::trace_stop(None);
        }
    }
}

/// Synchronises `device` (a no-op on the CPU).
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Accumulates the time of named phases (see the module docs).
#[derive(Debug)]
pub struct Profiler {
    device: Device,
    enabled: bool,
    last: Instant,
    acc: Vec<(&'static str, f64)>,
    steps: u64,
}

impl Profiler {
    /// A profiler that does nothing (training).
    pub fn off() -> Self {
        Self {
            device: Device::Cpu,
            enabled: false,
            last: Instant::now(),
            acc: Vec::new(),
            steps: 0,
        }
    }

    /// A profiler that synchronises `device` at every mark.
    pub fn on(device: Device) -> Self {
        Self {
            enabled: true,
            device,
            ..Self::off()
        }
    }

    /// Whether marks are recorded.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Starts a step: synchronises and restarts the clock.
    pub fn start_step(&mut self) {
        if self.enabled {
            sync(self.device);
            self.steps += 1;
            self.last = Instant::now();
        }
    }

    /// Ends the phase `name`: the time since the previous mark is added to it.
    pub fn mark(&mut self, name: &'static str) {
        if !self.enabled {
            return;
        }
        sync(self.device);
        let now = Instant::now();
        let dt = (now - self.last).as_secs_f64();
        self.last = now;
        match self.acc.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => *t += dt,
            None => self.acc.push((name, dt)),
        }
    }

    /// The phases so far, averaged per started step (`None` before a step).
    pub fn report(&self) -> Option<ProfileReport> {
        if self.steps == 0 {
            return None;
        }
        let n = self.steps as f64;
        let step_ms: f64 = self.acc.iter().map(|(_, t)| t).sum::<f64>() * 1e3 / n;
        let phases = self
            .acc
            .iter()
            .map(|&(name, t)| PhaseTime {
                name: name.to_string(),
                ms: t * 1e3 / n,
                pct: if step_ms > 0.0 {
                    100.0 * t * 1e3 / n / step_ms
                } else {
                    0.0
                },
            })
            .collect();
        Some(ProfileReport {
            steps: self.steps,
            step_ms,
            phases,
        })
    }
}

/// One phase of a [`ProfileReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTime {
    /// Phase name.
    pub name: String,
    /// Mean milliseconds per optimizer step.
    pub ms: f64,
    /// Share of the synchronised step, in percent.
    pub pct: f64,
}

/// Mean phase times of the profiled steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileReport {
    /// Steps averaged.
    pub steps: u64,
    /// Mean milliseconds of the synchronised step (the sum of the phases).
    pub step_ms: f64,
    /// Phases in the order first seen.
    pub phases: Vec<PhaseTime>,
}

/// Peak GPU memory of this process in MiB as `nvidia-smi` reports it (`None` on a
/// machine without it, or when the process has no CUDA context).
pub fn gpu_memory_mib() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let me = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut it = l.split(',').map(str::trim);
        (it.next()? == me).then(|| it.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_trace_is_written_whole_and_a_dropped_one_frees_the_profiler() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.json");
        // Dropped without a file: the profiler stops, so the next trace can start.
        drop(KernelTrace::start(Device::Cpu).unwrap());
        let t = KernelTrace::start(Device::Cpu).unwrap();
        let _ = (tch::Tensor::ones([4, 4], (tch::Kind::Float, Device::Cpu)) * 2.0)
            .sum(tch::Kind::Float);
        t.finish(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("traceEvents"),
            "{}",
            &text[..text.len().min(200)]
        );
        assert!(text.contains("aten::mul"));
        assert!(!dir.path().join("trace.json.partial").exists());
    }

    #[test]
    fn a_disabled_profiler_records_nothing() {
        let mut p = Profiler::off();
        p.start_step();
        p.mark("forward");
        assert!(p.report().is_none());
    }

    #[test]
    fn phases_average_over_steps() {
        let mut p = Profiler::on(Device::Cpu);
        for _ in 0..2 {
            p.start_step();
            std::thread::sleep(std::time::Duration::from_millis(4));
            p.mark("a");
            p.mark("b");
            std::thread::sleep(std::time::Duration::from_millis(2));
            p.mark("a");
        }
        let r = p.report().unwrap();
        assert_eq!(r.steps, 2);
        assert_eq!(
            r.phases.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        // Two sleeps of 4 + 2 ms per step land in `a`.
        assert!(r.phases[0].ms >= 6.0, "{r:?}");
        let pct: f64 = r.phases.iter().map(|p| p.pct).sum();
        approx::assert_abs_diff_eq!(pct, 100.0, epsilon = 1e-9);
    }
}
