//! Weight-diff recovery round trip on a tiny model.

use lincal_model::CausalLm;
use lincal_model::recover::{SUM_FILE, recover};
use lincal_model::testing::*;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// base (vocab 64) → tuned (vocab 65, every weight changed) → diff = tuned − base where shapes
/// match, resized tables stored whole → recover gives tuned back.
fn make_diff(dir: &std::path::Path) -> (CausalLm, CausalLm, f64) {
    let base = random_model(tiny_llama(false), 20);
    let mut tuned = random_model(tiny_llama(false), 21);
    tuned.resize_token_embeddings(65).unwrap();
    std::fs::create_dir_all(dir.join("base")).unwrap();
    base.save(&dir.join("base"), usize::MAX).unwrap();
    let base_vars = base.var_store().variables();
    let diff: BTreeMap<String, Tensor> = tuned
        .var_store()
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let d = match base_vars.get(&name) {
                Some(b) if b.size() == t.size() => &t - b,
                _ => t.copy(),
            };
            (name, d)
        })
        .collect();
    let diff_dir = dir.join("diff");
    std::fs::create_dir_all(&diff_dir).unwrap();
    lincal_model::checkpoint::save_safetensors(&diff_dir, &diff, 8_000).unwrap();
    std::fs::write(diff_dir.join("config.json"), tuned.config().to_json()).unwrap();
    let sum = tuned.parameter_sum();
    (base, tuned, sum)
}

#[test]
fn recovery_round_trips_and_keeps_resized_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (_, tuned, sum) = make_diff(dir.path());
    std::fs::write(dir.path().join("diff").join(SUM_FILE), format!("{sum}\n")).unwrap();
    let out = dir.path().join("recovered");
    let report = recover(
        &dir.path().join("base"),
        &dir.path().join("diff"),
        &out,
        true,
    )
    .unwrap();
    assert_eq!(
        report.kept,
        vec![
            "lm_head.weight".to_string(),
            "model.embed_tokens.weight".to_string()
        ]
    );
    assert_eq!(report.added, report.tensors - 2);
    let recovered = CausalLm::load(&out, Device::Cpu, Some(Kind::Float)).unwrap();
    for (name, t) in tuned.var_store().variables() {
        let r = &recovered.var_store().variables()[&name];
        // (tuned − base) + base equals tuned up to one f32 rounding.
        let err = (r - &t).abs().max().double_value(&[]);
        assert!(err < 1e-6, "{name}: {err}");
    }
    assert!(!out.join(SUM_FILE).exists());
}

#[test]
fn recovery_refuses_a_wrong_sum_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, sum) = make_diff(dir.path());
    std::fs::write(
        dir.path().join("diff").join(SUM_FILE),
        format!("{}", sum + 1.0),
    )
    .unwrap();
    let out = dir.path().join("recovered");
    let message = recover(
        &dir.path().join("base"),
        &dir.path().join("diff"),
        &out,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(
        message.contains(SUM_FILE) && message.contains("expected"),
        "{message}"
    );
    assert!(
        !out.exists(),
        "nothing may appear at the output after a failed check"
    );

    std::fs::remove_file(dir.path().join("diff").join(SUM_FILE)).unwrap();
    let message = recover(
        &dir.path().join("base"),
        &dir.path().join("diff"),
        &out,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(message.contains("--skip-sum-check"), "{message}");
    let report = recover(
        &dir.path().join("base"),
        &dir.path().join("diff"),
        &out,
        false,
    )
    .unwrap();
    assert_eq!(report.expected_sum, None);
    assert!(out.join("model.safetensors").exists() && out.join("config.json").exists());
}
