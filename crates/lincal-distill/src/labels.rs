//! Reader training labels (SPEC 1.4, Algorithm 1 of the paper, and 1.8): answers extracted from
//! paragraphs, a probability for every candidate answer (the gold answer always among them),
//! and 0/1 correctness for the Factuality reward model, written in the `reward_model_training`
//! schema and as ready example sets.

use std::path::{Path, PathBuf};

use lincal_data::artifact::{Manifest, StageRun};
use lincal_data::parse::{LexicalReader, normalize_answer, parse_correctness, parse_probability};
use lincal_data::schema::jsonl::write_jsonl;
use lincal_data::schema::write::{write_reward_model_training, write_trivia_qa_jsonl};
use lincal_data::schema::{
    ReaderPromptInput, RewardModelTrainingRow, SftExample, TriviaQuestion, WithQuestion,
    binary_correctness_examples, extract_answers_target, forecast_probs_examples,
};
use lincal_data::sources::{QaRecord, read_qa_records};
use lincal_data::{DataError, Result};
use lincal_llm::request_seed;
use serde_json::json;

use crate::offline::{answers_to, exact_match_label};
use crate::{
    CorrectnessRecord, Counts, ExtractionRecord, ForecastRecord, ParagraphRecord, SampleRecord,
    Settings, Stage, StageContext, StageJob, StageReport, SummaryRecord, Teacher, chat_request,
    read_stage_records,
};

/// The paragraphs to label, and the file they come from. `path` is the directory of a finished
/// `distill-summarize` stage (its summaries: LC SFT paragraphs), of a `distill-sample` stage (the
/// first sample of each query: base-model or policy paragraphs), or a JSONL file of
/// [`ParagraphRecord`]s (`{"id", "question", "answer", "aliases", "paragraph"}`; what `lincal
/// generate` writes, with the paragraph as `completion`, works too).
pub fn read_paragraphs(path: &Path) -> Result<(Vec<ParagraphRecord>, PathBuf)> {
    if !path.is_dir() {
        let records = read_qa_records(path, |record: &ParagraphRecord| {
            if record.paragraph.trim().is_empty() {
                Err(format!("record {} has an empty paragraph", record.item.id))
            } else {
                Ok(())
            }
        })?;
        return Ok((records, path.to_path_buf()));
    }
    let stage = Manifest::read(path)?.stage;
    if stage == Stage::Summarize.name() {
        let (summaries, input) = read_stage_records::<SummaryRecord>(path, Stage::Summarize)?;
        let records = summaries
            .into_iter()
            .map(|record| ParagraphRecord {
                item: record.item,
                paragraph: record.summary,
            })
            .collect();
        Ok((records, input))
    } else if stage == Stage::Sample.name() {
        let (samples, input) = read_stage_records::<SampleRecord>(path, Stage::Sample)?;
        let records = samples
            .into_iter()
            .map(|record| ParagraphRecord {
                paragraph: record.samples.into_iter().next().unwrap_or_default(),
                item: record.item,
            })
            .collect();
        Ok((records, input))
    } else {
        Err(DataError::File {
            path: path.to_path_buf(),
            message: format!(
                "holds a `{stage}` stage; give the directory of a `{}` or `{}` stage, or a JSONL \
                 file of {{\"id\", \"question\", \"answer\", \"aliases\", \"paragraph\"}} records",
                Stage::Summarize.name(),
                Stage::Sample.name()
            ),
        })
    }
}

