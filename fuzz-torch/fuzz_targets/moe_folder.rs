//! Fuzz target `moe_folder`: the MoE folder reader. Arbitrary bytes give a typed error or a valid object,
//! never a panic. The invariants are `moe::moe_folder` (also replayed over the seed corpus
//! by `cargo test -p mome-moe --test fuzz_replay`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks/moe.rs"]
mod moe;

fuzz_target!(
    init: {
        // MOME_FUZZ_SEEDS=DIR: write the seed corpus into DIR first.
        if let Some(dir) = std::env::var_os("MOME_FUZZ_SEEDS") {
            std::fs::create_dir_all(&dir).expect("seed folder");
            for (name, data) in moe::seeds() {
                std::fs::write(std::path::Path::new(&dir).join(name), data).expect("seed");
            }
        }
    },
    |data: &[u8]| {
        moe::moe_folder(data);
    }
);
