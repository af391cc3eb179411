//! TriviaQA `unfiltered.nocontext` questions and answers, joined onto reference rows by
//! `question_id` (SPEC 1.3 and 4: `question` from TriviaQA, `answer.value` as the ground-truth
//! top answer, `answer.aliases` as the answer list).
//!
//! Read from the HF Parquet files (`unfiltered.nocontext/train-*.parquet`, ...), from the original
//! distribution's JSON (`{"Data": [{"QuestionId", "Question", "Answer": {"Value", "Aliases",
//! "NormalizedAliases", ...}}, ...]}`), or from JSON Lines / a JSON array of objects with the HF
//! field names (what `datasets` writes with `to_json`).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use parquet::record::{Field, Row};
use serde::Deserialize;

use super::HasQuestionId;
use super::table::{Format, for_each_parquet_row, format_of};
use crate::{DataError, Result};

/// One TriviaQA question with its gold answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TriviaQuestion {
    pub question_id: String,
    pub question: String,
    /// `answer.value`: the ground-truth top answer.
    pub answer: String,
    /// `answer.aliases`: every accepted surface form.
    pub aliases: Vec<String>,
    /// `answer.normalized_aliases`: lower-cased, punctuation-free forms.
    pub normalized_aliases: Vec<String>,
}

/// TriviaQA questions by id, from one or more files (train and validation, say).
#[derive(Debug, Clone, Default)]
pub struct TriviaQa {
    by_id: HashMap<String, TriviaQuestion>,
}

/// A reference row and the TriviaQA question it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct WithQuestion<R> {
    pub row: R,
    pub question: TriviaQuestion,
}

impl<R: HasQuestionId> HasQuestionId for WithQuestion<R> {
    fn question_id(&self) -> &str {
        self.row.question_id()
    }
}

/// The result of a join: matched rows, and the rows whose id TriviaQA does not have.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined<R> {
    pub rows: Vec<WithQuestion<R>>,
    pub unmatched: Vec<R>,
}

impl<R: HasQuestionId> Joined<R> {
    pub fn unmatched_ids(&self) -> Vec<&str> {
        self.unmatched
            .iter()
            .map(HasQuestionId::question_id)
            .collect()
    }
}

impl<R: HasQuestionId> fmt::Display for Joined<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rows matched a TriviaQA question", self.rows.len())?;
        if !self.unmatched.is_empty() {
            const SHOWN: usize = 5;
            let ids = self.unmatched_ids();
            let more = if ids.len() > SHOWN {
                format!(", ... ({} more)", ids.len() - SHOWN)
            } else {
                String::new()
            };
            write!(
                f,
                "; {} rows have an id that is not in the TriviaQA files given ({}{more}): \
                 load the TriviaQA split they come from (test rows join with validation, \
                 the others with train)",
                ids.len(),
                ids[..ids.len().min(SHOWN)].join(", ")
            )?;
        }
        Ok(())
    }
}

impl TriviaQa {
    /// Loads and merges TriviaQA files; each is read by its extension (`.parquet`, `.json`,
    /// `.jsonl`). An id seen twice keeps its first question.
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<Self> {
        let mut trivia = TriviaQa::default();
        for path in paths {
            let path = path.as_ref();
            let mut add = |question: TriviaQuestion| {
                trivia
                    .by_id
                    .entry(question.question_id.clone())
                    .or_insert(question);
            };
            match format_of(path)? {
                Format::Parquet => read_parquet(path, &mut add)?,
                Format::Json | Format::JsonLines => read_json(path, &mut add)?,
                Format::Csv => {
                    return Err(DataError::File {
                        path: path.to_path_buf(),
                        message: "TriviaQA is read from .parquet, .json or .jsonl files".into(),
                    });
                }
            }
        }
        Ok(trivia)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, question_id: &str) -> Option<&TriviaQuestion> {
        self.by_id.get(question_id)
    }

    /// Gives each row its TriviaQA question; rows without a match are kept aside in `unmatched`.
    pub fn join<R: HasQuestionId>(&self, rows: Vec<R>) -> Joined<R> {
        let mut joined = Joined {
            rows: Vec::new(),
            unmatched: Vec::new(),
        };
        for row in rows {
            match self.get(row.question_id()) {
                Some(question) => joined.rows.push(WithQuestion {
                    question: question.clone(),
                    row,
                }),
                None => joined.unmatched.push(row),
            }
        }
        joined
    }
}

/// An object of a TriviaQA JSON file: either a question (HF or original field names) or the
/// original distribution's wrapper holding all questions under `Data`.
#[derive(Deserialize)]
struct JsonObject {
    #[serde(rename = "Data")]
    data: Option<Vec<JsonQuestion>>,
    #[serde(flatten)]
    question: Option<JsonQuestion>,
}

#[derive(Deserialize)]
struct JsonQuestion {
    #[serde(alias = "QuestionId")]
    question_id: String,
    #[serde(alias = "Question")]
    question: String,
    #[serde(alias = "Answer")]
    answer: Option<JsonAnswer>,
}

