//! GRPO speed: one step exactly as the trainer runs it, timed by part, on every model of the
//! run made from one causal LM (what `lincal bench grpo` runs), for comparison with
//! [`crate::ppo::bench_ppo`] on the same models.

use super::{GrpoConfig, GrpoLearner};
use crate::error::Result;
use crate::ppo::bench::{
    RlBenchSteps, RlStepBench, TimedStep, bench_inputs, bench_models, bench_paths, random_prompts,
    time_rl_steps,
};
use crate::ppo::ranks::Ranks;
use std::path::Path;
use tch::Device;

/// Runs `steps.warmup_steps + 1` steps of `prompts_per_step` random prompts of exactly
/// `query_len` tokens, each answered `group_size` times to exactly `response_len` tokens (EOS
/// does not end a response), on models made from `model_dir` and `extractor` (see
/// [`crate::ppo::bench_ppo`]; no value model), and times the last step (traced when
/// `steps.trace` names a file).
pub fn bench_grpo(
    model_dir: &Path,
    extractor: Option<&Path>,
    device: Device,
    config: &GrpoConfig,
    steps: RlBenchSteps<'_>,
) -> Result<RlStepBench> {
    config.validate()?;
    let paths = bench_paths(model_dir, extractor, config.rl_type)?;
    let (config, batch_plan) = &config.planned(&paths, device, 1)?;
    let kind_of = |device| config.precision.kind(device);
    let (mut models, mut reward) = bench_models(&paths, device, &config.model_settings(&kind_of))?;
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
    let device = models.policy.model.device();
    let mut learner = GrpoLearner::new(config, models, Ranks::single(device));
    let parameters = learner.num_parameters();
    let bench = time_rl_steps(
        steps,
        device,
        (config.query_len, parameters),
        |step| learner.step(reward.as_mut(), &inputs, step),
        |outcome| TimedStep {
            rollouts: &outcome.rollouts,
            metrics: &outcome.metrics,
            update_seconds: outcome.update_seconds,
        },
    )?;
    Ok(RlStepBench {
        batch_plan: batch_plan.clone(),
        ..bench
    })
}
