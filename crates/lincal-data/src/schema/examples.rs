//! Turning reference rows into training examples (SPEC 1.3, 1.5, 1.6 and the Factuality RM).
//! Prompts are rendered by closures so that this module does not depend on the templates: the
//! caller passes the template of the run.

use serde::{Deserialize, Serialize};

use std::path::Path;

use super::{
    HasQuestionId, ParagraphGenerationRow, RewardModelTrainingRow, SftTrainingRow, Tally,
    WithQuestion,
};
use crate::Result;

/// Paragraphs are cut to this many characters (Unicode scalar values, as Python slices strings)
/// before they go into a reward-model prompt (SPEC 1.6).
pub const PARAGRAPH_CHAR_LIMIT: usize = 2000;

/// A supervised example: the loss is on `target` only. Also the JSONL format
/// `{"prompt", "target"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    /// Groups examples for the train/eval split; optional in JSONL files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_id: Option<String>,
    pub prompt: String,
    pub target: String,
}

/// A reward-model example with a soft label in [0, 1]. Also the JSONL format `{"prompt", "label"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardExample {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_id: Option<String>,
    pub prompt: String,
    pub label: f64,
}

/// A PPO prompt: the open-ended query the policy answers, and the question and gold answer
/// its paragraph is scored against (SPEC 1.7). Also the JSONL format
/// `{"query", "question", "answer"}` with an optional `"question_id"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoPrompt {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_id: Option<String>,
    pub query: String,
    pub question: String,
    pub answer: String,
}

impl PpoPrompt {
    /// Prompts from a `*_paragraph_generation` split joined with TriviaQA (SPEC 2.2): the
    /// query is `paragraph_generation_prompt`, the question the split's own (Jeopardy) or
    /// TriviaQA's, the answer TriviaQA's `answer.value`.
    pub fn from_joined(rows: Vec<WithQuestion<ParagraphGenerationRow>>) -> Vec<PpoPrompt> {
        rows.into_iter()
            .map(|WithQuestion { row, question }| PpoPrompt {
                question_id: Some(row.question_id),
                query: row.paragraph_generation_prompt,
                question: row.question.unwrap_or(question.question),
                answer: question.answer,
            })
            .collect()
    }

    /// Reads `{"query", "question", "answer"}` lines; errors name the file and line.
    pub fn read_jsonl(path: &Path) -> Result<Vec<PpoPrompt>> {
        super::jsonl::read_jsonl(path, |prompt: &PpoPrompt| {
            for (field, value) in [
                ("query", &prompt.query),
                ("question", &prompt.question),
                ("answer", &prompt.answer),
            ] {
                if value.trim().is_empty() {
                    return Err(format!("`{field}` is empty"));
                }
            }
            Ok(())
        })
    }
}

/// An example without a question id is its own group, keyed by its prompt: equal prompts stay
/// on the same side of a split.
impl HasQuestionId for SftExample {
    fn question_id(&self) -> &str {
        self.question_id.as_deref().unwrap_or(&self.prompt)
    }
}

impl HasQuestionId for RewardExample {
    fn question_id(&self) -> &str {
        self.question_id.as_deref().unwrap_or(&self.prompt)
    }
}

/// Which column of `sft_training` is the target (the reference's `sft_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SftTarget {
    /// `claude_summary`.
    LcSft,
    /// The first of `icl_generated_paragraphs`.
    FactualitySft,
    /// `claude_generated_paragraph`.
    ClaudeDistill,
}

/// What a reader or reward-model prompt is filled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderPromptInput<'a> {
    pub question: &'a str,
    /// The generated paragraph, already cut to [`PARAGRAPH_CHAR_LIMIT`] for reward models.
    pub paragraph: &'a str,
    /// The answer candidate (ForecastProbs) or the true answer (binary correctness); empty for
    /// ExtractAnswers.
    pub answer: &'a str,
}

const MISSING_QUESTION_PROMPT: &str = "missing paragraph_generation_prompt";
const MISSING_TARGET: &str = "missing target";
const UNPARSABLE_ICL_PARAGRAPHS: &str = "icl_generated_paragraphs is not a list literal";
const MISSING_PARAGRAPH: &str = "missing paragraph";
const MISSING_LIST: &str = "missing answers or probabilities list";
const EMPTY_LIST: &str = "empty answers or probabilities list";
const NAN_IN_LIST: &str = "NaN in answers or probabilities list";
const LENGTH_MISMATCH: &str = "answers and probabilities differ in length";
const MISSING_LABEL: &str = "missing label";
const LABEL_OUT_OF_RANGE: &str = "label outside [0, 1]";

