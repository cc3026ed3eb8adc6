//! Build script: links libtorch (see crates/build-support/libtorch_link.rs).
include!("../build-support/libtorch_link.rs");

fn main() {
    libtorch_link();
}
