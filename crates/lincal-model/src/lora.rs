//! LoRA (Hu et al. 2021) as PEFT implements it: a frozen linear layer `W` gains a trainable
//! low-rank update, `y = W x + (alpha / r) · B A dropout(x)`, with `A` `[r, in]` drawn like
//! PEFT (kaiming-uniform with a = √5, i.e. U(±1/√in)) and `B` `[out, r]` zero, so a fresh
//! adapter leaves the model unchanged. Adapters live in their own `VarStore` in f32 (PEFT's
//! `autocast_adapter_dtype`), apart from the base weights, which stay as loaded; their update
//! is computed in the activations' precision, as under autocast.
//!
//! The decoders build their projections with [`linear`]. Adapters are attached while a model
//! is built inside [`with_lora`], which returns the model and its [`LoraAdapters`]:
//!
//! ```no_run
//! # use lincal_model::{CausalLm, lora};
//! # fn load(dir: &std::path::Path) -> lincal_model::Result<()> {
//! let config = lora::LoraConfig {
//!     r: 8,
//!     alpha: 16.0,
//!     dropout: 0.05,
//!     target_modules: vec!["q_proj".into(), "v_proj".into()],
//! };
//! let device = tch::Device::Cpu;
//! let (model, adapters) = lora::with_lora(&config, device, 0, || CausalLm::load(dir, device, None))?;
//! # Ok(())
//! # }
//! ```
//!
//! Outside `with_lora` the layer is a plain linear layer. Adapters are saved in PEFT's layout
//! (`adapter_config.json`, `adapter_model.safetensors` with
//! `base_model.model.<module>.lora_A.weight` names) or merged into the base weights.

use crate::checkpoint::write_safetensors_file;
use crate::error::{ModelError, Result};
use crate::fsutil::write_atomic;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tch::{Device, Kind, Tensor, nn};

/// The adapter file names PEFT reads.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT prefixes every module name with the wrapper's path to the base model.
const PEFT_PREFIX: &str = "base_model.model.";

/// Which layers get adapters and how large they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r` of the update.
    pub r: i64,
    /// The update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    #[serde(default)]
    pub dropout: f64,
    /// Module names as in Hugging Face checkpoints: `q_proj`, `k_proj`, `v_proj`, `o_proj`,
    /// `gate_proj`, `up_proj`, `down_proj` (Llama); `query_key_value`, `dense`,
    /// `dense_h_to_4h`, `dense_4h_to_h` (GPT-NeoX). A module matches when its full name
    /// equals an entry or ends with `.` and the entry, as in PEFT.
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    pub fn validate(&self) -> Result<()> {
        let problem = if self.r < 1 {
            format!("lora.r must be at least 1, got {}", self.r)
        } else if !(self.alpha.is_finite() && self.alpha > 0.0) {
            format!("lora.alpha must be a positive number, got {}", self.alpha)
        } else if !(0.0..1.0).contains(&self.dropout) {
            format!("lora.dropout must be in [0, 1), got {}", self.dropout)
        } else if self.target_modules.is_empty() {
            "lora.target_modules is empty; name the layers to adapt, e.g. [\"q_proj\", \"v_proj\"]"
                .into()
        } else {
            return Ok(());
        };
        Err(ModelError::Invalid(problem))
    }

    fn targets(&self, module: &str) -> bool {
        self.target_modules
            .iter()
            .any(|t| module == t || module.ends_with(&format!(".{t}")))
    }

    /// Reads PEFT's `adapter_config.json` in `dir`.
    pub fn from_peft_dir(dir: &Path) -> Result<Self> {
        let path = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let bad = |message: String| ModelError::Config {
            path: path.clone(),
            message,
        };
        let peft: PeftConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if peft.peft_type != "LORA" {
            return Err(bad(format!(
                "peft_type is \"{}\"; only LORA adapters are supported",
                peft.peft_type
            )));
        }
        if peft.use_dora || peft.use_rslora || peft.fan_in_fan_out {
            return Err(bad(
                "use_dora, use_rslora and fan_in_fan_out variants are not supported; \
                 train a plain LoRA adapter"
                    .into(),
            ));
        }
        let target_modules = match peft.target_modules {
            serde_json::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>(),
            _ => None,
        }
        .ok_or_else(|| {
            bad("target_modules must be a list of module names \
                 (regular expressions are not supported)"
                .into())
        })?;
        let config = LoraConfig {
            r: peft.r,
            alpha: peft.lora_alpha,
            dropout: peft.lora_dropout,
            target_modules,
        };
        config.validate().map_err(|e| bad(e.to_string()))?;
        Ok(config)
    }
}

