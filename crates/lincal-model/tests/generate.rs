//! Batched generation on tiny random models.

use lincal_model::generate::{
    BatchRequest, FinishReason, SamplingParams, generate_batch, generate_text,
};
use lincal_model::testing::*;
use lincal_model::{CausalLm, Tokenizer};
use tch::{Device, Kind, Tensor};

/// Greedy decoding by the obvious method: a full forward over the growing sequence each step.
fn greedy_reference(model: &CausalLm, prompt: &[i64], steps: usize) -> Vec<i64> {
    let mut ids = prompt.to_vec();
    for _ in 0..steps {
        let t = Tensor::from_slice(&ids).view([1, -1]);
        let positions = Tensor::arange(ids.len() as i64, (Kind::Int64, Device::Cpu)).unsqueeze(0);
        let logits = tch::no_grad(|| model.logits(&model.forward(&t, &positions, None, None)));
        ids.push(logits.get(0).get(-1).argmax(-1, false).int64_value(&[]));
    }
    ids[prompt.len()..].to_vec()
}

fn greedy(max_new_tokens: i64) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_new_tokens,
        ..Default::default()
    }
}

/// One seed per prompt: `base`, `base + 1`, ...
fn seeds(prompts: &[Vec<i64>], base: u64) -> Vec<u64> {
    (base..).take(prompts.len()).collect()
}

#[test]
fn batched_greedy_matches_one_at_a_time_full_forward() {
    for config in [tiny_llama(true), tiny_neox()] {
        let model = random_model(config, 7);
        let prompts = vec![vec![3i64, 4, 5], vec![10, 11, 12, 13, 14, 15, 16], vec![40]];
        // No EOS so every row runs the full length.
        let out = generate_batch(
            &model,
            &BatchRequest::new(&prompts, &seeds(&prompts, 5), &greedy(8)),
            None,
        )
        .unwrap();
        let rows = Vec::<Vec<i64>>::try_from(&out.tokens).unwrap();
        for (prompt, row) in prompts.iter().zip(&rows) {
            assert_eq!(
                row,
                &greedy_reference(&model, prompt, 8),
                "prompt {prompt:?}"
            );
        }
        assert_eq!(out.lengths, vec![8, 8, 8]);
        assert_eq!(out.finish_reasons, vec![FinishReason::Length; 3]);
    }
}

#[test]
fn rows_end_at_eos_and_are_padded_after_it() {
    let model = random_model(tiny_llama(true), 8);
    let prompts = vec![vec![3i64, 4, 5], vec![20, 21]];
    let free = Vec::<Vec<i64>>::try_from(
        &generate_batch(
            &model,
            &BatchRequest::new(&prompts, &seeds(&prompts, 5), &greedy(6)),
            None,
        )
        .unwrap()
        .tokens,
    )
    .unwrap();
    // Declare row 0's third greedy token the EOS: row 0 stops there, with pads after.
    let eos = free[0][2];
    let out = generate_batch(
        &model,
        &BatchRequest {
            eos_ids: &[eos],
            pad_id: 63,
            ..BatchRequest::new(&prompts, &seeds(&prompts, 5), &greedy(6))
        },
        None,
    )
    .unwrap();
    let rows = Vec::<Vec<i64>>::try_from(&out.tokens).unwrap();
    let logprobs = Vec::<Vec<f32>>::try_from(&out.logprobs).unwrap();
    let first_eos = free[0].iter().position(|&t| t == eos).unwrap();
    assert_eq!(out.lengths[0], first_eos as i64 + 1);
    assert_eq!(out.finish_reasons[0], FinishReason::Eos);
    assert_eq!(&rows[0][..=first_eos], &free[0][..=first_eos]);
    assert!(rows[0][first_eos + 1..].iter().all(|&t| t == 63));
    assert!(logprobs[0][first_eos + 1..].iter().all(|&l| l == 0.0));
    assert!(logprobs[0][..=first_eos].iter().all(|&l| l < 0.0));
}

