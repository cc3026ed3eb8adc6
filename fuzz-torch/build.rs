//! libtorch's rpath (and CUDA's --no-as-needed) for the fuzz binaries, as every
//! mome crate that links libtorch does.
fn main() {
    mome_build_support::link_libtorch();
}
