//! Writing the reference schema: `sft_training` and `reward_model_training` CSV files as the HF
//! dataset stores them (lists as Python literals, as pandas writes `str(list)`), and TriviaQA
//! questions as JSON Lines with the HF field names, which [`super::TriviaQa::load`] joins. What
//! these write, the readers of this module read back unchanged.

use std::path::Path;

use serde::Serialize;

use super::pylit::python_float_repr;
use super::{
    REWARD_MODEL_TRAINING_COLUMNS, RewardModelTrainingRow, SFT_TRAINING_COLUMNS, SftTrainingRow,
    TriviaQuestion,
};
use crate::Result;
use crate::schema::jsonl::{write_atomically, write_jsonl};

/// Python's `repr()` of a string: single quotes unless the text holds a single quote and no
/// double quote; backslashes, the quote and control characters escaped.
pub fn python_str_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `str(list)` of texts, `None` items written as `None`.
pub fn python_text_list(items: &[Option<String>]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|item| item.as_deref().map_or("None".to_string(), python_str_repr))
        .collect();
    format!("[{}]", items.join(", "))
}

/// `str(list)` of floats (`nan` for NaN).
pub fn python_float_list(items: &[f64]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|&value| python_float_repr(value))
        .collect();
    format!("[{}]", items.join(", "))
}

/// Writes `rows` as CSV under `header`, atomically, each row's cells given by `cells`; `None`
/// cells are left empty (pandas' NaN).
fn write_csv<R, const N: usize>(
    path: &Path,
    header: &[&str; N],
    rows: &[R],
    cells: impl Fn(&R) -> [Option<String>; N],
) -> Result<()> {
    write_atomically(path, |out| {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record(header)?;
        for row in rows {
            writer.write_record(cells(row).iter().map(|cell| cell.as_deref().unwrap_or("")))?;
        }
        writer.flush()
    })
}

/// Writes `sft_training` rows as the reference CSV.
pub fn write_sft_training(path: &Path, rows: &[SftTrainingRow]) -> Result<()> {
    write_csv(path, &SFT_TRAINING_COLUMNS, rows, |row| {
        [
            Some(row.question_id.clone()),
            row.paragraph_generation_prompt.clone(),
            row.claude_summary.clone(),
            row.icl_generated_paragraphs
                .as_deref()
                .map(python_text_list),
            row.claude_generated_paragraph.clone(),
        ]
    })
}

/// Writes `reward_model_training` rows as the reference CSV.
pub fn write_reward_model_training(path: &Path, rows: &[RewardModelTrainingRow]) -> Result<()> {
    write_csv(path, &REWARD_MODEL_TRAINING_COLUMNS, rows, |row| {
        [
            Some(row.question_id.clone()),
            row.lc_sft_generated_paragraph.clone(),
            row.lc_sft_ground_truth_and_extracted_answers
                .as_deref()
                .map(python_text_list),
            row.lc_sft_forecasted_probs
                .as_deref()
                .map(python_float_list),
            row.factuality_sft_generated_paragraph.clone(),
            row.factuality_sft_binary_correctness.map(python_float_repr),
        ]
    })
}

/// Writes questions as TriviaQA JSON Lines with the HF field names (`question_id`, `question`,
/// `answer: {value, aliases, normalized_aliases}`), atomically.
pub fn write_trivia_qa_jsonl(path: &Path, questions: &[TriviaQuestion]) -> Result<()> {
    #[derive(Serialize)]
    struct Answer<'a> {
        value: &'a str,
        aliases: &'a [String],
        normalized_aliases: &'a [String],
    }
    #[derive(Serialize)]
    struct Line<'a> {
        question_id: &'a str,
        question: &'a str,
        answer: Answer<'a>,
    }
    let lines: Vec<Line> = questions
        .iter()
        .map(|q| Line {
            question_id: &q.question_id,
            question: &q.question,
            answer: Answer {
                value: &q.answer,
                aliases: &q.aliases,
                normalized_aliases: &q.normalized_aliases,
            },
        })
        .collect();
    write_jsonl(path, &lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::pylit::{PyLiteral, parse_py_literal};

    #[test]
    fn string_repr_picks_quotes_and_escapes_like_python() {
        assert_eq!(python_str_repr("plain"), "'plain'");
        assert_eq!(python_str_repr("it's"), "\"it's\"");
        assert_eq!(python_str_repr("it's \"x\""), "'it\\'s \"x\"'");
        assert_eq!(python_str_repr("a\\b\nc\td\u{1}"), "'a\\\\b\\nc\\td\\x01'");
        for text in ["it's \"x\"", "a\\b\nc\td\u{1}é", ""] {
            assert_eq!(
                parse_py_literal(&python_str_repr(text)).unwrap(),
                PyLiteral::Str(text.to_string())
            );
        }
    }

    #[test]
    fn lists_are_python_literals() {
        assert_eq!(python_text_list(&[Some("a".into()), None]), "['a', None]");
        assert_eq!(
            python_float_list(&[1.0, 0.25, f64::NAN]),
            "[1.0, 0.25, nan]"
        );
    }
}
