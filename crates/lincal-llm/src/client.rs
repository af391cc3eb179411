use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::{
    Accounting, Llm, LlmError, LlmRequest, LlmResponse, ModelUsage, Price, RateLimiter,
    ResponseCache, RetryPolicy, cache_key, generate_checked,
};

/// The knobs of an [`LlmClient`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    /// Most requests in flight at once. For a batching backend (`max_batch` > 1) a call
    /// carries at most this many requests.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// Requests per minute; `None` for no limit.
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute; `None` for no limit.
    pub tpm: Option<u32>,
    /// Price of the model, for the cost in [`Accounting`]; `None` counts tokens only.
    pub price: Option<Price>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            retry: RetryPolicy::default(),
            rpm: None,
            tpm: None,
            price: None,
        }
    }
}

/// What an [`LlmClient`] reports while it works (a CLI turns it into a progress bar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A batch of `requests` was handed over: grow the bar by that much.
    Queued { requests: usize },
    /// One request of it has its final result.
    Finished { from_cache: bool, ok: bool },
}

type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;
type Slots = Mutex<Vec<Option<Result<LlmResponse, LlmError>>>>;

/// Requests of one batch that are identical, answered by one call.
struct Group {
    key: String,
    indices: Vec<usize>,
}

/// A backend wrapped in the machinery every call needs: cache, in-batch deduplication,
/// bounded concurrency, rate limits, retries and accounting. It is an [`Llm`] itself.
///
/// A batch is answered thus: each distinct request is looked up in the cache; the misses are
/// cut into calls of up to `min(max_batch, concurrency)` requests, run by
/// `concurrency / call size` worker threads; each call waits for the rate limiter; a
/// retryable failure is asked again after the [`RetryPolicy`] delay, the others return at once;
/// each success is committed to the cache as soon as it arrives.
pub struct LlmClient {
    backend: Arc<dyn Llm>,
    options: ClientOptions,
    limiter: RateLimiter,
    cache: Option<Arc<ResponseCache>>,
    accounting: Arc<Accounting>,
    progress: Option<ProgressFn>,
}

impl LlmClient {
    pub fn new(backend: Arc<dyn Llm>, options: ClientOptions) -> Self {
        let limiter = RateLimiter::new(options.rpm, options.tpm);
        Self {
            backend,
            options,
            limiter,
            cache: None,
            accounting: Arc::default(),
            progress: None,
        }
    }

