//! Build script: lets the example and its test find libtorch (rpath) and CUDA
//! (see the `mome-build-support` crate).

fn main() {
    mome_build_support::link_libtorch();
}
