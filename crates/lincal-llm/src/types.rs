//! What a caller asks of a model and what comes back.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::LlmError;

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The wire name both APIs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a chat. A trailing assistant message is a prefill: the model continues it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// The input of a request: a chat, or a raw text to continue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Completion(String),
}

/// How to sample. Every field is part of the cache key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Samples to draw for this prompt (OpenAI `n`; Anthropic makes `n` calls).
    pub n: u32,
    pub temperature: f64,
    /// Nucleus sampling; `None` leaves the server's default (1.0) and sends nothing, because
    /// some Anthropic models refuse a request that sets both temperature and top_p.
    pub top_p: Option<f64>,
    /// Most new tokens per sample.
    pub max_tokens: u32,
    /// Generation stops before any of these strings (not included in the text).
    pub stop: Vec<String>,
    /// Identifies the sample: sent to servers that take a seed, and changed by
    /// [`crate::generate_parsed`] to ask again.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            n: 1,
            temperature: 1.0,
            top_p: None,
            max_tokens: 512,
            stop: Vec::new(),
            seed: 0,
        }
    }
}

/// The seed of one request: a run's seed and a key naming the request within the run (an
/// item's id and the step, say), so that what a request gets does not depend on the order, the
/// chunking or on interruptions.
pub fn request_seed(seed: u64, key: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(key.as_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}

/// One request: a prompt and its sampling parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
}

impl LlmRequest {
    pub fn chat(messages: Vec<ChatMessage>, params: SamplingParams) -> Self {
        Self {
            prompt: Prompt::Chat(messages),
            params,
        }
    }

    pub fn completion(prompt: impl Into<String>, params: SamplingParams) -> Self {
        Self {
            prompt: Prompt::Completion(prompt.into()),
            params,
        }
    }

    /// The same request with another seed.
    pub fn with_seed(&self, seed: u64) -> Self {
        let mut request = self.clone();
        request.params.seed = seed;
        request
    }

    /// Checks what no backend can answer, so the error is ours and names the field.
    pub fn validate(&self) -> Result<(), LlmError> {
        let params = &self.params;
        let problem = if params.n == 0 {
            Some("`n` is 0; ask for at least one sample".to_string())
        } else if params.max_tokens == 0 {
            Some("`max_tokens` is 0; allow at least one new token".to_string())
        } else if !(params.temperature.is_finite() && params.temperature >= 0.0) {
            Some(format!(
                "`temperature` is {}; use a number >= 0",
                params.temperature
            ))
        } else if let Some(top_p) = params.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            Some(format!("`top_p` is {top_p}; use a number in (0, 1]"))
        } else if matches!(&self.prompt, Prompt::Chat(messages) if messages.is_empty()) {
            Some("the chat has no messages".to_string())
        } else {
            None
        };
        match problem {
            Some(message) => Err(LlmError::InvalidRequest(message)),
            None => Ok(()),
        }
    }

    /// Tokens this request may use, guessed before the call for the tokens-per-minute limit:
    /// about four bytes of prompt per token, plus the whole completion budget of every sample.
    pub fn estimated_tokens(&self) -> u64 {
        let prompt_bytes: usize = match &self.prompt {
            Prompt::Chat(messages) => messages.iter().map(|m| m.content.len()).sum(),
            Prompt::Completion(text) => text.len(),
        };
        (prompt_bytes as u64).div_ceil(4)
            + u64::from(self.params.max_tokens) * u64::from(self.params.n)
    }
}

/// Why a sample ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn or hit a stop string.
    Stop,
    /// The `max_tokens` budget ran out.
    Length,
    /// Anything else the server reported (content filter, tool use, ...), verbatim.
    Other(String),
}

impl FinishReason {
    /// Maps both APIs' names: OpenAI `stop`/`length`, Anthropic
    /// `end_turn`/`stop_sequence`/`max_tokens`.
    pub fn from_api(reason: &str) -> Self {
        match reason {
            "stop" | "end_turn" | "stop_sequence" => FinishReason::Stop,
            "length" | "max_tokens" => FinishReason::Length,
            other => FinishReason::Other(other.to_string()),
        }
    }
}

/// One sample of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub text: String,
    /// `None` where the server did not say.
    pub finish_reason: Option<FinishReason>,
}

/// Tokens a call used, as the server reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl TokenUsage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

impl std::ops::Add for TokenUsage {
    type Output = TokenUsage;
    fn add(self, other: TokenUsage) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self.prompt_tokens + other.prompt_tokens,
            completion_tokens: self.completion_tokens + other.completion_tokens,
        }
    }
}

/// The answer to one request: `n` samples, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmResponse {
    pub choices: Vec<Choice>,
    /// `None` where the backend does not report usage.
    pub usage: Option<TokenUsage>,
}

impl LlmResponse {
    /// A response of finished samples with these texts and no usage (handy for tests and
    /// for backends that know nothing more).
    pub fn from_texts<S: Into<String>>(texts: impl IntoIterator<Item = S>) -> Self {
        let choices = texts
            .into_iter()
            .map(|text| Choice {
                text: text.into(),
                finish_reason: Some(FinishReason::Stop),
            })
            .collect();
        Self {
            choices,
            usage: None,
        }
    }

    /// The text of the first sample ("" when there is none).
    pub fn text(&self) -> &str {
        self.choices
            .first()
            .map_or("", |choice| choice.text.as_str())
    }

    /// The texts of all samples.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.choices.iter().map(|choice| choice.text.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_counts_prompt_bytes_and_every_sample_budget() {
        let params = SamplingParams {
            n: 3,
            max_tokens: 100,
            ..SamplingParams::default()
        };
        // 9 + 4 = 13 bytes -> ceil(13 / 4) = 4 tokens, plus 3 * 100.
        let request = LlmRequest::chat(
            vec![ChatMessage::system("Be brief."), ChatMessage::user("Hi! ")],
            params,
        );
        assert_eq!(request.estimated_tokens(), 304);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let mut request = LlmRequest::completion("x", SamplingParams::default());
        assert!(request.validate().is_ok());
        request.params.top_p = Some(1.5);
        assert_eq!(
            request.validate().unwrap_err().to_string(),
            "invalid request: `top_p` is 1.5; use a number in (0, 1]"
        );
        let empty = LlmRequest::chat(vec![], SamplingParams::default());
        assert_eq!(
            empty.validate().unwrap_err().to_string(),
            "invalid request: the chat has no messages"
        );
    }

    #[test]
    fn finish_reasons_of_both_apis_map_to_the_same_names() {
        assert_eq!(FinishReason::from_api("end_turn"), FinishReason::Stop);
        assert_eq!(FinishReason::from_api("stop"), FinishReason::Stop);
        assert_eq!(FinishReason::from_api("max_tokens"), FinishReason::Length);
        assert_eq!(FinishReason::from_api("length"), FinishReason::Length);
        assert_eq!(
            FinishReason::from_api("content_filter"),
            FinishReason::Other("content_filter".into())
        );
    }

    #[test]
    fn request_round_trips_through_json() {
        let request = LlmRequest::chat(
            vec![ChatMessage::user("Who?"), ChatMessage::assistant("[")],
            SamplingParams {
                stop: vec!["\n\n".into()],
                top_p: Some(0.9),
                seed: 7,
                ..SamplingParams::default()
            },
        );
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(serde_json::from_str::<LlmRequest>(&json).unwrap(), request);
    }
}
