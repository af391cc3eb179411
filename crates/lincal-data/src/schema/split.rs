//! Train/eval splits by question id (SPEC 1.3 and 1.6): every row of a question lands on the
//! same side, so evaluation never sees a question the model trained on.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;

use super::HasQuestionId;
use crate::{DataError, Result};

/// Question ids held out for evaluation in the SFT scripts (and ExtractAnswers).
pub const SFT_EVAL_QUESTIONS: usize = 500;
/// Question ids held out for evaluation in the reward-model scripts.
pub const REWARD_MODEL_EVAL_QUESTIONS: usize = 2000;
/// The reference's seed. Its numpy shuffle cannot be replayed here, so the ids held out differ
/// from the reference's; the split is just as deterministic.
pub const SPLIT_SEED: u64 = 42;

#[derive(Debug, Clone, PartialEq)]
pub struct Split<T> {
    pub train: Vec<T>,
    pub eval: Vec<T>,
}

/// Holds out the rows of `eval_questions` question ids. The distinct ids are sorted, shuffled
/// with ChaCha8 seeded by `seed`, and the last `eval_questions` go to eval (as the reference
/// does), so the result depends on the set of ids and the seed, not on the input order. Rows
/// keep their input order within each side.
pub fn split_by_question_id<T: HasQuestionId>(
    items: Vec<T>,
    eval_questions: usize,
    seed: u64,
) -> Result<Split<T>> {
    let mut ids: Vec<&str> = items.iter().map(HasQuestionId::question_id).collect();
    ids.sort_unstable();
    ids.dedup();
    if eval_questions > 0 && eval_questions >= ids.len() {
        return Err(DataError::Invalid(format!(
            "cannot hold out {eval_questions} question ids for evaluation: the data has only {} distinct ids, \
             which would leave nothing to train on; lower the eval size",
            ids.len()
        )));
    }
    ids.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let eval_ids: HashSet<String> = ids[ids.len() - eval_questions..]
        .iter()
        .map(|id| id.to_string())
        .collect();
    let (eval, train) = items
        .into_iter()
        .partition(|item| eval_ids.contains(item.question_id()));
    Ok(Split { train, eval })
}
