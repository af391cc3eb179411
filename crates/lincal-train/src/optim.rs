//! AdamW, learning-rate schedules and gradient clipping over plain tensors, so that every bit
//! of optimizer state can be checkpointed (tch's optimizer cannot save its moments).
//!
//! Precision: the reference trains with FSDP bf16 mixed precision (bf16 compute, f32 sharded
//! parameters and optimizer state). Here a model computing in bf16 gets an f32 master copy
//! of each trainable weight; gradients are accumulated in f32, AdamW updates the masters and
//! the bf16 weights are refreshed from them. An f32 model is its own master. The reference's
//! 8-bit paged AdamW (bitsandbytes) is replaced by exact f32 AdamW (`torch.optim.AdamW`).
//! Without master weights (`Precision::PureBf16`) the weights, gradients and moments all stay
//! in the model's precision, as `torch.optim.AdamW` over bf16 parameters.

use crate::config::{Schedule, TrainingConfig};
use crate::distributed::{Communicator, FlatShards, SingleProcess};
use crate::error::{Result, TrainError};
use lincal_model::checkpoint::write_safetensors_file;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Learning-rate multiplier for the optimizer step taken after `step` completed steps, as
/// transformers' schedulers (the first step of a warmup runs at zero).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub schedule: Schedule,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// Warmup of ceil(total × ratio) steps, as HF's `TrainingArguments.get_warmup_steps`.
    pub fn new(schedule: Schedule, warmup_ratio: f64, total_steps: u64) -> Self {
        LrSchedule {
            schedule,
            warmup_steps: (total_steps as f64 * warmup_ratio).ceil() as u64,
            total_steps,
        }
    }

    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = (step - self.warmup_steps) as f64 / decay_steps;
        match self.schedule {
            Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
            Schedule::Linear => (1.0 - progress).max(0.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    pub fn from_training(config: &TrainingConfig) -> Self {
        AdamWConfig {
            beta1: config.adam_beta1,
            beta2: config.adam_beta2,
            eps: config.adam_epsilon,
            weight_decay: config.weight_decay,
        }
    }
}

/// Per-parameter AdamW state.
pub struct AdamState {
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// Updates taken (torch counts per parameter; one that never received a gradient has 0).
    pub step: i64,
}

impl AdamState {
    /// Zero moments shaped like `param`, in its precision.
    pub fn new(param: &Tensor) -> Self {
        let exp_avg = param.zeros_like();
        AdamState {
            exp_avg_sq: exp_avg.zeros_like(),
            exp_avg,
            step: 0,
        }
    }
}

mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    unsafe extern "C" {
        pub fn lincal_fused_adamw(
            params: *mut *mut c_void,
            grads: *mut *mut c_void,
            exp_avgs: *mut *mut c_void,
            exp_avg_sqs: *mut *mut c_void,
            steps: *mut *mut c_void,
            count: usize,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            error: *mut c_char,
            capacity: usize,
        ) -> c_int;
    }
}

/// One AdamW update in place of 1-D tensors (the flat buffers) through PyTorch's fused kernel
/// (`torch.optim.AdamW(fused=True)`, bound by the shim in `csrc/fused_adamw.cpp`): one pass
/// over parameters, gradients and both moments, computed in f32 whatever their precision,
/// with no temporaries, on the CPU or a GPU (tch binds no fused or foreach optimizer kernel,
/// and the element-wise path took about ten passes over every buffer).
pub fn adamw_step(
    param: &mut Tensor,
    grad: &Tensor,
    state: &mut AdamState,
    lr: f64,
    config: &AdamWConfig,
    decay: bool,
) -> Result<()> {
    state.step += 1;
    let mut step = Tensor::from(state.step as f32).to_device(param.device());
    let mut grad = grad.shallow_clone();
    let weight_decay = if decay { config.weight_decay } else { 0.0 };
    let pointer = |t: &mut Tensor| t.as_mut_ptr().cast::<std::ffi::c_void>();
    let (mut p, mut g, mut m, mut v, mut s) = (
        pointer(param),
        pointer(&mut grad),
        pointer(&mut state.exp_avg),
        pointer(&mut state.exp_avg_sq),
        pointer(&mut step),
    );
    // SAFETY: each pointer is a live tch tensor (a torch::Tensor*) for the call's duration;
    // the shim reads them, updates the tensors in place and reports failures in the buffer.
    lincal_model::shim::call(|error, capacity| {
        let failed = tch::no_grad(|| unsafe {
            ffi::lincal_fused_adamw(
                &mut p,
                &mut g,
                &mut m,
                &mut v,
                &mut s,
                1,
                lr,
                config.beta1,
                config.beta2,
                weight_decay,
                config.eps,
                error,
                capacity,
            )
        }) != 0;
        (!failed).then_some(())
    })
    .map_err(|message| TrainError::Torch(tch::TchError::Torch(format!("fused AdamW: {message}"))))
}

