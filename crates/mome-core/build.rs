//! Build script: libtorch rpath and CUDA linking (shared with other crates), and the
//! C++ gradient hooks of the data-parallel all-reduce (`csrc/grad_hooks.cpp`).
include!("../build-support/libtorch_link.rs");

fn main() {
    libtorch_link();
    grad_hooks();
}

/// Compiles `csrc/grad_hooks.cpp` against the libtorch that torch-sys links (its
/// `DEP_TCH_LIBTORCH_LIB`, else `$LIBTORCH/lib`).
fn grad_hooks() {
    println!("cargo:rerun-if-changed=csrc/grad_hooks.cpp");
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
        .file("csrc/grad_hooks.cpp")
        .compile("mome_grad_hooks");
}
