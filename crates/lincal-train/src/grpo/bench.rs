//! GRPO speed: one step exactly as the trainer runs it, timed by part, on every model of the
//! run made from one causal LM (what `lincal bench grpo` runs), for comparison with
//! [`crate::ppo::bench_ppo`] on the same models.

use super::{GrpoConfig, GrpoLearner};
use crate::error::Result;
use crate::ppo::bench::{RlStepBench, bench_inputs, bench_models, random_prompts};
use crate::ppo::models::ModelSettings;
use crate::training_run::synchronize;
use std::path::Path;
use std::time::Instant;
use tch::Device;

/// Runs `warmup_steps + 1` steps of `prompts_per_step` random prompts of exactly `query_len`
/// tokens, each answered `group_size` times to exactly `response_len` tokens (EOS does not end
/// a response), on models made from `model_dir` (see [`crate::ppo::bench_ppo`]; no value
/// model), and times the last step.
pub fn bench_grpo(
    model_dir: &Path,
    device: Device,
    config: &GrpoConfig,
    warmup_steps: usize,
) -> Result<RlStepBench> {
    config.validate()?;
    let kind_of = |device| config.precision.kind(device);
    let settings = ModelSettings {
        rl_type: config.rl_type,
        kind_of: &kind_of,
        lora: config.lora.as_ref(),
        seed: config.seed,
        pad_token: &config.pad_token,
        reward: &config.reward,
        templates: config.templates.as_deref(),
        value: false,
    };
    let (mut models, mut reward) = bench_models(model_dir, device, &settings)?;
    models.eos_ids.clear();
    let prompts = random_prompts(
        &models,
        config.prompts_per_step,
        config.query_len,
        config.seed,
    );
    let grouped: Vec<Vec<i64>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), config.group_size))
        .collect();
    let inputs = bench_inputs(&grouped);
    let mut learner = GrpoLearner::new(config, models);
    let device = learner.models.policy.model.device();
    let mut timed = None;
    let mut first_step = (f64::NAN, f64::NAN);
    for step in 0..=warmup_steps as u64 {
        synchronize(device);
        let started = Instant::now();
        let outcome = learner.step(reward.as_mut(), &inputs, step)?;
        if step == 0 {
            let metric = |name: &str| {
                outcome
                    .metrics
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(f64::NAN, |(_, v)| *v)
            };
            first_step = (metric("kl"), metric("approx_kl"));
        }
        timed = Some((outcome, started.elapsed().as_secs_f64()));
    }
    let (outcome, total_seconds) = timed.expect("at least one step ran");
    let timing = outcome.rollouts.timing;
    let generated: i64 = outcome.rollouts.seqs.lengths.iter().sum();
    Ok(RlStepBench {
        rollouts: config.rollout_batch_size(),
        query_len: config.query_len,
        response_len: config.response_len,
        generation_seconds: timing.generation_seconds,
        scoring_seconds: timing.reward_seconds + timing.forward_seconds,
        reward_seconds: timing.reward_seconds,
        update_seconds: outcome.update_seconds,
        total_seconds,
        generated_tokens_per_second: generated as f64 / timing.generation_seconds.max(1e-9),
        trainable_parameters: learner.num_parameters(),
        first_step_kl: first_step.0,
        first_step_approx_kl: first_step.1,
    })
}
