//! Build script: lets binaries and tests of this crate find libtorch and CUDA.

//! Build script: links libtorch (see crates/build-support/libtorch_link.rs).
include!("../build-support/libtorch_link.rs");

fn main() {
    libtorch_link();
}
