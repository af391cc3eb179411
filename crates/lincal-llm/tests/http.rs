//! The backends and the client machinery over real HTTP, against a loopback server started by
//! each test. Backoffs are milliseconds; the only timing assertions are lower bounds.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Response, Uri};
use lincal_llm::{
    AnthropicBackend, BackendConfig, BackendKind, ChatMessage, ClientOptions, FinishReason,
    HttpSettings, Llm, LlmClient, LlmError, LlmRequest, LlmResponse, ParseFailure, Prompt,
    ResponseCache, RetryPolicy, SamplingParams, TokenUsage, generate_parsed,
};
use serde_json::{Value, json};

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: Value,
    at: Instant,
}

/// What the server answers, after `delay`.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Value,
    delay: Duration,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body,
            delay: Duration::ZERO,
        }
    }

    fn error(status: u16, message: &str) -> Self {
        Self {
            status,
            body: json!({"error": {"message": message, "type": "test_error"}}),
            ..Self::ok(json!({}))
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Respond = dyn Fn(&Received, usize) -> Reply + Send + Sync;

struct ServerState {
    received: Mutex<Vec<Received>>,
    respond: Box<Respond>,
}

/// An HTTP server on 127.0.0.1 that records every request and answers with
/// `respond(request, number of requests before it)`.
struct TestServer {
    url: String,
    state: Arc<ServerState>,
}

impl TestServer {
    fn start(respond: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static) -> Self {
        let state = Arc::new(ServerState {
            received: Mutex::new(Vec::new()),
            respond: Box::new(respond),
        });
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let server_state = state.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                address_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new()
                    .fallback(handle)
                    .with_state(server_state);
                axum::serve(listener, app).await.unwrap();
            });
        });
        let address = address_rx.recv().unwrap();
        Self {
            url: format!("http://{address}"),
            state,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let received = Received {
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("").to_string()))
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: Instant::now(),
    };
    let reply = {
        let mut all = state.received.lock().unwrap();
        all.push(received.clone());
        (state.respond)(&received, all.len() - 1)
    };
    tokio::time::sleep(reply.delay).await;
    let mut response = Response::builder()
        .status(reply.status)
        .header("content-type", "application/json");
    for (name, value) in &reply.headers {
        response = response.header(*name, value);
    }
    response.body(Body::from(reply.body.to_string())).unwrap()
}

/// An OpenAI chat answer with one choice.
fn chat_answer(text: &str) -> Value {
    json!({
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    })
}

fn last_message(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map_or(String::new(), |m| {
            m["content"].as_str().unwrap_or("").to_string()
        })
}

/// An OpenAI-compatible client built from a config, with millisecond backoffs and no key.
fn openai_config(server: &TestServer) -> BackendConfig {
    let mut config = BackendConfig::new(BackendKind::Openai, "test-model");
    config.base_url = Some(format!("{}/v1", server.url));
    config.api_key_env = Some("LINCAL_LLM_TEST_KEY_NEVER_SET".into());
    config.backoff_initial_s = 0.001;
    config.backoff_max_s = 0.005;
    config.timeout_s = 5.0;
    config
}

fn ask(text: &str) -> LlmRequest {
    LlmRequest::chat(
        vec![ChatMessage::user(text)],
        SamplingParams {
            max_tokens: 16,
            ..SamplingParams::default()
        },
    )
}

fn settings(server_url: String, send_seed: bool) -> HttpSettings {
    HttpSettings {
        model: "test-model".into(),
        base_url: server_url,
        api_key: Some("test-key".into()),
        timeout: Duration::from_secs(5),
        send_seed,
    }
}

