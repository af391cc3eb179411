//! Summary distillation (SPEC 1.1, 1.2): questions into open-ended queries, base-model samples
//! of each query, and the teacher's summaries of the samples, which make the `sft_training` set.

use std::path::Path;

use lincal_data::artifact::{Failure, StageRun};
use lincal_data::parse::{
    first_paragraph, parse_open_ended_query, parse_rephrased_question, parse_summary,
};
use lincal_data::prompts::{ExtractionUse, Templates};
use lincal_data::schema::jsonl::write_jsonl;
use lincal_data::schema::write::write_sft_training;
use lincal_data::schema::{SftTarget, SftTrainingRow, sft_examples};
use lincal_data::{DataError, Result};
use lincal_llm::{LlmRequest, Prompt, request_seed};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::offline::{
    OFFLINE_QUERY_TEMPLATE, agreement_summary, answer_shares, answers_to, offline_query,
};
use crate::{
    Counts, JeopardyClue, Outcome, QueryRecord, QuestionInput, SampleAnswer, SampleRecord,
    Settings, Stage, StageContext, StageJob, StageReport, SummaryRecord, Teacher, chat_prompt,
    extraction_request, hiding_answer, parse_extraction, read_questions, read_stage_records,
    sampling,
};

/// Turns each question of a QA JSONL file into an open-ended query ("Write a paragraph about
/// ...") that does not give its answer away: a query containing any alias of the answer is
/// asked again. A question with a Jeopardy `category` is first rephrased into a question that
/// needs no category (which must not contain the answer either); the rephrased question then
/// replaces the clue in every later stage. Writes `queries.jsonl`.
///
/// Offline, the query is [`offline_query`]: the question inside a fixed request. A question
/// that contains its answer, or a Jeopardy clue, fails.
pub fn make_queries(
    cx: &StageContext,
    questions: &Path,
    out: &Path,
    settings: &Settings,
) -> Result<StageReport> {
    let templates = cx.templates;
    let inputs = read_questions(questions)?;
    if let Teacher::Offline { .. } = cx.teacher {
        let job = StageJob::new(
            cx,
            settings,
            Stage::Queries,
            &[],
            json!({"query_template": OFFLINE_QUERY_TEMPLATE}),
        )?;
        return job.run(
            out,
            questions,
            inputs,
            |chunk| {
                Ok(chunk
                    .iter()
                    .map(|input| offline_query_record(input))
                    .collect())
            },
            |_, _| Ok(Counts::new()),
        );
    }
    let job = StageJob::new(
        cx,
        settings,
        Stage::Queries,
        &["jeopardy_rephrase", "open_ended_query"],
        json!({}),
    )?;
    job.run(
        out,
        questions,
        inputs,
        |chunk| {
            // Jeopardy clues become plain questions first.
            let clues: Vec<&QuestionInput> = chunk
                .iter()
                .copied()
                .filter(|input| input.category.is_some())
                .collect();
            let mut rephrased = job
                .ask_each(
                    "rephrase",
                    &clues,
                    |input| {
                        let category = input.category.as_deref().unwrap_or_default();
                        templates.jeopardy_rephrase(
                            category,
                            &input.item.question,
                            &input.item.answer,
                        )
                    },
                    |input, text| {
                        hiding_answer(parse_rephrased_question(text)?, &input.item.aliases)
                    },
                )?
                .into_iter();
            // Each item's record with its question as the query will ask it, the query still
            // to write; or the failure of its rephrasing.
            let drafts: Vec<Outcome<QueryRecord>> = chunk
                .iter()
                .map(|input| {
                    let mut item = input.item.clone();
                    let jeopardy = match &input.category {
                        Some(category) => {
                            item.question = rephrased.next().expect("one outcome per clue")?;
                            Some(JeopardyClue {
                                category: category.clone(),
                                clue: input.item.question.clone(),
                            })
                        }
                        None => None,
                    };
                    Ok(QueryRecord {
                        item,
                        query: String::new(),
                        jeopardy,
                    })
                })
                .collect();
            let open: Vec<&QueryRecord> = drafts.iter().flatten().collect();
            let mut queries = job
                .ask_each(
                    "query",
                    &open,
                    |draft| templates.open_ended_query(&draft.item.question),
                    |draft, text| {
                        let query = parse_open_ended_query(text)?;
                        Ok(QueryRecord {
                            query: hiding_answer(query, &draft.item.aliases)?,
                            ..draft.clone()
                        })
                    },
                )?
                .into_iter();
            Ok(drafts
                .into_iter()
                .map(|draft| draft.and_then(|_| queries.next().expect("one outcome per open item")))
                .collect())
        },
        |_, _| Ok(Counts::new()),
    )
}

