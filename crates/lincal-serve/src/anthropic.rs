//! Anthropic's Messages API, `/v1/messages`, streaming as its typed server-sent events.

use crate::engine::Event;
use crate::http::{
    Api, ApiError, AppState, Generate, check_model, collect, encode_chat, failure, read_json,
    text_content,
};
use crate::openai::sse;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use lincal_model::{ChatTurn, FinishReason};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Value,
}

#[derive(Deserialize)]
pub struct MessagesRequest {
    model: String,
    messages: Vec<Message>,
    system: Option<Value>,
    max_tokens: i64,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    stream: Option<bool>,
}

/// Anthropic's stop reason, and the stop string when one ended the answer.
fn stop_reason(reason: FinishReason, stop_sequence: Option<&str>) -> &'static str {
    match (reason, stop_sequence) {
        (FinishReason::Stop, Some(_)) => "stop_sequence",
        (FinishReason::Length, _) => "max_tokens",
        _ => "end_turn",
    }
}

pub async fn messages(State(state): State<Arc<AppState>>, body: Body) -> Response {
    match answer(state, body).await {
        Ok(response) => response,
        Err(error) => error.render(Api::Anthropic),
    }
}

async fn answer(state: Arc<AppState>, body: Body) -> Result<Response, ApiError> {
    let request: MessagesRequest = read_json(&state, body).await?;
    check_model(&state, &request.model)?;
    let mut turns = Vec::new();
    if let Some(system) = request.system {
        turns.push(ChatTurn::new("system", &text_content(&system, "system")?));
    }
    for (i, message) in request.messages.into_iter().enumerate() {
        if !matches!(message.role.as_str(), "user" | "assistant") {
            return Err(ApiError::invalid(
                &format!("messages[{i}].role"),
                format!(
                    "messages[{i}].role: {:?} is not supported; use user or assistant",
                    message.role
                ),
            ));
        }
        turns.push(ChatTurn::new(
            &message.role,
            &text_content(&message.content, &format!("messages[{i}].content"))?,
        ));
    }
    if turns.iter().all(|t| t.role == "system") {
        return Err(ApiError::invalid("messages", "messages is empty"));
    }
    let prompt = encode_chat(&state, &turns)?;
    let input_tokens = prompt.len();
    let generate = Generate {
        prompts: vec![prompt],
        n: 1,
        temperature: request.temperature.unwrap_or(1.0),
        top_p: request.top_p.unwrap_or(1.0),
        top_k: request.top_k.unwrap_or(0).max(0),
        max_tokens: Some(request.max_tokens),
        stop: request.stop_sequences.unwrap_or_default(),
        seed: None,
        logprobs: None,
        prompt_logprobs: None,
    };
    let events = generate.submit(&state)?;
    let id = state.id("msg_");
    if request.stream.unwrap_or(false) {
        let stream = MessageStream {
            state: state.clone(),
            id,
            input_tokens,
        };
        return Ok(sse(events, move |events, out| stream.run(events, out)));
    }
    let answer = collect(events, 1).await?.remove(0);
    let reason = answer.finish_reason.unwrap_or(FinishReason::Length);
    Ok(Json(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": state.model_name,
        "content": [{"type": "text", "text": answer.text}],
        "stop_reason": stop_reason(reason, answer.stop_sequence.as_deref()),
        "stop_sequence": answer.stop_sequence,
        "usage": {"input_tokens": input_tokens, "output_tokens": answer.completion_tokens},
    }))
    .into_response())
}

fn event(name: &str, value: Value) -> SseEvent {
    SseEvent::default().event(name).data(value.to_string())
}

struct MessageStream {
    state: Arc<AppState>,
    id: String,
    input_tokens: usize,
}

impl MessageStream {
    async fn run(
        self,
        mut events: UnboundedReceiver<(usize, Event)>,
        out: UnboundedSender<SseEvent>,
    ) {
        let send = |name: &str, value: Value| out.send(event(name, value)).is_ok();
        let start = json!({"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.state.model_name,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }});
        if !send("message_start", start)
            || !send(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
            )
        {
            return;
        }
        let delta = |text: &str| {
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": text}})
        };
        loop {
            let Some((_, item)) = events.recv().await else {
                return;
            };
            match item {
                Event::Prompt(_) => {}
                Event::Token { text, .. } => {
                    if !text.is_empty() && !send("content_block_delta", delta(&text)) {
                        return;
                    }
                }
                Event::Finished {
                    text,
                    reason,
                    stop_sequence,
                    completion_tokens,
                } => {
                    if !text.is_empty() && !send("content_block_delta", delta(&text)) {
                        return;
                    }
                    let _ = send(
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": 0}),
                    ) && send(
                        "message_delta",
                        json!({"type": "message_delta",
                            "delta": {"stop_reason": stop_reason(reason, stop_sequence.as_deref()),
                                "stop_sequence": stop_sequence},
                            "usage": {"output_tokens": completion_tokens}}),
                    ) && send("message_stop", json!({"type": "message_stop"}));
                    return;
                }
                Event::Failed(message) => {
                    let _ = send("error", failure(message).body(Api::Anthropic));
                    return;
                }
            }
        }
    }
}