/// Why a row gives no example: one of the reasons above.
type Skip = &'static str;

/// The examples of every row, made by `examples_of`, which gives a row's examples or the reason
/// the row is skipped; the tally counts both.
fn collect_examples<R, E>(
    rows: &[R],
    mut examples_of: impl FnMut(&R) -> Result<std::result::Result<Vec<E>, Skip>>,
) -> Result<(Vec<E>, Tally)> {
    let mut examples = Vec::new();
    let mut tally = Tally::default();
    for row in rows {
        match examples_of(row)? {
            Ok(row_examples) => {
                examples.extend(row_examples);
                tally.keep();
            }
            Err(reason) => tally.skip(reason),
        }
    }
    Ok((examples, tally))
}

/// SFT examples from `sft_training`: prompt = the rendered `paragraph_generation_prompt`,
/// target = the column chosen by `target`. Rows missing either are skipped and counted.
pub fn sft_examples(
    rows: &[SftTrainingRow],
    target: SftTarget,
    render_prompt: &dyn Fn(&str) -> Result<String>,
) -> Result<(Vec<SftExample>, Tally)> {
    collect_examples(rows, |row| {
        let Some(query) = &row.paragraph_generation_prompt else {
            return Ok(Err(MISSING_QUESTION_PROMPT));
        };
        if target == SftTarget::FactualitySft && row.icl_generated_paragraphs_error.is_some() {
            return Ok(Err(UNPARSABLE_ICL_PARAGRAPHS));
        }
        let text = match target {
            SftTarget::LcSft => row.claude_summary.as_ref(),
            SftTarget::FactualitySft => row
                .icl_generated_paragraphs
                .as_ref()
                .and_then(|p| p.first()?.as_ref()),
            SftTarget::ClaudeDistill => row.claude_generated_paragraph.as_ref(),
        };
        let Some(text) = text else {
            return Ok(Err(MISSING_TARGET));
        };
        Ok(Ok(vec![SftExample {
            question_id: Some(row.question_id.clone()),
            prompt: render_prompt(query)?,
            target: text.clone(),
        }]))
    })
}

/// The answers and probabilities of a row, when both lists are usable (SPEC 1.5 and 1.6: rows
/// with a missing list, an empty list or a NaN anywhere are skipped).
fn answers_and_probs(
    row: &RewardModelTrainingRow,
) -> std::result::Result<(&str, Vec<&str>, &[f64]), Skip> {
    let paragraph = row
        .lc_sft_generated_paragraph
        .as_deref()
        .ok_or(MISSING_PARAGRAPH)?;
    let (Some(answers), Some(probs)) = (
        &row.lc_sft_ground_truth_and_extracted_answers,
        &row.lc_sft_forecasted_probs,
    ) else {
        return Err(MISSING_LIST);
    };
    if answers.is_empty() || probs.is_empty() {
        return Err(EMPTY_LIST);
    }
    let answers = answers
        .iter()
        .map(Option::as_deref)
        .collect::<Option<Vec<&str>>>()
        .ok_or(NAN_IN_LIST)?;
    if probs.iter().any(|p| p.is_nan()) {
        return Err(NAN_IN_LIST);
    }
    Ok((paragraph, answers, probs))
}

/// ExtractAnswers SFT examples (SPEC 1.5): the target is `No Answer` when only the ground truth
/// is listed, otherwise the extracted answers, de-duplicated in order, joined with "; ".
pub fn extract_answers_examples(
    rows: &[WithQuestion<RewardModelTrainingRow>],
    render_prompt: &dyn Fn(&ReaderPromptInput) -> Result<String>,
) -> Result<(Vec<SftExample>, Tally)> {
    collect_examples(rows, |WithQuestion { row, question }| {
        let (paragraph, answers, _) = match answers_and_probs(row) {
            Ok(usable) => usable,
            Err(reason) => return Ok(Err(reason)),
        };
        let target = extract_answers_target(&answers[1..]);
        let input = ReaderPromptInput {
            question: &question.question,
            paragraph,
            answer: "",
        };
        Ok(Ok(vec![SftExample {
            question_id: Some(row.question_id.clone()),
            prompt: render_prompt(&input)?,
            target,
        }]))
    })
}

