//! # mome-build-support
//!
//! Shared by the build scripts of every mome crate that links libtorch (a
//! `[build-dependencies]` entry; the build script calls [`link_libtorch`]):
//!
//! 1. rpath: binaries, tests and examples of the calling crate find libtorch at run
//!    time without `LD_LIBRARY_PATH` (the cache path is resolved through the
//!    `.libtorch` link);
//! 2. CUDA: `libtorch_cuda.so` is linked with `--no-as-needed`; otherwise the linker
//!    drops it (no symbol of it is referenced directly) and CUDA is silently
//!    unavailable.
//!
//! ```no_run
//! // in build.rs's `fn main`:
//! mome_build_support::link_libtorch();
//! ```
//!
//! No dependencies; everything is printed as `cargo:` instructions on standard
//! output, so it only makes sense inside a build script.

use std::path::{Path, PathBuf};

/// Emits the link settings for libtorch from `$LIBTORCH` (nothing when it is not
/// set): an rpath to `$LIBTORCH/lib` (canonicalised, so a `.libtorch` link is
/// resolved), and, when `libtorch_cuda.so` is there, that library linked with
/// `-Wl,--no-as-needed,-ltorch_cuda,--as-needed`. Also re-runs the build script
/// when `LIBTORCH` or the calling crate's `build.rs` changes.
pub fn link_libtorch() {
    for line in link_instructions(std::env::var("LIBTORCH").ok().as_deref()) {
        println!("{line}");
    }
}

/// The `cargo:` lines [`link_libtorch`] prints for a given value of `$LIBTORCH`
/// (`None`: not set), in order.
pub fn link_instructions(libtorch: Option<&str>) -> Vec<String> {
    let mut out = vec![
        "cargo:rerun-if-env-changed=LIBTORCH".to_string(),
        "cargo:rerun-if-changed=build.rs".to_string(),
    ];
    let Some(libtorch) = libtorch else {
        return out;
    };
    let lib = libtorch_lib_dir(Path::new(libtorch));
    out.push(format!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display()));
    if lib.join("libtorch_cuda.so").exists() {
        out.push(format!("cargo:rustc-link-search=native={}", lib.display()));
        out.push("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed".to_string());
    }
    out
}

/// `libtorch/lib`, canonicalised when it exists (else as given).
fn libtorch_lib_dir(libtorch: &Path) -> PathBuf {
    let lib = libtorch.join("lib");
    lib.canonicalize().unwrap_or(lib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_libtorch_only_rerun_lines() {
        assert_eq!(
            link_instructions(None),
            [
                "cargo:rerun-if-env-changed=LIBTORCH",
                "cargo:rerun-if-changed=build.rs"
            ]
        );
    }

    #[test]
    fn cpu_libtorch_gets_an_rpath_only() {
        let dir = std::env::temp_dir().join(format!("mome-bs-cpu-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        let lines = link_instructions(Some(dir.to_str().unwrap()));
        let lib = dir.join("lib").canonicalize().unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[2],
            format!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cuda_libtorch_keeps_torch_cuda_linked() {
        let dir = std::env::temp_dir().join(format!("mome-bs-cuda-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(dir.join("lib/libtorch_cuda.so"), b"").unwrap();
        // Through a symlink, as `.libtorch` is: the rpath is the resolved folder.
        let link = std::env::temp_dir().join(format!("mome-bs-link-{}", std::process::id()));
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        #[cfg(not(unix))]
        let link = dir.clone();
        let lines = link_instructions(Some(link.to_str().unwrap()));
        let lib = dir.join("lib").canonicalize().unwrap();
        assert_eq!(
            lines[2..],
            [
                format!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display()),
                format!("cargo:rustc-link-search=native={}", lib.display()),
                "cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed".to_string(),
            ]
        );
        let _ = std::fs::remove_file(&link);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
