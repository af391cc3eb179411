//! Batch sizes of an RL step chosen from free device memory (`auto_batch_sizes` of PPO and
//! GRPO). Those batch sizes bound memory, not the result: the update averages its losses over
//! the whole optimizer step (`step_batch_size`, which stays as configured), sampling and
//! extraction seeds are per row, and scoring is row-wise. So they may be as large as the
//! device allows, and small models then run a step in a few large batches instead of hundreds
//! of launch-bound ones.
//!
//! The plan is arithmetic on the models' `config.json`s, made before any model is loaded: the
//! weights and optimizer state are a fixed cost, every phase of a step (generation, scoring
//! forward passes, the update's micro-batches, the reward's extraction and scoring) costs a
//! number of bytes per row, and each phase, which runs alone, gets what the fixed cost leaves
//! of the free memory, less a reserve and a margin for the caching allocator. The per-row
//! costs count what the implementations keep: key/value caches, one layer's working set of a
//! forward pass without gradients (logits are formed 256 MiB at a time there), every layer's
//! saved activations and the response logits with their gradients in the update. A rank of a
//! data-parallel job plans for its share of the rollouts and of the optimizer state.

use crate::error::{Result, TrainError};
use lincal_model::ModelConfig;
use lincal_model::generate::prefill_rows;
use std::path::Path;
use tch::Device;

pub(crate) const GIB: f64 = (1u64 << 30) as f64;

/// Free and total memory of a device, in bytes: the GPU's from the CUDA runtime, the host's
/// available memory for the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub free: u64,
    pub total: u64,
}

/// The free memory of `device` now.
pub fn device_memory(device: Device) -> Result<DeviceMemory> {
    match device {
        Device::Cuda(index) => cuda_memory(index),
        _ => host_memory(Path::new("/proc/meminfo")),
    }
}

/// `MemAvailable` and `MemTotal` of a `/proc/meminfo` file.
fn host_memory(path: &Path) -> Result<DeviceMemory> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| {
                TrainError::config(
                    "auto_batch_sizes",
                    format!(
                        "{} has no `{name}: N kB` line to size batches by; \
                         set the batch sizes instead",
                        path.display()
                    ),
                )
            })
    };
    Ok(DeviceMemory {
        free: field("MemAvailable")?,
        total: field("MemTotal")?,
    })
}