/// The offline query writer's record of a question (see [`make_queries`]).
fn offline_query_record(input: &QuestionInput) -> Outcome<QueryRecord> {
    let fail = |reason: String| Failure {
        id: input.item.id.clone(),
        step: "query".to_string(),
        reason,
        raw_text: None,
        attempts: 0,
    };
    if input.category.is_some() {
        return Err(fail(
            "a Jeopardy clue needs a model to rephrase it into a question; the offline query \
             writer takes plain questions"
                .to_string(),
        ));
    }
    let query = hiding_answer(offline_query(&input.item.question), &input.item.aliases).map_err(
        |error| {
            fail(format!(
                "the offline query holds the question whole: {error}"
            ))
        },
    )?;
    Ok(QueryRecord {
        item: input.item.clone(),
        query,
        jeopardy: None,
    })
}

/// The prompt the sampled model gets, and how its answer is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleTemplate {
    /// The base model's 8-shot prompt; the answer is cut at its first blank line (SPEC 1.2).
    Icl,
    /// The prompt of a fine-tuned policy (LC SFT, Factuality SFT...), for the paragraphs of
    /// reader training data (SPEC 1.4); the answer is kept whole.
    Policy,
    /// The zero-shot paragraph prompt (`paragraph_zero_shot`) through the model's chat
    /// template, for an instruction-tuned base model: a tenth of the 8-shot prompt's length,
    /// which matters on a CPU without a prefix cache. The answer is cut at its first blank
    /// line, and a last sentence left unfinished by the token limit is dropped.
    ZeroShot,
}

impl SampleTemplate {
    fn template_name(self) -> &'static str {
        match self {
            SampleTemplate::Icl => "icl_paragraphs",
            SampleTemplate::Policy => "policy",
            SampleTemplate::ZeroShot => "paragraph_zero_shot",
        }
    }

    fn render(self, templates: &Templates, query: &str) -> Result<Prompt> {
        Ok(match self {
            SampleTemplate::Icl => Prompt::Completion(templates.icl_paragraphs(query)?),
            SampleTemplate::Policy => Prompt::Completion(templates.policy(query)?),
            SampleTemplate::ZeroShot => chat_prompt(templates.paragraph_zero_shot(query)?),
        })
    }

    /// A base model goes on to write the next few-shot example after a blank line; stopping
    /// there saves its tokens and keeps exactly the text the cut keeps.
    fn stop(self) -> Vec<String> {
        match self {
            SampleTemplate::Icl => vec!["\n\n".to_string()],
            SampleTemplate::Policy | SampleTemplate::ZeroShot => Vec::new(),
        }
    }

    fn cut(self, text: &str) -> Result<String> {
        let paragraph = match self {
            SampleTemplate::Icl => first_paragraph(text),
            SampleTemplate::Policy => text.trim().to_string(),
            SampleTemplate::ZeroShot => whole_sentences(&first_paragraph(text)).to_string(),
        };
        if paragraph.is_empty() {
            Err(DataError::Invalid("the sample is empty".into()))
        } else {
            Ok(paragraph)
        }
    }
}

/// `text` without an unfinished last sentence: up to its last sentence end (".", "!" or "?"),
/// or all of it when it has none.
fn whole_sentences(text: &str) -> &str {
    match text.rfind(['.', '!', '?']) {
        Some(end) => &text[..=end],
        None => text,
    }
}

/// Samples `per_query` paragraphs for every query of a `distill-queries` directory (SPEC 1.2:
/// M = 8 from the base model, temperature 0.7, top-p 0.9), each from its own seed.
/// An empty sample is drawn again; an item whose sample stays empty fails whole. Writes
/// `samples.jsonl`.
pub fn sample_paragraphs(
    cx: &StageContext,
    queries_dir: &Path,
    out: &Path,
    settings: &Settings,
    per_query: usize,
    template: SampleTemplate,
) -> Result<StageReport> {
    let templates = cx.templates;
    if per_query == 0 {
        return Err(DataError::Invalid(
            "samples per query is 0; ask for at least one".into(),
        ));
    }
    let (records, input) = read_stage_records::<QueryRecord>(queries_dir, Stage::Queries)?;
    let job = StageJob::new(
        cx,
        settings,
        Stage::Sample,
        &[template.template_name()],
        json!({"samples_per_query": per_query, "template": template}),
    )?;
    job.run(
        out,
        &input,
        records,
        |chunk| {
            job.ask_all(
                "sample",
                chunk,
                |record| {
                    let prompt = template.render(templates, &record.query)?;
                    Ok((0..per_query)
                        .map(|j| {
                            let key = format!("{}/sample/{j}", record.item.id);
                            let params = sampling(
                                settings,
                                request_seed(settings.seed, &key),
                                template.stop(),
                            );
                            (
                                format!("sample {} of {per_query}: ", j + 1),
                                LlmRequest {
                                    prompt: prompt.clone(),
                                    params,
                                },
                            )
                        })
                        .collect())
                },
                |_, text| template.cut(text),
                |record, samples| SampleRecord {
                    item: record.item.clone(),
                    query: record.query.clone(),
                    samples,
                },
            )
        },
        |_, _| Ok(Counts::new()),
    )
}

