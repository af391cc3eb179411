//! The evaluation sets: QA questions with their gold answers, and the people of the biography
//! evaluation.
//!
//! QA questions come from
//! - the reference's `*_paragraph_generation` splits (SPEC 4), CSV or Parquet, joined with the
//!   files that hold their answers: TriviaQA `unfiltered.nocontext` (by question id), the
//!   Hugging Face `jeopardy` train split (the id is a row index), `allenai/sciq` train,
//!   validation and test in that order (the id is a row index into the three), or BioASQ's
//!   `training12b_new.json` (factoid questions, by id);
//! - QA JSONL (`{"id", "question", "answer", "aliases"}`, what `lincal data build` writes for
//!   the offline sources). Such a line may carry the open-ended `query` the model is given (as
//!   `lincal distill` writes them); without one the model is given the question itself, which
//!   differs from the paper's open-ended queries.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use lincal_data::schema::jsonl::read_jsonl;
use lincal_data::schema::{Tally, TriviaQa, read_paragraph_generation};
use lincal_data::sources::{QaRecord, read_knowledge_jsonl, read_qa_records};
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde::Deserialize;
use serde_json::Value;

use crate::EvalError;
use crate::pipeline::PipelineError;

/// A question of a QA evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct QaQuestion {
    pub id: String,
    pub question: String,
    /// What the evaluated model is asked (the reference's `paragraph_generation_prompt`).
    pub query: String,
    /// The gold answer the judge compares with.
    pub answer: String,
    /// Every accepted answer, `answer` first.
    pub aliases: Vec<String>,
}

/// A loaded QA evaluation set.
#[derive(Debug, Clone, PartialEq)]
pub struct QaDataset {
    /// The name in reports ("TriviaQA", "fanoutqa"): runs are compared by it.
    pub name: String,
    pub split: Option<String>,
    pub questions: Vec<QaQuestion>,
    /// The files read, which are the inputs of the run.
    pub files: Vec<PathBuf>,
    /// Rows that could not be used, by reason.
    pub tally: Tally,
}

impl QaDataset {
    /// Keeps the first `limit` questions.
    pub fn truncate(&mut self, limit: usize) {
        self.questions.truncate(limit);
    }
}

/// The reference's paragraph-generation datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceDataset {
    TriviaQa,
    Jeopardy,
    Sciq,
    Bioasq,
}

impl ReferenceDataset {
    pub const ALL: [ReferenceDataset; 4] = [
        ReferenceDataset::TriviaQa,
        ReferenceDataset::Jeopardy,
        ReferenceDataset::Sciq,
        ReferenceDataset::Bioasq,
    ];

    /// The config name: `<name>_paragraph_generation` is its folder.
    pub fn config_name(self) -> &'static str {
        match self {
            ReferenceDataset::TriviaQa => "trivia_qa",
            ReferenceDataset::Jeopardy => "jeopardy",
            ReferenceDataset::Sciq => "sciq",
            ReferenceDataset::Bioasq => "bioasq",
        }
    }

    /// The name in reports, as in the paper's tables.
    pub fn display_name(self) -> &'static str {
        match self {
            ReferenceDataset::TriviaQa => "TriviaQA",
            ReferenceDataset::Jeopardy => "Jeopardy",
            ReferenceDataset::Sciq => "SciQ",
            ReferenceDataset::Bioasq => "BioASQ",
        }
    }

    fn folder(self) -> String {
        format!("{}_paragraph_generation", self.config_name())
    }

    /// What `--answers` must hold for this dataset.
    fn answers_hint(self) -> &'static str {
        match self {
            ReferenceDataset::TriviaQa => {
                "TriviaQA unfiltered.nocontext files (.parquet, .json or .jsonl; validation for \
                 the test split, train for the others)"
            }
            ReferenceDataset::Jeopardy => {
                "the Hugging Face `jeopardy` train split (JEOPARDY_QUESTIONS1.json, .jsonl or \
                 .parquet)"
            }
            ReferenceDataset::Sciq => {
                "allenai/sciq train, validation and test, in that order (.json, .jsonl or \
                 .parquet)"
            }
            ReferenceDataset::Bioasq => "BioASQ Task B training12b_new.json",
        }
    }

    /// The dataset whose folder name is `folder`, as in
    /// `<root>/sciq_paragraph_generation/test.csv`.
    fn of_folder(folder: &str) -> Option<Self> {
        ReferenceDataset::ALL
            .into_iter()
            .find(|dataset| dataset.folder() == folder)
    }
}

