//! Train/eval splits by question id (SPEC 1.3 and 1.6): every row of a question lands on the
//! same side, so evaluation never sees a question the model trained on.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap, HashSet};

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
            "cannot hold out {eval_questions} question ids for evaluation: the data has only {} \
             distinct ids, which would leave nothing to train on; lower the eval size",
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

/// How many question ids one role of a pipeline gets (SPEC 1: SFT, reader training, PPO,
/// validation and test questions are disjoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSize {
    pub role: String,
    /// `None`: every id the roles before it left (only the last role may take the rest).
    pub questions: Option<usize>,
}

/// Splits items into disjoint roles by question id. The distinct ids are sorted and shuffled
/// with ChaCha8 seeded by `seed`, then dealt to the roles in order, so the split depends on the
/// set of ids, the sizes and the seed, not on the input order; rows keep their input order
/// within a role. Ids left over after the last role are in no role.
pub fn split_roles<T: HasQuestionId>(
    items: Vec<T>,
    roles: &[RoleSize],
    seed: u64,
) -> Result<BTreeMap<String, Vec<T>>> {
    if let Some(role) = roles.iter().rev().skip(1).find(|r| r.questions.is_none()) {
        return Err(DataError::Invalid(format!(
            "role {:?} takes the rest, but only the last role may",
            role.role
        )));
    }
    let mut names = HashSet::new();
    if let Some(role) = roles.iter().find(|r| !names.insert(r.role.as_str())) {
        return Err(DataError::Invalid(format!(
            "role {:?} is given twice",
            role.role
        )));
    }
    let mut ids: Vec<String> = items.iter().map(|i| i.question_id().to_string()).collect();
    ids.sort_unstable();
    ids.dedup();
    let wanted: usize = roles.iter().filter_map(|r| r.questions).sum();
    if wanted > ids.len() {
        return Err(DataError::Invalid(format!(
            "the roles need {wanted} question ids, but the data has only {} distinct ids; \
             lower the role sizes",
            ids.len()
        )));
    }
    ids.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut role_of: HashMap<String, usize> = HashMap::new();
    let mut next = 0;
    for (index, role) in roles.iter().enumerate() {
        let end = role.questions.map_or(ids.len(), |n| next + n);
        for id in &ids[next..end] {
            role_of.insert(id.clone(), index);
        }
        next = end;
    }
    let mut split: BTreeMap<String, Vec<T>> =
        roles.iter().map(|r| (r.role.clone(), Vec::new())).collect();
    for item in items {
        if let Some(&index) = role_of.get(item.question_id()) {
            split
                .get_mut(&roles[index].role)
                .expect("every role has a list")
                .push(item);
        }
    }
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::QaRecord;

    fn questions(n: usize) -> Vec<QaRecord> {
        (0..n)
            .map(|i| QaRecord {
                id: format!("q{i:03}"),
                question: format!("Question {i}?"),
                answer: format!("A{i}"),
                aliases: vec![format!("A{i}")],
                source: "test".into(),
            })
            .collect()
    }

    fn sizes(spec: &[(&str, Option<usize>)]) -> Vec<RoleSize> {
        spec.iter()
            .map(|(role, questions)| RoleSize {
                role: role.to_string(),
                questions: *questions,
            })
            .collect()
    }

    fn ids(split: &BTreeMap<String, Vec<QaRecord>>, role: &str) -> Vec<String> {
        split[role].iter().map(|q| q.id.clone()).collect()
    }

    #[test]
    fn roles_are_disjoint_sized_and_independent_of_input_order_and_seeded() {
        let roles = sizes(&[("sft", Some(10)), ("ppo", Some(5)), ("test", None)]);
        let split = split_roles(questions(40), &roles, 42).unwrap();
        assert_eq!(
            (split["sft"].len(), split["ppo"].len(), split["test"].len()),
            (10, 5, 25)
        );
        let mut all: Vec<String> = ["sft", "ppo", "test"]
            .iter()
            .flat_map(|r| ids(&split, r))
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 40, "every id in exactly one role");
        // Rows keep their input order within a role.
        assert!(ids(&split, "test").windows(2).all(|w| w[0] < w[1]));
        let mut reversed = questions(40);
        reversed.reverse();
        let again = split_roles(reversed, &roles, 42).unwrap();
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        for role in ["sft", "ppo", "test"] {
            assert_eq!(
                sorted(ids(&split, role)),
                sorted(ids(&again, role)),
                "{role}"
            );
        }
        let other_seed = split_roles(questions(40), &roles, 43).unwrap();
        assert_ne!(ids(&split, "sft"), ids(&other_seed, "sft"));
        // A fixed size takes the same ids whatever comes after it.
        let two = split_roles(
            questions(40),
            &sizes(&[("sft", Some(10)), ("ppo", Some(5))]),
            42,
        )
        .unwrap();
        assert_eq!(ids(&two, "sft"), ids(&split, "sft"));
    }

    #[test]
    fn role_sizes_beyond_the_data_or_rest_before_the_end_are_errors() {
        let err = split_roles(
            questions(5),
            &sizes(&[("sft", Some(4)), ("test", Some(2))]),
            1,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the roles need 6 question ids, but the data has only 5 distinct ids; \
             lower the role sizes"
        );
        let err =
            split_roles(questions(5), &sizes(&[("sft", None), ("test", Some(2))]), 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "role \"sft\" takes the rest, but only the last role may"
        );
        let err = split_roles(
            questions(5),
            &sizes(&[("sft", Some(1)), ("sft", Some(2))]),
            1,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "role \"sft\" is given twice");
    }
}
