//! From rollouts to advantages (SPEC 2.4-2.6): the clamped per-token KL penalty, the sequence
//! reward on the last real response token, scale-only reward whitening, GAE and advantage
//! whitening.
//!
//! Every statistic is taken over the positions whose `weights` are 1: the real response tokens
//! by default, or every position up to `response_len` when reproducing the reference's padding
//! (SPEC 8, item 5). Outside the weighted positions rewards, values, advantages and returns are
//! 0, so GAE stops at each row's last real token.

use crate::distributed::{Communicator, SingleProcess};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Whitening's guard against a zero standard deviation.
const WHITEN_EPSILON: f64 = 1e-8;

/// Per-token KL estimate `max(log π − log π_ref, 0)` (SPEC 2.4).
pub fn kl_penalty(logprobs: &Tensor, ref_logprobs: &Tensor) -> Tensor {
    (logprobs - ref_logprobs).clamp_min(0.0)
}

/// `−β·kl` at every position, plus each row's sequence reward `scores[b]` at its last real
/// response token `lengths[b] − 1` (SPEC 2.5).
pub fn shape_rewards(scores: &[f64], kl: &Tensor, lengths: &[i64], kl_coef: f64) -> Tensor {
    let device = kl.device();
    let last = Tensor::from_slice(&lengths.iter().map(|&n| n - 1).collect::<Vec<_>>())
        .to_device(device)
        .unsqueeze(1);
    let scores = Tensor::from_slice(scores)
        .to_kind(Kind::Float)
        .to_device(device)
        .unsqueeze(1);
    (kl * -kl_coef).scatter_add(1, &last, &scores)
}

/// `(x − μ)/(σ + 1e-8)` with μ and the population σ over the weighted positions of every rank
/// of `comm` (the sums are all-reduced), then `+ μ` again unless `shift_mean` (the reference's
/// scale-only reward whitening); 0 elsewhere.
pub fn whiten(
    values: &Tensor,
    weights: &Tensor,
    shift_mean: bool,
    comm: &dyn Communicator,
) -> Result<Tensor> {
    let mut sums = Tensor::stack(
        &[
            weights.sum(Kind::Float),
            (values * weights).sum(Kind::Float),
        ],
        0,
    );
    comm.all_reduce_sum(&mut sums)?;
    let (count, sum) = (sums.get(0), sums.get(1));
    let mean = sum / &count;
    let centred = values - &mean;
    let mut squares = (&centred * &centred * weights).sum(Kind::Float);
    comm.all_reduce_sum(&mut squares)?;
    let std = (squares / &count).sqrt();
    let whitened = centred / (std + WHITEN_EPSILON);
    let whitened = if shift_mean {
        whitened
    } else {
        whitened + mean
    };
    Ok(whitened * weights)
}

/// [`whiten`] over consecutive groups of `group` rows each, each within this rank's rows, or
/// over the rows of every rank of `comm` (`None`).
pub fn whiten_groups(
    values: &Tensor,
    weights: &Tensor,
    shift_mean: bool,
    group: Option<usize>,
    comm: &dyn Communicator,
) -> Result<Tensor> {
    let Some(group) = group else {
        return whiten(values, weights, shift_mean, comm);
    };
    let rows = values.size()[0];
    let group = group.max(1) as i64;
    let parts = (0..rows)
        .step_by(group as usize)
        .map(|start| {
            let len = group.min(rows - start);
            whiten(
                &values.narrow(0, start, len),
                &weights.narrow(0, start, len),
                shift_mean,
                &SingleProcess,
            )
        })
        .collect::<Result<Vec<Tensor>>>()?;
    Ok(Tensor::cat(&parts, 0))
}

