//! Build script: lets the binary find libtorch (rpath) and CUDA.

include!("../../crates/build-support/libtorch_link.rs");

fn main() {
    libtorch_link();
}
