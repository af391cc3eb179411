//! Model configs read from (and written back to) Hugging Face `config.json`.

use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `rope_scaling` as transformers writes it; `rope_type` (newer) or `type` (older).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    pub factor: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<i64>,
}

/// Token ids can be a single id or a list in HF configs (Llama 3 lists several EOS ids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// Fields every architecture's config carries: special token ids and the stored precision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecialTokens {
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

/// Llama family (Llama 2/3, SmolLM2, Mistral-style GQA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// transformers 5 writes `rope_theta` and the scaling here instead of at the top level;
    /// `ModelConfig::from_json` folds it into the two fields above.
    #[serde(default, skip_serializing)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(flatten)]
    pub tokens: SpecialTokens,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_positions() -> i64 {
    2048
}

impl LlamaConfig {
    fn fold_rope_parameters(&mut self) -> Result<(), String> {
        let Some(parameters) = self.rope_parameters.take() else {
            return Ok(());
        };
        if let Some(theta) = rope_number(&parameters, "rope_theta")? {
            self.rope_theta = theta;
        }
        let rope_type = parameters
            .get("rope_type")
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        if rope_type != "default" {
            self.rope_scaling = Some(
                serde_json::from_value(parameters).map_err(|e| format!("rope_parameters: {e}"))?,
            );
        }
        Ok(())
    }

    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
}

/// `rope_parameters.<key>` of a transformers 5 config, when present.
fn rope_number(parameters: &serde_json::Value, key: &str) -> Result<Option<f64>, String> {
    parameters
        .get(key)
        .map(|value| {
            value
                .as_f64()
                .ok_or(format!("rope_parameters.{key} must be a number"))
        })
        .transpose()
}

/// GPT-NeoX (the reference's RedPajama-INCITE 3B answer extractor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptNeoXConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default = "default_rotary_pct")]
    pub rotary_pct: f64,
    #[serde(default = "default_rotary_base")]
    pub rotary_emb_base: f64,
    /// transformers 5 writes the rotary fraction and base here (`partial_rotary_factor`,
    /// `rope_theta`) instead of `rotary_pct` and `rotary_emb_base`; `ModelConfig::from_json`
    /// folds it into those two.
    #[serde(default, skip_serializing)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_true")]
    pub use_parallel_residual: bool,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_gelu")]
    pub hidden_act: String,
    #[serde(flatten)]
    pub tokens: SpecialTokens,
}

