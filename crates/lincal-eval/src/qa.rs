//! The QA evaluation pipeline (SPEC 5.1-5.2), one stage after the other over all questions:
//!
//! 1. generation: the evaluated model writes a paragraph for each question's query
//!    (`generations.jsonl`);
//! 2. extraction: the reader lists the answers the paragraph puts forward
//!    (`extractions.jsonl`);
//! 3. forecast, for methods that state confidence: the reader's probability for each extracted
//!    answer (`forecasts.jsonl`); the gold answer is not forecast, since only the RL reward
//!    needs it;
//! 4. argmax: the extracted answer with the highest probability, the earliest of equals; a
//!    method without confidence takes the first answer, scored at confidence 1;
//! 5. judge: is that answer the gold one (`judgments.jsonl`).
//!
//! Then `examples.jsonl` and the report. Items are never dropped: a paragraph with no answer
//! (nothing extracted, or extraction that never parsed) is wrong with confidence 1; an answer
//! whose forecast never parsed is passed over by the argmax (if every forecast failed, the
//! first answer is taken with confidence 1); a judge reply that never parsed counts as wrong.
//! Each such item carries its failure notes, and the report counts them.

use std::collections::BTreeMap;
use std::path::Path;

use lincal_data::artifact::Keyed;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::datasets::{QaDataset, QaQuestion};
use crate::judges::{Judge, JudgeInput};
pub use crate::pipeline::GENERATIONS_FILE;
use crate::pipeline::{
    EvalOptions, GenerationRecord, ItemFailure, OpenedRun, PipelineError, Policy, Progress,
    RunOutcome, open_eval_run, template_inputs, template_sources,
};
use crate::readers::{ForecastInput, ReadInput, Reader};
use crate::{QaExample, RunSettings, ScoredExample, Stage};

/// The stage name in the run's manifest.
pub const STAGE_NAME: &str = "eval-qa";
pub const EXTRACTIONS_FILE: &str = "extractions.jsonl";
pub const FORECASTS_FILE: &str = "forecasts.jsonl";
pub const JUDGMENTS_FILE: &str = "judgments.jsonl";

/// The templates a QA run uses, besides the policy's.
const TEMPLATES: [&str; 9] = [
    "policy",
    "icl_paragraphs",
    "summary_icl_paragraphs",
    "paragraph_zero_shot",
    "paragraph_jafu",
    "extract_answers",
    "extract_answers_model",
    "forecast_probability",
    "judge_equivalence",
];

/// The answers the reader found in one paragraph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ExtractionRecord {
    id: String,
    answers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<ItemFailure>,
}

/// The reader's probability for each extracted answer (`None` where its forecast failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ForecastRecord {
    id: String,
    probabilities: Vec<Option<f64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    failures: Vec<ItemFailure>,
}

/// The chosen answer and the judge's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct JudgmentRecord {
    id: String,
    answer: Option<String>,
    confidence: Option<f64>,
    correct: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<ItemFailure>,
}

macro_rules! keyed_by_id {
    ($($record:ty),*) => {$(
        impl Keyed for $record {
            fn key(&self) -> &str {
                &self.id
            }
        }
    )*};
}
keyed_by_id!(ExtractionRecord, ForecastRecord, JudgmentRecord);

/// The answer of a paragraph and the confidence it is scored with (SPEC 5.1 step 4).
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub answer: Option<String>,
    /// `None`: no answer, or a method that states no confidence.
    pub confidence: Option<f64>,
}

/// The argmax of SPEC 5.1 step 4. `probabilities` is `None` for a method without confidence
/// (the first answer is taken), else one entry per answer, `None` where the forecast failed:
/// the highest probability wins, the earliest answer among equals; failed forecasts are passed
/// over, and if all failed the first answer is taken with confidence 1 (the worst case, as for
/// a paragraph without an answer).
pub fn choose_answer(answers: &[String], probabilities: Option<&[Option<f64>]>) -> Choice {
    let Some(first) = answers.first() else {
        return Choice {
            answer: None,
            confidence: None,
        };
    };
    let Some(probabilities) = probabilities else {
        return Choice {
            answer: Some(first.clone()),
            confidence: None,
        };
    };
    let mut best: Option<(usize, f64)> = None;
    for (index, probability) in probabilities.iter().enumerate() {
        if let Some(p) = *probability
            && best.is_none_or(|(_, top)| p > top)
        {
            best = Some((index, p));
        }
    }
    match best {
        Some((index, p)) => Choice {
            answer: Some(answers[index].clone()),
            confidence: Some(p),
        },
        None => Choice {
            answer: Some(first.clone()),
            confidence: Some(1.0),
        },
    }
}

/// A QA evaluation: the model under test, its reader and judge, and how to run.
pub struct QaEvaluation<'a> {
    pub policy: Policy<'a>,
    pub reader: &'a dyn Reader,
    pub judge: &'a dyn Judge,
    /// The evaluated model as reports name it (a directory, an API model).
    pub model_label: String,
    /// Recorded with the run's settings (seed, device...).
    pub extra: BTreeMap<String, Value>,
    pub options: EvalOptions,
    pub progress: &'a dyn Progress,
}

