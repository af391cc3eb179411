//! Training throughput: timed SFT steps (forward, backward, clipping, AdamW with f32 masters
//! for a bf16 model) exactly as the trainer runs them, on random tokens.

use crate::data::{TokenRow, collate_sft};
use crate::error::{Result, TrainError};
use crate::optim::{AdamWConfig, TrainableParams};
use crate::sft::labelled_loss_sum;
use crate::train_loop::backward_loss;
use lincal_model::trace::Trace;
use lincal_model::{CausalLm, synchronize};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// What `bench_sft` runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SftBenchSettings {
    pub batch_size: usize,
    pub seq_len: usize,
    /// Timed steps, after `warmup_steps` untimed ones.
    pub steps: usize,
    pub warmup_steps: usize,
    /// Decoder layers recomputed by gradient checkpointing; `None`: no checkpointing.
    pub recomputed: Option<usize>,
    /// f32 master weights for a low-precision model (see `Precision::master_weights`).
    pub master_weights: bool,
    /// Writes a profiler trace of the timed steps here ([`lincal_model::trace`]).
    pub trace: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SftBench {
    /// Trained tokens per second over the timed steps.
    pub tokens_per_second: f64,
    pub seconds_per_step: f64,
    pub tokens_per_step: usize,
    /// Timed steps (warm-up steps excluded).
    pub steps: usize,
    pub parameters: i64,
}

/// Runs `warmup_steps + steps` optimizer steps of `batch_size` × `seq_len` random tokens on
/// `model` (whose weights it trains: use a throwaway copy) and times the last `steps`, with
/// the device synchronised before and after.
pub fn bench_sft(model: &CausalLm, settings: &SftBenchSettings) -> Result<SftBench> {
    let SftBenchSettings {
        batch_size,
        seq_len,
        steps,
        warmup_steps,
        recomputed,
        master_weights,
        ref trace,
    } = *settings;
    if batch_size == 0 || steps == 0 || seq_len < 2 {
        return Err(TrainError::config(
            "bench",
            format!(
                "needs batch size >= 1, steps >= 1 and sequence length >= 2; \
                 got {batch_size}, {steps}, {seq_len}"
            ),
        ));
    }
    let vocab = model.config().vocab_size();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let rows: Vec<TokenRow> = (0..batch_size)
        .map(|_| {
            let ids: Vec<i64> = (0..seq_len).map(|_| rng.random_range(0..vocab)).collect();
            TokenRow {
                labels: ids.clone(),
                input_ids: ids,
                starts: vec![0],
            }
        })
        .collect();
    let batch = collate_sft(&rows.iter().collect::<Vec<_>>(), 0, model.device());
    let labelled = (batch_size * (seq_len - 1)) as f64;
    let named: Vec<(String, tch::Tensor)> = model.var_store().variables().into_iter().collect();
    let mut params = TrainableParams::new(
        named,
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        master_weights,
    );
    let mut started = Instant::now();
    let mut recording = None;
    for step in 0..warmup_steps + steps {
        if step == warmup_steps {
            synchronize(model.device());
            recording = Trace::start_if(trace.as_deref(), model.device())?;
            started = Instant::now();
        }
        let _loss = backward_loss(
            model,
            recomputed,
            &batch.input_ids,
            &batch.positions,
            batch.mask.as_ref(),
            labelled,
            |hidden| labelled_loss_sum(model, hidden, &batch),
        );
        params.accumulate_grads();
        params.step(1e-5, 1.0)?;
    }
    synchronize(model.device());
    let seconds = started.elapsed().as_secs_f64();
    if let Some(recording) = recording {
        recording.finish()?;
    }
    let tokens_per_step = batch_size * seq_len;
    Ok(SftBench {
        tokens_per_second: (tokens_per_step * steps) as f64 / seconds,
        seconds_per_step: seconds / steps as f64,
        tokens_per_step,
        steps,
        parameters: params.num_parameters(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_runs_training_steps_and_counts_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let model =
            lincal_model::testing::random_model(lincal_model::testing::tiny_llama(false), 1);
        let before = model.var_store().variables()["lm_head.weight"].copy();
        let settings = SftBenchSettings {
            batch_size: 2,
            seq_len: 8,
            steps: 2,
            warmup_steps: 1,
            recomputed: Some(1),
            master_weights: true,
            trace: Some(dir.path().join("trace.json")),
        };
        let result = bench_sft(&model, &settings).unwrap();
        assert_eq!((result.tokens_per_step, result.steps), (16, 2));
        assert!(result.tokens_per_second > 0.0);
        // Three AdamW steps moved the weights.
        assert!(!model.var_store().variables()["lm_head.weight"].equal(&before));
        // The trace holds the timed steps only, not the warm-up step: two timed steps make
        // twice the fused AdamW calls of one.
        let traced_updates = |settings: &SftBenchSettings| {
            bench_sft(&model, settings).unwrap();
            let path = settings.trace.as_ref().unwrap();
            let trace: serde_json::Value =
                serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            trace["traceEvents"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|event| event["name"] == "aten::_fused_adamw_")
                .count()
        };
        let one_step = traced_updates(&SftBenchSettings {
            steps: 1,
            ..settings.clone()
        });
        assert!(one_step > 0);
        assert_eq!(traced_updates(&settings), 2 * one_step);
        let err = bench_sft(
            &model,
            &SftBenchSettings {
                seq_len: 1,
                ..settings
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "config field `bench`: needs batch size >= 1, steps >= 1 and \
             sequence length >= 2; got 2, 2, 1"
        );
    }
}