#[derive(Deserialize)]
struct JsonAnswer {
    #[serde(alias = "Value")]
    value: String,
    #[serde(alias = "Aliases", default)]
    aliases: Vec<String>,
    #[serde(alias = "NormalizedAliases", default)]
    normalized_aliases: Vec<String>,
}

impl JsonQuestion {
    fn into_question(self, path: &Path, line: usize) -> Result<TriviaQuestion> {
        let Some(answer) = self.answer else {
            return Err(DataError::Row {
                path: path.to_path_buf(),
                line,
                message: format!(
                    "question {} has no answer (the TriviaQA test split is unlabelled: \
                     join test rows with validation)",
                    self.question_id
                ),
            });
        };
        Ok(TriviaQuestion {
            question_id: self.question_id,
            question: self.question,
            answer: answer.value,
            aliases: answer.aliases,
            normalized_aliases: answer.normalized_aliases,
        })
    }
}

fn read_json(path: &Path, add: &mut dyn FnMut(TriviaQuestion)) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let json_error = |e: serde_json::Error| DataError::Row {
        path: path.to_path_buf(),
        line: e.line(),
        message: format!("not a TriviaQA question or file: {e}"),
    };
    let mut accept = |object: JsonObject, line: usize| -> Result<()> {
        match (object.data, object.question) {
            (Some(questions), _) => {
                for question in questions {
                    add(question.into_question(path, line)?);
                }
                Ok(())
            }
            (None, Some(question)) => {
                add(question.into_question(path, line)?);
                Ok(())
            }
            (None, None) => Err(DataError::Row {
                path: path.to_path_buf(),
                line,
                message: "object has neither `Data` nor `question_id`/`question`/`answer` fields"
                    .into(),
            }),
        }
    };
    if format_of(path)? == Format::JsonLines {
        for (index, line) in text.lines().enumerate() {
            if !line.trim().is_empty() {
                let object = serde_json::from_str(line).map_err(|e| DataError::Row {
                    path: path.to_path_buf(),
                    line: index + 1,
                    message: format!("not a TriviaQA question: {e}"),
                })?;
                accept(object, index + 1)?;
            }
        }
    } else if text.trim_start().starts_with('[') {
        let objects: Vec<JsonObject> = serde_json::from_str(&text).map_err(json_error)?;
        for object in objects {
            accept(object, 1)?;
        }
    } else {
        // Line numbers are counted incrementally: objects follow one another through the text.
        let mut stream = serde_json::Deserializer::from_str(&text).into_iter::<JsonObject>();
        let (mut counted_to, mut line) = (0, 1);
        loop {
            let rest = &text[stream.byte_offset()..];
            let start = stream.byte_offset() + (rest.len() - rest.trim_start().len());
            let Some(object) = stream.next() else { break };
            line += text[counted_to..start].matches('\n').count();
            counted_to = start;
            accept(object.map_err(json_error)?, line)?;
        }
    }
    Ok(())
}

fn read_parquet(path: &Path, add: &mut dyn FnMut(TriviaQuestion)) -> Result<()> {
    let wanted = [
        "question_id",
        "question",
        "answer.value",
        "answer.aliases",
        "answer.normalized_aliases",
    ];
    for_each_parquet_row(path, &wanted, |line, row| {
        let error = |message: String| DataError::Row {
            path: path.to_path_buf(),
            line,
            message,
        };
        let question_id = parquet_text(&row, "question_id").map_err(error)?;
        let question = parquet_text(&row, "question").map_err(error)?;
        let answer = match parquet_field(&row, "answer") {
            Ok(Field::Group(answer)) => answer,
            Ok(other) => {
                return Err(error(format!(
                    "column answer: expected a struct, found {other}"
                )));
            }
            Err(message) => return Err(error(message)),
        };
        add(TriviaQuestion {
            question_id,
            question,
            answer: parquet_text(answer, "value").map_err(|m| error(format!("answer.{m}")))?,
            aliases: parquet_texts(answer, "aliases").map_err(|m| error(format!("answer.{m}")))?,
            normalized_aliases: parquet_texts(answer, "normalized_aliases")
                .map_err(|m| error(format!("answer.{m}")))?,
        });
        Ok(())
    })
}

fn parquet_field<'a>(row: &'a Row, name: &str) -> std::result::Result<&'a Field, String> {
    row.get_column_iter()
        .find(|(column, _)| column.as_str() == name)
        .map(|(_, field)| field)
        .ok_or_else(|| format!("column {name} is missing; is this TriviaQA unfiltered.nocontext?"))
}

fn parquet_text(row: &Row, name: &str) -> std::result::Result<String, String> {
    match parquet_field(row, name)? {
        Field::Str(text) => Ok(text.clone()),
        other => Err(format!("{name}: expected a string, found {other}")),
    }
}

fn parquet_texts(row: &Row, name: &str) -> std::result::Result<Vec<String>, String> {
    match parquet_field(row, name)? {
        Field::ListInternal(list) => list
            .elements()
            .iter()
            .map(|item| match item {
                Field::Str(text) => Ok(text.clone()),
                other => Err(format!(
                    "{name}: expected a list of strings, found item {other}"
                )),
            })
            .collect(),
        Field::Null => Ok(Vec::new()),
        other => Err(format!("{name}: expected a list of strings, found {other}")),
    }
}
