//! The models of a PPO run (SPEC 2.1): loading them from their directories with the reward
//! ([`load_models`]), and the forward passes over rollouts (SPEC 2.4).
//!
//! | role | full fine-tuning | LoRA mode |
//! | --- | --- | --- |
//! | policy | the SFT model, every weight trained | adapters on the frozen SFT model |
//! | reference policy | a second frozen copy of the SFT model | the policy with its adapters off |
//! | value | the reward model's backbone, trained, with a zero head | adapters on the frozen reward-model backbone, with a zero head |
//! | reward model | a frozen copy of the reward model | the value backbone with its adapters off |

use super::config::{PpoConfig, RewardConfig, RlType};
use super::reward::{BinaryCorrectnessReward, DecisionReward, Reward};
use crate::cross_entropy::rows_per_slice;
use crate::error::{Result, TrainError};
use crate::memory::{BatchPlan, ModelShape, RlMemoryModel, check_host_memory, device_memory};
use crate::reward_model::{HeadInit, RewardModel, ScalarHead};
use crate::setup::{LoadedModel, OUTPUT_EMBEDDINGS};
use crate::train_loop::TrainingPass;
use lincal_data::prompts::Templates;
use lincal_model::layers::{attention_mask, positions_from_mask};
use lincal_model::lora::{LoraAdapters, LoraConfig, with_lora};
use lincal_model::{CausalLm, ModelError, Tokenizer};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

/// Where a PPO run's models are.
#[derive(Debug, Clone, PartialEq)]
pub struct PpoModelPaths {
    /// The SFT policy: a causal LM with its tokenizer.
    pub policy: PathBuf,
    /// The reward model (ForecastProbs for LC, the binary-correctness model for Factuality):
    /// the built-in rewards score with it, and the value model starts from its backbone.
    pub reward_model: PathBuf,
    /// ExtractAnswers (decision-based RL only).
    pub answer_extractor: Option<PathBuf>,
}

impl PpoModelPaths {
    /// The manifest of an RL run's directory (`stage` "ppo" or "grpo"): its config with these
    /// model paths, and whether a custom reward replaced the built-in one.
    pub(crate) fn manifest(
        &self,
        stage: &str,
        config: &impl serde::Serialize,
        custom_reward: bool,
    ) -> lincal_data::artifact::Manifest {
        let mut config = serde_json::to_value(config).expect("configs serialise");
        config["models"] = serde_json::json!({
            "policy": self.policy,
            "reward_model": self.reward_model,
            "answer_extractor": self.answer_extractor,
            "custom_reward": custom_reward,
        });
        lincal_data::artifact::Manifest {
            base_model: Some(self.policy.clone()),
            ..lincal_data::artifact::Manifest::new(stage, config, Vec::new())
        }
    }
}

/// The step geometry that `auto_batch_sizes` plans for, besides the models.
pub(crate) struct PlannedStep {
    pub master_weights: bool,
    pub query_len: usize,
    pub response_len: usize,
    /// Responses per step, and per optimizer step.
    pub rollouts: usize,
    pub step_batch_size: usize,
    /// Decoder layers the update recomputes (gradient checkpointing).
    pub recomputed_layers: Option<usize>,
    /// `offload_idle_models` as configured; unset, the plan chooses.
    pub offload_idle_models: Option<bool>,
    /// Ranks of the data-parallel job (1 for one process).
    pub ranks: usize,
}

