//! Links libtorch (shared set-up in `build/libtorch.rs`) and, with the `cuda` feature, builds
//! the CUDA-graph shim against the same libtorch headers.

#[path = "../../build/libtorch.rs"]
mod libtorch;

fn main() {
    libtorch::link();
    #[cfg(feature = "cuda")]
    build_cuda_graph_shim();
}

#[cfg(feature = "cuda")]
fn build_cuda_graph_shim() {
    println!("cargo:rerun-if-changed=csrc/cuda_graph.cpp");
    let libtorch = libtorch::libtorch_dir()
        .expect("LIBTORCH must point at the torch package (see .cargo/config.toml)");
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
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("csrc/cuda_graph.cpp")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .include(cuda_include)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag("-w")
        .compile("lincal_cuda_graph");
    println!(
        "cargo:rustc-link-search=native={}",
        libtorch.join("lib").display()
    );
    println!("cargo:rustc-link-lib=dylib=torch_cuda");
    println!("cargo:rustc-link-lib=dylib=c10_cuda");
}
