//! Loading the model a trainer starts from: weights in the training precision, optional LoRA
//! adapters, and the tokenizer with a pad token (SPEC 1.3).

use crate::error::{Result, TrainError};
use lincal_model::lora::{LoraAdapters, LoraConfig, with_lora};
use lincal_model::{CausalLm, Tokenizer};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Output projections; a reward model never uses them, so they are not trained there.
pub(crate) const OUTPUT_EMBEDDINGS: [&str; 2] = ["lm_head.weight", "embed_out.weight"];

pub(crate) struct LoadedModel {
    pub model: CausalLm,
    pub tokenizer: Tokenizer,
    pub lora: Option<LoraAdapters>,
    pub pad_id: i64,
    pub eos_id: i64,
}

impl LoadedModel {
    /// Loads `dir` in `kind`, with adapters when `lora` is set (their `A` drawn from `seed`).
    /// When the tokenizer has no pad token, `pad_token` is added and the embeddings grow with
    /// rows equal to the mean of the old ones, as the reference.
    pub fn load(
        dir: &Path,
        device: Device,
        kind: Kind,
        lora: Option<&LoraConfig>,
        seed: u64,
        pad_token: &str,
    ) -> Result<Self> {
        let mut tokenizer = Tokenizer::from_dir(dir)?;
        let load = || CausalLm::load(dir, device, Some(kind));
        let (mut model, lora) = match lora {
            Some(config) => {
                let (model, adapters) = with_lora(config, device, seed, load)?;
                (model, Some(adapters))
            }
            None => (load()?, None),
        };
        let eos = tokenizer.eos_token().ok_or_else(|| {
            TrainError::config(
                "tokenizer",
                format!(
                    "{} sets no eos_token; SFT appends EOS to every target, \
                     so set it in tokenizer_config.json",
                    dir.join("tokenizer_config.json").display()
                ),
            )
        })?;
        let eos_id = tokenizer.token_id(&eos).ok_or_else(|| {
            TrainError::config(
                "tokenizer",
                format!(
                    "eos_token {eos:?} is not in {}",
                    dir.join("tokenizer.json").display()
                ),
            )
        })?;
        let pad_id = match tokenizer.pad_token().and_then(|t| tokenizer.token_id(&t)) {
            Some(id) => id,
            None => tokenizer.add_special_token("pad_token", pad_token),
        };
        let vocab = tokenizer.vocab_size() as i64;
        if vocab > model.config().vocab_size() {
            model.resize_token_embeddings(vocab)?;
        }
        tokenizer.check_model_vocab(model.config().vocab_size())?;
        Ok(LoadedModel {
            model,
            tokenizer,
            lora,
            pad_id,
            eos_id,
        })
    }

    /// The weights to train, by name: the adapters with a frozen base, or every weight but
    /// those in `exclude`.
    pub fn trainable(&self, exclude: &[&str]) -> Vec<(String, Tensor)> {
        let mut base: Vec<(String, Tensor)> =
            self.model.var_store().variables().into_iter().collect();
        base.sort_by(|a, b| a.0.cmp(&b.0));
        let frozen = |var: &Tensor| {
            let _ = var.set_requires_grad(false);
        };
        match &self.lora {
            Some(adapters) => {
                base.iter().for_each(|(_, var)| frozen(var));
                let mut named: Vec<(String, Tensor)> =
                    adapters.var_store().variables().into_iter().collect();
                named.sort_by(|a, b| a.0.cmp(&b.0));
                named
            }
            None => {
                base.iter()
                    .filter(|(name, _)| exclude.contains(&name.as_str()))
                    .for_each(|(_, var)| frozen(var));
                base.into_iter()
                    .filter(|(name, _)| !exclude.contains(&name.as_str()))
                    .collect()
            }
        }
    }

    /// LoRA dropout follows the training mode.
    pub fn set_training(&self, training: bool) {
        if let Some(adapters) = &self.lora {
            adapters.set_training(training);
        }
    }

    /// Saves the policy as it samples now into `dir` for transformers, in f32 with LoRA
    /// adapters merged into copies, with its tokenizer, and leaves the model unchanged: the
    /// weights-only snapshots that checkpoint selection reads. Under mixed precision these are
    /// the bf16 compute weights (`final/` gets the f32 masters).
    pub fn save_snapshot(&self, dir: &Path) -> Result<()> {
        let mut weights = self.model.f32_weights();
        if let Some(adapters) = &self.lora {
            adapters.merge_into_copies(&mut weights)?;
        }
        self.model
            .save_weights(dir, &weights, lincal_model::model::DEFAULT_MAX_SHARD_BYTES)?;
        Ok(self.tokenizer.save(dir)?)
    }

    /// Saves the model for transformers into `dir` in f32 (see [`to_full_precision`]), with
    /// its tokenizer; with LoRA also the PEFT adapter, in `dir/adapter`.
    pub fn save_causal_lm(&mut self, dir: &Path, base_model: &Path) -> Result<()> {
        if let Some(adapters) = &self.lora {
            let adapter_dir = dir.join("adapter");
            std::fs::create_dir_all(&adapter_dir).map_err(|e| TrainError::io(&adapter_dir, e))?;
            adapters.save_peft(&adapter_dir, Some(&base_model.display().to_string()))?;
            // The embeddings may have grown by the pad token: the adapter needs this
            // tokenizer, and the base resized to it (transformers' mean resizing).
            self.tokenizer.save(&adapter_dir)?;
        }
        to_full_precision(&mut self.model, self.lora.as_mut())?;
        self.model
            .save(dir, lincal_model::model::DEFAULT_MAX_SHARD_BYTES)?;
        Ok(self.tokenizer.save(dir)?)
    }
}

/// Final models are saved in f32, as the reference's (FSDP full state dicts of f32 shards).
/// The trainer has already pointed trained weights at their f32 masters; the rest is cast,
/// then LoRA adapters are merged (in f32, so the bf16 base loses nothing more).
pub(crate) fn to_full_precision(
    model: &mut CausalLm,
    lora: Option<&mut LoraAdapters>,
) -> Result<()> {
    model.set_kind(Kind::Float);
    if let Some(adapters) = lora {
        adapters.merge_into(model.var_store())?;
    }
    Ok(())
}