/// One AdamW update in place, in the operation order of `torch.optim.AdamW`'s single-tensor
/// path: the reference the fused kernel is checked against.
#[cfg(test)]
fn adamw_update(
    param: &mut Tensor,
    grad: &Tensor,
    state: &mut AdamState,
    lr: f64,
    config: &AdamWConfig,
    decay: bool,
) {
    state.step += 1;
    let bias_correction1 = 1.0 - config.beta1.powi(state.step as i32);
    let bias_correction2 = 1.0 - config.beta2.powi(state.step as i32);
    let step_size = lr / bias_correction1;
    tch::no_grad(|| {
        if decay && config.weight_decay != 0.0 {
            let _ = param.g_mul_scalar_(1.0 - lr * config.weight_decay);
        }
        let _ = state.exp_avg.lerp_(grad, 1.0 - config.beta1);
        let _ = state
            .exp_avg_sq
            .g_mul_scalar_(config.beta2)
            .addcmul_(&(grad * (1.0 - config.beta2)), grad);
        let denom = state.exp_avg_sq.sqrt() / bias_correction2.sqrt() + config.eps;
        let _ = param.addcdiv_(&(&state.exp_avg * -step_size), &denom);
    });
}

/// Scales `grads` in place so that their global L2 norm is at most `max_norm` (0: no
/// clipping), as `torch.nn.utils.clip_grad_norm_`, and returns the norm before clipping. In a
/// data-parallel job each rank of `comm` holds disjoint parts of the gradients, and the norm
/// is that of all of them.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64, comm: &dyn Communicator) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    tch::no_grad(|| {
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        let mut total = Tensor::stack(&norms, 0).norm();
        if comm.world_size() > 1 {
            let mut squares = &total * &total;
            comm.all_reduce_sum(&mut squares)?;
            total = squares.sqrt();
        }
        if max_norm > 0.0 {
            // torch multiplies by the clamped coefficient even when it is 1.
            let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
            for g in grads {
                let _ = g.shallow_clone().g_mul_(&coef);
            }
        }
        Ok(total.double_value(&[]))
    })
}

/// HF's Trainer exempts biases and normalisation weights from weight decay.
fn decays(name: &str) -> bool {
    !(name.ends_with("bias") || name.contains("norm"))
}

/// One trained variable's place in its group's flat buffers.
struct Member {
    name: String,
    /// The model's variable (what the forward pass reads); its storage is a view of the
    /// group's `compute` buffer, or of `weights` for f32 variables.
    var: Tensor,
    offset: i64,
    shape: Vec<i64>,
}

impl Member {
    fn view(&self, flat: &Tensor) -> Tensor {
        flat.narrow(0, self.offset, self.shape.iter().product())
            .view(self.shape.as_slice())
    }
}

/// Variables of one kind and one weight-decay rule, kept in flat buffers so that clipping,
/// AdamW and the master-to-model copy are a handful of kernels instead of several per tensor
/// (per-tensor launches cost about 10% of a small model's step).
///
/// In a data-parallel job each rank updates one chunk of the flat buffers ([`FlatShards`]):
/// the AdamW moments, and the f32 masters where there are any, exist only for that chunk
/// (ZeRO stage 1); gradients and the weights the model computes with are whole on every
/// rank. With one rank the chunk is the whole buffer.
struct Group {
    members: Vec<Member>,
    decay: bool,
    shards: FlatShards,
    /// The weights AdamW updates: this rank's chunk of the f32 masters of low-precision
    /// variables, or (f32 variables, or any without master weights) the variables' own
    /// storage, whole.
    weights: Tensor,
    /// The low-precision copy the model computes with (`None` for f32 variables), whole.
    compute: Option<Tensor>,
    /// Gradient summed over the micro-batches of a step (and, in a data-parallel job, over
    /// the ranks), whole, in the precision of `weights`.
    grad: Tensor,
    /// Moments of this rank's chunk.
    adam: AdamState,
}

impl Group {
    /// This rank's chunk of a whole flat buffer.
    fn owned(&self, flat: &Tensor, rank: usize) -> Tensor {
        flat.narrow(0, self.shards.start(rank), self.shards.chunk)
    }
}

pub const PARAMS_FILE: &str = "params.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// The trainable tensors of a run with their master copies and AdamW state. Every variable is
/// updated every step (a variable that got no gradient is updated with a zero one; the
/// trainers only train variables that the loss reaches).
pub struct TrainableParams {
    groups: Vec<Group>,
    config: AdamWConfig,
    comm: Arc<dyn Communicator>,
}

