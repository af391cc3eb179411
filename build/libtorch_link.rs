//! Build script of the crates that link libtorch but build no C++ of their own (see
//! `build = ...` in their Cargo.toml).

#[path = "libtorch.rs"]
mod libtorch;

fn main() {
    libtorch::link();
}
