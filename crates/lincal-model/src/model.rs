//! A causal language model of any supported architecture, with its weights in a `VarStore`
//! whose names are the Hugging Face parameter names.

use crate::checkpoint::{SafetensorsCheckpoint, save_safetensors};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::fsutil::write_atomic;
use crate::gpt_neox::GptNeoX;
use crate::layers::KvCache;
use crate::llama::Llama;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor, nn};

/// transformers' default shard size.
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5 << 30;

enum Architecture {
    Llama(Llama),
    GptNeoX(GptNeoX),
}

pub struct CausalLm {
    config: ModelConfig,
    vs: nn::VarStore,
    arch: Architecture,
    /// Whether generation replays CUDA graphs for decode steps (on a GPU, `cuda` builds).
    cuda_graphs: bool,
}

impl CausalLm {
    /// A model with freshly initialised weights, of the given precision, on `device`.
    pub fn new(mut config: ModelConfig, device: Device, kind: Kind) -> Self {
        config.set_torch_dtype(kind_name(kind));
        let mut vs = nn::VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let arch = match &config {
            ModelConfig::Llama(c) => Architecture::Llama(Llama::new(&root, c)),
            ModelConfig::GptNeoX(c) => Architecture::GptNeoX(GptNeoX::new(&root, c)),
        };
        CausalLm { config, vs, arch, cuda_graphs: true }
    }

    /// Loads `dir/config.json` and the safetensors weights. `kind` `None` keeps the stored
    /// `torch_dtype` (f32 when absent).
    pub fn load(dir: &Path, device: Device, kind: Option<Kind>) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let kind = kind.unwrap_or_else(|| config.torch_dtype().and_then(kind_from_name).unwrap_or(Kind::Float));
        let checkpoint = SafetensorsCheckpoint::open(dir)?;
        let model = tch::no_grad(|| CausalLm::new(config, device, kind));
        checkpoint.load_into(&model.vs.variables())?;
        Ok(model)
    }

    /// Writes `config.json`, `generation_config.json` and the weights into `dir` (which must
    /// exist), the HF layout transformers loads.
    pub fn save(&self, dir: &Path, max_shard_bytes: usize) -> Result<()> {
        let tensors: BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        save_safetensors(dir, &tensors, max_shard_bytes)?;
        write_atomic(&dir.join("config.json"), self.config.to_json().as_bytes())?;
        let mut generation = serde_json::json!({ "do_sample": true });
        if let Some(eos) = self.config.eos_token_ids().first() {
            generation["eos_token_id"] = (*eos).into();
        }
        if let Some(pad) = self.config.pad_token_id() {
            generation["pad_token_id"] = pad.into();
        }
        write_atomic(&dir.join("generation_config.json"), serde_json::to_string_pretty(&generation).expect("json").as_bytes())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Casts every weight to `kind` (e.g. bf16 for GPU work); the config follows.
    pub fn set_kind(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
        self.config.set_torch_dtype(kind_name(kind));
    }

    /// Turns CUDA-graph decoding on (the default) or off, e.g. to compare with eager decoding.
    pub fn set_cuda_graphs(&mut self, enabled: bool) {
        self.cuda_graphs = enabled;
    }

    pub fn cuda_graphs(&self) -> bool {
        self.cuda_graphs
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn kind(&self) -> Kind {
        self.vs.root().kind()
    }

    /// Final hidden states; see `Llama::forward` for the arguments.
    pub fn forward(&self, input_ids: &Tensor, positions: &Tensor, mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Tensor {
        match &self.arch {
            Architecture::Llama(m) => m.forward(input_ids, positions, mask, cache),
            Architecture::GptNeoX(m) => m.forward(input_ids, positions, mask, cache),
        }
    }

    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        match &self.arch {
            Architecture::Llama(m) => m.logits(hidden),
            Architecture::GptNeoX(m) => m.logits(hidden),
        }
    }

    pub fn new_cache(&self, batch: i64, max_len: i64) -> KvCache {
        match &self.arch {
            Architecture::Llama(m) => m.new_cache(batch, max_len),
            Architecture::GptNeoX(m) => m.new_cache(batch, max_len),
        }
    }

    /// Grows the vocabulary to `new_vocab` rows; new input and output embedding rows are the
    /// mean of the existing rows (SPEC 1.3, `stable_resize_token_embeddings`), so a new token
    /// such as "[PAD]" starts as an average token rather than as noise.
    pub fn resize_token_embeddings(&mut self, new_vocab: i64) -> Result<()> {
        let old_vocab = self.config.vocab_size();
        if new_vocab < old_vocab {
            return Err(ModelError::Invalid(format!("cannot shrink the vocabulary from {old_vocab} to {new_vocab} rows")));
        }
        let names: &[&str] = match &self.config {
            ModelConfig::Llama(_) => &["model.embed_tokens.weight", "lm_head.weight"],
            ModelConfig::GptNeoX(_) => &["gpt_neox.embed_in.weight", "embed_out.weight"],
        };
        let variables = self.vs.variables();
        tch::no_grad(|| {
            for name in names {
                if let Some(var) = variables.get(*name) {
                    let mean = var.mean_dim(0, true, Kind::Float).to_kind(var.kind());
                    let grown = Tensor::cat(&[var.shallow_clone(), mean.expand([new_vocab - old_vocab, var.size()[1]], false)], 0);
                    // `set_data` swaps the storage behind every handle to this variable,
                    // the model's own included.
                    var.shallow_clone().set_data(&grown);
                }
            }
        });
        self.config.set_vocab_size(new_vocab);
        Ok(())
    }

    /// Sum of all parameters in f64 (the reference's checkpoint integrity check).
    pub fn parameter_sum(&self) -> f64 {
        self.vs.variables().values().map(|t| t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[])).sum()
    }
}

pub fn kind_from_name(name: &str) -> Option<Kind> {
    Some(match name {
        "float32" | "f32" | "float" => Kind::Float,
        "bfloat16" | "bf16" => Kind::BFloat16,
        "float16" | "f16" | "half" => Kind::Half,
        _ => return None,
    })
}

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}