impl PpoModelPaths {
    /// The batch sizes of `auto_batch_sizes` for a run on these models with `settings`: their
    /// `config.json`s against the free memory of `device` now, before any model is loaded
    /// (see [`crate::memory`]).
    pub(crate) fn plan_batch_sizes(
        &self,
        device: Device,
        settings: &ModelSettings<'_>,
        step: &PlannedStep,
    ) -> Result<BatchPlan> {
        let extractor = match (settings.rl_type, &self.answer_extractor) {
            (RlType::DecisionBased, Some(dir)) => Some(ModelShape::read(dir)?),
            _ => None,
        };
        let model = RlMemoryModel {
            policy: ModelShape::read(&self.policy)?,
            reward_model: ModelShape::of(&RewardModel::scoring_model_config(&self.reward_model)?),
            extractor,
            dtype_bytes: (settings.kind_of)(device).elt_size_in_bytes() as u64,
            master_weights: step.master_weights,
            lora_rank: settings.lora.map(|lora| lora.r as u64),
            lora_dropout: settings.lora.is_some_and(|lora| lora.dropout > 0.0),
            recomputed_layers: step.recomputed_layers.map(|layers| layers as u64),
            offload_idle_models: false,
            value: settings.value,
            query_len: step.query_len as u64,
            response_len: step.response_len as u64,
            extractor_new_tokens: settings.reward.extractor_max_new_tokens.max(0) as u64,
            reward_max_tokens: settings.reward.model_max_length as u64,
            rollouts: step.rollouts as u64,
            step_batch_size: step.step_batch_size as u64,
            ranks: step.ranks as u64,
        };
        let free = device_memory(device)?.free;
        match step.offload_idle_models {
            Some(offload) => RlMemoryModel {
                offload_idle_models: offload,
                ..model
            }
            .plan(free),
            // Host copies only make room on a GPU.
            None if device.is_cuda() => {
                model.plan_choosing_offload(free, device_memory(Device::Cpu)?.free)
            }
            None => model.plan(free),
        }
    }
}

/// The config an RL run uses: with `auto_batch_sizes` (`auto`), a copy whose batch sizes
/// and `offload_idle_models` (`batch_sizes` picks them out) are those planned for `paths` on
/// `device`, and the plan; otherwise the config as it is.
pub(crate) fn planned_config<C: Clone>(
    config: &C,
    auto: bool,
    (paths, device): (&PpoModelPaths, Device),
    (settings, step): (&ModelSettings<'_>, &PlannedStep),
    batch_sizes: impl FnOnce(&mut C) -> ([&mut usize; 3], &mut RewardConfig, &mut Option<bool>),
) -> Result<(C, Option<BatchPlan>)> {
    if !auto {
        return Ok((config.clone(), None));
    }
    let plan = paths.plan_batch_sizes(device, settings, step)?;
    let mut config = config.clone();
    let ([generation, forward, micro], reward, offload) = batch_sizes(&mut config);
    *generation = plan.generation_batch_size;
    *forward = plan.forward_batch_size;
    *micro = plan.micro_batch_size;
    reward.extractor_batch_size = plan.extractor_batch_size;
    reward.score_batch_size = plan.score_batch_size;
    reward.score_batch_tokens = Some(plan.score_batch_tokens);
    *offload = Some(plan.offload_idle_models);
    Ok((config, Some(plan)))
}

/// The critic: a reward-model backbone (shared with the frozen reward model in LoRA mode)
/// and a head of its own that starts at zero, so every first value is 0 (SPEC 2.1).
pub struct ValueModel {
    pub(crate) backbone: Rc<RewardModel>,
    pub(crate) head: ScalarHead,
    pub(crate) lora: Option<LoraAdapters>,
}

impl ValueModel {
    /// `lora`: the adapters the backbone was built with (`with_lora`), which are then the
    /// only trained backbone weights.
    pub fn new(backbone: Rc<RewardModel>, lora: Option<LoraAdapters>) -> Self {
        let head = ScalarHead::for_backbone(backbone.backbone(), HeadInit::Zero);
        ValueModel {
            backbone,
            head,
            lora,
        }
    }

    /// Values `[b, W]` (f32) at the response positions of `batch`: V[t] estimates the return
    /// before response token t is emitted.
    pub(crate) fn forward(&self, batch: &ForwardBatch) -> Tensor {
        let hidden = self.backbone.backbone().forward(
            &batch.input_ids,
            &batch.positions,
            Some(&batch.mask),
            None,
        );
        self.values_of_hidden(&hidden, batch)
    }

    /// [`Self::forward`] from the backbone's final hidden states `[b, T, H]` over `batch`.
    pub(crate) fn values_of_hidden(&self, hidden: &Tensor, batch: &ForwardBatch) -> Tensor {
        self.head.forward(&batch.response_states(hidden))
    }

    /// Runs `f` with the value adapters off, so that the shared backbone is the reward model's.
    pub(crate) fn without_adapters<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.lora {
            Some(adapters) => adapters.without_adapters(f),
            None => f(),
        }
    }
}