    /// Answers from and stores into `cache`.
    pub fn with_cache(mut self, cache: Arc<ResponseCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Counts into `accounting` (shared with other clients for one run summary).
    pub fn with_accounting(mut self, accounting: Arc<Accounting>) -> Self {
        self.accounting = accounting;
        self
    }

    /// Calls `progress` as batches arrive and requests finish (from worker threads).
    pub fn with_progress(mut self, progress: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    pub fn cache(&self) -> Option<&Arc<ResponseCache>> {
        self.cache.as_ref()
    }

    pub fn accounting(&self) -> &Arc<Accounting> {
        &self.accounting
    }

    /// This client's model's counters.
    pub fn usage(&self) -> ModelUsage {
        self.accounting.model(self.backend.model())
    }

    fn report(&self, event: Progress) {
        if let Some(progress) = &self.progress {
            progress(event);
        }
    }

    fn count(&self, change: impl FnOnce(&mut ModelUsage)) {
        self.accounting.update(self.backend.model(), change);
    }

    /// Gives every request of `group` its result.
    fn deliver(
        &self,
        slots: &Slots,
        group: &Group,
        result: Result<LlmResponse, LlmError>,
        from_cache: bool,
    ) {
        let ok = result.is_ok();
        {
            let mut slots = slots.lock().unwrap_or_else(PoisonError::into_inner);
            for &index in &group.indices {
                slots[index] = Some(result.clone());
            }
        }
        for _ in &group.indices {
            self.report(Progress::Finished { from_cache, ok });
        }
    }

    /// Runs the calls of `groups`, `concurrency` requests at a time.
    fn call_all(&self, groups: &[&Group], requests: &[LlmRequest], slots: &Slots) {
        let per_call = self
            .backend
            .max_batch()
            .clamp(1, self.options.concurrency.max(1));
        let calls: Vec<&[&Group]> = groups.chunks(per_call).collect();
        let workers = (self.options.concurrency / per_call).clamp(1, calls.len().max(1));
        let next_call = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    while let Some(call) = calls.get(next_call.fetch_add(1, Ordering::Relaxed)) {
                        self.call_with_retries(call, requests, slots);
                    }
                });
            }
        });
    }

    /// One call of several requests, repeated for those that fail retryably.
    fn call_with_retries(&self, call: &[&Group], requests: &[LlmRequest], slots: &Slots) {
        let retry = &self.options.retry;
        // Each open group with the attempts it has had.
        let mut open: Vec<(&Group, u32)> = call.iter().map(|group| (*group, 0)).collect();
        while !open.is_empty() {
            let asked: Vec<LlmRequest> = open
                .iter()
                .map(|(group, _)| requests[group.indices[0]].clone())
                .collect();
            let estimates: Vec<u64> = asked.iter().map(LlmRequest::estimated_tokens).collect();
            self.limiter.acquire(asked.len(), estimates.iter().sum());
            let results = generate_checked(self.backend.as_ref(), &asked);
            let mut still_open = Vec::new();
            let mut wait = Duration::ZERO;
            // The failure behind the longest wait, for the notice below.
            let mut waiting_for: Option<String> = None;
            for (((group, attempts), request), (result, estimate)) in open
                .into_iter()
                .zip(&asked)
                .zip(results.into_iter().zip(estimates))
            {
                let attempts = attempts + 1;
                self.count(|usage| {
                    usage.attempts += 1;
                    usage.retries += u64::from(attempts > 1);
                });
                match result {
                    Ok(response) => {
                        if let Some(used) = response.usage {
                            self.limiter.settle(estimate, used.total());
                        }
                        let result = self.store(&group.key, request, response);
                        self.deliver(slots, group, result, false);
                    }
                    Err(error) if error.is_retryable() && attempts <= retry.max_retries => {
                        let delay = retry.delay(attempts, error.retry_after());
                        if delay >= wait {
                            wait = delay;
                            waiting_for = Some(error.to_string());
                        }
                        still_open.push((group, attempts));
                    }
                    Err(error) => {
                        let error = if attempts > 1 && error.is_retryable() {
                            LlmError::RetriesExhausted {
                                attempts,
                                last: Box::new(error),
                            }
                        } else {
                            error
                        };
                        self.count(|usage| usage.failed += 1);
                        self.deliver(slots, group, Err(error), false);
                    }
                }
            }
            if !still_open.is_empty() {
                if wait >= NOTICE_WAIT {
                    eprintln!(
                        "{}",
                        wait_notice(wait, still_open.len(), waiting_for.as_deref())
                    );
                }
                std::thread::sleep(wait);
            }
            open = still_open;
        }
    }

    /// Counts a successful call and commits it to the cache before anyone sees it.
    fn store(
        &self,
        key: &str,
        request: &LlmRequest,
        response: LlmResponse,
    ) -> Result<LlmResponse, LlmError> {
        self.count(|usage| usage.record_success(response.usage, self.options.price));
        if let Some(cache) = &self.cache {
            cache.put(
                key,
                self.backend.backend(),
                self.backend.model(),
                request,
                &response,
            )?;
        }
        Ok(response)
    }
}

impl Llm for LlmClient {
    fn backend(&self) -> &str {
        self.backend.backend()
    }

    fn model(&self) -> &str {
        self.backend.model()
    }

    /// Takes any batch: it cuts batches to the backend's size itself.
    fn max_batch(&self) -> usize {
        usize::MAX
    }

    fn generate(&self, requests: &[LlmRequest]) -> Vec<Result<LlmResponse, LlmError>> {
        self.report(Progress::Queued {
            requests: requests.len(),
        });
        self.count(|usage| usage.requests += requests.len() as u64);
        let (backend, model) = (self.backend.backend(), self.backend.model());

        let mut groups: Vec<Group> = Vec::new();
        let mut group_of_key: HashMap<String, usize> = HashMap::new();
        for (index, request) in requests.iter().enumerate() {
            let key = cache_key(backend, model, request);
            match group_of_key.get(&key) {
                Some(&group) => groups[group].indices.push(index),
                None => {
                    group_of_key.insert(key.clone(), groups.len());
                    groups.push(Group {
                        key,
                        indices: vec![index],
                    });
                }
            }
        }

        let slots: Slots = Mutex::new(vec![None; requests.len()]);
        let mut to_call: Vec<&Group> = Vec::new();
        for group in &groups {
            let found = self
                .cache
                .as_ref()
                .map(|cache| cache.get(&group.key))
                .transpose();
            match found.map(Option::flatten) {
                Ok(Some(response)) => {
                    self.count(|usage| usage.cache_hits += group.indices.len() as u64);
                    self.deliver(&slots, group, Ok(response), true);
                }
                Ok(None) => {
                    self.count(|usage| {
                        usage.cache_misses += 1;
                        usage.duplicates += group.indices.len() as u64 - 1;
                    });
                    to_call.push(group);
                }
                Err(error) => {
                    self.count(|usage| usage.cache_errors += group.indices.len() as u64);
                    self.deliver(&slots, group, Err(error.into()), false);
                }
            }
        }
        if !to_call.is_empty() {
            self.call_all(&to_call, requests, &slots);
        }
        slots
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .into_iter()
            .map(|slot| slot.expect("every request of the batch was delivered a result"))
            .collect()
    }
}