#[test]
fn openai_chat_body_carries_every_field_and_the_answer_is_read_in_index_order() {
    let server = TestServer::start(|_, _| {
        Reply::ok(json!({
            "choices": [
                {
                    "index": 1,
                    "message": {"role": "assistant", "content": "second"},
                    "finish_reason": "length",
                },
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "first"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30}
        }))
    });
    let backend = lincal_llm::OpenAiBackend::new(
        settings(format!("{}/v1/", server.url), true),
        Default::default(),
    )
    .unwrap();
    let request = LlmRequest::chat(
        vec![
            ChatMessage::system("You are terse."),
            ChatMessage::user("Name two rivers."),
        ],
        SamplingParams {
            n: 2,
            temperature: 0.7,
            top_p: Some(0.9),
            max_tokens: 64,
            stop: vec!["\n\n".into(), "###".into()],
            seed: 42,
        },
    );
    let response = backend.generate(&[request]).remove(0).unwrap();
    assert_eq!(
        response
            .choices
            .iter()
            .map(|c| (c.text.as_str(), c.finish_reason.clone()))
            .collect::<Vec<_>>(),
        [
            ("first", Some(FinishReason::Stop)),
            ("second", Some(FinishReason::Length))
        ]
    );
    assert_eq!(
        response.usage,
        Some(TokenUsage {
            prompt_tokens: 21,
            completion_tokens: 9
        })
    );
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/v1/chat/completions");
    assert_eq!(received[0].headers["authorization"], "Bearer test-key");
    assert_eq!(
        received[0].body,
        json!({
            "model": "test-model",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name two rivers."}
            ],
            "max_tokens": 64,
            "temperature": 0.7,
            "top_p": 0.9,
            "n": 2,
            "stop": ["\n\n", "###"],
            "seed": 42
        })
    );
}

#[test]
fn openai_completion_goes_to_completions_and_leaves_out_unset_fields() {
    let server = TestServer::start(|_, _| {
        Reply::ok(json!({"choices": [{"index": 0, "text": " Paris.", "finish_reason": "length"}]}))
    });
    let backend = lincal_llm::OpenAiBackend::new(
        settings(format!("{}/v1", server.url), false),
        lincal_llm::MaxTokensField::MaxCompletionTokens,
    )
    .unwrap();
    let request = LlmRequest::completion(
        "The capital of France is",
        SamplingParams {
            max_tokens: 3,
            temperature: 0.0,
            ..SamplingParams::default()
        },
    );
    let response = backend.generate(&[request]).remove(0).unwrap();
    assert_eq!(response.text(), " Paris.");
    assert_eq!(
        response.choices[0].finish_reason,
        Some(FinishReason::Length)
    );
    assert_eq!(response.usage, None);
    let received = server.received();
    assert_eq!(received[0].path, "/v1/completions");
    // The legacy completions API only knows `max_tokens`; no seed, stop or top_p was asked for.
    assert_eq!(
        received[0].body,
        json!({
            "model": "test-model",
            "prompt": "The capital of France is",
            "max_tokens": 3,
            "temperature": 0.0,
            "n": 1,
        })
    );
}

#[test]
fn openai_answer_with_fewer_choices_than_n_is_an_error() {
    let server = TestServer::start(|_, _| Reply::ok(chat_answer("only one")));
    let client = openai_config(&server).build().unwrap();
    let mut request = ask("two please");
    request.params.n = 2;
    let error = client.generate(&[request]).remove(0).unwrap_err();
    assert_eq!(
        error,
        LlmError::InvalidResponse {
            url: format!("{}/v1/chat/completions", server.url),
            message:
                "asked for n = 2 samples and got 1 choices; this server may not support `n` > 1"
                    .into(),
        }
    );
}

