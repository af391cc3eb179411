//! Reward models (SPEC 1.6 ForecastProbs, 1.8 Factuality): a causal-LM backbone whose final
//! hidden state at the last position of a left-padded row goes through `Linear(hidden, 1)`;
//! sigmoid of that logit is the probability. Trained with binary cross-entropy on soft
//! labels; evaluated by the MSE of sigmoid(logit) against the label. PPO's value model is the
//! reward model's backbone with a zero [`ScalarHead`] of its own (SPEC 2.1).
//!
//! # Saved layout (the reference's `RewardModel`)
//! The reference head has a bias, which `LlamaForSequenceClassification` (`score.weight`
//! only) cannot hold, so models are saved as the reference saves them:
//! - `model.safetensors`: the backbone under `backbone_model.` (`backbone_model.model.layers.0...`,
//!   `backbone_model.lm_head.weight`) and `reward_head.weight` `[1, hidden]`, `reward_head.bias`
//!   `[1]`;
//! - `config.json`: `{"model_type": "reward_model", "backbone_model_name_or_path": <the SFT
//!   model it started from>, "backbone_config": {<that model's config.json>}}`.
//!
//! The reference code loads it with `RewardModel.from_pretrained(dir)` once
//! `backbone_model_name_or_path` points at a local copy of the backbone (as its weight
//! recovery script does). Plain transformers: build the backbone from `backbone_config`
//! (`LlamaForCausalLM(LlamaConfig(**cfg["backbone_config"]))`), load the `backbone_model.`
//! tensors with the prefix stripped, then score as
//! `h = backbone.model(ids, attention_mask=mask).last_hidden_state[:, -1]` and
//! `logit = h @ reward_head.weight.T + reward_head.bias` with inputs left-padded.
//! [`RewardModel::load`] reads both this layout and reference checkpoints without
//! `backbone_config` (it then reads the backbone's config from `backbone_model_name_or_path`).

use crate::config::RewardModelConfig;
use crate::data::{
    LeftPaddedBatch, RewardExample, collate_left_padded, collate_shared_prefixes,
    pack_shared_prefixes, rows_digest, tokenize_reward, tokenize_reward_texts,
};
use crate::error::{Result, TrainError};
use crate::optim::{AdamWConfig, TrainableParams};
use crate::run::RunOptions;
use crate::setup::{LoadedModel, OUTPUT_EMBEDDINGS, to_full_precision};
use crate::train_loop::{EvalSum, Objective, TrainLoop, backward_loss};
use crate::training_run::TrainSummary;
use lincal_data::artifact::Manifest;
use lincal_model::checkpoint::{SafetensorsCheckpoint, save_safetensors};
use lincal_model::fsutil::write_atomic;
use lincal_model::lora::LoraAdapters;
use lincal_model::model::{DEFAULT_MAX_SHARD_BYTES, kind_from_name, kind_name};
use lincal_model::{CausalLm, ModelConfig, ModelError, Tokenizer};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Reduction, Tensor, nn};

pub const BACKBONE_PREFIX: &str = "backbone_model.";
pub const HEAD_WEIGHT: &str = "reward_head.weight";
pub const HEAD_BIAS: &str = "reward_head.bias";

/// How a new head starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadInit {
    /// PyTorch's `nn.Linear` default for the weight, U(±1/√hidden), drawn from `seed`; bias zero
    /// (the reference reward model).
    Default { seed: u64 },
    /// Weight and bias zero (the reference's value model).
    Zero,
}

/// `Linear(hidden, 1)` with a bias over a backbone's final hidden states: a reward model's
/// head, and PPO's value head.
pub struct ScalarHead {
    /// Holds `reward_head.weight` and `reward_head.bias`.
    vs: nn::VarStore,
}

impl ScalarHead {
    /// A new head for the hidden states of `backbone`, in its precision and on its device.
    pub fn for_backbone(backbone: &CausalLm, init: HeadInit) -> Self {
        let hidden = match backbone.config() {
            ModelConfig::Llama(c) => c.hidden_size,
            ModelConfig::GptNeoX(c) => c.hidden_size,
        };
        let mut vs = nn::VarStore::new(backbone.device());
        let root = vs.root() / "reward_head";
        let weight: Vec<f32> = match init {
            HeadInit::Default { seed } => {
                let bound = 1.0 / (hidden as f32).sqrt();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                (0..hidden)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect()
            }
            HeadInit::Zero => vec![0.0; hidden as usize],
        };
        let _ = root.var_copy("weight", &Tensor::from_slice(&weight).view([1, hidden]));
        let _ = root.zeros("bias", &[1]);
        vs.set_kind(backbone.kind());
        ScalarHead { vs }
    }

