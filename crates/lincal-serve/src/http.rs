//! The HTTP side: routes, authentication, body limits, errors in each API's own shape, and
//! what both APIs share (prompts, sampling settings, collecting a request's sequences).

use crate::engine::{EngineHandle, Event, Refusal, SequenceRequest, TokenLogprob};
use crate::metrics::Stats;
use crate::{anthropic, openai};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lincal_model::{ChatTurn, FinishReason, SamplingParams, Tokenizer};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Tokenizer,
    /// The name clients must ask for.
    pub model_name: String,
    pub max_context: i64,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// Unix time the server started (the models' `created`).
    pub started: u64,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(
        engine: EngineHandle,
        tokenizer: Tokenizer,
        model_name: String,
        max_context: i64,
        api_key: Option<String>,
        max_body_bytes: usize,
    ) -> Self {
        AppState {
            engine,
            tokenizer,
            model_name,
            max_context,
            api_key,
            max_body_bytes,
            started: unix_now(),
            next_id: AtomicU64::new(1),
        }
    }

    /// A response id, unique within this server's life.
    pub fn id(&self, prefix: &str) -> String {
        format!(
            "{prefix}{:x}{:08x}",
            self.started,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn stats(&self) -> &Stats {
        self.engine.stats()
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/v1/messages", post(anthropic::messages))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.stats().shutting_down.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.stats().render(),
    )
        .into_response()
}

async fn not_found(request: Request) -> Response {
    let api = Api::of_path(request.uri().path());
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {} {}", request.method(), request.uri().path()),
    )
    .render(api)
}

async fn count_responses(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    // Unknown paths are counted together, so a scan cannot grow the metrics without bound.
    let known = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/messages",
        "/health",
        "/metrics",
    ];
    let endpoint = known
        .iter()
        .find(|k| path == **k || (**k == "/v1/models" && path.starts_with("/v1/models/")))
        .copied()
        .unwrap_or("other");
    state
        .stats()
        .record_response(endpoint, response.status().as_u16());
    response
}

/// With `--api-key`, every `/v1` route needs it, as `Authorization: Bearer KEY` (OpenAI) or
/// `x-api-key: KEY` (Anthropic).
async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &state.api_key else {
        return next.run(request).await;
    };
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let given = [bearer, x_api_key].into_iter().flatten();
    if given.into_iter().any(|k| same_secret(k, key)) {
        return next.run(request).await;
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key: send it as `Authorization: Bearer KEY` or `x-api-key: KEY`",
    )
    .render(Api::of_path(request.uri().path()))
}

/// Compares without stopping at the first difference, so timing says nothing of the key.
fn same_secret(given: &str, key: &str) -> bool {
    given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Which API's shape an error takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Anthropic,
}

impl Api {
    fn of_path(path: &str) -> Api {
        if path.starts_with("/v1/messages") {
            Api::Anthropic
        } else {
            Api::OpenAi
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault.
    pub param: Option<String>,
    /// Seconds after which a refused request may be tried again.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// A 400 about field `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, message)
        }
    }

    /// The error object each API's clients parse: OpenAI's `{"error": {message, type, param,
    /// code}}`, Anthropic's `{"type": "error", "error": {type, message}}`.
    pub fn body(&self, api: Api) -> serde_json::Value {
        let status = self.status.as_u16();
        match api {
            Api::OpenAi => {
                let (kind, code) = match status {
                    401 => ("authentication_error", Some("invalid_api_key")),
                    404 => ("invalid_request_error", Some("not_found")),
                    413 => ("invalid_request_error", Some("request_too_large")),
                    429 => ("rate_limit_error", Some("rate_limit_exceeded")),
                    503 => ("service_unavailable", None),
                    500.. => ("server_error", None),
                    _ => ("invalid_request_error", None),
                };
                serde_json::json!({"error": {
                    "message": self.message, "type": kind, "param": self.param, "code": code,
                }})
            }
            Api::Anthropic => {
                let kind = match status {
                    401 => "authentication_error",
                    404 => "not_found_error",
                    413 => "request_too_large",
                    429 => "rate_limit_error",
                    503 | 529 => "overloaded_error",
                    500.. => "api_error",
                    _ => "invalid_request_error",
                };
                serde_json::json!({"type": "error", "error": {"type": kind, "message": self.message}})
            }
        }
    }

