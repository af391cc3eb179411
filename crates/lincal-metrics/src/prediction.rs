//! One scored prediction, the scoring rules of SPEC 5.2 for special cases, and the JSONL reader.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::MetricsError;

/// A stated confidence in [0, 1] and whether the answer was judged correct.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub confidence: f64,
    pub correct: bool,
}

impl Prediction {
    pub fn new(confidence: f64, correct: bool) -> Self {
        Self {
            confidence,
            correct,
        }
    }

    /// A method that states no confidence (ICL, Factuality, Claude Distill, ...): the reference
    /// scores it with confidence 1, so its ECE is exactly 1 − accuracy.
    pub fn without_confidence(correct: bool) -> Self {
        Self::new(1.0, correct)
    }

    /// A paragraph from which the reader extracted no answer. SPEC 5.2 counts it as wrong with
    /// confidence 1 (the worst case) in accuracy and ECE alike. Keep such paragraphs in the
    /// input: dropping them would flatter both metrics.
    pub fn empty_extraction() -> Self {
        Self::new(1.0, false)
    }
}

/// Checks every confidence and returns the predictions stably sorted by ascending confidence:
/// the order all binned metrics work in. Ties keep their input order, as in the reference.
pub(crate) fn sorted_by_confidence(preds: &[Prediction]) -> Result<Vec<Prediction>, MetricsError> {
    validate(preds)?;
    let mut sorted = preds.to_vec();
    sorted.sort_by(|a, b| a.confidence.total_cmp(&b.confidence));
    Ok(sorted)
}

/// Every metric needs at least one prediction and confidences in [0, 1] (NaN fails too).
pub(crate) fn validate(preds: &[Prediction]) -> Result<(), MetricsError> {
    if preds.is_empty() {
        return Err(MetricsError::Empty);
    }
    if let Some((index, p)) = preds
        .iter()
        .enumerate()
        .find(|(_, p)| !(0.0..=1.0).contains(&p.confidence))
    {
        return Err(MetricsError::InvalidConfidence {
            index,
            value: p.confidence,
        });
    }
    Ok(())
}

const LINE_EXAMPLE: &str = r#"{"confidence": 0.7, "correct": true}"#;

/// Reads one prediction per line: an object with `confidence` (a number in [0, 1], or null for
/// a method without confidence, scored as 1.0) and `correct` (true/false or 1/0). Both are
/// required: a missing `confidence` is more often a misspelled one than a method without
/// confidence, and would score every row as certain. Other fields are ignored, except those a
/// letter or two from `confidence` or `correct` (typos); blank lines are skipped. Errors name
/// the file, the 1-based line and the field.
pub fn read_predictions_jsonl(path: impl AsRef<Path>) -> Result<Vec<Prediction>, MetricsError> {
    let path = path.as_ref();
    let read_error = |source| MetricsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut preds = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(read_error)?;
        if line.trim().is_empty() {
            continue;
        }
        let parse_error = |message: String| MetricsError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        preds.push(parse_line(&line).map_err(parse_error)?);
    }
    Ok(preds)
}

