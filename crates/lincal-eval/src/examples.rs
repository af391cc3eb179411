//! One scored item of an evaluation run, and `examples.jsonl`, the file of them.
//!
//! A QA run scores one item per question (SPEC 5.1-5.2); a biography run scores one item per
//! atomic claim (SPEC 5.3). Both are lines of the same file, told apart by `"kind"`:
//!
//! ```json
//! {"kind": "qa", "id": "tqa-17", "question": "...", "gold_answer": "Paris",
//!  "generated_text": "...", "extracted_answers": ["Paris", "Lyon"], "answer": "Paris",
//!  "confidence": 0.7, "correct": true}
//! {"kind": "claim", "id": "bio-3-5", "entity": "Marie Curie", "claim": "She was likely born
//!  in 1867.", "core_claim": "She was born in 1867.", "group": "g2", "confidence": 0.75,
//!  "supported": true}
//! ```
//!
//! `confidence` null or absent means a method that states no confidence (scored at 1.0). Any
//! item may carry `failures`: notes of stages that could not be parsed or failed after their
//! retries; the item is still scored the way the reference scores it (an extraction that never
//! parsed gives no answer, a judge reply that never parsed counts as wrong).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use lincal_metrics::Prediction;
use serde::{Deserialize, Serialize};

use crate::EvalError;
use crate::files::{for_each_line, write_atomically};

/// A stage of the QA or biography pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Generation,
    Extraction,
    Forecast,
    Judge,
    Decomposition,
    Filter,
    Retrieval,
    FactCheck,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Generation => "generation",
            Stage::Extraction => "answer extraction",
            Stage::Forecast => "forecast",
            Stage::Judge => "semantic-equivalence judge",
            Stage::Decomposition => "claim decomposition",
            Stage::Filter => "uncertainty filter",
            Stage::Retrieval => "retrieval",
            Stage::FactCheck => "fact check",
        })
    }
}

/// A stage that did not give a usable result for this item, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFailure {
    pub stage: Stage,
    pub message: String,
}

/// One answered question of a QA run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QaExample {
    pub id: String,
    pub question: String,
    pub gold_answer: String,
    /// The model's long-form answer (the paragraph the reader saw).
    pub generated_text: String,
    /// Every answer the reader extracted, in the order it gave them.
    #[serde(default)]
    pub extracted_answers: Vec<String>,
    /// The extracted answer with the highest forecast probability (SPEC 5.1 step 4); null when
    /// nothing was extracted, which scores as wrong with confidence 1 (SPEC 5.2).
    pub answer: Option<String>,
    /// Forecast probability of `answer`; null for a method that states no confidence.
    #[serde(default)]
    pub confidence: Option<f64>,
    /// The judge found `answer` equivalent to `gold_answer`.
    pub correct: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<StageFailure>,
}

/// One atomic claim of a generated biography.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimExample {
    pub id: String,
    /// The person the biography is about.
    pub entity: String,
    /// The claim as decomposed, confidence phrase included.
    pub claim: String,
    /// The claim with its uncertainty stripped, as fact-checked (confidence methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_claim: Option<String>,
    /// Claims of one entity with the same group are mutually exclusive alternatives ("75% X,
    /// 25% Y"); only the most confident of them is scored (SPEC 5.3). Null: a claim of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Stated probability of the claim (1.0 for a direct statement); null for a method that
    /// states no confidence.
    #[serde(default)]
    pub confidence: Option<f64>,
    /// The fact check found the claim supported by the knowledge source.
    pub supported: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<StageFailure>,
}

/// A scored item: a QA answer or a biography claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScoredExample {
    Qa(QaExample),
    Claim(ClaimExample),
}

/// What the items of a run are; one run holds one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExampleKind {
    Qa,
    Claim,
}

impl ScoredExample {
    pub fn kind(&self) -> ExampleKind {
        match self {
            ScoredExample::Qa(_) => ExampleKind::Qa,
            ScoredExample::Claim(_) => ExampleKind::Claim,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            ScoredExample::Qa(e) => &e.id,
            ScoredExample::Claim(e) => &e.id,
        }
    }

    pub fn confidence(&self) -> Option<f64> {
        match self {
            ScoredExample::Qa(e) => e.confidence,
            ScoredExample::Claim(e) => e.confidence,
        }
    }

