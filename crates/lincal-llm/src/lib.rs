//! Language models behind one batch-oriented trait, with the machinery every teacher call shares.
//!
//! - [`Llm`] is the trait: a caller hands over many [`LlmRequest`]s (chat or raw completion,
//!   `n` samples, temperature, top-p, max tokens, stop strings, seed) and gets one
//!   `Result<LlmResponse, LlmError>` per request, so one failure does not sink the batch. It is
//!   synchronous and object-safe (`Arc<dyn Llm>`); the HTTP backends run their own tokio
//!   runtime, so call them from plain threads, not from inside an async runtime. The local GPU
//!   engine implements it over a whole batch per forward pass; the HTTP backends answer a batch
//!   concurrently.
//! - Backends: [`OpenAiBackend`] (`/chat/completions` and `/completions`; also vLLM,
//!   llama.cpp's server, Ollama) and [`AnthropicBackend`] (`/v1/messages`).
//! - [`LlmClient`] wraps any backend with bounded concurrency, retries with exponential
//!   backoff, full jitter and `Retry-After`, requests- and tokens-per-minute limits, a
//!   crash-safe SQLite [`ResponseCache`], token and cost [`Accounting`] and a [`Progress`]
//!   hook. It is itself an [`Llm`].
//! - [`generate_parsed`] asks again, with a new seed, until the caller's parser accepts an
//!   answer, and records what never parsed instead of dropping it; [`request_seed`] gives each
//!   request of a run its own seed.
//! - [`BackendConfig`] describes a backend in TOML or JSON and builds its [`LlmClient`].
//! - [`testing::FakeLlm`] is a scripted backend for tests here and in other crates.
//!
//! ```
//! use std::sync::Arc;
//! use lincal_llm::testing::FakeLlm;
//! use lincal_llm::{
//!     ChatMessage, ClientOptions, LlmClient, LlmRequest, LlmResponse, SamplingParams,
//!     generate_parsed,
//! };
//!
//! // A backend that answers "0.7" only from seed 1 on.
//! let backend = FakeLlm::new(|request| {
//!     let text = if request.params.seed == 0 { "about seventy" } else { "0.7" };
//!     Ok(LlmResponse::from_texts([text]))
//! });
//! let client = LlmClient::new(Arc::new(backend), ClientOptions::default());
//! let request = LlmRequest::chat(
//!     vec![ChatMessage::user("How likely is it? Answer with a number.")],
//!     SamplingParams { temperature: 0.2, max_tokens: 8, ..SamplingParams::default() },
//! );
//! let outcomes = generate_parsed(&client, &[request], 3, |text| {
//!     text.trim().parse::<f64>().map_err(|e| e.to_string())
//! });
//! let parsed = outcomes[0].as_ref().unwrap();
//! assert_eq!((parsed.values.as_slice(), parsed.attempts, parsed.seed), ([0.7].as_slice(), 2, 1));
//! assert_eq!(client.usage().attempts, 2);
//! ```

mod accounting;
mod anthropic;
mod cache;
mod client;
mod config;
mod error;
mod http;
mod openai;
mod parse;
mod rate_limit;
mod retry;
pub mod testing;
mod types;

pub use accounting::{Accounting, ModelUsage, Price};
pub use anthropic::{ANTHROPIC_DEFAULT_VERSION, AnthropicBackend};
pub use cache::{ResponseCache, cache_key};
pub use client::{ClientOptions, LlmClient, Progress};
pub use config::{BackendConfig, BackendKind};
pub use error::{CacheError, ConfigError, LlmError};
pub use http::HttpSettings;
pub use openai::{MaxTokensField, OpenAiBackend};
pub use parse::{ParseFailure, Parsed, generate_parsed, generate_parsed_indexed};
pub use rate_limit::RateLimiter;
pub use retry::RetryPolicy;
pub use types::{
    ChatMessage, Choice, FinishReason, LlmRequest, LlmResponse, Prompt, Role, SamplingParams,
    TokenUsage, request_seed,
};

/// A language model that answers batches of requests.
///
/// Implementations must return exactly one result per request, in request order; callers in
/// this crate turn a wrong count into an error for every request of the batch.
pub trait Llm: Send + Sync {
    /// The backend family ("openai", "anthropic", "local", ...); part of the cache key.
    fn backend(&self) -> &str;

    /// The model name; part of the cache key, so it must identify the weights.
    fn model(&self) -> &str;

    /// How many requests one [`Llm::generate`] call should carry: the local engine's batch
    /// size; 1 for HTTP backends, whose requests [`LlmClient`] runs side by side instead.
    fn max_batch(&self) -> usize {
        1
    }

    /// Answers every request of the batch.
    fn generate(&self, requests: &[LlmRequest]) -> Vec<Result<LlmResponse, LlmError>>;
}

/// Calls `llm` and enforces the one-result-per-request contract.
pub(crate) fn generate_checked(
    llm: &dyn Llm,
    requests: &[LlmRequest],
) -> Vec<Result<LlmResponse, LlmError>> {
    let results = llm.generate(requests);
    if results.len() == requests.len() {
        return results;
    }
    let message = format!(
        "{} backend for model `{}` returned {} results for {} requests",
        llm.backend(),
        llm.model(),
        results.len(),
        requests.len()
    );
    requests
        .iter()
        .map(|_| {
            Err(LlmError::Backend {
                message: message.clone(),
                retryable: false,
            })
        })
        .collect()
}
