//! PPO speed: one PPO step exactly as the trainer runs it, on given models, timed by part.
//!
//! The caller builds the models (random weights of the shape to measure are fine) and a
//! reward, e.g. for a 7B run in LoRA mode:
//!
//! ```ignore
//! let (policy, policy_lora) = with_lora(&lora, device, 0, || Ok(CausalLm::new(llama_7b.clone(), device, Kind::BFloat16)))?;
//! let (rm, value_lora) = with_lora(&lora, device, 1, || Ok(RewardModel::new(CausalLm::new(llama_7b, device, Kind::BFloat16), HeadInit::Default { seed: 0 }, "bench")))?;
//! let rm = Rc::new(rm);
//! let models = PpoModels::new(policy, Some(policy_lora), None, ValueModel::new(rm.clone(), Some(value_lora)), Tokenizer::from_dir(dir)?)?;
//! let mut reward = BinaryCorrectnessReward::new(rm, Tokenizer::from_dir(dir)?, Templates::builtin()?, config.reward.clone())?;
//! let times = bench_ppo_step(models, &mut reward, &PpoConfig::preset("lc_ppo")?, 1)?;
//! ```

use super::config::PpoConfig;
use super::models::PpoModels;
use super::reward::Reward;
use super::rollout::RolloutPrompt;
use super::Learner;
use crate::engine::synchronize;
use crate::error::Result;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Instant;

/// The time of one PPO step, by part (the device is synchronised between parts).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PpoStepBench {
    pub rollouts: usize,
    pub query_len: usize,
    pub response_len: usize,
    /// Sampling the responses.
    pub generation_seconds: f64,
    /// The reward plus the policy, reference and value forward passes.
    pub scoring_seconds: f64,
    /// The reward's share of scoring.
    pub reward_seconds: f64,
    /// The update: forward and backward over every micro-batch, clipping and AdamW.
    pub update_seconds: f64,
    pub total_seconds: f64,
    pub generated_tokens_per_second: f64,
    pub trainable_parameters: i64,
}

/// Runs `warmup_steps + 1` PPO steps of `config.rollout_batch_size` random prompts of exactly
/// `config.query_len` tokens, every response sampled to exactly `config.response_len` tokens
/// (EOS does not end it), on `models` (whose weights it trains: use throwaway ones) with
/// `reward`, and times the last step. Memory is bounded by `generation_batch_size`,
/// `forward_batch_size`, `micro_batch_size` and the reward's batch sizes.
pub fn bench_ppo_step(mut models: PpoModels, reward: &mut dyn Reward, config: &PpoConfig, warmup_steps: usize) -> Result<PpoStepBench> {
    config.validate()?;
    models.eos_ids.clear();
    let vocab = models.policy.model.config().vocab_size();
    let pad_id = models.policy.pad_id;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
    let prompts: Vec<Vec<i64>> = (0..config.rollout_batch_size).map(|_| (0..config.query_len).map(|_| rng.random_range(0..vocab)).map(|id| if id == pad_id { 0 } else { id }).collect()).collect();
    let inputs: Vec<RolloutPrompt> = prompts.iter().map(|ids| RolloutPrompt { ids, question: "Which question does this benchmark ask?", answer: "none" }).collect();
    let mut learner = Learner::new(config, models);
    let device = learner.models.policy.model.device();
    let mut timed = None;
    for step in 0..=warmup_steps as u64 {
        synchronize(device);
        let started = Instant::now();
        let outcome = learner.step(reward, &inputs, step)?;
        timed = Some((outcome, started.elapsed().as_secs_f64()));
    }
    let (outcome, total_seconds) = timed.expect("at least one step ran");
    let timing = outcome.rollouts.timing;
    let generated: i64 = outcome.rollouts.seqs.lengths.iter().sum();
    Ok(PpoStepBench {
        rollouts: config.rollout_batch_size,
        query_len: config.query_len,
        response_len: config.response_len,
        generation_seconds: timing.generation_seconds,
        scoring_seconds: timing.reward_seconds + timing.forward_seconds,
        reward_seconds: timing.reward_seconds,
        update_seconds: outcome.update_seconds,
        total_seconds,
        generated_tokens_per_second: generated as f64 / timing.generation_seconds.max(1e-9),
        trainable_parameters: learner.params.num_parameters(),
    })
}
