//! PPO speed: one PPO step exactly as the trainer runs it, timed by part: on every model of
//! the run made from one causal LM ([`bench_ppo`], what `lincal bench ppo` runs), or on
//! models and a reward the caller built ([`bench_ppo_step`]).

use super::config::{PpoConfig, RlType};
use super::models::PpoModels;
use super::models::{ModelSettings, PpoModelPaths, load_models};
use super::ranks::Ranks;
use super::reward::Reward;
use super::rollout::{RolloutPrompt, Rollouts};
use super::{Learner, metric};
use crate::error::{Result, TrainError};
use crate::memory::BatchPlan;
use crate::reward_model::{HeadInit, RewardModel};
use lincal_model::trace::Trace;
use lincal_model::{CausalLm, Tokenizer, synchronize};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tch::Device;

/// The time of one RL step (PPO's or GRPO's), by part (the device is synchronised between
/// parts).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RlStepBench {
    pub rollouts: usize,
    pub query_len: usize,
    pub response_len: usize,
    /// Sampling the responses.
    pub generation_seconds: f64,
    /// The reward plus the policy, reference and (PPO) value forward passes.
    pub scoring_seconds: f64,
    /// The reward's share of scoring.
    pub reward_seconds: f64,
    /// The reward's parts, as it reports them (LC: `extraction`, `forecast`).
    pub reward_parts_seconds: BTreeMap<String, f64>,
    /// The update: forward and backward over every micro-batch, clipping and AdamW.
    pub update_seconds: f64,
    pub total_seconds: f64,
    pub generated_tokens_per_second: f64,
    pub trainable_parameters: i64,
    /// Mean summed log-ratio to the reference policy, and the update's approximate KL
    /// between old and new log-probs, at the first step: both 0 for a fresh policy when the
    /// forward passes are deterministic.
    pub first_step_kl: f64,
    pub first_step_approx_kl: f64,
    /// The batch sizes `auto_batch_sizes` chose, when it was on.
    pub batch_plan: Option<BatchPlan>,
}

/// [`bench_ppo_step`] with the built-in reward of `config.rl_type`, every model made from the
/// causal LM in `model_dir` (random weights of the shape to measure are fine): the policy,
/// the reference or adapters as `config.lora` says, the reward model and value backbone with
/// a freshly initialised head, and for decision-based RL the answer extractor, unless
/// `extractor` names another causal LM (with its tokenizer) for it, such as the reference's
/// smaller GPT-NeoX. The tokenizer in `model_dir` must have a pad token, so that policy and
/// reward model share one vocabulary.
pub fn bench_ppo(
    model_dir: &Path,
    extractor: Option<&Path>,
    device: Device,
    config: &PpoConfig,
    steps: RlBenchSteps<'_>,
) -> Result<RlStepBench> {
    let paths = bench_paths(model_dir, extractor, config.rl_type)?;
    let (config, batch_plan) = &config.planned(&paths, device, 1)?;
    let kind_of = |device| config.precision.kind(device);
    let (models, mut reward) = bench_models(&paths, device, &config.model_settings(&kind_of))?;
    let bench = bench_ppo_step(models, reward.as_mut(), config, steps)?;
    Ok(RlStepBench {
        batch_plan: batch_plan.clone(),
        ..bench
    })
}

/// Every model of a benchmark run is the causal LM in `model_dir`, but the answer extractor
/// of decision-based RL when `extractor` names one; Factuality RL has none to replace.
pub(crate) fn bench_paths(
    model_dir: &Path,
    extractor: Option<&Path>,
    rl_type: RlType,
) -> Result<PpoModelPaths> {
    if extractor.is_some() && rl_type != RlType::DecisionBased {
        return Err(TrainError::config(
            "extractor",
            "only decision-based RL (rl_type = \"decision_based\") extracts answers; leave \
             --extractor out for this config",
        ));
    }
    Ok(PpoModelPaths {
        policy: model_dir.to_path_buf(),
        reward_model: model_dir.to_path_buf(),
        answer_extractor: (rl_type == RlType::DecisionBased)
            .then(|| extractor.unwrap_or(model_dir).to_path_buf()),
    })
}

/// Every model of an RL run made from the causal LM of [`bench_paths`], with the built-in
/// reward: the policy, the reference or adapters, the reward model with a freshly initialised
/// head (and PPO's value backbone), and for decision-based RL the answer extractor. Its
/// tokenizer must have a pad token, so that policy and reward model share one vocabulary.
pub(crate) fn bench_models(
    paths: &PpoModelPaths,
    device: Device,
    settings: &ModelSettings<'_>,
) -> Result<(PpoModels, Box<dyn Reward>)> {
    let model_dir = &paths.policy;
    let tokenizer = Tokenizer::from_dir(model_dir)?;
    if tokenizer
        .pad_token()
        .and_then(|t| tokenizer.token_id(&t))
        .is_none()
    {
        return Err(TrainError::config(
            "tokenizer",
            format!(
                "{} sets no pad_token; the benchmark uses this model as policy and reward model, \
                 which must share one vocabulary: use an SFT model (`lincal sft` adds \"[PAD]\") \
                 or set pad_token in tokenizer_config.json",
                model_dir.join("tokenizer_config.json").display()
            ),
        ));
    }
    let source = model_dir.display().to_string();
    let seed = settings.seed;
    let with_new_head = |dir: &Path, device: Device, kind: tch::Kind| {
        Ok(RewardModel::new(
            CausalLm::load(dir, device, Some(kind))?,
            HeadInit::Default { seed },
            &source,
        ))
    };
    load_models(paths, device, settings, None, &with_new_head)
}

