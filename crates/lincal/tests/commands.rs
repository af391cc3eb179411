//! Commands with no other test: `recover`, `bench logits`, `bench generate` and `generate
//! --chat`, each run as a
//! user runs it and checked against the library computing the same thing.

mod common;

use common::{fails, lincal, read_jsonl, tiny_model_dir};
use lincal_model::testing::{random_model, tiny_llama};
use lincal_model::{CausalLm, ChatTurn, SamplingParams, Tokenizer};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn succeeds(args: &[&str]) -> String {
    let output = lincal(args);
    assert!(
        output.status.success(),
        "lincal {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// The weight-diff files of `tuned` against `base` as the reference publishes them: `tuned -
/// base` under `prefix`, `extra` tensors stored whole, `model_sum.txt` the recovered sum.
fn write_diff(
    dir: &Path,
    base: &CausalLm,
    tuned: &CausalLm,
    prefix: &str,
    extra: &[(&str, Tensor)],
) {
    std::fs::create_dir_all(dir).unwrap();
    let base_vars = base.var_store().variables();
    let mut diff: BTreeMap<String, Tensor> = tuned
        .var_store()
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let d = &t - &base_vars[&name];
            (format!("{prefix}{name}"), d)
        })
        .collect();
    let mut sum = tuned.parameter_sum();
    for (name, t) in extra {
        sum += t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
        diff.insert(name.to_string(), t.copy());
    }
    lincal_model::checkpoint::save_safetensors(dir, &diff, usize::MAX).unwrap();
    std::fs::write(dir.join("config.json"), tuned.config().to_json()).unwrap();
    std::fs::write(dir.join("model_sum.txt"), format!("{sum}\n")).unwrap();
}

