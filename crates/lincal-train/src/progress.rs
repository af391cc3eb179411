//! Progress where no terminal shows a bar (a log file, CI): lines on stderr after the first
//! unit of work, at most every 30 s, and after the last, so a long run is never silent.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

const PROGRESS_LINE_INTERVAL: Duration = Duration::from_secs(30);

/// When a progress line is due, and the rate and estimate it reports.
#[derive(Debug)]
pub struct ProgressLines {
    enabled: bool,
    started: Instant,
    first: u64,
    last_line: Option<Instant>,
}

impl ProgressLines {
    /// Lines when `wanted` and stderr is no terminal (a terminal has the bar); `first` is the
    /// count already done when this run started (a resume's), left out of the rate.
    pub fn for_stderr(wanted: bool, first: u64) -> Self {
        Self::new(wanted && !std::io::stderr().is_terminal(), first)
    }

    fn new(enabled: bool, first: u64) -> Self {
        ProgressLines {
            enabled,
            started: Instant::now(),
            first,
            last_line: None,
        }
    }

    /// Whether a line is due with `done` of `total`; if so, it counts as written.
    pub fn due(&mut self, done: u64, total: u64) -> bool {
        let due = self.enabled
            && (done >= total
                || self
                    .last_line
                    .is_none_or(|at| at.elapsed() >= PROGRESS_LINE_INTERVAL));
        if due {
            self.last_line = Some(Instant::now());
        }
        due
    }

    /// The rate so far and the estimate of the rest: "2.1 s/step, 190 s left" when a unit takes
    /// a second or more, else "12.5 requests/s, 40 s left" (`unit` is singular).
    pub fn rate(&self, done: u64, total: u64, unit: &str) -> String {
        let count = done.saturating_sub(self.first).max(1);
        let per_unit = self.started.elapsed().as_secs_f64() / count as f64;
        let left = per_unit * total.saturating_sub(done) as f64;
        if per_unit >= 1.0 || per_unit == 0.0 {
            format!("{per_unit:.1} s/{unit}, {left:.0} s left")
        } else {
            format!("{:.1} {unit}s/s, {left:.0} s left", 1.0 / per_unit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_first_then_after_the_interval_and_at_the_end() {
        let mut lines = ProgressLines::new(true, 0);
        assert!(lines.due(1, 10));
        assert!(!lines.due(2, 10));
        assert!(lines.due(10, 10));
        lines.last_line = Some(Instant::now() - PROGRESS_LINE_INTERVAL);
        assert!(lines.due(3, 10));
        assert!(!ProgressLines::new(false, 0).due(10, 10));
    }

    #[test]
    fn the_rate_reads_per_unit_or_per_second_and_leaves_out_resumed_work() {
        // 4 s for the 2 steps after a resume at step 8 of 20: 2 s each, 10 left → 20 s.
        let lines = ProgressLines {
            started: Instant::now() - Duration::from_secs(4),
            ..ProgressLines::new(true, 8)
        };
        assert_eq!(lines.rate(10, 20, "step"), "2.0 s/step, 20 s left");
        // 4 s for 40 requests: 10 a second, 60 left → 6 s.
        let lines = ProgressLines {
            started: Instant::now() - Duration::from_secs(4),
            ..ProgressLines::new(true, 0)
        };
        assert_eq!(lines.rate(40, 100, "request"), "10.0 requests/s, 6 s left");
    }
}
