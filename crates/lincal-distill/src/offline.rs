//! The offline teachers: stand-ins for the reference's API teachers that a small model, or no
//! model, can serve, so that the pipelines run without an API key. Each follows the rule the
//! reference asks its API model to follow in that role, and is chosen with
//! [`crate::Teacher::Offline`]:
//!
//! | role | stage | offline teacher | rule |
//! | --- | --- | --- | --- |
//! | query writer | [`crate::make_queries`] | `query-template` | [`offline_query`]: the question inside a fixed request, which adds no words of its own, so nothing that could give the answer away (a question that contains its own answer fails, as a model's query would; a Jeopardy clue fails too, since rephrasing it needs a model) |
//! | summariser | [`crate::summarize_samples`] | `agreement` | the extractor (any model, with the teacher extraction prompt, or a small local model with the few-shot one: `ExtractionPrompt`) finds each sample's answer (the first that the question does not name itself: [`answers_to`]); [`answer_shares`] groups equal answers; [`agreement_summary`] writes the first-person paragraph whose confidences are the groups' shares of the samples (SPEC 1.2: "percentages equal to the fraction of thoughts supporting each"). It never sees the gold answer |
//! | forecaster | [`crate::forecast_candidates`] | `stated-confidence` | the confidence the paragraph states for each candidate, as the reference's API forecaster reads it from the paragraph alone: [`LexicalReader::forecast`] (stated percentages and the hedge table); the candidates include the gold answer, as in the reference, read under any of its aliases |
//! | binary labeller | [`crate::judge_correctness`] | `exact-match` | the extractor finds the answers the paragraph gives ([`answers_to`] its question); [`exact_match_label`]: correct when it gives one answer and that answer equals an alias of the gold answer after normalisation ([`exact_match`], the rule of the exact-match judge of evaluation) |
//!
//! [`LexicalReader::forecast`]: lincal_data::parse::LexicalReader::forecast

use lincal_data::parse::{contains_match, exact_match, normalize_answer};

use crate::SampleAnswer;

/// The offline query writer's request; `{question}` is replaced by the question.
pub const OFFLINE_QUERY_TEMPLATE: &str =
    "Write a short paragraph that answers this question: {question}";

/// The offline query writer: the open-ended request for `question`.
pub fn offline_query(question: &str) -> String {
    OFFLINE_QUERY_TEMPLATE.replace("{question}", question.trim())
}

/// One answer of a query's samples and how many samples gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerShare {
    /// The answer as the first sample that gave it spelled it.
    pub answer: String,
    pub samples: usize,
    /// Its share of the counted samples, in whole percent (rounded).
    pub percent: u32,
}

/// Groups the answers of one query's samples by their normal form (as answer matching
/// normalises them: [`normalize_answer`]) and gives each group its share of the counted
/// samples. Every sample is counted but those whose extraction failed ([`SampleAnswer::Failed`],
/// left out as if not drawn): a sample that gives no answer lowers every share, so the shares
/// of a query whose samples often give none add up to less than 100%. Groups come in
/// decreasing share, ties in the order first seen. Empty when no sample gives an answer.
pub fn answer_shares(answers: &[SampleAnswer]) -> Vec<AnswerShare> {
    let counted = answers
        .iter()
        .filter(|answer| !matches!(answer, SampleAnswer::Failed(_)))
        .count();
    // (normal form, first spelling, samples), in the order first seen.
    let mut groups: Vec<(String, &str, usize)> = Vec::new();
    for answer in answers {
        let SampleAnswer::Answer(answer) = answer else {
            continue;
        };
        let key = match normalize_answer(answer) {
            key if key.is_empty() => answer.to_lowercase(),
            key => key,
        };
        match groups.iter_mut().find(|group| group.0 == key) {
            Some(group) => group.2 += 1,
            None => groups.push((key, answer, 1)),
        }
    }
    // A stable sort keeps ties in the order first seen.
    groups.sort_by_key(|group| std::cmp::Reverse(group.2));
    groups
        .into_iter()
        .map(|(_, answer, samples)| AnswerShare {
            answer: answer.to_string(),
            samples,
            percent: (100.0 * samples as f64 / counted as f64).round() as u32,
        })
        .collect()
}

/// The summariser by agreement's paragraph for the answer groups of [`answer_shares`]: the
/// most shared answer with its share as the confidence, then the others with theirs ("I am
/// 60% sure that the answer is Paris. It may instead be Lyon (30%) or Marseille (10%)."), or
/// "I do not know the answer to this question." when no sample gave one. The wording is
/// first-person and mentions no samples, as the reference's summaries (SPEC 1.2), and every
/// share is stated as a percentage in a form [`LexicalReader`] reads back.
///
/// [`LexicalReader`]: lincal_data::parse::LexicalReader
pub fn agreement_summary(shares: &[AnswerShare]) -> String {
    let Some((first, others)) = shares.split_first() else {
        return "I do not know the answer to this question.".to_string();
    };
    let mut summary = sentence(format!(
        "I am {}% sure that the answer is {}",
        first.percent, first.answer
    ));
    let others: Vec<String> = others
        .iter()
        .map(|share| format!("{} ({}%)", share.answer, share.percent))
        .collect();
    if let Some((last, rest)) = others.split_last() {
        let list = if rest.is_empty() {
            last.clone()
        } else {
            format!("{} or {last}", rest.join(", "))
        };
        summary.push_str(&format!(" It may instead be {list}."));
    }
    summary
}

/// `text` ended with a period, unless it ends with one already ("Washington, D.C.").
fn sentence(mut text: String) -> String {
    if !text.ends_with('.') {
        text.push('.');
    }
    text
}

/// The answers of `answers` that answer `question` rather than restate it: an answer the
/// question names itself ("Iowa" for "What is the state capital of Iowa?", which a small
/// extractor lists for a paragraph that only repeats the question) is left out.
pub fn answers_to<'a>(question: &str, answers: &'a [String]) -> Vec<&'a String> {
    answers
        .iter()
        .filter(|answer| !contains_match(question, std::slice::from_ref(*answer)))
        .collect()
}

/// The offline binary label of a paragraph whose extracted answers to its question are
/// `answers` ([`answers_to`]): correct when it gives at least one answer and every one of them
/// equals an alias of the gold answer after normalisation (so two spellings of the gold answer
/// are one answer), as the reference's labeller is asked: one answer, and it matches.
pub fn exact_match_label<S: AsRef<str>>(answers: &[S], aliases: &[String]) -> bool {
    !answers.is_empty()
        && answers
            .iter()
            .all(|answer| exact_match(answer.as_ref(), aliases))
}
