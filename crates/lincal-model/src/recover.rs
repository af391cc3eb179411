//! Weight-diff recovery (SPEC section 7): the reference publishes its 7B models as
//! `tuned - base` against Llama-2-7b-hf. Adding the base back where shapes match gives the
//! tuned weights; tensors whose shapes differ (the embedding and LM head resized for "[PAD]")
//! and tensors the base lacks (reward-model heads) were stored whole and are kept as they are.
//! The sum of all recovered parameters must match the diff's `model_sum.txt`.

use crate::checkpoint::{SafetensorsCheckpoint, ShardWriter};
use crate::error::{ModelError, Result};
use crate::fsutil::{write_atomic, write_dir_atomic};
use crate::model::DEFAULT_MAX_SHARD_BYTES;
use std::path::Path;
use tch::Kind;

pub const SUM_FILE: &str = "model_sum.txt";
/// Written into a recovered model's directory: it was trained on the reference's prompt
/// formats, which lincal's built-in templates word differently.
pub const RECOVERED_NOTE: &str = "lincal-recovered.json";

/// When `dir` holds a model `lincal recover` rebuilt, what to say to a command about to feed it
/// lincal's built-in prompt templates.
pub fn built_in_templates_warning(dir: &Path) -> Option<String> {
    dir.join(RECOVERED_NOTE).exists().then(|| {
        format!(
            "{} was rebuilt from the reference's weight diff (`lincal recover`) and trained on \
             the reference's prompt formats, which lincal's built-in templates word \
             differently; give your copies of those formats with --prompts DIR (README: \
             \"Where lincal differs from the reference\")",
            dir.display()
        )
    })
}
/// Reward models store the Llama backbone under this prefix.
const BACKBONE_PREFIX: &str = "backbone_model.";

#[derive(Debug, Clone, PartialEq)]
pub struct RecoverReport {
    pub tensors: usize,
    /// Tensors to which the base was added.
    pub added: usize,
    /// Tensors kept as stored (shape differs from the base, or absent from it).
    pub kept: Vec<String>,
    pub parameter_sum: f64,
    pub expected_sum: Option<f64>,
}

/// Recovers `diff` against `base` into `out` (written atomically: nothing appears at `out`
/// unless the sum check passes). With `check_sum` false the sum is reported, not enforced.
pub fn recover(base: &Path, diff: &Path, out: &Path, check_sum: bool) -> Result<RecoverReport> {
    let sum_path = diff.join(SUM_FILE);
    let expected_sum = if sum_path.exists() {
        let text = std::fs::read_to_string(&sum_path).map_err(|e| ModelError::io(&sum_path, e))?;
        Some(
            text.trim()
                .parse::<f64>()
                .map_err(|_| ModelError::Checkpoint {
                    path: sum_path.clone(),
                    message: format!("expected one number, found {:?}", text.trim()),
                })?,
        )
    } else if check_sum {
        return Err(ModelError::Checkpoint {
            path: sum_path,
            message: "missing; it holds the expected parameter sum. \
                      Pass --skip-sum-check to recover without the integrity check"
                .into(),
        });
    } else {
        None
    };
    let base_ckpt = SafetensorsCheckpoint::open(base)?;
    let diff_ckpt = SafetensorsCheckpoint::open(diff)?;
    let mut names: Vec<String> = diff_ckpt.names().cloned().collect();
    names.sort();
    let mut report = RecoverReport {
        tensors: names.len(),
        added: 0,
        kept: Vec::new(),
        parameter_sum: 0.0,
        expected_sum,
    };
    write_dir_atomic(out, |tmp| {
        let mut writer = ShardWriter::new(tmp, DEFAULT_MAX_SHARD_BYTES);
        for name in &names {
            let stored = diff_ckpt.tensor(name)?;
            let base_name = if base_ckpt.contains(name) {
                name.as_str()
            } else {
                name.strip_prefix(BACKBONE_PREFIX).unwrap_or(name)
            };
            let tuned = match base_ckpt
                .contains(base_name)
                .then(|| base_ckpt.tensor(base_name))
                .transpose()?
            {
                Some(base_tensor) if base_tensor.size() == stored.size() => {
                    report.added += 1;
                    (stored.to_kind(Kind::Float) + base_tensor.to_kind(Kind::Float))
                        .to_kind(stored.kind())
                }
                _ => {
                    report.kept.push(name.clone());
                    stored
                }
            };
            report.parameter_sum += tuned
                .to_kind(Kind::Double)
                .sum(Kind::Double)
                .double_value(&[]);
            writer.add(name, &tuned)?;
        }
        if let (true, Some(expected)) = (check_sum, expected_sum) {
            // numpy.isclose defaults, as the reference's check.
            if (report.parameter_sum - expected).abs() > 1e-8 + 1e-5 * expected.abs() {
                return Err(ModelError::Checkpoint {
                    path: diff.join(SUM_FILE),
                    message: format!(
                        "recovered parameters sum to {}, expected {expected}; the base is not the \
                         model the diff was made against (it must be Llama-2-7b-hf in the original \
                         HF layout), or a download is corrupt. Nothing was written to {}",
                        report.parameter_sum,
                        out.display()
                    ),
                });
            }
        }
        writer.finish()?;
        copy_side_files(diff, tmp)?;
        let note = serde_json::json!({
            "recovered_by": "lincal recover",
            "diff": diff,
            "base": base,
            "prompt_formats": "the reference's (SPEC 6): lincal's built-in templates differ; \
                               give the reference's formats with --prompts",
        });
        write_atomic(
            &tmp.join(RECOVERED_NOTE),
            serde_json::to_string_pretty(&note)
                .expect("json")
                .as_bytes(),
        )
    })?;
    Ok(report)
}

/// Config, tokenizer and other small files travel with the recovered weights.
fn copy_side_files(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).map_err(|e| ModelError::io(from, e))? {
        let path = entry.map_err(|e| ModelError::io(from, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let is_weights = name.ends_with(".safetensors")
            || name == crate::checkpoint::INDEX_FILE
            || name == SUM_FILE;
        if path.is_file() && !is_weights {
            std::fs::copy(&path, to.join(name)).map_err(|e| ModelError::io(&path, e))?;
        }
    }
    Ok(())
}
