//! Build script shared by every crate that links libtorch (see `build = ...` in their
//! Cargo.toml): embeds an rpath to libtorch so binaries and tests run without
//! `LD_LIBRARY_PATH`, and with the `cuda` feature keeps libtorch_cuda linked although no
//! symbol of it is referenced directly (the linker would drop it and CUDA would be invisible).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&libtorch).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        // The CPU venv has libtorch_cuda.so but not the CUDA runtime libraries it needs;
        // those exist on the GPU machine, where the binary runs.
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
}