/// The Levenshtein distance between `a` and `b` (characters inserted, deleted or replaced).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let replace = previous[j] + usize::from(ca != cb);
            current.push(replace.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

fn parse_line(line: &str) -> Result<Prediction, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        format!("not valid JSON ({e}); each line must be one object such as {LINE_EXAMPLE}")
    })?;
    let Value::Object(fields) = value else {
        return Err(format!(
            "expected a JSON object such as {LINE_EXAMPLE}, found {value}"
        ));
    };
    for name in fields.keys() {
        for field in ["confidence", "correct"] {
            if name != field && edit_distance(name, field) <= 2 {
                return Err(format!(
                    "field `{name}` is not known; did you mean `{field}`? (fields other than \
                     `confidence` and `correct` are ignored)"
                ));
            }
        }
    }
    let confidence = match fields.get("confidence") {
        None => {
            return Err(
                "field `confidence` is missing; add \"confidence\": a probability in [0, 1], or \
                 null for a method that states no confidence (scored as 1)"
                    .into(),
            );
        }
        Some(Value::Null) => 1.0,
        Some(v) => match v.as_f64() {
            Some(c) if (0.0..=1.0).contains(&c) => c,
            _ => {
                return Err(format!(
                    "field `confidence` is {v}, not a probability in [0, 1]; write a number \
                     between 0 and 1, or null for a method that states no confidence"
                ));
            }
        },
    };
    let correct = match fields.get("correct") {
        Some(Value::Bool(b)) => *b,
        Some(v) if v.as_f64() == Some(0.0) => false,
        Some(v) if v.as_f64() == Some(1.0) => true,
        Some(v) => {
            return Err(format!("field `correct` is {v}; write true/false or 1/0"));
        }
        None => {
            return Err("field `correct` is missing; add \"correct\": true/false (or 1/0)".into());
        }
    };
    Ok(Prediction {
        confidence,
        correct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn error_of(text: &str) -> (tempfile::NamedTempFile, String) {
        let f = file_with(text);
        let err = read_predictions_jsonl(f.path()).unwrap_err().to_string();
        (f, err)
    }

    #[test]
    fn reads_good_file_with_null_numeric_and_extra_fields() {
        let f = file_with(
            "{\"confidence\": 0.25, \"correct\": true, \"question\": \"q1\"}\n\
             \n\
             {\"confidence\": null, \"correct\": 0}\n\
             {\"confidence\": null, \"correct\": 1, \"answer\": [1, 2]}\n\
             {\"confidence\": 0, \"correct\": false}\n",
        );
        let preds = read_predictions_jsonl(f.path()).unwrap();
        assert_eq!(
            preds,
            vec![
                Prediction::new(0.25, true),
                Prediction::new(1.0, false),
                Prediction::new(1.0, true),
                Prediction::new(0.0, false),
            ]
        );
    }

    #[test]
    fn missing_correct_names_file_line_and_field() {
        let (f, err) =
            error_of("{\"confidence\": 0.5, \"correct\": true}\n{\"confidence\": 0.5}\n");
        assert!(
            err.starts_with(&format!("{}:2: ", f.path().display())),
            "{err}"
        );
        assert!(err.contains("`correct` is missing"), "{err}");
    }

    /// A missing or misspelled `confidence` is an error: read as "no confidence" it would score
    /// every row as certain.
    #[test]
    fn a_missing_or_misspelled_field_is_an_error() {
        let (f, err) = error_of("{\"confidence\": 0.5, \"correct\": true}\n{\"correct\": 1}\n");
        assert!(
            err.starts_with(&format!(
                "{}:2: field `confidence` is missing",
                f.path().display()
            )),
            "{err}"
        );
        for (typo, field) in [
            ("confidnce", "confidence"),
            ("Confidence", "confidence"),
            ("corect", "correct"),
        ] {
            let (_, err) = error_of(&format!(
                "{{\"{typo}\": 0.5, \"confidence\": null, \"correct\": true}}\n"
            ));
            assert!(
                err.contains(&format!(
                    "field `{typo}` is not known; did you mean `{field}`?"
                )),
                "{err}"
            );
        }
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn confidence_out_of_range_or_not_a_number_names_line_and_field() {
        for bad in ["1.5", "-0.1", "\"0.7\""] {
            let (f, err) = error_of(&format!("\n{{\"confidence\": {bad}, \"correct\": true}}\n"));
            assert!(
                err.starts_with(&format!("{}:2: ", f.path().display())),
                "{err}"
            );
            assert!(
                err.contains("`confidence`") && err.contains("[0, 1]"),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_json_and_non_objects_name_line() {
        let (f, err) =
            error_of("{\"confidence\": 0.5, \"correct\": true}\n{\"confidence\": 0.5,\n");
        assert!(
            err.starts_with(&format!("{}:2: not valid JSON", f.path().display())),
            "{err}"
        );
        let (f, err) = error_of("[0.5, true]\n");
        assert!(err.starts_with(&format!("{}:1: expected a JSON object", f.path().display())));
    }

    #[test]
    fn correct_must_be_bool_or_zero_one() {
        for bad in ["2", "\"yes\"", "null"] {
            let (_f, err) = error_of(&format!("{{\"confidence\": 0.5, \"correct\": {bad}}}"));
            assert!(err.contains(":1: field `correct` is"), "{err}");
        }
    }

    #[test]
    fn missing_file_names_path() {
        let err = read_predictions_jsonl("/nonexistent/preds.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read /nonexistent/preds.jsonl"),
            "{err}"
        );
    }

    #[test]
    fn sorting_rejects_empty_and_invalid_and_is_stable() {
        assert!(matches!(
            sorted_by_confidence(&[]),
            Err(MetricsError::Empty)
        ));
        let bad = [Prediction::new(0.5, true), Prediction::new(f64::NAN, true)];
        assert!(matches!(
            sorted_by_confidence(&bad),
            Err(MetricsError::InvalidConfidence { index: 1, .. })
        ));
        let preds = [
            Prediction::new(0.9, true),
            Prediction::new(0.1, true),
            Prediction::new(0.9, false),
        ];
        let sorted = sorted_by_confidence(&preds).unwrap();
        assert_eq!(sorted, vec![preds[1], preds[0], preds[2]]);
    }
}
