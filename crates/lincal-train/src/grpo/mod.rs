//! Critic-free RL on the PPO rewards: GRPO and RLOO. Each prompt gets G responses; a
//! response's advantage comes from its group ([`advantages`]), so no value model is trained,
//! and the policy is updated with PPO's clipped ratio, a KL term to the reference and a choice
//! of loss aggregation ([`loss`]).

pub mod advantages;
pub mod loss;

pub use advantages::{GROUP_STD_EPSILON, GroupBaseline, group_advantages};
pub use loss::{GrpoLossInputs, GrpoLossStats, LossAggregation, grpo_loss, k3_kl};