#[test]
fn anthropic_body_has_top_level_system_and_n_samples_are_n_calls_with_successive_seeds() {
    let server = TestServer::start(|request, _| {
        Reply::ok(json!({
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": format!("sample seed {}", request.body["seed"])}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 30, "output_tokens": 5}
        }))
    });
    let backend = AnthropicBackend::new(settings(server.url.clone(), true), "2023-06-01").unwrap();
    let request = LlmRequest::chat(
        vec![
            ChatMessage::system("You forecast probabilities."),
            ChatMessage::user("Was it 1912?"),
            ChatMessage::assistant("{"),
        ],
        SamplingParams {
            n: 2,
            temperature: 0.2,
            top_p: None,
            max_tokens: 200,
            stop: vec!["}".into()],
            seed: 10,
        },
    );
    let response = backend.generate(&[request]).remove(0).unwrap();
    let mut texts: Vec<&str> = response.texts().collect();
    texts.sort();
    assert_eq!(texts, ["sample seed 10", "sample seed 11"]);
    assert_eq!(
        response.usage,
        Some(TokenUsage {
            prompt_tokens: 60,
            completion_tokens: 10
        })
    );
    let received = server.received();
    assert_eq!(received.len(), 2);
    let mut seeds: Vec<u64> = received
        .iter()
        .map(|r| r.body["seed"].as_u64().unwrap())
        .collect();
    seeds.sort();
    assert_eq!(seeds, [10, 11]);
    for call in &received {
        assert_eq!(call.path, "/v1/messages");
        assert_eq!(call.headers["x-api-key"], "test-key");
        assert_eq!(call.headers["anthropic-version"], "2023-06-01");
        let mut body = call.body.clone();
        body.as_object_mut().unwrap().remove("seed");
        assert_eq!(
            body,
            json!({
                "model": "test-model",
                "max_tokens": 200,
                "system": "You forecast probabilities.",
                "messages": [
                    {"role": "user", "content": "Was it 1912?"},
                    {"role": "assistant", "content": "{"}
                ],
                "temperature": 0.2,
                "stop_sequences": ["}"]
            })
        );
    }
}

#[test]
fn anthropic_sends_no_seed_by_default_and_refuses_raw_prompts() {
    let server = TestServer::start(|_, _| {
        Reply::ok(json!({"content": [{"type": "text", "text": "Yes."}], "stop_reason": "end_turn"}))
    });
    let mut settings = settings(server.url.clone(), false);
    settings.model = "claude-test".into();
    let client = LlmClient::new(
        Arc::new(AnthropicBackend::new(settings, lincal_llm::ANTHROPIC_DEFAULT_VERSION).unwrap()),
        ClientOptions::default(),
    );
    let results = client.generate(&[
        ask("Hello"),
        LlmRequest::completion("\n\nHuman: Hi\n\nAssistant:", SamplingParams::default()),
    ]);
    assert_eq!(results[0].as_ref().unwrap().text(), "Yes.");
    assert_eq!(
        results[1],
        Err(LlmError::InvalidRequest(
            "the Anthropic messages API takes chat messages, not a raw completion prompt; \
             build the request with LlmRequest::chat"
                .into()
        ))
    );
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].body,
        json!({
            "model": "claude-test",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "Hello"}],
            "temperature": 1.0,
        })
    );
}

#[test]
fn rate_limits_server_errors_and_timeouts_are_retried_until_success() {
    let server = TestServer::start(|_, count| match count {
        0 => Reply::error(429, "Rate limit reached"),
        1 => Reply::error(500, "internal error"),
        2 => Reply::ok(chat_answer("too late")).after(Duration::from_secs(4)),
        _ => Reply::ok(chat_answer("finally")),
    });
    let mut config = openai_config(&server);
    // Long enough that a prompt reply is never timed out on a busy machine, so the attempts
    // are exactly the four replies.
    config.timeout_s = 1.5;
    let client = config.build().unwrap();
    let response = client.generate(&[ask("q")]).remove(0).unwrap();
    assert_eq!(response.text(), "finally");
    assert_eq!(server.received().len(), 4);
    let usage = client.usage();
    assert_eq!(
        (usage.attempts, usage.retries, usage.succeeded, usage.failed),
        (4, 3, 1, 0)
    );
}

