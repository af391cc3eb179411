//! Training throughput: timed SFT steps (forward, backward, clipping, AdamW with f32 masters
//! for a bf16 model) exactly as the trainer runs them, on random tokens.

use crate::data::{TokenRow, collate_sft};
use crate::engine::synchronize;
use crate::error::{Result, TrainError};
use crate::optim::{AdamWConfig, TrainableParams};
use crate::sft::causal_lm_loss_sum;
use lincal_model::CausalLm;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Instant;

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

/// Runs `warmup_steps + steps` optimizer steps of batch `batch_size` × `seq_len` random
/// tokens on `model` (whose weights it trains: use a throwaway copy) and times the last
/// `steps`, with the device synchronised before and after.
pub fn bench_sft(model: &CausalLm, batch_size: usize, seq_len: usize, steps: usize, warmup_steps: usize) -> Result<SftBench> {
    if batch_size == 0 || steps == 0 || seq_len < 2 {
        return Err(TrainError::config("bench", format!("needs batch size >= 1, steps >= 1 and sequence length >= 2; got {batch_size}, {steps}, {seq_len}")));
    }
    let vocab = model.config().vocab_size();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let rows: Vec<TokenRow> = (0..batch_size)
        .map(|_| {
            let ids: Vec<i64> = (0..seq_len).map(|_| rng.random_range(0..vocab)).collect();
            TokenRow { labels: ids.clone(), input_ids: ids, starts: vec![0] }
        })
        .collect();
    let batch = collate_sft(&rows.iter().collect::<Vec<_>>(), 0, model.device());
    let labelled = (batch_size * (seq_len - 1)) as f64;
    let named: Vec<(String, tch::Tensor)> = model.var_store().variables().into_iter().collect();
    let mut params = TrainableParams::new(named, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 });
    let mut started = Instant::now();
    for step in 0..warmup_steps + steps {
        if step == warmup_steps {
            synchronize(model.device());
            started = Instant::now();
        }
        (causal_lm_loss_sum(model, &batch) / labelled).backward();
        params.accumulate_grads();
        params.step(1e-5, 1.0);
    }
    synchronize(model.device());
    let seconds = started.elapsed().as_secs_f64();
    let tokens_per_step = batch_size * seq_len;
    Ok(SftBench { tokens_per_second: (tokens_per_step * steps) as f64 / seconds, seconds_per_step: seconds / steps as f64, tokens_per_step, steps, parameters: params.num_parameters() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_runs_training_steps_and_counts_tokens() {
        let model = lincal_model::testing::random_model(lincal_model::testing::tiny_llama(false), 1);
        let before = model.var_store().variables()["lm_head.weight"].copy();
        let result = bench_sft(&model, 2, 8, 2, 1).unwrap();
        assert_eq!((result.tokens_per_step, result.steps), (16, 2));
        assert!(result.tokens_per_second > 0.0);
        // Three AdamW steps moved the weights.
        assert!(!model.var_store().variables()["lm_head.weight"].equal(&before));
        assert_eq!(bench_sft(&model, 2, 1, 2, 1).unwrap_err().to_string(), "config field `bench`: needs batch size >= 1, steps >= 1 and sequence length >= 2; got 2, 2, 1");
    }
}
