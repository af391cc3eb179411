//! What the server counts, and its Prometheus text at `/metrics`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Tokens per second are averaged over this much recent time.
const RATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Stats {
    /// Sequences queued for a decode row.
    pub waiting: AtomicUsize,
    /// Sequences in decode rows.
    pub running: AtomicUsize,
    pub shutting_down: AtomicBool,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub finished: AtomicU64,
    /// Sequences whose client went away before they ended.
    pub cancelled: AtomicU64,
    pub decode_steps: AtomicU64,
    /// Rows decoded, summed over steps: divided by the steps, the mean batch occupancy.
    pub decode_rows: AtomicU64,
    /// Rows of the last decode step.
    pub occupancy: AtomicUsize,
    pub occupancy_peak: AtomicUsize,
    pub decode_seconds: Seconds,
    pub prefill_seconds: Seconds,
    /// (when, tokens) of recent decode steps, for the token rate.
    recent: Mutex<VecDeque<(Instant, usize)>>,
    /// Responses by (endpoint, status).
    responses: Mutex<BTreeMap<(String, u16), u64>>,
}

/// A float that only grows, kept as bits.
#[derive(Default)]
pub struct Seconds(AtomicU64);

impl Seconds {
    pub fn add(&self, seconds: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + seconds).to_bits())
            });
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

impl Stats {
    /// A decode step over `rows` sequences that took `seconds`.
    pub fn record_step(&self, rows: usize, seconds: f64) {
        self.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.decode_rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.occupancy.store(rows, Ordering::Relaxed);
        self.occupancy_peak.fetch_max(rows, Ordering::Relaxed);
        self.decode_seconds.add(seconds);
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.push_back((now, rows));
        while recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            recent.pop_front();
        }
    }

    /// Decode tokens per second over the last [`RATE_WINDOW`].
    pub fn tokens_per_second(&self) -> f64 {
        let now = Instant::now();
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let tokens: usize = recent
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW)
            .map(|(_, n)| n)
            .sum();
        tokens as f64 / RATE_WINDOW.as_secs_f64()
    }

    pub fn record_response(&self, endpoint: &str, status: u16) {
        let mut responses = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        *responses.entry((endpoint.to_string(), status)).or_default() += 1;
    }

    /// The Prometheus text exposition of everything above.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let load_usize = |a: &AtomicUsize| a.load(Ordering::Relaxed).to_string();
        metric(
            "lincal_requests_waiting",
            "gauge",
            "Sequences queued for a decode row.",
            load_usize(&self.waiting),
        );
        metric(
            "lincal_requests_running",
            "gauge",
            "Sequences being decoded.",
            load_usize(&self.running),
        );
        metric(
            "lincal_prompt_tokens_total",
            "counter",
            "Prompt tokens prefilled.",
            load(&self.prompt_tokens),
        );
        metric(
            "lincal_generation_tokens_total",
            "counter",
            "Tokens generated.",
            load(&self.generated_tokens),
        );
        metric(
            "lincal_sequences_finished_total",
            "counter",
            "Sequences that ended.",
            load(&self.finished),
        );
        metric(
            "lincal_sequences_cancelled_total",
            "counter",
            "Sequences whose client went away first.",
            load(&self.cancelled),
        );
        metric(
            "lincal_decode_steps_total",
            "counter",
            "Batched decode steps.",
            load(&self.decode_steps),
        );
        metric(
            "lincal_decode_rows_total",
            "counter",
            "Sequences decoded, summed over steps (divide by the steps for the mean batch occupancy).",
            load(&self.decode_rows),
        );
        metric(
            "lincal_batch_occupancy",
            "gauge",
            "Sequences in the last decode step.",
            load_usize(&self.occupancy),
        );
        metric(
            "lincal_batch_occupancy_peak",
            "gauge",
            "Most sequences in one decode step.",
            load_usize(&self.occupancy_peak),
        );
        metric(
            "lincal_decode_seconds_total",
            "counter",
            "Time in decode steps.",
            self.decode_seconds.get().to_string(),
        );
        metric(
            "lincal_prefill_seconds_total",
            "counter",
            "Time in prefills.",
            self.prefill_seconds.get().to_string(),
        );
        metric(
            "lincal_generation_tokens_per_second",
            "gauge",
            "Decode tokens per second over the last 10 seconds.",
            format!("{:.3}", self.tokens_per_second()),
        );
        let _ = writeln!(
            out,
            "# HELP lincal_http_responses_total HTTP responses by endpoint and status.\n# TYPE lincal_http_responses_total counter"
        );
        let responses = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        for ((endpoint, status), count) in responses.iter() {
            let _ = writeln!(
                out,
                "lincal_http_responses_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {count}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_occupancy_and_responses() {
        let stats = Stats::default();
        stats.record_step(3, 0.5);
        stats.record_step(1, 0.25);
        stats.record_response("/v1/chat/completions", 200);
        stats.record_response("/v1/chat/completions", 200);
        stats.record_response("/v1/messages", 429);
        let text = stats.render();
        for line in [
            "lincal_decode_steps_total 2",
            "lincal_decode_rows_total 4",
            "lincal_batch_occupancy 1",
            "lincal_batch_occupancy_peak 3",
            "lincal_decode_seconds_total 0.75",
            // 4 tokens in the 10 s window.
            "lincal_generation_tokens_per_second 0.400",
            "lincal_http_responses_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2",
            "lincal_http_responses_total{endpoint=\"/v1/messages\",status=\"429\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
    }
}