/// The subset of PEFT's `LoraConfig` that lincal reads and writes.
#[derive(Serialize, Deserialize)]
struct PeftConfig {
    peft_type: String,
    #[serde(default)]
    task_type: Option<String>,
    r: i64,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    target_modules: serde_json::Value,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    inference_mode: bool,
}

/// Flags shared by every adapter of one model.
#[derive(Debug)]
struct Switches {
    enabled: AtomicBool,
    training: AtomicBool,
}

#[derive(Debug)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    scaling: f64,
    dropout: f64,
    switches: Arc<Switches>,
    /// `A` and `scaling·B` in the activations' precision, one entry for each
    /// [`with_frozen_adapters`] call and precision (see [`Adapter::factors`]).
    factors: Mutex<Vec<Factors>>,
}

/// An adapter's cast factors for one [`with_frozen_adapters`] call and precision.
#[derive(Debug)]
struct Factors {
    scope: u64,
    kind: Kind,
    a: Tensor,
    up: Tensor,
}

thread_local! {
    /// The [`with_frozen_adapters`] call running on this thread (0: none).
    static FROZEN_SCOPE: Cell<u64> = const { Cell::new(0) };
}

/// The [`with_frozen_adapters`] calls running on any thread. Their factors must outlive
/// them: CUDA graphs recorded in a call read the factors by address at every replay.
static LIVE_SCOPES: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Runs `f`, in which the caller promises that no adapter changes (generation): each adapter
/// casts its factors once for all of `f`'s passes that record no gradient, instead of in
/// every pass. A 7B decode step with seven adapted projections a layer would otherwise launch
/// 672 small kernels to form them again, each time from the same values. Calls may nest and
/// run on several threads; each has its own factors. Its passes without gradients also
/// compute joined projections as one product (see [`joined_weights`]).
pub fn with_frozen_adapters<T>(f: impl FnOnce() -> T) -> T {
    static NEXT_SCOPE: AtomicU64 = AtomicU64::new(1);
    let scope = NEXT_SCOPE.fetch_add(1, Ordering::Relaxed);
    let outer = FROZEN_SCOPE.replace(scope);
    lock(&LIVE_SCOPES).push(scope);
    struct End(u64, u64);
    impl Drop for End {
        fn drop(&mut self) {
            lock(&LIVE_SCOPES).retain(|&live| live != self.0);
            FROZEN_SCOPE.set(self.1);
        }
    }
    let _end = End(scope, outer);
    f()
}

/// A lock whose data stays usable after a panic elsewhere (nothing here is left half-written).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether autograd records operations on this thread (tch reads the flag only to set it).
fn grad_enabled() -> bool {
    // The C wrapper that tch's torch-sys compiles into every binary that uses tch.
    unsafe extern "C" {
        fn at_grad_set_enabled(enabled: std::ffi::c_int) -> std::ffi::c_int;
    }
    // SAFETY: sets the thread's grad mode and puts the previous value straight back.
    unsafe {
        let previous = at_grad_set_enabled(0);
        at_grad_set_enabled(previous);
        previous != 0
    }
}