/// Generalised advantage estimation over the positions of each row (`V` past the last
/// position is 0): `δ_t = r_t + γ·V_{t+1} − V_t`, `A_t = δ_t + γλ·A_{t+1}`. Returns the
/// advantages and the returns `A + V`.
pub fn gae(rewards: &Tensor, values: &Tensor, gamma: f64, lam: f64) -> (Tensor, Tensor) {
    let width = rewards.size()[1];
    let mut next_value = values.select(1, 0).zeros_like();
    let mut next_advantage = next_value.zeros_like();
    let mut advantages = Vec::with_capacity(width as usize);
    for t in (0..width).rev() {
        let value = values.select(1, t);
        let delta = rewards.select(1, t) + &next_value * gamma - &value;
        next_advantage = delta + next_advantage * (gamma * lam);
        advantages.push(next_advantage.shallow_clone());
        next_value = value;
    }
    advantages.reverse();
    let advantages = Tensor::stack(&advantages, 1);
    let returns = &advantages + values;
    (advantages, returns)
}

/// What the update trains towards.
pub struct Advantages {
    /// Whitened advantages `[B, W]`.
    pub advantages: Tensor,
    /// Returns `[B, W]` (advantages before whitening plus values).
    pub returns: Tensor,
    /// The shaped rewards `[B, W]` before whitening.
    pub shaped_rewards: Tensor,
}

/// What advantages are estimated from: a batch of rollouts.
pub struct AdvantageInputs<'a> {
    /// Each row's sequence reward.
    pub scores: &'a [f64],
    /// Per-token KL estimates `[B, W]` ([`kl_penalty`]).
    pub kl: &'a Tensor,
    /// Tokens each row generated.
    pub lengths: &'a [i64],
    /// Values `[B, W]`; those outside the weighted positions are ignored.
    pub values: &'a Tensor,
    /// `[B, W]`, 1 on the positions statistics cover.
    pub weights: &'a Tensor,
}

/// How advantages are estimated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdvantageSettings {
    /// β, the KL penalty's coefficient.
    pub kl_coef: f64,
    /// Scale-only whitening of the shaped rewards.
    pub whiten_rewards: bool,
    /// Rows whitened together, in consecutive groups (the last may be smaller); `None`: all
    /// rows at once. The reference whitens per GPU, 64 rollouts each (SPEC 2.6).
    pub whiten_group_size: Option<usize>,
    pub gamma: f64,
    pub lam: f64,
}

/// Shaping, optional scale-only reward whitening, GAE and advantage whitening (SPEC 2.5-2.6),
/// the whitening statistics over the rollouts of every rank of `comm`.
pub fn estimate_advantages(
    inputs: &AdvantageInputs<'_>,
    settings: &AdvantageSettings,
    comm: &dyn Communicator,
) -> Result<Advantages> {
    let weights = inputs.weights;
    let shaped_rewards =
        shape_rewards(inputs.scores, inputs.kl, inputs.lengths, settings.kl_coef) * weights;
    let group = settings.whiten_group_size;
    let rewards = if settings.whiten_rewards {
        whiten_groups(&shaped_rewards, weights, false, group, comm)?
    } else {
        shaped_rewards.shallow_clone()
    };
    let (advantages, returns) = gae(
        &rewards,
        &(inputs.values * weights),
        settings.gamma,
        settings.lam,
    );
    Ok(Advantages {
        advantages: whiten_groups(&advantages, weights, true, group, comm)?,
        returns: returns * weights,
        shaped_rewards,
    })
}

/// The KL coefficient β: fixed, or adapted towards a target summed KL per sequence
/// (SPEC 2.4): `β ← β·(1 + k_beta·clip(KL/target − 1, −0.2, 0.2))` once per PPO step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KlController {
    pub value: f64,
    /// `(target, k_beta)` when adaptive.
    pub adaptive: Option<(f64, f64)>,
}