/// Asks the teacher which answers each paragraph gives to its question (SPEC 1.4 step 2, with
/// the 8-shot training-label prompt; a reply without its answers line fails). Writes
/// `extractions.jsonl` and the ExtractAnswers SFT set `extract_answers.jsonl` (SPEC 1.5), one
/// example per paragraph whatever becomes of its forecasts. There is no offline teacher:
/// finding the answers of free text needs a model.
pub fn extract_answers(
    cx: &StageContext,
    paragraphs: &Path,
    out: &Path,
    settings: &Settings,
) -> Result<StageReport> {
    let templates = cx.templates;
    let (records, input) = read_paragraphs(paragraphs)?;
    let job = StageJob::new(
        cx,
        settings,
        Stage::Extract,
        &[cx.extraction.template(), "extract_answers_model"],
        json!({}),
    )?;
    job.run(
        out,
        &input,
        records,
        |chunk| {
            job.extract_each(
                chunk,
                |record| (&record.item.question, &record.paragraph),
                |record, extracted_answers| ExtractionRecord {
                    item: record.item.clone(),
                    paragraph: record.paragraph.clone(),
                    extracted_answers,
                },
            )
        },
        |run, extractions| {
            let examples = extractions
                .iter()
                .map(|record| {
                    Ok(SftExample {
                        question_id: Some(record.item.id.clone()),
                        prompt: templates
                            .extract_answers_model(&record.item.question, &record.paragraph)?,
                        target: extract_answers_target(&record.extracted_answers),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            run.write_output("extract_answers.jsonl", |path| write_jsonl(path, &examples))?;
            Ok(Counts::new())
        },
    )
}

/// Asks the teacher, for every paragraph of a `label-extract` directory and every candidate
/// answer (the gold answer first, always, then each extracted answer: SPEC 1.4 step 3), the
/// probability that the candidate is correct judging by the paragraph alone. An extracted
/// candidate whose forecast fails is dropped from its row (and listed in the record's
/// `dropped_candidates`, counted as `dropped_candidates`); the item fails only when the gold
/// answer's forecast does, since a row of the reference schema starts with it. Writes
/// `forecasts.jsonl`, `reward_model_training.csv` (the LC columns), `questions.jsonl`
/// (TriviaQA format, for the reader join) and the ForecastProbs reward-model set
/// `forecast_probs.jsonl`.
///
/// Offline, the probability of a candidate is the confidence the paragraph states for it
/// ([`LexicalReader::forecast`] with the default hedge table), for the gold answer the highest
/// stated for any of its aliases: nothing fails.
pub fn forecast_candidates(
    cx: &StageContext,
    extractions_dir: &Path,
    out: &Path,
    settings: &Settings,
) -> Result<StageReport> {
    let templates = cx.templates;
    let (records, input) = read_stage_records::<ExtractionRecord>(extractions_dir, Stage::Extract)?;
    let write_outputs = |run: &mut StageRun, forecasts: &[ForecastRecord]| -> Result<Counts> {
        let rows: Vec<WithQuestion<RewardModelTrainingRow>> = forecasts
            .iter()
            .map(|record| WithQuestion {
                row: RewardModelTrainingRow {
                    question_id: record.item.id.clone(),
                    lc_sft_generated_paragraph: Some(record.paragraph.clone()),
                    lc_sft_ground_truth_and_extracted_answers: Some(
                        record.candidates.iter().cloned().map(Some).collect(),
                    ),
                    lc_sft_forecasted_probs: Some(record.probabilities.clone()),
                    factuality_sft_generated_paragraph: None,
                    factuality_sft_binary_correctness: None,
                },
                question: trivia_question(&record.item),
            })
            .collect();
        write_reward_rows(run, &rows)?;
        let (forecast_set, _) = forecast_probs_examples(&rows, &|input: &ReaderPromptInput| {
            templates.forecast_probs_model(input.question, input.paragraph, input.answer)
        })?;
        run.write_output("forecast_probs.jsonl", |path| {
            write_jsonl(path, &forecast_set)
        })?;
        let dropped: usize = forecasts
            .iter()
            .map(|record| record.dropped_candidates.len())
            .sum();
        Ok(Counts::from([(
            "dropped_candidates".to_string(),
            dropped as u64,
        )]))
    };
    if let Teacher::Offline { .. } = cx.teacher {
        let job = StageJob::new(
            cx,
            settings,
            Stage::Forecast,
            &["forecast_probs_model"],
            json!({}),
        )?;
        let reader = LexicalReader::default();
        return job.run(
            out,
            &input,
            records,
            |chunk| {
                Ok(chunk
                    .iter()
                    .map(|record| {
                        let candidates = candidates(record);
                        let mut probabilities = reader.forecast(&record.paragraph, &candidates);
                        // The paragraph may state the gold answer under any of its aliases.
                        probabilities[0] = reader
                            .forecast(&record.paragraph, &record.item.aliases)
                            .into_iter()
                            .fold(probabilities[0], f64::max);
                        Ok(ForecastRecord {
                            item: record.item.clone(),
                            paragraph: record.paragraph.clone(),
                            candidates,
                            probabilities,
                            dropped_candidates: Vec::new(),
                        })
                    })
                    .collect())
            },
            write_outputs,
        );
    }
    let job = StageJob::new(
        cx,
        settings,
        Stage::Forecast,
        &["forecast_probability", "forecast_probs_model"],
        json!({}),
    )?;
    job.run(
        out,
        &input,
        records,
        |chunk| {
            let forecasts = job.ask_requests(
                "forecast",
                chunk,
                |record| {
                    candidates(record)
                        .iter()
                        .map(|candidate| {
                            let messages = templates.forecast_probability(
                                &record.item.question,
                                &record.paragraph,
                                candidate,
                            )?;
                            // Keyed by the candidate's text: the gold answer extracted again is
                            // the same request, asked once.
                            let key = format!("{}/forecast/{candidate}", record.item.id);
                            let seed = request_seed(settings.seed, &key);
                            Ok((
                                format!("candidate \"{candidate}\": "),
                                chat_request(messages, settings, seed),
                            ))
                        })
                        .collect()
                },
                |_, text| parse_probability(text),
            )?;
            Ok(chunk
                .iter()
                .zip(forecasts)
                .map(|(record, forecasts)| {
                    let mut row = ForecastRecord {
                        item: record.item.clone(),
                        paragraph: record.paragraph.clone(),
                        candidates: Vec::new(),
                        probabilities: Vec::new(),
                        dropped_candidates: Vec::new(),
                    };
                    for (index, (candidate, forecast)) in
                        candidates(record).into_iter().zip(forecasts).enumerate()
                    {
                        match forecast {
                            Ok(probability) => {
                                row.candidates.push(candidate);
                                row.probabilities.push(probability);
                            }
                            // The gold answer's failure is the item's.
                            Err(failure) if index == 0 => return Err(failure),
                            Err(failure) => row.dropped_candidates.push(failure),
                        }
                    }
                    Ok(row)
                })
                .collect())
        },
        write_outputs,
    )
}

/// Asks the teacher whether each paragraph gives the gold answer, and only it (SPEC 1.8; the
/// paragraphs of the Factuality SFT model). Writes `correctness.jsonl`,
/// `reward_model_training.csv` (the Factuality columns), `questions.jsonl` and the Factuality
/// reward-model set `binary_correctness.jsonl`.
///
/// Offline, the extractor finds the answers of each paragraph (it never sees the gold answer)
/// and the label is [`exact_match_label`]: correct when there is at least one and each equals
/// an alias of the gold answer after normalisation. The record keeps the answers.
pub fn judge_correctness(
    cx: &StageContext,
    paragraphs: &Path,
    out: &Path,
    settings: &Settings,
) -> Result<StageReport> {
    let templates = cx.templates;
    let (records, input) = read_paragraphs(paragraphs)?;
    let write_outputs = |run: &mut StageRun, verdicts: &[CorrectnessRecord]| -> Result<Counts> {
        let rows: Vec<WithQuestion<RewardModelTrainingRow>> = verdicts
            .iter()
            .map(|record| WithQuestion {
                row: RewardModelTrainingRow {
                    question_id: record.item.id.clone(),
                    lc_sft_generated_paragraph: None,
                    lc_sft_ground_truth_and_extracted_answers: None,
                    lc_sft_forecasted_probs: None,
                    factuality_sft_generated_paragraph: Some(record.paragraph.clone()),
                    factuality_sft_binary_correctness: Some(if record.correct { 1.0 } else { 0.0 }),
                },
                question: trivia_question(&record.item),
            })
            .collect();
        write_reward_rows(run, &rows)?;
        let (set, _) = binary_correctness_examples(&rows, &|input: &ReaderPromptInput| {
            templates.binary_correctness_model(input.question, input.paragraph, input.answer)
        })?;
        run.write_output("binary_correctness.jsonl", |path| write_jsonl(path, &set))?;
        Ok(Counts::new())
    };
    if let Teacher::Offline { .. } = cx.teacher {
        let job = StageJob::new(
            cx,
            settings,
            Stage::Binary,
            &[cx.extraction.template(), "binary_correctness_model"],
            json!({}),
        )?;
        return job.run(
            out,
            &input,
            records,
            |chunk| {
                job.extract_each(
                    chunk,
                    |record| (&record.item.question, &record.paragraph),
                    |record, answers| CorrectnessRecord {
                        item: record.item.clone(),
                        paragraph: record.paragraph.clone(),
                        correct: exact_match_label(
                            &answers_to(&record.item.question, &answers),
                            &record.item.aliases,
                        ),
                        extracted_answers: Some(answers),
                    },
                )
            },
            write_outputs,
        );
    }
    let job = StageJob::new(
        cx,
        settings,
        Stage::Binary,
        &["binary_correctness", "binary_correctness_model"],
        json!({}),
    )?;
    job.run(
        out,
        &input,
        records,
        |chunk| {
            job.ask_each(
                "binary",
                chunk,
                |record| {
                    templates.binary_correctness(
                        &record.item.question,
                        &record.paragraph,
                        &record.item.answer,
                    )
                },
                |record, text| {
                    Ok(CorrectnessRecord {
                        item: record.item.clone(),
                        paragraph: record.paragraph.clone(),
                        correct: parse_correctness(text)?,
                        extracted_answers: None,
                    })
                },
            )
        },
        write_outputs,
    )
}

/// The answers to forecast for an extraction: the gold answer first, always, then each
/// extracted answer (SPEC 1.4 step 3).
fn candidates(record: &ExtractionRecord) -> Vec<String> {
    std::iter::once(record.item.answer.clone())
        .chain(record.extracted_answers.iter().cloned())
        .collect()
}

/// The question of an item in TriviaQA's shape, for the reader join.
fn trivia_question(item: &QaRecord) -> TriviaQuestion {
    TriviaQuestion {
        question_id: item.id.clone(),
        question: item.question.clone(),
        answer: item.answer.clone(),
        aliases: item.aliases.clone(),
        normalized_aliases: item
            .aliases
            .iter()
            .map(|alias| normalize_answer(alias))
            .collect(),
    }
}

/// `reward_model_training.csv` and the `questions.jsonl` it joins with.
fn write_reward_rows(
    run: &mut StageRun,
    rows: &[WithQuestion<RewardModelTrainingRow>],
) -> Result<()> {
    let table: Vec<RewardModelTrainingRow> = rows.iter().map(|row| row.row.clone()).collect();
    run.write_output("reward_model_training.csv", |path| {
        write_reward_model_training(path, &table)
    })?;
    let questions: Vec<TriviaQuestion> = rows.iter().map(|row| row.question.clone()).collect();
    run.write_output("questions.jsonl", |path| {
        write_trivia_qa_jsonl(path, &questions)
    })
}