/// The ExtractAnswers target for the answers extracted from a paragraph (SPEC 1.5): `No
/// Answer` when there are none, otherwise the answers, de-duplicated in order, joined with "; ".
pub fn extract_answers_target<S: AsRef<str>>(extracted: &[S]) -> String {
    let mut unique: Vec<&str> = Vec::new();
    for answer in extracted {
        if !unique.contains(&answer.as_ref()) {
            unique.push(answer.as_ref());
        }
    }
    if unique.is_empty() {
        "No Answer".to_string()
    } else {
        unique.join("; ")
    }
}

/// ForecastProbs reward-model examples (SPEC 1.6): one per (paragraph, answer candidate), the
/// ground truth included, labelled with Claude's probability. A row with any probability
/// outside [0, 1] is skipped whole.
pub fn forecast_probs_examples(
    rows: &[WithQuestion<RewardModelTrainingRow>],
    render_prompt: &dyn Fn(&ReaderPromptInput) -> Result<String>,
) -> Result<(Vec<RewardExample>, Tally)> {
    collect_examples(rows, |WithQuestion { row, question }| {
        let (paragraph, answers, probs) = match answers_and_probs(row) {
            Ok(usable) => usable,
            Err(reason) => return Ok(Err(reason)),
        };
        if answers.len() != probs.len() {
            return Ok(Err(LENGTH_MISMATCH));
        }
        if probs.iter().any(|p| !(0.0..=1.0).contains(p)) {
            return Ok(Err(LABEL_OUT_OF_RANGE));
        }
        let paragraph = cut_paragraph(paragraph);
        let examples = answers
            .iter()
            .zip(probs)
            .map(|(answer, &label)| {
                let input = ReaderPromptInput {
                    question: &question.question,
                    paragraph,
                    answer,
                };
                Ok(RewardExample {
                    question_id: Some(row.question_id.clone()),
                    prompt: render_prompt(&input)?,
                    label,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Ok(examples))
    })
}

/// Factuality reward-model examples: the Factuality SFT paragraph with the true answer
/// (TriviaQA `answer.value`), labelled with Claude's 0/1 correctness judgement.
pub fn binary_correctness_examples(
    rows: &[WithQuestion<RewardModelTrainingRow>],
    render_prompt: &dyn Fn(&ReaderPromptInput) -> Result<String>,
) -> Result<(Vec<RewardExample>, Tally)> {
    collect_examples(rows, |WithQuestion { row, question }| {
        let Some(paragraph) = &row.factuality_sft_generated_paragraph else {
            return Ok(Err(MISSING_PARAGRAPH));
        };
        let Some(label) = row.factuality_sft_binary_correctness else {
            return Ok(Err(MISSING_LABEL));
        };
        if !(0.0..=1.0).contains(&label) {
            return Ok(Err(LABEL_OUT_OF_RANGE));
        }
        let input = ReaderPromptInput {
            question: &question.question,
            paragraph: cut_paragraph(paragraph),
            answer: &question.answer,
        };
        Ok(Ok(vec![RewardExample {
            question_id: Some(row.question_id.clone()),
            prompt: render_prompt(&input)?,
            label,
        }]))
    })
}

/// The first [`PARAGRAPH_CHAR_LIMIT`] characters of a paragraph: what the reader and reward
/// models were trained on and are shown (SPEC 1.6).
pub fn cut_paragraph(paragraph: &str) -> &str {
    match paragraph.char_indices().nth(PARAGRAPH_CHAR_LIMIT) {
        Some((end, _)) => &paragraph[..end],
        None => paragraph,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_paragraph_counts_characters_not_bytes() {
        let paragraph = "é".repeat(PARAGRAPH_CHAR_LIMIT + 5);
        assert_eq!(
            cut_paragraph(&paragraph).chars().count(),
            PARAGRAPH_CHAR_LIMIT
        );
        assert_eq!(cut_paragraph("short"), "short");
    }
}