/// Everything PPO runs on: policy, reference policy, value model and the policy tokenizer.
pub struct PpoModels {
    pub(crate) policy: LoadedModel,
    /// `None` in LoRA mode: the reference is the policy with its adapters off.
    pub(crate) reference: Option<CausalLm>,
    /// PPO's critic; none for the critic-free methods (GRPO, RLOO).
    pub(crate) value: Option<ValueModel>,
    /// Tokens that end a response.
    pub(crate) eos_ids: Vec<i64>,
}

impl PpoModels {
    /// Assembles the models. With `policy_lora` (the adapters `policy` was built with) the
    /// reference must be `None`; without, it must be a frozen copy of the policy. The
    /// tokenizer must have a pad and an EOS token and fit the policy's and the value
    /// backbone's vocabularies, because the value model reads the policy's tokens.
    pub fn new(
        policy: CausalLm,
        policy_lora: Option<LoraAdapters>,
        reference: Option<CausalLm>,
        value: ValueModel,
        tokenizer: Tokenizer,
    ) -> Result<Self> {
        let pad_id = tokenizer
            .pad_token()
            .and_then(|t| tokenizer.token_id(&t))
            .ok_or_else(|| {
                TrainError::config(
                    "tokenizer",
                    "the policy tokenizer has no pad token; PPO pads responses with it (load the \
                     SFT model, which adds \"[PAD]\")",
                )
            })?;
        let eos_id = tokenizer
            .eos_token()
            .and_then(|t| tokenizer.token_id(&t))
            .ok_or_else(|| {
                TrainError::config(
                    "tokenizer",
                    "the policy tokenizer has no eos_token; responses end at it, \
                     so set it in tokenizer_config.json",
                )
            })?;
        let policy = LoadedModel {
            model: policy,
            tokenizer,
            lora: policy_lora,
            pad_id,
            eos_id,
        };
        PpoModels::assemble(policy, reference, Some(value))
    }