/// Summarises the samples of every query of a `distill-sample` directory into one paragraph
/// whose confidence statements follow the share of samples that agree (SPEC 1.2). With
/// `distill_paragraphs`, the teacher also writes its own paragraph for the query (the Claude
/// Distill target). Writes `summaries.jsonl`, `sft_training.csv` in the reference schema (query,
/// summary, the samples as `icl_generated_paragraphs`, the teacher's paragraph), and the SFT
/// example sets it gives: `lc_sft.jsonl` (summaries), `factuality_sft.jsonl` (the first sample),
/// and `claude_distill.jsonl` (the teacher's paragraphs).
///
/// Offline, the summariser by agreement: the extractor finds the answer of each sample (the
/// first it lists that the question does not name itself; none if there is no such answer),
/// and [`agreement_summary`] states each answer's share of the samples
/// ([`answer_shares`]); the record keeps each sample's answer. A sample whose extraction
/// fails is left out of the shares; an item all of whose extractions fail fails. It writes no
/// paragraph of its own, so `distill_paragraphs` is refused.
pub fn summarize_samples(
    cx: &StageContext,
    samples_dir: &Path,
    out: &Path,
    settings: &Settings,
    distill_paragraphs: bool,
) -> Result<StageReport> {
    let templates = cx.templates;
    let (records, input) = read_stage_records::<SampleRecord>(samples_dir, Stage::Sample)?;
    let write_outputs = |run: &mut StageRun, summaries: &[SummaryRecord]| -> Result<Counts> {
        write_summary_outputs(run, summaries, templates, distill_paragraphs)?;
        Ok(Counts::new())
    };
    if let Teacher::Offline { .. } = cx.teacher {
        if distill_paragraphs {
            return Err(DataError::Invalid(
                "the offline summariser writes no paragraph of its own (the Claude Distill \
                 target); leave distill_paragraphs off, or give a teacher model"
                    .into(),
            ));
        }
        let job = StageJob::new(
            cx,
            settings,
            Stage::Summarize,
            &[cx.extraction.template(), "policy"],
            json!({"distill_paragraphs": false}),
        )?;
        return job.run(
            out,
            &input,
            records,
            |chunk| {
                let extractions = job.ask_requests(
                    "extract",
                    chunk,
                    |record| {
                        let count = record.samples.len();
                        record
                            .samples
                            .iter()
                            .enumerate()
                            .map(|(j, sample)| {
                                // Seeded by the text, so that equal samples make one
                                // request (the client asks it once) and get one answer.
                                let key = format!("{}/extract/{sample}", record.item.id);
                                let seed = request_seed(settings.seed, &key);
                                let request = extraction_request(
                                    templates,
                                    cx.extraction,
                                    &record.item.question,
                                    sample,
                                    ExtractionUse::TrainingLabels,
                                    sampling(settings, seed, Vec::new()),
                                )?;
                                Ok((format!("sample {} of {count}: ", j + 1), request))
                            })
                            .collect()
                    },
                    |_, text| parse_extraction(cx.extraction, text),
                )?;
                Ok(chunk
                    .iter()
                    .zip(extractions)
                    .map(|(record, extractions)| agreement_record(record, extractions))
                    .collect())
            },
            write_outputs,
        );
    }
    let mut template_names = vec!["summarize_samples", "policy"];
    if distill_paragraphs {
        template_names.push("paragraph_zero_shot");
    }
    let job = StageJob::new(
        cx,
        settings,
        Stage::Summarize,
        &template_names,
        json!({"distill_paragraphs": distill_paragraphs}),
    )?;
    job.run(
        out,
        &input,
        records,
        |chunk| {
            let summaries = job.ask_each(
                "summary",
                chunk,
                |record| templates.summarize_samples(&record.samples),
                |_, text| parse_summary(text),
            )?;
            let mut paragraphs = Vec::new();
            if distill_paragraphs {
                paragraphs = job.ask_each(
                    "paragraph",
                    chunk,
                    |record| templates.paragraph_zero_shot(&record.query),
                    |_, text| {
                        let paragraph = text.trim();
                        if paragraph.is_empty() {
                            Err(DataError::Invalid("the paragraph is empty".into()))
                        } else {
                            Ok(paragraph.to_string())
                        }
                    },
                )?;
            }
            let mut paragraphs = paragraphs.into_iter();
            Ok(chunk
                .iter()
                .zip(summaries)
                .map(|(record, summary)| {
                    // Taken before any early return, so that the paragraphs stay in step.
                    let paragraph = paragraphs.next();
                    Ok(SummaryRecord {
                        item: record.item.clone(),
                        query: record.query.clone(),
                        samples: record.samples.clone(),
                        summary: summary?,
                        distilled_paragraph: paragraph.transpose()?,
                        sample_answers: Vec::new(),
                    })
                })
                .collect())
        },
        write_outputs,
    )
}

