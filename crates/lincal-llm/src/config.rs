use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    ANTHROPIC_DEFAULT_VERSION, AnthropicBackend, ClientOptions, ConfigError, HttpSettings, Llm,
    LlmClient, MaxTokensField, OpenAiBackend, Price, ResponseCache, RetryPolicy,
};

const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
const ANTHROPIC_DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

/// Which API a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// OpenAI's chat and text completions; also vLLM, llama.cpp's server, Ollama.
    Openai,
    /// Anthropic's messages API.
    Anthropic,
}

/// A backend and its client machinery, as written in a TOML or JSON config.
///
/// ```toml
/// kind = "anthropic"
/// model = "claude-3-opus-20240229"
/// concurrency = 7
/// rpm = 50
/// cache = "runs/teacher-cache.sqlite"
/// price = { input_per_million = 15.0, output_per_million = 75.0 }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `openai` or `anthropic`.
    pub kind: BackendKind,
    /// The model name sent with every request; part of the cache key, so for a local server
    /// it must name the weights it serves.
    pub model: String,
    /// Where to call. OpenAI-compatible: up to and including `/v1`; default `$OPENAI_BASE_URL`,
    /// else `https://api.openai.com/v1`. Anthropic: the host; default `$ANTHROPIC_BASE_URL`,
    /// else `https://api.anthropic.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The environment variable holding the API key; default `OPENAI_API_KEY` or
    /// `ANTHROPIC_API_KEY`. OpenAI-compatible servers other than api.openai.com may run
    /// without a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Most requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Requests per minute; absent for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute; absent for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Retries of a request after a rate limit, server error, connection error or timeout.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Longest wait for one answer, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Backoff cap of the first retry, in seconds; it doubles per retry.
    #[serde(default = "default_backoff_initial_s")]
    pub backoff_initial_s: f64,
    /// The backoff cap never grows past this many seconds (a `Retry-After` may be longer).
    #[serde(default = "default_backoff_max_s")]
    pub backoff_max_s: f64,
    /// The longest `Retry-After` honoured, in seconds; a server asking for longer is retried
    /// after this long.
    #[serde(default = "default_retry_after_max_s")]
    pub retry_after_max_s: f64,
    /// Dollars per million input and output tokens, for the run's cost; absent counts tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// SQLite file of cached responses; absent for no cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<PathBuf>,
    /// Whether requests carry the seed; default: yes for `openai`, no for `anthropic`
    /// (whose API refuses unknown fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_seed: Option<bool>,
    /// `anthropic` only: the `anthropic-version` header.
    #[serde(default = "default_anthropic_version")]
    pub anthropic_version: String,
    /// `openai` only: `max_tokens` or `max_completion_tokens` (needed by OpenAI's reasoning
    /// models).
    #[serde(default)]
    pub max_tokens_field: MaxTokensField,
}

fn default_concurrency() -> usize {
    8
}
fn default_max_retries() -> u32 {
    RetryPolicy::default().max_retries
}
fn default_timeout_s() -> f64 {
    300.0
}
fn default_backoff_initial_s() -> f64 {
    RetryPolicy::default().initial_backoff.as_secs_f64()
}
fn default_backoff_max_s() -> f64 {
    RetryPolicy::default().max_backoff.as_secs_f64()
}
fn default_retry_after_max_s() -> f64 {
    RetryPolicy::default().max_retry_after.as_secs_f64()
}
fn default_anthropic_version() -> String {
    ANTHROPIC_DEFAULT_VERSION.to_string()
}

