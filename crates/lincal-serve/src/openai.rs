//! OpenAI's API: `/v1/chat/completions`, `/v1/completions` and `/v1/models`, streaming as
//! server-sent events with `data: [DONE]` at the end.

use crate::engine::{Event, TokenLogprob};
use crate::http::{
    Api, ApiError, AppState, Collected, Generate, MAX_TOP_LOGPROBS, check_model, collect,
    encode_chat, encode_text, failure, read_json, text_content, token_text, unix_now,
};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lincal_model::{ChatTurn, FinishReason};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Value,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

fn stop_list(stop: Option<Stop>) -> Vec<String> {
    match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    }
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect()
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
pub struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    /// Not OpenAI's, but vLLM's and llama.cpp's extension; -1 or 0 is off.
    top_k: Option<i64>,
    n: Option<usize>,
    stop: Option<Stop>,
    seed: Option<i64>,
    #[serde(default)]
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
    #[serde(default)]
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptIn {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

#[derive(Deserialize)]
pub struct CompletionRequest {
    model: String,
    prompt: PromptIn,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    n: Option<usize>,
    stop: Option<Stop>,
    seed: Option<i64>,
    logprobs: Option<usize>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

/// OpenAI's legacy completions default.
const COMPLETION_MAX_TOKENS: i64 = 16;

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// A non-streamed answer: `object` (`chat.completion` or `text_completion`) with its choices.
fn whole_answer(
    state: &AppState,
    id: &str,
    object: &str,
    choices: Vec<Value>,
    usage: Value,
) -> Response {
    Json(json!({
        "id": id,
        "object": object,
        "created": unix_now(),
        "model": state.model_name,
        "choices": choices,
        "usage": usage,
    }))
    .into_response()
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({"object": "list", "data": [model_card(&state)]})).into_response()
}

pub async fn model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match check_model(&state, &id) {
        Ok(()) => Json(model_card(&state)).into_response(),
        Err(error) => error.render(Api::OpenAi),
    }
}

fn model_card(state: &AppState) -> Value {
    json!({
        "id": state.model_name,
        "object": "model",
        "created": state.started,
        "owned_by": "lincal",
        "max_model_len": state.max_context,
    })
}

pub async fn chat_completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    match chat(state, body).await {
        Ok(response) => response,
        Err(error) => error.render(Api::OpenAi),
    }
}

async fn chat(state: Arc<AppState>, body: Body) -> Result<Response, ApiError> {
    let request: ChatRequest = read_json(&state, body).await?;
    check_model(&state, &request.model)?;
    let mut turns = Vec::new();
    for (i, message) in request.messages.into_iter().enumerate() {
        let role = match message.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!(
                        "messages[{i}].role: {other:?} is not supported; use system, user or assistant"
                    ),
                ));
            }
        };
        turns.push(ChatTurn::new(
            role,
            &text_content(&message.content, &format!("messages[{i}].content"))?,
        ));
    }
    if turns.is_empty() {
        return Err(ApiError::invalid("messages", "messages is empty"));
    }
    let prompt = encode_chat(&state, &turns)?;
    let prompt_tokens = prompt.len();
    let logprobs = request.logprobs.unwrap_or(false);
    if request.top_logprobs.is_some() && !logprobs {
        return Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        ));
    }
    let n = request.n.unwrap_or(1);
    let generate = Generate {
        prompts: vec![prompt],
        n,
        temperature: request.temperature.unwrap_or(1.0),
        top_p: request.top_p.unwrap_or(1.0),
        top_k: request.top_k.unwrap_or(0).max(0),
        max_tokens: request.max_completion_tokens.or(request.max_tokens),
        stop: stop_list(request.stop),
        seed: request.seed.map(|s| s as u64),
        logprobs: logprobs.then(|| request.top_logprobs.unwrap_or(0)),
        prompt_logprobs: None,
    };
    let events = generate.submit(&state)?;
    let id = state.id("chatcmpl-");
    if request.stream.unwrap_or(false) {
        let stream = OpenAiStream::new(
            &state,
            Shape::Chat,
            id,
            n,
            prompt_tokens,
            request.stream_options,
        );
        return Ok(sse(events, move |events, out| stream.run(events, out)));
    }
    let choices = collect(events, n).await?;
    let completion_tokens = choices.iter().map(|c| c.completion_tokens).sum();
    let choices: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(index, choice)| {
            json!({
                "index": index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": logprobs.then(|| json!({"content": chat_logprobs(&state, &choice.logprobs)})),
                "finish_reason": choice.finish_reason.map(finish_reason),
            })
        })
        .collect();
    Ok(whole_answer(
        &state,
        &id,
        "chat.completion",
        choices,
        usage(prompt_tokens, completion_tokens),
    ))
}