    pub(crate) fn assemble(
        policy: LoadedModel,
        reference: Option<CausalLm>,
        value: Option<ValueModel>,
    ) -> Result<Self> {
        match (&policy.lora, &reference) {
            (Some(_), Some(_)) => {
                return Err(TrainError::config(
                    "lora",
                    "with LoRA the reference policy is the policy with its adapters off; \
                     pass no reference model",
                ));
            }
            (None, None) => {
                return Err(TrainError::config(
                    "reference",
                    "full fine-tuning needs a frozen copy of the policy as the reference model",
                ));
            }
            _ => {}
        }
        let tokens = policy.tokenizer.vocab_size() as i64;
        let value_vocab = value
            .as_ref()
            .map_or(tokens, |v| v.backbone.backbone().config().vocab_size());
        if value_vocab < tokens {
            return Err(TrainError::config(
                "reward_model",
                format!(
                    "the value model reads the policy's tokens, but its backbone has \
                     {value_vocab} embedding rows and the policy tokenizer {tokens} tokens; \
                     train the reward model from the policy's SFT model"
                ),
            ));
        }
        policy
            .tokenizer
            .check_model_vocab(policy.model.config().vocab_size())?;
        let eos_ids = eos_ids(&policy.model, &policy.tokenizer);
        Ok(PpoModels {
            policy,
            reference,
            value,
            eos_ids,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.policy.tokenizer
    }

    pub fn policy(&self) -> &CausalLm {
        &self.policy.model
    }

    /// The trained weights, named `policy.*` and `value.*`: the adapters (and the value
    /// head) in LoRA mode, else every policy weight and every value-backbone weight but its
    /// unused output embedding. Everything else is frozen.
    pub(crate) fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = self
            .policy
            .trainable(&[])
            .into_iter()
            .map(|(n, t)| (format!("policy.{n}"), t))
            .collect();
        if let Some(reference) = &self.reference {
            freeze(reference.var_store().variables().into_values());
        }
        let Some(value) = &self.value else {
            return named;
        };
        let backbone = value.backbone.backbone().var_store().variables();
        freeze(value.backbone.head_var_store().variables().into_values());
        let mut value_named: Vec<(String, Tensor)> = match &value.lora {
            Some(adapters) => {
                freeze(backbone.into_values());
                adapters.var_store().variables().into_iter().collect()
            }
            None => {
                let (unused, trained): (Vec<_>, Vec<_>) = backbone
                    .into_iter()
                    .partition(|(name, _)| OUTPUT_EMBEDDINGS.contains(&name.as_str()));
                freeze(unused.into_iter().map(|(_, t)| t));
                trained
            }
        };
        value_named.extend(value.head.var_store().variables());
        value_named.sort_by(|a, b| a.0.cmp(&b.0));
        named.extend(
            value_named
                .into_iter()
                .map(|(n, t)| (format!("value.{n}"), t)),
        );
        named
    }

    /// The frozen models among these (the policy's and the value model's bases in LoRA mode,
    /// else the reference) and `reward`'s, each once: those `offload_idle_models` keeps in
    /// host memory while idle.
    pub(crate) fn frozen_models<'a>(&'a self, reward: &'a dyn Reward) -> Vec<&'a CausalLm> {
        let mut models: Vec<&CausalLm> = Vec::new();
        if self.policy.lora.is_some() {
            models.push(&self.policy.model);
        }
        models.extend(&self.reference);
        if let Some(value) = self.value.as_ref().filter(|v| v.lora.is_some()) {
            models.push(value.backbone.backbone());
        }
        for model in reward.models() {
            if !models.iter().any(|m| std::ptr::eq(*m, model)) {
                models.push(model);
            }
        }
        models
    }

    /// The models of the forward passes over rollouts and of the update: the policy, the
    /// reference and the value model's backbone.
    pub(crate) fn forward_models(&self) -> Vec<&CausalLm> {
        let mut models = vec![&self.policy.model];
        models.extend(&self.reference);
        models.extend(self.value.as_ref().map(|v| v.backbone.backbone()));
        models
    }

    /// LoRA dropout on (update) or off (sampling and scoring).
    pub(crate) fn set_training(&self, training: bool) {
        self.policy.set_training(training);
        if let Some(adapters) = self.value.as_ref().and_then(|v| v.lora.as_ref()) {
            adapters.set_training(training);
        }
    }

    /// Log-probs (and entropies) of the reference policy.
    pub(crate) fn reference_logprobs(&self, batch: &ForwardBatch, temperature: f64) -> Tensor {
        match (&self.reference, &self.policy.lora) {
            (Some(reference), _) => response_logprobs(reference, batch, temperature, false).0,
            (None, Some(adapters)) => adapters.without_adapters(|| {
                response_logprobs(&self.policy.model, batch, temperature, false).0
            }),
            (None, None) => unreachable!("checked in PpoModels::assemble"),
        }
    }
}

/// The tokens that end a generation: the tokenizer's EOS (and end-of-turn) tokens and the
/// model config's EOS ids.
pub(crate) fn eos_ids(model: &CausalLm, tokenizer: &Tokenizer) -> Vec<i64> {
    let mut ids = tokenizer.eos_token_ids();
    for id in model.config().eos_token_ids() {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// Brings the frozen models that a part of the step `runs` to the device, after moving every
/// other one of `frozen` to host memory first (so that its memory is free for them); models
/// without a host copy (`offload_idle_models` off, trained ones) stay where they are.
pub(crate) fn keep_on_device(runs: &[&CausalLm], frozen: &[&CausalLm]) {
    for model in frozen {
        if !runs.iter().any(|r| std::ptr::eq(*r, *model)) {
            model.offload();
        }
    }
    for model in runs {
        model.reload();
    }
}

/// Host copies of the run's frozen models ([`PpoModels::frozen_models`]), when host memory
/// holds them.
fn keep_host_copies(models: &PpoModels, reward: &dyn Reward) -> Result<()> {
    let frozen = models.frozen_models(reward);
    let bytes: u64 = frozen
        .iter()
        .flat_map(|m| m.var_store().variables().into_values())
        .map(|t| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64)
        .sum();
    check_host_memory(bytes, device_memory(Device::Cpu)?.free)?;
    for model in frozen {
        model.keep_host_copy().map_err(|e| {
            TrainError::config(
                "offload_idle_models",
                format!("{e}; set offload_idle_models = false to keep every model on the device"),
            )
        })?;
    }
    Ok(())
}

fn freeze(vars: impl IntoIterator<Item = Tensor>) {
    for var in vars {
        let _ = var.set_requires_grad(false);
    }
}

/// The token layout of a set of rollouts on the device: queries left-padded to a common
/// width Q, responses right-padded (with the pad id) to a common width W.
pub(crate) struct Sequences {
    /// `[B, Q]`.
    pub queries: Tensor,
    /// `[B, Q]`, 1 on real query tokens.
    pub query_mask: Tensor,
    /// `[B, W]`.
    pub responses: Tensor,
    /// `[B, W]` f32, 1 on the tokens each row generated (EOS included).
    pub response_mask: Tensor,
    /// Tokens each row generated.
    pub lengths: Vec<i64>,
}

impl Sequences {
    /// Lays out `queries` and `responses` (each row's tokens, EOS included) on `device`,
    /// responses padded to `width` tokens.
    pub fn new(
        queries: &[&[i64]],
        responses: &[Vec<i64>],
        width: usize,
        pad_id: i64,
        device: tch::Device,
    ) -> Self {
        let query_rows: Vec<Vec<i64>> = queries.iter().map(|q| q.to_vec()).collect();
        let (queries, query_mask) = lincal_model::generate::left_pad(&query_rows, pad_id, device);
        let mut ids = Vec::with_capacity(responses.len() * width);
        let mut mask = Vec::with_capacity(responses.len() * width);
        for response in responses {
            ids.extend(
                response
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad_id, width - response.len())),
            );
            mask.extend(
                std::iter::repeat_n(1f32, response.len())
                    .chain(std::iter::repeat_n(0.0, width - response.len())),
            );
        }
        let shape = [responses.len() as i64, width as i64];
        Sequences {
            queries,
            query_mask,
            responses: Tensor::from_slice(&ids).view(shape).to_device(device),
            response_mask: Tensor::from_slice(&mask).view(shape).to_device(device),
            lengths: responses.iter().map(|r| r.len() as i64).collect(),
        }
    }

    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// The forward-pass inputs of rows `rows`.
    pub fn batch(&self, rows: &[usize]) -> ForwardBatch {
        let index = row_index(rows, self.queries.device());
        let queries = self.queries.index_select(0, &index);
        let responses = self.responses.index_select(0, &index);
        let key_mask = Tensor::cat(
            &[
                self.query_mask.index_select(0, &index),
                self.response_mask
                    .index_select(0, &index)
                    .to_kind(Kind::Int64),
            ],
            1,
        );
        let width = key_mask.size()[1];
        ForwardBatch {
            input_ids: Tensor::cat(&[&queries, &responses], 1),
            positions: positions_from_mask(&key_mask),
            mask: attention_mask(&key_mask, 0, width),
            query_width: queries.size()[1],
            responses,
            response_mask: self.response_mask.index_select(0, &index),
        }
    }
}

/// Row indices as a device tensor.
pub(crate) fn row_index(rows: &[usize], device: tch::Device) -> Tensor {
    Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>()).to_device(device)
}

