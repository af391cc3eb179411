//! Rebuilding the Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json with the
//! chat template, special_tokens_map.json) from a GGUF file's `tokenizer.*` metadata.

use serde_json::{Map, Value, json};

use crate::error::GgufError;
use crate::format::GgufFile;

/// The `tokenizer.ggml.pre` names this importer knows, each mapped to the Hugging Face
/// pre-tokenizer that reproduces llama.cpp's splitting rules in `pre_tokenizer`.
pub(crate) const SUPPORTED_PRE_TOKENIZERS: [&str; 8] = [
    "smollm",
    "starcoder",
    "refact",
    "gpt2",
    "gpt-2",
    "default",
    "llama-bpe",
    "llama3",
];

/// Llama 3's split regex, as in Meta's tokenizer.json.
const LLAMA3_SPLIT_REGEX: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

/// The Hugging Face pre-tokenizer for a `tokenizer.ggml.pre` name, and whether the BPE model
/// must ignore merges for whole words found in the vocabulary (llama.cpp does for Llama 3).
fn pre_tokenizer(pre: &str) -> Option<(Value, bool)> {
    let byte_level = |use_regex: bool| {
        json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": use_regex,
        })
    };
    Some(match pre {
        // StarCoder-family tokenizers split every digit off before the GPT-2 rules.
        "smollm" | "starcoder" | "refact" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        "gpt2" | "gpt-2" | "default" => (byte_level(true), false),
        "llama-bpe" | "llama3" => (
            json!({"type": "Sequence", "pretokenizers": [
                {
                    "type": "Split", "pattern": {"Regex": LLAMA3_SPLIT_REGEX},
                    "behavior": "Isolated", "invert": false,
                },
                byte_level(false),
            ]}),
            true,
        ),
        _ => return None,
    })
}

/// ggml token types that become Hugging Face added tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

struct SpecialToken {
    id: u64,
    content: String,
}

/// The tokenizer files of a `gpt2` (byte-level BPE) GGUF vocabulary.
pub(crate) struct TokenizerFiles {
    pub(crate) vocab_size: u64,
    pub(crate) tokenizer_json: Value,
    chat_template: Option<String>,
    add_bos: bool,
    add_eos: bool,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    pad: Option<SpecialToken>,
    unk: Option<SpecialToken>,
}

