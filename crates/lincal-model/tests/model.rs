//! Behaviour of the decoders on tiny random models: caching, padding, checkpoints, errors.

use lincal_model::layers::{attention_mask, positions_from_mask};
use lincal_model::testing::*;
use lincal_model::{CausalLm, ModelConfig, ModelError};
use tch::{Device, Kind, Tensor};

fn full_logits(model: &CausalLm, ids: &Tensor) -> Tensor {
    let positions = Tensor::arange(ids.size()[1], (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .expand_as(ids);
    tch::no_grad(|| model.logits(&model.forward(ids, &positions, None, None)))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Prefill 5 tokens into the cache, then feed 4 one at a time at cache slots 5..9 attending
/// over a window of all 12 slots (the unwritten ones masked): every step's logits equal the
/// full causal forward's at that position (f32; tolerance 1e-5 absolute for logits of size ~1).
#[test]
fn kv_cache_decoding_matches_full_forward() {
    for config in [tiny_llama(true), tiny_llama(false), tiny_neox()] {
        let model = random_model(config, 1);
        let ids = Tensor::from_slice(&[5i64, 9, 17, 33, 2, 40, 41, 7, 60]).view([1, 9]);
        let expected = full_logits(&model, &ids);
        let mut cache = model.new_cache(1, 12);
        tch::no_grad(|| {
            let prefix = ids.narrow(1, 0, 5);
            let positions = Tensor::arange(5, (Kind::Int64, Device::Cpu)).unsqueeze(0);
            cache.set_window(&Tensor::arange(5, (Kind::Int64, Device::Cpu)), 5);
            let mask = attention_mask(&Tensor::ones([1, 5], (Kind::Int64, Device::Cpu)), 0, 5);
            let logits =
                model.logits(&model.forward(&prefix, &positions, Some(&mask), Some(&mut cache)));
            assert!(max_abs_diff(&logits, &expected.narrow(1, 0, 5)) < 1e-5);
            for t in 5..9 {
                let key_mask = Tensor::cat(
                    &[
                        Tensor::ones([1, t + 1], (Kind::Int64, Device::Cpu)),
                        Tensor::zeros([1, 11 - t], (Kind::Int64, Device::Cpu)),
                    ],
                    1,
                );
                cache.set_window(&Tensor::from_slice(&[t]), 12);
                let step = model.logits(&model.forward(
                    &ids.narrow(1, t, 1),
                    &Tensor::from_slice(&[t]).view([1, 1]),
                    Some(&attention_mask(&key_mask, t, 1)),
                    Some(&mut cache),
                ));
                let diff = max_abs_diff(&step, &expected.narrow(1, t, 1));
                assert!(diff < 1e-5, "step {t}: max abs diff {diff}");
            }
        });
    }
}

/// A row padded on the left gives the same logits at its real tokens as the row alone.
#[test]
fn left_padding_leaves_real_token_logits_unchanged() {
    for config in [tiny_llama(true), tiny_neox()] {
        let model = random_model(config, 2);
        let short = [11i64, 12, 13];
        let long = [20i64, 21, 22, 23, 24, 25];
        let (ids, key_mask) =
            lincal_model::generate::left_pad(&[short.to_vec(), long.to_vec()], 0, Device::Cpu);
        let logits = tch::no_grad(|| {
            model.logits(&model.forward(
                &ids,
                &positions_from_mask(&key_mask),
                Some(&attention_mask(&key_mask, 0, 6)),
                None,
            ))
        });
        let alone_short = full_logits(&model, &Tensor::from_slice(&short).view([1, 3]));
        let alone_long = full_logits(&model, &Tensor::from_slice(&long).view([1, 6]));
        assert!(max_abs_diff(&logits.get(0).narrow(0, 3, 3), &alone_short.get(0)) < 1e-5);
        assert!(max_abs_diff(&logits.get(1), &alone_long.get(0)) < 1e-5);
        assert!(
            !bool::try_from(logits.isnan().any()).unwrap(),
            "pad rows must not produce NaN"
        );
    }
}

fn assert_same_weights(a: &CausalLm, b: &CausalLm) {
    let (va, vb) = (a.var_store().variables(), b.var_store().variables());
    assert_eq!(va.len(), vb.len());
    for (name, ta) in &va {
        let tb = &vb[name];
        assert_eq!(ta.kind(), tb.kind(), "{name}");
        assert!(
            bool::try_from(ta.eq_tensor(tb).all()).unwrap(),
            "{name} differs after the round trip"
        );
    }
}

#[test]
fn save_then_load_is_bit_exact_single_and_sharded() {
    for (config, kind, shard) in [
        (tiny_llama(true), Kind::Float, usize::MAX),
        (tiny_llama(false), Kind::BFloat16, 10_000),
        (tiny_neox(), Kind::Float, 20_000),
    ] {
        let mut model = random_model(config, 3);
        model.set_kind(kind);
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path(), shard).unwrap();
        let sharded = dir.path().join("model.safetensors.index.json").exists();
        assert_eq!(sharded, shard != usize::MAX, "sharding as asked");
        let loaded = CausalLm::load(dir.path(), Device::Cpu, None).unwrap();
        assert_eq!(loaded.kind(), kind, "torch_dtype is written and honoured");
        assert_eq!(loaded.config(), model.config());
        assert_same_weights(&model, &loaded);
    }
}

#[test]
fn resize_adds_rows_equal_to_the_mean() {
    let mut model = random_model(tiny_llama(false), 4);
    let before = model.var_store().variables()["model.embed_tokens.weight"].copy();
    model.resize_token_embeddings(66).unwrap();
    let vars = model.var_store().variables();
    for name in ["model.embed_tokens.weight", "lm_head.weight"] {
        assert_eq!(vars[name].size(), vec![66, 32], "{name}");
    }
    let embed = &vars["model.embed_tokens.weight"];
    assert!(max_abs_diff(&embed.narrow(0, 0, 64), &before) == 0.0);
    assert!(max_abs_diff(&embed.get(65), &before.mean_dim(0, false, Kind::Float)) < 1e-6);
    // The model itself uses the grown table: token 65 embeds to the mean row.
    let logits = full_logits(&model, &Tensor::from_slice(&[65i64]).view([1, 1]));
    assert_eq!(logits.size(), vec![1, 1, 66]);
    assert!(model.resize_token_embeddings(10).is_err());
}

fn error_text(result: Result<CausalLm, ModelError>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_checkpoints_give_clear_errors() {
    let model = random_model(tiny_llama(true), 5);
    let dir = tempfile::tempdir().unwrap();
    let load = |d: &std::path::Path| CausalLm::load(d, Device::Cpu, None);

    let message = error_text(load(dir.path()));
    assert!(
        message.contains("config.json") && message.contains("No such file"),
        "{message}"
    );

    model.save(dir.path(), usize::MAX).unwrap();
    let config_path = dir.path().join("config.json");
    let good_config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, "{ not json").unwrap();
    let message = error_text(load(dir.path()));
    assert!(
        message.contains("config.json") && message.contains("malformed JSON"),
        "{message}"
    );

    // Config promises a bigger model than the weights hold.
    let mut bigger: serde_json::Value = serde_json::from_str(&good_config).unwrap();
    bigger["intermediate_size"] = 50.into();
    std::fs::write(&config_path, bigger.to_string()).unwrap();
    let message = error_text(load(dir.path()));
    assert!(
        message.contains("mlp.") && (message.contains("[50, 32]") || message.contains("[32, 50]")),
        "{message}"
    );
    assert!(message.contains("model.safetensors"), "{message}");

    // Three layers in the config, two in the weights.
    let mut deeper: serde_json::Value = serde_json::from_str(&good_config).unwrap();
    deeper["num_hidden_layers"] = 3.into();
    std::fs::write(&config_path, deeper.to_string()).unwrap();
    let message = error_text(load(dir.path()));
    assert!(
        message.contains("model.layers.2.") && message.contains("missing"),
        "{message}"
    );

    std::fs::write(&config_path, &good_config).unwrap();
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let message = error_text(load(dir.path()));
    assert!(
        message.contains("model.safetensors") && message.contains("truncated"),
        "{message}"
    );

    std::fs::remove_file(&weights).unwrap();
    let message = error_text(load(dir.path()));
    assert!(message.contains("no model.safetensors"), "{message}");
}

#[test]
fn tokenizer_must_fit_the_model_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer(dir.path(), 100);
    let tokenizer = lincal_model::Tokenizer::from_dir(dir.path()).unwrap();
    let message = tokenizer.check_model_vocab(64).unwrap_err().to_string();
    assert!(
        message.contains("tokenizer.json")
            && message.contains("token id 99")
            && message.contains("64 rows"),
        "{message}"
    );
    tokenizer.check_model_vocab(100).unwrap();

    std::fs::write(dir.path().join("tokenizer.json"), "{\"version\":").unwrap();
    let message = lincal_model::Tokenizer::from_dir(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("tokenizer.json") && message.contains("cannot be read"),
        "{message}"
    );
}

#[test]
fn config_without_model_type_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"hidden_size": 8}"#).unwrap();
    let message = error_text(CausalLm::load(dir.path(), Device::Cpu, None));
    assert!(
        message.contains("config.json") && message.contains("model_type"),
        "{message}"
    );
    let _ = ModelConfig::from_json("{}").unwrap_err();
}

