//! LoRA (`lincal_model::lora`) on real decoders: identity at start, the on/off switch, merging,
//! PEFT files, and LoRA fine-tuning through the SFT trainer.

use crate::config::SftConfig;
use crate::data::SftExample;
use crate::run::RunOptions;
use crate::sft::SftTrainer;
use crate::testutil::{quick_training, saved_tensors, tiny_model_dir};
use lincal_model::lora::{LoraAdapters, LoraConfig, with_lora};
use lincal_model::testing::{random_model, tiny_llama, tiny_neox};
use lincal_model::{CausalLm, ModelConfig};
use tch::{Device, Kind, Tensor};

fn lora(r: i64, alpha: f64, targets: &[&str]) -> LoraConfig {
    LoraConfig {
        r,
        alpha,
        dropout: 0.0,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
    }
}

fn adapted(config: ModelConfig, lora: &LoraConfig, seed: u64) -> (CausalLm, LoraAdapters) {
    with_lora(lora, Device::Cpu, seed, || Ok(random_model(config, 5))).unwrap()
}

/// The logits of a fixed five-token row, with autograd recording where it is on.
fn forward_logits(model: &CausalLm) -> Tensor {
    let ids = Tensor::from_slice2(&[[3i64, 9, 27, 14, 5]]);
    let positions = Tensor::arange(5, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    model.logits(&model.forward(&ids, &positions, None, None))
}

fn logits(model: &CausalLm) -> Tensor {
    tch::no_grad(|| forward_logits(model))
}

/// Gives every `lora_B` random values, as training would.
fn perturb_b(adapters: &LoraAdapters) {
    // randn draws from the generator that trainer steps in other test threads seed and use.
    let _rng = lincal_model::lock_libtorch_rng();
    tch::no_grad(|| {
        for (name, var) in adapters.var_store().variables() {
            if name.contains("lora_B") {
                var.shallow_clone().copy_(&(var.randn_like() * 0.1));
            }
        }
    });
}

#[test]
fn fresh_adapters_change_nothing_and_switch_off_exactly() {
    let base = logits(&random_model(tiny_llama(false), 5));
    let config = lora(4, 8.0, &["q_proj", "v_proj", "down_proj"]);
    let (model, adapters) = adapted(tiny_llama(false), &config, 1);
    assert_eq!(adapters.modules().len(), 6);
    assert_eq!(adapters.modules()[0], "model.layers.0.self_attn.q_proj");
    // B starts at zero: the adapted model is the base model.
    assert!(logits(&model).equal(&base));
    perturb_b(&adapters);
    assert!((logits(&model) - &base).abs().max().double_value(&[]) > 1e-4);
    assert!(adapters.without_adapters(|| logits(&model)).equal(&base));
    assert!(adapters.enabled());
}

/// In a `with_frozen_adapters` call (generation) each adapter casts its factors once for the
/// passes that record no gradient: a change to an adapter inside it goes unseen by them, as
/// the call's contract allows (this is what shows the factors are reused), while a pass
/// recording gradients, a nested call, the next call and every pass outside one see it, and
/// the outer call keeps its own factors after a nested one.
#[test]
fn frozen_adapters_cast_their_factors_once_per_call() {
    use lincal_model::lora::with_frozen_adapters;
    let config = lora(4, 8.0, &["q_proj", "v_proj"]);
    let (model, adapters) = adapted(tiny_llama(false), &config, 1);
    perturb_b(&adapters);
    let before = with_frozen_adapters(|| logits(&model));
    let differs = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) > 1e-4;
    let (first, reused, with_grad, nested, reused_after_nested) = with_frozen_adapters(|| {
        let first = logits(&model);
        perturb_b(&adapters);
        let reused = logits(&model);
        let with_grad = forward_logits(&model);
        let nested = with_frozen_adapters(|| logits(&model));
        (first, reused, with_grad, nested, logits(&model))
    });
    assert!(first.equal(&before));
    assert!(reused.equal(&before), "the factors were formed again");
    assert!(differs(&with_grad, &before) && with_grad.requires_grad());
    assert!(differs(&nested, &before));
    assert!(reused_after_nested.equal(&before));
    let after = logits(&model);
    assert!(with_grad.detach().equal(&after));
    // A call's passes without gradients compute q, k, v and gate, up as one product each,
    // other passes one by one: the same values but for the order of sums in the products.
    assert!((&nested - &after).abs().max().double_value(&[]) < 1e-5);
    assert!(with_frozen_adapters(|| logits(&model)).equal(&nested));
}

