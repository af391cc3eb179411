//! The server on loopback over a tiny random model: answers equal the engine's own
//! generation, streams join to the same answers, errors come in each API's shape, and
//! batching is continuous (a newcomer starts before the running batch ends, a client that
//! leaves frees its row, a full queue says when to come back).

use lincal_model::testing::{random_model, tiny_llama, write_tokenizer};
use lincal_model::{CausalLm, ChatTurn, Generation, SamplingParams, Tokenizer, generate_text};
use lincal_serve::{BackgroundServer, EngineConfig, ServeConfig};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const MODEL: &str = "tiny";

struct Server {
    background: BackgroundServer,
    base: String,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(adjust: impl FnOnce(&mut ServeConfig)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        random_model(tiny_llama(false), 3)
            .save(dir.path(), usize::MAX)
            .unwrap();
        write_tokenizer(dir.path(), 64);
        let mut config = ServeConfig {
            address: "127.0.0.1:0".into(),
            model_name: MODEL.into(),
            api_key: None,
            max_body_bytes: 64 << 10,
            shutdown_timeout: Duration::from_secs(10),
            engine: EngineConfig {
                max_batch: 4,
                max_context: 256,
                max_queue: 64,
                prefill_tokens: 512,
            },
        };
        adjust(&mut config);
        let (model, tokenizer) = load(dir.path());
        let background = BackgroundServer::start(model, tokenizer, config).unwrap();
        Server {
            base: background.base_url(),
            background,
            dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// What the engine's plain batch generation gives for a chat, alone.
    fn expected(&self, user: &str, seed: u64, params: &SamplingParams) -> Generation {
        let (model, tokenizer) = load(self.dir.path());
        let ids = tokenizer
            .encode_chat(&[ChatTurn::new("user", user)])
            .unwrap();
        generate_text(&model, &tokenizer, &[ids], &[seed], params, None)
            .unwrap()
            .remove(0)
    }
}

fn load(dir: &Path) -> (CausalLm, Tokenizer) {
    (
        CausalLm::load(dir, tch::Device::Cpu, Some(tch::Kind::Float)).unwrap(),
        Tokenizer::from_dir(dir).unwrap(),
    )
}

fn greedy(max_new_tokens: i64) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_new_tokens,
        ..SamplingParams::default()
    }
}

async fn send(url: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn post(url: &str, body: &Value) -> (u16, Value) {
    let response = send(url, body).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// The `data:` payloads of a whole event stream, with their `event:` names.
async fn post_stream(url: &str, body: &Value) -> Vec<(Option<String>, String)> {
    parse_events(&send(url, body).await.text().await.unwrap())
}

fn parse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d.to_string());
                }
            }
            data.map(|d| (name, d))
        })
        .collect()
}