impl QaEvaluation<'_> {
    /// Evaluates on `dataset` in `run_dir`; see the module documentation. A directory holding
    /// this run finished is read back without a call; an interrupted one is resumed.
    pub fn run(&self, run_dir: &Path, dataset: &QaDataset) -> Result<RunOutcome, PipelineError> {
        self.policy.check()?;
        let questions = &dataset.questions;
        if questions.is_empty() {
            return Err(PipelineError::Invalid(format!(
                "the dataset {} has no questions ({})",
                dataset.name, dataset.tally
            )));
        }
        let templates = self.policy.templates;
        let config = json!({
            "dataset": {"name": dataset.name, "split": dataset.split, "questions": questions.len()},
            "policy": self.policy.config(),
            "reader": self.reader.describe(),
            "judge": self.judge.describe(),
            "templates": template_sources(templates, &TEMPLATES),
        });
        let mut inputs: Vec<&Path> = dataset.files.iter().map(|p| p.as_path()).collect();
        inputs.extend(template_inputs(templates, &TEMPLATES));
        let opened = open_eval_run(
            run_dir,
            STAGE_NAME,
            &config,
            &inputs,
            &self.options,
            self.progress,
        )?;
        let mut stages = match opened {
            OpenedRun::Finished(outcome) => return Ok(outcome),
            OpenedRun::Run(stages) => stages,
        };

        let queries: Vec<(&str, &str)> = questions
            .iter()
            .map(|q| (q.id.as_str(), q.query.as_str()))
            .collect();
        let generations = stages.generate(&self.policy, &queries)?;
        let read: Vec<(&QaQuestion, &GenerationRecord)> =
            questions.iter().zip(&generations).collect();

        let extractions = stages.run(
            EXTRACTIONS_FILE,
            Stage::Extraction,
            &read,
            |(q, _)| &q.id,
            |chunk| self.extract(chunk),
        )?;

        let states_confidence = self.policy.method.states_confidence;
        let forecasts = if states_confidence {
            let items: Vec<(&QaQuestion, &GenerationRecord, &ExtractionRecord)> = read
                .iter()
                .zip(&extractions)
                .map(|((q, g), e)| (*q, *g, e))
                .collect();
            Some(stages.run(
                FORECASTS_FILE,
                Stage::Forecast,
                &items,
                |(q, ..)| &q.id,
                |chunk| self.forecast(chunk),
            )?)
        } else {
            None
        };

        let choices: Vec<(&QaQuestion, Choice)> = questions
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let probabilities = forecasts.as_ref().map(|f| f[i].probabilities.as_slice());
                (q, choose_answer(&extractions[i].answers, probabilities))
            })
            .collect();
        let judgments = stages.run(
            JUDGMENTS_FILE,
            Stage::Judge,
            &choices,
            |(q, _)| &q.id,
            |chunk| self.judge(chunk),
        )?;

        let mut failures: Vec<(String, ItemFailure)> = Vec::new();
        let mut examples = Vec::with_capacity(questions.len());
        for (i, question) in questions.iter().enumerate() {
            let item_failures: Vec<&ItemFailure> = generations[i]
                .failure
                .iter()
                .chain(&extractions[i].failure)
                .chain(forecasts.iter().flat_map(|f| &f[i].failures))
                .chain(&judgments[i].failure)
                .collect();
            failures.extend(
                item_failures
                    .iter()
                    .map(|f| (question.id.clone(), (*f).clone())),
            );
            examples.push(ScoredExample::Qa(QaExample {
                id: question.id.clone(),
                question: question.question.clone(),
                gold_answer: question.answer.clone(),
                generated_text: generations[i].text.clone(),
                extracted_answers: extractions[i].answers.clone(),
                answer: judgments[i].answer.clone(),
                confidence: judgments[i].confidence,
                correct: judgments[i].correct,
                failures: item_failures.iter().map(|f| f.note()).collect(),
            }));
        }

        let mut extra = self.policy.settings_with(&self.extra);
        if !dataset.tally.skipped.is_empty() {
            extra.insert(
                "dataset rows left out".into(),
                json!(dataset.tally.to_string()),
            );
        }
        let settings = RunSettings {
            method: self.policy.method.name.clone(),
            model: self.model_label.clone(),
            dataset: dataset.name.clone(),
            split: dataset.split.clone(),
            reader: Some(self.reader.describe()),
            judge: Some(self.judge.describe()),
            extra,
        };
        let mut counts = BTreeMap::from([
            ("questions".to_string(), questions.len() as u64),
            ("failures".to_string(), failures.len() as u64),
        ]);
        counts.insert(
            "correct".into(),
            judgments.iter().filter(|j| j.correct).count() as u64,
        );
        stages.finish(&settings, examples, &failures, counts, 0)
    }

    fn extract(
        &self,
        chunk: &[&(&QaQuestion, &GenerationRecord)],
    ) -> Result<Vec<ExtractionRecord>, PipelineError> {
        // A paragraph that is empty (or was never written) has no answer to extract.
        let to_read: Vec<ReadInput<'_>> = chunk
            .iter()
            .filter(|(_, g)| !g.text.trim().is_empty())
            .map(|(q, g)| ReadInput {
                id: &q.id,
                question: &q.question,
                paragraph: &g.text,
                gold_aliases: &q.aliases,
            })
            .collect();
        let mut read = self.reader.extract(&to_read)?.into_iter();
        chunk
            .iter()
            .map(|(q, g)| {
                let outcome = if g.text.trim().is_empty() {
                    Ok(Vec::new())
                } else {
                    read.next()
                        .ok_or_else(|| too_few("reader", "extractions"))?
                };
                Ok(match outcome {
                    Ok(answers) => ExtractionRecord {
                        id: q.id.clone(),
                        answers,
                        failure: None,
                    },
                    Err(failure) => ExtractionRecord {
                        id: q.id.clone(),
                        answers: Vec::new(),
                        failure: Some(failure),
                    },
                })
            })
            .collect()
    }

    fn forecast(
        &self,
        chunk: &[&(&QaQuestion, &GenerationRecord, &ExtractionRecord)],
    ) -> Result<Vec<ForecastRecord>, PipelineError> {
        let inputs: Vec<ForecastInput<'_>> = chunk
            .iter()
            .flat_map(|(q, g, e)| {
                e.answers.iter().map(|candidate| ForecastInput {
                    id: &q.id,
                    question: &q.question,
                    paragraph: &g.text,
                    candidate,
                })
            })
            .collect();
        let mut forecasts = self.reader.forecast(&inputs)?.into_iter();
        chunk
            .iter()
            .map(|(q, _, e)| {
                let mut record = ForecastRecord {
                    id: q.id.clone(),
                    probabilities: Vec::with_capacity(e.answers.len()),
                    failures: Vec::new(),
                };
                for _ in &e.answers {
                    match forecasts
                        .next()
                        .ok_or_else(|| too_few("reader", "forecasts"))?
                    {
                        Ok(p) if (0.0..=1.0).contains(&p) => record.probabilities.push(Some(p)),
                        Ok(p) => {
                            record.probabilities.push(None);
                            record.failures.push(ItemFailure::without_call(
                                Stage::Forecast,
                                format!("the reader forecast {p}, not a probability"),
                            ));
                        }
                        Err(failure) => {
                            record.probabilities.push(None);
                            record.failures.push(failure);
                        }
                    }
                }
                Ok(record)
            })
            .collect()
    }

    fn judge(
        &self,
        chunk: &[&(&QaQuestion, Choice)],
    ) -> Result<Vec<JudgmentRecord>, PipelineError> {
        let inputs: Vec<JudgeInput<'_>> = chunk
            .iter()
            .filter_map(|(q, choice)| {
                choice.answer.as_deref().map(|proposed| JudgeInput {
                    id: &q.id,
                    question: &q.question,
                    gold: &q.answer,
                    aliases: &q.aliases,
                    proposed,
                })
            })
            .collect();
        let mut verdicts = self.judge.judge(&inputs)?.into_iter();
        chunk
            .iter()
            .map(|(q, choice)| {
                let (correct, failure) = match choice.answer {
                    None => (false, None),
                    Some(_) => match verdicts
                        .next()
                        .ok_or_else(|| too_few("judge", "verdicts"))?
                    {
                        Ok(correct) => (correct, None),
                        Err(failure) => (false, Some(failure)),
                    },
                };
                Ok(JudgmentRecord {
                    id: q.id.clone(),
                    answer: choice.answer.clone(),
                    confidence: choice.confidence,
                    correct,
                    failure,
                })
            })
            .collect()
    }
}

fn too_few(role: &str, what: &str) -> PipelineError {
    PipelineError::Invalid(format!(
        "the {role} returned fewer {what} than it was asked for"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn argmax_takes_the_highest_and_the_first_of_equals() {
        let a = answers(&["Paris", "Lyon", "Nice"]);
        let pick = |p: &[Option<f64>]| choose_answer(&a, Some(p));
        assert_eq!(
            pick(&[Some(0.2), Some(0.7), Some(0.7)]),
            Choice {
                answer: Some("Lyon".into()),
                confidence: Some(0.7)
            }
        );
        assert_eq!(
            pick(&[None, Some(0.1), Some(0.0)]).answer.as_deref(),
            Some("Lyon")
        );
        // Every forecast failed: the first answer, scored as certain.
        assert_eq!(
            pick(&[None, None, None]),
            Choice {
                answer: Some("Paris".into()),
                confidence: Some(1.0)
            }
        );
        assert_eq!(
            choose_answer(&a, None),
            Choice {
                answer: Some("Paris".into()),
                confidence: None
            }
        );
        assert_eq!(
            choose_answer(&[], Some(&[])),
            Choice {
                answer: None,
                confidence: None
            }
        );
    }
}
