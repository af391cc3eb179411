//! lincal-model: the language models lincal trains and serves. Llama-family and GPT-NeoX
//! decoders over libtorch (`tch`), Hugging Face checkpoints in and out, weight-diff recovery,
//! and batched KV-cache generation.

pub mod checkpoint;
pub mod config;
pub mod cuda_graph;
pub mod error;
pub mod fsutil;
pub mod generate;
pub mod gpt_neox;
pub mod layers;
pub mod llama;
pub mod lora;
pub mod model;
pub mod recover;
pub mod testing;
pub mod tokenizer;

pub use config::{GptNeoXConfig, LlamaConfig, ModelConfig};
pub use error::{ModelError, Result};
pub use generate::{
    BatchRequest, FinishReason, Generation, SamplingParams, generate_batch, generate_text,
};
pub use layers::KvCache;
pub use model::CausalLm;
pub use tokenizer::{ChatTurn, Tokenizer};

/// The best device here: the first CUDA GPU when there is one.
pub fn default_device() -> tch::Device {
    tch::Device::cuda_if_available()
}