impl Adapter {
    /// `A` and `scaling·B` cast to `kind` for the update's products: formed in every pass
    /// that records gradients (the casts carry them back to the f32 adapters) or runs outside
    /// a [`with_frozen_adapters`] call, else once for that call. Factors of calls that have
    /// ended are dropped here.
    fn factors(&self, kind: Kind) -> (Tensor, Tensor) {
        let form = || (self.a.to_kind(kind), (&self.b * self.scaling).to_kind(kind));
        let scope = FROZEN_SCOPE.get();
        if scope == 0 || grad_enabled() {
            return form();
        }
        let mut cached = lock(&self.factors);
        let live = lock(&LIVE_SCOPES);
        cached.retain(|f| live.contains(&f.scope));
        drop(live);
        if let Some(f) = cached.iter().find(|f| f.scope == scope && f.kind == kind) {
            return (f.a.shallow_clone(), f.up.shallow_clone());
        }
        let (a, up) = form();
        cached.push(Factors {
            scope,
            kind,
            a: a.shallow_clone(),
            up: up.shallow_clone(),
        });
        (a, up)
    }
}

/// A linear layer `y = x Wᵀ + b`, optionally with a LoRA adapter.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    adapter: Option<Adapter>,
}

impl nn::Module for Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.add_update(x, x.linear(&self.weight, self.bias.as_ref()))
    }
}

impl Linear {
    /// `out`, this layer's base product for input `x`, plus its adapter's update when it has
    /// one switched on.
    fn add_update(&self, x: &Tensor, out: Tensor) -> Tensor {
        match &self.adapter {
            Some(adapter) if adapter.switches.enabled.load(Ordering::Relaxed) => {
                // The update runs in the activations' precision, as PEFT's does under autocast
                // (the f32 adapters are cast for their products, and their gradients come back
                // through the casts in f32), with the scale folded into B and the sum formed by
                // the second product itself: no f32 copy of the activations, which cost a
                // bf16 7B more time and memory than the adapters' own products.
                let training = adapter.switches.training.load(Ordering::Relaxed);
                let (a, up) = adapter.factors(x.kind());
                let h = x.dropout(adapter.dropout, training);
                let down = h.linear::<Tensor>(&a, None);
                let (rank, shape) = (adapter.a.size()[0], out.size());
                out.reshape([-1, shape[shape.len() - 1]])
                    .addmm(&down.reshape([-1, rank]), &up.tr())
                    .reshape(shape.as_slice())
            }
            _ => out,
        }
    }
}

/// Moves the weights of `layers`, linear layers that read the same input (a Llama layer's
/// q, k and v projections; its gate and up projections), into one buffer, back to back in
/// this order, and their biases (when all have one) into another, so that [`forward_joined`]
/// can compute them as one matrix product. Values, names and gradients stay each layer's.
pub fn store_joined(layers: &[&Linear]) {
    tch::no_grad(|| {
        let weights: Vec<&Tensor> = layers.iter().map(|l| &l.weight).collect();
        move_into_one_buffer(&weights);
        let biases: Option<Vec<&Tensor>> = layers.iter().map(|l| l.bias.as_ref()).collect();
        if let Some(biases) = biases {
            move_into_one_buffer(&biases);
        }
    });
}

/// Moves `tensors` into one new buffer, back to back, unless they already lie so.
fn move_into_one_buffer(tensors: &[&Tensor]) {
    if joined(tensors).is_some() {
        return;
    }
    let flat: Vec<Tensor> = tensors.iter().map(|t| t.reshape([-1])).collect();
    let buffer = Tensor::cat(&flat, 0);
    let mut offset = 0;
    for t in tensors {
        let numel = t.numel() as i64;
        // `set_data` points every handle to the variable (the `VarStore`'s, this layer's) at
        // the buffer; a later `set_data` (a cast, the optimizer's flat buffers) moves it away,
        // which `joined` notices.
        t.shallow_clone()
            .set_data(&buffer.narrow(0, offset, numel).view(t.size().as_slice()));
        offset += numel;
    }
}