/// A random model is its config and seed alone (biases included, which libtorch's generator
/// initialises): two draws are the same weights, another seed is not.
#[test]
fn random_models_are_their_seed() {
    for config in [tiny_llama(false), tiny_neox()] {
        let weights = |seed| random_model(config.clone(), seed).var_store().variables();
        let (a, b, c) = (weights(5), weights(5), weights(6));
        for (name, tensor) in &a {
            assert!(tensor.equal(&b[name]), "{name}");
            assert!(!tensor.equal(&c[name]), "{name}");
        }
    }
}

/// Weights with a NaN load to an error naming the tensor; a tokenizer far smaller than the
/// embedding table is warned about (it fits, so it is not an error).
#[test]
fn nan_weights_are_refused_and_a_small_tokenizer_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let model = random_model(tiny_llama(false), 3);
    let vars = model.var_store().variables();
    tch::no_grad(|| {
        let _ = vars["model.layers.1.mlp.up_proj.weight"]
            .shallow_clone()
            .get(0)
            .get(0)
            .fill_(f64::NAN);
    });
    model.save(dir.path(), usize::MAX).unwrap();
    let message = error_text(CausalLm::load(dir.path(), Device::Cpu, None));
    assert!(
        message.contains("tensor `model.layers.1.mlp.up_proj.weight` holds NaN or infinite values"),
        "{message}"
    );
    assert_eq!(
        lincal_model::tokenizer::vocab_coverage_warning(64, 1000).as_deref(),
        Some(
            "has 64 tokens for the model's 1000 embedding rows (6%); it may belong to another model"
        )
    );
    // SmolLM2-like padding: 49,152 tokens for 49,152 rows, or 32,000 for 32,064.
    assert_eq!(
        lincal_model::tokenizer::vocab_coverage_warning(32_000, 32_064),
        None
    );
}