#[cfg(feature = "cuda")]
fn cuda_memory(index: usize) -> Result<DeviceMemory> {
    use std::ffi::{CStr, c_int, c_void};
    type SetDevice = unsafe extern "C" fn(c_int) -> c_int;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> c_int;
    // libtorch_cuda has loaded the CUDA runtime; its symbols are in the global scope, so no
    // library name (which changes with CUDA's major version) is needed.
    let symbol = |name: &CStr| {
        // SAFETY: dlsym with the process's global scope and a NUL-terminated name.
        let pointer = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        (!pointer.is_null()).then_some(pointer).ok_or_else(|| {
            TrainError::config(
                "auto_batch_sizes",
                format!(
                    "the CUDA runtime has no {} in this process; set the batch sizes instead",
                    name.to_string_lossy()
                ),
            )
        })
    };
    let set_device = symbol(c"cudaSetDevice")?;
    let mem_get_info = symbol(c"cudaMemGetInfo")?;
    // SAFETY: both are the CUDA runtime's functions with these C signatures.
    let (set_device, mem_get_info) = unsafe {
        (
            std::mem::transmute::<*mut c_void, SetDevice>(set_device),
            std::mem::transmute::<*mut c_void, MemGetInfo>(mem_get_info),
        )
    };
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: plain CUDA runtime calls writing two integers this frame owns.
    let status = unsafe {
        match set_device(index as c_int) {
            0 => mem_get_info(&mut free, &mut total),
            error => error,
        }
    };
    if status != 0 {
        return Err(TrainError::config(
            "auto_batch_sizes",
            format!("the CUDA runtime could not report cuda:{index}'s memory (error {status})"),
        ));
    }
    Ok(DeviceMemory {
        free: free as u64,
        total: total as u64,
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_memory(index: usize) -> Result<DeviceMemory> {
    Err(TrainError::config(
        "auto_batch_sizes",
        format!("cuda:{index}: this build has no CUDA support (build with the `cuda` feature)"),
    ))
}

/// What the memory arithmetic needs of a transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub layers: u64,
    pub hidden: u64,
    pub intermediate: u64,
    /// Width of the queries (heads × head size).
    pub attention: u64,
    /// Width of the keys, and of the values (key/value heads × head size).
    pub kv: u64,
    pub vocab: u64,
    pub parameters: u64,
}

impl ModelShape {
    pub fn of(config: &ModelConfig) -> Self {
        let u = |v: i64| v as u64;
        match config {
            ModelConfig::Llama(c) => {
                let (h, i) = (u(c.hidden_size), u(c.intermediate_size));
                let (a, kv) = (
                    u(c.num_attention_heads * c.head_dim()),
                    u(c.num_kv_heads() * c.head_dim()),
                );
                let attention_bias = if c.attention_bias { a + 2 * kv + h } else { 0 };
                let mlp_bias = if c.mlp_bias { 2 * i + h } else { 0 };
                let layer =
                    h * (a + 2 * kv) + a * h + 3 * h * i + 2 * h + attention_bias + mlp_bias;
                let embeddings = u(c.vocab_size) * h * if c.tie_word_embeddings { 1 } else { 2 };
                ModelShape {
                    layers: u(c.num_hidden_layers),
                    hidden: h,
                    intermediate: i,
                    attention: a,
                    kv,
                    vocab: u(c.vocab_size),
                    parameters: embeddings + u(c.num_hidden_layers) * layer + h,
                }
            }
            ModelConfig::GptNeoX(c) => {
                let (h, i) = (u(c.hidden_size), u(c.intermediate_size));
                // Fused QKV and dense with biases, the MLP with biases, two layer norms.
                let layer = 3 * h * h + 3 * h + h * h + h + 2 * h * i + i + h + 4 * h;
                let embeddings = u(c.vocab_size) * h * if c.tie_word_embeddings { 1 } else { 2 };
                ModelShape {
                    layers: u(c.num_hidden_layers),
                    hidden: h,
                    intermediate: i,
                    attention: h,
                    kv: h,
                    vocab: u(c.vocab_size),
                    parameters: embeddings + u(c.num_hidden_layers) * layer + 2 * h,
                }
            }
        }
    }

    /// The shape of the model in `dir` (its `config.json`).
    pub fn read(dir: &Path) -> Result<Self> {
        Ok(Self::of(&ModelConfig::from_file(&dir.join("config.json"))?))
    }

    /// Elements one layer of a forward pass without gradients holds at once, per token: its
    /// input and normed input, queries, keys and values with their rotated copies, the
    /// attention output and the MLP's gate, up and product.
    fn forward_elements(&self) -> u64 {
        4 * self.hidden + 2 * self.attention + 3 * self.kv + 3 * self.intermediate
    }

    /// Bytes a layer saves for the backward pass, per token, with `b`-byte activations
    /// (attention through fused kernels keeps no score matrix). LoRA of rank `r` adds each
    /// adapted projection's input times A (`r` values; at most seven projections a layer)
    /// and, with `lora_dropout`, its own dropped-out input and dropout's mask (a byte an
    /// element); without dropout the input is the one the layer keeps anyway.
    fn saved_bytes(&self, lora_rank: Option<u64>, lora_dropout: bool, b: u64) -> u64 {
        let base = 5 * self.hidden + 2 * self.attention + 2 * self.kv + 4 * self.intermediate;
        let dropped_out = (b + 1) * (5 * self.hidden + self.attention + self.intermediate);
        base * b
            + lora_rank.map_or(0, |r| {
                7 * b * r + if lora_dropout { dropped_out } else { 0 }
            })
    }

    /// Bytes per token that LoRA of rank `r` adds to a layer's forward pass without
    /// gradients: an adapted projection's product with A and the sum it forms beside the
    /// base projection's output, both in the activations' type (the most of any projection:
    /// every one may be adapted).
    fn lora_forward_bytes(&self, r: u64, b: u64) -> u64 {
        let widest = [self.attention, self.kv, self.hidden, self.intermediate]
            .into_iter()
            .max()
            .unwrap_or(0);
        b * (widest + r)
    }

    /// Bytes per token and layer of the f32 statistics of the two norms a layer saves.
    fn saved_norm_bytes(&self) -> u64 {
        8 * self.hidden
    }
}

/// Everything an RL step's memory depends on besides the free memory.
#[derive(Debug, Clone, PartialEq)]
pub struct RlMemoryModel {
    pub policy: ModelShape,
    /// The reward model (ForecastProbs or the correctness reader), also PPO's value backbone.
    pub reward_model: ModelShape,
    /// The ExtractAnswers model of decision-based RL.
    pub extractor: Option<ModelShape>,
    /// Bytes per element of the models' weights and activations.
    pub dtype_bytes: u64,
    /// f32 master weights beside the model weights (`training.precision`).
    pub master_weights: bool,
    /// LoRA rank, when the policy (and PPO's value model) are adapters on frozen bases.
    pub lora_rank: Option<u64>,
    /// LoRA dropout is on (`lora.dropout > 0`): each adapted projection keeps its own
    /// dropped-out input for the update.
    pub lora_dropout: bool,
    /// Decoder layers the update recomputes (gradient checkpointing), of each trained model.
    pub recomputed_layers: Option<u64>,
    /// Frozen models wait in host memory while the parts of the step that do not run them do
    /// (`offload_idle_models`): each part keeps only its own on the device.
    pub offload_idle_models: bool,
    /// PPO's value model is trained (a copy of the reward model in full fine-tuning).
    pub value: bool,
    pub query_len: u64,
    pub response_len: u64,
    pub extractor_new_tokens: u64,
    /// Tokens a reward-model input is truncated to (`reward.model_max_length`): the width of
    /// its scoring passes' masks at most.
    pub reward_max_tokens: u64,
    /// Responses per step, and per optimizer step (micro-batches must divide it).
    pub rollouts: u64,
    pub step_batch_size: u64,
    /// Processes of a data-parallel job: each rolls out its share of the step and keeps its
    /// chunk of the masters and moments (ZeRO-1); the gradient buffer stays whole.
    pub ranks: u64,
}

/// Batch sizes chosen for an RL step, and the arithmetic behind them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BatchPlan {
    pub generation_batch_size: usize,
    pub forward_batch_size: usize,
    pub micro_batch_size: usize,
    pub extractor_batch_size: usize,
    pub score_batch_size: usize,
    /// Padded tokens per reward-model pass: its inputs (a prompt around the question and
    /// response, shared-prefix rows) are longer than the policy sequences the rows are
    /// counted in.
    pub score_batch_tokens: usize,
    pub free_bytes: u64,
    /// Weights, optimizer state and the reserve: the most that any part keeps on the device
    /// (with idle models offloaded, the parts keep different models).
    pub fixed_bytes: u64,
    /// What a part may use: the least that any part has.
    pub phase_bytes: u64,
    /// Idle frozen models wait in host memory, so the parts that run fewer models (generation,
    /// extraction) have more than `phase_bytes`.
    pub offload_idle_models: bool,
}

impl std::fmt::Display for BatchPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "generation {}, forward {}, micro {}, extractor {}, score {} (at most {} tokens) \
             ({:.1} GiB free, {:.1} GiB for weights, optimizer state and reserve, \
             {:.1} GiB a phase{})",
            self.generation_batch_size,
            self.forward_batch_size,
            self.micro_batch_size,
            self.extractor_batch_size,
            self.score_batch_size,
            self.score_batch_tokens,
            self.free_bytes as f64 / GIB,
            self.fixed_bytes as f64 / GIB,
            self.phase_bytes as f64 / GIB,
            if self.offload_idle_models {
                "; idle models offloaded: the most a part keeps, the least it has"
            } else {
                ""
            },
        )
    }
}

/// The parts of an RL step, each with its batch size.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    Generation,
    Extraction,
    /// The reward model's passes.
    Scoring,
    /// The no-grad passes over the rollouts: log-probs, reference log-probs and values.
    ForwardPasses,
    Update,
}

/// One model's weights in a step.
struct ModelBytes {
    bytes: u64,
    /// Trained weights never leave the device.
    trained: bool,
    /// The parts that run the model.
    runs_in: &'static [Part],
}