/// The outputs of `layers` (see [`store_joined`]) for the same input `x`, each with its
/// adapter's update: one product over their joined weights where [`joined_weights`] gives
/// them, else one product each, as [`Linear`]'s own forward. At decode shapes (a few hundred
/// rows) one wide product keeps more of the GPU busy than three narrow ones.
pub fn forward_joined(layers: &[&Linear], x: &Tensor) -> Vec<Tensor> {
    let base: Vec<Tensor> = match joined_weights(layers) {
        Some((weight, bias)) => {
            let widths: Vec<i64> = layers.iter().map(|l| l.weight.size()[0]).collect();
            x.linear(&weight, bias.as_ref())
                .split_with_sizes(&widths, -1)
        }
        None => layers
            .iter()
            .map(|l| x.linear(&l.weight, l.bias.as_ref()))
            .collect(),
    };
    layers
        .iter()
        .zip(base)
        .map(|(layer, out)| layer.add_update(x, out))
        .collect()
}

/// The joined weight (and bias) of `layers` when this pass computes them as one product: a
/// generation's pass (inside [`with_frozen_adapters`], recording no gradient) while they lie
/// back to back in one buffer. Every other pass takes one product each, so that passes that
/// must agree bit for bit do (a pass that trains and the one that scored for it, PPO's old
/// log-probs; a policy and its frozen reference copy): a wider product may sum in another
/// order. Generation's own log-probs are compared with those passes only within rounding.
fn joined_weights(layers: &[&Linear]) -> Option<(Tensor, Option<Tensor>)> {
    if FROZEN_SCOPE.get() == 0 || grad_enabled() {
        return None;
    }
    let weights: Vec<&Tensor> = layers.iter().map(|l| &l.weight).collect();
    let weight = joined(&weights)?;
    let biases: Vec<&Tensor> = layers.iter().filter_map(|l| l.bias.as_ref()).collect();
    let bias = match biases.len() {
        0 => None,
        n if n == layers.len() => Some(joined(&biases)?),
        _ => return None,
    };
    Some((weight, bias))
}

/// `tensors` (same kind, device and trailing shape, each contiguous) as one tensor joined
/// along the first axis, without a copy, when they lie back to back in this order in one
/// storage; `None` otherwise. The view carries no gradient.
fn joined(tensors: &[&Tensor]) -> Option<Tensor> {
    let first = tensors.first()?;
    let (kind, device, trailing) = (first.kind(), first.device(), &first.size()[1..]);
    let mut next = first.data_ptr() as usize;
    for t in tensors {
        let same_layout = t.kind() == kind
            && t.device() == device
            && t.size()[1..] == *trailing
            && t.is_contiguous()
            && t.data_ptr() as usize == next;
        if !same_layout {
            return None;
        }
        next += t.numel() * kind.elt_size_in_bytes();
    }
    let rows: i64 = tensors.iter().map(|t| t.size()[0]).sum();
    let mut size = vec![rows];
    size.extend_from_slice(trailing);
    // Back to back in memory could still be two allocations side by side: the view over the
    // first one's storage is then out of its bounds, which libtorch refuses.
    first
        .detach()
        .f_as_strided(size.as_slice(), first.stride().as_slice(), None)
        .ok()
}

/// The adapters being created by the model build running inside [`with_lora`] on this thread.
struct PendingAdapters {
    config: LoraConfig,
    vs: nn::VarStore,
    modules: Vec<String>,
    switches: Arc<Switches>,
    /// Draws the `A` matrices; a seeded stream of our own rather than libtorch's global
    /// generator, so that the same seed gives the same adapters whatever else runs.
    rng: rand_chacha::ChaCha8Rng,
}

thread_local! {
    static PENDING: RefCell<Option<PendingAdapters>> = const { RefCell::new(None) };
}