impl KlController {
    pub fn step(&mut self, kl_sum_per_sequence: f64) {
        if let Some((target, k_beta)) = self.adaptive {
            let error = (kl_sum_per_sequence / target - 1.0).clamp(-0.2, 0.2);
            self.value *= 1.0 + k_beta * error;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t2(rows: &[&[f32]]) -> Tensor {
        Tensor::from_slice2(rows)
    }

    fn values(t: &Tensor) -> Vec<Vec<f32>> {
        Vec::<Vec<f32>>::try_from(t).unwrap()
    }

    fn close(got: &[Vec<f32>], want: &[&[f64]]) {
        let shape = |rows: &mut dyn Iterator<Item = usize>| rows.collect::<Vec<_>>();
        assert_eq!(
            shape(&mut got.iter().map(Vec::len)),
            shape(&mut want.iter().map(|w| w.len())),
            "{got:?} vs {want:?}"
        );
        for (g, w) in got.iter().zip(want) {
            for (a, b) in g.iter().zip(w.iter()) {
                assert!((*a as f64 - b).abs() < 1e-5, "{got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn kl_is_clamped_at_zero() {
        let kl = kl_penalty(&t2(&[&[-1.0, -2.0, -0.5]]), &t2(&[&[-1.5, -1.0, -0.5]]));
        assert_eq!(values(&kl), vec![vec![0.5, 0.0, 0.0]]);
    }

    #[test]
    fn the_sequence_reward_lands_on_the_last_real_token() {
        // β 0.1; row 0 generated 2 tokens (reward on position 1), row 1 all 3 (position 2).
        let kl = t2(&[&[1.0, 2.0, 0.0], &[0.0, 0.5, 1.0]]);
        let shaped = shape_rewards(&[3.0, -1.0], &kl, &[2, 3], 0.1);
        close(&values(&shaped), &[&[-0.1, 2.8, 0.0], &[0.0, -0.05, -1.1]]);
    }

    #[test]
    fn whitening_scales_and_optionally_keeps_the_mean() {
        // Real entries 1, 2, 3 (mean 2, population std √(2/3) = 0.816497); the padded 9 is left
        // out.
        let x = t2(&[&[1.0, 2.0], &[3.0, 9.0]]);
        let mask = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
        let std = (2.0f64 / 3.0).sqrt() + 1e-8;
        close(
            &values(&whiten(&x, &mask, true, &SingleProcess).unwrap()),
            &[&[-1.0 / std, 0.0], &[1.0 / std, 0.0]],
        );
        close(
            &values(&whiten(&x, &mask, false, &SingleProcess).unwrap()),
            &[&[2.0 - 1.0 / std, 2.0], &[2.0 + 1.0 / std, 0.0]],
        );
        // The reference's padding counts every entry: mean 3.75, std √9.6875 = 3.112475.
        let all = x.ones_like();
        let std = 9.6875f64.sqrt() + 1e-8;
        close(
            &values(&whiten(&x, &all, false, &SingleProcess).unwrap()),
            &[
                &[3.75 - 2.75 / std, 3.75 - 1.75 / std],
                &[3.75 - 0.75 / std, 3.75 + 5.25 / std],
            ],
        );
    }

    #[test]
    fn gae_with_unit_gamma_and_lambda_is_reward_to_go_minus_value() {
        // γ = λ = 1: A_t = Σ_{k≥t} r_k − V_t. Rewards 1, 0, 2 and values 0.5, 1, 1.5:
        // A = 3 − 0.5, 2 − 1, 2 − 1.5; returns = reward-to-go 3, 2, 2.
        let (advantages, returns) =
            gae(&t2(&[&[1.0, 0.0, 2.0]]), &t2(&[&[0.5, 1.0, 1.5]]), 1.0, 1.0);
        close(&values(&advantages), &[&[2.5, 1.0, 0.5]]);
        close(&values(&returns), &[&[3.0, 2.0, 2.0]]);
        // γ 0.5, λ 1: δ = (1 + 0.5 − 0.5, 0 + 0.75 − 1, 2 − 1.5) = (1, −0.25, 0.5);
        // A_2 = 0.5, A_1 = −0.25 + 0.25 = 0, A_0 = 1 + 0 = 1.
        let (advantages, _) = gae(&t2(&[&[1.0, 0.0, 2.0]]), &t2(&[&[0.5, 1.0, 1.5]]), 0.5, 1.0);
        close(&values(&advantages), &[&[1.0, 0.0, 0.5]]);
    }

    /// Masked (default) against the reference's padding, on one row of 2 real tokens padded to 3.
    #[test]
    fn padding_is_masked_by_default_and_counted_by_the_reference() {
        let kl = t2(&[&[0.0, 0.0, 0.0], &[0.0, 0.0, 0.0]]);
        let values_in = t2(&[&[0.5, 0.25, 7.0], &[1.0, 0.0, 0.0]]);
        let mask = t2(&[&[1.0, 1.0, 0.0], &[1.0, 1.0, 1.0]]);
        // No whitening, to follow GAE by hand: scores 2 and 1 land on positions 1 and 2.
        let settings = AdvantageSettings {
            kl_coef: 0.1,
            whiten_rewards: false,
            whiten_group_size: None,
            gamma: 1.0,
            lam: 1.0,
        };
        let masked = estimate_advantages(
            &AdvantageInputs {
                scores: &[2.0, 1.0],
                kl: &kl,
                lengths: &[2, 3],
                values: &values_in,
                weights: &mask,
            },
            &settings,
            &SingleProcess,
        )
        .unwrap();
        // Row 0 stops at its last real token: A = (2 − 0.5, 2 − 0.25, 0); the pad's value 7 is
        // ignored.
        close(
            &values(&masked.returns),
            &[&[2.0, 2.0, 0.0], &[1.0, 1.0, 1.0]],
        );
        // Raw advantages 1.5, 1.75 | 0, 1, 1 over 5 real entries: mean 1.05, σ = √0.36 = 0.6.
        let std = 0.6 + 1e-8;
        close(
            &values(&masked.advantages),
            &[
                &[0.45 / std, 0.7 / std, 0.0],
                &[-1.05 / std, -0.05 / std, -0.05 / std],
            ],
        );
        let all = mask.ones_like();
        let reference = estimate_advantages(
            &AdvantageInputs {
                scores: &[2.0, 1.0],
                kl: &kl,
                lengths: &[2, 3],
                values: &values_in,
                weights: &all,
            },
            &settings,
            &SingleProcess,
        )
        .unwrap();
        // The reference bootstraps through the pad: δ_1 = 2 + 7 − 0.25 and A_2 = −7, so A_1 and
        // the returns are unchanged, but the pad's advantage −7 enters the whitening.
        close(
            &values(&reference.returns),
            &[&[2.0, 2.0, 0.0], &[1.0, 1.0, 1.0]],
        );
        let raw = [1.5f64, 1.75, -7.0, 0.0, 1.0, 1.0];
        let mean = raw.iter().sum::<f64>() / 6.0;
        let std = (raw.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / 6.0).sqrt() + 1e-8;
        let want: Vec<f64> = raw.iter().map(|a| (a - mean) / std).collect();
        close(&values(&reference.advantages), &[&want[..3], &want[3..]]);
    }

    #[test]
    fn scale_only_reward_whitening_feeds_gae() {
        // One row, 2 real tokens, β 0: shaped (0, 4); whitened over 2 entries (mean 2, σ 2):
        // (0 − 2)/2 + 2 = 1 and (4 − 2)/2 + 2 = 3; values 0 → returns 4, 3.
        let zeros = t2(&[&[0.0, 0.0]]);
        let ones = t2(&[&[1.0, 1.0]]);
        let settings = AdvantageSettings {
            kl_coef: 0.1,
            whiten_rewards: true,
            whiten_group_size: None,
            gamma: 1.0,
            lam: 1.0,
        };
        let a = estimate_advantages(
            &AdvantageInputs {
                scores: &[4.0],
                kl: &zeros,
                lengths: &[2],
                values: &zeros,
                weights: &ones,
            },
            &settings,
            &SingleProcess,
        )
        .unwrap();
        close(&values(&a.shaped_rewards), &[&[0.0, 4.0]]);
        close(&values(&a.returns), &[&[4.0, 3.0]]);
    }

    #[test]
    fn the_adaptive_controller_moves_beta_by_at_most_twenty_percent_of_k() {
        let mut fixed = KlController {
            value: 0.1,
            adaptive: None,
        };
        fixed.step(100.0);
        assert_eq!(fixed.value, 0.1);
        let mut adaptive = KlController {
            value: 0.1,
            adaptive: Some((6.0, 0.1)),
        };
        // KL 7.2: error 0.2 → β·1.02. KL 60: clipped at 0.2 → ·1.02. KL 5.4: −0.1 → ·0.99.
        adaptive.step(7.2);
        assert!((adaptive.value - 0.102).abs() < 1e-15);
        adaptive.step(60.0);
        assert!((adaptive.value - 0.10404).abs() < 1e-15);
        adaptive.step(5.4);
        assert!((adaptive.value - 0.1029996).abs() < 1e-12);
    }

    #[test]
    fn whitening_by_groups_whitens_each_group_alone() {
        // Rows 1, 3 | 10, 30 in groups of 2: each pair has mean 0 and unit std on its own,
        // -1 and 1; whitened together (mean 11, std 11.29) they are not.
        let x = t2(&[&[1.0], &[3.0], &[10.0], &[30.0]]);
        let ones = x.ones_like();
        let eps = 1e-8;
        close(
            &values(&whiten_groups(&x, &ones, true, Some(2), &SingleProcess).unwrap()),
            &[
                &[-1.0 / (1.0 + eps)],
                &[1.0 / (1.0 + eps)],
                &[-10.0 / (10.0 + eps)],
                &[10.0 / (10.0 + eps)],
            ],
        );
        // A group of 3 leaves a last group of one row, whitened alone (to 0).
        let uneven = values(&whiten_groups(&x, &ones, true, Some(3), &SingleProcess).unwrap());
        assert_eq!(uneven[3], vec![0.0]);
        // Groups as large as the batch, or none, are one whitening.
        for group in [None, Some(4), Some(100)] {
            assert!(
                whiten_groups(&x, &ones, true, group, &SingleProcess)
                    .unwrap()
                    .equal(&whiten(&x, &ones, true, &SingleProcess).unwrap())
            );
        }
    }

    /// Whitening over the ranks of a job is whitening of all their rows in one process: rows
    /// 1, 3 on one rank and 10, 30 (a padded 99 left out) on the other.
    #[test]
    fn whitening_over_ranks_equals_one_process() {
        // Tensors are not shared between threads: each rank makes its own.
        let data = || {
            (
                t2(&[&[1.0, 2.0], &[3.0, 4.0], &[10.0, 99.0], &[30.0, 5.0]]),
                t2(&[&[1.0, 1.0], &[1.0, 1.0], &[1.0, 0.0], &[1.0, 1.0]]),
            )
        };
        let (x, mask) = data();
        let whole = whiten(&x, &mask, false, &SingleProcess).unwrap();
        let parts = crate::distributed::on_ranks(2, |comm| {
            let (x, mask) = data();
            let rows = 2 * comm.rank() as i64;
            let part = whiten(
                &x.narrow(0, rows, 2),
                &mask.narrow(0, rows, 2),
                false,
                &*comm,
            );
            values(&part.unwrap())
        });
        let joined: Vec<Vec<f32>> = parts.into_iter().flatten().collect();
        let whole = values(&whole);
        for (a, b) in joined.iter().flatten().zip(whole.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "{joined:?} vs {whole:?}");
        }
        // Groups stay within a rank: the whole-job statistics are not used.
        let grouped = crate::distributed::on_ranks(2, |comm| {
            let (x, mask) = data();
            let rows = 2 * comm.rank() as i64;
            let part = whiten_groups(
                &x.narrow(0, rows, 2),
                &mask.narrow(0, rows, 2),
                false,
                Some(2),
                &*comm,
            );
            values(&part.unwrap())
        });
        let alone = values(
            &whiten(
                &x.narrow(0, 0, 2),
                &mask.narrow(0, 0, 2),
                false,
                &SingleProcess,
            )
            .unwrap(),
        );
        assert_eq!(grouped[0], alone);
    }
}
