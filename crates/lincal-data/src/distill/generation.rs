//! Summary distillation (SPEC 1.1, 1.2): questions into open-ended queries, base-model samples
//! of each query, and the teacher's summaries of the samples, which make the `sft_training` set.

use std::path::Path;

use lincal_llm::{LlmRequest, generate_parsed};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    JeopardyClue, QueryRecord, SampleRecord, Settings, Stage, StageContext, StageJob, StageReport,
    SummaryRecord, chat_request, failure, generate_parsed_checked, read_questions,
    read_stage_records, request_seed, reveals_answer, sampling, stage_config, take_limit,
};
use crate::artifact::Failure;
use crate::parse::{
    first_paragraph, parse_open_ended_query, parse_rephrased_question, parse_summary,
};
use crate::prompts::Templates;
use crate::schema::jsonl::write_jsonl;
use crate::schema::write::write_sft_training;
use crate::schema::{SftTarget, SftTrainingRow, sft_examples};
use crate::{DataError, Result};

/// Turns each question of a QA JSONL file into an open-ended query ("Write a paragraph about
/// ...") that does not give its answer away: a query containing any alias of the answer is
/// asked again. A question with a Jeopardy `category` is first rephrased into a question that
/// needs no category (which must not contain the answer either); the rephrased question then
/// replaces the clue in every later stage. Writes `queries.jsonl`.
pub fn make_queries(
    cx: &StageContext,
    questions: &Path,
    out: &Path,
    settings: &Settings,
) -> Result<StageReport> {
    let (llm, templates) = (cx.llm, cx.templates);
    let inputs = take_limit(read_questions(questions)?, settings);
    let config = stage_config(
        llm,
        templates,
        &["jeopardy_rephrase", "open_ended_query"],
        settings,
        json!({}),
    )?;
    let job = StageJob {
        stage: Stage::Queries,
        config,
        input: questions,
        items: &inputs,
        id_of: |input| &input.item.id,
    };
    job.run(
        out,
        &cx.options,
        |chunk| {
            // Jeopardy clues become plain questions first.
            let clues: Vec<usize> = (0..chunk.len())
                .filter(|&i| chunk[i].category.is_some())
                .collect();
            let requests = clues
                .iter()
                .map(|&i| {
                    let input = chunk[i];
                    let category = input.category.as_deref().unwrap_or_default();
                    let messages = templates.jeopardy_rephrase(
                        category,
                        &input.item.question,
                        &input.item.answer,
                    )?;
                    let seed = request_seed(settings.seed, &format!("{}/rephrase", input.item.id));
                    Ok(chat_request(messages, settings, seed))
                })
                .collect::<Result<Vec<LlmRequest>>>()?;
            let rephrased = generate_parsed_checked(
                llm,
                &requests,
                settings.max_attempts,
                |text| parse_rephrased_question(text).map_err(|e| e.to_string()),
                |k, question| reveals_answer(question, &chunk[clues[k]].item.aliases),
            );
            let mut outcomes: Vec<Option<std::result::Result<QueryRecord, Failure>>> =
                chunk.iter().map(|_| None).collect();
            let mut questions: Vec<String> = chunk
                .iter()
                .map(|input| input.item.question.clone())
                .collect();
            for (&i, result) in clues.iter().zip(rephrased) {
                match result {
                    Ok(parsed) => {
                        questions[i] = parsed.values.into_iter().next().unwrap_or_default()
                    }
                    Err(error) => {
                        outcomes[i] = Some(Err(failure(&chunk[i].item.id, "rephrase", "", error)))
                    }
                }
            }
            let open: Vec<usize> = (0..chunk.len())
                .filter(|&i| outcomes[i].is_none())
                .collect();
            let requests = open
                .iter()
                .map(|&i| {
                    let seed = request_seed(settings.seed, &format!("{}/query", chunk[i].item.id));
                    Ok(chat_request(
                        templates.open_ended_query(&questions[i])?,
                        settings,
                        seed,
                    ))
                })
                .collect::<Result<Vec<LlmRequest>>>()?;
            let queries = generate_parsed_checked(
                llm,
                &requests,
                settings.max_attempts,
                |text| parse_open_ended_query(text).map_err(|e| e.to_string()),
                |k, query| reveals_answer(query, &chunk[open[k]].item.aliases),
            );
            for (&i, result) in open.iter().zip(queries) {
                let input = chunk[i];
                outcomes[i] = Some(match result {
                    Ok(parsed) => {
                        let mut item = input.item.clone();
                        item.question = questions[i].clone();
                        Ok(QueryRecord {
                            item,
                            query: parsed.values.into_iter().next().unwrap_or_default(),
                            jeopardy: input.category.as_ref().map(|category| JeopardyClue {
                                category: category.clone(),
                                clue: input.item.question.clone(),
                            }),
                        })
                    }
                    Err(error) => Err(failure(&input.item.id, "query", "", error)),
                });
            }
            Ok(outcomes.into_iter().flatten().collect())
        },
        |_, _| Ok(()),
    )
}

