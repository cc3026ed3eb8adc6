//! Build script: lets the binary find libtorch (rpath) and CUDA (see the
//! `mome-build-support` crate).

fn main() {
    mome_build_support::link_libtorch();
}
