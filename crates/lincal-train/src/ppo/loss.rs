//! The PPO objective (SPEC 2.7): clipped policy loss, clipped value loss, and the statistics
//! logged with them. Losses are sums over the weighted positions of a micro-batch; the trainer
//! divides by the weight of the whole optimizer step, so gradient accumulation equals one
//! large batch. The policy's and the value model's losses are computed apart: the trainer runs
//! each model's passes on their own and adds `vf_coef` times the value loss's gradients.

use tch::{Kind, Tensor};

/// `max(−A·ρ, −A·clip(ρ, 1 − c, 1 + c))` per position with `ρ = exp(log π − log π_old)`, and
/// where the clipped term was the larger (the clip fraction counts those).
pub fn policy_loss(
    logprobs: &Tensor,
    old_logprobs: &Tensor,
    advantages: &Tensor,
    cliprange: f64,
) -> (Tensor, Tensor) {
    let ratio = (logprobs - old_logprobs).exp();
    let unclipped = -advantages * &ratio;
    let clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange);
    let was_clipped = clipped.gt_tensor(&unclipped).to_kind(Kind::Float);
    (unclipped.maximum(&clipped), was_clipped)
}

/// `0.5·max((V − R)², (V_old + clip(V − V_old, ±c) − R)²)` per position, and where the
/// clipped term was the larger.
pub fn value_loss(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    cliprange_value: f64,
) -> (Tensor, Tensor) {
    let clipped_values =
        old_values + (values - old_values).clamp(-cliprange_value, cliprange_value);
    let unclipped = (values - returns).square();
    let clipped = (clipped_values - returns).square();
    let was_clipped = clipped.gt_tensor(&unclipped).to_kind(Kind::Float);
    (unclipped.maximum(&clipped) * 0.5, was_clipped)
}

/// Sums over the weighted positions of the update, for logging as means.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossStats {
    pub policy_loss: f64,
    pub value_loss: f64,
    pub policy_clipfrac: f64,
    pub value_clipfrac: f64,
    /// `0.5·(log π − log π_old)²`.
    pub approx_kl: f64,
    /// Weighted positions summed over.
    pub weight: f64,
}

impl LossStats {
    pub fn accumulate(&mut self, other: &LossStats) {
        self.policy_loss += other.policy_loss;
        self.value_loss += other.value_loss;
        self.policy_clipfrac += other.policy_clipfrac;
        self.value_clipfrac += other.value_clipfrac;
        self.approx_kl += other.approx_kl;
        self.weight += other.weight;
    }

    /// The means, named as logged.
    pub fn means(&self) -> Vec<(&'static str, f64)> {
        let n = self.weight.max(f64::MIN_POSITIVE);
        vec![
            ("policy_loss", self.policy_loss / n),
            ("value_loss", self.value_loss / n),
            ("policy_clipfrac", self.policy_clipfrac / n),
            ("value_clipfrac", self.value_clipfrac / n),
            ("approx_kl", self.approx_kl / n),
        ]
    }
}

/// What one micro-batch of the update gives the policy's loss.
pub struct PolicyLossInputs<'a> {
    pub logprobs: &'a Tensor,
    pub old_logprobs: &'a Tensor,
    pub advantages: &'a Tensor,
    /// 1 on the positions that count, 0 elsewhere.
    pub weights: &'a Tensor,
}

/// What one micro-batch of the update gives the value loss.
pub struct ValueLossInputs<'a> {
    pub values: &'a Tensor,
    pub old_values: &'a Tensor,
    pub returns: &'a Tensor,
    /// 1 on the positions that count, 0 elsewhere.
    pub weights: &'a Tensor,
}

/// The summed policy loss `Σ w·policy` (with its graph) and its statistics (those of the
/// policy, and the weight).
pub fn summed_policy_loss(inputs: &PolicyLossInputs, cliprange: f64) -> (Tensor, LossStats) {
    let w = inputs.weights;
    let (policy, clipped) = policy_loss(
        inputs.logprobs,
        inputs.old_logprobs,
        inputs.advantages,
        cliprange,
    );
    let loss = (&policy * w).sum(Kind::Float);
    let delta = (inputs.logprobs - inputs.old_logprobs).detach();
    let stats = LossStats {
        policy_loss: loss.double_value(&[]),
        policy_clipfrac: weighted_sum(&clipped, w),
        approx_kl: weighted_sum(&(delta.square() * 0.5), w),
        weight: w.sum(Kind::Double).double_value(&[]),
        ..LossStats::default()
    };
    (loss, stats)
}

/// The summed value loss `Σ w·value` (with its graph; PPO's loss weighs it by `vf_coef`) and
/// its statistics.
pub fn summed_value_loss(inputs: &ValueLossInputs, cliprange_value: f64) -> (Tensor, LossStats) {
    let w = inputs.weights;
    let (value, clipped) = value_loss(
        inputs.values,
        inputs.old_values,
        inputs.returns,
        cliprange_value,
    );
    let loss = (&value * w).sum(Kind::Float);
    let stats = LossStats {
        value_loss: loss.double_value(&[]),
        value_clipfrac: weighted_sum(&clipped, w),
        ..LossStats::default()
    };
    (loss, stats)
}

