//! The decoders against transformers: tiny random models of every layout lincal runs, with the
//! logits transformers 5.17 computed for fixed ids in f32 on the CPU (`testdata/golden`, made
//! by its `make_golden.py`). Each model is loaded twice: with the `config.json` transformers 5
//! saved (rope settings in `rope_parameters`) and with the same config in transformers 4's keys.

use lincal_model::CausalLm;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// f32 on one CPU against f32 on another: summation order differs, nothing else. Logits are
/// of size ~2 here; a wrong layer moves them by ~1.
const TOLERANCE: f64 = 1e-4;

fn golden_dir() -> PathBuf {
    // Read at run time: a binary reused from another checkout's build names that one.
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("../../testdata/golden")
}

fn read_tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// The golden model `case` loaded with `config` (a file of its directory) as its config.
fn load(case: &str, config: &str, scratch: &Path) -> CausalLm {
    let source = golden_dir().join(case);
    let dir = scratch.join(format!("{case}-{config}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        source.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(source.join(config), dir.join("config.json")).unwrap();
    CausalLm::load(&dir, Device::Cpu, Some(Kind::Float)).unwrap()
}

/// The largest |lincal − transformers| over the golden ids' logits.
fn logits_error(case: &str, config: &str, scratch: &Path) -> f64 {
    let golden = read_tensors(&golden_dir().join(case).join("golden.safetensors"));
    let ids = &golden["input_ids"];
    let model = load(case, config, scratch);
    let positions = Tensor::arange(ids.size()[1], (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .expand_as(ids);
    let logits = tch::no_grad(|| model.logits(&model.forward(ids, &positions, None, None)));
    (logits - &golden["logits"]).abs().max().double_value(&[])
}

fn check(cases: &[&str]) {
    let scratch = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        for config in ["config.json", "config_v4.json"] {
            let error = logits_error(case, config, scratch.path());
            if error.is_nan() || error > TOLERANCE {
                failures.push(format!(
                    "{case} with {config}: max |logit error| {error:.3e}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Grouped-query attention, llama3 and linear rope scaling, tied and untied embeddings, and a
/// rope base other than 10,000.
#[test]
fn llama_layouts_match_transformers() {
    check(&["llama_gqa_untied", "llama_llama3_tied", "llama_linear_mha"]);
}

/// Partial (0.25) and full rotary, parallel and sequential residual, rope base 5,000. The
/// reference's RedPajama-INCITE 3B answer extractor is full rotary.
#[test]
fn gpt_neox_layouts_match_transformers() {
    check(&[
        "neox_partial_parallel",
        "neox_partial_sequential",
        "neox_full_parallel",
        "neox_full_sequential",
    ]);
}
