//! Supervised fine-tuning (SPEC 1.3; ExtractAnswers in 1.5): causal-LM cross-entropy on the
//! target and EOS tokens of prompt + target, prompts masked, rows right-padded.

use crate::config::SftConfig;
use crate::cross_entropy::{cross_entropy_sum, rows_per_slice};
use crate::data::{
    SftBatch, SftExample, TokenRow, collate_sft, pack_rows, rows_digest, tokenize_sft_set,
};
use crate::error::Result;
use crate::optim::{AdamWConfig, TrainableParams};
use crate::run::RunOptions;
use crate::setup::LoadedModel;
use crate::train_loop::{EvalSum, Objective, TrainLoop, backward_loss};
use crate::training_run::TrainSummary;
use lincal_data::artifact::Manifest;
use lincal_model::CausalLm;
use std::ops::Range;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// Sum of the cross-entropy of every labelled next-token prediction in `batch`.
pub fn causal_lm_loss_sum(model: &CausalLm, batch: &SftBatch) -> Tensor {
    labelled_loss_sum(
        model,
        &model.forward(
            &batch.input_ids,
            &batch.positions,
            batch.mask.as_ref(),
            None,
        ),
        batch,
    )
}

/// [`causal_lm_loss_sum`] from the model's final hidden states over `batch`. Logits are
/// computed only at labelled positions (prompts are often most of a row), in f32 as
/// transformers upcasts them before the loss (see [`crate::cross_entropy`] for the GPU's
/// unrounded bf16 products), and a slice at a time.
pub(crate) fn labelled_loss_sum(model: &CausalLm, hidden: &Tensor, batch: &SftBatch) -> Tensor {
    let width = batch.input_ids.size()[1];
    let hidden = hidden.narrow(1, 0, width - 1);
    let targets = batch.labels.narrow(1, 1, width - 1).reshape([-1]);
    let labelled = targets
        .ne(crate::data::IGNORE_INDEX)
        .nonzero()
        .squeeze_dim(1);
    let hidden = hidden
        .reshape([-1, hidden.size()[2]])
        .index_select(0, &labelled);
    let weight = model.output_weight();
    cross_entropy_sum(
        &hidden,
        weight,
        &targets.index_select(0, &labelled),
        rows_per_slice(weight.size()[0]),
    )
}

/// What the data looked like after tokenisation.
#[derive(Debug, Clone, PartialEq)]
pub struct SftDataReport {
    pub train_examples: usize,
    /// Rows per epoch (equal to the examples unless packing).
    pub train_rows: usize,
    pub eval_examples: usize,
    /// Indices of examples dropped because truncation left no target token.
    pub dropped_train: Vec<usize>,
    pub dropped_eval: Vec<usize>,
    pub target_tokens: usize,
}

struct SftObjective {
    loaded: LoadedModel,
    train: Vec<TokenRow>,
    eval: Vec<TokenRow>,
    eval_batch_size: usize,
    /// Decoder layers recomputed in the backward pass (`TrainingConfig::recomputed`).
    recomputed: Option<usize>,
    base_model: PathBuf,
}

impl Objective for SftObjective {
    fn weight(&self, unit: usize) -> f64 {
        self.train[unit].target_tokens() as f64
    }

    fn backward(&self, units: &[usize], divisor: f64) -> Result<(Tensor, usize)> {
        let rows: Vec<&TokenRow> = units.iter().map(|&u| &self.train[u]).collect();
        let model = &self.loaded.model;
        let batch = collate_sft(&rows, self.loaded.pad_id, model.device());
        let loss = backward_loss(
            model,
            self.recomputed,
            &batch.input_ids,
            &batch.positions,
            batch.mask.as_ref(),
            divisor,
            |hidden| labelled_loss_sum(model, hidden, &batch),
        );
        Ok((loss, batch.tokens))
    }

    fn eval_len(&self) -> usize {
        self.eval.len()
    }