/// Chat log-probs: one entry per token with its text, bytes and alternatives.
fn chat_logprobs(state: &AppState, tokens: &[TokenLogprob]) -> Vec<Value> {
    let entry = |token: i64, logprob: f32| {
        let text = token_text(state, token);
        json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()})
    };
    tokens
        .iter()
        .map(|t| {
            let mut value = entry(t.token, t.logprob);
            value["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
            value
        })
        .collect()
}

/// Answers with server-sent events written by `produce`, which reads the engine's events
/// and stops when the client has gone (its sends fail), which drops the engine's channel and
/// so frees the sequences' rows.
pub fn sse<F, Fut>(events: UnboundedReceiver<(usize, Event)>, produce: F) -> Response
where
    F: FnOnce(UnboundedReceiver<(usize, Event)>, UnboundedSender<SseEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (out, receiver) = unbounded_channel::<SseEvent>();
    tokio::spawn(produce(events, out));
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), receiver))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn data(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

pub async fn completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    match completion(state, body).await {
        Ok(response) => response,
        Err(error) => error.render(Api::OpenAi),
    }
}

async fn completion(state: Arc<AppState>, body: Body) -> Result<Response, ApiError> {
    let request: CompletionRequest = read_json(&state, body).await?;
    check_model(&state, &request.model)?;
    let vocab = state.tokenizer.vocab_size() as i64;
    let check_ids = |ids: Vec<i64>| -> Result<Vec<i64>, ApiError> {
        match ids.iter().find(|&&id| id < 0 || id >= vocab) {
            Some(id) => Err(ApiError::invalid(
                "prompt",
                format!("token id {id} is outside the vocabulary of {vocab}"),
            )),
            None => Ok(ids),
        }
    };
    // (text, token ids) of each prompt.
    let prompts: Vec<(String, Vec<i64>)> = match request.prompt {
        PromptIn::Text(text) => vec![(text.clone(), encode_text(&state, &text)?)],
        PromptIn::Texts(texts) => texts
            .into_iter()
            .map(|t| encode_text(&state, &t).map(|ids| (t, ids)))
            .collect::<Result<_, _>>()?,
        PromptIn::Tokens(ids) => vec![(String::new(), check_ids(ids)?)],
        PromptIn::TokenLists(lists) => lists
            .into_iter()
            .map(|ids| check_ids(ids).map(|ids| (String::new(), ids)))
            .collect::<Result<_, _>>()?,
    };
    let prompts: Vec<(String, Vec<i64>)> = prompts
        .into_iter()
        .map(|(text, ids)| {
            let text = if text.is_empty() {
                state.tokenizer.decode(&ids, false).unwrap_or_default()
            } else {
                text
            };
            (text, ids)
        })
        .collect();
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt is empty"));
    }
    let echo = request.echo.unwrap_or(false);
    let n = request.n.unwrap_or(1);
    if request.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
        return Err(ApiError::invalid(
            "logprobs",
            format!("logprobs takes at most {MAX_TOP_LOGPROBS} alternatives"),
        ));
    }
    let generate = Generate {
        prompts: prompts.iter().map(|(_, ids)| ids.clone()).collect(),
        n,
        temperature: request.temperature.unwrap_or(1.0),
        top_p: request.top_p.unwrap_or(1.0),
        top_k: request.top_k.unwrap_or(0).max(0),
        max_tokens: Some(request.max_tokens.unwrap_or(COMPLETION_MAX_TOKENS)),
        stop: stop_list(request.stop),
        seed: request.seed.map(|s| s as u64),
        logprobs: request.logprobs,
        prompt_logprobs: request.logprobs.filter(|_| echo),
    };
    let prompt_tokens: usize = prompts.iter().map(|(_, ids)| ids.len()).sum();
    let choices_total = prompts.len() * n;
    let events = generate.submit(&state)?;
    let id = state.id("cmpl-");
    if request.stream.unwrap_or(false) {
        let shape = Shape::Completion {
            prompts: prompts.into_iter().map(|(text, _)| text).collect(),
            n,
            echo,
        };
        let stream = OpenAiStream::new(
            &state,
            shape,
            id,
            choices_total,
            prompt_tokens,
            request.stream_options,
        );
        return Ok(sse(events, move |events, out| stream.run(events, out)));
    }
    let collected = collect(events, choices_total).await?;
    let completion_tokens = collected.iter().map(|c| c.completion_tokens).sum();
    let choices: Vec<Value> = collected
        .iter()
        .enumerate()
        .map(|(index, choice)| {
            let (prompt, ids) = &prompts[index / n];
            let text = if echo {
                format!("{prompt}{}", choice.text)
            } else {
                choice.text.clone()
            };
            let logprobs = request.logprobs.map(|_| {
                completion_logprobs(
                    &state,
                    choice,
                    echo.then_some(ids.as_slice()),
                    prompt.chars().count(),
                )
            });
            json!({
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": choice.finish_reason.map(finish_reason),
            })
        })
        .collect();
    Ok(whole_answer(
        &state,
        &id,
        "text_completion",
        choices,
        usage(prompt_tokens, completion_tokens),
    ))
}