fn chat_body(user: &str, extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": user}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_greedy_chat_equals_the_engines_generation_with_its_log_probs() {
    let server = Server::start(|_| {});
    let expected = server.expected("t5 t6 t7", 0, &greedy(12));
    let (status, body) = post(
        &server.url("/v1/chat/completions"),
        &chat_body(
            "t5 t6 t7",
            json!({"max_tokens": 12, "temperature": 0, "logprobs": true, "top_logprobs": 3}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["content"], expected.text.as_str());
    let ended_by_eos = expected.finish_reason == lincal_model::FinishReason::Eos;
    assert_eq!(
        choice["finish_reason"],
        if ended_by_eos { "stop" } else { "length" }
    );
    // One log-prob per token with text (an EOS is counted but not listed); at temperature 0
    // the engine's log-probs are the model's own.
    let listed = choice["logprobs"]["content"].as_array().unwrap();
    let with_text = expected.tokens.len() - usize::from(ended_by_eos);
    assert_eq!(listed.len(), with_text);
    for (entry, want) in listed.iter().zip(&expected.logprobs) {
        let got = entry["logprob"].as_f64().unwrap();
        assert!((got - f64::from(*want)).abs() < 1e-5, "{got} vs {want}");
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["logprob"], entry["logprob"]);
    }
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], expected.tokens.len());
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + expected.tokens.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn seeded_samples_repeat_and_equal_the_engines_with_seed_plus_choice() {
    let server = Server::start(|_| {});
    let body = chat_body(
        "t9 t10",
        json!({"max_tokens": 10, "temperature": 0.9, "top_p": 0.95, "seed": 7, "n": 3}),
    );
    let (_, first) = post(&server.url("/v1/chat/completions"), &body).await;
    let (_, again) = post(&server.url("/v1/chat/completions"), &body).await;
    assert_eq!(first["choices"], again["choices"]);
    let params = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        max_new_tokens: 10,
        ..SamplingParams::default()
    };
    let texts: Vec<&str> = (0..3)
        .map(|j| first["choices"][j]["message"]["content"].as_str().unwrap())
        .collect();
    for (j, text) in texts.iter().enumerate() {
        assert_eq!(*text, server.expected("t9 t10", 7 + j as u64, &params).text);
    }
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "three seeds gave one text: {texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_join_to_the_same_answers_in_each_apis_event_shape() {
    let server = Server::start(|_| {});
    let expected = server.expected("t20 t21", 0, &greedy(9));
    // OpenAI: a role chunk, content chunks, a finish chunk, the usage chunk, [DONE].
    let events = post_stream(
        &server.url("/v1/chat/completions"),
        &chat_body(
            "t20 t21",
            json!({"max_tokens": 9, "temperature": 0, "stream": true,
                "stream_options": {"include_usage": true}}),
        ),
    )
    .await;
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, expected.text);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], expected.tokens.len());
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null())
    );
    assert_eq!(
        chunks
            .iter()
            .filter(|c| c["choices"][0]["finish_reason"].is_string())
            .count(),
        1
    );
    // Anthropic: its typed events in order, text deltas joining to the same answer.
    let events = post_stream(
        &server.url("/v1/messages"),
        &chat_body(
            "t20 t21",
            json!({"max_tokens": 9, "temperature": 0, "stream": true}),
        ),
    )
    .await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    let deltas = names
        .iter()
        .filter(|n| **n == "content_block_delta")
        .count();
    let mut want = vec!["message_start", "content_block_start"];
    want.extend(std::iter::repeat_n("content_block_delta", deltas));
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want);
    let text: String = events
        .iter()
        .filter(|(n, _)| n.as_deref() == Some("content_block_delta"))
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["delta"]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, expected.text);
    let delta: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(delta["usage"]["output_tokens"], expected.tokens.len());
    // And the same without streaming.
    let (_, message) = post(
        &server.url("/v1/messages"),
        &chat_body("t20 t21", json!({"max_tokens": 9, "temperature": 0})),
    )
    .await;
    assert_eq!(message["content"][0]["text"], expected.text.as_str());
    assert_eq!(message["type"], "message");
}

