//! Build script: lets binaries and tests of this crate find libtorch and CUDA.

//! Build script: libtorch rpath and CUDA linking (shared with other crates).
include!("../build-support/libtorch_link.rs");

fn main() {
    libtorch_link();
}
