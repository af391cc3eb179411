//! Prompts and rollouts (SPEC 2.2-2.4): prompts rendered with the policy template and those
//! longer than `query_len` dropped; responses sampled; the reward; and the no-grad forward
//! passes that give the policy's and the reference's log-probs and the values.

use super::models::{PpoModels, Sequences, keep_on_device, response_logprobs};
use super::reward::{Reward, RewardInput, RewardOutput, ScoreContext};
use crate::error::{Result, TrainError};
use lincal_data::prompts::Templates;
pub use lincal_data::schema::PpoPrompt;
use lincal_model::trace::TimedPart;
use lincal_model::{BatchRequest, FinishReason, SamplingParams, Tokenizer, generate_batch};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::Tensor;

/// Prompts tokenised with the policy template.
pub(crate) struct TokenizedPrompts {
    pub ids: Vec<Vec<i64>>,
    /// Index of each kept prompt in the prompt list.
    pub index: Vec<usize>,
    /// Prompts dropped for being longer than the limit.
    pub dropped: usize,
}

impl TokenizedPrompts {
    /// Renders each prompt's query with the policy template and tokenises it (special tokens
    /// added, as in SFT); with `max_len`, longer prompts are dropped, as the reference drops
    /// them from training.
    pub fn new(
        templates: &Templates,
        tokenizer: &Tokenizer,
        prompts: &[PpoPrompt],
        max_len: Option<usize>,
    ) -> Result<Self> {
        let mut tokenized = TokenizedPrompts {
            ids: Vec::new(),
            index: Vec::new(),
            dropped: 0,
        };
        for (index, prompt) in prompts.iter().enumerate() {
            let ids = tokenizer.encode(&templates.policy(&prompt.query)?, true)?;
            if ids.is_empty() {
                return Err(TrainError::Data {
                    set: "ppo",
                    index,
                    message: "the rendered query has no tokens".into(),
                });
            }
            if max_len.is_some_and(|max| ids.len() > max) {
                tokenized.dropped += 1;
                continue;
            }
            tokenized.ids.push(ids);
            tokenized.index.push(index);
        }
        Ok(tokenized)
    }

