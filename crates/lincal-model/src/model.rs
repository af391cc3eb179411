//! A causal language model of any supported architecture, with its weights in a `VarStore`
//! whose names are the Hugging Face parameter names.

use crate::checkpoint::{SafetensorsCheckpoint, save_safetensors};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::fsutil::write_atomic;
use crate::gpt_neox::GptNeoX;
use crate::layers::{KvCache, LayerContext};
use crate::llama::Llama;
use crate::lora::LoraAdapters;
use crate::offload::HostCopy;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor, nn};

/// transformers' default shard size.
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5 << 30;

/// One architecture's network, as the forward passes use it: embedding, decoder layers, final
/// norm and output projection.
pub(crate) trait Decoder: Send {
    fn num_layers(&self) -> usize;
    fn embed(&self, input_ids: &Tensor) -> Tensor;
    fn layer_context(&self, positions: &Tensor, mask: Option<&Tensor>, kind: Kind) -> LayerContext;
    /// Decoder layer `index` on hidden states `x` `[B, T, hidden]`; with a cache, the new keys
    /// and values are stored in it.
    fn layer(
        &self,
        index: usize,
        x: &Tensor,
        context: &LayerContext,
        cache: Option<&mut KvCache>,
    ) -> Tensor;
    fn final_norm(&self, x: &Tensor) -> Tensor;
    /// Puts the weights of projections that read the same input back to back in memory, so
    /// that generation's passes compute them as one product (see
    /// [`crate::lora::forward_joined`]). Called after the weights are created or cast.
    fn store_projections_joined(&self) {}
    /// The `[V, hidden]` matrix that maps final hidden states to logits (tied to the input
    /// embeddings when the checkpoint has no separate head).
    fn output_weight(&self) -> &Tensor;
    fn new_cache(&self, batch: i64, max_len: i64) -> KvCache;
}

pub struct CausalLm {
    config: ModelConfig,
    vs: nn::VarStore,
    decoder: Box<dyn Decoder>,
    /// Whether generation replays CUDA graphs for decode steps (on a GPU, `cuda` builds).
    cuda_graphs: bool,
    /// Set by [`CausalLm::keep_host_copy`].
    host_copy: OnceLock<HostCopy>,
}

/// What [`CausalLm::forward_checkpointed`] keeps for the backward pass.
pub struct Checkpoints {
    input_ids: Tensor,
    context: LayerContext,
    /// The input of every recomputed decoder layer, without a graph.
    layer_inputs: Vec<Tensor>,
    /// The last recomputed layer's output (the embeddings' when none is) as a leaf: the
    /// backward pass of the loss and the kept layers stops there.
    boundary: Tensor,
    /// Layer `i` runs after reseeding libtorch's generator with `seed + i` (in both passes
    /// when recomputed), so that a recomputed layer draws the dropout masks (LoRA) of its
    /// first pass, as torch's checkpointing restores the RNG state.
    seed: i64,
}

impl CausalLm {
    /// A model with freshly initialised weights (drawn from libtorch's global generator), of
    /// the given precision, on `device`.
    pub fn new(mut config: ModelConfig, device: Device, kind: Kind) -> Self {
        config.set_torch_dtype(kind_name(kind));
        let mut vs = nn::VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let decoder: Box<dyn Decoder> = {
            let _rng = crate::lock_libtorch_rng();
            match &config {
                ModelConfig::Llama(c) => Box::new(Llama::new(&root, c)),
                ModelConfig::GptNeoX(c) => Box::new(GptNeoX::new(&root, c)),
            }
        };
        let model = CausalLm {
            config,
            vs,
            decoder,
            cuda_graphs: true,
            host_copy: OnceLock::new(),
        };
        model.store_projections_joined();
        model
    }

    /// See [`Decoder::store_projections_joined`]. The weights' old storage is free then, but
    /// libtorch keeps it cached in blocks of their sizes (9 GB for a 7B), which later
    /// allocations of other sizes rarely use and the driver counts as used: give it back.
    fn store_projections_joined(&self) {
        self.decoder.store_projections_joined();
        if self.vs.device().is_cuda() {
            crate::cuda_graph::empty_cache().expect("emptying libtorch's CUDA cache");
        }
    }