impl BackendConfig {
    /// A config with every optional field at its default.
    pub fn new(kind: BackendKind, model: impl Into<String>) -> Self {
        Self {
            kind,
            model: model.into(),
            base_url: None,
            api_key_env: None,
            concurrency: default_concurrency(),
            rpm: None,
            tpm: None,
            max_retries: default_max_retries(),
            timeout_s: default_timeout_s(),
            backoff_initial_s: default_backoff_initial_s(),
            backoff_max_s: default_backoff_max_s(),
            retry_after_max_s: default_retry_after_max_s(),
            price: None,
            cache: None,
            send_seed: None,
            anthropic_version: default_anthropic_version(),
            max_tokens_field: MaxTokensField::default(),
        }
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.model.trim().is_empty() {
            return Err(ConfigError::field(
                "model",
                "is empty; name the model to call",
            ));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::field(
                "concurrency",
                "is 0; allow at least one request in flight",
            ));
        }
        for (field, limit) in [("rpm", self.rpm), ("tpm", self.tpm)] {
            if limit == Some(0) {
                return Err(ConfigError::field(field, "is 0; leave it out for no limit"));
            }
        }
        seconds("timeout_s", self.timeout_s, false)?;
        seconds("backoff_initial_s", self.backoff_initial_s, true)?;
        seconds("backoff_max_s", self.backoff_max_s, true)?;
        seconds("retry_after_max_s", self.retry_after_max_s, true)?;
        if self.backoff_initial_s > self.backoff_max_s {
            return Err(ConfigError::field(
                "backoff_initial_s",
                format!(
                    "is {} s, more than backoff_max_s ({} s)",
                    self.backoff_initial_s, self.backoff_max_s
                ),
            ));
        }
        if let Some(price) = self.price {
            for value in [price.input_per_million, price.output_per_million] {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(ConfigError::field(
                        "price",
                        format!("{value} is not a price; use dollars >= 0"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The client's options (everything but the backend and the cache), once the config is valid.
    pub fn client_options(&self) -> Result<ClientOptions, ConfigError> {
        self.validate()?;
        Ok(ClientOptions {
            concurrency: self.concurrency,
            retry: RetryPolicy {
                max_retries: self.max_retries,
                initial_backoff: Duration::from_secs_f64(self.backoff_initial_s),
                max_backoff: Duration::from_secs_f64(self.backoff_max_s),
                max_retry_after: Duration::from_secs_f64(self.retry_after_max_s),
            },
            rpm: self.rpm,
            tpm: self.tpm,
            price: self.price,
        })
    }

    /// Builds the backend and its client, reading the base URL and key from the environment
    /// where the config leaves them out, and opening the cache.
    pub fn build(&self) -> Result<LlmClient, ConfigError> {
        let options = self.client_options()?;
        let (base_env, default_base, key_env) = match self.kind {
            BackendKind::Openai => ("OPENAI_BASE_URL", OPENAI_DEFAULT_BASE_URL, "OPENAI_API_KEY"),
            BackendKind::Anthropic => (
                "ANTHROPIC_BASE_URL",
                ANTHROPIC_DEFAULT_BASE_URL,
                "ANTHROPIC_API_KEY",
            ),
        };
        let base_url = self
            .base_url
            .clone()
            .or_else(|| {
                std::env::var(base_env)
                    .ok()
                    .filter(|url| !url.trim().is_empty())
            })
            .unwrap_or_else(|| default_base.to_string());
        let key_env = self.api_key_env.as_deref().unwrap_or(key_env);
        let api_key = std::env::var(key_env)
            .ok()
            .filter(|key| !key.trim().is_empty());
        let key_required =
            self.kind == BackendKind::Anthropic || base_url.starts_with(OPENAI_DEFAULT_BASE_URL);
        if api_key.is_none() && key_required {
            return Err(ConfigError::MissingApiKey {
                variable: key_env.to_string(),
            });
        }
        let settings = HttpSettings {
            model: self.model.clone(),
            base_url,
            api_key,
            timeout: Duration::from_secs_f64(self.timeout_s),
            send_seed: self.send_seed.unwrap_or(self.kind == BackendKind::Openai),
        };
        let backend: Arc<dyn Llm> = match self.kind {
            BackendKind::Openai => Arc::new(OpenAiBackend::new(settings, self.max_tokens_field)?),
            BackendKind::Anthropic => Arc::new(AnthropicBackend::new(
                settings,
                self.anthropic_version.clone(),
            )?),
        };
        let client = LlmClient::new(backend, options);
        Ok(match &self.cache {
            Some(path) => client.with_cache(Arc::new(ResponseCache::open(path)?)),
            None => client,
        })
    }
}

/// Checks a number of seconds (zero allowed where `zero_ok`).
fn seconds(field: &'static str, value: f64, zero_ok: bool) -> Result<(), ConfigError> {
    let ok = value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0)) && value < 1e9;
    if ok {
        return Ok(());
    }
    let expected = if zero_ok {
        "a number of seconds >= 0"
    } else {
        "a number of seconds > 0"
    };
    Err(ConfigError::field(
        field,
        format!("is {value}; use {expected}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_json_config_takes_every_default_and_round_trips() {
        let config: BackendConfig =
            serde_json::from_str(r#"{"kind": "openai", "model": "gpt-4-1106-preview"}"#).unwrap();
        assert_eq!(
            config,
            BackendConfig::new(BackendKind::Openai, "gpt-4-1106-preview")
        );
        let options = config.client_options().unwrap();
        assert_eq!(
            (options.concurrency, options.retry, options.rpm),
            (8, RetryPolicy::default(), None)
        );
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<BackendConfig>(&json).unwrap(),
            config
        );
    }

    #[test]
    fn a_full_config_reads_every_field() {
        let config: BackendConfig = serde_json::from_str(concat!(
            r#"{"kind": "anthropic", "model": "claude-3-opus-20240229", "#,
            r#""base_url": "http://127.0.0.1:9",
                "api_key_env": "MY_KEY", "concurrency": 7, "rpm": 50, "tpm": 40000, "#,
            r#""max_retries": 3,
                "timeout_s": 30, "backoff_initial_s": 0.5, "backoff_max_s": 8,
                "price": {"input_per_million": 15, "output_per_million": 75},
                "cache": "runs/cache.sqlite", "send_seed": true, "anthropic_version": "2023-01-01",
                "max_tokens_field": "max_completion_tokens"}"#
        ))
        .unwrap();
        let options = config.client_options().unwrap();
        assert_eq!(options.retry.initial_backoff, Duration::from_millis(500));
        assert_eq!(options.retry.max_backoff, Duration::from_secs(8));
        assert_eq!(
            (options.concurrency, options.rpm, options.tpm),
            (7, Some(50), Some(40000))
        );
        assert_eq!(config.cache, Some(PathBuf::from("runs/cache.sqlite")));
        assert_eq!(config.max_tokens_field, MaxTokensField::MaxCompletionTokens);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let error = serde_json::from_str::<BackendConfig>(
            r#"{"kind": "openai", "model": "m", "temprature": 1}"#,
        )
        .unwrap_err();
        assert!(
            error.to_string().starts_with("unknown field `temprature`"),
            "{error}"
        );
        let mut config = BackendConfig::new(BackendKind::Openai, "m");
        config.timeout_s = 0.0;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "backend config field `timeout_s`: is 0; use a number of seconds > 0"
        );
        config.timeout_s = 10.0;
        config.backoff_initial_s = 5.0;
        config.backoff_max_s = 1.0;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "backend config field `backoff_initial_s`: is 5 s, more than backoff_max_s (1 s)"
        );
        config.backoff_max_s = 5.0;
        config.rpm = Some(0);
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "backend config field `rpm`: is 0; leave it out for no limit"
        );
    }

    #[test]
    fn a_missing_key_names_the_variable_to_set() {
        let mut config = BackendConfig::new(BackendKind::Anthropic, "claude-2.0");
        config.base_url = Some("http://127.0.0.1:9".into());
        config.api_key_env = Some("LINCAL_LLM_TEST_VARIABLE_NEVER_SET".into());
        let error = config.build().err().unwrap();
        assert_eq!(
            error.to_string(),
            "environment variable LINCAL_LLM_TEST_VARIABLE_NEVER_SET is not set: export the API \
             key there, or name another variable with `api_key_env`"
        );
        // A local OpenAI-compatible server needs no key.
        let mut local = BackendConfig::new(BackendKind::Openai, "served-model");
        local.base_url = Some("http://127.0.0.1:9/v1".into());
        local.api_key_env = Some("LINCAL_LLM_TEST_VARIABLE_NEVER_SET".into());
        let client = local.build().unwrap();
        assert_eq!(
            (client.backend(), client.model()),
            ("openai", "served-model")
        );
    }
}