/// A linear layer named by `path` (its Hugging Face module name), with an adapter when a
/// [`with_lora`] build targets it. The base weight starts as tch's default (checkpoints are
/// normally loaded right after).
pub fn linear(path: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> Linear {
    let base = nn::linear(
        &path,
        in_dim,
        out_dim,
        nn::LinearConfig {
            bias,
            ..Default::default()
        },
    );
    let module = path.components().collect::<Vec<_>>().join(".");
    let adapter = PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        let pending = pending.as_mut().filter(|p| p.config.targets(&module))?;
        let root = pending.vs.root();
        let node = module.split('.').fold(root, |p, c| p / c);
        let bound = 1.0 / (in_dim as f32).sqrt();
        let values: Vec<f32> = (0..pending.config.r * in_dim)
            .map(|_| pending.rng.random_range(-bound..bound))
            .collect();
        let a = (&node / "lora_A").var_copy(
            "weight",
            &Tensor::from_slice(&values).view([pending.config.r, in_dim]),
        );
        let b =
            (&node / "lora_B").var("weight", &[out_dim, pending.config.r], nn::Init::Const(0.0));
        pending.modules.push(module.clone());
        Some(Adapter {
            a,
            b,
            scaling: pending.config.scaling(),
            dropout: pending.config.dropout,
            switches: pending.switches.clone(),
            factors: Mutex::new(Vec::new()),
        })
    });
    Linear {
        weight: base.ws,
        bias: base.bs,
        adapter,
    }
}

/// Clears the pending adapters when `with_lora` ends, even by a panic.
struct PendingGuard;

impl Drop for PendingGuard {
    fn drop(&mut self) {
        PENDING.with(|p| p.borrow_mut().take());
    }
}

/// Runs `build` (which constructs or loads a model) with adapters attached to every targeted
/// linear layer; the adapters' `VarStore` is on `device`, in f32, trainable, and `seed` draws
/// their `A` matrices. Fails when no layer matched `config.target_modules`.
pub fn with_lora<T>(
    config: &LoraConfig,
    device: Device,
    seed: u64,
    build: impl FnOnce() -> Result<T>,
) -> Result<(T, LoraAdapters)> {
    config.validate()?;
    let switches = Arc::new(Switches {
        enabled: AtomicBool::new(true),
        training: AtomicBool::new(false),
    });
    let started = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_some() {
            return false;
        }
        *p = Some(PendingAdapters {
            config: config.clone(),
            vs: nn::VarStore::new(device),
            modules: Vec::new(),
            switches: switches.clone(),
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        });
        true
    });
    if !started {
        return Err(ModelError::Invalid(
            "with_lora calls cannot be nested".into(),
        ));
    }
    let guard = PendingGuard;
    let built = build()?;
    let pending = PENDING.with(|p| p.borrow_mut().take()).expect("set above");
    drop(guard);
    if pending.modules.is_empty() {
        return Err(ModelError::Invalid(format!(
            "lora.target_modules {:?} matched no linear layer of this model; \
             Llama layers are q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj and \
             GPT-NeoX layers are query_key_value, dense, dense_h_to_4h, dense_4h_to_h",
            config.target_modules
        )));
    }
    Ok((
        built,
        LoraAdapters {
            config: pending.config,
            vs: pending.vs,
            modules: pending.modules,
            switches,
            merged: false,
        },
    ))
}

/// The adapters of one model: trainable parameters, on/off switch, saving and merging.
pub struct LoraAdapters {
    config: LoraConfig,
    vs: nn::VarStore,
    /// Full module names (`model.layers.0.self_attn.q_proj`) in construction order.
    modules: Vec<String>,
    switches: Arc<Switches>,
    merged: bool,
}

impl LoraAdapters {
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The adapter parameters, named `<module>.lora_A.weight` and `<module>.lora_B.weight`.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn modules(&self) -> &[String] {
        &self.modules
    }

