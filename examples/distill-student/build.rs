//! Build script: lets the example and its test find libtorch (rpath) and CUDA.

include!("../../crates/build-support/libtorch_link.rs");

fn main() {
    libtorch_link();
}