/// The summary by agreement of a query's samples, from the outcome of each sample's
/// extraction (see [`summarize_samples`]).
fn agreement_record(
    record: &SampleRecord,
    extractions: Vec<Outcome<Vec<String>>>,
) -> Outcome<SummaryRecord> {
    if !extractions.iter().any(std::result::Result::is_ok)
        && let Some(Err(first)) = extractions.first()
    {
        return Err(first.clone());
    }
    let sample_answers: Vec<SampleAnswer> = extractions
        .into_iter()
        .map(|extraction| match extraction {
            Ok(answers) => match answers_to(&record.item.question, &answers).first() {
                Some(answer) => SampleAnswer::Answer(answer.to_string()),
                None => SampleAnswer::NoAnswer,
            },
            Err(failure) => SampleAnswer::Failed(failure.reason),
        })
        .collect();
    Ok(SummaryRecord {
        item: record.item.clone(),
        query: record.query.clone(),
        samples: record.samples.clone(),
        summary: agreement_summary(&answer_shares(&sample_answers)),
        distilled_paragraph: None,
        sample_answers,
    })
}

/// `sft_training.csv` and the SFT example sets of the summaries (see [`summarize_samples`]).
fn write_summary_outputs(
    run: &mut StageRun,
    summaries: &[SummaryRecord],
    templates: &Templates,
    distill_paragraphs: bool,
) -> Result<()> {
    let rows: Vec<SftTrainingRow> = summaries
        .iter()
        .map(|record| SftTrainingRow {
            question_id: record.item.id.clone(),
            paragraph_generation_prompt: Some(record.query.clone()),
            claude_summary: Some(record.summary.clone()),
            icl_generated_paragraphs: Some(record.samples.iter().cloned().map(Some).collect()),
            icl_generated_paragraphs_error: None,
            claude_generated_paragraph: record.distilled_paragraph.clone(),
        })
        .collect();
    run.write_output("sft_training.csv", |path| write_sft_training(path, &rows))?;
    let mut sets = vec![
        (SftTarget::LcSft, "lc_sft.jsonl"),
        (SftTarget::FactualitySft, "factuality_sft.jsonl"),
    ];
    if distill_paragraphs {
        sets.push((SftTarget::ClaudeDistill, "claude_distill.jsonl"));
    }
    for (target, name) in sets {
        let (examples, _) = sft_examples(&rows, target, &|query| templates.policy(query))?;
        run.write_output(name, |path| write_jsonl(path, &examples))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_shot_samples_keep_their_first_paragraph_in_whole_sentences() {
        let cut = |text| SampleTemplate::ZeroShot.cut(text).unwrap();
        assert_eq!(
            cut(" Lima is the capital of Peru. It lies on the"),
            "Lima is the capital of Peru."
        );
        assert_eq!(cut("Is it Lima? Yes!\n\nNext query"), "Is it Lima? Yes!");
        // No sentence end at all: the text as it is.
        assert_eq!(cut("Lima, on the coast"), "Lima, on the coast");
        assert!(SampleTemplate::ZeroShot.cut("  \n").is_err());
        let prompt = SampleTemplate::ZeroShot
            .render(&Templates::builtin().unwrap(), "Write about Lima.")
            .unwrap();
        assert!(matches!(prompt, Prompt::Chat(_)));
        assert_eq!(
            serde_json::to_value(SampleTemplate::ZeroShot).unwrap(),
            "zero_shot"
        );
    }
}