/// One forward pass's worth of query + response rows.
pub(crate) struct ForwardBatch {
    pub input_ids: Tensor,
    pub positions: Tensor,
    /// Causal over real tokens (left query padding and right response padding hidden).
    pub mask: Tensor,
    pub query_width: i64,
    pub responses: Tensor,
    pub response_mask: Tensor,
}

impl ForwardBatch {
    /// Hidden states `[b, W, H]` at the positions that predict the response tokens
    /// (Q − 1 .. Q + W − 2).
    fn response_states(&self, hidden: &Tensor) -> Tensor {
        hidden.narrow(1, self.query_width - 1, self.responses.size()[1])
    }

    /// The policy's training pass over the batch (the update's) and its response log-probs at
    /// `temperature` ([`response_logprobs`]).
    pub(crate) fn policy_training_pass<'a>(
        &self,
        policy: &'a CausalLm,
        recomputed: Option<usize>,
        temperature: f64,
    ) -> (TrainingPass<'a>, Tensor) {
        let pass = self.training_pass(policy, recomputed);
        let (logprobs, _) = logprobs_of_hidden(policy, &pass.hidden, self, temperature, false);
        (pass, logprobs)
    }

    /// `model`'s training pass over the batch (the update's), recomputing `recomputed` layers.
    pub(crate) fn training_pass<'a>(
        &self,
        model: &'a CausalLm,
        recomputed: Option<usize>,
    ) -> TrainingPass<'a> {
        TrainingPass::forward(
            model,
            recomputed,
            &self.input_ids,
            &self.positions,
            Some(&self.mask),
        )
    }
}