    /// The two variables, named [`HEAD_WEIGHT`] and [`HEAD_BIAS`].
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn set_kind(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
    }

    /// f32 scores `[...]` of hidden states `[..., hidden]`.
    pub fn forward(&self, hidden: &Tensor) -> Tensor {
        let vars = self.vs.variables();
        hidden
            .linear(&vars[HEAD_WEIGHT], Some(&vars[HEAD_BIAS]))
            .squeeze_dim(-1)
            .to_kind(Kind::Float)
    }
}

pub struct RewardModel {
    backbone: CausalLm,
    head: ScalarHead,
    /// Recorded as `backbone_model_name_or_path`.
    backbone_source: String,
}

/// The path of `DIR/config.json` and its JSON.
fn read_json_config(dir: &Path) -> Result<(PathBuf, serde_json::Value)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let value = serde_json::from_str(&text).map_err(|e| {
        TrainError::Model(ModelError::Config {
            path: path.clone(),
            message: format!("malformed JSON ({e})"),
        })
    })?;
    Ok((path, value))
}

impl RewardModel {
    /// A new head on `backbone`, in the backbone's precision and device.
    pub fn new(backbone: CausalLm, init: HeadInit, backbone_source: &str) -> Self {
        let head = ScalarHead::for_backbone(&backbone, init);
        RewardModel {
            backbone,
            head,
            backbone_source: backbone_source.into(),
        }
    }

    /// The config of the transformer that scores for the model in `dir`: a reward model's
    /// backbone, or `dir`'s own config when it holds a plain causal LM (a benchmark's reward
    /// model, which is given a new head). Reads `config.json` once.
    pub fn scoring_model_config(dir: &Path) -> Result<ModelConfig> {
        let (path, config) = read_json_config(dir)?;
        if config.get("model_type").and_then(|t| t.as_str()) == Some("reward_model") {
            return Ok(Self::backbone_config(&path, &config)?.0);
        }
        ModelConfig::from_json(&config.to_string())
            .map_err(|message| TrainError::Model(ModelError::Config { path, message }))
    }

    /// The backbone's config of a reward model's `config.json` (at `config_path`), and where
    /// the backbone came from (see the module docs).
    fn backbone_config(
        config_path: &Path,
        config: &serde_json::Value,
    ) -> Result<(ModelConfig, String)> {
        let bad = |message: String| {
            TrainError::Model(ModelError::Config {
                path: config_path.to_path_buf(),
                message,
            })
        };
        if config.get("model_type").and_then(|t| t.as_str()) != Some("reward_model") {
            return Err(bad(
                "model_type is not \"reward_model\"; this is not a reward model directory \
                 (a plain causal LM loads with CausalLm::load)"
                    .into(),
            ));
        }
        let source = config
            .get("backbone_model_name_or_path")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string();
        let backbone_config = match config.get("backbone_config") {
            Some(value) => ModelConfig::from_json(&value.to_string())
                .map_err(|m| bad(format!("backbone_config: {m}")))?,
            None if !source.is_empty() => {
                ModelConfig::from_file(&Path::new(&source).join("config.json"))?
            }
            None => {
                return Err(bad(
                    "has neither backbone_config nor backbone_model_name_or_path; \
                     cannot tell the backbone's architecture"
                        .into(),
                ));
            }
        };
        Ok((backbone_config, source))
    }

    /// Reads the layout described in the module docs; `kind` `None` keeps the stored dtype.
    pub fn load(dir: &Path, device: Device, kind: Option<Kind>) -> Result<Self> {
        let (config_path, config) = read_json_config(dir)?;
        let (backbone_config, source) = Self::backbone_config(&config_path, &config)?;
        let kind = kind.unwrap_or_else(|| {
            backbone_config
                .torch_dtype()
                .and_then(kind_from_name)
                .unwrap_or(Kind::Float)
        });
        let backbone = tch::no_grad(|| CausalLm::new(backbone_config, device, kind));
        let model = RewardModel::new(backbone, HeadInit::Zero, &source);
        let checkpoint = SafetensorsCheckpoint::open(dir)?;
        checkpoint.load_into(
            &model
                .named_variables()
                .into_iter()
                .collect::<HashMap<_, _>>(),
        )?;
        Ok(model)
    }

    /// Every weight under its saved name.
    fn named_variables(&self) -> BTreeMap<String, Tensor> {
        let mut named: BTreeMap<String, Tensor> = self
            .backbone
            .var_store()
            .variables()
            .into_iter()
            .map(|(n, t)| (format!("{BACKBONE_PREFIX}{n}"), t))
            .collect();
        named.extend(self.head.vs.variables());
        named
    }

