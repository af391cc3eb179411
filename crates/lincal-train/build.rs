//! Links libtorch (shared set-up in `build/libtorch.rs`) and builds the fused-AdamW shim
//! against the same libtorch headers.

#[path = "../../build/libtorch.rs"]
mod libtorch;

fn main() {
    libtorch::link();
    println!("cargo:rerun-if-changed=csrc/fused_adamw.cpp");
    let libtorch = libtorch::libtorch_dir()
        .expect("LIBTORCH must point at the torch package (see .cargo/config.toml)");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("csrc/fused_adamw.cpp")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag("-w")
        .compile("lincal_fused_adamw");
    println!(
        "cargo:rustc-link-search=native={}",
        libtorch.join("lib").display()
    );
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