impl TokenizerFiles {
    pub(crate) fn read(gguf: &GgufFile) -> Result<TokenizerFiles, GgufError> {
        let model = gguf.req_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(GgufError::UnsupportedTokenizer {
                path: gguf.path().to_path_buf(),
                model: model.to_string(),
            });
        }
        let tokens = gguf
            .opt_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| gguf.missing("tokenizer.ggml.tokens"))?;
        let merges = gguf
            .opt_str_array("tokenizer.ggml.merges")?
            .ok_or_else(|| gguf.missing("tokenizer.ggml.merges"))?;
        let token_types = gguf
            .opt_int_array("tokenizer.ggml.token_type")?
            .unwrap_or_else(|| vec![1; tokens.len()]);
        if token_types.len() != tokens.len() {
            return Err(gguf.malformed(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                token_types.len(),
                tokens.len()
            )));
        }
        // llama.cpp treats a missing pre-tokenizer name as "default".
        let pre = gguf.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let (pre_tokenizer, ignore_merges) =
            pre_tokenizer(pre).ok_or_else(|| GgufError::UnsupportedPreTokenizer {
                path: gguf.path().to_path_buf(),
                pre: pre.to_string(),
            })?;

        let special = |key: &str| -> Result<Option<SpecialToken>, GgufError> {
            let Some(id) = gguf.opt_u64(key)? else {
                return Ok(None);
            };
            let content = tokens.get(id as usize).ok_or_else(|| {
                gguf.malformed(format!(
                    "{key} = {id} is not a token id (the vocabulary has {} tokens)",
                    tokens.len()
                ))
            })?;
            Ok(Some(SpecialToken {
                id,
                content: content.to_string(),
            }))
        };
        let bos = special("tokenizer.ggml.bos_token_id")?;
        let eos = special("tokenizer.ggml.eos_token_id")?;
        let add_bos = gguf
            .opt_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(false);
        let add_eos = gguf
            .opt_bool("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(gguf.missing("tokenizer.ggml.bos_token_id"));
        }
        if add_eos && eos.is_none() {
            return Err(gguf.missing("tokenizer.ggml.eos_token_id"));
        }

        let mut vocab = Map::new();
        let mut added_tokens = Vec::new();
        for (id, (&token, &token_type)) in tokens.iter().zip(&token_types).enumerate() {
            if let Some(first) = vocab.insert(token.to_string(), json!(id)) {
                return Err(gguf.malformed(format!(
                    "token {token:?} appears twice in tokenizer.ggml.tokens (ids {first} and {id})"
                )));
            }
            if token_type == TOKEN_TYPE_CONTROL || token_type == TOKEN_TYPE_USER_DEFINED {
                added_tokens.push(json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false,
                    "rstrip": false,
                    "normalized": false, "special": token_type == TOKEN_TYPE_CONTROL,
                }));
            }
        }
        // GGUF stores merges as "left right"; the left part is never empty, so split at the first
        // space after its first character (as llama.cpp does). Pairs survive tokens with spaces.
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, merge)| {
                merge
                    .char_indices()
                    .skip(1)
                    .find(|&(_, c)| c == ' ')
                    .map(|(at, _)| json!([&merge[..at], &merge[at + 1..]]))
                    .ok_or_else(|| {
                        gguf.malformed(format!(
                            "tokenizer.ggml.merges entry #{i} ({merge:?}) has no space"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let byte_level_post = json!({
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true,
        });
        let post_processor = if add_bos || add_eos {
            let bos = bos.as_ref().filter(|_| add_bos);
            let eos = eos.as_ref().filter(|_| add_eos);
            let template = template_processing(bos, eos);
            json!({"type": "Sequence", "processors": [byte_level_post, template]})
        } else {
            byte_level_post
        };
        let tokenizer_json = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {
                "type": "ByteLevel",
                "add_prefix_space": true,
                "trim_offsets": true,
                "use_regex": true,
            },
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": ignore_merges,
                "vocab": vocab,
                "merges": merges,
            },
        });
        Ok(TokenizerFiles {
            vocab_size: tokens.len() as u64,
            tokenizer_json,
            chat_template: gguf.opt_str("tokenizer.chat_template")?.map(str::to_string),
            add_bos,
            add_eos,
            pad: special("tokenizer.ggml.padding_token_id")?,
            unk: special("tokenizer.ggml.unknown_token_id")?,
            bos,
            eos,
        })
    }

    fn named_specials(&self) -> [(&'static str, &Option<SpecialToken>); 4] {
        [
            ("bos", &self.bos),
            ("eos", &self.eos),
            ("pad", &self.pad),
            ("unk", &self.unk),
        ]
    }

    /// Adds `bos_token_id`, `eos_token_id` and `pad_token_id` (those the GGUF defines).
    pub(crate) fn add_special_ids(&self, json: &mut Value) {
        for (name, token) in [("bos", &self.bos), ("eos", &self.eos), ("pad", &self.pad)] {
            if let Some(token) = token {
                json[format!("{name}_token_id")] = json!(token.id);
            }
        }
    }

    pub(crate) fn generation_config(&self) -> Value {
        let mut config = json!({});
        self.add_special_ids(&mut config);
        config
    }

    pub(crate) fn special_tokens_map(&self) -> Value {
        let mut map = json!({});
        for (name, token) in self.named_specials() {
            if let Some(token) = token {
                map[format!("{name}_token")] = json!(token.content);
            }
        }
        map
    }

    pub(crate) fn tokenizer_config(&self, context_length: u64) -> Value {
        let mut config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": context_length,
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "clean_up_tokenization_spaces": false,
        });
        for (name, token) in self.named_specials() {
            if let Some(token) = token {
                config[format!("{name}_token")] = json!(token.content);
            }
        }
        if let Some(template) = &self.chat_template {
            config["chat_template"] = json!(template);
        }
        config
    }
}

/// A `TemplateProcessing` post-processor that wraps each sequence in BOS and/or EOS (the
/// fast tokenizer ignores `add_bos_token`, so the tokenizer itself must add them).
fn template_processing(bos: Option<&SpecialToken>, eos: Option<&SpecialToken>) -> Value {
    let wrap = |sequence: &str, type_id: u32| {
        let mut pieces = Vec::new();
        if let Some(bos) = bos {
            pieces.push(json!({"SpecialToken": {"id": bos.content, "type_id": type_id}}));
        }
        pieces.push(json!({"Sequence": {"id": sequence, "type_id": type_id}}));
        if let Some(eos) = eos {
            pieces.push(json!({"SpecialToken": {"id": eos.content, "type_id": type_id}}));
        }
        pieces
    };
    let mut special_tokens = Map::new();
    for token in bos.into_iter().chain(eos) {
        special_tokens.insert(
            token.content.clone(),
            json!({"id": token.content, "ids": [token.id], "tokens": [token.content]}),
        );
    }
    let pair = [wrap("A", 0), wrap("B", 1)].concat();
    json!({
        "type": "TemplateProcessing",
        "single": wrap("A", 0),
        "pair": pair,
        "special_tokens": special_tokens,
    })
}

#[cfg(test)]
mod tests {
    use tokenizers::Tokenizer;

    use super::*;
    use crate::test_gguf::synthetic_llama;

    #[test]
    fn every_supported_pre_tokenizer_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = synthetic_llama().write(dir.path(), "tiny.gguf");
        let files = TokenizerFiles::read(&GgufFile::open(&path).unwrap()).unwrap();
        for pre in SUPPORTED_PRE_TOKENIZERS {
            let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre).unwrap();
            let mut json = files.tokenizer_json.clone();
            json["pre_tokenizer"] = pre_tokenizer;
            json["model"]["ignore_merges"] = json!(ignore_merges);
            let tokenizer: Tokenizer = json.to_string().parse().unwrap();
            let ids = tokenizer
                .encode("hello world", false)
                .unwrap()
                .get_ids()
                .to_vec();
            assert_eq!(ids, [18, 23], "pre-tokenizer {pre}");
        }
        assert!(pre_tokenizer("qwen2").is_none());
    }
}
