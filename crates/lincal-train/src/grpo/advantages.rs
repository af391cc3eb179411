//! Advantages without a value model: each response is compared with the other responses to
//! the same prompt. A rollout batch is `prompts × G` responses, each prompt's G consecutive.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// How a response's reward becomes its advantage, from its group of G responses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBaseline {
    /// GRPO (Shao et al. 2024, DeepSeekMath): `(r − mean) / (std + ε)` over the group, the
    /// sample standard deviation (n − 1) as TRL computes it.
    #[default]
    Grpo,
    /// Dr. GRPO (Liu et al. 2025): `r − mean`, without the division by the group's std, which
    /// favours groups whose rewards barely differ (too easy or too hard prompts).
    DrGrpo,
    /// RLOO (Ahmadian et al. 2024): `r − mean of the other G − 1 rewards`, an unbiased
    /// baseline.
    Rloo,
}

/// Added to the group's std so a group of equal rewards divides by a small number, not 0
/// (TRL's value).
pub const GROUP_STD_EPSILON: f64 = 1e-4;

/// One advantage per reward; `rewards` holds consecutive groups of `group_size`. A group whose
/// rewards are all equal gets advantage 0 everywhere (it carries no signal).
pub fn group_advantages(
    rewards: &[f64],
    group_size: usize,
    baseline: GroupBaseline,
) -> Result<Vec<f64>> {
    if group_size < 2 || !rewards.len().is_multiple_of(group_size) {
        return Err(TrainError::config(
            "group_size",
            format!(
                "must be at least 2 and divide the {} rewards of the batch, got {group_size}: \
                 each prompt's responses are compared with each other",
                rewards.len()
            ),
        ));
    }
    let g = group_size as f64;
    let mut advantages = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(group_size) {
        let sum: f64 = group.iter().sum();
        let mean = sum / g;
        match baseline {
            GroupBaseline::Grpo => {
                let variance = group.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (g - 1.0);
                let scale = variance.sqrt() + GROUP_STD_EPSILON;
                advantages.extend(group.iter().map(|r| (r - mean) / scale));
            }
            GroupBaseline::DrGrpo => advantages.extend(group.iter().map(|r| r - mean)),
            GroupBaseline::Rloo => {
                advantages.extend(group.iter().map(|r| r - (sum - r) / (g - 1.0)));
            }
        }
    }
    Ok(advantages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn each_baseline_matches_hand_values() {
        // One group of 4 with a tie: rewards 1, 1, 0, 2. Mean 1; sample variance
        // (0 + 0 + 1 + 1)/3 = 2/3, std 0.816497.
        let rewards = [1.0, 1.0, 0.0, 2.0];
        let std = (2.0f64 / 3.0).sqrt() + GROUP_STD_EPSILON;
        let grpo = group_advantages(&rewards, 4, GroupBaseline::Grpo).unwrap();
        assert!(close(&grpo, &[0.0, 0.0, -1.0 / std, 1.0 / std]), "{grpo:?}");
        let dr = group_advantages(&rewards, 4, GroupBaseline::DrGrpo).unwrap();
        assert!(close(&dr, &[0.0, 0.0, -1.0, 1.0]), "{dr:?}");
        // RLOO: the others' mean is (4 − r)/3: 1 − 1, 1 − 1, 0 − 4/3, 2 − 2/3.
        let rloo = group_advantages(&rewards, 4, GroupBaseline::Rloo).unwrap();
        assert!(close(&rloo, &[0.0, 0.0, -4.0 / 3.0, 4.0 / 3.0]), "{rloo:?}");
        // RLOO is G/(G − 1) times the mean-centred reward.
        assert!(close(
            &rloo,
            &dr.iter().map(|a| a * 4.0 / 3.0).collect::<Vec<_>>()
        ));
    }

    #[test]
    fn groups_are_separate_and_a_zero_variance_group_gives_zeros() {
        // Group 1: all 5 (no signal); group 2: 0 and 3.
        let rewards = [5.0, 5.0, 0.0, 3.0];
        for baseline in [
            GroupBaseline::Grpo,
            GroupBaseline::DrGrpo,
            GroupBaseline::Rloo,
        ] {
            let a = group_advantages(&rewards, 2, baseline).unwrap();
            assert_eq!(&a[..2], &[0.0, 0.0], "{baseline:?}");
            assert!(
                a[2] < 0.0 && a[3] > 0.0 && (a[2] + a[3]).abs() < 1e-12,
                "{baseline:?}"
            );
        }
        // GRPO on a pair: std = |r1 − r2|/√2, so the advantages are ±1/√2 (less ε).
        let a = group_advantages(&rewards, 2, GroupBaseline::Grpo).unwrap();
        let expected = 1.5 / (3.0 / 2f64.sqrt() + GROUP_STD_EPSILON);
        assert!((a[3] - expected).abs() < 1e-12, "{a:?}");
    }

    #[test]
    fn a_group_size_that_does_not_divide_the_batch_is_refused() {
        let err = group_advantages(&[1.0, 2.0, 3.0], 2, GroupBaseline::Grpo).unwrap_err();
        assert!(err.to_string().contains("divide the 3 rewards"), "{err}");
        assert!(group_advantages(&[1.0], 1, GroupBaseline::Rloo).is_err());
    }
}
