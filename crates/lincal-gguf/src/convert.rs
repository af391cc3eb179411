//! Conversion of a GGUF Llama model into a Hugging Face model directory: the config from the
//! `llama.*` metadata, every tensor mapped to its Hugging Face name and shape (Q/K rows
//! un-permuted), the weights written as safetensors, all through a staging directory.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use half::{bf16, f16};
use safetensors::{Dtype, View};
use serde_json::{Value, json};

use crate::error::GgufError;
use crate::format::{GgufFile, GgufTensorInfo};
use crate::tokenizer::TokenizerFiles;

/// Inverts llama.cpp's Q/K row permutation. Its converter stored
/// `w.reshape(n_head, 2, head_dim / 2, cols).swapaxes(1, 2).reshape(rows, cols)` (interleaving the
/// two rotary halves of each head), so row `h*head_dim + 2*b + a` of the file is row
/// `h*head_dim + a*head_dim/2 + b` of the Hugging Face matrix. `rows` must be a multiple of
/// `2 * n_head` (checked against the config before calling).
fn unpermute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0.0f32; w.len()];
    for h in 0..n_head {
        for a in 0..2 {
            for b in 0..half {
                let src = h * head_dim + 2 * b + a;
                let dst = h * head_dim + a * half + b;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Element type of the written safetensors weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputDtype {
    #[default]
    F32,
    F16,
    BF16,
}

impl OutputDtype {
    fn safetensors(self) -> Dtype {
        match self {
            OutputDtype::F32 => Dtype::F32,
            OutputDtype::F16 => Dtype::F16,
            OutputDtype::BF16 => Dtype::BF16,
        }
    }

    fn torch_name(self) -> &'static str {
        match self {
            OutputDtype::F32 => "float32",
            OutputDtype::F16 => "float16",
            OutputDtype::BF16 => "bfloat16",
        }
    }

    fn size(self) -> usize {
        match self {
            OutputDtype::F32 => 4,
            OutputDtype::F16 | OutputDtype::BF16 => 2,
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; values.len() * self.size()];
        match self {
            OutputDtype::F32 => {
                for (o, v) in out.chunks_exact_mut(4).zip(values) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            OutputDtype::F16 => {
                for (o, v) in out.chunks_exact_mut(2).zip(values) {
                    o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
                }
            }
            OutputDtype::BF16 => {
                for (o, v) in out.chunks_exact_mut(2).zip(values) {
                    o.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertSummary {
    /// Tensors written to model.safetensors.
    pub tensors: usize,
    pub parameters: u64,
    /// GGUF tensor type name (e.g. "Q4_1") -> number of tensors stored in it.
    pub quant_types: BTreeMap<String, usize>,
}

/// Converts a llama.cpp GGUF file into a Hugging Face model directory at `out_dir`: config.json,
/// generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json (with the
/// chat template) and special_tokens_map.json. Everything is written into a hidden sibling
/// directory first and renamed into place at the end, so `out_dir` appears complete or not at
/// all. An existing non-empty `out_dir` is an error.
pub fn convert_to_hf(
    gguf_path: &Path,
    out_dir: &Path,
    dtype: OutputDtype,
) -> Result<ConvertSummary, GgufError> {
    let gguf = GgufFile::open(gguf_path)?;
    let arch = gguf.req_str("general.architecture")?;
    if arch != "llama" {
        return Err(GgufError::UnsupportedArchitecture {
            path: gguf.path().to_path_buf(),
            arch: arch.to_string(),
        });
    }
    let tokenizer = TokenizerFiles::read(&gguf)?;
    let params = LlamaParams::read(&gguf, tokenizer.vocab_size)?;
    let plan = plan_tensors(&gguf, &params)?;
    let tied = !gguf.tensors().iter().any(|t| t.name == "output.weight");

    let staging = Staging::new(out_dir)?;
    write_json(
        &staging.dir.join("config.json"),
        &params.config_json(&tokenizer, tied, dtype),
    )?;
    write_json(
        &staging.dir.join("generation_config.json"),
        &tokenizer.generation_config(),
    )?;
    write_json(
        &staging.dir.join("tokenizer.json"),
        &tokenizer.tokenizer_json,
    )?;
    write_json(
        &staging.dir.join("tokenizer_config.json"),
        &tokenizer.tokenizer_config(params.context_length),
    )?;
    write_json(
        &staging.dir.join("special_tokens_map.json"),
        &tokenizer.special_tokens_map(),
    )?;
    write_safetensors(&gguf, &plan, dtype, &staging.dir.join("model.safetensors"))?;
    staging.commit()?;

    let mut quant_types = BTreeMap::new();
    for p in &plan {
        *quant_types
            .entry(p.info.ggml_type.name().to_string())
            .or_insert(0) += 1;
    }
    Ok(ConvertSummary {
        tensors: plan.len(),
        parameters: plan.iter().map(|p| p.info.n_elements()).sum(),
        quant_types,
    })
}

/// The Llama hyperparameters, from the `llama.*` metadata.
struct LlamaParams {
    n_layers: u64,
    hidden: u64,
    intermediate: u64,
    n_head: u64,
    n_kv_head: u64,
    head_dim: u64,
    vocab_size: u64,
    context_length: u64,
    rms_norm_eps: f64,
    rope_theta: f64,
    /// Factor of linear RoPE scaling, when the model uses it.
    rope_linear_factor: Option<f64>,
}

impl LlamaParams {
    fn read(gguf: &GgufFile, vocab_size: u64) -> Result<LlamaParams, GgufError> {
        let hidden = gguf.req_u64("llama.embedding_length")?;
        let n_head = gguf.req_u64("llama.attention.head_count")?;
        if n_head == 0 {
            return Err(gguf.malformed("llama.attention.head_count is 0".to_string()));
        }
        let head_dim = match gguf.opt_u64("llama.attention.key_length")? {
            Some(key_length) => key_length,
            None if hidden % n_head == 0 => hidden / n_head,
            None => {
                return Err(gguf.malformed(format!(
                    "llama.attention.head_count = {n_head} does not divide \
                     llama.embedding_length = {hidden}"
                )));
            }
        };
        // The Q/K un-permutation splits each head into two rotary halves.
        if head_dim % 2 != 0 {
            return Err(gguf.malformed(format!("the attention head size {head_dim} is odd")));
        }
        let n_kv_head = gguf
            .opt_u64("llama.attention.head_count_kv")?
            .unwrap_or(n_head);
        if n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(gguf.malformed(format!(
                "llama.attention.head_count_kv = {n_kv_head} does not divide \
                 llama.attention.head_count = {n_head}"
            )));
        }
        let rope_linear_factor = match gguf.opt_str("llama.rope.scaling.type")? {
            None | Some("none") => None,
            Some("linear") => Some(
                gguf.opt_f64("llama.rope.scaling.factor")?
                    .ok_or_else(|| gguf.missing("llama.rope.scaling.factor"))?,
            ),
            Some(other) => {
                return Err(GgufError::UnsupportedFeature {
                    path: gguf.path().to_path_buf(),
                    what: format!("llama.rope.scaling.type is '{other}' (supported: none, linear)"),
                });
            }
        };
        // Hugging Face's Llama rotates whole heads; partial rotary embeddings have no config key.
        if let Some(rope_dims) = gguf.opt_u64("llama.rope.dimension_count")?
            && rope_dims != head_dim
        {
            return Err(GgufError::UnsupportedFeature {
                path: gguf.path().to_path_buf(),
                what: format!(
                    "llama.rope.dimension_count = {rope_dims} rotates only part of each \
                     {head_dim}-wide head"
                ),
            });
        }
        Ok(LlamaParams {
            n_layers: gguf.req_u64("llama.block_count")?,
            hidden,
            intermediate: gguf.req_u64("llama.feed_forward_length")?,
            n_head,
            n_kv_head,
            head_dim,
            vocab_size,
            context_length: gguf.req_u64("llama.context_length")?,
            rms_norm_eps: gguf
                .opt_f64("llama.attention.layer_norm_rms_epsilon")?
                .ok_or_else(|| gguf.missing("llama.attention.layer_norm_rms_epsilon"))?,
            rope_theta: gguf.opt_f64("llama.rope.freq_base")?.unwrap_or(10000.0),
            rope_linear_factor,
        })
    }

    fn config_json(&self, tokenizer: &TokenizerFiles, tied: bool, dtype: OutputDtype) -> Value {
        let mut config = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_kv_head,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.context_length,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": tied,
            "attention_bias": false,
            "mlp_bias": false,
            "torch_dtype": dtype.torch_name(),
            "use_cache": true,
        });
        if let Some(factor) = self.rope_linear_factor {
            // "type" for older transformers, "rope_type" for newer ones.
            config["rope_scaling"] =
                json!({"type": "linear", "rope_type": "linear", "factor": factor});
        }
        tokenizer.add_special_ids(&mut config);
        config
    }
}

/// One GGUF tensor and where it goes in the Hugging Face checkpoint.
struct PlannedTensor<'a> {
    info: &'a GgufTensorInfo,
    hf_name: String,
    hf_shape: Vec<usize>,
    /// Head count to undo llama.cpp's Q/K row permutation with (Q and K projections only).
    unpermute_heads: Option<usize>,
}

impl PlannedTensor<'_> {
    /// The tensor's bytes in the Hugging Face layout and `dtype`.
    fn render(&self, gguf: &GgufFile, dtype: OutputDtype) -> Result<Vec<u8>, GgufError> {
        let values = gguf.dequantize(self.info)?;
        let values = match self.unpermute_heads {
            Some(n_head) => unpermute_rows(&values, self.hf_shape[0], self.hf_shape[1], n_head),
            None => values,
        };
        Ok(dtype.encode(&values))
    }
}

/// Maps every GGUF tensor to its Hugging Face name and checks its shape against the config, so
/// the written checkpoint loads in transformers; a tensor without a mapping, or a missing one,
/// is an error rather than a silently incomplete model.
fn plan_tensors<'a>(
    gguf: &'a GgufFile,
    p: &LlamaParams,
) -> Result<Vec<PlannedTensor<'a>>, GgufError> {
    let q_rows = p.n_head * p.head_dim;
    let kv_rows = p.n_kv_head * p.head_dim;
    let mut plan = Vec::with_capacity(gguf.tensors().len());
    for info in gguf.tensors() {
        let unexpected = || GgufError::UnexpectedTensor {
            path: gguf.path().to_path_buf(),
            tensor: info.name.clone(),
        };
        let base = info.name.strip_suffix(".weight").ok_or_else(unexpected)?;
        let (hf_name, expected, unpermute_heads) = match base {
            "token_embd" => (
                "model.embed_tokens.weight".to_string(),
                vec![p.vocab_size, p.hidden],
                None,
            ),
            "output_norm" => ("model.norm.weight".to_string(), vec![p.hidden], None),
            "output" => (
                "lm_head.weight".to_string(),
                vec![p.vocab_size, p.hidden],
                None,
            ),
            _ => {
                let (layer, part) = base
                    .strip_prefix("blk.")
                    .and_then(|r| r.split_once('.'))
                    .ok_or_else(unexpected)?;
                // Canonical numbers only, so "blk.01" cannot alias "blk.1".
                let layer = layer
                    .parse::<u64>()
                    .ok()
                    .filter(|&l| l < p.n_layers && l.to_string() == layer)
                    .ok_or_else(unexpected)?;
                let (hf_part, expected, heads) = match part {
                    "attn_norm" => ("input_layernorm", vec![p.hidden], None),
                    "attn_q" => ("self_attn.q_proj", vec![q_rows, p.hidden], Some(p.n_head)),
                    "attn_k" => (
                        "self_attn.k_proj",
                        vec![kv_rows, p.hidden],
                        Some(p.n_kv_head),
                    ),
                    "attn_v" => ("self_attn.v_proj", vec![kv_rows, p.hidden], None),
                    "attn_output" => ("self_attn.o_proj", vec![p.hidden, q_rows], None),
                    "ffn_norm" => ("post_attention_layernorm", vec![p.hidden], None),
                    "ffn_gate" => ("mlp.gate_proj", vec![p.intermediate, p.hidden], None),
                    "ffn_up" => ("mlp.up_proj", vec![p.intermediate, p.hidden], None),
                    "ffn_down" => ("mlp.down_proj", vec![p.hidden, p.intermediate], None),
                    _ => return Err(unexpected()),
                };
                (
                    format!("model.layers.{layer}.{hf_part}.weight"),
                    expected,
                    heads,
                )
            }
        };
        let found: Vec<u64> = info.dims.iter().rev().copied().collect();
        if found != expected {
            return Err(GgufError::ShapeMismatch {
                path: gguf.path().to_path_buf(),
                tensor: info.name.clone(),
                found,
                expected,
            });
        }
        plan.push(PlannedTensor {
            info,
            hf_name,
            hf_shape: found.iter().map(|&d| d as usize).collect(),
            unpermute_heads: unpermute_heads.map(|h| h as usize),
        });
    }

    let present: BTreeSet<&str> = gguf.tensors().iter().map(|t| t.name.as_str()).collect();
    let per_layer = [
        "attn_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_norm",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    let required = [
        "token_embd.weight".to_string(),
        "output_norm.weight".to_string(),
    ]
    .into_iter()
    .chain((0..p.n_layers).flat_map(|l| {
        per_layer
            .iter()
            .map(move |part| format!("blk.{l}.{part}.weight"))
    }));
    for name in required {
        if !present.contains(name.as_str()) {
            return Err(GgufError::MissingTensor {
                path: gguf.path().to_path_buf(),
                tensor: name,
            });
        }
    }
    Ok(plan)
}

/// A tensor handed to `safetensors::serialize_to_file`, dequantised only when the serializer
/// asks for its bytes, so peak memory is one tensor rather than the whole model.
struct PendingTensor<'a> {
    gguf: &'a GgufFile,
    plan: &'a PlannedTensor<'a>,
    dtype: OutputDtype,
    /// `View::data` cannot return an error: the first one is parked here and reported after
    /// serialisation (it cannot happen for files `GgufFile::open` accepted, which checks every
    /// tensor's type and extent).
    failure: &'a RefCell<Option<GgufError>>,
}

impl View for PendingTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors()
    }

    fn shape(&self) -> &[usize] {
        &self.plan.hf_shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self.plan.render(self.gguf, self.dtype) {
            Ok(bytes) => Cow::Owned(bytes),
            Err(e) => {
                self.failure.borrow_mut().get_or_insert(e);
                Cow::Owned(vec![0u8; self.data_len()])
            }
        }
    }

    fn data_len(&self) -> usize {
        self.plan.hf_shape.iter().product::<usize>() * self.dtype.size()
    }
}