#[test]
fn retry_after_is_waited_for_before_the_next_attempt() {
    let server = TestServer::start(|_, count| match count {
        0 => Reply::error(429, "slow down").header("retry-after", "1"),
        _ => Reply::ok(chat_answer("ok")),
    });
    let client = openai_config(&server).build().unwrap();
    assert_eq!(client.generate(&[ask("q")]).remove(0).unwrap().text(), "ok");
    let received = server.received();
    assert_eq!(received.len(), 2);
    let waited = received[1].at - received[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before the 1 s the server asked for"
    );
}

#[test]
fn a_bad_request_fails_at_once_with_the_servers_message() {
    let server = TestServer::start(|_, _| Reply::error(400, "max_tokens must be at most 4096"));
    let client = openai_config(&server).build().unwrap();
    let error = client.generate(&[ask("q")]).remove(0).unwrap_err();
    let url = format!("{}/v1/chat/completions", server.url);
    assert_eq!(
        error.to_string(),
        format!("HTTP 400 from {url}: max_tokens must be at most 4096")
    );
    assert_eq!(
        error,
        LlmError::Status {
            status: 400,
            url,
            message: "max_tokens must be at most 4096".into(),
            retry_after: None
        }
    );
    assert_eq!(server.received().len(), 1);
}

#[test]
fn persistent_server_errors_stop_after_max_retries() {
    let server = TestServer::start(|_, _| Reply::error(503, "overloaded"));
    let mut config = openai_config(&server);
    config.max_retries = 2;
    let client = config.build().unwrap();
    let error = client.generate(&[ask("q")]).remove(0).unwrap_err();
    let LlmError::RetriesExhausted { attempts, last } = &error else {
        panic!("unexpected error {error}")
    };
    assert_eq!(*attempts, 3);
    assert!(
        matches!(**last, LlmError::Status { status: 503, .. }),
        "{last}"
    );
    assert_eq!(server.received().len(), 3);
}

#[test]
fn refused_connections_are_retried_then_reported() {
    // A socket bound but not listening holds the port, and connections to it are refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let mut config = BackendConfig::new(BackendKind::Openai, "test-model");
    config.base_url = Some(format!("http://127.0.0.1:{port}/v1"));
    config.api_key_env = Some("LINCAL_LLM_TEST_KEY_NEVER_SET".into());
    config.backoff_initial_s = 0.001;
    config.max_retries = 2;
    let client = config.build().unwrap();
    let error = client.generate(&[ask("q")]).remove(0).unwrap_err();
    let LlmError::RetriesExhausted { attempts: 3, last } = &error else {
        panic!("unexpected error {error}")
    };
    assert!(matches!(**last, LlmError::Connection { .. }), "{last}");
    assert_eq!(client.usage().attempts, 3);
}