/// Log-probs `[b, W]` (f32) of the response tokens under `model` at `temperature` (logits
/// divided by it, SPEC 2.4), 0 on padding; with `with_entropy` also the entropies `[b, W]`
/// of those distributions. Without gradients (scoring rollouts), the f32 logits are formed a
/// few rows at a time, at most [`rows_per_slice`]'s 256 MiB, so that large scoring batches
/// fit; the update's pass, which back-propagates through them, forms them whole.
pub(crate) fn response_logprobs(
    model: &CausalLm,
    batch: &ForwardBatch,
    temperature: f64,
    with_entropy: bool,
) -> (Tensor, Option<Tensor>) {
    let hidden = model.forward(&batch.input_ids, &batch.positions, Some(&batch.mask), None);
    logprobs_of_hidden(model, &hidden, batch, temperature, with_entropy)
}

/// [`response_logprobs`] from the model's final hidden states `[b, T, H]` over `batch`.
fn logprobs_of_hidden(
    model: &CausalLm,
    hidden: &Tensor,
    batch: &ForwardBatch,
    temperature: f64,
    with_entropy: bool,
) -> (Tensor, Option<Tensor>) {
    let states = batch.response_states(hidden);
    let (rows, width) = (states.size()[0], states.size()[1]);
    let slice_rows = if states.requires_grad() {
        rows
    } else {
        (rows_per_slice(model.config().vocab_size()) / width.max(1)).max(1)
    };
    response_logprobs_of(model, &states, batch, temperature, with_entropy, slice_rows)
}

/// [`response_logprobs`] from the response states `[b, W, H]`, `slice_rows` rows at a time.
fn response_logprobs_of(
    model: &CausalLm,
    states: &Tensor,
    batch: &ForwardBatch,
    temperature: f64,
    with_entropy: bool,
    slice_rows: i64,
) -> (Tensor, Option<Tensor>) {
    let rows = states.size()[0];
    let (mut chosen, mut entropy) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < rows {
        let len = slice_rows.min(rows - start);
        let mask = batch.response_mask.narrow(0, start, len);
        let logits = model
            .logits(&states.narrow(0, start, len))
            .to_kind(Kind::Float)
            / temperature;
        let log_softmax = logits.log_softmax(-1, Kind::Float);
        let responses = batch.responses.narrow(0, start, len).unsqueeze(-1);
        chosen.push(log_softmax.gather(-1, &responses, false).squeeze_dim(-1) * &mask);
        if with_entropy {
            entropy.push(
                -(log_softmax.exp() * &log_softmax).sum_dim_intlist(-1, false, Kind::Float) * &mask,
            );
        }
        start += len;
    }
    (
        Tensor::cat(&chosen, 0),
        with_entropy.then(|| Tensor::cat(&entropy, 0)),
    )
}

/// Makes the frozen reference policy in full fine-tuning: the policy's checkpoint, grown to
/// the tokenizer's vocabulary as the policy was (pad token added).
fn load_reference(policy: &LoadedModel, dir: &Path) -> Result<CausalLm> {
    let mut reference = CausalLm::load(dir, policy.model.device(), Some(policy.model.kind()))?;
    let vocab = policy.model.config().vocab_size();
    if reference.config().vocab_size() < vocab {
        reference.resize_token_embeddings(vocab)?;
    }
    Ok(reference)
}