    /// Correct answer (QA) or supported claim (biography).
    pub fn correct(&self) -> bool {
        match self {
            ScoredExample::Qa(e) => e.correct,
            ScoredExample::Claim(e) => e.supported,
        }
    }

    pub fn failures(&self) -> &[StageFailure] {
        match self {
            ScoredExample::Qa(e) => &e.failures,
            ScoredExample::Claim(e) => &e.failures,
        }
    }

    /// What item-level comparisons across runs match on: the question id for QA, the entity
    /// for claims (two models' biographies of one person have different claims).
    pub fn subject(&self) -> &str {
        match self {
            ScoredExample::Qa(e) => &e.id,
            ScoredExample::Claim(e) => &e.entity,
        }
    }

    /// Checks what serde cannot: a non-empty id, a confidence in [0, 1], and no QA item
    /// marked correct without an answer. The message names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.id().trim().is_empty() {
            return Err("field `id` is empty; give every item a unique id".into());
        }
        if let ScoredExample::Claim(e) = self
            && e.entity.trim().is_empty()
        {
            return Err("field `entity` is empty; name the person the claim is about".into());
        }
        if let Some(c) = self.confidence()
            && !(0.0..=1.0).contains(&c)
        {
            return Err(format!(
                "field `confidence` is {c}, not a probability in [0, 1]; write a number between \
                 0 and 1, or null for a method that states no confidence"
            ));
        }
        if let ScoredExample::Qa(e) = self
            && e.answer.is_none()
            && e.correct
        {
            return Err(
                "field `correct` is true but `answer` is null; an item with no \
                        extracted answer counts as wrong (SPEC 5.2): set `correct` to false"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The predictions the metrics are computed from, with the reference's rules: a QA item with no
/// answer is wrong with confidence 1; no stated confidence scores as 1.0; of mutually exclusive
/// claims (same entity and group) only the most confident counts, the first of equals.
pub fn predictions(examples: &[ScoredExample]) -> Vec<Prediction> {
    let mut preds = Vec::with_capacity(examples.len());
    // For each (entity, group): where its scored alternative sits in `preds`.
    let mut group_slot: HashMap<(&str, &str), (usize, f64)> = HashMap::new();
    for example in examples {
        let confidence = example.confidence().unwrap_or(1.0);
        match example {
            ScoredExample::Qa(e) if e.answer.is_none() => {
                preds.push(Prediction::empty_extraction());
            }
            ScoredExample::Claim(ClaimExample {
                entity,
                group: Some(group),
                supported,
                ..
            }) => match group_slot.get_mut(&(entity.as_str(), group.as_str())) {
                Some((slot, best)) => {
                    if confidence > *best {
                        *best = confidence;
                        preds[*slot] = Prediction::new(confidence, *supported);
                    }
                }
                None => {
                    group_slot.insert((entity, group), (preds.len(), confidence));
                    preds.push(Prediction::new(confidence, *supported));
                }
            },
            _ => preds.push(Prediction::new(confidence, example.correct())),
        }
    }
    preds
}

/// The predictions of each subject (question or entity) of a run, by subject.
pub(crate) fn predictions_by_subject(
    examples: &[ScoredExample],
) -> BTreeMap<&str, Vec<Prediction>> {
    let mut by_subject: BTreeMap<&str, Vec<ScoredExample>> = BTreeMap::new();
    for example in examples {
        by_subject
            .entry(example.subject())
            .or_default()
            .push(example.clone());
    }
    by_subject
        .into_iter()
        .map(|(subject, examples)| (subject, predictions(&examples)))
        .collect()
}

/// Counts for a report: how many items, how many scored, and where the pipeline had trouble.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Items in `examples.jsonl`.
    pub examples: usize,
    /// Predictions the metrics are computed from: `examples` less `merged_alternatives`.
    pub scored: usize,
    /// Scored predictions judged correct (QA) or supported (claims).
    pub correct: usize,
    /// Distinct questions (QA) or entities (claims).
    pub subjects: usize,
    /// QA items with no extracted answer, scored wrong with confidence 1.
    pub empty_extractions: usize,
    /// Items without a stated confidence, scored at 1.0.
    pub without_confidence: usize,
    /// Claims left out because a more confident exclusive alternative was scored instead.
    pub merged_alternatives: usize,
    /// Items with at least one failure note, per stage.
    pub failures: BTreeMap<Stage, usize>,
}

impl Counts {
    pub fn of(examples: &[ScoredExample]) -> Self {
        let preds = predictions(examples);
        let mut failures = BTreeMap::new();
        for example in examples {
            let mut stages: Vec<Stage> = example.failures().iter().map(|f| f.stage).collect();
            stages.sort();
            stages.dedup();
            for stage in stages {
                *failures.entry(stage).or_insert(0) += 1;
            }
        }
        let subjects: std::collections::HashSet<&str> =
            examples.iter().map(ScoredExample::subject).collect();
        Counts {
            examples: examples.len(),
            scored: preds.len(),
            correct: preds.iter().filter(|p| p.correct).count(),
            subjects: subjects.len(),
            empty_extractions: examples
                .iter()
                .filter(|e| matches!(e, ScoredExample::Qa(q) if q.answer.is_none()))
                .count(),
            without_confidence: examples.iter().filter(|e| e.confidence().is_none()).count(),
            merged_alternatives: examples.len() - preds.len(),
            failures,
        }
    }
}

/// Checks a set of items as one run: each item valid, ids unique, one kind throughout.
/// `locate(i)` says where item `i` came from, for the message.
fn check_run(
    examples: &[ScoredExample],
    locate: impl Fn(usize) -> String,
) -> Result<(), (usize, String)> {
    let mut first_of_id: HashMap<&str, usize> = HashMap::new();
    for (i, example) in examples.iter().enumerate() {
        example.check().map_err(|m| (i, m))?;
        if example.kind() != examples[0].kind() {
            return Err((
                i,
                format!(
                    "a `{}` item in a run of `{}` items ({}); keep QA and biography runs in \
                     separate files",
                    kind_name(example.kind()),
                    kind_name(examples[0].kind()),
                    locate(0)
                ),
            ));
        }
        if let Some(&first) = first_of_id.get(example.id()) {
            return Err((
                i,
                format!(
                    "id `{}` already used ({}); ids must be unique",
                    example.id(),
                    locate(first)
                ),
            ));
        }
        first_of_id.insert(example.id(), i);
    }
    Ok(())
}

fn kind_name(kind: ExampleKind) -> &'static str {
    match kind {
        ExampleKind::Qa => "qa",
        ExampleKind::Claim => "claim",
    }
}