#[test]
fn a_rerun_with_the_cache_makes_no_requests() {
    let server = TestServer::start(|request, _| {
        Reply::ok(chat_answer(&format!("re: {}", last_message(&request.body))))
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = openai_config(&server);
    config.cache = Some(dir.path().join("cache.sqlite"));
    let requests: Vec<LlmRequest> = (0..5).map(|i| ask(&format!("question {i}"))).collect();
    let first = config.build().unwrap().generate(&requests);
    assert_eq!(server.received().len(), 5);
    let client = config.build().unwrap();
    let second = client.generate(&requests);
    assert_eq!(server.received().len(), 5, "the re-run called the server");
    assert_eq!(first, second);
    assert_eq!(second[3].as_ref().unwrap().text(), "re: question 3");
    let usage = client.usage();
    assert_eq!(
        (usage.cache_hits, usage.cache_misses, usage.attempts),
        (5, 0, 0)
    );
}

#[test]
fn parse_failures_are_asked_again_with_new_seeds_and_finally_recorded() {
    // "A" answers a number from seed 8 on; "B" never does.
    let server = TestServer::start(|request, _| {
        let seed = request.body["seed"].as_u64().unwrap();
        let text = match last_message(&request.body).as_str() {
            "A" if seed >= 8 => "42".to_string(),
            _ => format!("I cannot say (seed {seed})"),
        };
        Reply::ok(chat_answer(&text))
    });
    let client = openai_config(&server).build().unwrap();
    let requests = [ask("A").with_seed(7), ask("B").with_seed(100)];
    let outcomes = generate_parsed(&client, &requests, 3, |text| {
        text.parse::<u32>().map_err(|e| format!("not a count: {e}"))
    });
    let parsed = outcomes[0].as_ref().unwrap();
    assert_eq!(
        (parsed.values.as_slice(), parsed.attempts, parsed.seed),
        ([42].as_slice(), 2, 8)
    );
    assert_eq!(
        outcomes[1],
        Err(ParseFailure::Unparseable {
            raw_text: "I cannot say (seed 102)".into(),
            error: "not a count: invalid digit found in string".into(),
            attempts: 3,
            seed: 102,
        })
    );
    let seeds_of = |prompt: &str| -> Vec<u64> {
        server
            .received()
            .iter()
            .filter(|r| last_message(&r.body) == prompt)
            .map(|r| r.body["seed"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seeds_of("A"), [7, 8]);
    assert_eq!(seeds_of("B"), [100, 101, 102]);
}

#[test]
fn requests_per_minute_bound_how_many_start_in_a_window() {
    let server = TestServer::start(|_, _| Reply::ok(chat_answer("ok")));
    let mut config = openai_config(&server);
    // 1200 per minute = 20 per second, with a bucket of one second: 20 may start at once,
    // the next 10 need half a second more.
    config.rpm = Some(1200);
    config.concurrency = 30;
    let start = Instant::now();
    let client = config.build().unwrap();
    let requests: Vec<LlmRequest> = (0..30).map(|i| ask(&format!("q{i}"))).collect();
    assert!(client.generate(&requests).iter().all(Result::is_ok));
    let mut starts: Vec<Duration> = server.received().iter().map(|r| r.at - start).collect();
    starts.sort();
    assert_eq!(starts.len(), 30);
    assert!(
        starts[29] >= Duration::from_millis(490),
        "30 requests started within {:?}",
        starts[29]
    );
    assert!(
        starts[24] >= Duration::from_millis(240),
        "25 requests started within {:?}",
        starts[24]
    );
}

/// The batch both halves of the crash test send.
fn crash_batch() -> Vec<LlmRequest> {
    (0..6)
        .map(|i| ask(&format!("crash question {i}")))
        .collect()
}

fn crash_config(url: &str, cache: &Path) -> BackendConfig {
    let mut config = BackendConfig::new(BackendKind::Openai, "test-model");
    config.base_url = Some(format!("{url}/v1"));
    config.api_key_env = Some("LINCAL_LLM_TEST_KEY_NEVER_SET".into());
    config.concurrency = 2;
    config.cache = Some(cache.to_path_buf());
    config
}

#[test]
fn a_killed_run_resumes_without_repeating_finished_calls() {
    // The child this test starts is this same test, given the server and cache by its parent:
    // it sends the batch, which hangs until the parent kills it.
    if let (Ok(url), Ok(cache)) = (
        std::env::var("LINCAL_LLM_CRASH_URL"),
        std::env::var("LINCAL_LLM_CRASH_CACHE"),
    ) {
        crash_config(&url, Path::new(&cache))
            .build()
            .unwrap()
            .generate(&crash_batch());
        return;
    }
    const ANSWERED_BEFORE_KILL: usize = 3;
    let stalling = Arc::new(AtomicBool::new(true));
    let server = TestServer::start({
        let stalling = stalling.clone();
        move |request, count| {
            let reply = Reply::ok(chat_answer(&format!("re: {}", last_message(&request.body))));
            if stalling.load(Ordering::SeqCst) && count >= ANSWERED_BEFORE_KILL {
                reply.after(Duration::from_secs(600))
            } else {
                reply
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cache_path = dir.path().join("cache.sqlite");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_killed_run_resumes_without_repeating_finished_calls",
            "--exact",
            "--nocapture",
        ])
        .env("LINCAL_LLM_CRASH_URL", &server.url)
        .env("LINCAL_LLM_CRASH_CACHE", &cache_path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the child once its answered calls are committed and the rest hang.
    let waiting_since = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child process ended by itself ({status}) instead of hanging");
        }
        let committed = ResponseCache::open(&cache_path)
            .ok()
            .and_then(|cache| cache.len().ok())
            .unwrap_or(0);
        if committed == ANSWERED_BEFORE_KILL as u64 {
            break;
        }
        assert!(
            waiting_since.elapsed() < Duration::from_secs(120),
            "the child committed {committed} answers in 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before_kill = server.received();
    let answered: BTreeSet<String> = before_kill[..ANSWERED_BEFORE_KILL]
        .iter()
        .map(|r| last_message(&r.body))
        .collect();

    stalling.store(false, Ordering::SeqCst);
    let client = crash_config(&server.url, &cache_path).build().unwrap();
    let results = client.generate(&crash_batch());
    for (request, result) in crash_batch().iter().zip(&results) {
        let Prompt::Chat(messages) = &request.prompt else {
            unreachable!()
        };
        assert_eq!(
            result.as_ref().unwrap().text(),
            format!("re: {}", messages[0].content)
        );
    }
    let after_kill: Vec<String> = server.received()[before_kill.len()..]
        .iter()
        .map(|r| last_message(&r.body))
        .collect();
    assert_eq!(after_kill.len(), crash_batch().len() - ANSWERED_BEFORE_KILL);
    assert!(
        after_kill.iter().all(|prompt| !answered.contains(prompt)),
        "repeated a finished call: {after_kill:?}"
    );
    assert_eq!(client.usage().cache_hits, ANSWERED_BEFORE_KILL as u64);
}

#[test]
fn one_client_serves_a_batch_mixing_successes_and_failures() {
    let server = TestServer::start(|request, _| match last_message(&request.body).as_str() {
        "bad" => Reply::error(422, "unprocessable"),
        text => Reply::ok(chat_answer(text)),
    });
    let client = LlmClient::new(
        Arc::new(
            lincal_llm::OpenAiBackend::new(
                settings(format!("{}/v1", server.url), true),
                Default::default(),
            )
            .unwrap(),
        ),
        ClientOptions {
            concurrency: 3,
            retry: RetryPolicy {
                max_retries: 0,
                ..RetryPolicy::default()
            },
            ..ClientOptions::default()
        },
    );
    let results = client.generate(&[ask("one"), ask("bad"), ask("three")]);
    assert_eq!(
        results[0],
        Ok(LlmResponse {
            choices: vec![lincal_llm::Choice {
                text: "one".into(),
                finish_reason: Some(FinishReason::Stop)
            }],
            usage: Some(TokenUsage {
                prompt_tokens: 10,
                completion_tokens: 2
            }),
        })
    );
    assert!(matches!(
        results[1],
        Err(LlmError::Status { status: 422, .. })
    ));
    assert_eq!(results[2].as_ref().unwrap().text(), "three");
}

#[test]
fn a_huge_retry_after_is_waited_for_retry_after_max_s_at_most() {
    let server = TestServer::start(|_, count| match count {
        0 => Reply::error(429, "come back tomorrow").header("retry-after", "100000"),
        _ => Reply::ok(chat_answer("ok")),
    });
    let mut config = openai_config(&server);
    config.retry_after_max_s = 0.5;
    let client = config.build().unwrap();
    assert_eq!(client.generate(&[ask("q")]).remove(0).unwrap().text(), "ok");
    let received = server.received();
    let waited = received[1].at - received[0].at;
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(30),
        "retried after {waited:?}"
    );
}
