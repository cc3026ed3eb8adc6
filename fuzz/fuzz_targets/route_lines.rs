//! The line handling of `mome route` (`mome_router::route_lines_each`): the first
//! byte picks the invalid-UTF-8 mode and the line cap, the rest is the stream
//! (invalid UTF-8, CR/LF, empty and over-long lines). One record per line, in
//! order, each as its line alone would route or the right error record; `fail`
//! stops at the first bad line, naming it. The invariants are
//! `checks::route_lines` (also replayed over the seed corpus by `cargo test -p
//! mome-router --test fuzz_replay`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::route_lines(data));
