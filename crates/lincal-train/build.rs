//! Links libtorch (shared set-up in `build/libtorch.rs`) and builds the fused-AdamW shim
//! against the same libtorch headers.

#[path = "../../build/libtorch.rs"]
mod libtorch;
#[path = "../../build/shim.rs"]
mod shim;

fn main() {
    libtorch::link();
    shim::compile("fused_adamw", None);
}