/// Checks items given in code; the error names the item by position and id.
pub fn check_examples(examples: &[ScoredExample]) -> Result<(), EvalError> {
    check_run(examples, |i| {
        format!("item {} (id `{}`)", i + 1, examples[i].id())
    })
    .map_err(|(i, message)| EvalError::Invalid {
        what: format!("item {} (id `{}`)", i + 1, examples[i].id()),
        message,
    })
}

/// Reads `examples.jsonl`, one item a line (blank lines skipped). Errors name the file, the
/// line and the field.
pub fn read_examples(path: impl AsRef<Path>) -> Result<Vec<ScoredExample>, EvalError> {
    let path = path.as_ref();
    let mut examples = Vec::new();
    let mut lines = Vec::new();
    for_each_line(path, |line_number, line| {
        let example: ScoredExample = serde_json::from_str(line).map_err(|e| {
            format!(
                "{e}; each line is one object with \"kind\": \"qa\" or \"claim\" and the \
                 fields described in lincal_eval::examples"
            )
        })?;
        examples.push(example);
        lines.push(line_number);
        Ok(())
    })?;
    check_run(&examples, |i| format!("line {}", lines[i])).map_err(|(i, message)| {
        EvalError::Line {
            path: path.to_path_buf(),
            line: lines[i],
            message,
        }
    })?;
    Ok(examples)
}

/// Writes `examples` as JSONL, atomically, after checking them as [`read_examples`] would.
pub fn write_examples(path: impl AsRef<Path>, examples: &[ScoredExample]) -> Result<(), EvalError> {
    check_examples(examples)?;
    let mut text = String::new();
    for example in examples {
        let line = serde_json::to_string(example).map_err(|e| EvalError::Invalid {
            what: format!("item `{}`", example.id()),
            message: e.to_string(),
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    write_atomically(path.as_ref(), text.as_bytes())
}
