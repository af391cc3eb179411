//! Evaluation for lincal: the per-item results of a run, BM25 retrieval for claim checking,
//! run reports and the comparison of runs.
//!
//! - [`examples`]: [`ScoredExample`], one scored QA answer or biography claim, and
//!   `examples.jsonl` ([`read_examples`], [`write_examples`]); [`predictions`] applies the
//!   reference's scoring rules (SPEC 5.2-5.3) before the metrics.
//! - [`retrieval`]: [`KnowledgeIndex`], a tantivy BM25 index of a `{"id", "title", "text"}`
//!   JSONL knowledge source, kept on disk and rebuilt only when the source changes.
//! - [`report`]: [`write_run_report`] writes `results.json`, `report.md`, a self-contained
//!   `report.html` and the plots of one run; metrics come from `lincal_metrics`.
//! - [`compare`](mod@compare): [`compare()`] puts runs on one dataset side by side.
//! - [`paper`]: the paper's headline numbers, shown beside runs on the paper's datasets.
//! - [`qa`] and [`bio`]: the QA and biography evaluation pipelines, resumable stage by stage in
//!   a run directory ([`pipeline`] holds what they share); [`readers`] and [`judges`] are the
//!   roles of a QA run, [`datasets`] reads the evaluation sets.

pub mod bio;
pub mod compare;
pub mod datasets;
mod error;
pub mod examples;
mod files;
pub mod judges;
pub mod paper;
pub mod pipeline;
pub mod qa;
pub mod readers;
mod render;
pub mod report;
pub mod retrieval;

pub use compare::{ComparedPair, ComparedRun, Comparison, compare};
pub use error::EvalError;
pub use examples::{
    ClaimExample, Counts, ExampleKind, QaExample, ScoredExample, Stage, StageFailure,
    check_examples, predictions, read_examples, write_examples,
};
pub use pipeline::{
    EvalOptions, GenerationSettings, ItemFailure, Method, PipelineError, Policy, Progress,
    ProgressEvent, PromptStyle, RunOutcome, RunStatus, Summarizer, TeacherSettings,
};
pub use report::{
    PerResponse, ReportOptions, RunResults, RunSettings, read_results, write_run_report,
};
pub use retrieval::{IndexLocation, IndexStatus, KnowledgeIndex, Passage, SourceSummary};