/// Kept free besides the plan: the CUDA context, the caching allocator's fragments, CUDA
/// graphs' pools and the scoring pass's logit slices (3 × 256 MiB).
const RESERVE_BYTES: u64 = 2 << 30;
/// The share of the rest a phase may fill: room beside estimated working sets for what the
/// estimate misses.
const PHASE_SHARE: f64 = 0.85;
/// The share a key/value cache may fill, which is allocated exactly as counted.
const CACHE_SHARE: f64 = 0.95;
/// f32 bytes per vocabulary entry of one sampling step: logits, scaled logits,
/// probabilities and the sorted copy with its i64 indices.
const SAMPLING_BYTES_PER_VOCAB: u64 = 32;
/// Bytes per query and key of a scoring pass's mask: the boolean mask with the intermediates
/// that build it, and the additive bias in the weights' type.
const MASK_BYTES_PER_KEY: u64 = 8;

impl RlMemoryModel {
    /// Weights of every model, and the gradients and AdamW state of the trained parameters.
    pub fn fixed_bytes(&self) -> u64 {
        self.state_bytes() + self.models().iter().map(|m| m.bytes).sum::<u64>()
    }

    /// What stays on the device while `part` runs: the trained state, the reserve and the
    /// weights of every model, or with `offload_idle_models` of the trained ones and those
    /// `part` runs.
    fn resident_bytes(&self, part: Part) -> u64 {
        let weights = self
            .models()
            .iter()
            .filter(|m| !self.offload_idle_models || m.trained || m.runs_in.contains(&part))
            .map(|m| m.bytes)
            .sum::<u64>();
        self.state_bytes() + weights
    }

    /// Each model's weights, and where it runs.
    fn models(&self) -> Vec<ModelBytes> {
        use Part::*;
        let b = self.dtype_bytes;
        let (policy, reward) = (self.policy.parameters * b, self.reward_model.parameters * b);
        let lora = self.lora_rank.is_some();
        let mut models = vec![
            // The policy (its frozen base in LoRA mode, where it is the reference too).
            ModelBytes {
                bytes: policy,
                trained: !lora,
                runs_in: &[Generation, ForwardPasses, Update],
            },
            // The reward model; in LoRA mode PPO's value adapters sit on it.
            ModelBytes {
                bytes: reward,
                trained: false,
                runs_in: if lora && self.value {
                    &[Scoring, ForwardPasses, Update]
                } else {
                    &[Scoring]
                },
            },
        ];
        if !lora {
            // A reference copy of the policy, and PPO's value model as a copy of the reward
            // model.
            models.push(ModelBytes {
                bytes: policy,
                trained: false,
                runs_in: &[ForwardPasses],
            });
            if self.value {
                models.push(ModelBytes {
                    bytes: reward,
                    trained: true,
                    runs_in: &[ForwardPasses, Update],
                });
            }
        }
        if let Some(extractor) = self.extractor {
            models.push(ModelBytes {
                bytes: extractor.parameters * b,
                trained: false,
                runs_in: &[Extraction],
            });
        }
        models
    }

    /// The gradients and AdamW state of the trained parameters, and the reserve.
    fn state_bytes(&self) -> u64 {
        let b = self.dtype_bytes;
        let trained = match self.lora_rank {
            Some(rank) => {
                let adapters = |s: &ModelShape| {
                    rank * s.layers
                        * (2 * (s.hidden + s.attention)
                            + 2 * (s.hidden + s.kv)
                            + 3 * (s.hidden + s.intermediate))
                };
                let value = if self.value {
                    adapters(&self.reward_model)
                } else {
                    0
                };
                adapters(&self.policy) + value
            }
            None => {
                let value = if self.value {
                    self.reward_model.parameters
                } else {
                    0
                };
                self.policy.parameters + value
            }
        };
        // Masters: f32 weights, gradients and both moments; otherwise gradients and moments
        // in the weights' type. A rank keeps its chunk of the masters and moments.
        let ranks = self.ranks.max(1);
        let state = if self.master_weights {
            trained * 4 + (trained * 12).div_ceil(ranks)
        } else {
            trained * b + (trained * 2 * b).div_ceil(ranks)
        };
        state + RESERVE_BYTES
    }

    /// What sampling `new_tokens` after `prompt` tokens costs for up to `rows` rows, in a
    /// part's budget (bytes within its [`PHASE_SHARE`]).
    fn generation_cost(
        shape: &ModelShape,
        (prompt, new_tokens): (u64, u64),
        b: u64,
        lora_rank: Option<u64>,
        rows: u64,
    ) -> GenerationCost {
        let cache = 2 * shape.layers * shape.kv * (prompt + new_tokens) * b;
        // The cache is allocated as counted, two tensors a layer: it may take CACHE_SHARE.
        let cache = (cache as f64 * PHASE_SHARE / CACHE_SHARE).ceil() as u64;
        let pass_rows = rows.min(prefill_rows(prompt as i64) as u64);
        GenerationCost {
            row: cache + shape.vocab * SAMPLING_BYTES_PER_VOCAB,
            prefill: pass_rows * Self::forward_row(shape, prompt, b, lora_rank),
        }
    }

    /// Bytes per row of a forward pass without gradients over `tokens` tokens: one layer's
    /// working set (with that of adapters of `lora_rank`) and the hidden states it returns.
    fn forward_row(shape: &ModelShape, tokens: u64, b: u64, lora_rank: Option<u64>) -> u64 {
        let lora = lora_rank.map_or(0, |r| shape.lora_forward_bytes(r, b));
        tokens * ((shape.forward_elements() + shape.hidden) * b + lora)
    }

    /// Bytes per row of the update, whose models run their micro-batches one model after the
    /// other: the larger of the policy's (its saved activations over the whole sequence and
    /// the response logits in the weights' type and in f32 with their log-softmax and two
    /// gradients) and PPO's value model's (its saved activations). With gradient checkpointing
    /// a recomputed layer keeps only its input; once the loss's backward pass has freed the
    /// logits and the kept layers, one recomputed layer's activations live at a time.
    fn update_row(&self) -> u64 {
        let logits = self.response_len * self.policy.vocab * (self.dtype_bytes + 16);
        let policy = self.training_pass_row(&self.policy, logits);
        if self.value {
            policy.max(self.training_pass_row(&self.reward_model, 0))
        } else {
            policy
        }
    }