    /// Loads `dir/config.json` and the safetensors weights. `kind` `None` keeps the stored
    /// `torch_dtype` (f32 when absent).
    pub fn load(dir: &Path, device: Device, kind: Option<Kind>) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let kind = kind.unwrap_or_else(|| {
            config
                .torch_dtype()
                .and_then(kind_from_name)
                .unwrap_or(Kind::Float)
        });
        let checkpoint = SafetensorsCheckpoint::open(dir)?;
        let model = tch::no_grad(|| CausalLm::new(config, device, kind));
        let variables = model.vs.variables();
        checkpoint.load_into(&variables)?;
        // NaN or infinite weights generate garbage without a word: refuse them, once, here.
        let mut names: Vec<&String> = variables.keys().collect();
        names.sort();
        for name in names {
            let finite = tch::no_grad(|| variables[name].isfinite().all().int64_value(&[]) == 1);
            if !finite {
                return Err(ModelError::Checkpoint {
                    path: dir.to_path_buf(),
                    message: format!(
                        "tensor `{name}` holds NaN or infinite values; the checkpoint is damaged \
                         (or was saved from a diverged run)"
                    ),
                });
            }
        }
        Ok(model)
    }

    /// Writes `config.json`, `generation_config.json` and the weights into `dir` (which must
    /// exist), the HF layout transformers loads.
    pub fn save(&self, dir: &Path, max_shard_bytes: usize) -> Result<()> {
        let tensors: BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        self.save_weights(dir, &tensors, max_shard_bytes)
    }

    /// Every weight, copied to the CPU in f32: changing a copy leaves the model as it is.
    pub fn f32_weights(&self) -> BTreeMap<String, Tensor> {
        tch::no_grad(|| {
            self.vs
                .variables()
                .into_iter()
                .map(|(name, t)| {
                    let cast = t.to_device(tch::Device::Cpu).to_kind(Kind::Float);
                    // Already on the CPU in f32, the cast is the variable itself: copy it.
                    let copy = if cast.data_ptr() == t.data_ptr() {
                        cast.copy()
                    } else {
                        cast
                    };
                    (name, copy)
                })
                .collect()
        })
    }

    /// [`Self::save`] with other weights of this model's shapes and names in place of its own
    /// (a merged copy, say), leaving the model as it is.
    pub fn save_weights(
        &self,
        dir: &Path,
        tensors: &BTreeMap<String, Tensor>,
        max_shard_bytes: usize,
    ) -> Result<()> {
        save_safetensors(dir, tensors, max_shard_bytes)?;
        write_atomic(&dir.join("config.json"), self.config.to_json().as_bytes())?;
        let mut generation = serde_json::json!({ "do_sample": true });
        if let Some(eos) = self.config.eos_token_ids().first() {
            generation["eos_token_id"] = (*eos).into();
        }
        if let Some(pad) = self.config.pad_token_id() {
            generation["pad_token_id"] = pad.into();
        }
        write_atomic(
            &dir.join("generation_config.json"),
            serde_json::to_string_pretty(&generation)
                .expect("json")
                .as_bytes(),
        )
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Casts every weight to `kind` (e.g. bf16 for GPU work); the config follows. A cast to
    /// the weights' own kind leaves them where they are (after training, the optimizer's f32
    /// masters, which joining would copy).
    pub fn set_kind(&mut self, kind: Kind) {
        if kind != self.kind() {
            self.vs.set_kind(kind);
            self.store_projections_joined();
        }
        self.config.set_torch_dtype(kind_name(kind));
    }

    /// Keeps a copy of the weights in host memory (pinned on a GPU), so that
    /// [`Self::offload`] can give their device memory to other work while the model idles and
    /// [`Self::reload`] can bring them back. For a frozen model only: the copy is made once,
    /// and the weights must not change afterwards. A second call does nothing.
    pub fn keep_host_copy(&self) -> Result<()> {
        if self.host_copy.get().is_none() {
            let mut weights: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
            // Name order, so that the copy's layout does not depend on the map's.
            weights.sort_by(|a, b| a.0.cmp(&b.0));
            let copy = HostCopy::new(weights.into_iter().map(|(_, t)| t).collect(), self.device())?;
            let _ = self.host_copy.set(copy);
        }
        Ok(())
    }

    /// Frees the weights' device memory (they point at the host copy until [`Self::reload`]);
    /// running the model meanwhile is a programming error. Does nothing without a host copy
    /// or when already offloaded.
    pub fn offload(&self) {
        if let Some(copy) = self.host_copy.get()
            && copy.offload()
            && self.device().is_cuda()
        {
            // Back to the driver: the freed blocks have the weights' sizes, which the next
            // part's allocations (a KV cache's) rarely fit.
            crate::cuda_graph::empty_cache().expect("emptying libtorch's CUDA cache");
        }
    }

    /// Copies offloaded weights back to the model's device, generation's projections joined as
    /// after loading. Does nothing when they are there.
    pub fn reload(&self) {
        if let Some(copy) = self.host_copy.get()
            && copy.reload(self.device())
        {
            self.store_projections_joined();
        }
    }

    /// Runs `f` (generation) with `adapters` merged into the weights and off: one product a
    /// projection instead of the base product and the adapter's two. The merged weights then
    /// go: the model is offloaded, its host copy holding the base, so the next
    /// [`Self::reload`] brings back the exact base. Without a host copy (or when offloaded)
    /// `f` runs with the adapters as they are.
    pub fn with_merged_adapters<R>(
        &self,
        adapters: &LoraAdapters,
        f: impl FnOnce() -> R,
    ) -> Result<R> {
        if self.host_copy.get().is_none() || self.is_offloaded() {
            return Ok(f());
        }
        let weights = self.vs.variables();
        let merged = adapters.add_products(
            |name| weights.get(name).map(Tensor::shallow_clone),
            "merge into the model the adapters were built with",
        );
        let result = merged.map(|()| adapters.without_adapters(f));
        // Also after a failed merge, which may have changed some weights.
        self.offload();
        result
    }

    /// Whether the weights wait in host memory ([`Self::offload`]).
    pub fn is_offloaded(&self) -> bool {
        self.host_copy.get().is_some_and(HostCopy::is_offloaded)
    }

    /// Turns CUDA-graph decoding on (the default) or off, e.g. to compare with eager decoding.
    pub fn set_cuda_graphs(&mut self, enabled: bool) {
        self.cuda_graphs = enabled;
    }

    pub fn cuda_graphs(&self) -> bool {
        self.cuda_graphs
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn kind(&self) -> Kind {
        self.vs.root().kind()
    }

    /// Final hidden states `[B, T, hidden]` for `input_ids` `[B, T]` at `positions` `[B, T]`.
    /// `mask` is a boolean `[B, 1, T, S]` (see `layers::attention_mask`) or `None` for plain
    /// causal attention; with a cache (see `KvCache::set_window`), the new keys and values are
    /// stored in it and the mask covers its visible window.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        let layers = self.decoder.num_layers();
        let (x, _) = self.run_layers(input_ids, positions, mask, cache, layers, |_, _| {});
        self.decoder.final_norm(&x)
    }

    /// Embeds `input_ids` and runs the first `layers` decoder layers, calling
    /// `before_layer(index, input)` before each. Returns the last one's output and the
    /// layers' shared context.
    fn run_layers(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        layers: usize,
        mut before_layer: impl FnMut(usize, &Tensor),
    ) -> (Tensor, LayerContext) {
        let mut x = self.decoder.embed(input_ids);
        let context = self.decoder.layer_context(positions, mask, x.kind());
        for index in 0..layers {
            before_layer(index, &x);
            x = self
                .decoder
                .layer(index, &x, &context, cache.as_deref_mut());
        }
        (x, context)
    }

    /// [`Self::forward`] (without a cache) for training with gradient checkpointing: the first
    /// `recomputed` decoder layers keep only their input and the layers above keep their
    /// activations as a plain pass does (Megatron's recompute-num-layers; all layers when
    /// `recomputed` is at least their number). Back-propagate a loss computed from the
    /// returned hidden states (of this and other models' passes) with `loss.backward()`, which
    /// runs through the kept layers, then [`Self::backward_recomputed`] for each model.
    pub fn forward_checkpointed(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        recomputed: usize,
    ) -> (Tensor, Checkpoints) {
        let seed = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
        let layers = self.decoder.num_layers();
        let recomputed = recomputed.min(layers);
        let mut layer_inputs = Vec::with_capacity(recomputed);
        let (boundary, context) = tch::no_grad(|| {
            self.run_layers(input_ids, positions, mask, None, recomputed, |index, x| {
                seed_layer(seed, index);
                layer_inputs.push(x.shallow_clone());
            })
        });
        // A leaf: the kept layers' backward pass stops there and leaves its gradient.
        let boundary = boundary.set_requires_grad(true);
        let mut x = boundary.shallow_clone();
        for index in recomputed..layers {
            seed_layer(seed, index);
            x = self.decoder.layer(index, &x, &context, None);
        }
        let hidden = self.decoder.final_norm(&x);
        (
            hidden,
            Checkpoints {
                input_ids: input_ids.shallow_clone(),
                context,
                layer_inputs,
                boundary,
                seed,
            },
        )
    }

    /// Once the backward pass of a loss computed from the hidden states of
    /// [`Self::forward_checkpointed`] has run (through the kept layers, to the gradient it
    /// leaves at their boundary), back-propagates into the recomputed layers' weights: each is
    /// run again from its saved input, last layer first, and its backward pass takes the
    /// gradient of the layer above. A loss of several models' passes takes one call per
    /// model.
    pub fn backward_recomputed(&self, checkpoints: Checkpoints) {
        let Checkpoints {
            input_ids,
            context,
            mut layer_inputs,
            boundary,
            seed,
        } = checkpoints;
        let mut grad = boundary.grad();
        while let Some(input) = layer_inputs.pop() {
            let index = layer_inputs.len();
            let input = input.set_requires_grad(true);
            seed_layer(seed, index);
            let output = self.decoder.layer(index, &input, &context, None);
            // The gradient of sum(output · grad) with respect to output is grad itself.
            (output * &grad).sum(Kind::Float).backward();
            grad = input.grad();
        }
        let embedded = self.decoder.embed(&input_ids);
        if embedded.requires_grad() {
            (embedded * grad).sum(Kind::Float).backward();
        }
    }

    /// Next-token logits `[..., V]` of final hidden states `[..., hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden.matmul(&self.output_weight().tr())
    }

    /// The `[V, hidden]` weight behind [`Self::logits`], for losses that compute the logits
    /// a slice at a time.
    pub fn output_weight(&self) -> &Tensor {
        self.decoder.output_weight()
    }

    pub fn new_cache(&self, batch: i64, max_len: i64) -> KvCache {
        self.decoder.new_cache(batch, max_len)
    }

    /// Grows the vocabulary to `new_vocab` rows; new input and output embedding rows are the
    /// mean of the existing rows (SPEC 1.3, `stable_resize_token_embeddings`), so a new token
    /// such as "[PAD]" starts as an average token rather than as noise.
    pub fn resize_token_embeddings(&mut self, new_vocab: i64) -> Result<()> {
        let old_vocab = self.config.vocab_size();
        if new_vocab < old_vocab {
            return Err(ModelError::Invalid(format!(
                "cannot shrink the vocabulary from {old_vocab} to {new_vocab} rows"
            )));
        }
        let names: &[&str] = match &self.config {
            ModelConfig::Llama(_) => &["model.embed_tokens.weight", "lm_head.weight"],
            ModelConfig::GptNeoX(_) => &["gpt_neox.embed_in.weight", "embed_out.weight"],
        };
        let variables = self.vs.variables();
        tch::no_grad(|| {
            for name in names {
                if let Some(var) = variables.get(*name) {
                    let mean = var.mean_dim(0, true, Kind::Float).to_kind(var.kind());
                    let grown = Tensor::cat(
                        &[
                            var.shallow_clone(),
                            mean.expand([new_vocab - old_vocab, var.size()[1]], false),
                        ],
                        0,
                    );
                    // `set_data` swaps the storage behind every handle to this variable,
                    // the model's own included.
                    var.shallow_clone().set_data(&grown);
                }
            }
        });
        self.config.set_vocab_size(new_vocab);
        Ok(())
    }

    /// Sum of all parameters in f64 (the reference's checkpoint integrity check).
    pub fn parameter_sum(&self) -> f64 {
        self.vs
            .variables()
            .values()
            .map(|t| t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]))
            .sum()
    }
}