    /// Writes `config.json` and the weights into `dir` (which must exist).
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_safetensors(dir, &self.named_variables(), DEFAULT_MAX_SHARD_BYTES)?;
        let backbone_config: serde_json::Value =
            serde_json::from_str(&self.backbone.config().to_json()).expect("configs are JSON");
        let config = serde_json::json!({
            "model_type": "reward_model",
            "architectures": ["RewardModel"],
            "backbone_model_name_or_path": self.backbone_source,
            "backbone_config": backbone_config,
            "torch_dtype": kind_name(self.backbone.kind()),
        });
        Ok(write_atomic(
            &dir.join("config.json"),
            serde_json::to_string_pretty(&config)
                .expect("json")
                .as_bytes(),
        )?)
    }

    pub fn backbone(&self) -> &CausalLm {
        &self.backbone
    }

    /// The head's two variables (trainable), by saved name.
    pub fn head_var_store(&self) -> &nn::VarStore {
        self.head.var_store()
    }

    /// Replaces the head, e.g. `HeadInit::Zero` to turn a trained reward model into PPO's
    /// value model.
    pub fn with_head(self, init: HeadInit) -> Self {
        RewardModel::new(self.backbone, init, &self.backbone_source)
    }

    pub fn set_kind(&mut self, kind: Kind) {
        self.backbone.set_kind(kind);
        self.head.set_kind(kind);
    }

    /// The head applied to backbone hidden states `[..., hidden]`: f32 scores `[...]`.
    pub fn head(&self, hidden: &Tensor) -> Tensor {
        self.head.forward(hidden)
    }

    /// Logits `[B]` (f32) of a left-padded batch: `input_ids`, `positions` `[B, T]` and the
    /// boolean attention mask `[B, 1, T, T]` of `lincal_model::layers::attention_mask`.
    pub fn score(&self, input_ids: &Tensor, positions: &Tensor, mask: &Tensor) -> Tensor {
        self.score_hidden(
            &self
                .backbone
                .forward(input_ids, positions, Some(mask), None),
        )
    }

    /// Logits `[B]` from the backbone's final hidden states of a left-padded batch: the head
    /// reads the last position, every row's last real token.
    fn score_hidden(&self, hidden: &Tensor) -> Tensor {
        self.head(&hidden.select(1, hidden.size()[1] - 1))
    }

    /// Logits of `texts`, tokenised with special tokens and truncated on the right to
    /// `max_len` tokens, scored by [`Self::score_rows`] in the order of `texts`.
    pub fn score_texts(
        &self,
        tokenizer: &Tokenizer,
        texts: &[String],
        max_len: usize,
        pad_id: i64,
        limits: BatchLimits,
    ) -> Result<Vec<f32>> {
        let rows = tokenize_reward_texts(tokenizer, texts, max_len)?;
        self.score_rows(&rows, max_len, pad_id, limits)
    }

    /// Logits of token `rows` (at most `max_len` tokens each), in batches within `limits`, in
    /// the order of `rows`. Texts that begin alike share a row, their common tokens run once
    /// ([`pack_shared_prefixes`]: the ForecastProbs inputs of one paragraph's candidates),
    /// and rows of like length share a batch; each text's logit is the one it has alone.
    pub fn score_rows(
        &self,
        rows: &[Vec<i64>],
        max_len: usize,
        pad_id: i64,
        limits: BatchLimits,
    ) -> Result<Vec<f32>> {
        if let Some(index) = rows.iter().position(Vec::is_empty) {
            return Err(TrainError::Data {
                set: "scored",
                index,
                message: "the text has no tokens, and a reward model reads a text's last token"
                    .into(),
            });
        }
        let mut packed = pack_shared_prefixes(rows, max_len);
        packed.sort_by_key(|row| row.input_ids.len());
        let lengths: Vec<usize> = packed.iter().map(|row| row.input_ids.len()).collect();
        let device = self.backbone.device();
        let mut logits = vec![0.0; rows.len()];
        tch::no_grad(|| -> Result<()> {
            for range in limits.batches(&lengths) {
                let batch = collate_shared_prefixes(&packed[range], pad_id, device);
                let hidden = self.backbone.forward(
                    &batch.input_ids,
                    &batch.positions,
                    Some(&batch.mask),
                    None,
                );
                let at: Vec<i64> = batch.reads.iter().map(|&(_, at)| at).collect();
                let last_tokens = hidden
                    .flatten(0, 1)
                    .index_select(0, &Tensor::from_slice(&at).to_device(device));
                let scores = Vec::<f32>::try_from(self.head(&last_tokens))?;
                for (&(text, _), score) in batch.reads.iter().zip(scores) {
                    logits[text] = score;
                }
            }
            Ok(())
        })?;
        Ok(logits)
    }
}