    /// With adapters off the model computes exactly its base weights (PPO's reference policy).
    pub fn set_enabled(&self, enabled: bool) {
        self.switches
            .enabled
            .store(enabled && !self.merged, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.switches.enabled.load(Ordering::Relaxed)
    }

    /// Dropout applies only in training mode.
    pub fn set_training(&self, training: bool) {
        self.switches.training.store(training, Ordering::Relaxed);
    }

    /// Runs `f` with the adapters off, then restores the previous state.
    pub fn without_adapters<R>(&self, f: impl FnOnce() -> R) -> R {
        let was = self.enabled();
        self.set_enabled(false);
        let result = f();
        self.set_enabled(was);
        result
    }

    fn adapter_tensors(&self, module: &str) -> (Tensor, Tensor) {
        let vars = self.vs.variables();
        (
            vars[&format!("{module}.lora_A.weight")].shallow_clone(),
            vars[&format!("{module}.lora_B.weight")].shallow_clone(),
        )
    }

    /// Adds `(alpha / r) · B A` to each adapted weight of `base` (the model's `VarStore`) and
    /// turns the adapters off for good, as PEFT's `merge_and_unload`; the model then computes
    /// the same function without adapters and saves as a plain Hugging Face checkpoint.
    pub fn merge_into(&mut self, base: &nn::VarStore) -> Result<()> {
        if self.merged {
            return Err(ModelError::Invalid(
                "the adapters are already merged into the base weights".into(),
            ));
        }
        let weights = base.variables();
        self.add_products(
            |name| weights.get(name).map(Tensor::shallow_clone),
            "merge into the model the adapters were built with",
        )?;
        self.merged = true;
        self.set_enabled(false);
        Ok(())
    }

    /// Adds `(alpha / r) · B A` to each adapted weight in `weights` (copies of the model's,
    /// as [`crate::CausalLm::f32_weights`] makes): what [`Self::merge_into`] does to the model,
    /// done to copies, so the model and its adapters stay as they are (a snapshot in the
    /// middle of training).
    pub fn merge_into_copies(&self, weights: &mut BTreeMap<String, Tensor>) -> Result<()> {
        if self.merged {
            return Ok(());
        }
        self.add_products(
            |name| weights.get(name).map(Tensor::shallow_clone),
            "merge into copies of the model the adapters were built with",
        )
    }

    /// Adds `(alpha / r) · B A` in place to the weight of each adapted module, which
    /// `weight_of` gives by name (a handle sharing its storage); `remedy` says what to do when
    /// one is missing.
    pub(crate) fn add_products(
        &self,
        weight_of: impl Fn(&str) -> Option<Tensor>,
        remedy: &str,
    ) -> Result<()> {
        for module in &self.modules {
            let name = format!("{module}.weight");
            let mut weight = weight_of(&name).ok_or_else(|| {
                ModelError::Invalid(format!(
                    "there is no `{name}` to merge the adapter into; {remedy}"
                ))
            })?;
            let (a, b) = self.adapter_tensors(module);
            tch::no_grad(|| {
                let delta = b.matmul(&a) * self.config.scaling();
                let _ = weight.g_add_(&delta.to_device(weight.device()));
            });
        }
        Ok(())
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` in PEFT's layout into
    /// `dir` (which must exist). `base_model` is recorded as `base_model_name_or_path`.
    pub fn save_peft(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        let config = PeftConfig {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            r: self.config.r,
            lora_alpha: self.config.alpha,
            lora_dropout: self.config.dropout,
            target_modules: self.config.target_modules.clone().into(),
            base_model_name_or_path: base_model.map(str::to_string),
            bias: Some("none".into()),
            fan_in_fan_out: false,
            use_rslora: false,
            use_dora: false,
            inference_mode: true,
        };
        let named: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(name, t)| (format!("{PEFT_PREFIX}{name}"), t))
            .collect();
        let mut refs: Vec<(&String, &Tensor)> = named.iter().map(|(n, t)| (n, t)).collect();
        refs.sort_by(|x, y| x.0.cmp(y.0));
        write_safetensors_file(&dir.join(ADAPTER_WEIGHTS_FILE), &refs)?;
        write_atomic(
            &dir.join(ADAPTER_CONFIG_FILE),
            serde_json::to_string_pretty(&config)
                .expect("json")
                .as_bytes(),
        )
    }

    /// Loads adapter weights saved by [`Self::save_peft`] (or PEFT) from `dir`; its config
    /// must equal this one's rank, alpha and target modules.
    pub fn load_peft(&self, dir: &Path) -> Result<()> {
        let stored = LoraConfig::from_peft_dir(dir)?;
        if (stored.r, stored.alpha, &stored.target_modules)
            != (
                self.config.r,
                self.config.alpha,
                &self.config.target_modules,
            )
        {
            return Err(ModelError::Config {
                path: dir.join(ADAPTER_CONFIG_FILE),
                message: format!(
                    "adapter has r {}, alpha {}, targets {:?}, but the model was built with r {}, \
                     alpha {}, targets {:?}",
                    stored.r,
                    stored.alpha,
                    stored.target_modules,
                    self.config.r,
                    self.config.alpha,
                    self.config.target_modules
                ),
            });
        }
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        let stored: HashMap<String, Tensor> = Tensor::read_safetensors(&path)
            .map_err(|e| ModelError::Checkpoint {
                path: path.clone(),
                message: format!("not a readable safetensors file ({e})"),
            })?
            .into_iter()
            .collect();
        for (name, var) in self.vs.variables() {
            let key = format!("{PEFT_PREFIX}{name}");
            let tensor = stored.get(&key).ok_or_else(|| ModelError::MissingTensor {
                name: key.clone(),
                path: path.clone(),
            })?;
            if tensor.size() != var.size() {
                return Err(ModelError::ShapeMismatch {
                    name: key,
                    path,
                    expected: var.size(),
                    actual: tensor.size(),
                });
            }
            tch::no_grad(|| var.shallow_clone().f_copy_(tensor))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three layers reading 6 inputs, like q, k and v, with integer weights and biases, so
    /// that every product is exact whatever order the BLAS library sums in.
    fn projections(vs: &nn::VarStore, bias: bool) -> Vec<Linear> {
        let layers: Vec<Linear> = [("q", 4), ("k", 2), ("v", 2)]
            .into_iter()
            .map(|(name, out)| linear(vs.root() / name, 6, out, bias))
            .collect();
        tch::no_grad(|| {
            for (i, layer) in layers.iter().enumerate() {
                let values = |t: &Tensor| {
                    let n = t.numel() as i64;
                    (Tensor::arange(n, (Kind::Float, Device::Cpu)) * (i as f64 + 1.0))
                        .remainder(7.0)
                        - 3.0
                };
                layer
                    .weight
                    .shallow_clone()
                    .copy_(&values(&layer.weight).view_as(&layer.weight));
                if let Some(b) = &layer.bias {
                    b.shallow_clone().copy_(&values(b));
                }
            }
        });
        layers
    }

    fn input() -> Tensor {
        (Tensor::arange(2 * 3 * 6, (Kind::Float, Device::Cpu)).remainder(5.0) - 2.0).view([2, 3, 6])
    }

    fn separate(layers: &[&Linear], x: &Tensor) -> Vec<Tensor> {
        layers.iter().map(|l| nn::Module::forward(*l, x)).collect()
    }

    /// Whether a pass without gradients in a generation call joins the products.
    fn joins_in_generation(layers: &[&Linear]) -> bool {
        with_frozen_adapters(|| tch::no_grad(|| joined_weights(layers).is_some()))
    }

    #[test]
    fn joined_projections_are_one_product_with_each_layers_values() {
        for bias in [false, true] {
            let vs = nn::VarStore::new(Device::Cpu);
            let layers = projections(&vs, bias);
            let refs: Vec<&Linear> = layers.iter().collect();
            assert!(
                !joins_in_generation(&refs),
                "separately allocated weights are not joined"
            );
            let x = input();
            let want = tch::no_grad(|| separate(&refs, &x));
            store_joined(&refs);
            let (weight, joined_bias) = with_frozen_adapters(|| {
                tch::no_grad(|| joined_weights(&refs)).expect("stored back to back")
            });
            let weights: Vec<&Tensor> = refs.iter().map(|l| &l.weight).collect();
            assert!(weight.equal(&Tensor::cat(&weights, 0)));
            assert_eq!(joined_bias.is_some(), bias);
            // The VarStore's handles see the moved storage.
            assert_eq!(
                vs.variables()["k.weight"].data_ptr(),
                layers[1].weight.data_ptr()
            );
            let got = with_frozen_adapters(|| tch::no_grad(|| forward_joined(&refs, &x)));
            for (got, want) in got.iter().zip(&want) {
                assert!(got.equal(want), "bias {bias}: {got:?} != {want:?}");
            }
        }
    }

    /// Only a generation call's passes without gradients join the products, whether the
    /// weights are trainable or frozen; a pass that records gradients computes each product
    /// on its own and every weight gets its gradient.
    #[test]
    fn projections_are_joined_only_in_generation() {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let layers = projections(&vs, true);
        let refs: Vec<&Linear> = layers.iter().collect();
        store_joined(&refs);
        assert!(joins_in_generation(&refs));
        assert!(
            tch::no_grad(|| joined_weights(&refs)).is_none(),
            "outside generation"
        );
        assert!(
            with_frozen_adapters(|| joined_weights(&refs)).is_none(),
            "with gradients"
        );
        // The loss sums every output: each weight's gradient is the column sums of the input.
        let x = input();
        let outputs = with_frozen_adapters(|| forward_joined(&refs, &x));
        Tensor::cat(&outputs, -1).sum(Kind::Float).backward();
        let column_sums = x.sum_dim_intlist([0, 1].as_slice(), false, Kind::Float);
        for layer in &layers {
            let grad = layer.weight.grad();
            assert!(grad.defined(), "a weight got no gradient");
            assert!(grad.equal(&column_sums.expand_as(&layer.weight)));
        }
        vs.freeze();
        assert!(
            tch::no_grad(|| joined_weights(&refs)).is_none(),
            "frozen, outside generation"
        );
        assert!(joins_in_generation(&refs));
    }

    /// The optimizer's flat buffers move a weight elsewhere (`set_data`): the products are
    /// formed one by one again, with the same values.
    #[test]
    fn a_moved_weight_is_no_longer_joined() {
        let vs = nn::VarStore::new(Device::Cpu);
        let layers = projections(&vs, false);
        let refs: Vec<&Linear> = layers.iter().collect();
        store_joined(&refs);
        let x = input();
        let want = tch::no_grad(|| separate(&refs, &x));
        tch::no_grad(|| {
            let moved = layers[1].weight.copy();
            layers[1].weight.shallow_clone().set_data(&moved);
        });
        assert!(!joins_in_generation(&refs));
        let got = with_frozen_adapters(|| tch::no_grad(|| forward_joined(&refs, &x)));
        for (got, want) in got.iter().zip(&want) {
            assert!(got.equal(want));
        }
    }

    #[test]
    fn joined_projections_add_each_layers_adapter() {
        let config = LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            target_modules: vec!["q".into(), "v".into()],
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let (layers, adapters) =
            with_lora(&config, Device::Cpu, 3, || Ok(projections(&vs, false))).unwrap();
        tch::no_grad(|| {
            for (name, b) in adapters.var_store().variables() {
                if name.contains("lora_B") {
                    b.shallow_clone().copy_(&(b.ones_like() * 0.5));
                }
            }
        });
        let refs: Vec<&Linear> = layers.iter().collect();
        let x = input();
        let want = tch::no_grad(|| separate(&refs, &x));
        let bare = adapters.without_adapters(|| tch::no_grad(|| separate(&refs, &x)));
        store_joined(&refs);
        assert!(joins_in_generation(&refs));
        let got = with_frozen_adapters(|| tch::no_grad(|| forward_joined(&refs, &x)));
        for (i, (got, want)) in got.iter().zip(&want).enumerate() {
            assert!(got.equal(want), "layer {i}");
            // q and v carry an update, k none.
            assert_eq!(got.equal(&bare[i]), i == 1, "layer {i}");
        }
    }
}