/// Reseeds libtorch's generator before decoder layer `index` of a checkpointed pass.
fn seed_layer(seed: i64, index: usize) {
    tch::manual_seed(seed.wrapping_add(index as i64));
}

pub fn kind_from_name(name: &str) -> Option<Kind> {
    Some(match name {
        "float32" | "f32" | "float" => Kind::Float,
        "bfloat16" | "bf16" => Kind::BFloat16,
        "float16" | "f16" | "half" => Kind::Half,
        _ => return None,
    })
}

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{attention_mask, positions_from_mask};
    use crate::lock_libtorch_rng;
    use crate::lora::{LoraConfig, with_lora};
    use crate::testing::{random_model, tiny_llama, tiny_neox};

    /// Left-padded rows (the second starts with two pads), their positions and mask.
    fn batch() -> (Tensor, Tensor, Tensor) {
        let ids = Tensor::from_slice2(&[[5i64, 9, 13, 4, 7, 21], [0, 0, 3, 8, 30, 11]]);
        let key_mask = Tensor::from_slice2(&[[1i64, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]);
        (
            ids,
            positions_from_mask(&key_mask),
            attention_mask(&key_mask, 0, 6),
        )
    }

    /// A loss that weighs every logit differently, so that every gradient entry matters.
    fn loss_of(model: &CausalLm, hidden: &Tensor) -> Tensor {
        let logits = model.logits(hidden);
        let weights = Tensor::arange(logits.numel() as i64, (Kind::Float, Device::Cpu))
            .view(logits.size().as_slice())
            .sin();
        (logits * weights).sum(Kind::Float)
    }

    /// Every trained variable's gradient after `run`, which back-propagates one loss; the
    /// gradients are cleared afterwards.
    fn gradients(vars: &[(String, Tensor)], run: impl FnOnce()) -> Vec<(String, Tensor)> {
        run();
        vars.iter()
            .map(|(name, var)| {
                let grad = var.grad().copy();
                let _ = var.grad().zero_();
                (name.clone(), grad)
            })
            .collect()
    }

    fn assert_close(expected: &[(String, Tensor)], got: &[(String, Tensor)]) {
        for ((name, e), (_, g)) in expected.iter().zip(got) {
            let diff = (e - g).abs().max().double_value(&[]);
            let scale = e.abs().max().double_value(&[]).max(1e-6);
            assert!(
                diff <= 1e-5 * scale,
                "{name}: max abs diff {diff} (largest entry {scale})"
            );
        }
    }

    /// A model offloaded to its host copy and reloaded computes exactly what it did, with a
    /// Llama layer's q, k, v weights back to back again (generation's joined product); a
    /// model without a host copy stays where it is.
    #[test]
    fn a_reloaded_model_computes_what_it_did() {
        let (ids, positions, mask) = batch();
        for config in [tiny_llama(true), tiny_neox()] {
            let model = random_model(config, 6);
            let forward = || tch::no_grad(|| model.forward(&ids, &positions, Some(&mask), None));
            let before = forward();
            let pointers = || -> Vec<(String, usize)> {
                let mut vars: Vec<_> = model.var_store().variables().into_iter().collect();
                vars.sort_by(|a, b| a.0.cmp(&b.0));
                vars.into_iter()
                    .map(|(n, t)| (n, t.data_ptr() as usize))
                    .collect()
            };
            let loaded = pointers();
            model.offload();
            assert!(!model.is_offloaded(), "no host copy: nothing moves");
            assert_eq!(pointers(), loaded);

            model.keep_host_copy().unwrap();
            model.offload();
            assert!(model.is_offloaded());
            // On the CPU an offloaded model still runs, from its host copy.
            let offloaded = pointers();
            for ((name, old), (_, new)) in loaded.iter().zip(&offloaded) {
                assert_ne!(old, new, "{name} points at its host copy");
            }
            assert!(forward().equal(&before));
            model.reload();
            assert!(!model.is_offloaded());
            assert!(forward().equal(&before));
            // Reloaded into memory of its own (which may be where it was before offloading:
            // that memory was freed), not the host copy, which later offloads reuse.
            for ((name, copy), (_, new)) in offloaded.iter().zip(&pointers()) {
                assert_ne!(copy, new, "{name} is off its host copy");
            }
            if let ModelConfig::Llama(c) = model.config() {
                let vars = model.var_store().variables();
                for layer in 0..c.num_hidden_layers {
                    let weight =
                        |p: &str| &vars[&format!("model.layers.{layer}.self_attn.{p}_proj.weight")];
                    let end = |t: &Tensor| t.data_ptr() as usize + t.numel() * 4;
                    assert_eq!(end(weight("q")), weight("k").data_ptr() as usize);
                    assert_eq!(end(weight("k")), weight("v").data_ptr() as usize);
                }
            }
        }
    }

    /// Generation's merged adapters compute what the adapters do (within f32 rounding);
    /// afterwards the model waits offloaded and comes back with its exact base weights.
    /// Without a host copy the adapters run as they are and nothing is merged.
    #[test]
    fn merged_adapters_compute_the_adapters_and_leave_the_base() {
        let lora = LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        };
        let (model, adapters) = with_lora(&lora, Device::Cpu, 1, || {
            Ok(random_model(tiny_llama(false), 5))
        })
        .unwrap();
        tch::no_grad(|| {
            for (name, var) in adapters.var_store().variables() {
                if name.contains("lora_B") {
                    var.shallow_clone().copy_(&(Tensor::ones_like(&var) * 0.1));
                }
            }
        });
        let (ids, positions, mask) = batch();
        let forward = || tch::no_grad(|| model.forward(&ids, &positions, Some(&mask), None));
        let with_adapters = forward();
        let base = adapters.without_adapters(forward);
        assert!(!with_adapters.allclose(&base, 1e-3, 1e-3, false));

        let plain = model.with_merged_adapters(&adapters, forward).unwrap();
        assert!(
            plain.equal(&with_adapters),
            "no host copy: the adapters run"
        );
        assert!(!model.is_offloaded());

        model.keep_host_copy().unwrap();
        let merged = model.with_merged_adapters(&adapters, forward).unwrap();
        let diff = (&merged - &with_adapters).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "merged differs from the adapters by {diff}");
        assert!(model.is_offloaded() && adapters.enabled());
        model.reload();
        assert!(adapters.without_adapters(forward).equal(&base));
        assert!(forward().equal(&with_adapters));
    }

    /// Checkpointed training computes the gradients of the plain forward pass, for both
    /// architectures, tied and untied embeddings, with padding, whether it recomputes none,
    /// some or all of the (two) layers.
    #[test]
    fn checkpointed_backward_gives_the_plain_gradients() {
        let (ids, positions, mask) = batch();
        for (label, config) in [
            ("llama tied", tiny_llama(true)),
            ("llama untied", tiny_llama(false)),
            ("gpt-neox", tiny_neox()),
        ] {
            let model = random_model(config, 4);
            // The checkpointed pass reseeds libtorch's generator and draws from it (after the
            // model is made: making one takes the lock too).
            let _rng = lock_libtorch_rng();
            let vars: Vec<(String, Tensor)> = model.var_store().variables().into_iter().collect();
            let plain = gradients(&vars, || {
                loss_of(&model, &model.forward(&ids, &positions, Some(&mask), None)).backward()
            });
            assert!(
                plain
                    .iter()
                    .all(|(_, g)| g.abs().sum(Kind::Float).double_value(&[]) > 0.0),
                "{label}: every weight gets a gradient"
            );
            for recomputed in [0, 1, 2, 3] {
                let checkpointed = gradients(&vars, || {
                    let (hidden, checkpoints) =
                        model.forward_checkpointed(&ids, &positions, Some(&mask), recomputed);
                    // Only the recomputed layers keep their input.
                    assert_eq!(checkpoints.layer_inputs.len(), recomputed.min(2));
                    loss_of(&model, &hidden).backward();
                    model.backward_recomputed(checkpoints);
                });
                assert_close(&plain, &checkpointed);
            }
        }
    }

    /// One loss of two models' checkpointed passes back-propagated once, then each model's
    /// recomputed layers: every weight of both gets its plain gradient, whichever layers each
    /// model recomputes.
    #[test]
    fn a_loss_of_two_checkpointed_passes_gives_both_models_their_gradients() {
        let (ids, positions, mask) = batch();
        let (a, b) = (
            random_model(tiny_llama(false), 4),
            random_model(tiny_llama(false), 5),
        );
        let _rng = lock_libtorch_rng();
        let vars: Vec<(String, Tensor)> = [("a", &a), ("b", &b)]
            .iter()
            .flat_map(|(model_name, model)| {
                model
                    .var_store()
                    .variables()
                    .into_iter()
                    .map(move |(name, var)| (format!("{model_name}.{name}"), var))
            })
            .collect();
        // The two hidden states meet in the loss, so each model's gradient depends on both.
        let loss = |ha: &Tensor, hb: &Tensor| {
            loss_of(&a, ha) + loss_of(&b, hb) + (ha * hb).sum(Kind::Float)
        };
        let plain = gradients(&vars, || {
            let forward = |m: &CausalLm| m.forward(&ids, &positions, Some(&mask), None);
            loss(&forward(&a), &forward(&b)).backward()
        });
        for (ra, rb) in [(1, 2), (2, 0), (2, 2)] {
            let checkpointed = gradients(&vars, || {
                let (ha, ca) = a.forward_checkpointed(&ids, &positions, Some(&mask), ra);
                let (hb, cb) = b.forward_checkpointed(&ids, &positions, Some(&mask), rb);
                loss(&ha, &hb).backward();
                a.backward_recomputed(ca);
                b.backward_recomputed(cb);
            });
            assert_close(&plain, &checkpointed);
        }
    }

    /// With LoRA dropout the recomputed layers draw the masks of the first pass: the gradients
    /// are those of a plain pass that reseeds before each layer as the checkpointed one does,
    /// whichever layers are recomputed.
    #[test]
    fn checkpointed_backward_replays_dropout_masks() {
        let lora = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.5,
            target_modules: vec!["q_proj".into(), "down_proj".into()],
        };
        let (model, adapters) = with_lora(&lora, Device::Cpu, 1, || {
            Ok(random_model(tiny_llama(false), 5))
        })
        .unwrap();
        // Dropout draws from libtorch's generator, reseeded below (after the model is made:
        // making one takes the lock too).
        let _rng = lock_libtorch_rng();
        adapters.set_training(true);
        // Non-zero B matrices, so that the masks change the loss and every gradient.
        let vars: Vec<(String, Tensor)> = adapters.var_store().variables().into_iter().collect();
        tch::no_grad(|| {
            vars.iter()
                .filter(|(n, _)| n.contains("lora_B"))
                .for_each(|(_, v)| v.shallow_clone().copy_(&(Tensor::ones_like(v) * 0.1)))
        });
        let (ids, positions, mask) = batch();
        let checkpointed = |seed: i64, recomputed: usize| {
            tch::manual_seed(seed);
            gradients(&vars, || {
                let (hidden, checkpoints) =
                    model.forward_checkpointed(&ids, &positions, Some(&mask), recomputed);
                loss_of(&model, &hidden).backward();
                model.backward_recomputed(checkpoints);
            })
        };
        tch::manual_seed(11);
        let seed = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
        let reseeded = gradients(&vars, || {
            let mut x = model.decoder.embed(&ids);
            let context = model
                .decoder
                .layer_context(&positions, Some(&mask), x.kind());
            for index in 0..model.decoder.num_layers() {
                tch::manual_seed(seed.wrapping_add(index as i64));
                x = model.decoder.layer(index, &x, &context, None);
            }
            loss_of(&model, &model.decoder.final_norm(&x)).backward();
        });
        for recomputed in [0, 1, 2] {
            assert_close(&reseeded, &checkpointed(11, recomputed));
        }
        // A differently seeded pass draws other masks: the comparison above can fail.
        let other = checkpointed(12, 2);
        let b = vars.iter().position(|(n, _)| n.contains("lora_B")).unwrap();
        assert!(
            !other[b]
                .1
                .allclose(&checkpointed(11, 2)[b].1, 1e-5, 1e-5, false)
        );
    }
}