/// What one scoring forward pass may hold: `rows`, and `tokens` counted as the batch pads
/// them (rows × the longest row). The token bound keeps memory in check where rows are longer
/// than planned for, as shared-prefix rows and long reward prompts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub rows: usize,
    pub tokens: usize,
}

impl BatchLimits {
    /// At most `rows` rows a batch, of any length.
    pub fn rows(rows: usize) -> Self {
        BatchLimits {
            rows,
            tokens: usize::MAX,
        }
    }

    /// Consecutive batches of rows with these `lengths` (ascending): each as many rows as
    /// fit both limits, and at least one (a row longer than `tokens` goes alone).
    fn batches(&self, lengths: &[usize]) -> Vec<Range<usize>> {
        let mut batches = Vec::new();
        let mut start = 0;
        for (i, &len) in lengths.iter().enumerate() {
            let rows = i + 1 - start;
            if rows > 1 && (rows > self.rows || rows.saturating_mul(len) > self.tokens) {
                batches.push(start..i);
                start = i;
            }
        }
        if start < lengths.len() {
            batches.push(start..lengths.len());
        }
        batches
    }
}

struct RewardObjective {
    model: RewardModel,
    tokenizer: Tokenizer,
    lora: Option<LoraAdapters>,
    pad_id: i64,
    train: Vec<(Vec<i64>, f64)>,
    eval: Vec<(Vec<i64>, f64)>,
    eval_batch_size: usize,
    /// Decoder layers recomputed in the backward pass (`TrainingConfig::recomputed`).
    recomputed: Option<usize>,
}

impl RewardObjective {
    /// The left-padded batch of the examples `rows[units]` and their labels.
    fn batch(&self, rows: &[(Vec<i64>, f64)], units: &[usize]) -> (LeftPaddedBatch, Tensor) {
        let ids: Vec<&[i64]> = units.iter().map(|&u| rows[u].0.as_slice()).collect();
        let labels: Vec<f32> = units.iter().map(|&u| rows[u].1 as f32).collect();
        let device = self.model.backbone.device();
        (
            collate_left_padded(&ids, self.pad_id, device),
            Tensor::from_slice(&labels).to_device(device),
        )
    }
}

impl Objective for RewardObjective {
    fn weight(&self, _unit: usize) -> f64 {
        1.0
    }

    fn backward(&self, units: &[usize], divisor: f64) -> Result<(Tensor, usize)> {
        let (batch, labels) = self.batch(&self.train, units);
        let loss = backward_loss(
            &self.model.backbone,
            self.recomputed,
            &batch.input_ids,
            &batch.positions,
            Some(&batch.mask),
            divisor,
            |hidden| {
                self.model
                    .score_hidden(hidden)
                    .binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Sum)
            },
        );
        Ok((loss, batch.tokens))
    }

    fn eval_len(&self) -> usize {
        self.eval.len()
    }

    fn evaluate(&self, examples: Range<usize>) -> Result<Vec<EvalSum>> {
        let count = examples.len() as f64;
        let (mut loss, mut squared_error) = (0.0, 0.0);
        tch::no_grad(|| {
            let units: Vec<usize> = examples.collect();
            for units in units.chunks(self.eval_batch_size) {
                let (batch, labels) = self.batch(&self.eval, units);
                let logits = self
                    .model
                    .score(&batch.input_ids, &batch.positions, &batch.mask);
                loss += logits
                    .binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Sum)
                    .double_value(&[]);
                squared_error += (logits.sigmoid() - &labels)
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[]);
            }
        });
        Ok(vec![
            EvalSum {
                name: "eval_loss",
                sum: loss,
                weight: count,
            },
            EvalSum {
                name: "eval_mse",
                sum: squared_error,
                weight: count,
            },
        ])
    }

    fn set_training(&self, training: bool) {
        if let Some(adapters) = &self.lora {
            adapters.set_training(training);
        }
    }

    fn save_final(&mut self, dir: &Path) -> Result<()> {
        to_full_precision(&mut self.model.backbone, self.lora.as_mut())?;
        self.model.head.set_kind(Kind::Float);
        self.model.save(dir)?;
        Ok(self.tokenizer.save(dir)?)
    }
}

