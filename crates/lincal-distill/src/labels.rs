//! Reader training labels (SPEC 1.4, Algorithm 1 of the paper, and 1.8): answers extracted from
//! paragraphs, a probability for every candidate answer (the gold answer always among them),
//! and 0/1 correctness for the Factuality reward model, written in the `reward_model_training`
//! schema and as ready example sets.

use std::path::{Path, PathBuf};

use lincal_data::artifact::{Manifest, StageRun};
use lincal_data::parse::{
    normalize_answer, parse_correctness, parse_extracted_answers, parse_probability,
};
use lincal_data::prompts::ExtractionUse;
use lincal_data::schema::jsonl::write_jsonl;
use lincal_data::schema::write::{write_reward_model_training, write_trivia_qa_jsonl};
use lincal_data::schema::{
    ReaderPromptInput, RewardModelTrainingRow, TriviaQuestion, WithQuestion,
    binary_correctness_examples, extract_answers_examples, forecast_probs_examples,
};
use lincal_data::sources::{QaRecord, read_qa_records};
use lincal_data::{DataError, Result};
use lincal_llm::request_seed;
use serde_json::json;

use crate::{
    CorrectnessRecord, ExtractionRecord, ForecastRecord, ParagraphRecord, SampleRecord, Settings,
    Stage, StageContext, StageJob, StageReport, SummaryRecord, chat_request, read_stage_records,
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
/// the 8-shot training-label prompt). Writes `extractions.jsonl`.
pub fn extract_answers(
    cx: &StageContext,
    paragraphs: &Path,
    out: &Path,
    settings: &Settings,
) -> Result<StageReport> {
    let (records, input) = read_paragraphs(paragraphs)?;
    let job = StageJob::new(
        cx,
        settings,
        Stage::Extract,
        &["extract_answers"],
        json!({}),
    )?;
    job.run(
        out,
        &input,
        records,
        |chunk| {
            job.ask_each(
                "extract",
                chunk,
                |record| {
                    cx.templates.extract_answers(
                        &record.item.question,
                        &record.paragraph,
                        ExtractionUse::TrainingLabels,
                    )
                },
                |record, text| {
                    Ok(ExtractionRecord {
                        item: record.item.clone(),
                        paragraph: record.paragraph.clone(),
                        extracted_answers: parse_extracted_answers(text)?,
                    })
                },
            )
        },
        |_, _| Ok(()),
    )
}

/// Asks the teacher, for every paragraph of a `label-extract` directory and every candidate
/// answer (the gold answer first, always, then each extracted answer: SPEC 1.4 step 3), the
/// probability that the candidate is correct judging by the paragraph alone. An item whose
/// forecast fails for any candidate fails whole, since a row must carry every candidate.
/// Writes `forecasts.jsonl`, `reward_model_training.csv` (the LC columns), `questions.jsonl`
/// (TriviaQA format, for the reader join), the ExtractAnswers SFT set `extract_answers.jsonl`
/// and the ForecastProbs reward-model set `forecast_probs.jsonl`.
pub fn forecast_candidates(
    cx: &StageContext,
    extractions_dir: &Path,
    out: &Path,
    settings: &Settings,
) -> Result<StageReport> {
    let templates = cx.templates;
    let (records, input) = read_stage_records::<ExtractionRecord>(extractions_dir, Stage::Extract)?;
    let job = StageJob::new(
        cx,
        settings,
        Stage::Forecast,
        &[
            "forecast_probability",
            "extract_answers_model",
            "forecast_probs_model",
        ],
        json!({}),
    )?;
    job.run(
        out,
        &input,
        records,
        |chunk| {
            job.ask_all(
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
                |record, probabilities| ForecastRecord {
                    item: record.item.clone(),
                    paragraph: record.paragraph.clone(),
                    candidates: candidates(record),
                    probabilities,
                },
            )
        },
        |run, forecasts| {
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
            let (extract_set, _) =
                extract_answers_examples(&rows, &|input: &ReaderPromptInput| {
                    templates.extract_answers_model(input.question, input.paragraph)
                })?;
            run.write_output("extract_answers.jsonl", |path| {
                write_jsonl(path, &extract_set)
            })?;
            let (forecast_set, _) =
                forecast_probs_examples(&rows, &|input: &ReaderPromptInput| {
                    templates.forecast_probs_model(input.question, input.paragraph, input.answer)
                })?;
            run.write_output("forecast_probs.jsonl", |path| {
                write_jsonl(path, &forecast_set)
            })
        },
    )
}

/// Asks the teacher whether each paragraph gives the gold answer, and only it (SPEC 1.8; the
/// paragraphs of the Factuality SFT model). Writes `correctness.jsonl`,
/// `reward_model_training.csv` (the Factuality columns), `questions.jsonl` and the Factuality
/// reward-model set `binary_correctness.jsonl`.
pub fn judge_correctness(
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
                    })
                },
            )
        },
        |run, verdicts| {
            let rows: Vec<WithQuestion<RewardModelTrainingRow>> = verdicts
                .iter()
                .map(|record| WithQuestion {
                    row: RewardModelTrainingRow {
                        question_id: record.item.id.clone(),
                        lc_sft_generated_paragraph: None,
                        lc_sft_ground_truth_and_extracted_answers: None,
                        lc_sft_forecasted_probs: None,
                        factuality_sft_generated_paragraph: Some(record.paragraph.clone()),
                        factuality_sft_binary_correctness: Some(if record.correct {
                            1.0
                        } else {
                            0.0
                        }),
                    },
                    question: trivia_question(&record.item),
                })
                .collect();
            write_reward_rows(run, &rows)?;
            let (set, _) = binary_correctness_examples(&rows, &|input: &ReaderPromptInput| {
                templates.binary_correctness_model(input.question, input.paragraph, input.answer)
            })?;
            run.write_output("binary_correctness.jsonl", |path| write_jsonl(path, &set))
        },
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