/// Waits at least this long are announced on stderr, so that a run held back by a server is
/// not mistaken for a hung one.
const NOTICE_WAIT: Duration = Duration::from_secs(5);

/// What a client waiting `wait` before retrying `requests` says, with the failure behind it.
fn wait_notice(wait: Duration, requests: usize, failure: Option<&str>) -> String {
    let plural = if requests == 1 { "" } else { "s" };
    let mut notice = format!(
        "waiting {:.0} s before retrying {requests} request{plural}",
        wait.as_secs_f64()
    );
    if let Some(failure) = failure {
        notice.push_str(&format!(" (after: {failure})"));
    }
    notice
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeLlm;
    use crate::{ChatMessage, SamplingParams, TokenUsage};

    fn ask(text: &str) -> LlmRequest {
        LlmRequest::chat(vec![ChatMessage::user(text)], SamplingParams::default())
    }

    fn fast_retries(max_retries: u32) -> ClientOptions {
        ClientOptions {
            retry: RetryPolicy {
                max_retries,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
                max_retry_after: Duration::from_millis(2),
            },
            ..ClientOptions::default()
        }
    }

    fn last_user_text(request: &LlmRequest) -> String {
        match &request.prompt {
            crate::Prompt::Chat(messages) => messages.last().unwrap().content.clone(),
            crate::Prompt::Completion(text) => text.clone(),
        }
    }

    #[test]
    fn batching_backend_gets_calls_of_its_size_and_answers_stay_in_order() {
        let backend = Arc::new(
            FakeLlm::new(|request| {
                Ok(LlmResponse::from_texts([
                    last_user_text(request).to_uppercase()
                ]))
            })
            .with_max_batch(4),
        );
        let client = LlmClient::new(
            backend.clone(),
            ClientOptions {
                concurrency: 4,
                ..ClientOptions::default()
            },
        );
        let requests: Vec<LlmRequest> = (0..10).map(|i| ask(&format!("q{i}"))).collect();
        let texts: Vec<String> = client
            .generate(&requests)
            .into_iter()
            .map(|r| r.unwrap().text().to_string())
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("Q{i}")).collect();
        assert_eq!(texts, expected);
        // One worker (concurrency 4 / batch 4) takes the calls in order: 4, 4, 2.
        assert_eq!(backend.batch_sizes(), [4, 4, 2]);
    }

    #[test]
    fn identical_requests_of_a_batch_are_asked_once() {
        let backend = Arc::new(FakeLlm::new(|_| Ok(LlmResponse::from_texts(["same"]))));
        let client = LlmClient::new(backend.clone(), ClientOptions::default());
        let results = client.generate(&[ask("a"), ask("b"), ask("a"), ask("a")]);
        assert!(results.iter().all(|r| r.as_ref().unwrap().text() == "same"));
        assert_eq!(backend.requests().len(), 2);
        let usage = client.usage();
        assert_eq!(
            (
                usage.requests,
                usage.cache_misses,
                usage.duplicates,
                usage.attempts
            ),
            (4, 2, 2, 2)
        );
    }

    #[test]
    fn retryable_failures_are_retried_and_others_fail_at_once() {
        let backend = Arc::new(FakeLlm::scripted([
            Err(LlmError::Backend {
                message: "GPU busy".into(),
                retryable: true,
            }),
            Err(LlmError::Backend {
                message: "GPU busy".into(),
                retryable: true,
            }),
            Ok("done".into()),
            Err(LlmError::InvalidRequest("prompt too long".into())),
        ]));
        let client = LlmClient::new(
            backend.clone(),
            ClientOptions {
                concurrency: 1,
                ..fast_retries(5)
            },
        );
        let results = client.generate(&[ask("first"), ask("second")]);
        assert_eq!(results[0].as_ref().unwrap().text(), "done");
        assert_eq!(
            results[1],
            Err(LlmError::InvalidRequest("prompt too long".into()))
        );
        let usage = client.usage();
        assert_eq!(
            (usage.attempts, usage.retries, usage.succeeded, usage.failed),
            (4, 2, 1, 1)
        );
    }

    #[test]
    fn exhausted_retries_report_the_attempts_and_the_last_error() {
        let busy = LlmError::Backend {
            message: "GPU busy".into(),
            retryable: true,
        };
        let backend = Arc::new(FakeLlm::new({
            let busy = busy.clone();
            move |_| Err(busy.clone())
        }));
        let client = LlmClient::new(backend.clone(), fast_retries(2));
        let results = client.generate(&[ask("x")]);
        assert_eq!(
            results[0],
            Err(LlmError::RetriesExhausted {
                attempts: 3,
                last: Box::new(busy)
            })
        );
        assert_eq!(
            results[0].as_ref().unwrap_err().to_string(),
            "gave up after 3 attempts; last error: backend failed: GPU busy"
        );
        assert_eq!(backend.requests().len(), 3);
    }

    #[test]
    fn a_wrong_result_count_fails_every_request_of_the_call() {
        struct Short;
        impl Llm for Short {
            fn backend(&self) -> &str {
                "short"
            }
            fn model(&self) -> &str {
                "m"
            }
            fn max_batch(&self) -> usize {
                8
            }
            fn generate(&self, _: &[LlmRequest]) -> Vec<Result<LlmResponse, LlmError>> {
                vec![Ok(LlmResponse::from_texts(["only one"]))]
            }
        }
        let client = LlmClient::new(Arc::new(Short), ClientOptions::default());
        let results = client.generate(&[ask("a"), ask("b")]);
        let message = "short backend for model `m` returned 1 results for 2 requests".to_string();
        for result in results {
            assert_eq!(
                result,
                Err(LlmError::Backend {
                    message: message.clone(),
                    retryable: false
                })
            );
        }
    }

    #[test]
    fn cache_answers_a_rerun_and_progress_sees_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ResponseCache::open(dir.path().join("c.sqlite")).unwrap());
        let backend = Arc::new(FakeLlm::new(|request| {
            let mut response = LlmResponse::from_texts([last_user_text(request)]);
            response.usage = Some(TokenUsage {
                prompt_tokens: 100,
                completion_tokens: 10,
            });
            Ok(response)
        }));
        let events = Arc::new(Mutex::new(Vec::new()));
        let options = ClientOptions {
            price: Some(Price {
                input_per_million: 1.0,
                output_per_million: 2.0,
            }),
            ..ClientOptions::default()
        };
        let make_client = || {
            let events = events.clone();
            LlmClient::new(backend.clone(), options.clone())
                .with_cache(cache.clone())
                .with_progress(move |event| events.lock().unwrap().push(event))
        };
        let requests = [ask("a"), ask("b"), ask("c")];
        let first = make_client().generate(&requests);
        let client = make_client();
        let second = client.generate(&requests);
        assert_eq!(first, second);
        assert_eq!(backend.requests().len(), 3);
        let usage = client.usage();
        assert_eq!(
            (usage.cache_hits, usage.cache_misses, usage.attempts),
            (3, 0, 0)
        );
        let events = events.lock().unwrap();
        let finished = |from_cache| {
            events
                .iter()
                .filter(|e| {
                    **e == Progress::Finished {
                        from_cache,
                        ok: true,
                    }
                })
                .count()
        };
        assert_eq!((finished(false), finished(true)), (3, 3));
        assert_eq!(
            events
                .iter()
                .filter(|e| **e == Progress::Queued { requests: 3 })
                .count(),
            2
        );
    }

    #[test]
    fn shared_accounting_prices_each_call() {
        let accounting = Arc::new(Accounting::new());
        let backend = Arc::new(
            FakeLlm::new(|_| {
                let mut response = LlmResponse::from_texts(["x"]);
                response.usage = Some(TokenUsage {
                    prompt_tokens: 400_000,
                    completion_tokens: 100_000,
                });
                Ok(response)
            })
            .with_model("teacher"),
        );
        let options = ClientOptions {
            price: Some(Price {
                input_per_million: 5.0,
                output_per_million: 20.0,
            }),
            ..ClientOptions::default()
        };
        let client = LlmClient::new(backend, options).with_accounting(accounting.clone());
        client.generate(&[ask("a"), ask("b")]);
        let usage = accounting.model("teacher");
        // Per call: 0.4M * $5/M + 0.1M * $20/M = $4; two calls.
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens, usage.cost_usd),
            (800_000, 200_000, 8.0)
        );
    }

    #[test]
    fn a_long_wait_says_how_long_and_why() {
        assert_eq!(
            wait_notice(
                Duration::from_secs(300),
                1,
                Some("HTTP 429 from http://x/v1: slow down")
            ),
            "waiting 300 s before retrying 1 request (after: HTTP 429 from http://x/v1: slow down)"
        );
        assert_eq!(
            wait_notice(Duration::from_secs_f64(7.4), 3, None),
            "waiting 7 s before retrying 3 requests"
        );
    }
}