/// Tokenises reward examples, checking every label.
fn tokenize_rewards(
    tokenizer: &Tokenizer,
    examples: &[RewardExample],
    max_len: usize,
    set: &'static str,
) -> Result<Vec<(Vec<i64>, f64)>> {
    examples
        .iter()
        .enumerate()
        .map(|(index, example)| {
            let data_error = |message: String| TrainError::Data {
                set,
                index,
                message,
            };
            if !(0.0..=1.0).contains(&example.label) {
                return Err(data_error(format!(
                    "label {} is outside [0, 1]; labels are probabilities or 0/1 correctness",
                    example.label
                )));
            }
            let ids = tokenize_reward(tokenizer, &example.prompt, max_len)
                .map_err(|e| data_error(e.to_string()))?;
            if ids.is_empty() {
                return Err(data_error("the text has no tokens".into()));
            }
            Ok((ids, example.label))
        })
        .collect()
}

/// Trains a reward model (backbone + new head) into a run directory.
pub struct RewardModelTrainer {
    objective: RewardObjective,
    train_loop: TrainLoop,
}

impl RewardModelTrainer {
    /// The backbone comes from `model_dir` (a causal LM with its tokenizer, e.g. the SFT
    /// model); the head starts as PyTorch's default linear init seeded by `training.seed`.
    pub fn new(
        model_dir: &Path,
        device: Device,
        config: &RewardModelConfig,
        train: &[RewardExample],
        eval: &[RewardExample],
        run: &RunOptions,
    ) -> Result<Self> {
        config.validate()?;
        run.check_before_loading(train.len())?;
        let kind = config.training.precision.kind(device);
        let loaded = LoadedModel::load(
            model_dir,
            device,
            kind,
            config.lora.as_ref(),
            config.training.seed,
            &config.pad_token,
        )?;
        let train_rows =
            tokenize_rewards(&loaded.tokenizer, train, config.model_max_length, "train")?;
        let eval_rows = tokenize_rewards(&loaded.tokenizer, eval, config.model_max_length, "eval")?;
        let mut trainable = loaded.trainable(&OUTPUT_EMBEDDINGS);
        let LoadedModel {
            model,
            tokenizer,
            lora,
            pad_id,
            ..
        } = loaded;
        let model = RewardModel::new(
            model,
            HeadInit::Default {
                seed: config.training.seed,
            },
            &model_dir.display().to_string(),
        );
        let mut head: Vec<(String, Tensor)> = model.head.vs.variables().into_iter().collect();
        head.sort_by(|a, b| a.0.cmp(&b.0));
        trainable.extend(head);
        let params = TrainableParams::sharded(
            trainable,
            AdamWConfig::from_training(&config.training),
            config.training.precision.master_weights(),
            run.comm.clone(),
        );
        let manifest = Manifest {
            base_model: Some(model_dir.to_path_buf()),
            ..Manifest::new(
                "reward_model",
                serde_json::to_value(config).expect("configs serialise"),
                Vec::new(),
            )
        };
        let labels: Vec<Vec<i64>> = train_rows
            .iter()
            .map(|(_, label)| vec![label.to_bits() as i64])
            .collect();
        let digest = rows_digest(
            train_rows
                .iter()
                .zip(&labels)
                .map(|((ids, _), label)| (ids.as_slice(), label.as_slice())),
        );
        let train_loop = TrainLoop::open(
            run,
            manifest,
            &config.training,
            params,
            train_rows.len(),
            digest,
            device,
        )?;
        let objective = RewardObjective {
            model,
            tokenizer,
            lora,
            pad_id,
            train: train_rows,
            eval: eval_rows,
            eval_batch_size: config.training.eval_batch_size,
            recomputed: config.training.recomputed(),
        };
        Ok(RewardModelTrainer {
            objective,
            train_loop,
        })
    }

    pub fn train(&mut self, stop_at_step: Option<u64>) -> Result<TrainSummary> {
        self.train_loop.train(&mut self.objective, stop_at_step)
    }

    pub fn total_steps(&self) -> u64 {
        self.train_loop.total_steps()
    }