impl fmt::Display for ReferenceDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_name())
    }
}

impl FromStr for ReferenceDataset {
    type Err = PipelineError;

    fn from_str(name: &str) -> Result<Self, PipelineError> {
        ReferenceDataset::ALL
            .into_iter()
            .find(|dataset| {
                dataset.config_name() == name || dataset.display_name().eq_ignore_ascii_case(name)
            })
            .ok_or_else(|| {
                PipelineError::Invalid(format!(
                    "unknown dataset {name:?}; the reference datasets are trivia_qa, jeopardy, \
                     sciq and bioasq, and a QA JSONL file can be given by its path"
                ))
            })
    }
}

/// The split file of `dataset` under `root` (the reference dataset's layout): a `.csv` or
/// `.parquet` in `<root>/<name>_paragraph_generation/` whose name is the split, or the split
/// followed by its size (`test_11k.csv`), or Hugging Face's `<split>-00000-of-00001.parquet`.
pub fn find_split_file(
    root: &Path,
    dataset: ReferenceDataset,
    split: &str,
) -> Result<PathBuf, PipelineError> {
    let folder = root.join(dataset.folder());
    let entries = std::fs::read_dir(&folder).map_err(|source| EvalError::Read {
        path: folder.clone(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let is_table = path
                .extension()
                .is_some_and(|ext| ext == "csv" || ext == "parquet");
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            is_table && stem.is_some_and(|stem| names_split(&stem, split))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(PipelineError::Invalid(format!(
            "{}: no file of split `{split}` (a .csv or .parquet named `{split}`, `{split}_<size>` \
             or `{split}-00000-of-00001`); give another --split or the file's path",
            folder.display()
        ))),
        _ => Err(PipelineError::Invalid(format!(
            "{}: several files of split `{split}` ({}); give the file's path instead",
            folder.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `test`, `test_11k` and `test-00000-of-00001` name split `test`; `ppo_validation_1k` does not
/// name `ppo`.
fn names_split(stem: &str, split: &str) -> bool {
    let Some(rest) = stem.strip_prefix(split) else {
        return false;
    };
    let size = |text: &str| {
        text.strip_suffix('k')
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    rest.is_empty()
        || rest.strip_prefix('_').is_some_and(size)
        || rest.strip_prefix('-').is_some_and(|shard| {
            shard.split("-of-").count() == 2
                && shard
                    .split("-of-")
                    .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
}

/// Loads a reference split file and joins it with its answers. The dataset is named by the
/// file's folder (`<name>_paragraph_generation`) unless `dataset` says it.
pub fn load_reference(
    split_file: &Path,
    dataset: Option<ReferenceDataset>,
    answers: &[PathBuf],
) -> Result<QaDataset, PipelineError> {
    let dataset = match dataset {
        Some(dataset) => dataset,
        None => split_file
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|name| ReferenceDataset::of_folder(&name.to_string_lossy()))
            .ok_or_else(|| {
                PipelineError::Invalid(format!(
                    "{}: cannot tell which dataset this split belongs to; keep it in its \
                     `<name>_paragraph_generation` folder or name the dataset",
                    split_file.display()
                ))
            })?,
    };
    if answers.is_empty() {
        return Err(PipelineError::Invalid(format!(
            "{} holds only question ids and queries: give --answers with {}",
            split_file.display(),
            dataset.answers_hint()
        )));
    }
    let rows = read_paragraph_generation(split_file)?;
    let lookup = AnswerLookup::load(dataset, answers)?;
    let mut tally = Tally::default();
    let mut questions = Vec::with_capacity(rows.len());
    for row in rows {
        match lookup.find(&row.question_id) {
            Some(found) => {
                tally.keep();
                questions.push(QaQuestion {
                    // The rephrased question of the Jeopardy split, when it has one.
                    question: row.question.unwrap_or(found.question),
                    id: row.question_id,
                    query: row.paragraph_generation_prompt,
                    answer: found.aliases[0].clone(),
                    aliases: found.aliases,
                });
            }
            None => tally.skip("question id not in the --answers files"),
        }
    }
    let mut files = vec![split_file.to_path_buf()];
    files.extend(answers.iter().cloned());
    Ok(QaDataset {
        name: dataset.display_name().to_string(),
        split: split_file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned()),
        questions,
        files,
        tally,
    })
}

/// A question and its accepted answers (gold first), from an answers file.
#[derive(Debug, Clone)]
struct Answer {
    question: String,
    aliases: Vec<String>,
}

enum AnswerLookup {
    TriviaQa(TriviaQa),
    /// Rows by index (Jeopardy, SciQ) or by id (BioASQ).
    Rows(HashMap<String, Answer>),
}

impl AnswerLookup {
    fn load(dataset: ReferenceDataset, files: &[PathBuf]) -> Result<Self, PipelineError> {
        let by_index = |rows: Vec<Answer>| {
            rows.into_iter()
                .enumerate()
                .map(|(i, answer)| (i.to_string(), answer))
                .collect()
        };
        Ok(match dataset {
            ReferenceDataset::TriviaQa => AnswerLookup::TriviaQa(TriviaQa::load(files)?),
            ReferenceDataset::Jeopardy => {
                let mut rows = Vec::new();
                for file in files {
                    for (line, row) in read_rows(file)?.into_iter().enumerate() {
                        rows.push(answer_row(file, line, &row, "question", "answer")?);
                    }
                }
                AnswerLookup::Rows(by_index(rows))
            }
            ReferenceDataset::Sciq => {
                let mut rows = Vec::new();
                for file in files {
                    for (line, row) in read_rows(file)?.into_iter().enumerate() {
                        rows.push(answer_row(file, line, &row, "question", "correct_answer")?);
                    }
                }
                AnswerLookup::Rows(by_index(rows))
            }
            ReferenceDataset::Bioasq => {
                let mut by_id = HashMap::new();
                for file in files {
                    by_id.extend(read_bioasq(file)?);
                }
                AnswerLookup::Rows(by_id)
            }
        })
    }

    fn find(&self, question_id: &str) -> Option<Answer> {
        match self {
            AnswerLookup::TriviaQa(trivia) => trivia.get(question_id).map(|q| {
                let mut aliases = vec![q.answer.clone()];
                aliases.extend(q.aliases.iter().filter(|a| **a != q.answer).cloned());
                Answer {
                    question: q.question.clone(),
                    aliases,
                }
            }),
            AnswerLookup::Rows(rows) => rows.get(question_id.trim()).cloned(),
        }
    }
}

/// The question and answer of row `index` (0-based) of `file`.
fn answer_row(
    file: &Path,
    index: usize,
    row: &Value,
    question_field: &str,
    answer_field: &str,
) -> Result<Answer, PipelineError> {
    let text = |field: &str| {
        row.get(field)
            .and_then(Value::as_str)
            .map(|s| s.trim().to_string())
            .ok_or_else(|| EvalError::Line {
                path: file.to_path_buf(),
                line: index + 1,
                message: format!("row {} has no `{field}` text", index + 1),
            })
    };
    Ok(Answer {
        question: text(question_field)?,
        aliases: vec![text(answer_field)?],
    })
}

/// The rows of a JSON array, JSON Lines or Parquet file, as JSON objects.
fn read_rows(path: &Path) -> Result<Vec<Value>, PipelineError> {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let read_error = |source| EvalError::Read {
        path: path.to_path_buf(),
        source,
    };
    match extension.as_str() {
        "parquet" => {
            let bad = |e: parquet::errors::ParquetError| EvalError::File {
                path: path.to_path_buf(),
                message: format!("not a readable Parquet file: {e}"),
            };
            let reader =
                SerializedFileReader::new(File::open(path).map_err(read_error)?).map_err(bad)?;
            let rows = reader.get_row_iter(None).map_err(bad)?;
            Ok(rows
                .map(|row| row.map(|row| row.to_json_value()).map_err(bad))
                .collect::<Result<_, _>>()?)
        }
        "jsonl" => Ok(read_jsonl(path, |_: &Value| Ok(()))?),
        "json" => {
            let text = std::fs::read_to_string(path).map_err(read_error)?;
            match serde_json::from_str(&text) {
                Ok(Value::Array(rows)) => Ok(rows),
                Ok(_) => Err(EvalError::File {
                    path: path.to_path_buf(),
                    message: "expected a JSON array of rows".into(),
                }
                .into()),
                // What `datasets` writes with `to_json` is JSON Lines under a .json name.
                Err(_) => Ok(read_jsonl(path, |_: &Value| Ok(()))?),
            }
        }
        _ => Err(EvalError::File {
            path: path.to_path_buf(),
            message: "unknown format; answers are read from .json, .jsonl or .parquet".into(),
        }
        .into()),
    }
}

/// BioASQ factoid questions by id: the question body and `exact_answer[0]` as gold (SPEC 4).
/// `exact_answer` is a list of answers, each a string or a list of synonyms; the synonyms of
/// the first answer become its aliases.
fn read_bioasq(path: &Path) -> Result<HashMap<String, Answer>, PipelineError> {
    #[derive(Deserialize)]
    struct File {
        questions: Vec<Question>,
    }
    #[derive(Deserialize)]
    struct Question {
        id: String,
        body: String,
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        exact_answer: Value,
    }
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: File = serde_json::from_str(&text).map_err(|e| EvalError::File {
        path: path.to_path_buf(),
        message: format!(
            "not a BioASQ training file ({e}); expected {{\"questions\": [{{\"id\", \"body\", \
             \"type\", \"exact_answer\"}}]}}"
        ),
    })?;
    let mut answers = HashMap::new();
    for question in file.questions {
        if question.kind != "factoid" {
            continue;
        }
        let aliases: Vec<String> = match question.exact_answer.get(0) {
            Some(Value::String(answer)) => vec![answer.clone()],
            Some(Value::Array(synonyms)) => synonyms
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        let aliases: Vec<String> = aliases
            .into_iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if !aliases.is_empty() {
            answers.insert(
                question.id,
                Answer {
                    question: question.body,
                    aliases,
                },
            );
        }
    }
    Ok(answers)
}

/// A line of a QA JSONL file: a QA record, with the query the evaluated model is asked when it
/// differs from the question.
#[derive(Deserialize)]
struct QaLine {
    #[serde(flatten)]
    record: QaRecord,
    #[serde(default, alias = "paragraph_generation_prompt")]
    query: Option<String>,
}

impl AsRef<QaRecord> for QaLine {
    fn as_ref(&self) -> &QaRecord {
        &self.record
    }
}

impl AsMut<QaRecord> for QaLine {
    fn as_mut(&mut self) -> &mut QaRecord {
        &mut self.record
    }
}

/// Loads a QA JSONL file; the dataset is named after the file (`fanoutqa.jsonl`: "fanoutqa").
pub fn load_qa_jsonl(path: &Path) -> Result<QaDataset, PipelineError> {
    let lines: Vec<QaLine> = read_qa_records(path, |_: &QaLine| Ok(()))?;
    let mut tally = Tally::default();
    let questions = lines
        .into_iter()
        .map(|QaLine { record, query }| {
            tally.keep();
            QaQuestion {
                query: query.unwrap_or_else(|| record.question.clone()),
                id: record.id,
                question: record.question,
                answer: record.answer,
                aliases: record.aliases,
            }
        })
        .collect();
    Ok(QaDataset {
        name: path
            .file_stem()
            .map_or_else(|| "qa".to_string(), |s| s.to_string_lossy().into_owned()),
        split: None,
        questions,
        files: vec![path.to_path_buf()],
        tally,
    })
}

/// The people of an entity list: one name a line; blank lines and `#` comments are skipped.
pub fn read_entities(path: &Path) -> Result<Vec<String>, PipelineError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    let mut entities = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if let Some(first) = first_line.insert(name, index + 1) {
            return Err(EvalError::Line {
                path: path.to_path_buf(),
                line: index + 1,
                message: format!("{name:?} is already on line {first}; list each person once"),
            }
            .into());
        }
        entities.push(name.to_string());
    }
    if entities.is_empty() {
        return Err(EvalError::File {
            path: path.to_path_buf(),
            message: "names no one; write one person's name a line".into(),
        }
        .into());
    }
    Ok(entities)
}

/// `count` people of a knowledge JSONL file (WordNet's people by default), spread evenly over
/// the file: entries 0, n/count, 2n/count, ... A name that appears twice is taken once.
pub fn entities_from_knowledge(path: &Path, count: usize) -> Result<Vec<String>, PipelineError> {
    let mut seen = HashSet::new();
    let titles: Vec<String> = read_knowledge_jsonl(path)?
        .into_iter()
        .map(|record| record.title)
        .filter(|title| seen.insert(title.clone()))
        .collect();
    if count == 0 || count > titles.len() {
        return Err(PipelineError::Invalid(format!(
            "{} names {} people; ask for between 1 and {} of them",
            path.display(),
            titles.len(),
            titles.len()
        )));
    }
    Ok((0..count)
        .map(|i| titles[i * titles.len() / count].clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_match_with_sizes_and_shards_only() {
        assert!(names_split("test", "test"));
        assert!(names_split("test_11k", "test"));
        assert!(names_split("test-00000-of-00001", "test"));
        assert!(!names_split("ppo_validation_1k", "ppo"));
        assert!(names_split("ppo_40k", "ppo"));
        assert!(!names_split("testing", "test"));
        assert!(!names_split("test_k", "test"));
    }
}
