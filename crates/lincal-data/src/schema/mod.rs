//! The reference dataset (HF `tatsu-lab/linguistic_calibration`, SPEC section 4): typed rows of
//! its `sft_training`, `reward_model_training` and `*_paragraph_generation` splits read from the
//! CSV files or their Parquet conversion, the join with TriviaQA, plain JSONL example formats,
//! the conversion of rows into SFT and reward-model examples, and question-id train/eval splits.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::Result;

mod examples;
pub mod jsonl;
pub mod pylit;
mod split;
mod table;
mod trivia_qa;
pub mod write;

pub use examples::{
    PARAGRAPH_CHAR_LIMIT, PpoPrompt, ReaderPromptInput, RewardExample, SftExample, SftTarget,
    binary_correctness_examples, cut_paragraph, extract_answers_examples, extract_answers_target,
    forecast_probs_examples, sft_examples,
};
pub use split::{
    REWARD_MODEL_EVAL_QUESTIONS, RoleSize, SFT_EVAL_QUESTIONS, SPLIT_SEED, Split,
    split_by_question_id, split_roles,
};
pub use trivia_qa::{Joined, TriviaQa, TriviaQuestion, WithQuestion};

/// Anything that belongs to one question; train/eval splits and the TriviaQA join go by this id.
pub trait HasQuestionId {
    fn question_id(&self) -> &str;
}

/// A row of the `sft_training` split. Missing cells (empty or NaN in the file) are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct SftTrainingRow {
    pub question_id: String,
    pub paragraph_generation_prompt: Option<String>,
    /// Target of LC SFT: Claude's summary of eight sampled paragraphs.
    pub claude_summary: Option<String>,
    /// Llama 2 7B 8-shot ICL paragraphs; the first one is the Factuality SFT target.
    /// `None` items were `None`/`nan` in the stored list.
    pub icl_generated_paragraphs: Option<Vec<Option<String>>>,
    /// Why the stored `icl_generated_paragraphs` is not a list (file, line and what is wrong),
    /// when it is not: only Factuality SFT needs the column, and drops such rows (SPEC 1.3).
    pub icl_generated_paragraphs_error: Option<String>,
    /// Target of Claude Distill.
    pub claude_generated_paragraph: Option<String>,
}

/// A row of the `reward_model_training` split.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardModelTrainingRow {
    pub question_id: String,
    pub lc_sft_generated_paragraph: Option<String>,
    /// Ground-truth answer first, then the answers Claude extracted from the paragraph.
    pub lc_sft_ground_truth_and_extracted_answers: Option<Vec<Option<String>>>,
    /// Claude's probability for each answer above (NaN where the stored list had `nan`).
    pub lc_sft_forecasted_probs: Option<Vec<f64>>,
    pub factuality_sft_generated_paragraph: Option<String>,
    /// Claude's 0/1 judgement of the Factuality SFT paragraph.
    pub factuality_sft_binary_correctness: Option<f64>,
}

/// A row of any `*_paragraph_generation` split (TriviaQA, Jeopardy, SciQ, BioASQ).
#[derive(Debug, Clone, PartialEq)]
pub struct ParagraphGenerationRow {
    pub question_id: String,
    pub paragraph_generation_prompt: String,
    /// The rephrased question; only the Jeopardy split has this column.
    pub question: Option<String>,
}

impl HasQuestionId for SftTrainingRow {
    fn question_id(&self) -> &str {
        &self.question_id
    }
}

impl HasQuestionId for RewardModelTrainingRow {
    fn question_id(&self) -> &str {
        &self.question_id
    }
}

impl HasQuestionId for ParagraphGenerationRow {
    fn question_id(&self) -> &str {
        &self.question_id
    }
}

/// The columns of `sft_training`, in the order of the fields of [`SftTrainingRow`].
pub const SFT_TRAINING_COLUMNS: [&str; 5] = [
    "question_id",
    "paragraph_generation_prompt",
    "claude_summary",
    "icl_generated_paragraphs",
    "claude_generated_paragraph",
];

