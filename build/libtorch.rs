//! Link set-up shared by the build scripts of every crate that links libtorch.

/// Embeds an rpath to libtorch so binaries and tests run without `LD_LIBRARY_PATH`, and with
/// the `cuda` feature keeps libtorch_cuda linked although no symbol of it may be referenced
/// directly (the linker would drop it and CUDA would be invisible).
pub fn link() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(lib) = libtorch_dir().map(|dir| dir.join("lib")) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    if cuda() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        // The CPU venv has libtorch_cuda.so but not the CUDA runtime libraries it needs;
        // those exist on the GPU machine, where the binary runs.
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
}

pub fn libtorch_dir() -> Option<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(std::env::var_os("LIBTORCH")?);
    Some(dir.canonicalize().unwrap_or(dir))
}

pub fn cuda() -> bool {
    std::env::var_os("CARGO_FEATURE_CUDA").is_some()
}