    fn evaluate(&self, examples: Range<usize>) -> Result<Vec<EvalSum>> {
        let (mut loss, mut tokens) = (0.0, 0usize);
        tch::no_grad(|| {
            for chunk in self.eval[examples].chunks(self.eval_batch_size) {
                let rows: Vec<&TokenRow> = chunk.iter().collect();
                let batch = collate_sft(&rows, self.loaded.pad_id, self.loaded.model.device());
                loss += causal_lm_loss_sum(&self.loaded.model, &batch).double_value(&[]);
                tokens += rows.iter().map(|r| r.target_tokens()).sum::<usize>();
            }
        });
        Ok(vec![EvalSum {
            name: "eval_loss",
            sum: loss,
            weight: tokens as f64,
        }])
    }

    fn set_training(&self, training: bool) {
        self.loaded.set_training(training);
    }

    fn save_final(&mut self, dir: &Path) -> Result<()> {
        self.loaded.save_causal_lm(dir, &self.base_model)
    }
}

/// Fine-tunes a causal LM on prompt/target pairs into a run directory.
pub struct SftTrainer {
    objective: SftObjective,
    train_loop: TrainLoop,
    report: SftDataReport,
}

impl SftTrainer {
    /// Loads the model in `model_dir` (config, safetensors, tokenizer) on `device`, tokenises
    /// the examples and opens the run in `run.dir`, resuming from its newest checkpoint when
    /// there is one.
    pub fn new(
        model_dir: &Path,
        device: Device,
        config: &SftConfig,
        train: &[SftExample],
        eval: &[SftExample],
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
        let max_len = config.model_max_length;
        let (rows, dropped_train) =
            tokenize_sft_set(&loaded.tokenizer, train, loaded.eos_id, max_len, "train")?;
        let (eval_rows, dropped_eval) =
            tokenize_sft_set(&loaded.tokenizer, eval, loaded.eos_id, max_len, "eval")?;
        let report = SftDataReport {
            train_examples: rows.len(),
            train_rows: rows.len(),
            eval_examples: eval_rows.len(),
            dropped_train,
            dropped_eval,
            target_tokens: rows.iter().map(TokenRow::target_tokens).sum(),
        };
        // Packing fills rows in a seeded order, so that neighbours in the data file (often
        // related) are not always packed together; rows are shuffled again every epoch.
        let rows = if config.packing {
            let order = crate::data::epoch_order(rows.len(), config.training.seed, u64::MAX);
            pack_rows(
                &order.iter().map(|&i| rows[i].clone()).collect::<Vec<_>>(),
                max_len,
            )
        } else {
            rows
        };
        let report = SftDataReport {
            train_rows: rows.len(),
            ..report
        };
        let params = TrainableParams::sharded(
            loaded.trainable(&[]),
            AdamWConfig::from_training(&config.training),
            config.training.precision.master_weights(),
            run.comm.clone(),
        );
        let manifest = Manifest {
            base_model: Some(model_dir.to_path_buf()),
            ..Manifest::new(
                "sft",
                serde_json::to_value(config).expect("configs serialise"),
                Vec::new(),
            )
        };
        let digest = rows_digest(
            rows.iter()
                .map(|r| (r.input_ids.as_slice(), r.labels.as_slice())),
        );
        let train_loop = TrainLoop::open(
            run,
            manifest,
            &config.training,
            params,
            rows.len(),
            digest,
            device,
        )?;
        let objective = SftObjective {
            loaded,
            train: rows,
            eval: eval_rows,
            eval_batch_size: config.training.eval_batch_size,
            recomputed: config.training.recomputed(),
            base_model: model_dir.to_path_buf(),
        };
        Ok(SftTrainer {
            objective,
            train_loop,
            report,
        })
    }

    /// Trains to the end (writing `final/`), or until `stop_at_step` steps are complete.
    pub fn train(&mut self, stop_at_step: Option<u64>) -> Result<TrainSummary> {
        self.train_loop.train(&mut self.objective, stop_at_step)
    }

    pub fn data_report(&self) -> &SftDataReport {
        &self.report
    }