/// A causal LM and a reward model (backbone under `backbone_model.`, head stored whole) come
/// back as the tuned weights; a diff whose sum does not match is refused and writes nothing.
#[test]
fn recover_rebuilds_a_model_and_a_reward_model_from_weight_diffs() {
    let dir = tempfile::tempdir().unwrap();
    let base = random_model(tiny_llama(false), 30);
    let tuned = random_model(tiny_llama(false), 31);
    let base_dir = dir.path().join("base");
    std::fs::create_dir_all(&base_dir).unwrap();
    base.save(&base_dir, usize::MAX).unwrap();
    let head = Tensor::from_slice(&[0.5f32; 32]).view([1, 32]);
    for (name, prefix, extra) in [
        ("causal", "", vec![]),
        (
            "reward",
            "backbone_model.",
            vec![("reward_head.weight", head.copy())],
        ),
    ] {
        let diff = dir.path().join(format!("{name}-diff"));
        write_diff(&diff, &base, &tuned, prefix, &extra);
        let out = dir.path().join(format!("{name}-recovered"));
        let stdout = succeeds(&[
            "recover",
            "--base",
            base_dir.to_str().unwrap(),
            "--diff",
            diff.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let tensor_count = tuned.var_store().variables().len() + extra.len();
        assert!(
            stdout.starts_with(&format!(
                "{tensor_count} tensors: {} base added, {} kept as stored",
                tensor_count - extra.len(),
                extra.len()
            )),
            "{stdout}"
        );
        let recovered = tensors(&out.join("model.safetensors"));
        for (tensor, expected) in tuned.var_store().variables() {
            let got = &recovered[&format!("{prefix}{tensor}")];
            let error = (got - &expected).abs().max().double_value(&[]);
            assert!(error < 1e-6, "{name} {tensor}: {error}");
        }
        for (tensor, expected) in &extra {
            assert!(recovered[*tensor].equal(expected), "{name} {tensor}");
        }
    }
    // The recovered model knows it came from the reference, and commands that would feed it
    // lincal's own prompt wording say so, unless given templates.
    let recovered = dir.path().join("causal-recovered");
    assert!(recovered.join("lincal-recovered.json").exists());
    let sft = |extra: &[&str]| {
        let mut args = vec![
            "sft",
            "--model",
            recovered.to_str().unwrap(),
            "--out",
            "unused",
            "--preset",
            "lc_sft",
            "--train",
            "unused.jsonl",
            "--print-config",
        ];
        args.extend(extra);
        let output = lincal(&args);
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let warned = sft(&[]);
    assert!(
        warned.contains(&format!(
            "warning: {} was rebuilt from the reference's weight diff",
            recovered.display()
        )) && warned.contains("--prompts DIR"),
        "{warned}"
    );
    assert_eq!(sft(&["--prompts", dir.path().to_str().unwrap()]), "");
    // A diff against another base: the sum check fails and no output appears.
    let diff = dir.path().join("causal-diff");
    std::fs::write(diff.join("model_sum.txt"), "12345.0\n").unwrap();
    let out = dir.path().join("refused");
    fails(
        &[
            "recover",
            "--base",
            base_dir.to_str().unwrap(),
            "--diff",
            diff.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        "12345",
    );
    assert!(!out.exists());
}

/// `bench logits` writes the logits of left-padded rows as the library computes them.
#[test]
fn bench_logits_writes_the_forward_pass_logits() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_model_dir(dir.path());
    let ids = dir.path().join("ids.json");
    std::fs::write(&ids, "[[3, 4, 5, 6], [7, 8, 9, 10]]").unwrap();
    let out = dir.path().join("logits.safetensors");
    succeeds(&[
        "bench",
        "logits",
        "--model",
        &model_dir,
        "--ids",
        ids.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let logits = &tensors(&out)["logits"];
    let model = CausalLm::load(Path::new(&model_dir), Device::Cpu, Some(Kind::Float)).unwrap();
    let input = Tensor::from_slice2(&[[3i64, 4, 5, 6], [7, 8, 9, 10]]);
    let positions = Tensor::arange(4, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .expand_as(&input);
    let expected = tch::no_grad(|| model.logits(&model.forward(&input, &positions, None, None)));
    assert_eq!(logits.size(), vec![2, 4, 64]);
    let error = (logits - expected).abs().max().double_value(&[]);
    assert!(error < 1e-5, "{error}");
    std::fs::write(&ids, "[[3, 4], \"five\"]").unwrap();
    fails(
        &[
            "bench",
            "logits",
            "--model",
            &model_dir,
            "--ids",
            ids.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        "ids.json: expected a JSON list",
    );
}

/// `bench generate` counts the tokens rows produced: all of them without a stop string, one
/// or a few with a stop string every word holds ("t": the tiny tokenizer's words are t0..t63);
/// it records its sampling settings, traces its timed run with --trace, and refuses --stop
/// without a tokenizer and --trace over several batch sizes.
#[test]
fn bench_generate_counts_tokens_and_honours_stop_strings() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_model_dir(dir.path());
    let json = dir.path().join("generate.jsonl");
    let json_arg = json.to_str().unwrap().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "generate",
            "--model",
            &model_dir,
            "--batch",
            "3",
            "--prompt-len",
            "4",
            "--new-tokens",
            "40",
            "--temperature",
            "1.0",
            "--device",
            "cpu",
            "--json",
            &json_arg,
        ];
        args.extend(extra);
        succeeds(&args);
    };
    let trace = dir.path().join("trace.json");
    run(&["--trace", trace.to_str().unwrap()]);
    run(&["--top-p", "0.9", "--top-k", "5", "--stop", "t"]);
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let ops = trace["traceEvents"].as_array().unwrap();
    assert!(
        ops.iter().any(|op| op["name"] == "aten::linear"),
        "the model's forward passes are in the trace"
    );
    let records = read_jsonl(&json);
    let generated = |r: &serde_json::Value| {
        r["tokens_per_s"].as_f64().unwrap() * r["seconds"].as_f64().unwrap()
    };
    assert_eq!(generated(&records[0]).round(), 120.0, "{}", records[0]);
    assert!(
        (3.0..12.0).contains(&generated(&records[1]).round()),
        "{}",
        records[1]
    );
    assert_eq!(records[1]["stop"], serde_json::json!(["t"]));
    assert_eq!(records[1]["top_p"].as_f64(), Some(0.9));
    assert_eq!(records[1]["top_k"].as_i64(), Some(5));
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    random_model(tiny_llama(true), 1)
        .save(&bare, usize::MAX)
        .unwrap();
    fails(
        &[
            "bench",
            "generate",
            "--model",
            bare.to_str().unwrap(),
            "--stop",
            "x",
            "--device",
            "cpu",
        ],
        "--stop needs the tokenizer of",
    );
    fails(
        &[
            "bench", "generate", "--model", &model_dir, "--batch", "1,2", "--trace", "t.json",
            "--device", "cpu",
        ],
        "--trace records one timed run: give one --batch size",
    );
}

/// `generate --chat` puts the prompt through the tokenizer's chat template (without adding
/// special tokens again) and answers as the library does for the templated prompt.
#[test]
fn generate_chat_answers_the_templated_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_model_dir(dir.path());
    let stdout = succeeds(&[
        "generate",
        "--model",
        &model_dir,
        "--prompt",
        "t5 t6",
        "--chat",
        "--temperature",
        "0",
        "--max-new-tokens",
        "6",
        "--device",
        "cpu",
    ]);
    let tokenizer = Tokenizer::from_dir(Path::new(&model_dir)).unwrap();
    let text = tokenizer
        .apply_chat_template(&[ChatTurn::new("user", "t5 t6")], true)
        .unwrap();
    assert_eq!(text, "user: t5 t6 assistant: ");
    let model = CausalLm::load(Path::new(&model_dir), Device::Cpu, None).unwrap();
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 6,
        ..Default::default()
    };
    let ids = tokenizer.encode(&text, false).unwrap();
    let expected = lincal_model::generate_text(&model, &tokenizer, &[ids], &[42], &params, None)
        .unwrap()
        .remove(0);
    assert_eq!(stdout.trim_end(), expected.text);
    // Without --chat the same prompt is other tokens, and (here) another answer.
    let plain = succeeds(&[
        "generate",
        "--model",
        &model_dir,
        "--prompt",
        "t5 t6",
        "--temperature",
        "0",
        "--max-new-tokens",
        "6",
        "--device",
        "cpu",
    ]);
    assert_ne!(plain, stdout);
}