#[test]
fn sampling_is_seeded_and_top_k_one_is_greedy() {
    let model = random_model(tiny_llama(false), 9);
    let prompts = vec![vec![3i64, 4, 5], vec![6, 7]];
    let params = SamplingParams {
        temperature: 1.0,
        max_new_tokens: 12,
        ..Default::default()
    };
    let a = generate_batch(
        &model,
        &BatchRequest::new(&prompts, &seeds(&prompts, 5), &params),
        None,
    )
    .unwrap();
    let b = generate_batch(
        &model,
        &BatchRequest::new(&prompts, &seeds(&prompts, 5), &params),
        None,
    )
    .unwrap();
    assert!(
        bool::try_from(a.tokens.eq_tensor(&b.tokens).all()).unwrap(),
        "same seed, same tokens"
    );
    let c = generate_batch(
        &model,
        &BatchRequest::new(&prompts, &seeds(&prompts, 6), &params),
        None,
    )
    .unwrap();
    assert!(
        !bool::try_from(a.tokens.eq_tensor(&c.tokens).all()).unwrap(),
        "another seed, other tokens"
    );
    let top1 = generate_batch(
        &model,
        &BatchRequest::new(
            &prompts,
            &seeds(&prompts, 5),
            &SamplingParams {
                top_k: 1,
                ..params.clone()
            },
        ),
        None,
    )
    .unwrap();
    let greedy_out = generate_batch(
        &model,
        &BatchRequest::new(&prompts, &seeds(&prompts, 5), &greedy(12)),
        None,
    )
    .unwrap();
    assert!(bool::try_from(top1.tokens.eq_tensor(&greedy_out.tokens).all()).unwrap());
    // A tiny nucleus keeps only the most likely token too.
    let nucleus = generate_batch(
        &model,
        &BatchRequest::new(
            &prompts,
            &seeds(&prompts, 5),
            &SamplingParams {
                top_p: 1e-6,
                ..params.clone()
            },
        ),
        None,
    )
    .unwrap();
    assert!(bool::try_from(nucleus.tokens.eq_tensor(&greedy_out.tokens).all()).unwrap());
}

/// A row samples from its own seeded stream: alone, or beside other rows in a batch, the same
/// prompt and seed give the same tokens (prompts of equal length, so padding is the same too).
#[test]
fn a_rows_samples_do_not_depend_on_its_batch() {
    let model = random_model(tiny_llama(false), 13);
    let params = SamplingParams {
        temperature: 1.0,
        max_new_tokens: 10,
        ..Default::default()
    };
    let batch = generate_batch(
        &model,
        &BatchRequest::new(
            &[vec![3i64, 4, 5], vec![6, 7, 8], vec![9, 10, 11]],
            &[5, 9, 2],
            &params,
        ),
        None,
    )
    .unwrap();
    let alone = generate_batch(
        &model,
        &BatchRequest::new(&[vec![6i64, 7, 8]], &[9], &params),
        None,
    )
    .unwrap();
    assert_eq!(
        Vec::<i64>::try_from(batch.tokens.get(1)).unwrap(),
        Vec::<i64>::try_from(alone.tokens.get(0)).unwrap()
    );
    let other_seed = generate_batch(
        &model,
        &BatchRequest::new(&[vec![6i64, 7, 8]], &[10], &params),
        None,
    )
    .unwrap();
    assert_ne!(
        Vec::<i64>::try_from(other_seed.tokens.get(0)).unwrap(),
        Vec::<i64>::try_from(alone.tokens.get(0)).unwrap()
    );
}