/// `count` random prompts of exactly `query_len` tokens of the policy's vocabulary, never its
/// pad token.
pub(crate) fn random_prompts(
    models: &PpoModels,
    count: usize,
    query_len: usize,
    seed: u64,
) -> Vec<Vec<i64>> {
    let vocab = models.policy.model.config().vocab_size();
    let pad_id = models.policy.pad_id;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            (0..query_len)
                .map(|_| rng.random_range(0..vocab))
                .map(|id| if id == pad_id { 0 } else { id })
                .collect()
        })
        .collect()
}

/// The rollout inputs of benchmark prompts.
pub(crate) fn bench_inputs(prompts: &[Vec<i64>]) -> Vec<RolloutPrompt<'_>> {
    prompts
        .iter()
        .map(|ids| RolloutPrompt {
            ids,
            question: "Which question does this benchmark ask?",
            answer: "none",
        })
        .collect()
}

/// Runs `steps.warmup_steps + 1` PPO steps of `config.rollout_batch_size` random prompts of
/// exactly `config.query_len` tokens, every response sampled to exactly `config.response_len`
/// tokens (EOS does not end it), on `models` (whose weights it trains: use throwaway ones)
/// with `reward`, and times the last step (traced when `steps.trace` names a file). Memory is
/// bounded by `generation_batch_size`, `forward_batch_size`, `micro_batch_size` and the
/// reward's batch sizes.
pub fn bench_ppo_step(
    mut models: PpoModels,
    reward: &mut dyn Reward,
    config: &PpoConfig,
    steps: RlBenchSteps<'_>,
) -> Result<RlStepBench> {
    config.validate()?;
    models.eos_ids.clear();
    let prompts = random_prompts(
        &models,
        config.rollout_batch_size,
        config.query_len,
        config.seed,
    );
    let inputs = bench_inputs(&prompts);
    let device = models.policy.model.device();
    let mut learner = Learner::new(config, models, Ranks::single(device));
    let parameters = learner.params.num_parameters();
    time_rl_steps(
        steps,
        device,
        (config.query_len, parameters),
        |step| learner.step(reward, &inputs, step),
        |outcome| TimedStep {
            rollouts: &outcome.rollouts,
            metrics: &outcome.metrics,
            update_seconds: outcome.update_seconds,
        },
    )
}

/// How an RL benchmark runs: `warmup_steps` untimed steps, then one timed step, of which a
/// profiler trace is written to `trace` when it names a file ([`lincal_model::trace`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct RlBenchSteps<'a> {
    pub warmup_steps: usize,
    pub trace: Option<&'a Path>,
}

/// What a benchmark reads of an RL step's outcome.
pub(crate) struct TimedStep<'a> {
    pub rollouts: &'a Rollouts,
    pub metrics: &'a [(String, f64)],
    pub update_seconds: f64,
}

/// Runs `steps.warmup_steps + 1` steps with `step` (given the completed steps) and times the
/// last, by part, with a profiler trace of it when `steps.trace` names a file; the first
/// step's `kl` and `approx_kl` are reported too. `(query_len, parameters)`: the prompts'
/// length and the trained parameters, for the record.
pub(crate) fn time_rl_steps<O>(
    steps: RlBenchSteps<'_>,
    device: Device,
    (query_len, parameters): (usize, i64),
    mut step: impl FnMut(u64) -> Result<O>,
    view: impl Fn(&O) -> TimedStep<'_>,
) -> Result<RlStepBench> {
    let mut timed = None;
    let mut first_step = (f64::NAN, f64::NAN);
    let RlBenchSteps {
        warmup_steps,
        trace,
    } = steps;
    for done in 0..=warmup_steps as u64 {
        synchronize(device);
        let timed_step = done == warmup_steps as u64;
        let recording = Trace::start_if(trace.filter(|_| timed_step), device)?;
        let started = Instant::now();
        let outcome = step(done)?;
        synchronize(device);
        let seconds = started.elapsed().as_secs_f64();
        if let Some(recording) = recording {
            recording.finish()?;
        }
        if done == 0 {
            let metrics = view(&outcome).metrics;
            first_step = (metric(metrics, "kl"), metric(metrics, "approx_kl"));
        }
        timed = Some((outcome, seconds));
    }
    let (outcome, total_seconds) = timed.expect("at least one step ran");
    let outcome = view(&outcome);
    let timing = &outcome.rollouts.timing;
    let lengths = &outcome.rollouts.seqs.lengths;
    let generated: i64 = lengths.iter().sum();
    Ok(RlStepBench {
        rollouts: lengths.len(),
        query_len,
        response_len: lengths.iter().copied().max().unwrap_or(0) as usize,
        generation_seconds: timing.generation_seconds,
        scoring_seconds: timing.reward_seconds + timing.forward_seconds,
        reward_seconds: timing.reward_seconds,
        reward_parts_seconds: timing
            .reward_parts
            .iter()
            .map(|(part, seconds)| (part.to_string(), *seconds))
            .collect(),
        update_seconds: outcome.update_seconds,
        total_seconds,
        generated_tokens_per_second: generated as f64 / timing.generation_seconds.max(1e-9),
        trainable_parameters: parameters,
        first_step_kl: first_step.0,
        first_step_approx_kl: first_step.1,
        batch_plan: None,
    })
}
