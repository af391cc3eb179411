//! What the OpenAI and Anthropic backends share: a runtime, a client, JSON over POST, and the
//! reading of error answers.

use std::future::Future;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::{ConfigError, LlmError, LlmRequest, LlmResponse};

/// Where and how an HTTP backend calls.
#[derive(Clone)]
pub struct HttpSettings {
    /// The model name sent with every request.
    pub model: String,
    /// OpenAI-compatible: up to and including `/v1` (`https://api.openai.com/v1`,
    /// `http://localhost:8000/v1`). Anthropic: the host, without `/v1`.
    pub base_url: String,
    /// `None` sends no key (local OpenAI-compatible servers need none).
    pub api_key: Option<String>,
    /// Longest wait for one complete answer.
    pub timeout: Duration,
    /// Whether the request body carries `seed`.
    pub send_seed: bool,
}

/// Keeps the API key out of logs.
impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("send_seed", &self.send_seed)
            .finish()
    }
}

/// A tokio runtime owned by the backend, so callers stay synchronous, and one pooled client.
pub(crate) struct HttpTransport {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    timeout: Duration,
}

impl HttpTransport {
    pub(crate) fn new(timeout: Duration) -> Result<Self, ConfigError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lincal-llm-http")
            .enable_all()
            .build()
            .map_err(|e| ConfigError::Http(e.to_string()))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ConfigError::Http(error_chain(&e)))?;
        Ok(Self {
            runtime,
            client,
            timeout,
        })
    }

    /// Answers all requests side by side and waits for the last. Callers must not be inside
    /// an async runtime themselves.
    pub(crate) fn run_all<'a, Fut>(
        &self,
        requests: &'a [LlmRequest],
        call: impl FnMut(&'a LlmRequest) -> Fut,
    ) -> Vec<Result<LlmResponse, LlmError>>
    where
        Fut: Future<Output = Result<LlmResponse, LlmError>>,
    {
        self.runtime
            .block_on(futures_util::future::join_all(requests.iter().map(call)))
    }

    /// POSTs `body` as JSON and returns the JSON answer, or the error with the server's own
    /// message and its `Retry-After`.
    pub(crate) async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Result<Value, LlmError> {
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let transport_error = |error: reqwest::Error| {
            if error.is_timeout() {
                LlmError::Timeout {
                    url: url.to_string(),
                    timeout: self.timeout,
                }
            } else {
                LlmError::Connection {
                    url: url.to_string(),
                    message: error_chain(&error),
                }
            }
        };
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let bytes = response.bytes().await.map_err(transport_error)?;
        if !status.is_success() {
            return Err(LlmError::Status {
                status: status.as_u16(),
                url: url.to_string(),
                message: error_message(&bytes),
                retry_after,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| LlmError::InvalidResponse {
            url: url.to_string(),
            message: format!("the body is not JSON ({e}): {}", snippet(&bytes)),
        })
    }
}

/// `base` and `path` joined by exactly one slash.
pub(crate) fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Checks a base URL when a backend is built, so a typo fails before the first call.
pub(crate) fn check_base_url(base_url: &str) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(base_url)
        .map_err(|e| ConfigError::field("base_url", format!("`{base_url}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::field(
            "base_url",
            format!("`{base_url}` must start with http:// or https://"),
        ));
    }
    Ok(())
}

/// The wait a server asked for: `retry-after-ms` (OpenAI), else `retry-after` in seconds or as
/// an HTTP date (a date in the past means no wait).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    let non_negative_seconds = |seconds: f64| {
        (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
    };
    if let Some(millis) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return non_negative_seconds(millis / 1000.0);
    }
    let value = header("retry-after")?;
    if let Ok(seconds) = value.parse::<f64>() {
        return non_negative_seconds(seconds);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The server's explanation of an error: `error.message` (OpenAI, Anthropic), a string
/// `error`, `message` (vLLM) or `detail` (FastAPI servers), else the body itself.
pub(crate) fn error_message(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<Value>(body) {
        let candidates = [
            json.pointer("/error/message"),
            json.get("error"),
            json.get("message"),
            json.get("detail"),
        ];
        if let Some(message) = candidates.into_iter().flatten().find_map(Value::as_str) {
            return message.to_string();
        }
    }
    snippet(body)
}

/// The body as text, cut to a readable length.
fn snippet(body: &[u8]) -> String {
    const LIMIT: usize = 2000;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}... ({} bytes in all)", &text[..cut], body.len()),
        None => text.to_string(),
    }
}

/// An error with its causes ("error sending request: connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Reads a required field of an answer, or says which one is missing.
pub(crate) fn field<'a>(value: &'a Value, pointer: &str, url: &str) -> Result<&'a Value, LlmError> {
    value
        .pointer(pointer)
        .ok_or_else(|| LlmError::InvalidResponse {
            url: url.to_string(),
            message: format!(
                "the answer has no `{pointer}`: {}",
                snippet(value.to_string().as_bytes())
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_reads_milliseconds_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let wait = |pairs: &[(&'static str, &str)]| retry_after(&headers(pairs), now);
        assert_eq!(wait(&[("retry-after", "3")]), Some(Duration::from_secs(3)));
        assert_eq!(
            wait(&[("retry-after", "0.5")]),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            wait(&[("retry-after", "Sun, 06 Nov 1994 08:49:47 GMT")]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            wait(&[("retry-after", "Sun, 06 Nov 1994 08:49:00 GMT")]),
            Some(Duration::ZERO)
        );
        assert_eq!(
            wait(&[("retry-after-ms", "250"), ("retry-after", "9")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(wait(&[("retry-after", "soon")]), None);
        assert_eq!(wait(&[("retry-after", "-1")]), None);
        assert_eq!(wait(&[]), None);
    }

    #[test]
    fn error_message_finds_the_servers_explanation() {
        let openai = concat!(
            r#"{"error": {"message": "max_tokens is too large", "#,
            r#""type": "invalid_request_error"}}"#
        )
        .as_bytes();
        assert_eq!(error_message(openai), "max_tokens is too large");
        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(error_message(anthropic), "Overloaded");
        assert_eq!(
            error_message(br#"{"object":"error","message":"model not found"}"#),
            "model not found"
        );
        assert_eq!(error_message(br#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(error_message(b"  Bad Gateway\n"), "Bad Gateway");
        assert_eq!(error_message(b""), "(empty body)");
        let long = "x".repeat(2500);
        assert_eq!(
            error_message(long.as_bytes()),
            format!("{}... (2500 bytes in all)", "x".repeat(2000))
        );
    }

    #[test]
    fn urls_join_with_one_slash_and_bad_base_urls_are_named() {
        assert_eq!(
            join_url("http://h/v1/", "/chat/completions"),
            "http://h/v1/chat/completions"
        );
        assert_eq!(
            join_url("http://h/v1", "completions"),
            "http://h/v1/completions"
        );
        assert!(check_base_url("http://127.0.0.1:8000/v1").is_ok());
        assert_eq!(
            check_base_url("ftp://h").unwrap_err().to_string(),
            "backend config field `base_url`: `ftp://h` must start with http:// or https://"
        );
        assert!(check_base_url("localhost:8000").is_err());
    }
}