    pub fn render(&self, api: Api) -> Response {
        let mut response = (self.status, axum::Json(self.body(api))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Reads a JSON body of at most `max_body_bytes` into `T`; errors name the field.
pub async fn read_json<T: DeserializeOwned>(state: &AppState, body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than this server's limit of {} bytes (--max-body-bytes)",
                    state.max_body_bytes
                ),
            )
        })?;
    let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let message = format!("invalid request body: {}", error.inner());
        if path == "." {
            ApiError::new(StatusCode::BAD_REQUEST, message)
        } else {
            ApiError::invalid(&path, format!("{path}: {message}"))
        }
    })
}

/// Refuses a request for another model than the one served.
pub fn check_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    if model == state.model_name {
        return Ok(());
    }
    Err(ApiError {
        param: Some("model".into()),
        ..ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "model {model:?} is not served here; this server serves {:?}",
                state.model_name
            ),
        )
    })
}

/// The text of a message's `content`: a string, or a list of parts of which only text parts
/// (`{"type": "text", "text": "..."}`) are taken, joined.
pub fn text_content(content: &Value, field: &str) -> Result<String, ApiError> {
    let invalid = |what: String| ApiError::invalid(field, format!("{field}: {what}"));
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(
                |(i, part)| match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(text)) => Ok(text.to_string()),
                    (Some("text"), None) => Err(invalid(format!("part {i} has no `text` string"))),
                    (kind, _) => Err(invalid(format!(
                        "part {i} is of type {}; only text is supported",
                        kind.map_or("(none)".to_string(), |k| format!("{k:?}"))
                    ))),
                },
            )
            .collect(),
        other => Err(invalid(format!(
            "must be a string or a list of text parts, got {other}"
        ))),
    }
}

/// Token ids of a chat, through the model's template.
pub fn encode_chat(state: &AppState, messages: &[ChatTurn]) -> Result<Vec<i64>, ApiError> {
    state
        .tokenizer
        .encode_chat(messages)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))
}

/// Token ids of a raw prompt, with the tokenizer's special tokens (as `lincal generate`).
pub fn encode_text(state: &AppState, text: &str) -> Result<Vec<i64>, ApiError> {
    state
        .tokenizer
        .encode(text, true)
        .map_err(|e| ApiError::invalid("prompt", e.to_string()))
}

/// What every generation request asks, whatever its API.
pub struct Generate {
    pub prompts: Vec<Vec<i64>>,
    /// Choices per prompt.
    pub n: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: i64,
    /// `None`: as much as the context leaves.
    pub max_tokens: Option<i64>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub logprobs: Option<usize>,
    pub prompt_logprobs: Option<usize>,
}

