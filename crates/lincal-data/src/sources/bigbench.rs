//! BIG-bench (PyPI `bigbench==1.0.0` sdist, 358 MB): two tasks give QA pairs. Only their
//! `task.json` members are read, streaming through the archive.
//! - `contextual_parametric_knowledge_conflicts`: Natural Questions whose context passage had
//!   its answer swapped for another entity. `target_scores` gives the substituted answer 1 and
//!   the original Natural Questions answer 0, so the candidate scored 0 is the gold answer.
//! - `qa_wikidata` (CC0): cloze prompts from Wikidata triples ("The capital of X is"); the prompt
//!   is kept as the question, and `target` (a string or a list) gives the accepted answers.
//!
//! Both tasks repeat some questions; repeats are merged (see [`QaCollector`]).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;

use serde::Deserialize;

use super::{QaCollector, content_id, for_each_tar_gz_member, member_error};
use crate::{DataError, Result};

#[derive(Deserialize)]
struct Task {
    examples: Vec<Example>,
}

#[derive(Deserialize)]
struct Example {
    input: String,
    target: Option<Target>,
    target_scores: Option<HashMap<String, f64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Target {
    One(String),
    Many(Vec<String>),
}

pub(super) fn collect_natural_questions(sdist: &Path, questions: &mut QaCollector) -> Result<()> {
    for example in read_task(sdist, "contextual_parametric_knowledge_conflicts")? {
        let Some(question) = natural_question(&example.input) else {
            questions.skip("input without a \"Question:\" line");
            continue;
        };
        let originals: Vec<String> = example
            .target_scores
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, score)| *score == 0.0)
            .map(|(answer, _)| answer)
            .collect();
        match <[String; 1]>::try_from(originals) {
            Ok([answer]) => {
                questions.add(content_id("bigbench-nq", question), question, vec![answer])
            }
            Err(originals) if originals.is_empty() => questions.skip("no candidate scored 0"),
            Err(_) => questions.skip("several candidates scored 0"),
        }
    }
    Ok(())
}

/// The question of an input "\nQuestion: ...\nContext: ...".
fn natural_question(input: &str) -> Option<&str> {
    let (_, rest) = input.split_once("Question:")?;
    Some(
        rest.split_once("\nContext:")
            .map_or(rest, |(question, _)| question)
            .trim(),
    )
}

pub(super) fn collect_qa_wikidata(sdist: &Path, questions: &mut QaCollector) -> Result<()> {
    for example in read_task(sdist, "qa_wikidata")? {
        let answers = match example.target {
            Some(Target::One(answer)) => vec![answer],
            Some(Target::Many(answers)) => answers,
            None => Vec::new(),
        };
        let prompt = example.input.trim();
        questions.add(content_id("bigbench-qa-wikidata", prompt), prompt, answers);
    }
    Ok(())
}

/// The examples of `benchmark_tasks/<task>/task.json`.
fn read_task(sdist: &Path, task: &str) -> Result<Vec<Example>> {
    let suffix = format!("/benchmark_tasks/{task}/task.json");
    let mut examples = None;
    for_each_tar_gz_member(
        sdist,
        &|member| member.ends_with(&suffix),
        &mut |member, text| {
            let parsed: Task = serde_json::from_str(&text).map_err(|e| {
                member_error(
                    sdist,
                    member,
                    e.line(),
                    format!("not a BIG-bench task: {e}"),
                )
            })?;
            examples = Some(parsed.examples);
            Ok(ControlFlow::Break(()))
        },
    )?;
    examples.ok_or_else(|| DataError::File {
        path: sdist.to_path_buf(),
        message: format!("no member ending in {suffix}; is this the bigbench 1.0.0 sdist?"),
    })
}