    /// Bytes per row of one model's training pass over a rollout, with `head` bytes of its
    /// output head's activations.
    fn training_pass_row(&self, shape: &ModelShape, head: u64) -> u64 {
        let tokens = self.query_len + self.response_len;
        let b = self.dtype_bytes;
        let layer = tokens
            * (shape.saved_bytes(self.lora_rank, self.lora_dropout, b) + shape.saved_norm_bytes());
        let recomputed = self.recomputed_layers.unwrap_or(0).min(shape.layers);
        let inputs = recomputed * tokens * shape.hidden * b;
        let kept = (shape.layers - recomputed) * layer;
        let one_layer = if recomputed > 0 { layer } else { 0 };
        inputs + (kept + head).max(one_layer)
    }

    /// [`Self::plan`] with idle models offloaded where that lets some part run the step in
    /// fewer batches (or lets the models fit at all) and `host_available` bytes of host memory
    /// hold copies of the frozen models for every process of the job (all on this host);
    /// otherwise with every model kept on the device. Offloading costs a host-to-device copy
    /// of each frozen model a step, which pays only where batches get fewer.
    pub fn plan_choosing_offload(&self, free: u64, host_available: u64) -> Result<BatchPlan> {
        let offloaded = RlMemoryModel {
            offload_idle_models: true,
            ..self.clone()
        };
        let kept = RlMemoryModel {
            offload_idle_models: false,
            ..self.clone()
        };
        let per_process = host_available / self.ranks.max(1);
        if let Err(host) = check_host_memory(offloaded.frozen_bytes(), per_process) {
            return kept.plan(free).map_err(|device| match (device, host) {
                (
                    TrainError::Config { field, message },
                    TrainError::Config { message: host, .. },
                ) => TrainError::Config {
                    field,
                    message: format!("{message}; offloading would not help either: {host}"),
                },
                (device, _) => device,
            });
        }
        let Ok(kept_plan) = kept.plan(free) else {
            return offloaded.plan(free);
        };
        let offloaded_plan = offloaded.plan(free)?;
        let fewer = self
            .batch_counts(&offloaded_plan)
            .iter()
            .zip(self.batch_counts(&kept_plan))
            .any(|(offloaded, kept)| *offloaded < kept);
        Ok(if fewer { offloaded_plan } else { kept_plan })
    }

    /// The weights of the models nothing trains: what host copies of them take.
    pub fn frozen_bytes(&self) -> u64 {
        self.models()
            .iter()
            .filter(|m| !m.trained)
            .map(|m| m.bytes)
            .sum()
    }

    /// A rank's rollouts of a step (ranks share them in whole groups, so one may get a few
    /// more).
    fn rank_rollouts(&self) -> u64 {
        self.rollouts.div_ceil(self.ranks.max(1))
    }

    /// The batches each part runs a step (a rank's share of it) in under `plan`: generation,
    /// extraction, scoring, the forward passes and the update's micro-batches.
    fn batch_counts(&self, plan: &BatchPlan) -> [u64; 5] {
        let rollouts = self.rank_rollouts();
        let batches = |size: usize| rollouts.div_ceil(size.max(1) as u64);
        [
            batches(plan.generation_batch_size),
            batches(plan.extractor_batch_size),
            batches(plan.score_batch_size),
            batches(plan.forward_batch_size),
            batches(plan.micro_batch_size),
        ]
    }

    /// The largest batch sizes whose phases fit in `free` bytes. Fails when the weights and
    /// optimizer state alone do not fit.
    pub fn plan(&self, free: u64) -> Result<BatchPlan> {
        use Part::*;
        let parts = [Generation, Extraction, Scoring, ForwardPasses, Update];
        let fixed = parts
            .iter()
            .map(|&part| self.resident_bytes(part))
            .max()
            .expect("parts");
        if fixed >= free {
            return Err(TrainError::config(
                "auto_batch_sizes",
                format!(
                    "the models and optimizer state need about {:.1} GiB (with {:.1} GiB kept \
                     in reserve) but {:.1} GiB are free; use LoRA or precision \"pure_bf16\" \
                     or smaller models{}",
                    fixed as f64 / GIB,
                    RESERVE_BYTES as f64 / GIB,
                    free as f64 / GIB,
                    if self.offload_idle_models {
                        ""
                    } else {
                        ", or offload_idle_models = true"
                    }
                ),
            ));
        }
        // What each part may use.
        let budget = |part| ((free - self.resident_bytes(part)) as f64 * PHASE_SHARE) as u64;
        let rollouts = self.rank_rollouts();
        let b = self.dtype_bytes;
        let sequence = self.query_len + self.response_len;
        let rows = |part, row_bytes: u64| (budget(part) / row_bytes.max(1)).max(1);
        let lora = self.lora_rank;
        let generation = Self::generation_cost(
            &self.policy,
            (self.query_len, self.response_len),
            b,
            lora,
            rollouts,
        );
        // The reward reads prompts holding a question and the response: about a policy
        // sequence.
        let extractor = self.extractor.map_or(GenerationCost::default(), |e| {
            Self::generation_cost(&e, (sequence, self.extractor_new_tokens), b, None, rollouts)
        });
        // In LoRA mode the policy's log-probs and PPO's values (whose adapters sit on the reward
        // model) run with adapters; the reference's log-probs and the reward's scoring without.
        let forward = Self::forward_row(&self.policy, sequence, b, lora).max(Self::forward_row(
            &self.reward_model,
            sequence,
            b,
            lora.filter(|_| self.value),
        ));
        Ok(BatchPlan {
            generation_batch_size: even_batches(rollouts, generation.rows(budget(Generation))),
            forward_batch_size: even_batches(rollouts, rows(ForwardPasses, forward)),
            micro_batch_size: largest_divisor(
                self.step_batch_size,
                rows(Update, self.update_row()),
            ),
            extractor_batch_size: even_batches(rollouts, extractor.rows(budget(Extraction))),
            score_batch_size: even_batches(
                rollouts,
                rows(
                    Scoring,
                    Self::forward_row(&self.reward_model, sequence, b, None),
                ),
            ),
            score_batch_tokens: rows(
                Scoring,
                Self::forward_row(&self.reward_model, 1, b, None)
                    + self.reward_max_tokens * MASK_BYTES_PER_KEY,
            ) as usize,
            free_bytes: free,
            fixed_bytes: fixed,
            phase_bytes: parts.iter().map(|&part| budget(part)).min().expect("parts"),
            offload_idle_models: self.offload_idle_models,
        })
    }
}