/// The prompt the sampled model gets, and how its answer is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleTemplate {
    /// The base model's 8-shot prompt; the answer is cut at its first blank line (SPEC 1.2).
    Icl,
    /// The prompt of a fine-tuned policy (LC SFT, Factuality SFT...), for the paragraphs of
    /// reader training data (SPEC 1.4); the answer is kept whole.
    Policy,
}

impl SampleTemplate {
    fn template_name(self) -> &'static str {
        match self {
            SampleTemplate::Icl => "icl_paragraphs",
            SampleTemplate::Policy => "policy",
        }
    }

    fn render(self, templates: &Templates, query: &str) -> Result<String> {
        match self {
            SampleTemplate::Icl => templates.icl_paragraphs(query),
            SampleTemplate::Policy => templates.policy(query),
        }
    }

    /// A base model goes on to write the next few-shot example after a blank line; stopping
    /// there saves its tokens and keeps exactly the text the cut keeps.
    fn stop(self) -> Vec<String> {
        match self {
            SampleTemplate::Icl => vec!["\n\n".to_string()],
            SampleTemplate::Policy => Vec::new(),
        }
    }

    fn cut(self, text: &str) -> std::result::Result<String, String> {
        let paragraph = match self {
            SampleTemplate::Icl => first_paragraph(text),
            SampleTemplate::Policy => text.trim().to_string(),
        };
        if paragraph.is_empty() {
            Err("the sample is empty".to_string())
        } else {
            Ok(paragraph)
        }
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
    let (llm, templates) = (cx.llm, cx.templates);
    if per_query == 0 {
        return Err(DataError::Invalid(
            "samples per query is 0; ask for at least one".into(),
        ));
    }
    let (records, input) = read_stage_records::<QueryRecord>(queries_dir, Stage::Queries)?;
    let records = take_limit(records, settings);
    let config = stage_config(
        llm,
        templates,
        &[template.template_name()],
        settings,
        json!({"samples_per_query": per_query, "template": template}),
    )?;
    let job = StageJob {
        stage: Stage::Sample,
        config,
        input: &input,
        items: &records,
        id_of: |record| &record.item.id,
    };
    job.run(
        out,
        &cx.options,
        |chunk| {
            let mut requests = Vec::with_capacity(chunk.len() * per_query);
            for record in chunk {
                let prompt = template.render(templates, &record.query)?;
                for j in 0..per_query {
                    let seed =
                        request_seed(settings.seed, &format!("{}/sample/{j}", record.item.id));
                    requests.push(LlmRequest::completion(
                        prompt.clone(),
                        sampling(settings, seed, template.stop()),
                    ));
                }
            }
            let mut outcomes = generate_parsed(llm, &requests, settings.max_attempts, |text| {
                template.cut(text)
            })
            .into_iter();
            Ok(chunk
                .iter()
                .map(|record| {
                    let mut samples = Vec::with_capacity(per_query);
                    let mut first_failure = None;
                    for j in 0..per_query {
                        match outcomes.next() {
                            Some(Ok(parsed)) => samples.extend(parsed.values),
                            Some(Err(error)) if first_failure.is_none() => {
                                let what = format!("sample {} of {per_query}: ", j + 1);
                                first_failure =
                                    Some(failure(&record.item.id, "sample", &what, error));
                            }
                            _ => {}
                        }
                    }
                    match first_failure {
                        Some(failed) => Err(failed),
                        None => Ok(SampleRecord {
                            item: record.item.clone(),
                            query: record.query.clone(),
                            samples,
                        }),
                    }
                })
                .collect())
        },
        |_, _| Ok(()),
    )
}