fn weighted_sum(t: &Tensor, weights: &Tensor) -> f64 {
    (t * weights).sum(Kind::Double).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).unsqueeze(0)
    }

    fn vec(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.squeeze_dim(0)).unwrap()
    }

    #[test]
    fn the_policy_loss_clips_the_ratio_on_the_side_the_advantage_favours() {
        // Ratios e^0.5 = 1.6487, e^-0.5 = 0.6065, e^0.1 = 1.1052, 1; advantages 1, 1, -2, -1.
        let old = row(&[0.0, 0.0, 0.0, -1.0]);
        let new = row(&[0.5, -0.5, 0.1, -1.0]);
        let advantages = row(&[1.0, 1.0, -2.0, -1.0]);
        let (loss, clipped) = policy_loss(&new, &old, &advantages, 0.2);
        // A > 0, ρ > 1.2: −A·1.2 = −1.2 beats −1.6487 (clipped). A > 0, ρ < 0.8: −0.6065 beats
        // −0.8 (not clipped). A < 0, ρ inside: 2·1.1052 both. ρ = 1: −A = 1 both.
        let want = [-1.2, -(-0.5f64).exp(), 2.0 * 0.1f64.exp(), 1.0];
        for (got, want) in vec(&loss).iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-6, "{:?}", vec(&loss));
        }
        assert_eq!(vec(&clipped), vec![1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn the_value_loss_clips_around_the_old_value() {
        // Old 0; new 1 (clipped to 0.2), 0.1, −1 (clipped to −0.2); returns 2, 0, −3.
        // (1 − 2)² = 1 vs (0.2 − 2)² = 3.24 → 3.24 (clipped); (0.1)² vs (0.1)² → 0.01;
        // (−1 + 3)² = 4 vs (−0.2 + 3)² = 7.84 → 7.84 (clipped). Halved.
        let (loss, clipped) = value_loss(
            &row(&[1.0, 0.1, -1.0]),
            &row(&[0.0, 0.0, 0.0]),
            &row(&[2.0, 0.0, -3.0]),
            0.2,
        );
        for (got, want) in vec(&loss).iter().zip([1.62, 0.005, 3.92]) {
            assert!((*got as f64 - want).abs() < 1e-6, "{:?}", vec(&loss));
        }
        assert_eq!(vec(&clipped), vec![1.0, 0.0, 1.0]);
        // Even a value that lands on its return pays for moving past the clip: 0 → 1 with
        // return 1 gives max(0, 0.64)/2 = 0.32.
        let (loss, clipped) = value_loss(&row(&[1.0]), &row(&[0.0]), &row(&[1.0]), 0.2);
        assert!((vec(&loss)[0] - 0.32).abs() < 1e-6);
        assert_eq!(vec(&clipped), vec![1.0]);
    }

    #[test]
    fn the_summed_losses_sum_weighted_positions_and_count_clip_fractions() {
        let logprobs = row(&[0.5, -0.5, 0.0]);
        let zeros = row(&[0.0, 0.0, 0.0]);
        let ones = row(&[1.0, 1.0, 1.0]);
        let weights = row(&[1.0, 1.0, 0.0]);
        let values = row(&[1.0, 0.0, 5.0]);
        let (policy_sum, policy_stats) = summed_policy_loss(
            &PolicyLossInputs {
                logprobs: &logprobs,
                old_logprobs: &zeros,
                advantages: &ones,
                weights: &weights,
            },
            0.2,
        );
        let (value_sum, value_stats) = summed_value_loss(
            &ValueLossInputs {
                values: &values,
                old_values: &zeros,
                returns: &ones,
                weights: &weights,
            },
            0.2,
        );
        // Policy: −1.2 (clipped) and −e^-0.5 over the two weighted positions; value: position 0
        // max(0, 0.64)/2 = 0.32 (clipped), position 1 max(1, 0.64)/2 = 0.5; the third is padding.
        let policy = -1.2 - (-0.5f64).exp();
        assert!((policy_sum.double_value(&[]) - policy).abs() < 1e-6);
        assert!((value_sum.double_value(&[]) - 0.82).abs() < 1e-6);
        let mut stats = policy_stats;
        stats.accumulate(&value_stats);
        assert!((stats.policy_loss - policy).abs() < 1e-6);
        assert!((stats.value_loss - 0.82).abs() < 1e-6);
        assert_eq!(
            (stats.policy_clipfrac, stats.value_clipfrac, stats.weight),
            (1.0, 1.0, 2.0)
        );
        assert!((stats.approx_kl - 0.25).abs() < 1e-6);
        let means: std::collections::HashMap<_, _> = stats.means().into_iter().collect();
        assert_eq!((means["policy_clipfrac"], means["approx_kl"]), (0.5, 0.125));
    }
}
