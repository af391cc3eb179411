//! The critic-free objective: PPO's clipped ratio term with one advantage per response, an
//! optional KL term to the reference policy, and a choice of how the per-token losses of a
//! batch are averaged. Like PPO's losses, a micro-batch gives a sum; the trainer divides by
//! the [`LossAggregation::units`] of the whole optimizer step, so accumulation equals one
//! large batch.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::ppo::loss::policy_loss;

/// How the per-token losses of a batch become one number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossAggregation {
    /// Every response token of the batch weighs the same: the sum over tokens divided by
    /// their number (DAPO's token-level loss, TRL's default).
    #[default]
    Token,
    /// Each response weighs the same: its tokens' mean, then the mean over responses (the
    /// original GRPO; a long response's tokens count less each).
    Sequence,
    /// The sum over tokens divided by responses × `response_len`, a constant (Dr. GRPO: no
    /// length normalisation at all).
    Constant,
}

impl LossAggregation {
    /// What the summed losses of an optimizer step are divided by (once at least 1, after
    /// summing over the ranks that share the step): its tokens, its responses, or its
    /// responses × `response_len`. `mask` is 1 on the response tokens of the step's rows
    /// `[B, T]`.
    pub fn units(self, mask: &Tensor, response_len: usize) -> f64 {
        let rows = mask.size()[0] as f64;
        match self {
            LossAggregation::Token => mask.sum(Kind::Double).double_value(&[]),
            LossAggregation::Sequence => rows,
            LossAggregation::Constant => rows * response_len as f64,
        }
    }

    /// Per-token weights `[B, T]` whose sum with the per-token losses is this aggregation's
    /// numerator: the mask, or for `Sequence` the mask divided by each row's token count.
    fn token_weights(self, mask: &Tensor) -> Tensor {
        match self {
            LossAggregation::Token | LossAggregation::Constant => mask.shallow_clone(),
            LossAggregation::Sequence => {
                let tokens = mask.sum_dim_intlist(1, true, Kind::Float).clamp_min(1.0);
                mask / tokens
            }
        }
    }
}

/// The k3 estimator of KL(π ‖ π_ref) per token (Schulman 2020): `exp(r) − r − 1` with
/// `r = log π_ref − log π`; non-negative, and unbiased for samples drawn from π.
pub fn k3_kl(logprobs: &Tensor, ref_logprobs: &Tensor) -> Tensor {
    let r = ref_logprobs - logprobs;
    r.exp() - &r - 1.0
}

/// The inputs of one micro-batch, every tensor `[B, T]` over response positions except the
/// advantages `[B]`.
pub struct GrpoLossInputs<'a> {
    pub logprobs: &'a Tensor,
    pub old_logprobs: &'a Tensor,
    /// The reference policy's log-probs, for the KL term in the loss (none: no KL term).
    pub ref_logprobs: Option<&'a Tensor>,
    pub advantages: &'a Tensor,
    /// 1 on response tokens.
    pub mask: &'a Tensor,
}

/// Sums of the micro-batch's statistics, over its response tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GrpoLossStats {
    pub policy_loss: f64,
    pub kl: f64,
    pub clipfrac: f64,
    /// `0.5·(log π − log π_old)²`: 0 while the ratio is 1.
    pub approx_kl: f64,
    pub tokens: f64,
}

impl GrpoLossStats {
    pub fn accumulate(&mut self, other: &GrpoLossStats) {
        self.policy_loss += other.policy_loss;
        self.kl += other.kl;
        self.clipfrac += other.clipfrac;
        self.approx_kl += other.approx_kl;
        self.tokens += other.tokens;
    }
}

