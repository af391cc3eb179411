//! A load generator for `lincal bench serve`: concurrent streaming clients against a server,
//! measuring time to first token, latency and aggregate tokens per second.

use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The served model's name.
    pub model: String,
    /// Clients sending at once.
    pub clients: usize,
    /// Requests each client sends, one after another.
    pub requests_per_client: usize,
    /// Tokens of each random prompt.
    pub prompt_len: usize,
    pub max_tokens: i64,
    pub temperature: f64,
    /// Prompt token ids are drawn below this.
    pub vocab: i64,
    pub seed: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub clients: usize,
    pub requests: usize,
    pub completion_tokens: u64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub ttft_p50: f64,
    pub ttft_p99: f64,
    pub latency_p50: f64,
    pub latency_p99: f64,
}

/// The `q` quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Runs `settings.clients` clients against the server at `base` (`http://host:port`), each
/// streaming `/v1/completions` requests of random token prompts.
pub async fn drive(base: &str, settings: &LoadSettings) -> Result<LoadReport, String> {
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/completions");
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..settings.clients {
        let (http, url, settings) = (http.clone(), url.clone(), settings.clone());
        clients.spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(settings.seed + client as u64);
            let mut timings = Vec::new();
            for request in 0..settings.requests_per_client {
                let prompt: Vec<i64> = (0..settings.prompt_len)
                    .map(|_| rng.random_range(0..settings.vocab))
                    .collect();
                let body = serde_json::json!({
                    "model": settings.model, "prompt": prompt, "max_tokens": settings.max_tokens,
                    "temperature": settings.temperature, "seed": settings.seed + request as u64,
                    "stream": true, "stream_options": {"include_usage": true},
                });
                timings.push(one_request(&http, &url, &body).await?);
            }
            Ok::<_, String>(timings)
        });
    }
    let mut ttft = Vec::new();
    let mut latency = Vec::new();
    let mut completion_tokens = 0;
    while let Some(joined) = clients.join_next().await {
        for (first, last, tokens) in joined.map_err(|e| e.to_string())?? {
            ttft.push(first);
            latency.push(last);
            completion_tokens += tokens;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    ttft.sort_by(f64::total_cmp);
    latency.sort_by(f64::total_cmp);
    Ok(LoadReport {
        clients: settings.clients,
        requests: latency.len(),
        completion_tokens,
        seconds,
        tokens_per_second: completion_tokens as f64 / seconds,
        ttft_p50: quantile(&ttft, 0.5),
        ttft_p99: quantile(&ttft, 0.99),
        latency_p50: quantile(&latency, 0.5),
        latency_p99: quantile(&latency, 0.99),
    })
}

/// Seconds to the first streamed text, seconds to the end, and completion tokens.
async fn one_request(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<(f64, f64, u64), String> {
    let sent = Instant::now();
    let mut response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        let status = response.status();
        return Err(format!(
            "{status}: {}",
            response.text().await.unwrap_or_default()
        ));
    }
    let mut first = None;
    let mut seen = String::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        let chunk = String::from_utf8_lossy(&chunk);
        // Keep-alive comments are not tokens.
        if chunk.contains("data: ") {
            first.get_or_insert_with(|| sent.elapsed().as_secs_f64());
        }
        seen.push_str(&chunk);
    }
    let last = sent.elapsed().as_secs_f64();
    let tokens = seen
        .split("data: ")
        .filter_map(|event| serde_json::from_str::<serde_json::Value>(event.trim()).ok())
        .find_map(|event| event["usage"]["completion_tokens"].as_u64())
        .ok_or_else(|| format!("the stream had no usage:\n{seen}"))?;
    Ok((first.unwrap_or(last), last, tokens))
}