impl TrainableParams {
    /// `named` are the variables to train (they must require grad); names must be unique.
    /// The variables' storage moves into the flat buffers (values unchanged). With
    /// `master_weights`, low-precision variables get f32 masters, gradients and moments.
    pub fn new(named: Vec<(String, Tensor)>, config: AdamWConfig, master_weights: bool) -> Self {
        Self::sharded(named, config, master_weights, Arc::new(SingleProcess))
    }

    /// [`Self::new`] for one rank of the data-parallel job `comm`: every rank passes the same
    /// variables with the same values, and [`Self::step`] sums the gradients over the ranks.
    pub fn sharded(
        named: Vec<(String, Tensor)>,
        config: AdamWConfig,
        master_weights: bool,
        comm: Arc<dyn Communicator>,
    ) -> Self {
        let rank = comm.rank();
        // Grouped by (kind, decay) in order of first appearance.
        let mut grouped: Vec<((Kind, bool), Vec<Member>)> = Vec::new();
        for (name, var) in named {
            let key = (var.kind(), decays(&name));
            let member = Member {
                name,
                shape: var.size(),
                var,
                offset: 0,
            };
            match grouped.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(member),
                None => grouped.push((key, vec![member])),
            }
        }
        let mut groups = Vec::with_capacity(grouped.len());
        for ((kind, decay), mut group_members) in grouped {
            let mut total = 0;
            for member in &mut group_members {
                member.offset = total;
                total += member.shape.iter().product::<i64>();
            }
            let shards = FlatShards::new(total, comm.world_size());
            let device = group_members[0].var.device();
            let master_kind = if master_weights { Kind::Float } else { kind };
            let mut weights = Tensor::zeros([shards.padded], (master_kind, device));
            let compute =
                (kind != master_kind).then(|| Tensor::zeros([shards.padded], (kind, device)));
            tch::no_grad(|| {
                for member in &mut group_members {
                    member.view(&weights).copy_(&member.var);
                    let storage = compute.as_ref().unwrap_or(&weights);
                    member.view(storage).copy_(&member.var);
                    member.var.set_data(&member.view(storage));
                }
            });
            // Masters are kept for this rank's chunk alone (all of it with one rank).
            if compute.is_some() && shards.chunk < shards.padded {
                weights = weights.narrow(0, shards.start(rank), shards.chunk).copy();
            }
            let grad = Tensor::zeros([shards.padded], (master_kind, device));
            // A variable that is its own AdamW weight gets a gradient that is a view of the
            // accumulator before any backward pass, so that no pass makes a second copy of it.
            if compute.is_none() {
                for member in &group_members {
                    tch::with_grad(|| (member.var.sum(Kind::Float) * 0.0).backward());
                    member.var.grad().set_data(&member.view(&grad));
                }
            }
            // The variables' old storage and the priming's gradients are free now but cached in
            // blocks of their sizes, which the moment buffers allocated next cannot use: give
            // them back to the driver.
            if device.is_cuda() {
                lincal_model::cuda_graph::empty_cache().expect("emptying libtorch's CUDA cache");
            }
            let adam = AdamState::new(&grad.narrow(0, shards.start(rank), shards.chunk));
            groups.push(Group {
                members: group_members,
                decay,
                shards,
                grad,
                weights,
                compute,
                adam,
            });
        }
        TrainableParams {
            groups,
            config,
            comm,
        }
    }

    pub fn num_parameters(&self) -> i64 {
        self.groups.iter().map(|g| g.shards.len).sum()
    }

    /// Adds the gradients of the last backward pass to the f32 accumulators of low-precision
    /// variables and clears them. Every other variable's gradient is a view of its
    /// accumulator (see [`Self::new`]), which backward passes already added into.
    pub fn accumulate_grads(&mut self) {
        tch::no_grad(|| {
            for group in self.groups.iter().filter(|g| g.compute.is_some()) {
                for member in &group.members {
                    let mut g = member.var.grad();
                    if g.defined() {
                        let _ = member.view(&group.grad).g_add_(&g);
                        let _ = g.zero_();
                    }
                }
            }
        });
    }

    /// Sums the gradients over the ranks, clips, applies one AdamW update at learning rate
    /// `lr` to this rank's chunk, gathers the updated weights of every rank into the model's
    /// and clears the gradients. Returns the gradient norm before clipping.
    pub fn step(&mut self, lr: f64, max_grad_norm: f64) -> Result<f64> {
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        // Each rank updates its slice only, so it needs the summed gradients of that slice: a
        // reduce-scatter, in place. The norm for clipping is summed over the slices.
        let grads: Vec<Tensor> = self.groups.iter().map(|g| g.owned(&g.grad, rank)).collect();
        if world > 1 {
            for (group, grad) in self.groups.iter().zip(&grads) {
                self.comm
                    .reduce_scatter_sum(&group.grad, &mut grad.shallow_clone())?;
            }
        }
        let norm = clip_grad_norm(&grads, max_grad_norm, &*self.comm)?;
        for (group, grad) in self.groups.iter_mut().zip(grads) {
            let mut updated = match group.compute {
                Some(_) => group.weights.shallow_clone(),
                None => group.owned(&group.weights, rank),
            };
            adamw_step(
                &mut updated,
                &grad,
                &mut group.adam,
                lr,
                &self.config,
                group.decay,
            )?;
            let whole = match &group.compute {
                Some(compute) => {
                    let mut chunk = group.owned(compute, rank);
                    tch::no_grad(|| chunk.copy_(&updated));
                    compute.shallow_clone()
                }
                None => group.weights.shallow_clone(),
            };
            if world > 1 {
                self.comm
                    .all_gather(&group.owned(&whole, rank), &mut whole.shallow_clone())?;
            }
            tch::no_grad(|| {
                let _ = group.grad.zero_();
            });
        }
        Ok(norm)
    }

    /// A whole flat buffer from this rank's `chunk` of it (every rank calls this together).
    fn gathered(&self, shards: &FlatShards, chunk: &Tensor) -> Result<Tensor> {
        if chunk.numel() as i64 == shards.padded {
            return Ok(chunk.shallow_clone());
        }
        let mut whole = Tensor::zeros([shards.padded], (chunk.kind(), chunk.device()));
        self.comm.all_gather(chunk, &mut whole)?;
        Ok(whole)
    }

    /// The weights AdamW updates (f32 masters where there are any), whole, by name. In a
    /// data-parallel job every rank calls this together (the masters are gathered).
    pub fn weights(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut named = BTreeMap::new();
        for group in &self.groups {
            let whole = self.gathered(&group.shards, &group.weights)?;
            for member in &group.members {
                named.insert(member.name.clone(), member.view(&whole));
            }
        }
        Ok(named)
    }

    /// Points each model variable at its f32 master (no copy with one rank), so that the
    /// model holds the full-precision weights for the final save, as the reference's FSDP
    /// full state dict. In a data-parallel job every rank calls this together.
    pub fn promote_to_masters(&mut self) -> Result<()> {
        for index in 0..self.groups.len() {
            if self.groups[index].compute.is_none() {
                continue;
            }
            let whole = self.gathered(&self.groups[index].shards, &self.groups[index].weights)?;
            let group = &mut self.groups[index];
            group.compute = None;
            group.weights = whole;
            for member in &mut group.members {
                member.var.set_data(&member.view(&group.weights));
            }
        }
        Ok(())
    }

    /// Writes the weights and AdamW state, whole and by name, into `dir` (exact values), so
    /// that any number of ranks can resume from them. In a data-parallel job every rank calls
    /// this together and rank 0 writes.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let weights = self.weights()?;
        let mut state = BTreeMap::new();
        for group in &self.groups {
            let exp_avg = self.gathered(&group.shards, &group.adam.exp_avg)?;
            let exp_avg_sq = self.gathered(&group.shards, &group.adam.exp_avg_sq)?;
            for member in &group.members {
                state.insert(format!("exp_avg.{}", member.name), member.view(&exp_avg));
                state.insert(
                    format!("exp_avg_sq.{}", member.name),
                    member.view(&exp_avg_sq),
                );
            }
        }
        state.insert(
            "step".into(),
            Tensor::from(self.groups.first().map_or(0, |g| g.adam.step)),
        );
        if self.comm.rank() == 0 {
            save_safetensors_named(dir, PARAMS_FILE, &weights)?;
            save_safetensors_named(dir, OPTIMIZER_FILE, &state)?;
        }
        Ok(())
    }

    /// Restores what [`Self::save`] wrote, at whatever world size it was written; names and
    /// shapes must match this run's.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let weights = read_safetensors(&dir.join(PARAMS_FILE))?;
        let state = read_safetensors(&dir.join(OPTIMIZER_FILE))?;
        let missing = |file: &str, name: &str| {
            TrainError::run_dir(
                dir.join(file),
                format!(
                    "has no tensor `{name}`; the checkpoint was written by a different \
                     model or LoRA setup"
                ),
            )
        };
        let step = state
            .get("step")
            .ok_or_else(|| missing(OPTIMIZER_FILE, "step"))?
            .int64_value(&[]);
        let rank = self.comm.rank();
        tch::no_grad(|| -> Result<()> {
            for group in &mut self.groups {
                // Each stored buffer is rebuilt whole, then this rank keeps its chunk.
                let whole =
                    |kind: Kind| Tensor::zeros([group.shards.padded], (kind, group.grad.device()));
                let (weights_whole, exp_avg, exp_avg_sq) = (
                    whole(group.weights.kind()),
                    whole(group.adam.exp_avg.kind()),
                    whole(group.adam.exp_avg_sq.kind()),
                );
                for member in &group.members {
                    let stored = weights
                        .get(&member.name)
                        .ok_or_else(|| missing(PARAMS_FILE, &member.name))?;
                    if stored.size() != member.shape {
                        return Err(TrainError::run_dir(
                            dir.join(PARAMS_FILE),
                            format!(
                                "tensor `{}` has shape {:?}, the model's is {:?}",
                                member.name,
                                stored.size(),
                                member.shape
                            ),
                        ));
                    }
                    member.view(&weights_whole).f_copy_(stored)?;
                    for (prefix, flat) in [("exp_avg", &exp_avg), ("exp_avg_sq", &exp_avg_sq)] {
                        let name = format!("{prefix}.{}", member.name);
                        member.view(flat).f_copy_(
                            state
                                .get(&name)
                                .ok_or_else(|| missing(OPTIMIZER_FILE, &name))?,
                        )?;
                    }
                }
                if group.weights.numel() as i64 == group.shards.padded {
                    group.weights.f_copy_(&weights_whole)?;
                } else {
                    group.weights.f_copy_(&group.owned(&weights_whole, rank))?;
                }
                if let Some(compute) = &mut group.compute {
                    compute.f_copy_(&weights_whole)?;
                }
                group.adam.exp_avg.f_copy_(&group.owned(&exp_avg, rank))?;
                group
                    .adam
                    .exp_avg_sq
                    .f_copy_(&group.owned(&exp_avg_sq, rank))?;
                group.adam.step = step;
            }
            Ok(())
        })
    }
}