/// `Σ w_t·(max(−A·ρ_t, −A·clip(ρ_t, 1 ± c)) + β·k3_t)` over the micro-batch, the weights w
/// those of `aggregation` (divide by [`LossAggregation::units`] of the optimizer step), and
/// the token sums of its statistics.
pub fn grpo_loss(
    inputs: &GrpoLossInputs<'_>,
    cliprange: f64,
    kl_coef: f64,
    aggregation: LossAggregation,
) -> (Tensor, GrpoLossStats) {
    let advantages = inputs.advantages.unsqueeze(1);
    let (policy, clipped) =
        policy_loss(inputs.logprobs, inputs.old_logprobs, &advantages, cliprange);
    let kl = inputs
        .ref_logprobs
        .map(|reference| k3_kl(inputs.logprobs, reference));
    let per_token = match (&kl, kl_coef) {
        (Some(kl), beta) if beta != 0.0 => &policy + kl * beta,
        _ => policy.shallow_clone(),
    };
    let weights = aggregation.token_weights(inputs.mask);
    let loss = (per_token * &weights).sum(Kind::Float);
    let total = |t: &Tensor| tch::no_grad(|| (t * inputs.mask).sum(Kind::Double).double_value(&[]));
    let stats = GrpoLossStats {
        policy_loss: total(&policy),
        kl: kl.as_ref().map_or(0.0, total),
        clipfrac: total(&clipped),
        approx_kl: total(&((inputs.logprobs - inputs.old_logprobs).square() * 0.5)),
        tokens: total(&inputs.mask.ones_like()),
    };
    (loss, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[&[f64]]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat)
            .view([rows.len() as i64, rows[0].len() as i64])
            .to_kind(Kind::Float)
    }

    fn value(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn k3_matches_hand_values() {
        // r = ref − log π: 0 → 0; ln 2 → 2 − ln 2 − 1 = 0.306853; −ln 2 → 0.5 + ln 2 − 1.
        let ln2 = std::f64::consts::LN_2;
        let logprobs = t(&[&[-1.0, -1.0 - ln2, -1.0 + ln2]]);
        let reference = t(&[&[-1.0, -1.0, -1.0]]);
        let kl = Vec::<f64>::try_from(k3_kl(&logprobs, &reference).view([-1])).unwrap();
        for (got, want) in kl.iter().zip([0.0, 1.0 - ln2, ln2 - 0.5]) {
            assert!((got - want).abs() < 1e-6, "{kl:?}");
        }
    }

    #[test]
    fn at_the_first_update_the_loss_is_minus_the_advantage_per_token() {
        // ρ = 1: nothing clipped; two responses, advantages +1 and −2, lengths 2 and 1
        // (T = 3, response_len 3). Per-token losses: −1, −1 | +2.
        let logprobs = t(&[&[-0.5, -0.7, 0.0], &[-0.2, 0.0, 0.0]]);
        let mask = t(&[&[1.0, 1.0, 0.0], &[1.0, 0.0, 0.0]]);
        let advantages = Tensor::from_slice(&[1.0f32, -2.0]);
        let inputs = GrpoLossInputs {
            logprobs: &logprobs,
            old_logprobs: &logprobs,
            ref_logprobs: None,
            advantages: &advantages,
            mask: &mask,
        };
        let aggregate = |aggregation: LossAggregation| {
            let (loss, stats) = grpo_loss(&inputs, 0.2, 0.1, aggregation);
            assert_eq!((stats.clipfrac, stats.tokens), (0.0, 3.0));
            value(&loss) / aggregation.units(&mask, 3)
        };
        // Token: (−1 − 1 + 2)/3 = 0. Sequence: (mean(−1, −1) + 2)/2 = 0.5.
        // Constant: (−1 − 1 + 2)/(2·3) = 0.
        assert!(aggregate(LossAggregation::Token).abs() < 1e-6);
        assert!((aggregate(LossAggregation::Sequence) - 0.5).abs() < 1e-6);
        assert!(aggregate(LossAggregation::Constant).abs() < 1e-6);
        // Constant divides by the fixed length, not the tokens: advantages +1, +1 give
        // (−1 − 1 − 1)/6 = −0.5 where Token gives −1.
        let ones = Tensor::from_slice(&[1.0f32, 1.0]);
        let inputs = GrpoLossInputs {
            advantages: &ones,
            ..inputs
        };
        let (loss, _) = grpo_loss(&inputs, 0.2, 0.0, LossAggregation::Constant);
        assert!((value(&loss) / LossAggregation::Constant.units(&mask, 3) + 0.5).abs() < 1e-6);
        let (loss, _) = grpo_loss(&inputs, 0.2, 0.0, LossAggregation::Token);
        assert!((value(&loss) / LossAggregation::Token.units(&mask, 3) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn the_kl_term_adds_beta_k3_and_the_ratio_is_clipped() {
        let ln2 = std::f64::consts::LN_2;
        // One token: log π − log π_old = ln 2 (ρ = 2, clipped to 1.2 for A = 1: the larger of
        // −2 and −1.2 is −1.2), and log π_ref = log π − ln 2, so r = −ln 2 and
        // k3 = exp(−ln 2) + ln 2 − 1 = ln 2 − 0.5.
        let logprobs = t(&[&[-1.0]]);
        let old = t(&[&[-1.0 - ln2]]);
        let reference = t(&[&[-1.0 - ln2]]);
        let mask = t(&[&[1.0]]);
        let advantages = Tensor::from_slice(&[1.0f32]);
        let inputs = GrpoLossInputs {
            logprobs: &logprobs,
            old_logprobs: &old,
            ref_logprobs: Some(&reference),
            advantages: &advantages,
            mask: &mask,
        };
        let (loss, stats) = grpo_loss(&inputs, 0.2, 0.5, LossAggregation::Token);
        let k3 = ln2 - 0.5;
        assert!(
            (value(&loss) - (-1.2 + 0.5 * k3)).abs() < 1e-5,
            "{}",
            value(&loss)
        );
        assert!(
            (stats.kl - k3).abs() < 1e-6 && stats.clipfrac == 1.0,
            "{stats:?}"
        );
        // β = 0 (KL in the reward instead): the term is left out, but still reported.
        let (loss, stats) = grpo_loss(&inputs, 0.2, 0.0, LossAggregation::Token);
        assert!((value(&loss) + 1.2).abs() < 1e-5 && (stats.kl - k3).abs() < 1e-6);
    }
}