/// A Llama layer's q, k, v and its gate, up projections lie back to back in memory (as built,
/// f32, and after a cast, f64), and a generation's passes, which compute each group as one
/// product, give the logits of passes that compute them one by one (the sums inside the
/// products may run in another order; a wrong split would be far off). Which passes join is
/// tested in `lora.rs`.
#[test]
fn projections_reading_one_input_are_joined_in_generation() {
    for (kind, tolerance) in [(Kind::Float, 1e-5), (Kind::Double, 1e-12)] {
        let mut model = random_model(tiny_llama(false), 5);
        model.set_kind(kind);
        let vars = model.var_store().variables();
        for layer in 0..2 {
            for group in [
                &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"][..],
                &["mlp.gate_proj", "mlp.up_proj"],
            ] {
                let weights: Vec<&Tensor> = group
                    .iter()
                    .map(|m| &vars[&format!("model.layers.{layer}.{m}.weight")])
                    .collect();
                for pair in weights.windows(2) {
                    let end =
                        pair[0].data_ptr() as usize + pair[0].numel() * kind.elt_size_in_bytes();
                    assert_eq!(
                        end,
                        pair[1].data_ptr() as usize,
                        "{group:?} of layer {layer}"
                    );
                }
            }
        }
        let ids = Tensor::from_slice(&[1i64, 7, 9, 30, 2, 11, 5, 63]).view([2, 4]);
        let separate = full_logits(&model, &ids);
        let joined = lincal_model::lora::with_frozen_adapters(|| full_logits(&model, &ids));
        let diff = max_abs_diff(&separate, &joined);
        assert!(diff < tolerance, "{kind:?}: logits differ by {diff}");
    }
}