/// Writes one safetensors file named `file` in `dir`.
fn save_safetensors_named(
    dir: &Path,
    file: &str,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<()> {
    Ok(write_safetensors_file(
        &dir.join(file),
        &tensors.iter().collect::<Vec<_>>(),
    )?)
}

fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors = Tensor::read_safetensors(path).map_err(|e| {
        TrainError::run_dir(
            path,
            format!(
                "cannot be read ({e}); the checkpoint is incomplete or corrupt: \
                 delete its directory to resume from the one before"
            ),
        )
    })?;
    Ok(tensors.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// torch.optim.AdamW's betas and epsilon with `weight_decay`.
    fn torch_defaults(weight_decay: f64) -> AdamWConfig {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    #[test]
    fn cosine_and_linear_schedules_match_transformers() {
        // 10 steps, warmup ratio 0.2 → 2 warmup steps: factors 0, 0.5, then decay over 8.
        let cosine = LrSchedule::new(Schedule::Cosine, 0.2, 10);
        let linear = LrSchedule::new(Schedule::Linear, 0.2, 10);
        assert_eq!(cosine.warmup_steps, 2);
        let expected_cosine = [
            0.0,
            0.5,
            1.0,
            0.961_939_766_255_643_4,
            0.853_553_390_593_273_8,
            0.691_341_716_182_544_9,
            0.5,
            0.308_658_283_817_455_1,
            0.146_446_609_406_726_2,
            0.038_060_233_744_356_6,
            0.0,
        ];
        let expected_linear = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0,
        ];
        for step in 0..=10u64 {
            assert!(
                (cosine.factor(step) - expected_cosine[step as usize]).abs() < 1e-12,
                "cosine step {step}: {}",
                cosine.factor(step)
            );
            assert!(
                (linear.factor(step) - expected_linear[step as usize]).abs() < 1e-12,
                "linear step {step}"
            );
        }
        // A ratio of 0.03 over 890 steps warms up for ceil(26.7) = 27 steps.
        assert_eq!(
            LrSchedule::new(Schedule::Cosine, 0.03, 890).warmup_steps,
            27
        );
    }

    #[test]
    fn adamw_matches_hand_computed_steps() {
        // p0 = 1, lr 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.01; gradients 0.5, -0.25, 1.
        // Step 1: p = 0.999 (decay); m = 0.05, v = 2.5e-4; m̂/√v̂ = 0.05/0.1 / (√2.5e-4/√1e-3)
        //   = 0.5/0.5 → p = 0.999 - 0.1·0.05/0.1/(0.5 + 1e-8) = 0.899000002.
        // Step 2: p = 0.899000002·0.999 = 0.898101002; m = 0.02, v = 3.1225e-4; bias corrections
        //   0.19 and 0.001999 → p -= (0.1/0.19)·0.02 / (√3.1225e-4/√0.001999 + 1e-8) = 0.0266337.
        // Step 3: m = 0.118, v = 1.31193775e-3; bias corrections 0.271 and 0.002997001.
        let config = torch_defaults(0.01);
        // The fused kernel (the training path) and the element-wise reference, in f64.
        let update = |fused: bool, p: &mut Tensor, g: f64, state: &mut AdamState, decay: bool| {
            let g = Tensor::from_slice(&[g]);
            if fused {
                adamw_step(p, &g, state, 0.1, &config, decay).unwrap();
            } else {
                adamw_update(p, &g, state, 0.1, &config, decay);
            }
        };
        let expected = [
            0.899_000_002,
            0.871_467_298_705_846_3,
            0.804_784_672_376_384,
        ];
        for fused in [true, false] {
            let mut p = Tensor::from_slice(&[1.0f64]);
            let mut state = AdamState::new(&p);
            for (step, (g, want)) in [0.5, -0.25, 1.0].iter().zip(expected).enumerate() {
                update(fused, &mut p, *g, &mut state, true);
                let got = p.double_value(&[0]);
                assert!(
                    (got - want).abs() < 1e-12,
                    "fused {fused}, step {}: {got} vs {want}",
                    step + 1
                );
            }
            // Without decay (a bias) the first step is exactly -lr·sign(g) up to eps.
            let mut b = Tensor::from_slice(&[1.0f64]);
            let mut state = AdamState::new(&b);
            update(fused, &mut b, 0.5, &mut state, false);
            let want = 1.0 - 0.1 * 0.5 / (0.5 + 1e-8);
            assert!((b.double_value(&[0]) - want).abs() < 1e-15, "fused {fused}");
        }
    }

    /// PyTorch's fused kernel computes the plain path's update: f32 within a few ulps over
    /// three steps with and without weight decay; the state counts the same steps.
    #[test]
    fn fused_adamw_equals_the_plain_update() {
        let config = torch_defaults(0.01);
        let start = Tensor::linspace(-1.0, 1.0, 1000, (Kind::Float, tch::Device::Cpu));
        for decay in [true, false] {
            let (mut plain, mut fused) = (start.copy(), start.copy());
            let (mut a, mut b) = (AdamState::new(&plain), AdamState::new(&fused));
            for g in [0.5, -0.25, 2.0] {
                let grad = (&start * g + 0.1).sin();
                adamw_update(&mut plain, &grad, &mut a, 1e-3, &config, decay);
                adamw_step(&mut fused, &grad, &mut b, 1e-3, &config, decay).unwrap();
            }
            let gap = |x: &Tensor, y: &Tensor| (x - y).abs().max().double_value(&[]);
            assert_eq!(a.step, b.step);
            assert!(
                gap(&plain, &fused) < 1e-6,
                "decay {decay}: {}",
                gap(&plain, &fused)
            );
            assert!(gap(&a.exp_avg, &b.exp_avg) < 1e-7);
            assert!(gap(&a.exp_avg_sq, &b.exp_avg_sq) < 1e-7);
            assert!(gap(&plain, &start) > 1e-4, "nothing moved");
            println!(
                "decay {decay}: fused vs plain max gap {:e}",
                gap(&plain, &fused)
            );
        }
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        // Norm of (3, 4, 12) is 13; clipped to 1 every entry is divided by 13 + 1e-6.
        let grads = [
            Tensor::from_slice(&[3.0f64, 4.0]),
            Tensor::from_slice(&[12.0f64]),
        ];
        let norm = clip_grad_norm(&grads, 1.0, &SingleProcess).unwrap();
        assert_eq!(norm, 13.0);
        let scale = 1.0 / (13.0 + 1e-6);
        assert!((grads[0].double_value(&[0]) - 3.0 * scale).abs() < 1e-15);
        assert!((grads[1].double_value(&[0]) - 12.0 * scale).abs() < 1e-15);
        // Under the limit nothing changes.
        let small = [Tensor::from_slice(&[0.3f64, 0.4])];
        assert!((clip_grad_norm(&small, 1.0, &SingleProcess).unwrap() - 0.5).abs() < 1e-15);
        assert_eq!(small[0].double_value(&[1]), 0.4);
    }

    #[test]
    fn mixed_precision_keeps_an_f32_master_and_round_trips_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let var = Tensor::from_slice(&[1.0f32, -2.0])
            .to_kind(Kind::BFloat16)
            .set_requires_grad(true);
        let config = torch_defaults(0.0);
        let mut params =
            TrainableParams::new(vec![("w".into(), var.shallow_clone())], config, true);
        for _ in 0..2 {
            (&var * 3.0).sum(Kind::Float).backward();
            params.accumulate_grads();
        }
        let norm = params.step(1e-3, 0.0).unwrap();
        // Two passes of gradient 3 accumulate to 6 per entry: norm 6√2.
        assert!((norm - 6.0 * 2f64.sqrt()).abs() < 1e-5, "{norm}");
        let master = params.weights().unwrap()["w"].shallow_clone();
        assert_eq!(master.kind(), Kind::Float);
        // The first Adam step moves each weight by lr (bf16 cannot show 0.999, the master can).
        assert!((master.double_value(&[0]) - (1.0 - 1e-3)).abs() < 1e-6);
        assert_eq!(
            var.double_value(&[0]),
            master.to_kind(Kind::BFloat16).double_value(&[0])
        );
        params.save(dir.path()).unwrap();
        let fresh = Tensor::from_slice(&[0.0f32, 0.0])
            .to_kind(Kind::BFloat16)
            .set_requires_grad(true);
        let mut restored =
            TrainableParams::new(vec![("w".into(), fresh.shallow_clone())], config, true);
        restored.load(dir.path()).unwrap();
        assert!(restored.weights().unwrap()["w"].equal(&master));
        assert_eq!(restored.groups[0].adam.step, 1);
        assert!(
            restored.groups[0]
                .adam
                .exp_avg
                .equal(&params.groups[0].adam.exp_avg)
        );
        assert_eq!(fresh.double_value(&[1]), var.double_value(&[1]));
        let mut other = TrainableParams::new(vec![("v".into(), fresh)], config, true);
        let err = other.load(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "params.safetensors: has no tensor `v`; the checkpoint was written by a different \
                 model or LoRA setup"
            ),
            "{err}"
        );
    }

    /// An f32 variable's gradient is a view of the accumulator from the start, and backward
    /// passes add into it in place: the sums are those of separate gradients.
    #[test]
    fn own_weight_gradients_accumulate_in_place() {
        let var = Tensor::from_slice(&[1.0f32, -2.0, 0.5]).set_requires_grad(true);
        let config = torch_defaults(0.0);
        let mut params =
            TrainableParams::new(vec![("w".into(), var.shallow_clone())], config, true);
        let accumulated =
            |params: &TrainableParams| Vec::<f32>::try_from(&params.groups[0].grad).unwrap();
        assert_eq!(var.grad().data_ptr(), params.groups[0].grad.data_ptr());
        (&var * 2.0).sum(Kind::Float).backward();
        params.accumulate_grads();
        (&var * &var).sum(Kind::Float).backward();
        params.accumulate_grads();
        // 2 + 2w.
        assert_eq!(accumulated(&params), vec![4.0, -2.0, 3.0]);
        params.step(1e-3, 0.0).unwrap();
        assert_eq!(Vec::<f32>::try_from(var.grad()).unwrap(), vec![0.0; 3]);
        (&var * 3.0).sum(Kind::Float).backward();
        params.accumulate_grads();
        assert_eq!(accumulated(&params), vec![3.0; 3]);
    }

    /// Without master weights everything stays in bf16, as torch's AdamW over bf16 weights: a
    /// step smaller than the weight's bf16 spacing is lost, a representable one is exact.
    #[test]
    fn pure_bf16_keeps_no_f32_copies() {
        let var = Tensor::from_slice(&[1.0f32, -2.0])
            .to_kind(Kind::BFloat16)
            .set_requires_grad(true);
        let config = torch_defaults(0.0);
        let mut params =
            TrainableParams::new(vec![("w".into(), var.shallow_clone())], config, false);
        let group = &params.groups[0];
        assert!(group.compute.is_none());
        assert_eq!(
            (
                group.weights.kind(),
                group.grad.kind(),
                group.adam.exp_avg.kind(),
                group.adam.exp_avg_sq.kind()
            ),
            (
                Kind::BFloat16,
                Kind::BFloat16,
                Kind::BFloat16,
                Kind::BFloat16
            )
        );
        let step = |params: &mut TrainableParams, lr: f64| {
            (&var * 3.0).sum(Kind::Float).backward();
            params.accumulate_grads();
            params.step(lr, 0.0).unwrap();
        };
        // 1 - 1e-3 rounds back to 1 in bf16 (spacing 2^-7 there); -2 - 1e-3 to -2.
        step(&mut params, 1e-3);
        assert_eq!(
            Vec::<f32>::try_from(var.to_kind(Kind::Float)).unwrap(),
            vec![1.0, -2.0]
        );
        // The first-moment estimate is 0.1 · 3 = 0.3 stored in bf16 (0.30078125).
        assert_eq!(params.groups[0].adam.exp_avg.double_value(&[0]), 0.30078125);
        // A step of 0.25 (Adam's step is lr · m̂/√v̂ = lr for a constant gradient) is exact.
        step(&mut params, 0.25);
        assert_eq!(
            Vec::<f32>::try_from(var.to_kind(Kind::Float)).unwrap(),
            vec![0.75, -2.25]
        );
    }

    /// An f32 and a bf16 variable (with an f32 master) whose flat buffers (5 and 3 elements)
    /// do not divide evenly among 2 or 3 ranks.
    fn two_kinds(comm: Arc<dyn Communicator>) -> (TrainableParams, Vec<Tensor>) {
        let a = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.25, 1.5]).set_requires_grad(true);
        let b = Tensor::from_slice(&[1.0f32, -0.5, 0.75])
            .to_kind(Kind::BFloat16)
            .set_requires_grad(true);
        let config = torch_defaults(0.1);
        let named = vec![
            ("a.weight".to_string(), a.shallow_clone()),
            ("b.weight".to_string(), b.shallow_clone()),
        ];
        (
            TrainableParams::sharded(named, config, true, comm),
            vec![a, b],
        )
    }

    /// Optimizer steps `steps` of 6 examples each, this rank taking its share of every step;
    /// example i's loss is (Σ a·cᵢ + Σ b·dᵢ)² / 6 with fixed coefficients.
    fn train_share(params: &mut TrainableParams, vars: &[Tensor], steps: std::ops::Range<usize>) {
        let (rank, world) = (params.comm.rank(), params.comm.world_size());
        for step in steps {
            for i in crate::distributed::share(6, world, rank) {
                let x = (step * 6 + i) as f64;
                let c = Tensor::arange(5, (Kind::Float, Device::Cpu)) * (0.1 * x) - 0.3;
                let d = Tensor::arange(3, (Kind::Float, Device::Cpu)) * -0.2 + (0.05 * x);
                let s = (&vars[0] * c).sum(Kind::Float)
                    + (vars[1].to_kind(Kind::Float) * d).sum(Kind::Float);
                (&s * &s / 6.0).backward();
                params.accumulate_grads();
            }
            params.step(0.05, 1.0).unwrap();
        }
    }

    fn masters(params: &TrainableParams) -> Vec<f32> {
        let weights = params.weights().unwrap();
        ["a.weight", "b.weight"]
            .iter()
            .flat_map(|name| Vec::<f32>::try_from(&weights[*name]).unwrap())
            .collect()
    }

    fn assert_near(got: &[f32], want: &[f32], what: &str) {
        let diff = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "{what}: {got:?} against {want:?}");
    }

    #[test]
    fn zero1_ranks_hold_a_chunk_of_the_state_and_step_as_one_process() {
        let one = crate::distributed::on_ranks(1, |comm| {
            let (mut params, vars) = two_kinds(comm);
            train_share(&mut params, &vars, 0..3);
            masters(&params)
        });
        for world in [2, 3] {
            let ranks = crate::distributed::on_ranks(world, |comm| {
                let (mut params, vars) = two_kinds(comm);
                train_share(&mut params, &vars, 0..3);
                let moments: Vec<i64> = params
                    .groups
                    .iter()
                    .map(|g| g.adam.exp_avg.numel() as i64)
                    .collect();
                let master_lens: Vec<i64> = params
                    .groups
                    .iter()
                    .map(|g| g.weights.numel() as i64)
                    .collect();
                // The bf16 copy the model computes with is whole and the same on every rank.
                let compute = Vec::<f32>::try_from(&vars[1].to_kind(Kind::Float)).unwrap();
                (masters(&params), moments, master_lens, compute)
            });
            let chunks = |len: i64| FlatShards::new(len, world).chunk;
            for (rank, (weights, moments, master_lens, compute)) in ranks.iter().enumerate() {
                assert_near(weights, &one[0], &format!("rank {rank} of {world}"));
                assert_eq!(
                    moments,
                    &vec![chunks(5), chunks(3)],
                    "moments of rank {rank} of {world}"
                );
                // f32 variables are their own weights (whole); bf16 ones keep a master chunk.
                assert_eq!(
                    master_lens,
                    &vec![FlatShards::new(5, world).padded, chunks(3)]
                );
                assert_eq!(compute, &ranks[0].3);
            }
        }
    }

    #[test]
    fn a_checkpoint_written_by_some_ranks_resumes_on_any_number() {
        let dir = tempfile::tempdir().unwrap();
        let uninterrupted = crate::distributed::on_ranks(1, |comm| {
            let (mut params, vars) = two_kinds(comm);
            train_share(&mut params, &vars, 0..3);
            masters(&params)
        });
        crate::distributed::on_ranks(2, |comm| {
            let (mut params, vars) = two_kinds(comm);
            train_share(&mut params, &vars, 0..2);
            params.save(dir.path()).unwrap();
        });
        for world in [1, 3] {
            let resumed = crate::distributed::on_ranks(world, |comm| {
                let (mut params, vars) = two_kinds(comm);
                params.load(dir.path()).unwrap();
                train_share(&mut params, &vars, 2..3);
                masters(&params)
            });
            for weights in &resumed {
                assert_near(
                    weights,
                    &uninterrupted[0],
                    &format!("resumed on {world} ranks"),
                );
            }
        }
    }

    #[test]
    fn a_rank_that_dies_before_the_step_fails_the_others_step() {
        let errors = crate::distributed::on_ranks(2, |comm| {
            let (mut params, vars) = two_kinds(comm);
            if params.comm.rank() == 1 {
                return None;
            }
            (vars[0].sum(Kind::Float)).backward();
            Some(params.step(0.05, 1.0).unwrap_err().to_string())
        });
        let message = errors[0].as_ref().unwrap();
        assert!(message.contains("rank 1 left the group"), "{message}");
    }
}