/// `echo` with `max_tokens` 0 scores a prompt, as evaluation harnesses do: each token's
/// log-prob given those before it, from the model's plain forward pass.
#[tokio::test(flavor = "multi_thread")]
async fn an_echoed_prompt_is_scored_token_by_token() {
    let server = Server::start(|_| {});
    let prompt = "t3 t8 t13 t21 t34";
    let (status, body) = post(
        &server.url("/v1/completions"),
        &json!({"model": MODEL, "prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["text"], prompt);
    assert_eq!(body["usage"]["completion_tokens"], 0);
    let (model, tokenizer) = load(server.dir.path());
    let ids = tokenizer.encode(prompt, true).unwrap();
    let input = tch::Tensor::from_slice(&ids).unsqueeze(0);
    let positions =
        tch::Tensor::arange(ids.len() as i64, (tch::Kind::Int64, tch::Device::Cpu)).unsqueeze(0);
    let logp = model
        .logits(&model.forward(&input, &positions, None, None))
        .log_softmax(-1, tch::Kind::Float)
        .get(0);
    let listed = choice["logprobs"]["token_logprobs"].as_array().unwrap();
    assert_eq!(listed.len(), ids.len());
    assert!(listed[0].is_null());
    for j in 1..ids.len() {
        let want = logp.double_value(&[j as i64 - 1, ids[j]]);
        let got = listed[j].as_f64().unwrap();
        assert!((got - want).abs() < 1e-4, "token {j}: {got} vs {want}");
    }
    // Token j's text starts where the text of the tokens before it ends.
    for j in 0..ids.len() {
        let before = tokenizer.decode(&ids[..j], false).unwrap().chars().count();
        assert_eq!(choice["logprobs"]["text_offset"][j], before);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_errors_in_each_apis_shape() {
    let server = Server::start(|c| c.api_key = Some("sesame".into()));
    let client = reqwest::Client::new();
    let send = |path: &str, body: String, key: Option<(&str, &str)>| {
        let mut request = client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some((name, value)) = key {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry = response.headers().get("retry-after").cloned();
            let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            (status, body, retry)
        }
    };
    let bearer = Some(("authorization", "Bearer sesame"));
    let chat = chat_body("t5", json!({"max_tokens": 3})).to_string();
    // Missing and wrong keys: 401 in both shapes; either header works.
    let (status, body, _) = send("/v1/chat/completions", chat.clone(), None).await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    let (status, body, _) = send("/v1/messages", chat.clone(), Some(("x-api-key", "wrong"))).await;
    assert_eq!(status, 401);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
    let (status, _, _) = send("/v1/chat/completions", chat.clone(), bearer).await;
    assert_eq!(status, 200);
    let (status, _, _) = send("/v1/messages", chat.clone(), Some(("x-api-key", "sesame"))).await;
    assert_eq!(status, 200);
    // Malformed JSON names where it broke; a wrong field names the field.
    let (status, body, _) = send("/v1/chat/completions", "{\"model\": ".into(), bearer).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{body}"
    );
    let wrong =
        json!({"model": MODEL, "messages": [{"role": "user", "content": 5}], "max_tokens": 3});
    let (status, body, _) = send("/v1/messages", wrong.to_string(), bearer).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("messages[0].content"),
        "{body}"
    );
    // Another model: 404 naming the one served.
    let other = json!({"model": "gpt-9", "messages": [{"role": "user", "content": "t5"}]});
    let (status, body, _) = send("/v1/chat/completions", other.to_string(), bearer).await;
    assert_eq!(status, 404);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"tiny\"")
    );
    // Beyond the context: 400 on max_tokens.
    let long = chat_body("t5", json!({"max_tokens": 1000})).to_string();
    let (status, body, _) = send("/v1/chat/completions", long, bearer).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("max_tokens"))
    );
    // Larger than the body limit: 413 in the API's shape.
    let huge = chat_body(&"t5 ".repeat(30_000), json!({})).to_string();
    let (status, body, _) = send("/v1/messages", huge, bearer).await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (413, Some("request_too_large"))
    );
    // Unknown routes and unsupported roles.
    let (status, body, _) = send("/v1/embeddings", "{}".into(), bearer).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let tool = json!({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]});
    let (status, body, _) = send("/v1/chat/completions", tool.to_string(), bearer).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("messages[0].role"))
    );
    // /health and /metrics need no key; the responses above were counted.
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("lincal_http_responses_total{endpoint=\"/v1/messages\",status=\"401\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lincal_http_responses_total{endpoint=\"other\",status=\"404\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        client
            .get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Reads a streamed response's chunks until `done` says so.
async fn read_until(
    response: &mut reqwest::Response,
    mut done: impl FnMut(&str) -> bool,
) -> String {
    let mut seen = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if done(&seen) {
            break;
        }
    }
    seen
}

async fn start_stream(server: &Server, max_tokens: u32) -> reqwest::Response {
    // Greedy decoding of a random model may end at EOS early; `ignore_eos` does not exist,
    // so a stop-free prompt whose greedy answer runs long was chosen (checked below).
    let body = json!({"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": max_tokens,
        "temperature": 0, "stream": true});
    let response = send(&server.url("/v1/completions"), &body).await;
    assert_eq!(response.status(), 200);
    response
}

const LONG_PROMPT: &str = "t4 t5 t6";

