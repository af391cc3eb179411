//! Training computations against transformers, on the golden Llama of `testdata/golden`
//! (`llama_gqa_untied/training.safetensors`, made by `make_golden.py` with transformers 5.17 in
//! f32 on the CPU): the SFT loss of right-padded rows with masked prompts, a reward model's
//! scores of left-padded rows and PPO's response log-probs at temperature 0.7. In each case
//! the same tokens aligned one position off give values far outside the tolerance, which the
//! tests also check, so an off-by-one in the alignment fails here.

use crate::data::{IGNORE_INDEX, TokenRow, collate_left_padded, collate_sft};
use crate::ppo::models::{Sequences, response_logprobs};
use crate::reward_model::{BatchLimits, HEAD_BIAS, HEAD_WEIGHT, HeadInit, RewardModel};
use crate::sft::causal_lm_loss_sum;
use lincal_model::CausalLm;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Relative to values of size 1-30: f32 summed in another order, nothing else.
const TOLERANCE: f64 = 1e-4;

fn golden_model_dir() -> PathBuf {
    // Read at run time: a binary reused from another checkout's build names that one.
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("../../testdata/golden/llama_gqa_untied")
}

fn golden() -> (CausalLm, HashMap<String, Tensor>) {
    let dir = golden_model_dir();
    let model = CausalLm::load(&dir, Device::Cpu, Some(Kind::Float)).unwrap();
    let tensors = Tensor::read_safetensors(dir.join("training.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    (model, tensors)
}

fn int_list(tensor: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(tensor.flatten(0, -1)).unwrap()
}

/// The real tokens of each row of `padded`, `lengths[i]` of them, at the left or the right.
fn unpad(padded: &Tensor, lengths: &Tensor, left_padded: bool) -> Vec<Vec<i64>> {
    let width = padded.size()[1] as usize;
    int_list(lengths)
        .into_iter()
        .enumerate()
        .map(|(i, length)| {
            let row = int_list(&padded.get(i as i64));
            let length = length as usize;
            if left_padded {
                row[width - length..].to_vec()
            } else {
                row[..length].to_vec()
            }
        })
        .collect()
}

fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() <= TOLERANCE * expected.abs().max(1.0)
}

fn sft_loss(model: &CausalLm, rows: &[TokenRow]) -> f64 {
    let batch = collate_sft(&rows.iter().collect::<Vec<_>>(), 0, Device::Cpu);
    tch::no_grad(|| causal_lm_loss_sum(model, &batch)).double_value(&[])
}

#[test]
fn sft_loss_matches_transformers_and_a_shifted_alignment_does_not() {
    let (model, golden) = golden();
    let lengths = &golden["sft_lengths"];
    let ids = unpad(&golden["sft_input_ids"], lengths, false);
    let labels = unpad(&golden["sft_labels"], lengths, false);
    let rows: Vec<TokenRow> = ids
        .into_iter()
        .zip(labels)
        .map(|(input_ids, labels)| TokenRow {
            input_ids,
            labels,
            starts: vec![0],
        })
        .collect();
    let expected = golden["sft_loss_sum"].double_value(&[0]);
    let loss = sft_loss(&model, &rows);
    assert!(
        close(loss, expected),
        "loss {loss}, transformers {expected}"
    );
    // Row by row: each row's loss is minus the sum of its targets' log-probs.
    let token_logprobs = &golden["sft_token_logprobs"];
    for (i, row) in rows.iter().enumerate() {
        let expected = -token_logprobs
            .get(i as i64)
            .sum(Kind::Float)
            .double_value(&[]);
        let loss = sft_loss(&model, std::slice::from_ref(row));
        assert!(close(loss, expected), "row {i}: {loss} vs {expected}");
    }
    // Targets one position late: the same tokens, scored where the previous one is predicted.
    let shifted: Vec<TokenRow> = rows
        .iter()
        .map(|row| {
            let mut labels = vec![IGNORE_INDEX];
            labels.extend(&row.labels[..row.labels.len() - 1]);
            TokenRow {
                labels,
                ..row.clone()
            }
        })
        .collect();
    let off = sft_loss(&model, &shifted);
    assert!((off - expected).abs() > 1.0, "{off} vs {expected}");
}

#[test]
fn reward_model_scores_left_padded_rows_as_transformers() {
    let (model, golden) = golden();
    let rows = unpad(&golden["rm_input_ids"], &golden["rm_lengths"], true);
    let reward_model = RewardModel::new(model, HeadInit::Zero, "golden");
    let head = reward_model.head_var_store().variables();
    tch::no_grad(|| {
        head[HEAD_WEIGHT]
            .shallow_clone()
            .copy_(&golden["rm_head_weight"]);
        head[HEAD_BIAS]
            .shallow_clone()
            .copy_(&golden["rm_head_bias"]);
    });
    let batch = collate_left_padded(
        &rows.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        0,
        Device::Cpu,
    );
    let scores =
        tch::no_grad(|| reward_model.score(&batch.input_ids, &batch.positions, &batch.mask));
    let expected = Vec::<f32>::try_from(&golden["rm_scores"]).unwrap();
    let scores = Vec::<f32>::try_from(&scores).unwrap();
    // Scoring's own path (shared-prefix rows, right padding) gives the same scores.
    let rows_scores = reward_model
        .score_rows(&rows, 1024, 0, BatchLimits::rows(16))
        .unwrap();
    for (i, (&a, &b)) in rows_scores.iter().zip(&scores).enumerate() {
        assert!((a - b).abs() < 1e-5, "row {i}: score_rows {a} vs score {b}");
    }
    for (i, (&score, &expected)) in scores.iter().zip(&expected).enumerate() {
        assert!(
            close(score.into(), expected.into()),
            "row {i}: {score} vs {expected}"
        );
    }
    // The head reads the last real token; the one before it scores otherwise.
    let before_last = tch::no_grad(|| {
        let hidden = reward_model.backbone().forward(
            &batch.input_ids,
            &batch.positions,
            Some(&batch.mask),
            None,
        );
        reward_model.head(&hidden.select(1, hidden.size()[1] - 2))
    });
    let before_last = Vec::<f32>::try_from(&before_last).unwrap();
    assert!(
        before_last
            .iter()
            .zip(&expected)
            .all(|(a, b)| (a - b).abs() > 0.05),
        "{before_last:?} vs {expected:?}"
    );
}

#[test]
fn ppo_response_logprobs_match_transformers_at_temperature() {
    let (model, golden) = golden();
    let queries = unpad(&golden["ppo_queries"], &golden["ppo_query_lengths"], true);
    let responses = unpad(
        &golden["ppo_responses"],
        &golden["ppo_response_lengths"],
        false,
    );
    let width = golden["ppo_responses"].size()[1] as usize;
    let temperature = golden["ppo_temperature"].double_value(&[0]);
    let sequences = Sequences::new(
        &queries.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        &responses,
        width,
        0,
        Device::Cpu,
    );
    let batch = sequences.batch(&[0, 1]);
    let (logprobs, _) = tch::no_grad(|| response_logprobs(&model, &batch, temperature, false));
    let expected = &golden["ppo_logprobs"];
    let error = (&logprobs - expected).abs().max().double_value(&[]);
    assert!(error <= TOLERANCE, "max |log-prob error| {error:.3e}");
    // At temperature 1 every log-prob differs: the division by 0.7 is not skipped.
    let (plain, _) = tch::no_grad(|| response_logprobs(&model, &batch, 1.0, false));
    let real = expected.ne(0.0);
    let gap = (plain - expected)
        .abs()
        .masked_select(&real)
        .min()
        .double_value(&[]);
    assert!(
        gap > 1e-3,
        "temperature 1 gives log-probs within {gap} of 0.7's"
    );
}
