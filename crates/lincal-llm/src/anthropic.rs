use futures_util::future::try_join_all;
use serde_json::{Map, Value, json};

use crate::http::{HttpTransport, check_base_url, field, join_url};
use crate::{
    ChatMessage, Choice, ConfigError, FinishReason, HttpSettings, Llm, LlmError, LlmRequest,
    LlmResponse, Prompt, Role, TokenUsage,
};

/// The `anthropic-version` header sent unless configured otherwise.
pub const ANTHROPIC_DEFAULT_VERSION: &str = "2023-06-01";

/// Anthropic's messages API (`{base_url}/v1/messages`).
///
/// Leading system messages become the top-level `system` field (joined by blank lines); the
/// other turns go in `messages`, a trailing assistant turn being a prefill. The API draws one
/// sample per call, so a request with `n` > 1 makes `n` calls side by side; when `send_seed`
/// is on, call `i` carries `seed + i` (Anthropic's own API takes no seed, so it is off by
/// default; compatible servers may use it). Raw completion prompts are refused: the messages
/// API has no such input.
pub struct AnthropicBackend {
    http: HttpTransport,
    settings: HttpSettings,
    version: String,
}

impl AnthropicBackend {
    /// `version` is the `anthropic-version` header, normally [`ANTHROPIC_DEFAULT_VERSION`].
    pub fn new(settings: HttpSettings, version: impl Into<String>) -> Result<Self, ConfigError> {
        check_base_url(&settings.base_url)?;
        Ok(Self {
            http: HttpTransport::new(settings.timeout)?,
            settings,
            version: version.into(),
        })
    }

    /// The body of the call for sample `sample` of `request`.
    fn body(&self, request: &LlmRequest, sample: u32) -> Result<Value, LlmError> {
        let Prompt::Chat(messages) = &request.prompt else {
            return Err(LlmError::InvalidRequest(
                "the Anthropic messages API takes chat messages, not a raw completion prompt; \
                 build the request with LlmRequest::chat"
                    .to_string(),
            ));
        };
        let (system, turns) = split_system(messages)?;
        let params = &request.params;
        let mut body = Map::new();
        body.insert("model".into(), json!(self.settings.model));
        body.insert("max_tokens".into(), json!(params.max_tokens));
        if !system.is_empty() {
            body.insert("system".into(), json!(system));
        }
        let turns: Vec<Value> = turns
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        body.insert("messages".into(), Value::Array(turns));
        body.insert("temperature".into(), json!(params.temperature));
        if let Some(top_p) = params.top_p {
            body.insert("top_p".into(), json!(top_p));
        }
        if !params.stop.is_empty() {
            body.insert("stop_sequences".into(), json!(params.stop));
        }
        if self.settings.send_seed {
            body.insert(
                "seed".into(),
                json!(params.seed.wrapping_add(u64::from(sample))),
            );
        }
        Ok(Value::Object(body))
    }

    async fn answer(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        request.validate()?;
        let bodies = (0..request.params.n)
            .map(|sample| self.body(request, sample))
            .collect::<Result<Vec<_>, _>>()?;
        let url = join_url(&self.settings.base_url, "v1/messages");
        let mut headers = vec![("anthropic-version", self.version.as_str())];
        if let Some(key) = &self.settings.api_key {
            headers.push(("x-api-key", key.as_str()));
        }
        let answers = try_join_all(
            bodies
                .iter()
                .map(|body| self.http.post_json(&url, &headers, body)),
        )
        .await?;
        let mut response = LlmResponse {
            choices: Vec::new(),
            usage: Some(TokenUsage::default()),
        };
        for answer in &answers {
            let (choice, usage) = parse_answer(answer, &url)?;
            response.choices.push(choice);
            response.usage = response.usage.zip(usage).map(|(sum, usage)| sum + usage);
        }
        Ok(response)
    }
}

/// The system prompt (leading system messages) and the conversation.
fn split_system(messages: &[ChatMessage]) -> Result<(String, &[ChatMessage]), LlmError> {
    let leading = messages
        .iter()
        .take_while(|m| m.role == Role::System)
        .count();
    if let Some(position) = messages[leading..]
        .iter()
        .position(|m| m.role == Role::System)
    {
        return Err(LlmError::InvalidRequest(format!(
            "message {} is a system message after the conversation started; Anthropic takes \
             system text only before the first user turn",
            leading + position
        )));
    }
    let system: Vec<&str> = messages[..leading]
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    Ok((system.join("\n\n"), &messages[leading..]))
}

/// The text blocks of `content`, `stop_reason` and `usage` of one answer.
fn parse_answer(answer: &Value, url: &str) -> Result<(Choice, Option<TokenUsage>), LlmError> {
    let blocks =
        field(answer, "/content", url)?
            .as_array()
            .ok_or_else(|| LlmError::InvalidResponse {
                url: url.to_string(),
                message: "`content` is not a list".to_string(),
            })?;
    let text: String = blocks
        .iter()
        .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|block| block.get("text").and_then(Value::as_str))
        .collect();
    let finish_reason = answer
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(FinishReason::from_api);
    let count = |name: &str| {
        answer
            .pointer(&format!("/usage/{name}"))
            .and_then(Value::as_u64)
    };
    let usage = match (count("input_tokens"), count("output_tokens")) {
        (Some(prompt_tokens), Some(completion_tokens)) => Some(TokenUsage {
            prompt_tokens,
            completion_tokens,
        }),
        _ => None,
    };
    Ok((
        Choice {
            text,
            finish_reason,
        },
        usage,
    ))
}

impl Llm for AnthropicBackend {
    fn backend(&self) -> &str {
        "anthropic"
    }

    fn model(&self) -> &str {
        &self.settings.model
    }

    fn generate(&self, requests: &[LlmRequest]) -> Vec<Result<LlmResponse, LlmError>> {
        self.http.run_all(requests, |request| self.answer(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_system_messages_become_the_system_prompt() {
        let messages = [
            ChatMessage::system("You grade answers."),
            ChatMessage::system("Be strict."),
            ChatMessage::user("Grade this."),
            ChatMessage::assistant("{"),
        ];
        let (system, turns) = split_system(&messages).unwrap();
        assert_eq!(system, "You grade answers.\n\nBe strict.");
        assert_eq!(turns, &messages[2..]);
    }

    #[test]
    fn a_late_system_message_is_refused_with_its_position() {
        let messages = [ChatMessage::user("Hi"), ChatMessage::system("Late")];
        assert_eq!(
            split_system(&messages).unwrap_err().to_string(),
            "invalid request: message 1 is a system message after the conversation started; \
             Anthropic takes system text only before the first user turn"
        );
    }
}
