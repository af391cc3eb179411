//! Compiles the C++ shims of the crates that have them (`csrc/*.cpp`), against libtorch's
//! headers and `build/shim.h`.

/// Compiles the shim `csrc/{name}.cpp` of the crate being built against libtorch's headers
/// (and `build/shim.h`, which every shim includes) into `liblincal_{name}`, and links
/// libtorch's CPU libraries. `extra_include` adds a header directory (the CUDA runtime's).
pub fn compile(name: &str, extra_include: Option<std::path::PathBuf>) {
    let libtorch = crate::libtorch::libtorch_dir()
        .expect("LIBTORCH must point at the torch package (see .cargo/config.toml)");
    let source = format!("csrc/{name}.cpp");
    // At run time: a build script reused from another checkout's build would name that one.
    let shared = std::path::Path::new(
        &std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("../../build");
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-changed={}", shared.join("shim.h").display());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file(&source)
        .include(&shared)
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag("-w");
    if let Some(dir) = extra_include {
        build.include(dir);
    }
    build.compile(&format!("lincal_{name}"));
    println!(
        "cargo:rustc-link-search=native={}",
        libtorch.join("lib").display()
    );
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