/// Most choices and alternatives one request may ask for.
const MAX_CHOICES: usize = 128;
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Generate {
    /// Checks the settings and the context, and queues one sequence per choice. Choice
    /// `p·n + j` is sample `j` of prompt `p`; with a seed it samples with `seed + j`.
    pub fn submit(self, state: &AppState) -> Result<UnboundedReceiver<(usize, Event)>, ApiError> {
        if self.n == 0 || self.n * self.prompts.len() > MAX_CHOICES {
            return Err(ApiError::invalid(
                "n",
                format!("n must be between 1 and {MAX_CHOICES} choices in all"),
            ));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(ApiError::invalid(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ApiError::invalid("top_p", "top_p must be in (0, 1]"));
        }
        if self.top_k < 0 {
            return Err(ApiError::invalid(
                "top_k",
                "top_k must be >= 0 (0: no top-k)",
            ));
        }
        if self.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("at most {MAX_TOP_LOGPROBS} alternatives per token"),
            ));
        }
        let seed = self.seed.unwrap_or_else(rand::random);
        let (events, receiver) = unbounded_channel();
        let mut sequences = Vec::new();
        for (p, prompt) in self.prompts.iter().enumerate() {
            let prompt_len = prompt.len() as i64;
            if prompt.is_empty() {
                return Err(ApiError::invalid("prompt", "the prompt has no tokens"));
            }
            let room = state.max_context - prompt_len;
            let max_new_tokens = match self.max_tokens {
                // Scoring a prompt (echo with log-probs) needs no new token.
                Some(0) if self.prompt_logprobs.is_some() => 0,
                Some(m) if m < 1 => {
                    return Err(ApiError::invalid("max_tokens", "max_tokens must be >= 1"));
                }
                Some(m) if m > room => {
                    return Err(ApiError::invalid(
                        "max_tokens",
                        format!(
                            "this model's context holds {} tokens; the prompt has {prompt_len} and {m} more were asked for. Shorten the prompt or lower max_tokens",
                            state.max_context
                        ),
                    ));
                }
                Some(m) => m,
                None if room < 1 => {
                    return Err(ApiError::invalid(
                        "messages",
                        format!(
                            "the prompt has {prompt_len} tokens; this model's context holds {} with room for an answer",
                            state.max_context
                        ),
                    ));
                }
                None => room,
            };
            for j in 0..self.n {
                sequences.push(SequenceRequest {
                    prompt: prompt.clone(),
                    params: SamplingParams {
                        temperature: self.temperature,
                        top_p: self.top_p,
                        top_k: self.top_k,
                        max_new_tokens,
                        stop: self.stop.clone(),
                    },
                    seed: seed.wrapping_add(j as u64),
                    logprobs: self.logprobs,
                    prompt_logprobs: self.prompt_logprobs,
                    choice: p * self.n + j,
                    events: events.clone(),
                });
            }
        }
        state
            .engine
            .submit(sequences)
            .map_err(|refusal| match refusal {
                Refusal::Busy => ApiError {
                    retry_after: Some(1),
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "the server's queue is full; try again shortly",
                    )
                },
                Refusal::ShuttingDown => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is shutting down",
                ),
            })?;
        Ok(receiver)
    }
}

/// One choice, collected whole.
#[derive(Default)]
pub struct Collected {
    pub text: String,
    /// The stop string that ended it.
    pub stop_sequence: Option<String>,
    pub logprobs: Vec<TokenLogprob>,
    pub prompt_logprobs: Vec<Option<TokenLogprob>>,
    pub finish_reason: Option<FinishReason>,
    pub completion_tokens: usize,
}

/// Waits for every choice of a request to end.
pub async fn collect(
    mut events: UnboundedReceiver<(usize, Event)>,
    choices: usize,
) -> Result<Vec<Collected>, ApiError> {
    let mut collected: Vec<Collected> = (0..choices).map(|_| Collected::default()).collect();
    let mut open = choices;
    while open > 0 {
        let Some((choice, event)) = events.recv().await else {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the engine stopped before the answer was complete",
            ));
        };
        let entry = &mut collected[choice];
        match event {
            Event::Prompt(logprobs) => entry.prompt_logprobs = logprobs,
            Event::Token { text, logprob } => {
                entry.text.push_str(&text);
                entry.logprobs.extend(logprob);
            }
            Event::Finished {
                text,
                reason,
                stop_sequence,
                completion_tokens,
            } => {
                entry.text.push_str(&text);
                entry.stop_sequence = stop_sequence;
                entry.finish_reason = Some(reason);
                entry.completion_tokens = completion_tokens;
                open -= 1;
            }
            Event::Failed(message) => {
                return Err(failure(message));
            }
        }
    }
    Ok(collected)
}

/// A sequence the engine ended with an error.
pub fn failure(message: String) -> ApiError {
    let status = if message.contains("shutting down") {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    ApiError::new(status, message)
}

/// The text of one token, for log-prob listings.
pub fn token_text(state: &AppState, token: i64) -> String {
    state.tokenizer.decode(&[token], false).unwrap_or_default()
}
