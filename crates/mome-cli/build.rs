//! Build script: lets binaries and tests of this crate find libtorch and CUDA
//! (rpath, `libtorch_cuda.so` kept linked; see the `mome-build-support` crate).

fn main() {
    mome_build_support::link_libtorch();
}