/// The returned log-probs are those of the temperature-scaled distribution (what PPO needs).
#[test]
fn logprobs_are_temperature_scaled() {
    let model = random_model(tiny_llama(true), 10);
    let prompt = vec![3i64, 4, 5];
    let params = SamplingParams {
        temperature: 0.7,
        max_new_tokens: 1,
        ..Default::default()
    };
    let out = generate_batch(
        &model,
        &BatchRequest::new(std::slice::from_ref(&prompt), &[1], &params),
        None,
    )
    .unwrap();
    let token = out.tokens.int64_value(&[0, 0]);
    let t = Tensor::from_slice(&prompt).view([1, 3]);
    let positions = Tensor::arange(3, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let logits = tch::no_grad(|| model.logits(&model.forward(&t, &positions, None, None)))
        .get(0)
        .get(-1);
    let expected = (logits / 0.7)
        .log_softmax(-1, Kind::Float)
        .double_value(&[token]);
    assert!((out.logprobs.double_value(&[0, 0]) - expected).abs() < 1e-5);
}

#[test]
fn text_generation_decodes_and_cuts_at_stop_strings() {
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer(dir.path(), 64);
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    let model = random_model(tiny_llama(true), 11);
    let prompt = tokenizer.encode("t3 t4 t5", false).unwrap();
    assert_eq!(prompt, vec![3, 4, 5]);
    let free = generate_text(
        &model,
        &tokenizer,
        std::slice::from_ref(&prompt),
        &[0],
        &greedy(10),
        None,
    )
    .unwrap()
    .remove(0);
    let words: Vec<&str> = free.text.split(' ').collect();
    assert!(words.len() >= 4, "{:?}", free.text);
    // Stop at the third generated word: the text ends before it and generation stops early.
    let stop = words[2].to_string();
    let params = SamplingParams {
        stop: vec![stop.clone()],
        ..greedy(10)
    };
    let mut streamed = Vec::new();
    let mut on_token = |row: usize, id: i64| streamed.push((row, id));
    let cut = generate_text(
        &model,
        &tokenizer,
        &[prompt],
        &[0],
        &params,
        Some(&mut on_token),
    )
    .unwrap()
    .remove(0);
    assert_eq!(cut.finish_reason, FinishReason::Stop);
    let at = free.text.find(&stop).unwrap();
    assert_eq!(cut.text, free.text[..at]);
    assert!(cut.tokens.len() < free.tokens.len());
    assert_eq!(
        streamed.iter().map(|&(_, id)| id).collect::<Vec<_>>(),
        cut.tokens
    );
}

/// Without streaming, stop strings are looked for only every few steps: each row must still
/// end exactly where looking after every token ends it (with the same tokens, log-probs and
/// text), also when its stop string arrives between two looks, and rows that meet no stop
/// string run on unchanged.
#[test]
fn stop_strings_found_between_checks_cut_rows_where_every_token_checks_do() {
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer(dir.path(), 64);
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    let model = random_model(tiny_llama(true), 13);
    let prompts = vec![vec![3i64, 4, 5], vec![7, 8], vec![20, 21, 22, 23], vec![9]];
    let row_seeds = seeds(&prompts, 40);
    let sampled = |stop: Vec<String>| SamplingParams {
        temperature: 1.0,
        max_new_tokens: 40,
        stop,
        ..Default::default()
    };
    let free = generate_text(
        &model,
        &tokenizer,
        &prompts,
        &row_seeds,
        &sampled(vec![]),
        None,
    )
    .unwrap();
    // Row 0's stop string: a word whose first appearance ends a prefix of more than one check
    // interval (16 steps) that is not a whole number of intervals.
    let tokens_to_contain = |text_of: &dyn Fn(usize) -> String, stop: &str| {
        (1..=40).find(|&n| text_of(n).contains(stop))
    };
    let row0 = |n: usize| tokenizer.decode(&free[0].tokens[..n], true).unwrap();
    let (stop, stop_len) = free[0]
        .text
        .split(' ')
        .filter_map(|word| Some((word.to_string(), tokens_to_contain(&row0, word)?)))
        .find(|(_, n)| *n > 16 && n % 16 != 0)
        .expect("a word first seen mid-interval");
    let params = sampled(vec![stop.clone()]);
    let checked_now_and_then =
        generate_text(&model, &tokenizer, &prompts, &row_seeds, &params, None).unwrap();
    let mut on_token = |_: usize, _: i64| {};
    let checked_every_token = generate_text(
        &model,
        &tokenizer,
        &prompts,
        &row_seeds,
        &params,
        Some(&mut on_token),
    )
    .unwrap();
    assert_eq!(checked_now_and_then[0].finish_reason, FinishReason::Stop);
    assert_eq!(checked_now_and_then[0].tokens, free[0].tokens[..stop_len]);
    for (row, (a, b)) in checked_now_and_then
        .iter()
        .zip(&checked_every_token)
        .enumerate()
    {
        assert_eq!(a.tokens, b.tokens, "row {row}");
        assert_eq!(a.logprobs, b.logprobs, "row {row}");
        assert_eq!(
            (&a.text, a.finish_reason),
            (&b.text, b.finish_reason),
            "row {row}"
        );
        let cut = free[row].text.find(&stop).unwrap_or(free[row].text.len());
        assert_eq!(a.text, free[row].text[..cut], "row {row}");
    }
    // The batch's padded token matrix ends each stopped row with padding, log-prob 0.
    let eos_ids = lincal_model::generate::eos_ids(&model, &tokenizer);
    let pad_id = lincal_model::generate::pad_id(&model, &tokenizer, &eos_ids);
    let request = BatchRequest {
        eos_ids: &eos_ids,
        pad_id,
        stop_tokenizer: Some(&tokenizer),
        ..BatchRequest::new(&prompts, &row_seeds, &params)
    };
    let batch = generate_batch(&model, &request, None).unwrap();
    assert_eq!(batch.lengths[0], stop_len as i64);
    let row0_ids = Vec::<i64>::try_from(batch.tokens.get(0)).unwrap();
    let row0_logprobs = Vec::<f32>::try_from(batch.logprobs.get(0)).unwrap();
    assert!(row0_ids[stop_len..].iter().all(|&id| id == pad_id));
    assert!(row0_logprobs[stop_len..].iter().all(|&lp| lp == 0.0));
}

/// Batch encoding and decoding (spread over threads) give each text what encoding it alone
/// gives, in order, with and without special tokens; multi-byte characters split over byte
/// tokens come back whole.
#[test]
fn batch_encoding_and_decoding_equal_one_text_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    lincal_model::testing::write_byte_tokenizer(dir.path());
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    let texts: Vec<String> = (0..40)
        .map(|i| format!("row {i}: café — naïve 日本 {}", "x".repeat(i)))
        .collect();
    for special in [false, true] {
        let batch = tokenizer.encode_batch(&texts, special).unwrap();
        let one_by_one: Vec<Vec<i64>> = texts
            .iter()
            .map(|t| tokenizer.encode(t, special).unwrap())
            .collect();
        assert_eq!(batch, one_by_one);
        let decoded = tokenizer.decode_batch(&batch, special).unwrap();
        let one_by_one: Vec<String> = batch
            .iter()
            .map(|ids| tokenizer.decode(ids, special).unwrap())
            .collect();
        assert_eq!(decoded, one_by_one);
    }
    assert_eq!(
        tokenizer
            .decode_batch(&tokenizer.encode_batch(&texts, false).unwrap(), true)
            .unwrap(),
        texts
    );
    // A tokenizer.json that asks for padding (to a batch's longest text, or to a fixed
    // length) changes neither: a text's ids are its own tokens.
    let plain = tokenizer.encode_batch(&texts, true).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("tokenizer.json")).unwrap())
            .unwrap();
    for strategy in [
        serde_json::json!("BatchLongest"),
        serde_json::json!({"Fixed": 200}),
    ] {
        let mut padded = json.clone();
        padded["padding"] = serde_json::json!({"strategy": strategy, "direction": "Left",
            "pad_to_multiple_of": null, "pad_id": 33, "pad_type_id": 0, "pad_token": "!"});
        let padded_dir = tempfile::tempdir().unwrap();
        std::fs::write(padded_dir.path().join("tokenizer.json"), padded.to_string()).unwrap();
        std::fs::write(padded_dir.path().join("tokenizer_config.json"), "{}").unwrap();
        let padding = Tokenizer::from_dir(padded_dir.path()).unwrap();
        assert_eq!(
            padding.encode_batch(&texts, true).unwrap(),
            plain,
            "{strategy}"
        );
        assert_eq!(
            padding.encode(&texts[3], true).unwrap(),
            plain[3],
            "{strategy}"
        );
    }
}

