//! lincal-model: the language models lincal trains and serves. Llama-family and GPT-NeoX
//! decoders over libtorch (`tch`), Hugging Face checkpoints in and out, weight-diff recovery,
//! and batched KV-cache generation.

pub mod checkpoint;
pub mod config;
pub mod continuous;
pub mod cuda_graph;
pub mod error;
pub mod fsutil;
pub mod generate;
pub mod gpt_neox;
pub mod kernels;
pub mod layers;
pub mod llama;
pub mod lora;
pub mod model;
mod offload;
pub mod recover;
pub mod shim;
pub mod testing;
pub mod tokenizer;
pub mod trace;

pub use config::{GptNeoXConfig, LlamaConfig, ModelConfig};
pub use continuous::{DecodeSlots, Prefill};
pub use error::{ModelError, Result};
pub use generate::{
    BatchRequest, FinishReason, Generation, SamplingParams, TextStream, generate_batch,
    generate_text,
};
pub use layers::KvCache;
pub use model::CausalLm;
pub use tokenizer::{ChatTurn, IncrementalDecoder, Tokenizer};

/// libtorch's global random generator is one per process, shared by every thread. Code that
/// seeds it and then draws from it (a training step's dropout masks) holds this lock
/// throughout, so that no other thread reseeds it or draws from it in between; so do model
/// construction (the initial weights) and tests that draw from it (`randn`). In a run, with
/// one trainer per process, it is never contended.
static LIBTORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`LIBTORCH_RNG`] (not reentrant: a holder must not call code that takes it).
pub fn lock_libtorch_rng() -> std::sync::MutexGuard<'static, ()> {
    LIBTORCH_RNG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits for the work queued on `device` (a GPU's; the CPU runs it as it is called), so that
/// wall-clock times and traces cover it.
pub fn synchronize(device: tch::Device) {
    if let tch::Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// The best device here: the first CUDA GPU when there is one.
pub fn default_device() -> tch::Device {
    tch::Device::cuda_if_available()
}