    pub fn total_steps(&self) -> u64 {
        self.train_loop.total_steps()
    }

    pub fn model(&self) -> &CausalLm {
        &self.objective.loaded.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{
        assert_same_final_weights, quick_training, saved_tensors, tiny_model_dir,
    };
    use tch::Kind;

    fn examples() -> Vec<SftExample> {
        [
            ("t5 t6", " t20 t21 t22"),
            ("t7 t8 t9", " t23 t24"),
            ("t10", " t25 t26 t27 t28"),
            ("t11 t12", " t29"),
            ("t13 t14 t15 t16", " t30 t31"),
            ("t17", " t32"),
            ("t18 t19", " t33 t34 t35"),
            ("t36", " t37 t38"),
        ]
        .iter()
        .map(|(p, t)| SftExample {
            question_id: None,
            prompt: p.to_string(),
            target: t.to_string(),
        })
        .collect()
    }

    fn sft_config(
        learning_rate: f64,
        epochs: f64,
        batch_size: usize,
        micro_batch_size: usize,
    ) -> SftConfig {
        SftConfig {
            model_max_length: 64,
            packing: false,
            pad_token: "[PAD]".into(),
            lora: None,
            training: quick_training(learning_rate, epochs, batch_size, micro_batch_size),
        }
    }

    fn read_metrics(run: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// 4 examples, 60 steps of batch 4 at lr 1e-2: the eval loss (on the same examples) falls
    /// below 0.05 nats per target token, from about ln 65 ≈ 4.2 at the start.
    #[test]
    fn memorises_a_handful_of_examples_and_writes_the_run_directory() {
        let model_dir = tiny_model_dir();
        let run = tempfile::tempdir().unwrap();
        let data = &examples()[..4];
        let mut config = sft_config(1e-2, 60.0, 4, 2);
        config.training.eval_every = 30;
        let mut trainer = SftTrainer::new(
            model_dir.path(),
            Device::Cpu,
            &config,
            data,
            data,
            &RunOptions::new(run.path()),
        )
        .unwrap();
        assert_eq!(trainer.total_steps(), 60);
        assert_eq!(trainer.data_report().target_tokens, 14);
        let summary = trainer.train(None).unwrap();
        let eval_loss = summary.eval[0].1;
        assert!(eval_loss < 0.05, "eval loss {eval_loss}");
        let final_dir = summary.final_dir.unwrap();
        // Metrics: 60 step records, 2 evaluations (step 30 and 60), and TensorBoard has them.
        let metrics = read_metrics(run.path());
        assert_eq!(
            metrics.iter().filter(|m| m.get("loss").is_some()).count(),
            60
        );
        assert_eq!(metrics.iter().filter_map(|m| m.get("eval_loss")).count(), 2);
        assert!(metrics[0]["loss"].as_f64().unwrap() > 3.0);
        let events = std::fs::read_dir(run.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_str().unwrap().contains("tfevents"))
            .unwrap();
        let events = crate::tensorboard::tests::read_events(&events).unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.step == 60 && e.scalars.iter().any(|(tag, _)| tag == "eval/eval_loss"))
        );
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.path().join("manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (
                manifest["stage"].as_str(),
                manifest["config"]["training"]["learning_rate"].as_f64()
            ),
            (Some("sft"), Some(1e-2))
        );
        assert_eq!(manifest["base_model"].as_str(), model_dir.path().to_str());
        assert!(
            manifest["finished"].is_string(),
            "writing final/ marks the manifest finished: {manifest}"
        );
        // The saved model has the pad row, the pad token, and scores the data as the trainer did.
        let saved = CausalLm::load(&final_dir, Device::Cpu, None).unwrap();
        assert_eq!(
            (saved.config().vocab_size(), saved.kind()),
            (65, Kind::Float)
        );
        let tokenizer = lincal_model::Tokenizer::from_dir(&final_dir).unwrap();
        assert_eq!(
            (
                tokenizer.pad_token().as_deref(),
                tokenizer.token_id("[PAD]")
            ),
            (Some("[PAD]"), Some(64))
        );
        let (rows, _) = tokenize_sft_set(&tokenizer, data, 2, 64, "eval").unwrap();
        let batch = collate_sft(&rows.iter().collect::<Vec<_>>(), 64, Device::Cpu);
        let reloaded_loss =
            tch::no_grad(|| causal_lm_loss_sum(&saved, &batch)).double_value(&[]) / 14.0;
        assert!(
            (reloaded_loss - eval_loss).abs() < 1e-6,
            "{reloaded_loss} vs {eval_loss}"
        );
    }

    /// One step over 8 examples of different lengths: 4 micro-batches of 2 against one batch of
    /// 8. The loss is averaged over the step's target tokens, so both compute the same gradient
    /// up to float rounding. Adam's first update is lr·g/(|g| + eps), a sign for tiny g, so eps
    /// is 1 here to keep rounding differences small: parameters agree within 1e-6. Gradient
    /// checkpointing of one or both layers computes the same step too.
    #[test]
    fn gradient_accumulation_equals_one_large_batch() {
        let model_dir = tiny_model_dir();
        let data = examples();
        // `recomputed`: the layers gradient checkpointing recomputes, if it is on.
        let run_step = |micro: usize, recomputed: Option<usize>| {
            let run = tempfile::tempdir().unwrap();
            let mut config = sft_config(1e-2, 1.0, 8, micro);
            config.training.adam_epsilon = 1.0;
            config.training.gradient_checkpointing = recomputed.is_some();
            config.training.recomputed_layers = recomputed;
            let mut trainer = SftTrainer::new(
                model_dir.path(),
                Device::Cpu,
                &config,
                &data,
                &[],
                &RunOptions::new(run.path()),
            )
            .unwrap();
            assert_eq!(trainer.total_steps(), 1);
            trainer.train(None).unwrap();
            saved_tensors(&run.path().join("final"))
        };
        let accumulated = run_step(2, None);
        let full = run_step(8, None);
        let checkpointed = run_step(2, Some(2));
        let partly_checkpointed = run_step(2, Some(1));
        let initial = saved_tensors(model_dir.path());
        for (name, tensor) in &accumulated {
            for (other, label) in [
                (&full, "one batch"),
                (&checkpointed, "checkpointed"),
                (&partly_checkpointed, "one layer checkpointed"),
            ] {
                let diff = (tensor - &other[name]).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "{name}: {label} differs by {diff}");
            }
        }
        // And the step did move the weights.
        let moved = (&accumulated["lm_head.weight"].narrow(0, 0, 64) - &initial["lm_head.weight"])
            .abs()
            .max()
            .double_value(&[]);
        assert!(moved > 1e-4);
    }

    /// A run stopped after 3 of 6 steps whose step-3 checkpoint is then lost (as if killed
    /// before writing it) resumes from step 2 and ends with exactly the weights and losses of
    /// an uninterrupted run.
    #[test]
    fn killed_run_resumes_bit_identical() {
        let model_dir = tiny_model_dir();
        let data = &examples()[..4];
        let mut config = sft_config(5e-3, 3.0, 2, 1);
        config.training.save_every = 2;
        config.training.warmup_ratio = 0.3;
        let whole = tempfile::tempdir().unwrap();
        SftTrainer::new(
            model_dir.path(),
            Device::Cpu,
            &config,
            data,
            &[],
            &RunOptions::new(whole.path()),
        )
        .unwrap()
        .train(None)
        .unwrap();

        let broken = tempfile::tempdir().unwrap();
        let options = RunOptions::new(broken.path());
        let mut trainer =
            SftTrainer::new(model_dir.path(), Device::Cpu, &config, data, &[], &options).unwrap();
        let summary = trainer.train(Some(3)).unwrap();
        assert_eq!((summary.steps, summary.final_dir.clone()), (3, None));
        drop(trainer);
        let checkpoints = broken.path().join("checkpoints");
        std::fs::remove_dir_all(checkpoints.join("step-00000003")).unwrap();
        assert!(
            checkpoints
                .join("step-00000002")
                .join("optimizer.safetensors")
                .exists()
        );
        let mut resumed =
            SftTrainer::new(model_dir.path(), Device::Cpu, &config, data, &[], &options).unwrap();
        let summary = resumed.train(None).unwrap();
        assert_eq!((summary.resumed_from, summary.steps), (Some(2), 6));

        let (a, b) = (
            saved_tensors(&whole.path().join("final")),
            saved_tensors(&broken.path().join("final")),
        );
        assert_eq!(a.len(), b.len());
        for (name, tensor) in &a {
            assert!(tensor.equal(&b[name]), "{name} differs after resume");
        }
        let losses = |run: &Path| {
            read_metrics(run)
                .iter()
                .filter_map(|m| {
                    m.get("loss")
                        .map(|l| (m["step"].as_u64().unwrap(), l.as_f64().unwrap()))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(losses(whole.path()), losses(broken.path()));
        assert_eq!(losses(broken.path()).len(), 6);
        // A finished run is not trained again.
        let again = SftTrainer::new(model_dir.path(), Device::Cpu, &config, data, &[], &options)
            .unwrap()
            .train(None)
            .unwrap();
        assert_eq!((again.steps, again.last("loss")), (6, None));
    }

    /// Ranks as threads ([`crate::distributed::thread_group`]): two ranks stopped after 2 of 4
    /// steps, resumed by three, give the losses and final weights of one uninterrupted process
    /// (within float summation order), and only rank 0 writes the run directory.
    #[test]
    fn data_parallel_ranks_train_as_one_process_and_resume_at_another_world_size() {
        let model_dir = tiny_model_dir();
        let data = examples();
        let mut config = sft_config(1e-2, 2.0, 4, 1);
        config.training.save_every = 1;
        config.training.weight_decay = 0.1;
        let train = |options: &RunOptions, stop: Option<u64>| {
            SftTrainer::new(
                model_dir.path(),
                Device::Cpu,
                &config,
                &data,
                &data[..3],
                options,
            )
            .unwrap()
            .train(stop)
            .unwrap()
        };
        let single = tempfile::tempdir().unwrap();
        train(&RunOptions::new(single.path()), None);
        let parallel = tempfile::tempdir().unwrap();
        for (world, stop) in [(2, Some(2)), (3, None)] {
            let summaries = crate::distributed::on_ranks(world, |comm| {
                train(
                    &RunOptions {
                        comm,
                        ..RunOptions::new(parallel.path())
                    },
                    stop,
                )
            });
            let steps: Vec<u64> = summaries.iter().map(|s| s.steps).collect();
            assert_eq!(steps, vec![stop.unwrap_or(4); world]);
        }
        let records = |run: &Path, key: &str| -> Vec<f64> {
            read_metrics(run)
                .iter()
                .filter_map(|m| m.get(key).and_then(|v| v.as_f64()))
                .collect()
        };
        for key in ["loss", "grad_norm", "eval_loss"] {
            let (want, got) = (records(single.path(), key), records(parallel.path(), key));
            assert_eq!(want.len(), got.len(), "{key}: {got:?}");
            for (w, g) in want.iter().zip(&got) {
                assert!(
                    (w - g).abs() < 1e-5 * w.abs().max(1.0),
                    "{key}: {got:?} against {want:?}"
                );
            }
        }
        assert_eq!(records(parallel.path(), "loss").len(), 4);
        assert_same_final_weights(single.path(), parallel.path(), 1e-5);
    }

    /// A rank that dies ends the job: the other rank's next collective fails naming it.
    #[test]
    fn a_dying_rank_stops_the_data_parallel_run() {
        let model_dir = tiny_model_dir();
        let data = examples();
        let config = sft_config(1e-2, 1.0, 4, 1);
        let run = tempfile::tempdir().unwrap();
        let outcomes = crate::distributed::on_ranks(2, |comm| {
            let options = RunOptions {
                comm,
                ..RunOptions::new(run.path())
            };
            let mut trainer =
                SftTrainer::new(model_dir.path(), Device::Cpu, &config, &data, &[], &options)
                    .unwrap();
            if options.comm.rank() == 1 {
                return None;
            }
            drop(options);
            Some(trainer.train(None).unwrap_err().to_string())
        });
        let message = outcomes[0].as_ref().unwrap();
        assert!(message.contains("rank 1 left the group"), "{message}");
        assert!(!run.path().join("final").exists());
    }

    /// Two runs on one directory would interleave their checkpoints and metrics: the second is
    /// refused, naming the first's process, and the directory opens again once it is gone.
    #[test]
    fn a_second_run_on_a_directory_in_use_is_refused() {
        let model_dir = tiny_model_dir();
        let run = tempfile::tempdir().unwrap();
        let options = RunOptions::new(run.path());
        let data = &examples()[..4];
        let config = sft_config(1e-3, 1.0, 2, 1);
        let open = || SftTrainer::new(model_dir.path(), Device::Cpu, &config, data, &[], &options);
        let first = open().unwrap();
        let error = open().err().unwrap().to_string();
        assert!(
            error.contains(&format!("{}: ", run.path().join("lincal.lock").display()))
                && error.contains(&format!("is held by process {}", std::process::id())),
            "{error}"
        );
        drop(first);
        open().unwrap().train(None).unwrap();
        assert!(!run.path().join("lincal.lock").exists());
    }

    #[test]
    fn a_run_directory_refuses_other_settings_and_other_data() {
        let model_dir = tiny_model_dir();
        let run = tempfile::tempdir().unwrap();
        let options = RunOptions::new(run.path());
        let data = &examples()[..4];
        let mut config = sft_config(1e-3, 2.0, 2, 1);
        config.training.save_every = 1;
        SftTrainer::new(model_dir.path(), Device::Cpu, &config, data, &[], &options)
            .unwrap()
            .train(Some(1))
            .unwrap();
        config.training.learning_rate = 2e-3;
        let err = SftTrainer::new(model_dir.path(), Device::Cpu, &config, data, &[], &options)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.ends_with(
                "manifest.json: holds a run that does not match this one: \
                 its config differs: `training.learning_rate` was 0.001, now 0.002; \
                 resume with the same settings, or train into a new directory"
            ),
            "{err}"
        );
        config.training.learning_rate = 1e-3;
        let err = SftTrainer::new(
            model_dir.path(),
            Device::Cpu,
            &config,
            &examples()[4..],
            &[],
            &options,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("step-00000001: was written with training data of 4 units"),
            "{err}"
        );
        // Input files are hashed into the manifest: an edited file stops the resume.
        let inputs = tempfile::tempdir().unwrap();
        let file = inputs.path().join("train.jsonl");
        std::fs::write(&file, "v1").unwrap();
        let hashed = tempfile::tempdir().unwrap();
        let with_input = RunOptions {
            input_files: vec![file.clone()],
            ..RunOptions::new(hashed.path())
        };
        SftTrainer::new(
            model_dir.path(),
            Device::Cpu,
            &config,
            data,
            &[],
            &with_input,
        )
        .unwrap();
        let v1 = lincal_data::artifact::InputFile::hash(&file)
            .unwrap()
            .sha256;
        std::fs::write(&file, "v2").unwrap();
        let v2 = lincal_data::artifact::InputFile::hash(&file)
            .unwrap()
            .sha256;
        let err = SftTrainer::new(
            model_dir.path(),
            Device::Cpu,
            &config,
            data,
            &[],
            &with_input,
        )
        .err()
        .unwrap()
        .to_string();
        let changed = format!(
            "holds a run that does not match this one: input {} has changed (sha256 {} then, \
             {} now); resume with the same settings, or train into a new directory",
            file.display(),
            &v1[..12],
            &v2[..12]
        );
        assert!(err.ends_with(&changed), "{err}");
        // So is a run from another base model.
        let other_model = tiny_model_dir();
        let err = SftTrainer::new(
            other_model.path(),
            Device::Cpu,
            &config,
            data,
            &[],
            &options,
        )
        .err()
        .unwrap()
        .to_string();
        let moved = format!(
            "holds a run that does not match this one: its base model was {}, now {}; \
             resume with the same settings",
            model_dir.path().display(),
            other_model.path().display()
        );
        assert!(err.contains(&moved), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = SftTrainer::new(
            model_dir.path(),
            Device::Cpu,
            &config,
            &[],
            &[],
            &RunOptions::new(empty.path()),
        )
        .err()
        .unwrap()
        .to_string();
        assert_eq!(
            err,
            "the training set is empty (examples whose prompt fills model_max_length are dropped); \
             give at least one example with a target"
        );
        let stray = tempfile::tempdir().unwrap();
        std::fs::write(stray.path().join("notes.txt"), "x").unwrap();
        let err = SftTrainer::new(
            model_dir.path(),
            Device::Cpu,
            &config,
            data,
            &[],
            &RunOptions::new(stray.path()),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.ends_with(
                "is not empty and holds no manifest.json, so it is not a lincal run; \
                 train into a new or empty directory"
            ),
            "{err}"
        );
    }

    /// bf16 compute with f32 masters: the loss falls, and the final model is saved in f32 from
    /// the masters (weights a bf16 copy could not hold).
    #[test]
    fn bf16_training_updates_f32_masters_and_saves_them() {
        let model_dir = tiny_model_dir();
        let run = tempfile::tempdir().unwrap();
        let data = &examples()[..4];
        let mut config = sft_config(1e-2, 10.0, 4, 2);
        config.training.precision = crate::config::Precision::Bf16;
        let mut trainer = SftTrainer::new(
            model_dir.path(),
            Device::Cpu,
            &config,
            data,
            &[],
            &RunOptions::new(run.path()),
        )
        .unwrap();
        assert_eq!(trainer.model().kind(), Kind::BFloat16);
        let summary = trainer.train(None).unwrap();
        let losses: Vec<f64> = read_metrics(run.path())
            .iter()
            .filter_map(|m| m["loss"].as_f64())
            .collect();
        assert!(losses[9] < losses[0] / 2.0, "{losses:?}");
        let saved = CausalLm::load(summary.final_dir.as_ref().unwrap(), Device::Cpu, None).unwrap();
        assert_eq!(saved.kind(), Kind::Float);
        let weight = &saved.var_store().variables()["model.layers.0.mlp.up_proj.weight"];
        let bf16_error = (weight - weight.to_kind(Kind::BFloat16).to_kind(Kind::Float))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            bf16_error > 0.0,
            "the saved weights are bf16 values: the masters were not saved"
        );
    }

    /// Packing changes the batch layout, not the loss: a packed row scores its examples exactly
    /// as separate rows do.
    #[test]
    fn packed_rows_score_like_separate_rows() {
        let model = lincal_model::testing::random_model(lincal_model::testing::tiny_llama(true), 3);
        let dir = tempfile::tempdir().unwrap();
        lincal_model::testing::write_tokenizer(dir.path(), 64);
        let tokenizer = lincal_model::Tokenizer::from_dir(dir.path()).unwrap();
        let (rows, _) = tokenize_sft_set(&tokenizer, &examples()[..3], 2, 64, "train").unwrap();
        let packed = pack_rows(&rows, 64);
        assert_eq!(packed.len(), 1);
        let separate = causal_lm_loss_sum(
            &model,
            &collate_sft(&rows.iter().collect::<Vec<_>>(), 0, Device::Cpu),
        )
        .double_value(&[]);
        let together = causal_lm_loss_sum(&model, &collate_sft(&[&packed[0]], 0, Device::Cpu))
            .double_value(&[]);
        assert!(
            (separate - together).abs() < 1e-4,
            "{separate} vs {together}"
        );
    }
}
