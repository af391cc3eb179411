//! FanOutQA (PyPI `fanoutqa==1.1.1`, CC BY-SA 4.0): each dev question fans out into
//! sub-questions under `decomposition`; the leaves (no further decomposition) are single-hop
//! questions with their own answers and ids, which is what we keep.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use serde::de::{MapAccess, SeqAccess, Visitor};

use super::{QaCollector, member_error};
use crate::{DataError, Result};

const DEV_SET_MEMBER: &str = "fanoutqa/data/fanout-final-dev.json";

/// A question node of the dev set; top-level questions and sub-questions share the shape.
#[derive(Deserialize)]
struct Node {
    id: Option<String>,
    question: Option<String>,
    #[serde(default)]
    decomposition: Vec<Node>,
    answer: Option<Answer>,
}

/// An answer as stored: objects keep their key order (it carries meaning, as in "in descending
/// order"), which `serde_json::Value` would sort away.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Text(String),
    Integer(i128),
    Float(f64),
    Bool(bool),
    List(Vec<Answer>),
    Pairs(Vec<(String, Answer)>),
}

impl<'de> Deserialize<'de> for Answer {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct AnswerVisitor;
        impl<'de> Visitor<'de> for AnswerVisitor {
            type Value = Answer;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number, boolean, list or object")
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Answer, E> {
                Ok(Answer::Text(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<Answer, E> {
                Ok(Answer::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Answer, E> {
                Ok(Answer::Integer(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Answer, E> {
                Ok(Answer::Integer(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<Answer, E> {
                Ok(Answer::Float(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Answer, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Answer::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Answer, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(Answer::Pairs(pairs))
            }
        }
        deserializer.deserialize_any(AnswerVisitor)
    }
}

pub(super) fn collect(wheel: &Path, questions: &mut QaCollector) -> Result<()> {
    let file = std::fs::File::open(wheel).map_err(|source| DataError::Read {
        path: wheel.to_path_buf(),
        source,
    })?;
    let broken = |message: String| DataError::File {
        path: wheel.to_path_buf(),
        message,
    };
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| broken(format!("not a readable wheel (zip) file: {e}")))?;
    let mut text = String::new();
    archive
        .by_name(DEV_SET_MEMBER)
        .map_err(|e| broken(format!("has no {DEV_SET_MEMBER}: {e}")))?
        .read_to_string(&mut text)
        .map_err(|e| broken(format!("cannot read {DEV_SET_MEMBER}: {e}")))?;
    let dev: Vec<Node> = serde_json::from_str(&text).map_err(|e| {
        member_error(
            wheel,
            DEV_SET_MEMBER,
            e.line(),
            format!("not FanOutQA questions: {e}"),
        )
    })?;
    for question in &dev {
        collect_leaves(question, questions);
    }
    Ok(())
}

fn collect_leaves(node: &Node, questions: &mut QaCollector) {
    for child in &node.decomposition {
        if !child.decomposition.is_empty() {
            collect_leaves(child, questions);
            continue;
        }
        let (Some(id), Some(question)) = (&child.id, &child.question) else {
            questions.skip("sub-question without id or question text");
            continue;
        };
        match child.answer.as_ref().and_then(normalise_answer) {
            Some(answers) => questions.add(format!("fanoutqa-{id}"), question, answers),
            None => questions.skip("missing or nested answer"),
        }
    }
}

/// FanOutQA answers come in several shapes; each becomes a list of accepted answer strings, the
/// preferred one first:
/// - a string is itself;
/// - a number is its decimal text (integers of five digits or more also with thousands
///   separators, "1,684,853", as Wikipedia writes them); a boolean is "Yes" or "No", since the
///   question is a yes/no one;
/// - a one-item list or one-entry object is its item or value (a one-entry object is keyed by
///   the entity the question already names, as in {"Apple": 161000});
/// - a longer list must be answered whole: its items joined with ", " are the one answer;
/// - a longer object pairs keys with values: "key: value" in stored order joined with "; ".
///
/// `None` where a list or object holds another list or object.
fn normalise_answer(answer: &Answer) -> Option<Vec<String>> {
    match answer {
        Answer::Text(text) => Some(vec![text.clone()]),
        Answer::Bool(yes) => Some(vec![if *yes { "Yes" } else { "No" }.to_string()]),
        Answer::Integer(n) => Some(number_forms(&n.to_string())),
        Answer::Float(x) => Some(number_forms(&x.to_string())),
        Answer::List(items) if items.len() == 1 => normalise_answer(&items[0]),
        Answer::List(items) => Some(vec![
            items
                .iter()
                .map(scalar_text)
                .collect::<Option<Vec<_>>>()?
                .join(", "),
        ]),
        Answer::Pairs(pairs) if pairs.len() == 1 => normalise_answer(&pairs[0].1),
        Answer::Pairs(pairs) => Some(vec![
            pairs
                .iter()
                .map(|(key, value)| Some(format!("{key}: {}", scalar_text(value)?)))
                .collect::<Option<Vec<_>>>()?
                .join("; "),
        ]),
    }
}

fn scalar_text(answer: &Answer) -> Option<String> {
    match answer {
        Answer::List(_) | Answer::Pairs(_) => None,
        scalar => normalise_answer(scalar)?.into_iter().next(),
    }
}

/// The plain decimal text, and for five or more integer digits also the comma-grouped form.
fn number_forms(plain: &str) -> Vec<String> {
    let (integer, fraction) = plain.split_once('.').map_or((plain, ""), |(i, f)| (i, f));
    let digits = integer.trim_start_matches('-');
    if digits.len() < 5 {
        return vec![plain.to_string()];
    }
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if integer.starts_with('-') { "-" } else { "" };
    let fraction = if fraction.is_empty() {
        String::new()
    } else {
        format!(".{fraction}")
    };
    vec![plain.to_string(), format!("{sign}{grouped}{fraction}")]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Answer {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn answers_of_every_shape_normalise() {
        assert_eq!(
            normalise_answer(&parse(r#""Right""#)),
            Some(vec!["Right".to_string()])
        );
        assert_eq!(
            normalise_answer(&parse(r#"1977"#)),
            Some(vec!["1977".to_string()])
        );
        assert_eq!(
            normalise_answer(&parse(r#"1684853"#)),
            Some(vec!["1684853".to_string(), "1,684,853".to_string()])
        );
        assert_eq!(
            normalise_answer(&parse(r#"8848.86"#)),
            Some(vec!["8848.86".to_string()])
        );
        assert_eq!(
            normalise_answer(&parse(r#"-12345.5"#)),
            Some(vec!["-12345.5".to_string(), "-12,345.5".to_string()])
        );
        assert_eq!(
            normalise_answer(&parse(r#"true"#)),
            Some(vec!["Yes".to_string()])
        );
        assert_eq!(
            normalise_answer(&parse(r#"["King Philippe"]"#)),
            Some(vec!["King Philippe".to_string()])
        );
        assert_eq!(
            normalise_answer(&parse(r#"["A", 2, false]"#)),
            Some(vec!["A, 2, No".to_string()])
        );
        assert_eq!(
            normalise_answer(&parse(r#"{"Apple": 161000}"#)),
            Some(vec!["161000".to_string(), "161,000".to_string()])
        );
        assert_eq!(
            normalise_answer(&parse(r#"{"2022": "Argentina", "2018": "France"}"#)),
            Some(vec!["2022: Argentina; 2018: France".to_string()])
        );
        assert_eq!(normalise_answer(&parse(r#"[["nested"], "x"]"#)), None);
    }
}
