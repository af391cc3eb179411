//! Tiny random models and tokenizers, made on the spot for tests in any crate.

use crate::{CausalLm, GptNeoXConfig, ModelConfig};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A 2-layer Llama with grouped-query attention (4 heads, 2 KV heads), vocabulary 64.
pub fn tiny_llama(tie: bool) -> ModelConfig {
    let text = format!(
        concat!(
            r#"{{"model_type":"llama","vocab_size":64,"hidden_size":32,"intermediate_size":48,"#,
            r#""num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-5,"rope_theta":10000.0,
        "tie_word_embeddings":{tie},"eos_token_id":2,"bos_token_id":1}}"#
        ),
        tie = tie
    );
    ModelConfig::from_json(&text).unwrap()
}

/// A 2-layer GPT-NeoX with partial rotary embeddings, vocabulary 64.
pub fn tiny_neox() -> ModelConfig {
    let config = GptNeoXConfig {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        rotary_pct: 0.5,
        rotary_emb_base: 10_000.0,
        rope_parameters: None,
        layer_norm_eps: 1e-5,
        use_parallel_residual: true,
        max_position_embeddings: 128,
        tie_word_embeddings: false,
        hidden_act: "gelu".into(),
        tokens: crate::config::SpecialTokens {
            eos_token_id: Some(crate::config::TokenIds::One(2)),
            ..Default::default()
        },
    };
    ModelConfig::GptNeoX(config)
}

/// Random weights on the CPU in f32, every parameter (norms included) perturbed. The values
/// come from a ChaCha stream seeded by `seed` alone, not libtorch's global generator, which
/// tests running in parallel threads would share: the same config and seed give the same model.
pub fn random_model(config: ModelConfig, seed: u64) -> CausalLm {
    use rand::{Rng, SeedableRng};
    let model = CausalLm::new(config, Device::Cpu, Kind::Float);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let variables: std::collections::BTreeMap<String, Tensor> =
        model.var_store().variables().into_iter().collect();
    tch::no_grad(|| {
        for (name, var) in &variables {
            let size = var.size();
            // Matrices like PyTorch's default linear init; norm weights around 1 and biases
            // around 0, so that a loader that skipped them would fail.
            let scale = if size.len() == 2 {
                1.0 / (size[1] as f32).sqrt()
            } else {
                0.05
            };
            let noise: Vec<f32> = (0..var.numel())
                .map(|_| rng.random_range(-scale..scale))
                .collect();
            // Norm weights start at 1; biases start drawn from the global generator, so they
            // start from 0 here.
            let base = if size.len() == 2 || name.ends_with("bias") {
                var.zeros_like()
            } else {
                var.shallow_clone()
            };
            var.shallow_clone()
                .copy_(&(base + Tensor::from_slice(&noise).view(size.as_slice())));
        }
    });
    model
}

/// A word-level tokenizer over "t0".."t{n-1}" split on whitespace, with a ChatML-like template.
pub fn write_tokenizer(dir: &Path, n: usize) {
    let mut vocab = serde_json::Map::new();
    for (i, special) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(special.to_string(), i.into());
    }
    for i in 3..n {
        vocab.insert(format!("t{i}"), i.into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "added_tokens": [
            {
                "id": 0,
                "content": "<unk>",
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": true,
            },
            {
                "id": 1,
                "content": "<s>",
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": true,
            },
            {
                "id": 2,
                "content": "</s>",
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": true,
            }
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string(&tokenizer).unwrap(),
    )
    .unwrap();
    let config = serde_json::json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}\
                          {% if add_generation_prompt %}assistant: {% endif %}"
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
}

/// A byte-level tokenizer (GPT-2's byte-to-character map, ByteLevel pre-tokenizer and
/// decoder) whose 256 tokens are single bytes, with no merges: a multi-byte character always
/// spans several tokens.
pub fn write_byte_tokenizer(dir: &Path) {
    // GPT-2's map: printable bytes stand for themselves, the rest for 256 + n in order.
    let mut vocab = serde_json::Map::new();
    let mut shifted = 0;
    for byte in 0u32..256 {
        let printable = (33..=126).contains(&byte)
            || (161..=172).contains(&byte)
            || (174..=255).contains(&byte);
        let ch = if printable {
            char::from_u32(byte).unwrap()
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap()
        };
        vocab.insert(ch.to_string(), byte.into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "vocab": vocab, "merges": [], "dropout": null,
            "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false}
    });
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string(&tokenizer).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), "{}").unwrap();
}