    pub fn model(&self) -> &RewardModel {
        &self.objective.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{quick_training, saved_tensors, tiny_model_dir};

    fn examples() -> Vec<RewardExample> {
        [
            ("t5 t6 t7", 0.1),
            ("t8 t9", 0.35),
            ("t10 t11 t12 t13", 0.6),
            ("t14", 0.9),
        ]
        .iter()
        .map(|(t, l)| RewardExample {
            question_id: None,
            prompt: t.to_string(),
            label: *l,
        })
        .collect()
    }

    fn config(epochs: f64) -> RewardModelConfig {
        RewardModelConfig {
            model_max_length: 64,
            pad_token: "[PAD]".into(),
            lora: None,
            training: quick_training(1e-2, epochs, 4, 2),
        }
    }

    /// Two steps with gradient checkpointing train the weights that two plain steps do (the
    /// texts have different lengths, so the rows are left-padded).
    #[test]
    fn gradient_checkpointing_trains_the_same_weights() {
        let model_dir = tiny_model_dir();
        let data = examples();
        let trained = |gradient_checkpointing: bool| {
            let run = tempfile::tempdir().unwrap();
            let mut config = config(2.0);
            config.training.gradient_checkpointing = gradient_checkpointing;
            RewardModelTrainer::new(
                model_dir.path(),
                Device::Cpu,
                &config,
                &data,
                &[],
                &RunOptions::new(run.path()),
            )
            .unwrap()
            .train(None)
            .unwrap();
            saved_tensors(&run.path().join("final"))
        };
        let (plain, checkpointed) = (trained(false), trained(true));
        for (name, tensor) in &plain {
            let diff = (tensor - &checkpointed[name]).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{name}: differs by {diff}");
        }
        // The steps reached the first layer.
        let base = saved_tensors(model_dir.path());
        let moved = (&plain["backbone_model.model.layers.0.mlp.down_proj.weight"]
            - &base["model.layers.0.mlp.down_proj.weight"])
            .abs()
            .max()
            .double_value(&[]);
        assert!(moved > 1e-4, "{moved}");
    }

    /// The logged training loss (one step over the four texts, in two micro-batches, from the
    /// weights before the step) and the evaluation loss (after it) are the mean binary
    /// cross-entropy of each text's score against its own label, computed here from the scores.
    #[test]
    fn the_logged_loss_is_the_mean_cross_entropy_of_each_score_against_its_label() {
        let model_dir = tiny_model_dir();
        let run = tempfile::tempdir().unwrap();
        let data = examples();
        let mut trainer = RewardModelTrainer::new(
            model_dir.path(),
            Device::Cpu,
            &config(1.0),
            &data,
            &data,
            &RunOptions::new(run.path()),
        )
        .unwrap();
        let texts: Vec<String> = data.iter().map(|e| e.prompt.clone()).collect();
        let scores = |trainer: &RewardModelTrainer| {
            let objective = &trainer.objective;
            trainer
                .model()
                .score_texts(
                    &objective.tokenizer,
                    &texts,
                    64,
                    objective.pad_id,
                    BatchLimits::rows(4),
                )
                .unwrap()
        };
        let mean_cross_entropy = |scores: &[f32], labels: &mut dyn Iterator<Item = f64>| {
            let sum: f64 = scores
                .iter()
                .zip(labels)
                .map(|(&score, label)| {
                    let p = crate::sigmoid(f64::from(score));
                    -(label * p.ln() + (1.0 - label) * (1.0 - p).ln())
                })
                .sum();
            sum / scores.len() as f64
        };
        let before = scores(&trainer);
        let expected_loss = mean_cross_entropy(&before, &mut data.iter().map(|e| e.label));
        // Labels paired with the wrong texts give another value.
        let mismatched = mean_cross_entropy(&before, &mut data.iter().rev().map(|e| e.label));
        assert!(
            (mismatched - expected_loss).abs() > 1e-3,
            "{mismatched} vs {expected_loss}"
        );

        let summary = trainer.train(None).unwrap();
        assert_eq!(summary.steps, 1);
        let after = scores(&trainer);
        assert_ne!(before, after);
        let expected_eval_loss = mean_cross_entropy(&after, &mut data.iter().map(|e| e.label));
        let logged = |list: &[(String, f64)], key: &str| {
            list.iter().find(|(name, _)| name == key).unwrap().1
        };
        for (name, value, expected) in [
            ("loss", logged(&summary.last_step, "loss"), expected_loss),
            (
                "eval_loss",
                logged(&summary.eval, "eval_loss"),
                expected_eval_loss,
            ),
        ] {
            assert!(
                (value - expected).abs() < 1e-5,
                "{name} {value}, by hand {expected}"
            );
        }
    }

    /// Four texts with soft labels, 80 steps of batch 4 at lr 1e-2: the MSE of sigmoid(score)
    /// against the labels falls below 1e-3 (it starts near 0.07).
    #[test]
    fn fits_soft_labels_and_saves_the_reference_layout() {
        let model_dir = tiny_model_dir();
        let run = tempfile::tempdir().unwrap();
        let data = examples();
        let mut trainer = RewardModelTrainer::new(
            model_dir.path(),
            Device::Cpu,
            &config(80.0),
            &data,
            &data,
            &RunOptions::new(run.path()),
        )
        .unwrap();
        let summary = trainer.train(None).unwrap();
        let mse = summary
            .eval
            .iter()
            .find(|(n, _)| n == "eval_mse")
            .unwrap()
            .1;
        assert!(mse < 1e-3, "eval MSE {mse}");
        let final_dir = summary.final_dir.unwrap();
        let tensors = saved_tensors(&final_dir);
        for name in [
            "backbone_model.model.embed_tokens.weight",
            "backbone_model.lm_head.weight",
            HEAD_WEIGHT,
            HEAD_BIAS,
        ] {
            assert!(tensors.contains_key(name), "{name} missing");
        }
        assert_eq!(
            (tensors[HEAD_WEIGHT].size(), tensors[HEAD_BIAS].size()),
            (vec![1, 32], vec![1])
        );
        // The output embedding is not used by a reward model and stays as loaded.
        let base = saved_tensors(model_dir.path());
        assert!(
            tensors["backbone_model.lm_head.weight"]
                .narrow(0, 0, 64)
                .equal(&base["lm_head.weight"])
        );
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(final_dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            (
                config["model_type"].as_str(),
                config["backbone_config"]["vocab_size"].as_i64()
            ),
            (Some("reward_model"), Some(65))
        );
        // Reloaded, it scores exactly as the trained model.
        let tokenizer = Tokenizer::from_dir(&final_dir).unwrap();
        let texts: Vec<String> = data.iter().map(|e| e.prompt.clone()).collect();
        let trained = trainer
            .model()
            .score_texts(&tokenizer, &texts, 64, 64, BatchLimits::rows(3))
            .unwrap();
        let reloaded = RewardModel::load(&final_dir, Device::Cpu, None).unwrap();
        assert_eq!(
            reloaded
                .score_texts(&tokenizer, &texts, 64, 64, BatchLimits::rows(3))
                .unwrap(),
            trained
        );
        for (logit, example) in trained.iter().zip(&data) {
            let p = crate::sigmoid(f64::from(*logit));
            assert!((p - example.label).abs() < 0.05, "{p} vs {}", example.label);
        }
        // A reference checkpoint has no backbone_config and names the backbone's directory.
        let backbone_dir = tempfile::tempdir().unwrap();
        let mut config = config;
        std::fs::write(
            backbone_dir.path().join("config.json"),
            config["backbone_config"].to_string(),
        )
        .unwrap();
        config.as_object_mut().unwrap().remove("backbone_config");
        config["backbone_model_name_or_path"] = backbone_dir.path().display().to_string().into();
        std::fs::write(final_dir.join("config.json"), config.to_string()).unwrap();
        let reference = RewardModel::load(&final_dir, Device::Cpu, None).unwrap();
        assert_eq!(
            reference
                .score_texts(&tokenizer, &texts, 64, 64, BatchLimits::rows(3))
                .unwrap(),
            trained
        );
    }

    #[test]
    fn scores_read_the_last_real_token_of_left_padded_rows() {
        let backbone =
            lincal_model::testing::random_model(lincal_model::testing::tiny_llama(false), 9);
        let model = RewardModel::new(backbone, HeadInit::Default { seed: 1 }, "tiny");
        let bound = 1.0 / 32f64.sqrt();
        let head = model.head_var_store().variables();
        assert!(head[HEAD_WEIGHT].abs().max().double_value(&[]) <= bound);
        assert_eq!(head[HEAD_BIAS].double_value(&[0]), 0.0);
        let dir = tempfile::tempdir().unwrap();
        lincal_model::testing::write_tokenizer(dir.path(), 64);
        let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
        let alone = model
            .score_texts(
                &tokenizer,
                &["t5 t6".to_string()],
                64,
                0,
                BatchLimits::rows(1),
            )
            .unwrap();
        let batched = model
            .score_texts(
                &tokenizer,
                &["t7 t8 t9 t10 t11".to_string(), "t5 t6".to_string()],
                64,
                0,
                BatchLimits::rows(2),
            )
            .unwrap();
        assert!(
            (alone[0] - batched[1]).abs() < 1e-5,
            "{alone:?} vs {batched:?}"
        );
        // Each of `texts` scored in batches within `limits` as it is alone, in their order.
        let scores_as_alone = |texts: &[String], limits: BatchLimits| {
            let batched = model.score_texts(&tokenizer, texts, 64, 0, limits).unwrap();
            for (text, logit) in texts.iter().zip(&batched) {
                let alone = model
                    .score_texts(
                        &tokenizer,
                        std::slice::from_ref(text),
                        64,
                        0,
                        BatchLimits::rows(1),
                    )
                    .unwrap();
                assert!(
                    (alone[0] - logit).abs() < 1e-5,
                    "{text}: {alone:?} vs {logit}"
                );
            }
        };
        // Texts batched by length (here 1, 2 | 3, 4 | 5 words).
        let texts: Vec<String> = [
            "t3 t4 t5 t6",
            "t7",
            "t8 t9 t10 t11 t12",
            "t13 t14",
            "t15 t16 t17",
        ]
        .map(String::from)
        .to_vec();
        scores_as_alone(&texts, BatchLimits::rows(2));
        // At most 6 padded tokens a batch: 1, 2 | 3 | 4 | 5 words.
        scores_as_alone(&texts, BatchLimits { rows: 8, tokens: 6 });
        // Texts that begin alike (as a paragraph's ForecastProbs candidates do) share rows,
        // and each still scores as it does alone.
        let texts: Vec<String> = [
            "t3 t4 t5 t6 t7 t8",
            "t3 t4 t5 t6 t7 t9 t10",
            "t3 t4 t5 t6",
            "t3 t4 t5 t6 t7 t8",
            "t11",
            "t3 t4 t5 t6 t12",
        ]
        .map(String::from)
        .to_vec();
        let rows = crate::data::tokenize_reward_texts(&tokenizer, &texts, 64).unwrap();
        assert_eq!(pack_shared_prefixes(&rows, 64).len(), 2);
        scores_as_alone(&texts, BatchLimits::rows(1));
        scores_as_alone(&texts, BatchLimits::rows(2));
        // PPO's value model: the same backbone with a zero head scores every text 0.
        let value = model.with_head(HeadInit::Zero);
        assert_eq!(
            value
                .score_texts(
                    &tokenizer,
                    &["t5 t6".to_string(), "t9".to_string()],
                    64,
                    0,
                    BatchLimits::rows(2)
                )
                .unwrap(),
            vec![0.0, 0.0]
        );
    }

    #[test]
    fn scoring_batches_keep_within_rows_and_padded_tokens() {
        let ranges = |limits: BatchLimits, lengths: &[usize]| limits.batches(lengths);
        let lengths = [2, 3, 3, 5, 8, 20];
        assert_eq!(ranges(BatchLimits::rows(4), &lengths), vec![0..4, 4..6]);
        // 12 padded tokens a batch: 2, 3, 3 (9 padded) | 5 (with the 8: 16) | 8 | 20, alone
        // though over the bound.
        let limits = BatchLimits {
            rows: 4,
            tokens: 12,
        };
        assert_eq!(ranges(limits, &lengths), vec![0..3, 3..4, 4..5, 5..6]);
        // The rows bound binds first where rows are short.
        let limits = BatchLimits {
            rows: 2,
            tokens: 100,
        };
        assert_eq!(ranges(limits, &lengths), vec![0..2, 2..4, 4..6]);
        assert!(ranges(limits, &[]).is_empty());
    }

    #[test]
    fn labels_outside_the_unit_interval_are_refused() {
        let model_dir = tiny_model_dir();
        let run = tempfile::tempdir().unwrap();
        let mut data = examples();
        data[1].label = 1.5;
        let err = RewardModelTrainer::new(
            model_dir.path(),
            Device::Cpu,
            &config(1.0),
            &data,
            &[],
            &RunOptions::new(run.path()),
        )
        .err()
        .unwrap()
        .to_string();
        assert_eq!(
            err,
            "train example 1: label 1.5 is outside [0, 1]; \
             labels are probabilities or 0/1 correctness"
        );
    }

    /// The transformer that scores: a reward model's backbone (its embeddings grown to 65
    /// rows with the pad token), a plain causal LM's own config, and a directory without a
    /// config named in the error.
    #[test]
    fn scoring_model_config_reads_reward_models_and_plain_models() {
        let fixture = crate::testutil::fixture();
        let reward = RewardModel::scoring_model_config(&fixture.paths.reward_model).unwrap();
        assert_eq!(
            reward,
            RewardModel::load(&fixture.paths.reward_model, Device::Cpu, None)
                .unwrap()
                .backbone
                .config()
                .clone()
        );
        assert_eq!(reward.vocab_size(), 65);
        let policy = &fixture.paths.policy;
        assert_eq!(
            RewardModel::scoring_model_config(policy).unwrap(),
            ModelConfig::from_file(&policy.join("config.json")).unwrap()
        );
        let empty = tempfile::tempdir().unwrap();
        let error = RewardModel::scoring_model_config(empty.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&empty.path().join("config.json").display().to_string()),
            "{error}"
        );
    }
}