    /// A digest of the kept prompts (tokens, question, answer), so that a resume on other
    /// prompts is refused.
    pub fn digest(&self, prompts: &[PpoPrompt]) -> String {
        let mut hasher = Sha256::new();
        for (ids, &index) in self.ids.iter().zip(&self.index) {
            hasher.update((ids.len() as u64).to_le_bytes());
            ids.iter().for_each(|id| hasher.update(id.to_le_bytes()));
            for text in [&prompts[index].question, &prompts[index].answer] {
                hasher.update((text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
        }
        format!("{:x}", hasher.finalize())
    }
}

/// One prompt of a rollout batch.
pub(crate) struct RolloutPrompt<'a> {
    pub ids: &'a [i64],
    pub question: &'a str,
    pub answer: &'a str,
}

/// How long each part of a rollout took (device synchronised).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RolloutTiming {
    pub generation_seconds: f64,
    /// The reward (answer extraction and forecasting for LC).
    pub reward_seconds: f64,
    /// The reward's own parts, as it reports them ([`Reward::take_timings`]).
    pub reward_parts: Vec<(&'static str, f64)>,
    /// Policy, reference and value forward passes.
    pub forward_seconds: f64,
}

impl RolloutTiming {
    /// The step metrics: `generation_seconds`, `reward_seconds`, `reward_<part>_seconds` for
    /// each part the reward reports, and `forward_seconds`.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let parts = self
            .reward_parts
            .iter()
            .map(|(part, seconds)| (format!("reward_{part}_seconds"), *seconds));
        [
            ("generation_seconds".to_string(), self.generation_seconds),
            ("reward_seconds".to_string(), self.reward_seconds),
        ]
        .into_iter()
        .chain(parts)
        .chain([("forward_seconds".to_string(), self.forward_seconds)])
        .collect()
    }
}

/// How rollouts are sampled and scored.
pub(crate) struct RolloutSettings {
    pub temperature: f64,
    pub response_len: usize,
    pub generation_batch_size: usize,
    pub forward_batch_size: usize,
    /// Pad every response to `response_len` (the reference's layout) rather than to the
    /// longest one.
    pub full_width: bool,
    /// Compute values (training; evaluation needs none).
    pub with_values: bool,
}

/// Sampled responses with everything PPO needs about them.
pub(crate) struct Rollouts {
    pub seqs: Sequences,
    pub responses: Vec<String>,
    pub ended_with_eos: Vec<bool>,
    /// `[B, W]` log-probs at the sampling temperature (0 on padding).
    pub logprobs: Tensor,
    pub ref_logprobs: Tensor,
    /// `[B, W]` entropy of each sampling distribution (0 on padding).
    pub entropy: Tensor,
    pub values: Option<Tensor>,
    pub rewards: Vec<RewardOutput>,
    pub timing: RolloutTiming,
}

impl Rollouts {
    pub fn scores(&self) -> Vec<f64> {
        self.rewards.iter().map(|r| r.reward).collect()
    }
}

/// Samples a response to each prompt (row `i` seeded by `sampling_seeds[i]`), scores it,
/// and computes the log-probs (and values) by forward passes over query + response.
pub(crate) fn collect_rollouts(
    models: &PpoModels,
    reward: &mut dyn Reward,
    prompts: &[RolloutPrompt<'_>],
    sampling_seeds: &[u64],
    context: ScoreContext,
    settings: &RolloutSettings,
) -> Result<Rollouts> {
    let device = models.policy.model.device();
    models.set_training(false);
    // Each part runs its frozen models; with `offload_idle_models` the others wait in host
    // memory (the reward brings back its own as it runs them). The update runs the models of
    // the forward passes.
    let part = TimedPart::start(c"generation");
    keep_on_device(&[&models.policy.model], &models.frozen_models(reward));
    let (responses, ended_with_eos) = sample_responses(models, prompts, sampling_seeds, settings)?;
    let generation_seconds = part.finish(device);

    let part = TimedPart::start(c"reward");
    keep_on_device(&[], &models.frozen_models(reward));
    let texts = models.policy.tokenizer.decode_batch(&responses, true)?;
    let rewards = score_responses(models, reward, prompts, &texts, context)?;
    let reward_seconds = part.finish(device);
    let reward_parts = reward.take_timings();

    let part = TimedPart::start(c"forward passes");
    keep_on_device(&models.forward_models(), &models.frozen_models(reward));
    let width = if settings.full_width {
        settings.response_len
    } else {
        responses.iter().map(Vec::len).max().unwrap_or(1)
    };
    let queries: Vec<&[i64]> = prompts.iter().map(|p| p.ids).collect();
    let seqs = Sequences::new(&queries, &responses, width, models.policy.pad_id, device);
    let passes = forward_passes(models, &seqs, settings);
    let forward_seconds = part.finish(device);
    Ok(Rollouts {
        seqs,
        responses: texts,
        ended_with_eos,
        logprobs: passes.logprobs,
        ref_logprobs: passes.ref_logprobs,
        entropy: passes.entropy,
        values: passes.values,
        rewards,
        timing: RolloutTiming {
            generation_seconds,
            reward_seconds,
            reward_parts,
            forward_seconds,
        },
    })
}

/// Samples each response at the rollout temperature (no top-k or top-p, SPEC 2.3) up to
/// `response_len` tokens; returns each row's tokens (EOS included) and whether EOS ended it.
fn sample_responses(
    models: &PpoModels,
    prompts: &[RolloutPrompt<'_>],
    seeds: &[u64],
    settings: &RolloutSettings,
) -> Result<(Vec<Vec<i64>>, Vec<bool>)> {
    let params = SamplingParams {
        temperature: settings.temperature,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: settings.response_len as i64,
        stop: Vec::new(),
    };
    let policy = &models.policy;
    let sample = || -> Result<(Vec<Vec<i64>>, Vec<bool>)> {
        let mut responses = Vec::with_capacity(prompts.len());
        let mut ended_with_eos = Vec::with_capacity(prompts.len());
        for (chunk, chunk_seeds) in prompts
            .chunks(settings.generation_batch_size)
            .zip(seeds.chunks(settings.generation_batch_size))
        {
            let ids: Vec<Vec<i64>> = chunk.iter().map(|p| p.ids.to_vec()).collect();
            let request = BatchRequest {
                eos_ids: &models.eos_ids,
                pad_id: policy.pad_id,
                ..BatchRequest::new(&ids, chunk_seeds, &params)
            };
            let out = generate_batch(&policy.model, &request, None)?;
            let tokens = Vec::<Vec<i64>>::try_from(out.tokens.to_device(tch::Device::Cpu))?;
            for ((row, &len), reason) in tokens
                .into_iter()
                .zip(&out.lengths)
                .zip(&out.finish_reasons)
            {
                responses.push(row[..len as usize].to_vec());
                ended_with_eos.push(*reason == FinishReason::Eos);
            }
        }
        Ok((responses, ended_with_eos))
    };
    match &policy.lora {
        // With a host copy of the base (`offload_idle_models`) the adapters are merged into
        // it for the whole generation, and the base comes back with the policy's next reload;
        // the log-probs of the forward passes are the adapters' as ever.
        Some(adapters) => policy.model.with_merged_adapters(adapters, sample)?,
        None => sample(),
    }
}

/// The sequence reward of each decoded response. In LoRA mode the reward model shares its
/// base with PPO's value model, so the value adapters are off meanwhile.
fn score_responses(
    models: &PpoModels,
    reward: &mut dyn Reward,
    prompts: &[RolloutPrompt<'_>],
    texts: &[String],
    context: ScoreContext,
) -> Result<Vec<RewardOutput>> {
    let inputs: Vec<RewardInput> = prompts
        .iter()
        .zip(texts)
        .map(|(p, text)| RewardInput {
            question: p.question,
            answer: p.answer,
            paragraph: text,
        })
        .collect();
    let rewards = match &models.value {
        Some(value) => value.without_adapters(|| reward.score(&inputs, context))?,
        None => reward.score(&inputs, context)?,
    };
    if rewards.len() != prompts.len() {
        return Err(TrainError::config(
            "reward",
            format!(
                "the reward returned {} scores for {} responses",
                rewards.len(),
                prompts.len()
            ),
        ));
    }
    if let Some((index, bad)) = rewards
        .iter()
        .enumerate()
        .find(|(_, r)| !r.reward.is_finite())
    {
        return Err(TrainError::Data {
            set: "rollout",
            index,
            message: format!(
                "the reward is {}; rewards must be finite numbers",
                bad.reward
            ),
        });
    }
    Ok(rewards)
}

/// What the no-grad forward passes over the rollouts give.
struct ForwardPasses {
    logprobs: Tensor,
    ref_logprobs: Tensor,
    entropy: Tensor,
    values: Option<Tensor>,
}

/// The policy's log-probs (with entropies), the reference's log-probs and the values, in
/// chunks of `forward_batch_size` rows. The old-policy log-probs of the update are these
/// recomputed ones rather than those sampling reported: they come from the same forward pass
/// as the update's and the reference's, so the ratio and the KL compare like with like, while
/// sampling's incremental decoding differs from a full pass by rounding, which the KL clamp
/// at 0 would turn into a positive penalty.
fn forward_passes(
    models: &PpoModels,
    seqs: &Sequences,
    settings: &RolloutSettings,
) -> ForwardPasses {
    let (mut logprobs, mut ref_logprobs, mut entropy, mut values) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    tch::no_grad(|| {
        let rows: Vec<usize> = (0..seqs.rows()).collect();
        for chunk in rows.chunks(settings.forward_batch_size) {
            let batch = seqs.batch(chunk);
            let (lp, ent) =
                response_logprobs(&models.policy.model, &batch, settings.temperature, true);
            logprobs.push(lp);
            entropy.push(ent.expect("asked for entropy"));
            ref_logprobs.push(models.reference_logprobs(&batch, settings.temperature));
            if let Some(value) = models.value.as_ref().filter(|_| settings.with_values) {
                values.push(value.forward(&batch));
            }
        }
    });
    ForwardPasses {
        logprobs: Tensor::cat(&logprobs, 0),
        ref_logprobs: Tensor::cat(&ref_logprobs, 0),
        entropy: Tensor::cat(&entropy, 0),
        values: settings.with_values.then(|| Tensor::cat(&values, 0)),
    }
}
