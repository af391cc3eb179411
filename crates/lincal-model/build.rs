//! Links libtorch (shared set-up in `build/libtorch.rs`), builds the profiler shim and, with
//! the `cuda` feature, the CUDA-graph shim and lincal's runtime-compiled kernels against the
//! same libtorch headers.

#[path = "../../build/libtorch.rs"]
mod libtorch;
#[path = "../../build/shim.rs"]
mod shim;

fn main() {
    libtorch::link();
    shim::compile("trace", None);
    #[cfg(feature = "cuda")]
    {
        // The CUDA runtime headers come with the nvidia-cuda-runtime wheel beside torch.
        let libtorch = libtorch::libtorch_dir().expect("LIBTORCH is set");
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
        shim::compile("cuda_graph", Some(cuda_include.clone()));
        shim::compile("kernels", Some(cuda_include));
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}
