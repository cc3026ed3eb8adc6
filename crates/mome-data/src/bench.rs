//! Timing and memory helpers for benchmarks: peak and current resident memory of
//! this process (`/proc/self/status`), resetting the peak, the fastest of several
//! runs and MB/s.
//!
//! The balancing benchmark against the method's Python tool (which creates a venv,
//! installs tiktoken and runs `scripts/reference_balance.py`) is not part of this
//! library: it is the `data-bench` workspace binary (`examples/data-bench`), run as
//! `cargo run --release -p data-bench -- --domain NAME=PATH … --tokenizer T`
//! from the repository root (see `docs/data.md`, "Performance"). It uses these
//! helpers.
//!
//! Peak memory is `VmHWM` of `/proc/self/status` after resetting it through
//! `/proc/self/clear_refs` (Linux ≥ 4.0). Nothing here starts a process.

/// Peak resident set size of this process so far (`VmHWM` of `/proc/self/status`),
/// in bytes; `None` where `/proc` is not available.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_kib(&s, "VmHWM:").map(|k| k * 1024)
}

/// Current resident set size of this process (`VmRSS`), in bytes.
pub fn current_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_kib(&s, "VmRSS:").map(|k| k * 1024)
}

/// Resets this process's peak RSS to its current RSS (`5` into
/// `/proc/self/clear_refs`, Linux ≥ 4.0). Returns whether it worked; when it did
/// not, [`peak_rss_bytes`] keeps counting from process start.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Parses a `Key:   1234 kB` line of `/proc/*/status` (the number, in KiB).
pub fn parse_vm_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The fastest of several runs' wall seconds (`+∞` for no run).
pub fn fastest(seconds: &[f64]) -> f64 {
    seconds.iter().copied().fold(f64::INFINITY, f64::min)
}

/// `bytes` processed in `seconds`, in MB/s (10^6 bytes); a zero duration counts as
/// one nanosecond.
pub fn mb_per_second(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds.max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let s = "Name:\tmome\nVmPeak:\t  2000 kB\nVmHWM:\t    1536 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_kib(s, "VmHWM:"), Some(1536));
        assert_eq!(parse_vm_kib(s, "VmSwap:"), None);
    }

    #[test]
    fn peak_rss_is_measured_on_linux() {
        if cfg!(target_os = "linux") {
            let before = peak_rss_bytes().expect("VmHWM readable");
            let v = vec![1u8; 64 << 20];
            let after = peak_rss_bytes().expect("VmHWM readable");
            assert!(v.iter().map(|&x| x as u64).sum::<u64>() == 64 << 20);
            assert!(after >= before.max(64 << 20), "{before} -> {after}");
        }
    }

    #[test]
    fn fastest_run_and_throughput() {
        assert_eq!(fastest(&[0.5, 0.25, 2.0]), 0.25);
        assert_eq!(fastest(&[]), f64::INFINITY);
        assert!((mb_per_second(3_000_000, 1.5) - 2.0).abs() < 1e-12);
        assert_eq!(mb_per_second(1_000, 0.0), 1e-3 / 1e-9);
    }
}
