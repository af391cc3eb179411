use std::path::PathBuf;
use std::time::Duration;

/// Why one request failed. Each request of a batch has its own result, so one failure does not
/// sink the others.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// The request cannot be answered as written (our own check, before any call).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The server answered with an error status; `message` is the server's own explanation.
    #[error("HTTP {status} from {url}: {message}")]
    Status {
        status: u16,
        url: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The connection could not be made or broke before the answer was read.
    #[error("could not reach {url}: {message}")]
    Connection { url: String, message: String },
    /// No complete answer within the request timeout.
    #[error(
        "no answer from {url} within {timeout:?} (raise `timeout_s` if the server is just slow)"
    )]
    Timeout { url: String, timeout: Duration },
    /// The server said 200 but the body is not what the API promises.
    #[error("unexpected response from {url}: {message}")]
    InvalidResponse { url: String, message: String },
    /// A failure reported by a backend other than HTTP (the local engine, a test fake).
    #[error("backend failed: {message}")]
    Backend { message: String, retryable: bool },
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A retryable failure that kept happening until the attempts ran out.
    #[error("gave up after {attempts} attempts; last error: {last}")]
    RetriesExhausted { attempts: u32, last: Box<LlmError> },
}

impl LlmError {
    /// Whether asking again can help: rate limits (429), server trouble (5xx, 408, 409),
    /// connection failures and timeouts. Other 4xx answers will not change.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => matches!(status, 408 | 409 | 429 | 500..=599),
            LlmError::Connection { .. } | LlmError::Timeout { .. } => true,
            LlmError::Backend { retryable, .. } => *retryable,
            LlmError::InvalidRequest(_)
            | LlmError::InvalidResponse { .. }
            | LlmError::Cache(_)
            | LlmError::RetriesExhausted { .. } => false,
        }
    }

    /// How long the server asked us to wait before the next attempt.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The response cache could not be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("response cache {}: {message}", path.display())]
pub struct CacheError {
    pub path: PathBuf,
    pub message: String,
}

/// A backend or client could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("backend config field `{field}`: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error(
        "environment variable {variable} is not set: export the API key there, or name another \
         variable with `api_key_env`"
    )]
    MissingApiKey { variable: String },
    #[error("cannot start the HTTP client: {0}")]
    Http(String),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl ConfigError {
    pub(crate) fn field(field: &'static str, message: impl Into<String>) -> Self {
        ConfigError::Field {
            field,
            message: message.into(),
        }
    }
}