/// Loads the prompt templates of a run: the built-in ones, or `dir`'s overrides.
pub(crate) fn templates(dir: Option<&Path>) -> Result<Templates> {
    Ok(match dir {
        Some(dir) => Templates::with_overrides(dir)?,
        None => Templates::builtin()?,
    })
}

/// What loading a run's models takes from its config (PPO's or GRPO's).
pub(crate) struct ModelSettings<'a> {
    pub rl_type: RlType,
    pub kind_of: &'a dyn Fn(Device) -> Kind,
    pub lora: Option<&'a LoraConfig>,
    pub seed: u64,
    pub pad_token: &'a str,
    pub reward: &'a RewardConfig,
    pub templates: Option<&'a Path>,
    /// Load PPO's value model; the critic-free methods train none.
    pub value: bool,
    /// Keep host copies of the frozen models, which then wait in host memory while idle.
    pub offload_idle_models: bool,
}

impl PpoConfig {
    /// The config a run uses (see [`planned_config`]).
    pub(crate) fn planned(
        &self,
        paths: &PpoModelPaths,
        device: Device,
        ranks: usize,
    ) -> Result<(PpoConfig, Option<BatchPlan>)> {
        let kind_of = |device| self.precision.kind(device);
        let step = PlannedStep {
            master_weights: self.precision.master_weights(),
            query_len: self.query_len,
            response_len: self.response_len,
            rollouts: self.rollout_batch_size,
            step_batch_size: self.step_batch_size,
            recomputed_layers: self.recomputed(),
            offload_idle_models: self.offload_idle_models,
            ranks,
        };
        planned_config(
            self,
            self.auto_batch_sizes,
            (paths, device),
            (&self.model_settings(&kind_of), &step),
            |c| {
                (
                    [
                        &mut c.generation_batch_size,
                        &mut c.forward_batch_size,
                        &mut c.micro_batch_size,
                    ],
                    &mut c.reward,
                    &mut c.offload_idle_models,
                )
            },
        )
    }

    pub(crate) fn model_settings<'a>(
        &'a self,
        kind_of: &'a dyn Fn(Device) -> Kind,
    ) -> ModelSettings<'a> {
        ModelSettings {
            rl_type: self.rl_type,
            kind_of,
            lora: self.lora.as_ref(),
            seed: self.seed,
            pad_token: &self.pad_token,
            reward: &self.reward,
            templates: self.templates.as_deref(),
            value: true,
            offload_idle_models: self.offload_idle_models.unwrap_or(false),
        }
    }
}

/// Reads a reward model from a directory; see [`load_models`].
pub(crate) type RewardModelLoader<'a> = &'a dyn Fn(&Path, Device, Kind) -> Result<RewardModel>;

