//! Progress of the commands' long loops: a bar on a terminal, and lines without one (a log
//! file, CI), when [`ProgressLines`] says one is due.

use std::sync::{Arc, Mutex, PoisonError};

use indicatif::{ProgressBar, ProgressStyle};
use lincal_train::progress::ProgressLines;

/// An indicatif bar that also writes progress lines where stderr is no terminal.
#[derive(Clone)]
pub struct ProgressDisplay {
    bar: ProgressBar,
    lines: Arc<Mutex<ProgressLines>>,
    label: String,
    unit: &'static str,
}

impl ProgressDisplay {
    /// A bar drawn with `template` over `total` units of work (`unit`, singular), `done` of
    /// them done before this run; lines start with `label`, which is also the bar's `{prefix}`.
    pub fn new(label: String, unit: &'static str, total: u64, done: u64, template: &str) -> Self {
        let bar = ProgressBar::new(total)
            .with_style(ProgressStyle::with_template(template).expect("valid template"));
        bar.set_position(done);
        bar.set_prefix(label.clone());
        ProgressDisplay {
            bar,
            lines: Arc::new(Mutex::new(ProgressLines::for_stderr(true, done))),
            label,
            unit,
        }
    }

    pub fn inc(&self, by: u64) {
        self.bar.inc(by);
        let (done, total) = (self.bar.position(), self.bar.length().unwrap_or(0));
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.due(done, total) {
            let message = self.bar.message();
            let message = if message.is_empty() {
                String::new()
            } else {
                format!("; {message}")
            };
            eprintln!(
                "{}: {done}/{total} {}s, {}{message}",
                self.label,
                self.unit,
                lines.rate(done, total, self.unit)
            );
        }
    }

    pub fn inc_length(&self, by: u64) {
        self.bar.inc_length(by);
    }

    pub fn set_message(&self, message: String) {
        self.bar.set_message(message);
    }

    pub fn finish_with_message(&self, message: String) {
        self.bar.finish_with_message(message);
    }

    pub fn finish(&self) {
        self.bar.finish();
    }

    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}