async fn metric(server: &Server, name: &str) -> f64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newcomer_joins_the_running_batch_and_a_leaver_frees_its_row() {
    let server = Server::start(|c| c.engine.max_context = 512);
    let (model, tokenizer) = load(server.dir.path());
    let ids = tokenizer.encode(LONG_PROMPT, true).unwrap();
    let long = generate_text(&model, &tokenizer, &[ids], &[0], &greedy(400), None).unwrap();
    assert_eq!(
        long[0].finish_reason,
        lincal_model::FinishReason::Length,
        "the long prompt's greedy answer must run 400 tokens"
    );
    // A runs long; once it has streamed, B arrives and must finish while A still runs.
    let mut a = start_stream(&server, 400).await;
    read_until(&mut a, |seen| seen.matches("data: ").count() >= 3).await;
    let started = Instant::now();
    let (status, b) = post(
        &server.url("/v1/chat/completions"),
        &chat_body("t7", json!({"max_tokens": 3, "temperature": 0})),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    let b_seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        metric(&server, "lincal_requests_running").await,
        1.0,
        "A still runs"
    );
    assert!(metric(&server, "lincal_batch_occupancy_peak").await >= 2.0);
    // A's client goes away: its row is freed without waiting for its 400 tokens.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&server, "lincal_requests_running").await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned sequence kept its row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(&server, "lincal_sequences_cancelled_total").await,
        1.0
    );
    assert!(metric(&server, "lincal_generation_tokens_total").await < 400.0);
    println!("a 3-token request beside a running one took {b_seconds:.3} s");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_turns_requests_away_with_retry_after() {
    let server = Server::start(|c| {
        c.engine.max_batch = 1;
        c.engine.max_queue = 1;
        c.engine.max_context = 512;
    });
    let mut running = start_stream(&server, 400).await;
    read_until(&mut running, |seen| seen.contains("data: ")).await;
    let waiting = start_stream(&server, 400).await;
    // The waiting one holds the single queue place; the next is refused.
    let response = reqwest::Client::new()
        .post(server.url("/v1/messages"))
        .header("content-type", "application/json")
        .body(chat_body("t5", json!({"max_tokens": 2})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    drop(waiting);
    drop(running);
}

/// At shutdown the server stops taking connections and lets in-flight answers finish.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_the_answers_in_flight() {
    let mut server = Server::start(|c| c.engine.max_context = 512);
    let mut stream = start_stream(&server, 200).await;
    read_until(&mut stream, |seen| seen.contains("data: ")).await;
    server.background.signal_shutdown();
    let rest = read_until(&mut stream, |seen| seen.contains("[DONE]")).await;
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    assert!(server.background.stop().is_ok());
    assert!(
        reqwest::get(server.url("/health")).await.is_err(),
        "still listening"
    );
}

/// Past the shutdown timeout, what still runs ends with an error event.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_past_its_timeout_ends_answers_with_an_error() {
    let mut server = Server::start(|c| {
        c.engine.max_context = 512;
        c.shutdown_timeout = Duration::ZERO;
    });
    let mut stream = start_stream(&server, 400).await;
    read_until(&mut stream, |seen| seen.contains("data: ")).await;
    server.background.signal_shutdown();
    let rest = read_until(&mut stream, |_| false).await;
    assert!(rest.contains("shutting down"), "{rest}");
    assert!(!rest.contains("[DONE]"));
    assert!(server.background.stop().is_ok());
}

/// lincal's own OpenAI backend (a `--teacher` config) talks to the server.
#[test]
fn lincals_openai_backend_can_use_the_server_as_a_teacher() {
    use lincal_llm::{BackendConfig, BackendKind, Llm, LlmRequest};
    let server = Server::start(|_| {});
    let mut config = BackendConfig::new(BackendKind::Openai, MODEL);
    config.base_url = Some(server.url("/v1"));
    config.api_key_env = Some("LINCAL_SERVE_TEST_KEY_NEVER_SET".into());
    let client = config.build().unwrap();
    let params = lincal_llm::SamplingParams {
        n: 2,
        temperature: 0.0,
        top_p: None,
        max_tokens: 6,
        stop: Vec::new(),
        seed: 1,
    };
    let request = LlmRequest::chat(vec![lincal_llm::ChatMessage::user("t11 t12")], params);
    let response = client.generate(&[request]).remove(0).unwrap();
    let expected = server.expected("t11 t12", 1, &greedy(6));
    assert_eq!(response.choices.len(), 2);
    for choice in &response.choices {
        assert_eq!(choice.text, expected.text);
    }
}

