//! Hugging Face tokenizers (`tokenizer.json`) with the bits of `tokenizer_config.json` that
//! generation needs: special tokens, whether to add BOS, and the Jinja chat template.

use crate::error::{ModelError, Result};
use crate::fsutil::write_atomic;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Where [`Tokenizer::decode_next`] is in a sequence: the window of recent tokens it decodes
/// again and the text of its leading part.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
    /// Every token so far, for the rare decoder that needs them all.
    all: Vec<i64>,
    /// Bytes of text handed out.
    emitted: usize,
}

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `tokenizer_config.json` as read (or `{}`), kept so that saving preserves unknown keys.
    config: serde_json::Map<String, serde_json::Value>,
    path: PathBuf,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTurn {
    pub role: String,
    pub content: String,
}

impl ChatTurn {
    pub fn new(role: &str, content: &str) -> Self {
        ChatTurn {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A warning when a tokenizer of `tokens` tokens covers less than 90% of a model's `rows`
/// embedding rows: padding the table to a multiple of 64 or 128 leaves a few unused rows, a
/// tokenizer of another model many.
pub fn vocab_coverage_warning(tokens: usize, rows: i64) -> Option<String> {
    (rows > 0 && (tokens as f64) < 0.9 * rows as f64).then(|| {
        format!(
            "has {tokens} tokens for the model's {rows} embedding rows ({:.0}%); it may \
             belong to another model",
            100.0 * tokens as f64 / rows as f64
        )
    })
}

/// The ids of an encoding without the padding a `padding` section of tokenizer.json makes
/// tokenizers add (to a batch's longest text, or to a fixed length): lincal pads its batches
/// itself, so a text's ids are its own tokens, encoded alone or in a batch.
fn unpadded_ids(encoding: &tokenizers::Encoding) -> Vec<i64> {
    encoding
        .get_ids()
        .iter()
        .zip(encoding.get_attention_mask())
        .filter(|&(_, &attended)| attended == 1)
        .map(|(&id, _)| id as i64)
        .collect()
}

impl Tokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::Tokenizer {
                path,
                message:
                    "missing; a model directory needs tokenizer.json (save the fast tokenizer from \
                     transformers, or convert with `lincal convert`)"
                        .into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
            path: path.clone(),
            message: format!("cannot be read: {e}"),
        })?;
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| ModelError::io(&config_path, e))?;
            match serde_json::from_str(&text) {
                Ok(serde_json::Value::Object(map)) => map,
                Ok(_) | Err(_) => {
                    return Err(ModelError::Tokenizer {
                        path: config_path,
                        message: "is not a JSON object".into(),
                    });
                }
            }
        } else {
            serde_json::Map::new()
        };
        Ok(Tokenizer {
            inner,
            config,
            path,
        })
    }

    /// Number of ids the tokenizer can produce (base vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Refuses a model whose embedding table cannot hold every token id.
    pub fn check_model_vocab(&self, model_vocab: i64) -> Result<()> {
        let vocab = self.inner.get_vocab(true);
        let max_id = vocab.values().copied().max().unwrap_or(0) as i64;
        if max_id >= model_vocab {
            return Err(ModelError::Tokenizer {
                path: self.path.clone(),
                message: format!(
                    "produces token id {max_id} but the model's embedding has {model_vocab} rows; \
                     this tokenizer belongs to another model (or the model needs \
                     `resize_token_embeddings`)"
                ),
            });
        }
        if let Some(warning) = vocab_coverage_warning(vocab.len(), model_vocab) {
            eprintln!("warning: {}: {warning}", self.path.display());
        }
        Ok(())
    }

    fn special_token(&self, key: &str) -> Option<String> {
        match self.config.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            _ => None,
        }
    }

    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    pub fn bos_token(&self) -> Option<String> {
        self.special_token("bos_token")
    }
    pub fn eos_token(&self) -> Option<String> {
        self.special_token("eos_token")
    }
    pub fn pad_token(&self) -> Option<String> {
        self.special_token("pad_token")
    }

    /// Ids that end generation: the EOS token and, for chat models, the end-of-turn token.
    pub fn eos_token_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .eos_token()
            .iter()
            .filter_map(|t| self.token_id(t))
            .collect();
        for end_of_turn in ["<|im_end|>", "<|eot_id|>", "<|end|>"] {
            if let Some(id) = self.token_id(end_of_turn).filter(|id| !ids.contains(id)) {
                ids.push(id);
            }
        }
        ids
    }

    /// Token ids of `text`. With `add_special_tokens`, the tokenizer's post-processor adds what
    /// the model expects (for Llama, BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.failed("encoding", e))?;
        Ok(unpadded_ids(&encoding))
    }

    /// [`Self::encode`] of each text, the texts spread over the host's cores (tokenizers'
    /// thread pool; `TOKENIZERS_PARALLELISM=false` keeps it to one).
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<i64>>> {
        let texts: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = self
            .inner
            .encode_batch(texts, add_special_tokens)
            .map_err(|e| self.failed("encoding", e))?;
        Ok(encodings.iter().map(unpadded_ids).collect())
    }

    /// The error of a failed tokenizers call (`what`: "encoding", "decoding").
    fn failed(&self, what: &str, error: impl std::fmt::Display) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            message: format!("{what} failed: {error}"),
        }
    }

    /// [`Self::decode`] of each row, the rows spread over the host's cores.
    pub fn decode_batch<R: AsRef<[i64]>>(
        &self,
        rows: &[R],
        skip_special_tokens: bool,
    ) -> Result<Vec<String>> {
        let ids: Vec<Vec<u32>> = rows
            .iter()
            .map(|row| row.as_ref().iter().map(|&id| id as u32).collect())
            .collect();
        let slices: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        self.inner
            .decode_batch(&slices, skip_special_tokens)
            .map_err(|e| self.failed("decoding", e))
    }

    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| self.failed("decoding", e))
    }

    /// The text `token` adds to the tokens `state` has seen, once it is whole (`None` while
    /// the text ends in an incomplete character). Only the last few tokens are decoded again
    /// (tokenizers' stream decoding), so decoding an answer token by token costs time in
    /// proportion to its length, not its square.
    pub fn decode_next(
        &self,
        state: &mut IncrementalDecoder,
        token: i64,
    ) -> Result<Option<String>> {
        state.all.push(token);
        let mut window = (state.ids.clone(), state.prefix.clone(), state.prefix_index);
        let stepped = tokenizers::tokenizer::step_decode_stream(
            &self.inner,
            vec![token as u32],
            true,
            &mut window.0,
            &mut window.1,
            &mut window.2,
        );
        if let Ok(piece) = stepped {
            (state.ids, state.prefix, state.prefix_index) = window;
            state.emitted += piece.as_ref().map_or(0, String::len);
            return Ok(piece);
        }
        // A decoder whose text is not prefix-stable over the window: decode everything once,
        // hand out what is new, and start the window afresh after it.
        let whole = self.decode(&state.all, true)?;
        let piece = whole.get(state.emitted..).unwrap_or_default().to_string();
        state.ids = state.all.iter().map(|&id| id as u32).collect();
        state.prefix_index = state.ids.len();
        state.emitted = whole.len();
        state.prefix = whole;
        Ok(Some(piece))
    }

    /// What the tokens `state` has seen add beyond the text handed out: a trailing incomplete
    /// character, as U+FFFD.
    pub fn decode_rest(&self, state: &IncrementalDecoder) -> Result<String> {
        let ids: Vec<i64> = state.ids.iter().map(|&id| i64::from(id)).collect();
        let window = self.decode(&ids, true)?;
        Ok(window
            .strip_prefix(state.prefix.as_str())
            .unwrap_or_default()
            .to_string())
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.config.get("chat_template").and_then(|t| t.as_str())
    }

    /// Renders `messages` with the model's Jinja chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatTurn],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.chat_template().ok_or_else(|| {
            ModelError::ChatTemplate(format!(
                "{} has no `chat_template`; this is not a chat model, so pass a plain \
                 prompt (drop --chat)",
                self.path.with_file_name("tokenizer_config.json").display()
            ))
        })?;
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| ModelError::ChatTemplate(format!("cannot be parsed: {e}")))?;
        let context = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token().unwrap_or_default(),
            eos_token => self.eos_token().unwrap_or_default(),
        };
        env.get_template("chat")
            .and_then(|t| t.render(context))
            .map_err(|e| ModelError::ChatTemplate(format!("rendering failed: {e}")))
    }

    /// Token ids of a chat for the model to answer: rendered with the template (which holds
    /// any BOS text itself, so no special tokens are added) and the assistant's turn opened.
    pub fn encode_chat(&self, messages: &[ChatTurn]) -> Result<Vec<i64>> {
        self.encode(&self.apply_chat_template(messages, true)?, false)
    }

    /// Adds `token` as a special token (e.g. a "[PAD]" the reference adds to Llama 2) and returns
    /// its id; the model's embeddings must then be resized to `vocab_size()`.
    pub fn add_special_token(&mut self, key: &str, token: &str) -> i64 {
        self.inner
            .add_special_tokens(&[tokenizers::AddedToken::from(token.to_string(), true)]);
        self.config.insert(key.into(), token.into());
        self.token_id(token).expect("token was just added")
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| ModelError::Tokenizer {
                path: dir.join("tokenizer.json"),
                message: format!("cannot be serialised: {e}"),
            })?;
        write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        let mut config = self.config.clone();
        config
            .entry("tokenizer_class")
            .or_insert("PreTrainedTokenizerFast".into());
        write_atomic(
            &dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&config)
                .expect("json")
                .as_bytes(),
        )
    }
}