/// Host copies of `bytes` must fit in 90% of the `available` host memory: they are pinned
/// (never swapped out), and the rest of the system needs some room.
pub(crate) fn check_host_memory(bytes: u64, available: u64) -> Result<()> {
    if bytes as f64 <= 0.9 * available as f64 {
        return Ok(());
    }
    Err(TrainError::config(
        "offload_idle_models",
        format!(
            "the frozen models need {:.1} GiB of host memory for their copies, but {:.1} GiB \
             are available; set offload_idle_models = false or free host memory",
            bytes as f64 / GIB,
            available as f64 / GIB
        ),
    ))
}

/// What generation costs in a part's budget: bytes per row (the key/value cache of the whole
/// sequence and a sampling step's logits), and those of one prefill pass (up to
/// [`PREFILL_TOKENS`](lincal_model::generate::PREFILL_TOKENS) tokens of whole rows, with their
/// activations), which runs beside the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct GenerationCost {
    row: u64,
    prefill: u64,
}

impl GenerationCost {
    /// The rows that fit in `budget` (at least one).
    fn rows(&self, budget: u64) -> u64 {
        (budget.saturating_sub(self.prefill) / self.row.max(1)).max(1)
    }
}

/// The size of the fewest equal batches (the last may be smaller by less than their number)
/// that cover `rows` rows with at most `cap` each.
fn even_batches(rows: u64, cap: u64) -> usize {
    let batches = rows.div_ceil(cap.max(1));
    rows.div_ceil(batches.max(1)).max(1) as usize
}

