//! Links libtorch (shared set-up in `build/libtorch.rs`), builds the profiler shim and, with
//! the `cuda` feature, the CUDA-graph shim against the same libtorch headers.

#[path = "../../build/libtorch.rs"]
mod libtorch;

use std::path::{Path, PathBuf};

fn main() {
    libtorch::link();
    let libtorch = libtorch::libtorch_dir()
        .expect("LIBTORCH must point at the torch package (see .cargo/config.toml)");
    compile_shim(&libtorch, "trace", None);
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    #[cfg(feature = "cuda")]
    {
        // The CUDA runtime headers come with the nvidia-cuda-runtime wheel beside torch.
        let cuda_include = std::fs::read_dir(libtorch.join("../nvidia"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("include"))
            .find(|dir| dir.join("cuda_runtime_api.h").exists())
            .expect(
                "cuda_runtime_api.h not found under LIBTORCH/../nvidia/*/include: \
                 run `cargo xtask setup`",
            );
        compile_shim(&libtorch, "cuda_graph", Some(cuda_include));
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}

/// Compiles `csrc/{name}.cpp` against libtorch's headers into `liblincal_{name}`.
fn compile_shim(libtorch: &Path, name: &str, extra_include: Option<PathBuf>) {
    let source = format!("csrc/{name}.cpp");
    println!("cargo:rerun-if-changed={source}");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file(&source)
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
}
