//! Build script: libtorch rpath and CUDA linking (shared with other crates through
//! the `mome-build-support` crate), and the C++ shim: the gradient hooks of the
//! data-parallel all-reduce (`csrc/grad_hooks.cpp`), libtorch's multi-tensor
//! optimizer kernels (`csrc/fused_optim.cpp`), the residual add + layer norm
//! autograd function (`csrc/add_layer_norm.cpp`) and the Kineto kernel trace
//! (`csrc/kernel_trace.cpp`).

fn main() {
    mome_build_support::link_libtorch();
    cxx_shim();
}

/// Compiles the files of `csrc/` against the libtorch that torch-sys links (its
/// `DEP_TCH_LIBTORCH_LIB`, else `$LIBTORCH/lib`).
fn cxx_shim() {
    const FILES: [&str; 4] = [
        "csrc/grad_hooks.cpp",
        "csrc/fused_optim.cpp",
        "csrc/add_layer_norm.cpp",
        "csrc/kernel_trace.cpp",
    ];
    for f in FILES {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .map(std::path::PathBuf::from)
        .or_else(|_| std::env::var("LIBTORCH").map(|p| std::path::Path::new(&p).join("lib")))
        .expect("torch-sys did not report libtorch's folder (DEP_TCH_LIBTORCH_LIB) and LIBTORCH is not set");
    let root = lib.parent().expect("libtorch's lib folder has a parent");
    let include = root.join("include");
    // The pip wheels of torch >= 2.7 use the C++11 ABI (torch-sys's default too).
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .files(FILES)
        .compile("mome_shim");
}
