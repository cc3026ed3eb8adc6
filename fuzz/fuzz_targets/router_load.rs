//! Router file loader: arbitrary bytes must give a typed error or a router that
//! routes (finite distributions), serialises and loads again to the same routing,
//! never a panic. The invariants are `checks::router_load` (also replayed over the
//! seed corpus by `cargo test -p mome-router --test fuzz_replay`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::router_load(data));
