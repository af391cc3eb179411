use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::TokenUsage;

/// What a model costs, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Price {
    /// The cost of one call's tokens.
    pub fn cost(&self, usage: TokenUsage) -> f64 {
        (usage.prompt_tokens as f64 * self.input_per_million
            + usage.completion_tokens as f64 * self.output_per_million)
            / 1e6
    }
}

/// Counters for one model over a run. Every request handed to a client ends up in exactly one
/// of `cache_hits`, `duplicates`, `cache_misses` and `cache_errors`; each miss then in
/// `succeeded` or `failed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelUsage {
    /// Requests handed to the client.
    pub requests: u64,
    /// Requests answered from the response cache.
    pub cache_hits: u64,
    /// Requests identical to another request of the same batch, answered by its call.
    pub duplicates: u64,
    /// Requests the backend had to answer.
    pub cache_misses: u64,
    /// Requests the cache could not be asked about (the cache error is their result).
    pub cache_errors: u64,
    /// Calls to the backend, retries included.
    pub attempts: u64,
    /// Attempts after a request's first.
    pub retries: u64,
    /// Requests whose call finally succeeded.
    pub succeeded: u64,
    /// Requests whose call finally failed.
    pub failed: u64,
    /// Reported tokens of successful calls.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Successful calls whose backend reported no usage: their tokens and cost are missing above.
    pub without_usage: u64,
    /// Cost of the reported tokens at the configured price (0 without a price).
    pub cost_usd: f64,
}

impl ModelUsage {
    fn add(&mut self, other: &ModelUsage) {
        self.requests += other.requests;
        self.cache_hits += other.cache_hits;
        self.duplicates += other.duplicates;
        self.cache_misses += other.cache_misses;
        self.cache_errors += other.cache_errors;
        self.attempts += other.attempts;
        self.retries += other.retries;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.without_usage += other.without_usage;
        self.cost_usd += other.cost_usd;
    }

    /// Counts one successful call and its tokens.
    pub(crate) fn record_success(&mut self, usage: Option<TokenUsage>, price: Option<Price>) {
        self.succeeded += 1;
        match usage {
            Some(usage) => {
                self.prompt_tokens += usage.prompt_tokens;
                self.completion_tokens += usage.completion_tokens;
                self.cost_usd += price.map_or(0.0, |price| price.cost(usage));
            }
            None => self.without_usage += 1,
        }
    }
}

/// Token and cost counters per model, shared by any number of clients (give them one
/// `Arc<Accounting>` for a single run summary).
#[derive(Debug, Default)]
pub struct Accounting {
    by_model: Mutex<BTreeMap<String, ModelUsage>>,
}

impl Accounting {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters of every model seen so far.
    pub fn by_model(&self) -> BTreeMap<String, ModelUsage> {
        self.by_model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The counters of one model (zero if it was never used).
    pub fn model(&self, model: &str) -> ModelUsage {
        let by_model = self.by_model.lock().unwrap_or_else(PoisonError::into_inner);
        by_model.get(model).cloned().unwrap_or_default()
    }

    /// All models added together.
    pub fn total(&self) -> ModelUsage {
        let mut total = ModelUsage::default();
        for usage in self
            .by_model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            total.add(usage);
        }
        total
    }

    pub(crate) fn update(&self, model: &str, change: impl FnOnce(&mut ModelUsage)) {
        let mut by_model = self.by_model.lock().unwrap_or_else(PoisonError::into_inner);
        change(by_model.entry(model.to_string()).or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_uses_separate_input_and_output_prices() {
        let price = Price {
            input_per_million: 3.0,
            output_per_million: 15.0,
        };
        let usage = TokenUsage {
            prompt_tokens: 1_000_000,
            completion_tokens: 200_000,
        };
        // 1M * $3/M + 0.2M * $15/M = $3 + $3.
        assert_eq!(price.cost(usage), 6.0);
    }

    #[test]
    fn totals_add_models_and_calls_without_usage_are_counted_apart() {
        let accounting = Accounting::new();
        let price = Some(Price {
            input_per_million: 2.0,
            output_per_million: 8.0,
        });
        accounting.update("a", |u| {
            u.record_success(
                Some(TokenUsage {
                    prompt_tokens: 500_000,
                    completion_tokens: 250_000,
                }),
                price,
            )
        });
        accounting.update("a", |u| u.record_success(None, price));
        accounting.update("b", |u| {
            u.record_success(
                Some(TokenUsage {
                    prompt_tokens: 10,
                    completion_tokens: 5,
                }),
                None,
            )
        });
        let a = accounting.model("a");
        assert_eq!(
            (
                a.succeeded,
                a.without_usage,
                a.prompt_tokens,
                a.completion_tokens
            ),
            (2, 1, 500_000, 250_000)
        );
        // 0.5M * $2/M + 0.25M * $8/M = $1 + $2.
        assert_eq!(a.cost_usd, 3.0);
        let total = accounting.total();
        assert_eq!(
            (
                total.succeeded,
                total.prompt_tokens,
                total.completion_tokens,
                total.cost_usd
            ),
            (3, 500_010, 250_005, 3.0)
        );
        assert_eq!(accounting.by_model().keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(accounting.model("never used"), ModelUsage::default());
    }
}