/// Summarises the samples of every query of a `distill-sample` directory into one paragraph
/// whose confidence statements follow the share of samples that agree (SPEC 1.2). With
/// `distill_paragraphs`, the teacher also writes its own paragraph for the query (the Claude
/// Distill target). Writes `summaries.jsonl`, `sft_training.csv` in the reference schema (query,
/// summary, the samples as `icl_generated_paragraphs`, the teacher's paragraph), and the SFT
/// example sets it gives: `lc_sft.jsonl` (summaries), `factuality_sft.jsonl` (the first sample),
/// and `claude_distill.jsonl` (the teacher's paragraphs).
pub fn summarize_samples(
    cx: &StageContext,
    samples_dir: &Path,
    out: &Path,
    settings: &Settings,
    distill_paragraphs: bool,
) -> Result<StageReport> {
    let (llm, templates) = (cx.llm, cx.templates);
    let (records, input) = read_stage_records::<SampleRecord>(samples_dir, Stage::Sample)?;
    let records = take_limit(records, settings);
    let mut template_names = vec!["summarize_samples", "policy"];
    if distill_paragraphs {
        template_names.push("paragraph_zero_shot");
    }
    let config = stage_config(
        llm,
        templates,
        &template_names,
        settings,
        json!({"distill_paragraphs": distill_paragraphs}),
    )?;
    let job = StageJob {
        stage: Stage::Summarize,
        config,
        input: &input,
        items: &records,
        id_of: |record| &record.item.id,
    };
    job.run(
        out,
        &cx.options,
        |chunk| {
            let requests = chunk
                .iter()
                .map(|record| {
                    let seed = request_seed(settings.seed, &format!("{}/summary", record.item.id));
                    Ok(chat_request(
                        templates.summarize_samples(&record.samples)?,
                        settings,
                        seed,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            let summaries = generate_parsed(llm, &requests, settings.max_attempts, |text| {
                parse_summary(text).map_err(|e| e.to_string())
            });
            let mut paragraphs = Vec::new();
            if distill_paragraphs {
                let requests = chunk
                    .iter()
                    .map(|record| {
                        let seed =
                            request_seed(settings.seed, &format!("{}/paragraph", record.item.id));
                        Ok(chat_request(
                            templates.paragraph_zero_shot(&record.query)?,
                            settings,
                            seed,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                paragraphs = generate_parsed(llm, &requests, settings.max_attempts, |text| {
                    let paragraph = text.trim();
                    if paragraph.is_empty() {
                        Err("the paragraph is empty".to_string())
                    } else {
                        Ok(paragraph.to_string())
                    }
                });
            }
            let mut paragraphs = paragraphs.into_iter();
            Ok(chunk
                .iter()
                .zip(summaries)
                .map(|(record, summary)| {
                    let id = &record.item.id;
                    // Taken before any early return, so that the paragraphs stay in step.
                    let paragraph = paragraphs.next();
                    let summary = summary.map_err(|error| failure(id, "summary", "", error))?;
                    let distilled_paragraph = match paragraph {
                        Some(result) => Some(
                            result
                                .map_err(|error| failure(id, "paragraph", "", error))?
                                .values
                                .remove(0),
                        ),
                        None => None,
                    };
                    Ok(SummaryRecord {
                        item: record.item.clone(),
                        query: record.query.clone(),
                        samples: record.samples.clone(),
                        summary: summary.values.into_iter().next().unwrap_or_default(),
                        distilled_paragraph,
                    })
                })
                .collect())
        },
        |run, summaries| {
            let rows: Vec<SftTrainingRow> = summaries
                .iter()
                .map(|record| SftTrainingRow {
                    question_id: record.item.id.clone(),
                    paragraph_generation_prompt: Some(record.query.clone()),
                    claude_summary: Some(record.summary.clone()),
                    icl_generated_paragraphs: Some(
                        record.samples.iter().cloned().map(Some).collect(),
                    ),
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
        },
    )
}