fn write_safetensors(
    gguf: &GgufFile,
    plan: &[PlannedTensor<'_>],
    dtype: OutputDtype,
    path: &Path,
) -> Result<(), GgufError> {
    let failure = RefCell::new(None);
    let views = plan.iter().map(|p| {
        (
            p.hf_name.clone(),
            PendingTensor {
                gguf,
                plan: p,
                dtype,
                failure: &failure,
            },
        )
    });
    // transformers expects the "format" entry that torch's safetensors writer adds.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|source| {
        GgufError::Safetensors {
            path: path.to_path_buf(),
            source,
        }
    })?;
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    sync_file(path)
}

/// A hidden sibling directory that collects the output files and is renamed onto `out_dir` by
/// `commit`; dropped uncommitted (on any error) it is removed.
struct Staging {
    dir: PathBuf,
    out_dir: PathBuf,
    committed: bool,
}

impl Staging {
    fn new(out_dir: &Path) -> Result<Staging, GgufError> {
        let write_error = |path: &Path, source| GgufError::Write {
            path: path.to_path_buf(),
            source,
        };
        ensure_absent_or_empty(out_dir)?;
        let name = out_dir.file_name().ok_or_else(|| {
            write_error(
                out_dir,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the output path has no final directory name",
                ),
            )
        })?;
        let parent = out_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| write_error(parent, e))?;
        // Unique per process and call, so concurrent conversions never share a staging directory.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = parent.join(format!(
            ".{}.partial-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&dir).map_err(|e| write_error(&dir, e))?;
        Ok(Staging {
            dir,
            out_dir: out_dir.to_path_buf(),
            committed: false,
        })
    }

    fn commit(mut self) -> Result<(), GgufError> {
        let write_error = |source| GgufError::Write {
            path: self.out_dir.clone(),
            source,
        };
        sync_dir(&self.dir);
        ensure_absent_or_empty(&self.out_dir)?;
        if self.out_dir.exists() {
            fs::remove_dir(&self.out_dir).map_err(write_error)?;
        }
        fs::rename(&self.dir, &self.out_dir).map_err(write_error)?;
        self.committed = true;
        if let Some(parent) = self.out_dir.parent() {
            sync_dir(parent);
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the error that got us here matters more than a leftover directory.
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn ensure_absent_or_empty(dir: &Path) -> Result<(), GgufError> {
    match fs::read_dir(dir).map(|mut entries| entries.next().is_none()) {
        Ok(true) => Ok(()),
        Ok(false) => Err(GgufError::OutputExists {
            path: dir.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(GgufError::Write {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn write_json(path: &Path, value: &Value) -> Result<(), GgufError> {
    let write_error = |source| GgufError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| write_error(e.into()))?;
    bytes.push(b'\n');
    let mut file = File::create(path).map_err(write_error)?;
    file.write_all(&bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

fn sync_file(path: &Path) -> Result<(), GgufError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| GgufError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Makes a directory's entries durable before and after the final rename. Best effort: not every
/// platform lets a directory be opened for syncing.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use safetensors::SafeTensors;
    use tokenizers::Tokenizer;

    use super::*;
    use crate::format::GgufValue;
    use crate::test_gguf::*;

    // ---- Q/K permutation ---------------------------------------------------------------------

    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() {
        // The forward permutation interleaves each head's two halves.
        let ids: Vec<f32> = (0..8).map(|r| r as f32).collect();
        assert_eq!(llama_cpp_permute(&ids[..4], 4, 1, 1), [0.0, 2.0, 1.0, 3.0]);
        assert_eq!(
            llama_cpp_permute(&ids, 8, 1, 2),
            [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
        );

        for (rows, cols, n_head) in [(12, 3, 2), (12, 3, 3), (8, 5, 1)] {
            let w: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 7.0).collect();
            let permuted = llama_cpp_permute(&w, rows, cols, n_head);
            assert_ne!(permuted, w);
            assert_eq!(
                unpermute_rows(&permuted, rows, cols, n_head),
                w,
                "{rows}x{cols}, {n_head} heads"
            );
        }
    }

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    fn tensor_as_f32(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
        let data = view.data();
        match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => panic!("unexpected dtype {other:?}"),
        }
    }

    // ---- end-to-end conversion ---------------------------------------------------------------

    #[test]
    fn converts_a_synthetic_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = synthetic_llama().write(dir.path(), "tiny.gguf");
        let out = dir.path().join("hf");
        let summary = convert_to_hf(&path, &out, OutputDtype::F32).unwrap();

        let n_params: u64 = (TOKENS.len() * HIDDEN
            + HIDDEN
            + LAYERS
                * (2 * HIDDEN
                    + 2 * HIDDEN * N_HEAD * HEAD_DIM
                    + 2 * HIDDEN * N_KV_HEAD * HEAD_DIM
                    + 3 * HIDDEN * FFN)) as u64;
        let quant_types: BTreeMap<String, usize> = [
            ("BF16", 2),
            ("F16", 2),
            ("F32", 7),
            ("Q4_0", 2),
            ("Q4_1", 2),
            ("Q4_K", 1),
            ("Q6_K", 1),
            ("Q8_0", 3),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(
            summary,
            ConvertSummary {
                tensors: 20,
                parameters: n_params,
                quant_types
            }
        );

        let config = read_json(&out.join("config.json"));
        assert_eq!(config["architectures"], json!(["LlamaForCausalLM"]));
        assert_eq!(config["model_type"], "llama");
        assert_eq!(config["hidden_size"], 32);
        assert_eq!(config["intermediate_size"], 256);
        assert_eq!(config["num_hidden_layers"], 2);
        assert_eq!(config["num_attention_heads"], 2);
        assert_eq!(config["num_key_value_heads"], 1);
        assert_eq!(config["head_dim"], 16);
        assert_eq!(config["rms_norm_eps"], 1e-6);
        assert_eq!(config["rope_theta"], 500000.0);
        assert_eq!(config["max_position_embeddings"], 64);
        assert_eq!(config["vocab_size"], 25);
        assert_eq!(config["tie_word_embeddings"], true);
        assert_eq!(config["torch_dtype"], "float32");
        assert_eq!(
            (
                config["bos_token_id"].clone(),
                config["eos_token_id"].clone(),
                config["pad_token_id"].clone()
            ),
            (json!(1), json!(2), json!(2))
        );
        assert!(config.get("rope_scaling").is_none());
        assert_eq!(
            read_json(&out.join("generation_config.json")),
            json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2})
        );
        assert_eq!(
            read_json(&out.join("special_tokens_map.json")),
            json!({
                "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                "unk_token": "<|endoftext|>",
            })
        );
        let tokenizer_config = read_json(&out.join("tokenizer_config.json"));
        assert_eq!(tokenizer_config["chat_template"], CHAT_TEMPLATE);
        assert_eq!(
            tokenizer_config["tokenizer_class"],
            "PreTrainedTokenizerFast"
        );
        assert_eq!(tokenizer_config["model_max_length"], 64);
        assert_eq!(tokenizer_config["add_bos_token"], false);
        assert_eq!(tokenizer_config["eos_token"], "<|im_end|>");

        // Every weight under its Hugging Face name and shape, with exactly the written values
        // (Q and K projections un-permuted).
        let bytes = fs::read(out.join("model.safetensors")).unwrap();
        let weights = SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = weights.names().into_iter().map(String::from).collect();
        names.sort();
        let mut want: Vec<String> = ["model.embed_tokens.weight", "model.norm.weight"]
            .map(String::from)
            .to_vec();
        for l in 0..LAYERS {
            for part in [
                "input_layernorm",
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "post_attention_layernorm",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                want.push(format!("model.layers.{l}.{part}.weight"));
            }
        }
        want.sort();
        assert_eq!(names, want);
        for name in &names {
            let view = weights.tensor(name).unwrap();
            let (shape, values) = expected(name);
            assert_eq!(view.dtype(), Dtype::F32, "{name}");
            assert_eq!(view.shape(), shape.as_slice(), "{name}");
            assert_eq!(tensor_as_f32(&view), values, "{name}");
        }
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            metadata
                .metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );

        // The tokenizer loads and reproduces the GGUF vocabulary: control tokens match whole,
        // merges build words, the smollm pre-tokenizer splits digits apart.
        let tokenizer = Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        let text = "<|im_start|>hello world<|im_end|>\n12";
        let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(ids, [1, 18, 23, 2, 12, 13, 14]);
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), "hello world\n12");
        // A user-defined token is an added token, but not a special one.
        let ids = tokenizer
            .encode("<tool>hello", true)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, [3, 18]);
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), "<tool>hello");

        // Nothing but the model directory is left next to it.
        let mut entries: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        assert_eq!(entries, ["hf", "tiny.gguf"]);
    }

    #[test]
    fn converts_an_untied_model_to_f16_with_bos_and_rope_scaling() {
        let dir = tempfile::tempdir().unwrap();
        let mut gguf = synthetic_llama();
        gguf.version = 2;
        gguf.set("general.alignment", GgufValue::U32(64));
        gguf.set("tokenizer.ggml.pre", GgufValue::String("gpt2".into()));
        gguf.set("tokenizer.ggml.add_bos_token", GgufValue::Bool(true));
        gguf.set(
            "llama.rope.scaling.type",
            GgufValue::String("linear".into()),
        );
        gguf.set("llama.rope.scaling.factor", GgufValue::F32(4.0));
        gguf.tensors
            .push(tensor("output.weight", "lm_head.weight", 1));
        let path = gguf.write(dir.path(), "untied.gguf");
        let out = dir.path().join("nested").join("hf16");
        let summary = convert_to_hf(&path, &out, OutputDtype::F16).unwrap();
        assert_eq!(summary.tensors, 21);

        let config = read_json(&out.join("config.json"));
        assert_eq!(config["tie_word_embeddings"], false);
        assert_eq!(config["torch_dtype"], "float16");
        assert_eq!(
            config["rope_scaling"],
            json!({"type": "linear", "rope_type": "linear", "factor": 4.0})
        );

        let bytes = fs::read(out.join("model.safetensors")).unwrap();
        let weights = SafeTensors::deserialize(&bytes).unwrap();
        for name in [
            "lm_head.weight",
            "model.layers.1.self_attn.q_proj.weight",
            "model.layers.0.mlp.gate_proj.weight",
        ] {
            let view = weights.tensor(name).unwrap();
            let (shape, values) = expected(name);
            let rounded: Vec<f32> = values.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
            assert_eq!(view.dtype(), Dtype::F16, "{name}");
            assert_eq!(view.shape(), shape.as_slice(), "{name}");
            assert_eq!(tensor_as_f32(&view), rounded, "{name}");
        }

        // The gpt2 pre-tokenizer keeps "12" whole, and add_bos_token prepends BOS.
        let tokenizer = Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        assert_eq!(
            tokenizer.encode("hello 12", true).unwrap().get_ids(),
            [1, 18, 8, 24]
        );
        assert_eq!(tokenizer.encode("hello", false).unwrap().get_ids(), [18]);
        assert_eq!(
            read_json(&out.join("tokenizer_config.json"))["add_bos_token"],
            true
        );
    }

    // ---- failures ----------------------------------------------------------------------------

    #[test]
    fn metadata_problems_are_errors_naming_the_key() {
        let mut gguf = synthetic_llama();
        gguf.remove("llama.block_count");
        let err = convert_err(&gguf);
        assert!(err.contains("'llama.block_count' is missing"), "{err}");

        let mut gguf = synthetic_llama();
        gguf.set("llama.embedding_length", GgufValue::String("32".into()));
        let err = convert_err(&gguf);
        assert!(
            err.contains("'llama.embedding_length'") && err.contains("a string"),
            "{err}"
        );

        let mut gguf = synthetic_llama();
        gguf.set("general.architecture", GgufValue::String("mamba".into()));
        let err = convert_err(&gguf);
        assert!(err.contains("architecture 'mamba'"), "{err}");

        let mut gguf = synthetic_llama();
        gguf.set("tokenizer.ggml.model", GgufValue::String("llama".into()));
        let err = convert_err(&gguf);
        assert!(
            err.contains("tokenizer model 'llama'") && err.contains("not supported yet"),
            "{err}"
        );

        let mut gguf = synthetic_llama();
        gguf.set("tokenizer.ggml.pre", GgufValue::String("qwen2".into()));
        let err = convert_err(&gguf);
        assert!(
            err.contains("pre-tokenizer 'qwen2'") && err.contains("smollm, starcoder"),
            "{err}"
        );

        let mut gguf = synthetic_llama();
        gguf.set("llama.rope.scaling.type", GgufValue::String("yarn".into()));
        let err = convert_err(&gguf);
        assert!(err.contains("llama.rope.scaling.type is 'yarn'"), "{err}");

        let mut gguf = synthetic_llama();
        gguf.set("llama.rope.dimension_count", GgufValue::U32(8));
        let err = convert_err(&gguf);
        assert!(
            err.contains("rotates only part of each 16-wide head"),
            "{err}"
        );

        // Metadata that disagrees with the weights: two KV heads make K and V twice as tall.
        let mut gguf = synthetic_llama();
        gguf.set("llama.attention.head_count_kv", GgufValue::U32(2));
        let err = convert_err(&gguf);
        assert!(
            err.contains("'blk.0.attn_k.weight'") && err.contains("[32, 32]"),
            "{err}"
        );
    }

    #[test]
    fn tensor_set_problems_are_errors() {
        let mut gguf = synthetic_llama();
        gguf.tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
        let err = convert_err(&gguf);
        assert!(err.contains("'blk.1.ffn_up.weight' is missing"), "{err}");

        let mut gguf = synthetic_llama();
        gguf.tensor_mut("blk.1.ffn_up.weight").name = "blk.2.ffn_up.weight".into();
        let err = convert_err(&gguf);
        assert!(
            err.contains("'blk.2.ffn_up.weight' has no Hugging Face Llama equivalent"),
            "{err}"
        );
    }

    #[test]
    fn refuses_to_overwrite_a_non_empty_output_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = synthetic_llama().write(dir.path(), "tiny.gguf");
        let out = dir.path().join("hf");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("keep.txt"), "precious").unwrap();
        let err = convert_to_hf(&path, &out, OutputDtype::F32).unwrap_err();
        assert!(matches!(err, GgufError::OutputExists { .. }), "{err}");
        assert_eq!(
            fs::read_to_string(out.join("keep.txt")).unwrap(),
            "precious"
        );
        // An existing empty directory is filled.
        fs::remove_file(out.join("keep.txt")).unwrap();
        convert_to_hf(&path, &out, OutputDtype::BF16).unwrap();
        assert_eq!(
            read_json(&out.join("config.json"))["torch_dtype"],
            "bfloat16"
        );
    }

    // ---- the real model ----------------------------------------------------------------------

    #[test]
    #[ignore = "needs the SmolLM2 GGUF (cargo xtask test sets it)"]
    fn converts_smollm2_135m() {
        let gguf = PathBuf::from(
            std::env::var_os("LINCAL_SMOLLM2_GGUF")
                .expect("set LINCAL_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf"),
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("smollm2");
        let summary = convert_to_hf(&gguf, &out, OutputDtype::F32).unwrap();
        assert_eq!(summary.tensors, 272);
        assert_eq!(summary.parameters, 134_515_008);

        let config = read_json(&out.join("config.json"));
        assert_eq!(config["num_hidden_layers"], 30);
        assert_eq!(config["hidden_size"], 576);
        assert_eq!(
            (
                config["num_attention_heads"].clone(),
                config["num_key_value_heads"].clone()
            ),
            (json!(9), json!(3))
        );
        assert_eq!(config["tie_word_embeddings"], true);
        assert_eq!(config["rope_theta"], 100000.0);
        assert_eq!(config["vocab_size"], 49152);

        let bytes = fs::read(out.join("model.safetensors")).unwrap();
        let weights = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(
            weights
                .tensor("model.layers.0.self_attn.q_proj.weight")
                .unwrap()
                .shape(),
            [576, 576]
        );
        assert_eq!(
            weights
                .tensor("model.layers.29.self_attn.k_proj.weight")
                .unwrap()
                .shape(),
            [192, 576]
        );
        assert_eq!(
            weights.tensor("model.embed_tokens.weight").unwrap().shape(),
            [49152, 576]
        );
        assert!(weights.tensor("lm_head.weight").is_err());
        // Values from gguf-py's `dequantize` of the same file. Q and K rows are un-permuted: HF row
        // 1 of q_proj is GGUF row 2, HF row 32 of k_proj is GGUF row 1 (64-wide heads).
        let row_start = |name: &str, row: usize, n: usize| {
            let view = weights.tensor(name).unwrap();
            let cols = view.shape()[1];
            // As f64 (exact) so the literals below need not be rounded to f32's shortest form.
            tensor_as_f32(&view)[row * cols..row * cols + n]
                .iter()
                .map(|&v| f64::from(v))
                .collect::<Vec<f64>>()
        };
        assert_eq!(
            row_start("model.embed_tokens.weight", 1, 4),
            [
                -0.0238037109375,
                -0.015869140625,
                -0.0396728515625,
                0.015869140625
            ]
        );
        assert_eq!(
            row_start("model.layers.0.self_attn.q_proj.weight", 1, 3),
            [-0.1591796875, 0.39794921875, -0.0198974609375]
        );
        assert_eq!(
            row_start("model.layers.0.self_attn.k_proj.weight", 32, 3),
            [0.056640625, 0.056640625, -0.126953125]
        );

        let tokenizer = Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        let text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n";
        let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(
            ids,
            [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198]
        );
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
        assert_eq!(tokenizer.encode("2024", false).unwrap().get_ids().len(), 4);
        let template = read_json(&out.join("tokenizer_config.json"))["chat_template"].clone();
        assert!(template.as_str().unwrap().contains("<|im_start|>"));
    }
}
