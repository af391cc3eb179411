//! Judges of QA answers (SPEC 5.1 step 5): is the chosen answer the gold one?
//!
//! - [`LlmJudge`]: semantic equivalence by a model, [`JUDGE_BATCH_SIZE`] pairs per call as in
//!   the reference; the reply must give a verdict for every pair of its batch (the reference
//!   did not check this, SPEC 8 item 10).
//! - [`ExactMatchJudge`]: the answer equals one of the accepted answers after normalisation
//!   (case, punctuation, articles). Unlike the reference, which judged against the single top
//!   answer, it uses every alias: exact matching needs them.

use lincal_data::parse::{exact_match, parse_judge_verdicts};
use lincal_data::prompts::{JUDGE_BATCH_SIZE, JudgePair, Templates};
use lincal_llm::{Llm, LlmRequest};

use crate::Stage;
use crate::pipeline::{
    ItemFailure, PipelineError, TeacherSettings, ask_parsed, chat_prompt, describe_llm,
};
use crate::readers::ItemResults;

/// New tokens of a judge reply: one verdict line per pair.
pub const JUDGE_MAX_TOKENS: u32 = 256;

/// One answer to judge.
#[derive(Debug, Clone, Copy)]
pub struct JudgeInput<'a> {
    pub id: &'a str,
    pub question: &'a str,
    pub gold: &'a str,
    /// Every accepted answer, gold first.
    pub aliases: &'a [String],
    pub proposed: &'a str,
}

/// Decides whether proposed answers are correct.
pub trait Judge {
    /// The judge and its model, for reports and the run's manifest.
    fn describe(&self) -> String;

    /// One verdict per input, in order.
    fn judge(&self, inputs: &[JudgeInput<'_>]) -> ItemResults<bool>;
}

/// Semantic equivalence by a model: the inputs go in batches of up to [`JUDGE_BATCH_SIZE`],
/// in order, one call each; a batch whose reply never parses fails for all of its items.
pub struct LlmJudge<'a> {
    pub llm: &'a dyn Llm,
    pub templates: &'a Templates,
    pub settings: TeacherSettings,
}

impl Judge for LlmJudge<'_> {
    fn describe(&self) -> String {
        describe_llm(self.llm)
    }

    fn judge(&self, inputs: &[JudgeInput<'_>]) -> ItemResults<bool> {
        let batches: Vec<&[JudgeInput<'_>]> = inputs.chunks(JUDGE_BATCH_SIZE).collect();
        let requests = batches
            .iter()
            .map(|batch| {
                let pairs: Vec<JudgePair<'_>> = batch
                    .iter()
                    .map(|input| JudgePair {
                        question: input.question,
                        gold: input.gold,
                        proposed: input.proposed,
                    })
                    .collect();
                let ids: Vec<&str> = batch.iter().map(|input| input.id).collect();
                Ok(self.settings.request(
                    chat_prompt(self.templates.judge_equivalence(&pairs)?),
                    JUDGE_MAX_TOKENS,
                    &format!("judge/{}", ids.join("/")),
                ))
            })
            .collect::<Result<Vec<LlmRequest>, PipelineError>>()?;
        // A reply is parsed against the size of its batch; batches of one size are asked
        // together (all full ones, then the last), so an HTTP backend answers them side by side.
        let mut outcomes: Vec<Option<Result<Vec<bool>, ItemFailure>>> =
            batches.iter().map(|_| None).collect();
        let mut sizes: Vec<usize> = batches.iter().map(|batch| batch.len()).collect();
        sizes.dedup();
        for size in sizes {
            let members: Vec<usize> = (0..batches.len())
                .filter(|&b| batches[b].len() == size)
                .collect();
            let asked: Vec<LlmRequest> = members.iter().map(|&b| requests[b].clone()).collect();
            let replies = ask_parsed(
                self.llm,
                &asked,
                self.settings.max_attempts,
                Stage::Judge,
                |text| parse_judge_verdicts(text, size),
            );
            for (b, reply) in members.into_iter().zip(replies) {
                outcomes[b] = Some(reply);
            }
        }
        let mut verdicts = Vec::with_capacity(inputs.len());
        for (batch, outcome) in batches.iter().zip(outcomes) {
            match outcome.expect("every batch size was asked") {
                Ok(batch_verdicts) => verdicts.extend(batch_verdicts.into_iter().map(Ok)),
                Err(failure) => verdicts.extend(std::iter::repeat_n(Err(failure), batch.len())),
            }
        }
        Ok(verdicts)
    }
}

/// Alias-normalised exact match; no model, no failures.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExactMatchJudge;

impl Judge for ExactMatchJudge {
    fn describe(&self) -> String {
        "exact match against every accepted answer (normalised)".to_string()
    }

    fn judge(&self, inputs: &[JudgeInput<'_>]) -> ItemResults<bool> {
        Ok(inputs
            .iter()
            .map(|input| Ok(exact_match(input.proposed, input.aliases)))
            .collect())
    }
}