/// In a bf16 model the adapters' update runs in bf16, as under autocast: what the adapters
/// add to the logits and the adapters' f32 gradients are the f32 model's within bf16's
/// rounding (a wrong scale, or an update dropped, is off by far more).
#[test]
fn a_bf16_model_adapts_as_the_f32_model_within_rounding() {
    let config = lora(4, 8.0, &["q_proj", "v_proj", "down_proj"]);
    let (mut model, adapters) = adapted(tiny_llama(false), &config, 1);
    perturb_b(&adapters);
    let run = |model: &CausalLm| {
        for var in adapters.var_store().trainable_variables() {
            let mut grad = var.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
        let adapted = forward_logits(model).to_kind(Kind::Float);
        adapted
            .log_softmax(-1, Kind::Float)
            .narrow(2, 7, 1)
            .sum(Kind::Float)
            .backward();
        let base = adapters.without_adapters(|| logits(model).to_kind(Kind::Float));
        let grads: Vec<Tensor> = adapters
            .var_store()
            .trainable_variables()
            .iter()
            .map(|v| v.grad().copy())
            .collect();
        (adapted.detach() - base, grads)
    };
    let (update32, grads32) = run(&model);
    model.set_kind(Kind::BFloat16);
    let (update16, grads16) = run(&model);
    let relative = crate::testutil::relative_difference;
    let update_gap = relative(&update16, &update32);
    assert!(
        update32.abs().max().double_value(&[]) > 1e-2,
        "the adapters change the logits"
    );
    assert!(
        update_gap < 5e-2,
        "the adapters' change to the logits differs by {update_gap:e}"
    );
    for (g16, g32) in grads16.iter().zip(&grads32) {
        assert_eq!(g16.kind(), Kind::Float);
        let gap = relative(g16, g32);
        assert!(gap < 5e-2, "an adapter's gradient differs by {gap:e}");
    }
}

#[test]
fn merging_adds_the_scaled_low_rank_product() {
    // r 1, alpha 2: scaling 2. With A = [1, 2, 0, ...] and B = [3, 4, 0, ...]ᵀ the update
    // 2·B·A is 6, 12 / 8, 16 in the top-left 2×2 corner and 0 elsewhere.
    let config = lora(1, 2.0, &["q_proj"]);
    let (model, mut adapters) = adapted(tiny_llama(false), &config, 1);
    let vars = adapters.var_store().variables();
    let mut a_values = vec![0f32; 32];
    a_values[..2].copy_from_slice(&[1.0, 2.0]);
    let mut b_values = vec![0f32; 32];
    b_values[..2].copy_from_slice(&[3.0, 4.0]);
    tch::no_grad(|| {
        vars["model.layers.0.self_attn.q_proj.lora_A.weight"]
            .shallow_clone()
            .copy_(&Tensor::from_slice(&a_values).view([1, 32]));
        vars["model.layers.0.self_attn.q_proj.lora_B.weight"]
            .shallow_clone()
            .copy_(&Tensor::from_slice(&b_values).view([32, 1]));
    });
    let before_weight =
        model.var_store().variables()["model.layers.0.self_attn.q_proj.weight"].copy();
    let adapted_logits = logits(&model);
    adapters.merge_into(model.var_store()).unwrap();
    let delta = model.var_store().variables()["model.layers.0.self_attn.q_proj.weight"].copy()
        - &before_weight;
    let corner: Vec<f32> =
        Vec::try_from(delta.narrow(0, 0, 2).narrow(1, 0, 2).flatten(0, -1)).unwrap();
    for (got, want) in corner.iter().zip([6.0f32, 12.0, 8.0, 16.0]) {
        assert!((got - want).abs() < 1e-5, "{corner:?}");
    }
    assert_eq!(delta.narrow(0, 2, 30).abs().max().double_value(&[]), 0.0);
    assert_eq!(delta.narrow(1, 2, 30).abs().max().double_value(&[]), 0.0);
    // The merged model without adapters computes what the adapted model did.
    assert!(!adapters.enabled());
    assert!(
        (logits(&model) - adapted_logits)
            .abs()
            .max()
            .double_value(&[])
            < 1e-4
    );
    assert_eq!(
        adapters
            .merge_into(model.var_store())
            .unwrap_err()
            .to_string(),
        "the adapters are already merged into the base weights"
    );
}

#[test]
fn peft_adapter_files_round_trip() {
    let config = lora(2, 4.0, &["q_proj", "o_proj", "up_proj"]);
    let (model, adapters) = adapted(tiny_llama(true), &config, 1);
    perturb_b(&adapters);
    let dir = tempfile::tempdir().unwrap();
    adapters.save_peft(dir.path(), Some("base/model")).unwrap();
    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            written["peft_type"].as_str(),
            written["r"].as_i64(),
            written["lora_alpha"].as_f64()
        ),
        (Some("LORA"), Some(2), Some(4.0))
    );
    assert_eq!(
        (
            written["task_type"].as_str(),
            written["base_model_name_or_path"].as_str()
        ),
        (Some("CAUSAL_LM"), Some("base/model"))
    );
    let names: Vec<String> = Tensor::read_safetensors(dir.path().join("adapter_model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names.len(), 12);
    assert!(
        names.contains(&"base_model.model.model.layers.1.mlp.up_proj.lora_B.weight".to_string()),
        "{names:?}"
    );
    // Another model with differently drawn A matrices becomes the saved one once loaded.
    assert_eq!(LoraConfig::from_peft_dir(dir.path()).unwrap(), config);
    let (other, other_adapters) = adapted(tiny_llama(true), &config, 2);
    other_adapters.load_peft(dir.path()).unwrap();
    assert!(logits(&other).equal(&logits(&model)));
    let (_, wrong) = adapted(
        tiny_llama(true),
        &lora(4, 4.0, &["q_proj", "o_proj", "up_proj"]),
        2,
    );
    let err = wrong.load_peft(dir.path()).unwrap_err().to_string();
    assert!(
        err.ends_with(
            "adapter has r 2, alpha 4, targets [\"q_proj\", \"o_proj\", \"up_proj\"], but the \
             model was built with r 4, alpha 4, targets [\"q_proj\", \"o_proj\", \"up_proj\"]"
        ),
        "{err}"
    );
}

#[test]
fn targets_are_matched_by_hugging_face_module_name() {
    // In GPT-NeoX "dense" is the attention output projection, not dense_h_to_4h.
    let (_, adapters) = adapted(tiny_neox(), &lora(2, 2.0, &["dense"]), 1);
    assert_eq!(
        adapters.modules(),
        [
            "gpt_neox.layers.0.attention.dense",
            "gpt_neox.layers.1.attention.dense"
        ]
    );
    let err = with_lora(&lora(2, 2.0, &["c_attn"]), Device::Cpu, 1, || {
        Ok(random_model(tiny_llama(false), 5))
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.starts_with(
            "lora.target_modules [\"c_attn\"] matched no linear layer of this model; \
             Llama layers are q_proj"
        ),
        "{err}"
    );
    let err = with_lora(&lora(0, 2.0, &["q_proj"]), Device::Cpu, 1, || {
        Ok(random_model(tiny_llama(false), 5))
    })
    .err()
    .unwrap()
    .to_string();
    assert_eq!(err, "lora.r must be at least 1, got 0");
}

/// LoRA SFT trains only the adapters: the final model equals the (pad-resized) base plus
/// (alpha/r)·B·A from the saved adapter, and the PEFT adapter is saved beside it.
#[test]
fn lora_sft_trains_adapters_and_saves_merged_weights_and_the_adapter() {
    let model_dir = tiny_model_dir();
    let run = tempfile::tempdir().unwrap();
    let data: Vec<SftExample> = [("t5 t6", " t20 t21"), ("t7", " t22 t23 t24")]
        .iter()
        .map(|(p, t)| SftExample {
            question_id: None,
            prompt: p.to_string(),
            target: t.to_string(),
        })
        .collect();
    let config = SftConfig {
        model_max_length: 32,
        packing: false,
        pad_token: "[PAD]".into(),
        lora: Some(LoraConfig {
            dropout: 0.1,
            ..lora(4, 8.0, &["q_proj", "v_proj"])
        }),
        training: quick_training(1e-2, 10.0, 2, 1),
    };
    let mut trainer = SftTrainer::new(
        model_dir.path(),
        Device::Cpu,
        &config,
        &data,
        &data,
        &RunOptions::new(run.path()),
    )
    .unwrap();
    let summary = trainer.train(None).unwrap();
    let final_dir = summary.final_dir.unwrap();
    let merged = saved_tensors(&final_dir);
    let base = saved_tensors(model_dir.path());
    let adapter: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(final_dir.join("adapter").join("adapter_model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let module = "model.layers.1.self_attn.v_proj";
    let (a, b) = (
        &adapter[&format!("base_model.model.{module}.lora_A.weight")],
        &adapter[&format!("base_model.model.{module}.lora_B.weight")],
    );
    assert!(b.abs().max().double_value(&[]) > 0.0, "B was trained");
    let expected = &base[&format!("{module}.weight")] + b.matmul(a) * 2.0;
    assert!(
        (&merged[&format!("{module}.weight")] - expected)
            .abs()
            .max()
            .double_value(&[])
            < 1e-6
    );
    // Untargeted weights are the base's, bit for bit.
    assert!(
        merged["model.layers.1.self_attn.k_proj.weight"]
            .equal(&base["model.layers.1.self_attn.k_proj.weight"])
    );
    assert!(
        merged["model.layers.0.mlp.up_proj.weight"]
            .equal(&base["model.layers.0.mlp.up_proj.weight"])
    );
    assert!(final_dir.join("adapter").join("tokenizer.json").exists());
}
