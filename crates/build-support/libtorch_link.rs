// Shared by the build scripts of every crate that links libtorch (included with `include!`).
//
// 1. rpath: binaries, tests and examples of the including crate find libtorch at run time
//    without LD_LIBRARY_PATH (the cache path is resolved through the `.libtorch` link).
// 2. CUDA: libtorch_cuda.so is linked with --no-as-needed; otherwise the linker drops it
//    (no symbol of it is referenced directly) and CUDA is silently unavailable.

fn libtorch_link() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
    let lib = std::path::Path::new(&libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