/// The largest divisor of `n` not above `cap` (at least 1).
fn largest_divisor(n: u64, cap: u64) -> usize {
    (1..=cap.min(n).max(1))
        .rev()
        .find(|d| n.is_multiple_of(*d))
        .unwrap_or(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Llama with 2 layers, hidden 8, intermediate 16, 2 heads of 4 and 1 key/value head,
    /// vocabulary 10, tied embeddings.
    fn tiny() -> ModelShape {
        let config = ModelConfig::from_json(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":2,"num_attention_heads":2,"num_key_value_heads":1,
            "tie_word_embeddings":true}"#,
        )
        .unwrap();
        ModelShape::of(&config)
    }

    #[test]
    fn shapes_count_the_parameters_of_their_configs() {
        // Embeddings 10·8; a layer: q 8·8, k and v 8·4 each, o 8·8, MLP 3·8·16, two norms of
        // 8; the final norm 8.
        let shape = tiny();
        assert_eq!((shape.attention, shape.kv), (8, 4));
        assert_eq!(
            shape.parameters,
            80 + 2 * (64 + 32 + 32 + 64 + 384 + 16) + 8
        );
        // SmolLM2-135M: 134,515,008 parameters (transformers' count).
        let smollm2 = ModelConfig::from_json(
            r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,
            "intermediate_size":1536,"num_hidden_layers":30,"num_attention_heads":9,
            "num_key_value_heads":3,"tie_word_embeddings":true}"#,
        )
        .unwrap();
        assert_eq!(ModelShape::of(&smollm2).parameters, 134_515_008);
        // Pythia-2.8B's layout (GPT-NeoX, untied): 2,775,208,960 parameters.
        let neox = ModelConfig::from_json(
            r#"{"model_type":"gpt_neox","vocab_size":50304,"hidden_size":2560,
            "intermediate_size":10240,"num_hidden_layers":32,"num_attention_heads":32,
            "rotary_pct":0.25,"tie_word_embeddings":false,"hidden_act":"gelu"}"#,
        )
        .unwrap();
        assert_eq!(ModelShape::of(&neox).parameters, 2_775_208_960);
    }

    fn model() -> RlMemoryModel {
        RlMemoryModel {
            policy: tiny(),
            reward_model: tiny(),
            extractor: Some(tiny()),
            dtype_bytes: 2,
            master_weights: true,
            lora_rank: None,
            lora_dropout: false,
            recomputed_layers: None,
            offload_idle_models: false,
            value: true,
            query_len: 6,
            response_len: 4,
            extractor_new_tokens: 5,
            reward_max_tokens: 20,
            rollouts: 12,
            step_batch_size: 12,
            ranks: 1,
        }
    }

    #[test]
    fn fixed_memory_is_weights_and_optimizer_state() {
        let p = tiny().parameters;
        let m = model();
        // Policy, reference, reward model, value copy, extractor in bf16; policy and value
        // trained with f32 masters, gradients and moments.
        assert_eq!(m.fixed_bytes(), 5 * p * 2 + 2 * p * 16 + RESERVE_BYTES);
        let pure = RlMemoryModel {
            master_weights: false,
            value: false,
            extractor: None,
            ..model()
        };
        assert_eq!(pure.fixed_bytes(), 3 * p * 2 + p * 6 + RESERVE_BYTES);
        // LoRA r 2: bases only (no reference copy, value adapters on the reward model).
        let lora = RlMemoryModel {
            lora_rank: Some(2),
            ..model()
        };
        let adapters = 2 * 2 * (2 * (8 + 8) + 2 * (8 + 4) + 3 * (8 + 16));
        assert_eq!(
            lora.fixed_bytes(),
            3 * p * 2 + 2 * adapters * 16 + RESERVE_BYTES
        );
    }

    /// ZeRO-1: a rank of four keeps a quarter of the masters and moments (rounded up), the
    /// whole gradient buffer, and plans batches for its share of the rollouts.
    #[test]
    fn a_rank_plans_for_its_share_of_the_state_and_the_rollouts() {
        let p = tiny().parameters;
        let ranks = RlMemoryModel {
            ranks: 4,
            ..model()
        };
        // Two trained models (policy, value): f32 gradients whole, masters and moments split.
        assert_eq!(
            ranks.fixed_bytes(),
            5 * p * 2 + 2 * p * 4 + (2 * p * 12).div_ceil(4) + RESERVE_BYTES
        );
        let pure = RlMemoryModel {
            master_weights: false,
            ..ranks.clone()
        };
        assert_eq!(
            pure.fixed_bytes(),
            5 * p * 2 + 2 * p * 2 + (2 * p * 4).div_ceil(4) + RESERVE_BYTES
        );
        // Room for 2 generation rows: a rank's 3 of the 12 rollouts go in 2 batches of 2 (one
        // process would need 6 batches of 2).
        let generation = RlMemoryModel::generation_cost(&ranks.policy, (6, 4), 2, None, 3);
        let room = 2 * generation.row + generation.prefill;
        let free = ranks.fixed_bytes() + (room as f64 / PHASE_SHARE).ceil() as u64;
        assert_eq!(ranks.plan(free).unwrap().generation_batch_size, 2);
        // With room for everything, a rank takes its 3 rollouts at once; the optimizer step's
        // micro-batch is planned as for one process.
        let plan = ranks.plan(u64::MAX / 2).unwrap();
        assert_eq!(
            (
                plan.generation_batch_size,
                plan.forward_batch_size,
                plan.extractor_batch_size,
                plan.score_batch_size,
                plan.micro_batch_size
            ),
            (3, 3, 3, 3, 12)
        );
    }

    #[test]
    fn per_row_costs_are_the_hand_counted_bytes() {
        let s = tiny();
        // Forward elements per token: 4·8 + 2·8 + 3·4 + 3·16 = 108; plus the hidden output 8.
        assert_eq!(RlMemoryModel::forward_row(&s, 10, 2, None), 10 * 116 * 2);
        // Cache 2·2·4·(6+5)·2 = 352 bytes, counted at 0.85 / 0.95 of that (315), sampling
        // 10·32; the prefill pass takes all 3 rows (16,384 tokens hold 2,730), 6·116·2 each.
        assert_eq!(
            RlMemoryModel::generation_cost(&s, (6, 5), 2, None, 3),
            GenerationCost {
                row: 315 + 320,
                prefill: 3 * 1392
            }
        );
        // Of 5,000 rows of 1,000-token prompts a pass takes 16.
        assert_eq!(
            RlMemoryModel::generation_cost(&s, (1000, 5), 2, None, 5000).prefill,
            16 * RlMemoryModel::forward_row(&s, 1000, 2, None)
        );
        // What the prefill leaves for rows: (10,000 − 4,176) / 635 = 9.2; at least one.
        let cost = RlMemoryModel::generation_cost(&s, (6, 5), 2, None, 3);
        assert_eq!((cost.rows(10_000), cost.rows(100)), (9, 1));
        // LoRA of rank 2 adds per token an adapted projection's product with A and its sum,
        // in bf16, at the widest output (the MLP's 16): 2 · (16 + 2) = 36 bytes.
        assert_eq!(
            RlMemoryModel::forward_row(&s, 10, 2, Some(2)),
            10 * (116 * 2 + 36)
        );
        assert_eq!(
            RlMemoryModel::generation_cost(&s, (6, 5), 2, Some(2), 3).prefill,
            3 * 6 * (116 * 2 + 36)
        );
        // Saved per token and layer: (5·8 + 2·8 + 2·4 + 4·16)·2 + 8·8 = 256 + 64 = 320 bytes;
        // 2 layers × 10 tokens, and the policy's logits 4 × 10 × (2 + 16). The models run
        // their micro-batches one after the other: the value model's row (the same layers,
        // no logits) is the smaller.
        assert_eq!(model().update_row(), 2 * 10 * 320 + 4 * 10 * 18);
        // LoRA saves the adapters' inputs times A, 7 · 2 · 2 = 28 bytes, and with dropout
        // their own dropped-out inputs and masks, (2 + 1) · (5·8 + 8 + 16) = 192 more.
        let lora = RlMemoryModel {
            lora_rank: Some(2),
            ..model()
        };
        assert_eq!(lora.update_row(), 2 * 10 * (320 + 28) + 4 * 10 * 18);
        let dropout = RlMemoryModel {
            lora_dropout: true,
            ..lora
        };
        assert_eq!(dropout.update_row(), 2 * 10 * (320 + 220) + 4 * 10 * 18);
        // Recomputing 1 of the 2 layers keeps, per token, the other's 320 bytes and the
        // recomputed one's input, 8 · 2 bytes; recomputing both keeps their inputs, with the
        // logits until the loss's backward pass and then one layer's activations, 10 · 320
        // bytes, the larger here.
        let recomputed = |layers| RlMemoryModel {
            recomputed_layers: Some(layers),
            ..model()
        };
        assert_eq!(recomputed(1).update_row(), 10 * 16 + 10 * 320 + 4 * 10 * 18);
        assert_eq!(recomputed(2).update_row(), 2 * 10 * 16 + 10 * 320);
        assert_eq!(recomputed(9).update_row(), recomputed(2).update_row());
        // A value model of 4 layers keeps more than the policy: its row counts, unless there
        // is no value model.
        let deep_value = RlMemoryModel {
            reward_model: ModelShape {
                layers: 4,
                ..tiny()
            },
            ..model()
        };
        assert_eq!(deep_value.update_row(), 4 * 10 * 320);
        let policy_only = RlMemoryModel {
            value: false,
            ..deep_value
        };
        assert_eq!(policy_only.update_row(), 2 * 10 * 320 + 4 * 10 * 18);
    }

    /// The 7B LoRA PPO step of `bench/gpu/run.sh ppo-auto:llama2-7b`: policy and reward model
    /// of Llama-2-7B's shape, the 3B GPT-NeoX extractor, r 16 on all seven projections with
    /// dropout, every model kept on the device.
    fn llama2_7b_lora_step() -> RlMemoryModel {
        let llama = ModelShape::of(
            &ModelConfig::from_json(
                r#"{"model_type":"llama","vocab_size":32000,"hidden_size":4096,
                "intermediate_size":11008,"num_hidden_layers":32,"num_attention_heads":32,
                "num_key_value_heads":32,"tie_word_embeddings":false}"#,
            )
            .unwrap(),
        );
        let neox = ModelShape::of(
            &ModelConfig::from_json(
                r#"{"model_type":"gpt_neox","vocab_size":50304,"hidden_size":2560,
                "intermediate_size":10240,"num_hidden_layers":32,"num_attention_heads":32,
                "rotary_pct":0.25,"tie_word_embeddings":false,"hidden_act":"gelu"}"#,
            )
            .unwrap(),
        );
        RlMemoryModel {
            policy: llama,
            reward_model: llama,
            extractor: Some(neox),
            dtype_bytes: 2,
            master_weights: true,
            lora_rank: Some(16),
            lora_dropout: true,
            recomputed_layers: None,
            offload_idle_models: false,
            value: true,
            query_len: 128,
            response_len: 300,
            extractor_new_tokens: 300,
            reward_max_tokens: 1024,
            rollouts: 512,
            step_batch_size: 512,
            ranks: 1,
        }
    }

    /// [`llama2_7b_lora_step`] on an 80 GB card (81,000 MiB free). A row of the update keeps
    /// 4.01 GiB (32 layers × 428 tokens × 294.5 KiB of the policy, and its logits; the value
    /// model's pass comes after), so 38.8 GiB take 9 rows: micro-batches of 8, the largest
    /// divisor of 512; with every layer recomputed a row keeps the layers' inputs (107 MiB)
    /// and the logits (165 MiB; one layer's activations, 123 MiB, come after them), 0.27 GiB,
    /// and about 145 rows fit: micro-batches of 128.
    #[test]
    fn recomputation_lets_the_7b_update_take_larger_micro_batches() {
        let plain = llama2_7b_lora_step();
        let free = 81_000 << 20;
        assert_eq!(plain.plan(free).unwrap().micro_batch_size, 8);
        let recomputed = RlMemoryModel {
            recomputed_layers: Some(u64::MAX),
            ..plain.clone()
        };
        let plan = recomputed.plan(free).unwrap();
        assert_eq!(plan.micro_batch_size, 128);
        // Only the update's plan changes.
        let before = plain.plan(free).unwrap();
        assert_eq!(
            (plan.generation_batch_size, plan.extractor_batch_size),
            (before.generation_batch_size, before.extractor_batch_size)
        );
        // Every model kept, generation has 38.8 GiB; a row's cache (214 MiB, of 428 tokens)
        // counts at 0.85 / 0.95 of it, 192 MiB with sampling's logits, beside a prefill pass
        // of 128 prompts (2.6 GiB): 192 rows, 3 batches of 171. Extraction: 185 rows of 205
        // MiB (728 slots of the 3B) beside a pass of 38 prompts (1.7 GiB): also 171.
        assert_eq!(
            (before.generation_batch_size, before.extractor_batch_size),
            (171, 171)
        );
        // Offloading idle models gives generation the reward model's and the extractor's
        // memory (17.7 GiB; 53.9 GiB in all: 272 rows, 2 batches of 256), and extraction both
        // 7Bs' (60.1 GiB: 291 rows, also 256); the update keeps both 7Bs and gains only the
        // extractor's 5.2 GiB: 10 rows, still micro-batches of 8.
        let offloaded = RlMemoryModel {
            offload_idle_models: true,
            ..plain.clone()
        }
        .plan(free)
        .unwrap();
        assert_eq!(
            (
                offloaded.generation_batch_size,
                offloaded.extractor_batch_size,
                offloaded.micro_batch_size
            ),
            (256, 256, 8)
        );
    }

    /// Unset, `offload_idle_models` is chosen where it saves batches: for the 7B LoRA step on
    /// 81,000 MiB, generation and extraction in 2 batches instead of 3, given host memory for
    /// the frozen 7B base, 7B reward model and 3B extractor (2 × 6,738,415,616 + 2,775,208,960
    /// bf16 weights, 30.3 GiB: within 90% of 34 GiB, not of 33). A step whose parts each take
    /// every rollout at once without offloading keeps its models; one whose models fit only
    /// with offloading offloads.
    #[test]
    fn offloading_is_chosen_where_it_saves_batches() {
        let gib = 1u64 << 30;
        let step = llama2_7b_lora_step();
        assert_eq!(step.frozen_bytes(), 32_504_080_384);
        let free = 81_000 << 20;
        let chosen = step.plan_choosing_offload(free, 34 * gib).unwrap();
        assert!(chosen.offload_idle_models);
        assert_eq!(
            (chosen.generation_batch_size, chosen.extractor_batch_size),
            (256, 256)
        );
        let kept = step.plan_choosing_offload(free, 33 * gib).unwrap();
        assert!(!kept.offload_idle_models);
        assert_eq!(kept, step.plan(free).unwrap());
        assert_eq!(
            (kept.generation_batch_size, kept.extractor_batch_size),
            (171, 171)
        );
        // Tiny models with room for every rollout in every part: nothing to gain.
        let tiny_step = model();
        let roomy = tiny_step.fixed_bytes() * 4;
        let plan = tiny_step.plan_choosing_offload(roomy, u64::MAX).unwrap();
        assert!(!plan.offload_idle_models);
        assert_eq!(plan.generation_batch_size, 12);
        // Every model (5 tiny ones) fits only when the parts keep 3 of them.
        let p = tiny().parameters * 2;
        let tight = tiny_step.fixed_bytes() - p;
        assert!(tiny_step.plan(tight).is_err());
        assert!(
            tiny_step
                .plan_choosing_offload(tight, u64::MAX)
                .unwrap()
                .offload_idle_models
        );
        // ... unless the host cannot hold the copies: the error says both.
        let error = tiny_step
            .plan_choosing_offload(tight, 0)
            .unwrap_err()
            .to_string();
        for part in ["pure_bf16", "would not help", "host memory"] {
            assert!(error.contains(part), "{error}");
        }
        // Each process of a job keeps its own copies: two need 60.6 GiB of the host's.
        let two_ranks = RlMemoryModel {
            ranks: 2,
            ..step.clone()
        };
        assert!(
            !two_ranks
                .plan_choosing_offload(free, 34 * gib)
                .unwrap()
                .offload_idle_models
        );
        assert!(
            two_ranks
                .plan_choosing_offload(free, 68 * gib)
                .unwrap()
                .offload_idle_models
        );
    }

    /// With idle models offloaded each part keeps the trained state, the reserve and the
    /// weights of the trained models and of those it runs (hand-counted, in units of one
    /// tiny model's bf16 weights).
    #[test]
    fn offloading_keeps_only_each_parts_models_on_the_device() {
        use Part::*;
        let p = tiny().parameters * 2;
        let full = RlMemoryModel {
            offload_idle_models: true,
            ..model()
        };
        // Trained policy and value model with f32 masters, gradients and moments: 16 bytes a
        // weight, 8 of these units each.
        let state = 2 * 8 * p + RESERVE_BYTES;
        let parts = [Generation, Extraction, Scoring, ForwardPasses, Update];
        let resident = |m: &RlMemoryModel| parts.map(|part| m.resident_bytes(part) - state);
        // The trained two always; the extractor, the frozen reward model, the reference.
        assert_eq!(resident(&full), [2 * p, 3 * p, 3 * p, 3 * p, 2 * p]);
        assert_eq!(full.fixed_bytes(), state + 5 * p);
        // In LoRA mode nothing but the adapters is trained: the policy's base for
        // generation, the extractor, the reward model for scoring, both bases for the
        // forward passes (policy and value) and the update.
        let lora = RlMemoryModel {
            lora_rank: Some(2),
            ..full.clone()
        };
        let adapters = lora.state_bytes();
        let resident = parts.map(|part| lora.resident_bytes(part) - adapters);
        assert_eq!(resident, [p, p, p, 2 * p, 2 * p]);
        // Without offloading every part keeps every model.
        let kept = RlMemoryModel {
            offload_idle_models: false,
            ..lora.clone()
        };
        assert!(
            parts
                .iter()
                .all(|&part| kept.resident_bytes(part) == adapters + 3 * p)
        );
    }

    #[test]
    fn the_plan_fills_each_phase_and_keeps_the_step() {
        let m = model();
        let fixed = m.fixed_bytes();
        // 10 update rows' worth for each phase.
        let phase = 10 * m.update_row();
        let free = fixed + (phase as f64 / PHASE_SHARE).ceil() as u64;
        let plan = m.plan(free).unwrap();
        assert_eq!(plan.fixed_bytes, fixed);
        assert!(plan.phase_bytes.abs_diff(phase) <= 1);
        // 10 rows fit (9 if rounding took a byte); the largest divisor of the step's 12 not
        // above either is 6.
        assert_eq!(plan.micro_batch_size, 6);
        // Everything else is cheaper per row than the update here: all 12 rollouts at once.
        assert_eq!(
            (
                plan.generation_batch_size,
                plan.forward_batch_size,
                plan.extractor_batch_size,
                plan.score_batch_size
            ),
            (12, 12, 12, 12)
        );
        // A scoring pass's token costs 116 · 2 bytes of the forward pass and 20 · 8 of the
        // mask over up to 20 keys: 71,200 / 392 = 181.6 tokens (as 71,199 / 392).
        assert_eq!(phase, 71_200);
        assert_eq!(plan.score_batch_tokens, 181);
        // With room for 5 generation rows (or 4) beside the prefill of all 12 prompts, 12
        // rollouts go in 3 batches of 4, and the update (7,120 bytes a row; 5 · 607 + 16,704
        // = 19,739 in all) in micro-batches of 2.
        let generation = RlMemoryModel::generation_cost(&m.policy, (6, 4), 2, None, 12);
        assert_eq!(
            generation,
            GenerationCost {
                row: 607,
                prefill: 12 * 6 * 232
            }
        );
        let room = 5 * generation.row + generation.prefill;
        let tight = m
            .plan(fixed + (room as f64 / PHASE_SHARE).ceil() as u64)
            .unwrap();
        assert_eq!(tight.generation_batch_size, 4);
        assert_eq!(tight.micro_batch_size, 2);
    }

    #[test]
    fn too_little_memory_is_an_error_that_says_what_to_do() {
        let m = model();
        let error = m.plan(m.fixed_bytes()).unwrap_err().to_string();
        assert!(error.contains("auto_batch_sizes"), "{error}");
        assert!(error.contains("pure_bf16"), "{error}");
        assert!(error.contains("offload_idle_models = true"), "{error}");
        // Offloading already, the plan does not suggest it.
        let offloaded = RlMemoryModel {
            offload_idle_models: true,
            ..m
        };
        let error = offloaded.plan(0).unwrap_err().to_string();
        assert!(error.contains("pure_bf16"), "{error}");
        assert!(!error.contains("offload_idle_models"), "{error}");
    }

    /// Host copies fit in 90% of the available host memory; beyond, the error names the
    /// setting and both sizes.
    #[test]
    fn host_copies_must_fit_in_host_memory() {
        let gib = 1u64 << 30;
        assert!(check_host_memory(9 * gib, 10 * gib).is_ok());
        let error = check_host_memory(9 * gib + 1, 10 * gib)
            .unwrap_err()
            .to_string();
        for part in ["offload_idle_models", "9.0 GiB", "10.0 GiB", "= false"] {
            assert!(error.contains(part), "{error}");
        }
    }

    #[test]
    fn batch_rounding() {
        assert_eq!(even_batches(512, 300), 256);
        assert_eq!(even_batches(512, 1000), 512);
        assert_eq!(even_batches(10, 3), 3);
        assert_eq!(even_batches(7, 0), 1);
        assert_eq!(largest_divisor(512, 100), 64);
        assert_eq!(largest_divisor(12, 5), 4);
        assert_eq!(largest_divisor(7, 6), 1);
    }

    #[test]
    fn host_memory_reads_meminfo_and_names_a_missing_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meminfo");
        std::fs::write(
            &path,
            "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   12000000 kB\n",
        )
        .unwrap();
        assert_eq!(
            host_memory(&path).unwrap(),
            DeviceMemory {
                free: 12_000_000 * 1024,
                total: 24_000_000 * 1024
            }
        );
        std::fs::write(&path, "MemTotal: 5 kB\n").unwrap();
        let error = host_memory(&path).unwrap_err().to_string();
        assert!(error.contains("MemAvailable"), "{error}");
    }
}