/// 64 concurrent clients: every well-formed request is answered with its expected greedy
/// text while malformed and oversized requests and clients that hang up mid-answer are mixed
/// in; the server stays up and batches (mean occupancy above 1). Prints latency and rate.
#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_clients_are_all_answered_amid_bad_requests_and_hang_ups() {
    let server = Server::start(|c| {
        c.engine.max_batch = 16;
        c.engine.max_queue = 256;
        c.engine.max_context = 512;
    });
    let prompts: Vec<String> = (0..6)
        .map(|i| format!("t{} t{}", 3 + i, 20 + 3 * i))
        .collect();
    let expected: Vec<String> = prompts
        .iter()
        .map(|p| server.expected(p, 0, &greedy(24)).text)
        .collect();
    let url = server.url("/v1/chat/completions");
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..64usize {
        let (url, prompts, expected) = (url.clone(), prompts.clone(), expected.clone());
        let long_url = server.url("/v1/completions");
        clients.spawn(async move {
            let http = reqwest::Client::new();
            let sent = Instant::now();
            match client % 8 {
                6 => {
                    let response = http.post(&url).body("{\"model\": [").send().await.unwrap();
                    assert_eq!(response.status(), 400);
                    None
                }
                7 if client % 16 == 7 => {
                    let huge = chat_body(&"t5 ".repeat(30_000), json!({}));
                    let response = http.post(&url).body(huge.to_string()).send().await.unwrap();
                    assert_eq!(response.status(), 413);
                    None
                }
                7 => {
                    // Hangs up after the first streamed piece.
                    let mut response = http
                        .post(&long_url)
                        .body(
                            json!({"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 400,
                            "temperature": 0, "stream": true})
                            .to_string(),
                        )
                        .send()
                        .await
                        .unwrap();
                    read_until(&mut response, |seen| seen.contains("data: ")).await;
                    None
                }
                _ => {
                    let which = client % prompts.len();
                    let (status, body) = post(
                        &url,
                        &chat_body(&prompts[which], json!({"max_tokens": 24, "temperature": 0})),
                    )
                    .await;
                    assert_eq!(status, 200, "{body}");
                    assert_eq!(
                        body["choices"][0]["message"]["content"],
                        expected[which].as_str()
                    );
                    let tokens = body["usage"]["completion_tokens"].as_u64().unwrap();
                    Some((sent.elapsed().as_secs_f64(), tokens))
                }
            }
        });
    }
    let mut latencies = Vec::new();
    let mut tokens = 0;
    while let Some(result) = clients.join_next().await {
        if let Some((seconds, n)) = result.expect("a client failed") {
            latencies.push(seconds);
            tokens += n;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(latencies.len(), 48, "every well-formed request answered");
    latencies.sort_by(f64::total_cmp);
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "64 clients (48 answered, 8 malformed, 4 oversized, 4 hung up): p50 {:.3} s, p99 {:.3} s, {:.0} tokens/s",
        quantile(0.5),
        quantile(0.99),
        tokens as f64 / wall
    );
    assert_eq!(
        reqwest::get(server.url("/health")).await.unwrap().status(),
        200
    );
    let mean = metric(&server, "lincal_decode_rows_total").await
        / metric(&server, "lincal_decode_steps_total").await;
    assert!(mean > 1.0, "mean batch occupancy {mean}");
}

/// A client that hangs up while waiting for a whole (not streamed) answer frees its row too.
#[tokio::test(flavor = "multi_thread")]
async fn a_hang_up_before_a_whole_answer_frees_the_row() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(|c| c.engine.max_context = 2048);
    let body = json!({"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 2000, "temperature": 0})
        .to_string();
    let mut connection = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: lincal\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    connection.write_all(request.as_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&server, "lincal_generation_tokens_total").await < 2.0 {
        assert!(Instant::now() < deadline, "the answer never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(connection);
    while metric(&server, "lincal_requests_running").await > 0.0 {
        assert!(Instant::now() < deadline, "the row was never freed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        metric(&server, "lincal_sequences_cancelled_total").await,
        1.0
    );
    assert!(metric(&server, "lincal_generation_tokens_total").await < 2000.0);
}