fn default_rotary_pct() -> f64 {
    0.25
}
fn default_rotary_base() -> f64 {
    10_000.0
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_gelu() -> String {
    "gelu".into()
}

impl GptNeoXConfig {
    fn fold_rope_parameters(&mut self) -> Result<(), String> {
        let Some(parameters) = self.rope_parameters.take() else {
            return Ok(());
        };
        if let Some(fraction) = rope_number(&parameters, "partial_rotary_factor")? {
            self.rotary_pct = fraction;
        }
        if let Some(theta) = rope_number(&parameters, "rope_theta")? {
            self.rotary_emb_base = theta;
        }
        match parameters.get("rope_type").and_then(|t| t.as_str()) {
            None | Some("default") => Ok(()),
            Some(other) => Err(format!(
                "rope_parameters.rope_type \"{other}\" is not supported for gpt_neox (only \
                 \"default\")"
            )),
        }
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
    pub fn rotary_dim(&self) -> i64 {
        (self.head_dim() as f64 * self.rotary_pct) as i64
    }
}

/// The architectures lincal runs, chosen by `model_type` in `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Llama(LlamaConfig),
    GptNeoX(GptNeoXConfig),
}

impl ModelConfig {
    /// Reads `config.json`, naming the file and the field when something is wrong.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json(&text).map_err(|message| ModelError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("malformed JSON ({e})"))?;
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or("field `model_type` is missing; expected \"llama\" or \"gpt_neox\"")?
            .to_string();
        let parsed = match model_type.as_str() {
            "llama" | "mistral" => serde_json::from_value(value).map(ModelConfig::Llama),
            "gpt_neox" => serde_json::from_value(value).map(ModelConfig::GptNeoX),
            other => {
                return Err(format!(
                    "model_type \"{other}\" is not supported; \
                     lincal runs \"llama\" and \"gpt_neox\""
                ));
            }
        };
        let mut config = parsed.map_err(|e| format!("{e}"))?;
        match &mut config {
            ModelConfig::Llama(c) => c.fold_rope_parameters()?,
            ModelConfig::GptNeoX(c) => c.fold_rope_parameters()?,
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: i64| {
            if v > 0 {
                Ok(())
            } else {
                Err(format!("field `{name}` must be positive, got {v}"))
            }
        };
        match self {
            ModelConfig::Llama(c) => {
                for (name, v) in [
                    ("vocab_size", c.vocab_size),
                    ("hidden_size", c.hidden_size),
                    ("intermediate_size", c.intermediate_size),
                    ("num_hidden_layers", c.num_hidden_layers),
                    ("num_attention_heads", c.num_attention_heads),
                    ("num_key_value_heads", c.num_kv_heads()),
                ] {
                    positive(name, v)?;
                }
                if c.num_attention_heads % c.num_kv_heads() != 0 {
                    return Err(format!(
                        "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                        c.num_attention_heads,
                        c.num_kv_heads()
                    ));
                }
                if c.head_dim.is_none() && c.hidden_size % c.num_attention_heads != 0 {
                    return Err(format!(
                        "hidden_size ({}) is not divisible \
                         by num_attention_heads ({}); set head_dim",
                        c.hidden_size, c.num_attention_heads
                    ));
                }
                if let Some(s) = &c.rope_scaling
                    && !matches!(s.rope_type.as_str(), "linear" | "llama3" | "default")
                {
                    return Err(format!(
                        "rope_scaling type \"{}\" is not supported (use \"linear\" or \"llama3\")",
                        s.rope_type
                    ));
                }
                Ok(())
            }
            ModelConfig::GptNeoX(c) => {
                for (name, v) in [
                    ("vocab_size", c.vocab_size),
                    ("hidden_size", c.hidden_size),
                    ("intermediate_size", c.intermediate_size),
                    ("num_hidden_layers", c.num_hidden_layers),
                    ("num_attention_heads", c.num_attention_heads),
                ] {
                    positive(name, v)?;
                }
                if c.hidden_size % c.num_attention_heads != 0 {
                    return Err(format!(
                        "hidden_size ({}) is not divisible by num_attention_heads ({})",
                        c.hidden_size, c.num_attention_heads
                    ));
                }
                if !matches!(
                    c.hidden_act.as_str(),
                    "gelu" | "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh"
                ) {
                    return Err(format!(
                        "hidden_act \"{}\" is not supported (use a gelu variant)",
                        c.hidden_act
                    ));
                }
                Ok(())
            }
        }
    }

    /// The `config.json` text transformers loads.
    pub fn to_json(&self) -> String {
        let (mut value, model_type, architecture) = match self {
            ModelConfig::Llama(c) => (serde_json::to_value(c), "llama", "LlamaForCausalLM"),
            ModelConfig::GptNeoX(c) => (serde_json::to_value(c), "gpt_neox", "GPTNeoXForCausalLM"),
        };
        let value = value.as_mut().expect("configs serialise");
        let object = value.as_object_mut().expect("configs are objects");
        object.insert("model_type".into(), model_type.into());
        object.insert("architectures".into(), serde_json::json!([architecture]));
        object.retain(|_, v| !v.is_null());
        serde_json::to_string_pretty(value).expect("configs serialise")
    }

    /// Positions the model was trained for.
    pub fn max_position_embeddings(&self) -> i64 {
        match self {
            ModelConfig::Llama(c) => c.max_position_embeddings,
            ModelConfig::GptNeoX(c) => c.max_position_embeddings,
        }
    }

    pub fn vocab_size(&self) -> i64 {
        match self {
            ModelConfig::Llama(c) => c.vocab_size,
            ModelConfig::GptNeoX(c) => c.vocab_size,
        }
    }

    pub fn set_vocab_size(&mut self, vocab_size: i64) {
        match self {
            ModelConfig::Llama(c) => c.vocab_size = vocab_size,
            ModelConfig::GptNeoX(c) => c.vocab_size = vocab_size,
        }
    }

    fn tokens(&self) -> &SpecialTokens {
        match self {
            ModelConfig::Llama(c) => &c.tokens,
            ModelConfig::GptNeoX(c) => &c.tokens,
        }
    }

    fn tokens_mut(&mut self) -> &mut SpecialTokens {
        match self {
            ModelConfig::Llama(c) => &mut c.tokens,
            ModelConfig::GptNeoX(c) => &mut c.tokens,
        }
    }

    pub fn eos_token_ids(&self) -> Vec<i64> {
        self.tokens()
            .eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    pub fn pad_token_id(&self) -> Option<i64> {
        self.tokens().pad_token_id
    }

    pub fn set_torch_dtype(&mut self, name: &str) {
        self.tokens_mut().torch_dtype = Some(name.into());
    }

    pub fn torch_dtype(&self) -> Option<&str> {
        self.tokens().torch_dtype.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_config_defaults_and_round_trip() {
        let text = concat!(
            r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"#,
            r#""eos_token_id":[2,3],
            "rope_scaling":{"type":"linear","factor":2.0}}"#
        );
        let config = ModelConfig::from_json(text).unwrap();
        let ModelConfig::Llama(c) = &config else {
            panic!("expected llama")
        };
        assert_eq!(
            (c.head_dim(), c.num_kv_heads(), c.rope_theta, c.rms_norm_eps),
            (16, 2, 10_000.0, 1e-6)
        );
        assert_eq!(config.eos_token_ids(), vec![2, 3]);
        assert_eq!(c.rope_scaling.as_ref().unwrap().rope_type, "linear");
        let again = ModelConfig::from_json(&config.to_json()).unwrap();
        assert_eq!(again, config);
    }

    /// transformers 5 moves `rope_theta` into `rope_parameters`; missing it silently would
    /// run SmolLM2 (theta 1e5) with the default 1e4.
    #[test]
    fn rope_parameters_of_transformers_5_are_read() {
        let text = concat!(
            r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"#,
            r#""rope_parameters":{"rope_type":"default","rope_theta":100000.0}}"#
        );
        let ModelConfig::Llama(c) = ModelConfig::from_json(text).unwrap() else {
            panic!("expected llama")
        };
        assert_eq!((c.rope_theta, c.rope_scaling.is_none()), (100_000.0, true));
        let text = text.replace(
            r#""rope_type":"default""#,
            concat!(
                r#""rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"#,
                r#""high_freq_factor":4.0,"original_max_position_embeddings":8192"#
            ),
        );
        let ModelConfig::Llama(c) = ModelConfig::from_json(&text).unwrap() else {
            panic!("expected llama")
        };
        let scaling = c.rope_scaling.unwrap();
        assert_eq!(
            (scaling.rope_type.as_str(), scaling.factor, c.rope_theta),
            ("llama3", 8.0, 100_000.0)
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = [
            ("{", "malformed JSON"),
            (r#"{"vocab_size": 3}"#, "`model_type` is missing"),
            (r#"{"model_type":"bert"}"#, "\"bert\" is not supported"),
            (
                concat!(
                    r#"{"model_type":"llama","vocab_size":10,"hidden_size":64,"#,
                    r#""num_hidden_layers":2,"num_attention_heads":4}"#
                ),
                "intermediate_size",
            ),
            (
                concat!(
                    r#"{"model_type":"llama","vocab_size":10,"hidden_size":64,"#,
                    r#""intermediate_size":8,"num_hidden_layers":2,"num_attention_heads":4,"#,
                    r#""num_key_value_heads":3}"#
                ),
                "multiple of num_key_value_heads",
            ),
            (
                concat!(
                    r#"{"model_type":"llama","vocab_size":0,"hidden_size":64,"#,
                    r#""intermediate_size":8,"num_hidden_layers":2,"num_attention_heads":4}"#
                ),
                "`vocab_size` must be positive",
            ),
        ];
        for (text, expected) in cases {
            let err = ModelConfig::from_json(text).unwrap_err();
            assert!(err.contains(expected), "{text}: got {err}");
        }
    }
}