/// The columns of `reward_model_training`, in the order of the fields of
/// [`RewardModelTrainingRow`].
pub const REWARD_MODEL_TRAINING_COLUMNS: [&str; 6] = [
    "question_id",
    "lc_sft_generated_paragraph",
    "lc_sft_ground_truth_and_extracted_answers",
    "lc_sft_forecasted_probs",
    "factuality_sft_generated_paragraph",
    "factuality_sft_binary_correctness",
];

/// Reads `sft_training` (`.csv`, or `.parquet` from the HF conversion).
pub fn read_sft_training(path: &Path) -> Result<Vec<SftTrainingRow>> {
    let mut rows = Vec::new();
    table::for_each_row(
        path,
        &SFT_TRAINING_COLUMNS,
        SFT_TRAINING_COLUMNS.len(),
        |row| {
            let (icl_generated_paragraphs, icl_generated_paragraphs_error) =
                match row.cell(3).text_list() {
                    Ok(list) => (list, None),
                    Err(error) => (None, Some(error.to_string())),
                };
            rows.push(SftTrainingRow {
                question_id: row.cell(0).required_text()?,
                paragraph_generation_prompt: row.cell(1).text(),
                claude_summary: row.cell(2).text(),
                icl_generated_paragraphs,
                icl_generated_paragraphs_error,
                claude_generated_paragraph: row.cell(4).text(),
            });
            Ok(())
        },
    )?;
    Ok(rows)
}

/// Reads `reward_model_training` (`.csv` or `.parquet`).
pub fn read_reward_model_training(path: &Path) -> Result<Vec<RewardModelTrainingRow>> {
    let mut rows = Vec::new();
    table::for_each_row(
        path,
        &REWARD_MODEL_TRAINING_COLUMNS,
        REWARD_MODEL_TRAINING_COLUMNS.len(),
        |row| {
            rows.push(RewardModelTrainingRow {
                question_id: row.cell(0).required_text()?,
                lc_sft_generated_paragraph: row.cell(1).text(),
                lc_sft_ground_truth_and_extracted_answers: row.cell(2).text_list()?,
                lc_sft_forecasted_probs: row.cell(3).number_list()?,
                factuality_sft_generated_paragraph: row.cell(4).text(),
                factuality_sft_binary_correctness: row.cell(5).number()?,
            });
            Ok(())
        },
    )?;
    Ok(rows)
}

/// Reads a `*_paragraph_generation` split (`.csv` or `.parquet`); every row needs its prompt.
pub fn read_paragraph_generation(path: &Path) -> Result<Vec<ParagraphGenerationRow>> {
    let columns = ["question_id", "paragraph_generation_prompt", "question"];
    let mut rows = Vec::new();
    table::for_each_row(path, &columns, 2, |row| {
        rows.push(ParagraphGenerationRow {
            question_id: row.cell(0).required_text()?,
            paragraph_generation_prompt: row.cell(1).required_text()?,
            question: row.cell(2).text(),
        });
        Ok(())
    })?;
    Ok(rows)
}

/// How many input rows were kept and how many were skipped, by reason. Conversions and source
/// builders return one so that the caller can log what was left out and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub kept: usize,
    pub skipped: BTreeMap<&'static str, usize>,
}

impl Tally {
    pub fn keep(&mut self) {
        self.kept += 1;
    }

    pub fn skip(&mut self, reason: &'static str) {
        *self.skipped.entry(reason).or_default() += 1;
    }

    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kept {} of {} rows",
            self.kept,
            self.kept + self.skipped_total()
        )?;
        if !self.skipped.is_empty() {
            let reasons: Vec<String> = self
                .skipped
                .iter()
                .map(|(reason, n)| format!("{reason}: {n}"))
                .collect();
            write!(f, "; skipped {}", reasons.join(", "))?;
        }
        Ok(())
    }
}
