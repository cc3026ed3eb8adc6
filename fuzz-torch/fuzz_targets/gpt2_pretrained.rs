//! Fuzz target `gpt2_pretrained`: the GPT-2 folder reader (config.json + model.safetensors). Arbitrary bytes give a typed error or a valid object,
//! never a panic. The invariants are `experts::gpt2_pretrained` (also replayed over the seed corpus
//! by `cargo test -p mome-experts --test fuzz_replay`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks/experts.rs"]
mod experts;

fuzz_target!(
    init: {
        // MOME_FUZZ_SEEDS=DIR: write the seed corpus into DIR first.
        if let Some(dir) = std::env::var_os("MOME_FUZZ_SEEDS") {
            std::fs::create_dir_all(&dir).expect("seed folder");
            for (name, data) in experts::seeds() {
                std::fs::write(std::path::Path::new(&dir).join(name), data).expect("seed");
            }
        }
    },
    |data: &[u8]| {
        experts::gpt2_pretrained(data);
    }
);
