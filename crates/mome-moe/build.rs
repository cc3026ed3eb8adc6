//! Build script: lets binaries and tests of this crate find libtorch and CUDA.

include!("../build-support/libtorch_link.rs");

fn main() {
    libtorch_link();
}