/// The legacy log-probs object: parallel lists of token texts, log-probs, alternatives (a
/// map from token text to log-prob) and character offsets into the text, each where the text
/// of the tokens before it ends. With echo (`prompt` holds the prompt's ids), the prompt's
/// tokens come first, the very first without a log-prob; without it, offsets start after the
/// prompt's `prompt_chars`.
fn completion_logprobs(
    state: &AppState,
    choice: &Collected,
    prompt: Option<&[i64]>,
    prompt_chars: usize,
) -> Value {
    let prompt_entries = prompt
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(j, &id)| (id, choice.prompt_logprobs.get(j).and_then(Option::as_ref)));
    let generated = choice.logprobs.iter().map(|t| (t.token, Some(t)));
    let entries: Vec<(i64, Option<&TokenLogprob>)> = prompt_entries.chain(generated).collect();
    let ids: Vec<i64> = entries.iter().map(|(id, _)| *id).collect();
    let start = if prompt.is_some() { 0 } else { prompt_chars };
    let text_offset: Vec<usize> = (0..ids.len())
        .map(|i| {
            let before = state.tokenizer.decode(&ids[..i], false).unwrap_or_default();
            start + before.chars().count()
        })
        .collect();
    let alternatives = |t: &TokenLogprob| {
        t.top
            .iter()
            .map(|&(id, lp)| (token_text(state, id), json!(lp)))
            .collect::<serde_json::Map<String, Value>>()
    };
    json!({
        "tokens": ids.iter().map(|&id| token_text(state, id)).collect::<Vec<_>>(),
        "token_logprobs": entries.iter().map(|(_, e)| e.map(|t| t.logprob)).collect::<Vec<_>>(),
        "top_logprobs": entries.iter().map(|(_, e)| e.map(alternatives)).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

/// What the chunks of an OpenAI stream carry.
enum Shape {
    /// `chat.completion.chunk`: a role delta per choice first, then content deltas.
    Chat,
    /// `text_completion`: with echo, each choice's prompt text first (`prompts[choice / n]`).
    Completion {
        prompts: Vec<String>,
        n: usize,
        echo: bool,
    },
}

/// One request's stream of chunks in OpenAI's shape, ending in `[DONE]`.
struct OpenAiStream {
    state: Arc<AppState>,
    shape: Shape,
    id: String,
    created: u64,
    choices: usize,
    prompt_tokens: usize,
    include_usage: bool,
}

impl OpenAiStream {
    fn new(
        state: &Arc<AppState>,
        shape: Shape,
        id: String,
        choices: usize,
        prompt_tokens: usize,
        stream_options: Option<StreamOptions>,
    ) -> Self {
        OpenAiStream {
            state: state.clone(),
            shape,
            id,
            created: unix_now(),
            choices,
            prompt_tokens,
            include_usage: stream_options.unwrap_or_default().include_usage,
        }
    }

    /// A chunk of `choices`; with usage asked for, every chunk but the last has `usage: null`.
    fn chunk(&self, choices: Value) -> Value {
        let object = match self.shape {
            Shape::Chat => "chat.completion.chunk",
            Shape::Completion { .. } => "text_completion",
        };
        let mut chunk = json!({
            "id": self.id, "object": object, "created": self.created,
            "model": self.state.model_name, "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// A chunk of one choice's new text (`None`: only the finish reason).
    fn piece(
        &self,
        index: usize,
        text: Option<&str>,
        logprobs: Value,
        finish: Option<&str>,
    ) -> Value {
        let choice = match self.shape {
            Shape::Chat => json!({"index": index,
                "delta": text.map_or_else(|| json!({}), |t| json!({"content": t})),
                "logprobs": logprobs, "finish_reason": finish}),
            Shape::Completion { .. } => json!({"index": index, "text": text.unwrap_or(""),
                "logprobs": null, "finish_reason": finish}),
        };
        self.chunk(json!([choice]))
    }

    /// What goes out before any token: chat's role deltas, completion's echoed prompts.
    fn opening(&self) -> Vec<Value> {
        match &self.shape {
            Shape::Chat => (0..self.choices)
                .map(|index| {
                    self.chunk(
                        json!([{"index": index, "delta": {"role": "assistant", "content": ""},
                        "logprobs": null, "finish_reason": null}]),
                    )
                })
                .collect(),
            Shape::Completion {
                prompts,
                n,
                echo: true,
            } => (0..self.choices)
                .map(|index| self.piece(index, Some(&prompts[index / n]), Value::Null, None))
                .collect(),
            Shape::Completion { .. } => Vec::new(),
        }
    }

    async fn run(
        self,
        mut events: UnboundedReceiver<(usize, Event)>,
        out: UnboundedSender<SseEvent>,
    ) {
        let send = |value: Value| out.send(data(&value)).is_ok();
        for chunk in self.opening() {
            if !send(chunk) {
                return;
            }
        }
        let (mut open, mut completion_tokens) = (self.choices, 0);
        while open > 0 {
            let Some((index, event)) = events.recv().await else {
                return;
            };
            let sent = match event {
                Event::Prompt(_) => true,
                Event::Token { text, logprob } => {
                    let logprobs = match (&self.shape, logprob) {
                        (Shape::Chat, Some(t)) => {
                            json!({"content": chat_logprobs(&self.state, &[t])})
                        }
                        _ => Value::Null,
                    };
                    if text.is_empty() && logprobs.is_null() {
                        continue;
                    }
                    send(self.piece(index, Some(&text), logprobs, None))
                }
                Event::Finished {
                    text,
                    reason,
                    completion_tokens: tokens,
                    ..
                } => {
                    open -= 1;
                    completion_tokens += tokens;
                    let text = (!text.is_empty()).then_some(text.as_str());
                    send(self.piece(index, text, Value::Null, Some(finish_reason(reason))))
                }
                Event::Failed(message) => {
                    let _ = out.send(data(&failure(message).body(Api::OpenAi)));
                    return;
                }
            };
            if !sent {
                return;
            }
        }
        if self.include_usage {
            let mut last = self.chunk(json!([]));
            last["usage"] = usage(self.prompt_tokens, completion_tokens);
            let _ = send(last);
        }
        let _ = out.send(SseEvent::default().data("[DONE]"));
    }
}
