use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::http::{HttpTransport, check_base_url, field, join_url};
use crate::{
    Choice, ConfigError, FinishReason, HttpSettings, Llm, LlmError, LlmRequest, LlmResponse,
    Prompt, TokenUsage,
};

/// The body field that carries the token budget of a chat request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// Understood by every OpenAI-compatible server (vLLM, llama.cpp, Ollama) and most OpenAI
    /// models.
    #[default]
    MaxTokens,
    /// Required by OpenAI's reasoning models, which refuse `max_tokens`.
    MaxCompletionTokens,
}

/// OpenAI's chat and text completion APIs, and every server that speaks them.
///
/// Chat requests go to `{base_url}/chat/completions`, raw prompts to `{base_url}/completions`,
/// with `model`, `messages` or `prompt`, the token budget, `temperature`, `top_p` (when set),
/// `n`, `stop` (when not empty) and `seed` (when enabled). The key goes in
/// `Authorization: Bearer`. An answer with a number of choices other than `n` is an error
/// (some servers ignore `n`).
pub struct OpenAiBackend {
    http: HttpTransport,
    settings: HttpSettings,
    max_tokens_field: MaxTokensField,
}

impl OpenAiBackend {
    pub fn new(
        settings: HttpSettings,
        max_tokens_field: MaxTokensField,
    ) -> Result<Self, ConfigError> {
        check_base_url(&settings.base_url)?;
        Ok(Self {
            http: HttpTransport::new(settings.timeout)?,
            settings,
            max_tokens_field,
        })
    }

    /// The endpoint path and JSON body of a request.
    fn body(&self, request: &LlmRequest) -> (&'static str, Value) {
        let params = &request.params;
        let mut body = Map::new();
        body.insert("model".into(), json!(self.settings.model));
        let (path, budget_field) = match &request.prompt {
            Prompt::Chat(messages) => {
                let messages: Vec<Value> = messages
                    .iter()
                    .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
                    .collect();
                body.insert("messages".into(), Value::Array(messages));
                let budget_field = match self.max_tokens_field {
                    MaxTokensField::MaxTokens => "max_tokens",
                    MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
                };
                ("chat/completions", budget_field)
            }
            // The legacy completions API only knows `max_tokens`.
            Prompt::Completion(prompt) => {
                body.insert("prompt".into(), json!(prompt));
                ("completions", "max_tokens")
            }
        };
        body.insert(budget_field.into(), json!(params.max_tokens));
        body.insert("temperature".into(), json!(params.temperature));
        if let Some(top_p) = params.top_p {
            body.insert("top_p".into(), json!(top_p));
        }
        body.insert("n".into(), json!(params.n));
        if !params.stop.is_empty() {
            body.insert("stop".into(), json!(params.stop));
        }
        if self.settings.send_seed {
            body.insert("seed".into(), json!(params.seed));
        }
        (path, Value::Object(body))
    }

    async fn answer(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        request.validate()?;
        let (path, body) = self.body(request);
        let url = join_url(&self.settings.base_url, path);
        let authorization = self
            .settings
            .api_key
            .as_ref()
            .map(|key| format!("Bearer {key}"));
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|value| ("authorization", value.as_str()))
            .collect();
        let answer = self.http.post_json(&url, &headers, &body).await?;
        parse_answer(&answer, request, &url)
    }
}

/// Reads `choices` (ordered by `index`) and `usage`.
fn parse_answer(answer: &Value, request: &LlmRequest, url: &str) -> Result<LlmResponse, LlmError> {
    let invalid = |message: String| LlmError::InvalidResponse {
        url: url.to_string(),
        message,
    };
    let choices = field(answer, "/choices", url)?
        .as_array()
        .ok_or_else(|| invalid("`choices` is not a list".to_string()))?;
    let text_pointer = match request.prompt {
        Prompt::Chat(_) => "/message/content",
        Prompt::Completion(_) => "/text",
    };
    let mut indexed = Vec::with_capacity(choices.len());
    for (position, choice) in choices.iter().enumerate() {
        let text = match field(choice, text_pointer, url)? {
            Value::String(text) => text.clone(),
            // A refusal or a filtered answer has no content; its finish reason says why.
            Value::Null => String::new(),
            other => {
                return Err(invalid(format!(
                    "choice {position}: `{text_pointer}` is {other}, not text"
                )));
            }
        };
        let finish_reason = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(FinishReason::from_api);
        let index = choice
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position as u64);
        indexed.push((
            index,
            Choice {
                text,
                finish_reason,
            },
        ));
    }
    if indexed.len() != request.params.n as usize {
        return Err(invalid(format!(
            "asked for n = {} samples and got {} choices; this server may not support `n` > 1",
            request.params.n,
            indexed.len()
        )));
    }
    indexed.sort_by_key(|(index, _)| *index);
    let count = |name: &str| {
        answer
            .pointer(&format!("/usage/{name}"))
            .and_then(Value::as_u64)
    };
    let usage = match (count("prompt_tokens"), count("completion_tokens")) {
        (Some(prompt_tokens), Some(completion_tokens)) => Some(TokenUsage {
            prompt_tokens,
            completion_tokens,
        }),
        _ => None,
    };
    Ok(LlmResponse {
        choices: indexed.into_iter().map(|(_, choice)| choice).collect(),
        usage,
    })
}

impl Llm for OpenAiBackend {
    fn backend(&self) -> &str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.settings.model
    }

    fn generate(&self, requests: &[LlmRequest]) -> Vec<Result<LlmResponse, LlmError>> {
        self.http.run_all(requests, |request| self.answer(request))
    }
}