#[test]
fn chat_template_renders_messages() {
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer(dir.path(), 16);
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    let text = tokenizer
        .apply_chat_template(&[lincal_model::ChatTurn::new("user", "t3 t4")], true)
        .unwrap();
    assert_eq!(text, "user: t3 t4 assistant: ");
}

#[test]
fn invalid_sampling_parameters_are_refused() {
    let model = random_model(tiny_llama(true), 12);
    for params in [
        SamplingParams {
            temperature: -1.0,
            ..Default::default()
        },
        SamplingParams {
            top_p: 0.0,
            ..Default::default()
        },
        SamplingParams {
            max_new_tokens: 0,
            ..Default::default()
        },
    ] {
        assert!(
            generate_batch(&model, &BatchRequest::new(&[vec![3]], &[0], &params), None).is_err(),
            "{params:?}"
        );
    }
    assert!(
        generate_batch(
            &model,
            &BatchRequest::new(&[vec![]], &[0], &greedy(2)),
            None
        )
        .is_err()
    );
}

/// Decoding 300 tokens crosses the 128-slot attention windows twice (the cache holds 310): at
/// every step the log-prob of the sampled token equals the one a full forward over the whole
/// sequence gives it (f32, within 1e-5 relative), for a left-padded batch.
#[test]
fn decoding_past_attention_windows_matches_a_full_forward() {
    for config in [tiny_llama(false), tiny_neox()] {
        let model = random_model(config, 11);
        let prompts = vec![vec![3i64, 4, 5], (10..20).collect::<Vec<i64>>()];
        let params = SamplingParams {
            temperature: 1.0,
            max_new_tokens: 300,
            ..Default::default()
        };
        let out = generate_batch(
            &model,
            &BatchRequest::new(&prompts, &seeds(&prompts, 3), &params),
            None,
        )
        .unwrap();
        assert_eq!(out.lengths, vec![300, 300]);
        let tokens = Vec::<Vec<i64>>::try_from(&out.tokens).unwrap();
        let logprobs = Vec::<Vec<f32>>::try_from(&out.logprobs).unwrap();
        for (row, prompt) in prompts.iter().enumerate() {
            let ids: Vec<i64> = prompt.iter().chain(&tokens[row]).copied().collect();
            let t = Tensor::from_slice(&ids).view([1, -1]);
            let positions =
                Tensor::arange(ids.len() as i64, (Kind::Int64, Device::Cpu)).unsqueeze(0);
            let full = tch::no_grad(|| {
                model
                    .logits(&model.forward(&t, &positions, None, None))
                    .log_softmax(-1, Kind::Float)
            });
            for (step, &token) in tokens[row].iter().enumerate() {
                let expected = full
                    .get(0)
                    .get((prompt.len() + step - 1) as i64)
                    .get(token)
                    .double_value(&[]);
                let actual = f64::from(logprobs[row][step]);
                assert!(
                    (actual - expected).abs() <= 1e-5 * expected.abs().max(1.0),
                    "row {row} step {step}: {actual} vs {expected}"
                );
            }
        }
    }
}
