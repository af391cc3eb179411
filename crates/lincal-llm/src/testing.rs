//! A scripted backend for tests, here and in other crates.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use crate::{Llm, LlmError, LlmRequest, LlmResponse};

type Answer = Box<dyn Fn(&LlmRequest) -> Result<LlmResponse, LlmError> + Send + Sync>;

/// A backend whose answers come from a function or a script, and which records every request
/// it received (in arrival order) and the size of every batch.
///
/// Backend family "fake", model "fake-model" and batches of one unless changed with
/// [`FakeLlm::with_model`] and [`FakeLlm::with_max_batch`].
pub struct FakeLlm {
    model: String,
    max_batch: usize,
    answer: Answer,
    received: Mutex<Vec<LlmRequest>>,
    batch_sizes: Mutex<Vec<usize>>,
}

impl FakeLlm {
    /// Answers each request with `answer(request)`.
    pub fn new(
        answer: impl Fn(&LlmRequest) -> Result<LlmResponse, LlmError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            model: "fake-model".to_string(),
            max_batch: 1,
            answer: Box::new(answer),
            received: Mutex::default(),
            batch_sizes: Mutex::default(),
        }
    }

    /// Answers with the script's entries in the order requests arrive, one entry per sample
    /// (a request with `n` = 3 takes three; any error among them is the request's error).
    /// Past the end of the script a request fails with a non-retryable backend error.
    pub fn scripted(script: impl IntoIterator<Item = Result<String, LlmError>>) -> Self {
        let script = Mutex::new(script.into_iter().collect::<VecDeque<_>>());
        Self::new(move |request| {
            let mut script = script.lock().unwrap_or_else(PoisonError::into_inner);
            let mut texts = Vec::new();
            for _ in 0..request.params.n {
                let next = script.pop_front().ok_or_else(|| LlmError::Backend {
                    message: "the FakeLlm script has no answers left".to_string(),
                    retryable: false,
                })?;
                texts.push(next?);
            }
            Ok(LlmResponse::from_texts(texts))
        })
    }

    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Makes it a batching backend that asks for calls of up to `max_batch` requests.
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<LlmRequest> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The size of every `generate` call so far.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batch_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Llm for FakeLlm {
    fn backend(&self) -> &str {
        "fake"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn generate(&self, requests: &[LlmRequest]) -> Vec<Result<LlmResponse, LlmError>> {
        self.batch_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(requests.len());
        requests
            .iter()
            .map(|request| {
                self.received
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(request.clone());
                (self.answer)(request)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SamplingParams;

    #[test]
    fn script_gives_one_entry_per_sample_and_records_requests() {
        let fake = FakeLlm::scripted([
            Ok("a".to_string()),
            Ok("b".to_string()),
            Ok("c".to_string()),
        ]);
        let two = LlmRequest::completion(
            "p",
            SamplingParams {
                n: 2,
                ..SamplingParams::default()
            },
        );
        let one = LlmRequest::completion("q", SamplingParams::default());
        let results = fake.generate(&[two.clone(), one.clone(), one.clone()]);
        assert_eq!(results[0], Ok(LlmResponse::from_texts(["a", "b"])));
        assert_eq!(results[1], Ok(LlmResponse::from_texts(["c"])));
        assert_eq!(
            results[2],
            Err(LlmError::Backend {
                message: "the FakeLlm script has no answers left".into(),
                retryable: false
            })
        );
        assert_eq!(fake.requests(), [two, one.clone(), one]);
        assert_eq!(fake.batch_sizes(), [3]);
    }
}