/// Runs a reward-model load inside `with_lora`, whose builder reports model errors only.
fn load_reward_model_with_lora(
    lora: &LoraConfig,
    seed: u64,
    dir: &Path,
    device: Device,
    kind: Kind,
    load: RewardModelLoader,
) -> Result<(RewardModel, LoraAdapters)> {
    let mut failure = None;
    let built = with_lora(lora, device, seed.wrapping_add(1), || {
        load(dir, device, kind).map_err(|e| {
            let message = e.to_string();
            failure = Some(e);
            ModelError::Invalid(message)
        })
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(built?),
    }
}

/// The models of a run in the arrangement `config` asks for (see the table above), and its reward:
/// `custom_reward`, or the built-in one of `config.rl_type`. `load_reward_model` reads
/// `paths.reward_model` (`RewardModel::load` when training).
pub(crate) fn load_models(
    paths: &PpoModelPaths,
    device: Device,
    settings: &ModelSettings<'_>,
    custom_reward: Option<Box<dyn Reward>>,
    load_reward_model: RewardModelLoader,
) -> Result<(PpoModels, Box<dyn Reward>)> {
    // The ExtractAnswers model of the built-in decision-based reward, checked before any
    // model is loaded.
    let extractor_dir = match (&custom_reward, settings.rl_type, &paths.answer_extractor) {
        (None, RlType::DecisionBased, None) => {
            return Err(TrainError::config(
                "answer_extractor",
                "decision-based RL needs the ExtractAnswers model; \
                 give its directory (or use rl_type = \"factuality\")",
            ));
        }
        (None, RlType::DecisionBased, Some(dir)) => Some(dir),
        _ => None,
    };
    let kind = (settings.kind_of)(device);
    let policy = LoadedModel::load(
        &paths.policy,
        device,
        kind,
        settings.lora,
        settings.seed,
        settings.pad_token,
    )?;
    let reference = match settings.lora {
        Some(_) => None,
        None => Some(load_reference(&policy, &paths.policy)?),
    };
    // In LoRA mode the value adapters sit on the reward model itself, which the built-in
    // rewards then share; otherwise the value model is a trained copy of it.
    let (value, shared_reward_model) = match (settings.value, settings.lora) {
        (false, _) => (None, None),
        (true, Some(lora)) => {
            let (model, adapters) = load_reward_model_with_lora(
                lora,
                settings.seed,
                &paths.reward_model,
                device,
                kind,
                load_reward_model,
            )?;
            let model = Rc::new(model);
            (
                Some(ValueModel::new(model.clone(), Some(adapters))),
                Some(model),
            )
        }
        (true, None) => (
            Some(ValueModel::new(
                Rc::new(load_reward_model(&paths.reward_model, device, kind)?),
                None,
            )),
            None,
        ),
    };
    let models = PpoModels::assemble(policy, reference, value)?;
    let reward: Box<dyn Reward> = match custom_reward {
        Some(reward) => reward,
        None => {
            let reward_model = match shared_reward_model {
                Some(model) => model,
                None => Rc::new(load_reward_model(&paths.reward_model, device, kind)?),
            };
            let reward_tokenizer = Tokenizer::from_dir(&paths.reward_model)?;
            let templates = templates(settings.templates)?;
            match extractor_dir {
                Some(dir) => Box::new(DecisionReward::new(
                    CausalLm::load(dir, device, Some(kind))?,
                    Tokenizer::from_dir(dir)?,
                    reward_model,
                    reward_tokenizer,
                    templates,
                    settings.reward.clone(),
                )?),
                None => Box::new(BinaryCorrectnessReward::new(
                    reward_model,
                    reward_tokenizer,
                    templates,
                    settings.reward.clone(),
                )?),
            }
        }
    };
    if settings.offload_idle_models {
        keep_host_copies(&models, reward.as_ref())?;
    }
    Ok((models, reward))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lincal_model::testing::{random_model, tiny_llama};

    /// Scoring's pass, a few rows at a time, gives the log-probs and entropies of the whole
    /// batch at once (padding included, as 0).
    #[test]
    fn sliced_log_probs_equal_the_whole_batch() {
        let model = random_model(tiny_llama(false), 3);
        let queries: [&[i64]; 5] = [&[5, 6, 7], &[8], &[9, 10], &[11, 12, 13], &[14]];
        let responses = [
            vec![20, 21],
            vec![22, 23, 24],
            vec![25],
            vec![26, 27, 28],
            vec![29, 30],
        ];
        let seqs = Sequences::new(&queries, &responses, 3, 0, Device::Cpu);
        let batch = seqs.batch(&[0, 1, 2, 3, 4]);
        tch::no_grad(|| {
            let hidden = model.forward(&batch.input_ids, &batch.positions, Some(&batch.mask), None);
            let states = batch.response_states(&hidden);
            let (whole, whole_entropy) =
                response_logprobs_of(&model, &states, &batch, 0.7, true, 5);
            let close = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) < 1e-6;
            for slice_rows in [1, 2, 3] {
                let (sliced, entropy) =
                    response_logprobs_of(&model, &states, &batch, 0.7, true, slice_rows);
                assert!(close(&sliced, &whole), "{slice_rows} rows a slice");
                assert!(close(&entropy.unwrap(), whole_entropy.as_ref().unwrap()));
            }
            assert_eq!(whole.double_value(&[2, 1]), 0.0, "padding");
            assert!(whole.double_value(&[2, 0]) < 0.0);
            let (public, _) = response_logprobs(&model, &batch, 0.7, false);
            assert!(close(&public, &whole));
        });
    }
}
