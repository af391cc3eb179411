//! Test support shared by the modules' tests: a small GGUF writer, test-side quantisers for
//! exactly representable values, and a synthetic two-layer Llama model to convert.

use std::fs;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::format::DEFAULT_ALIGNMENT;
use crate::{GgmlType, GgufValue, OutputDtype, convert_to_hf};

/// llama.cpp's converter: `w.reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2)
/// .reshape(rows, cols)`; output row (h, b, a) is input row (h, a, b).
pub(crate) fn llama_cpp_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let half = rows / n_head / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..n_head {
        for b in 0..half {
            for a in 0..2 {
                let dst = (h * half + b) * 2 + a;
                let src = (h * 2 + a) * half + b;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

// ---- a small GGUF writer ---------------------------------------------------------------------

fn value_type(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.extend(x.to_le_bytes()),
        GgufValue::I8(x) => out.extend(x.to_le_bytes()),
        GgufValue::U16(x) => out.extend(x.to_le_bytes()),
        GgufValue::I16(x) => out.extend(x.to_le_bytes()),
        GgufValue::U32(x) => out.extend(x.to_le_bytes()),
        GgufValue::I32(x) => out.extend(x.to_le_bytes()),
        GgufValue::F32(x) => out.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(*x as u8),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(items) => {
            out.extend(items.first().map_or(0, value_type).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        GgufValue::U64(x) => out.extend(x.to_le_bytes()),
        GgufValue::I64(x) => out.extend(x.to_le_bytes()),
        GgufValue::F64(x) => out.extend(x.to_le_bytes()),
    }
}

pub(crate) struct TestTensor {
    pub(crate) name: String,
    pub(crate) dims: Vec<u64>,
    pub(crate) type_id: u32,
    pub(crate) data: Vec<u8>,
}

pub(crate) struct TestGguf {
    pub(crate) version: u32,
    pub(crate) kv: Vec<(String, GgufValue)>,
    pub(crate) tensors: Vec<TestTensor>,
}

impl TestGguf {
    pub(crate) fn set(&mut self, key: &str, value: GgufValue) {
        self.kv.retain(|(k, _)| k != key);
        self.kv.push((key.to_string(), value));
    }

    pub(crate) fn remove(&mut self, key: &str) {
        self.kv.retain(|(k, _)| k != key);
    }

    pub(crate) fn tensor_mut(&mut self, name: &str) -> &mut TestTensor {
        self.tensors.iter_mut().find(|t| t.name == name).unwrap()
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.layout().0
    }

    /// The file (header, metadata, tensor infos, then each tensor's data at an aligned
    /// offset, with no padding after the last one, so every proper prefix is truncated),
    /// and where its metadata and its tensor infos end.
    pub(crate) fn layout(&self) -> (Vec<u8>, usize, usize) {
        let alignment = self
            .kv
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT) as usize;
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (key, value) in &self.kv {
            put_str(&mut out, key);
            out.extend(value_type(value).to_le_bytes());
            put_value(&mut out, value);
        }
        let metadata_end = out.len();
        let mut data = Vec::new();
        for t in &self.tensors {
            data.resize(data.len().next_multiple_of(alignment), 0);
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.type_id.to_le_bytes());
            out.extend((data.len() as u64).to_le_bytes());
            data.extend(&t.data);
        }
        let infos_end = out.len();
        out.resize(out.len().next_multiple_of(alignment), 0);
        out.extend(data);
        (out, metadata_end, infos_end)
    }

    pub(crate) fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, self.bytes()).unwrap();
        path
    }
}

// ---- test-side quantisers for exactly representable values -----------------------------------

fn f16_le(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// Q4_0 with d = 1: values must be integers in -8..8.
fn q4_0_d1(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for block in values.chunks(32) {
        out.extend(f16_le(1.0));
        let q: Vec<u8> = block.iter().map(|&v| (v + 8.0) as u8).collect();
        out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
    }
    out
}

/// Q4_1 with d = 1, m = -8: values must be integers in -8..8.
fn q4_1_d1_m8(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for block in values.chunks(32) {
        out.extend(f16_le(1.0));
        out.extend(f16_le(-8.0));
        let q: Vec<u8> = block.iter().map(|&v| (v + 8.0) as u8).collect();
        out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
    }
    out
}

/// Q8_0 with the given d: values / d must be integers in -127..=127.
fn q8_0(values: &[f32], d: f32) -> Vec<u8> {
    let mut out = Vec::new();
    for block in values.chunks(32) {
        out.extend(f16_le(d));
        out.extend(block.iter().map(|&v| (v / d) as i8 as u8));
    }
    out
}

/// Q4_K with d = dmin = 1, every scale 1 and every min 8: values must be integers in -8..8.
fn q4_k_unit(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for block in values.chunks(256) {
        out.extend(f16_le(1.0));
        out.extend(f16_le(1.0));
        out.extend([
            1,
            1,
            1,
            1,
            8,
            8,
            8,
            8,
            1 | (8 << 4),
            1 | (8 << 4),
            1 | (8 << 4),
            1 | (8 << 4),
        ]);
        let q: Vec<u8> = block.iter().map(|&v| (v + 8.0) as u8).collect();
        for chunk in q.chunks(64) {
            out.extend((0..32).map(|l| chunk[l] | (chunk[l + 32] << 4)));
        }
    }
    out
}

/// Q6_K with d = 1 and every scale 1: values must be integers in -32..32.
fn q6_k_unit(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for block in values.chunks(256) {
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for (e, &v) in block.iter().enumerate() {
            let q = (v + 32.0) as u8;
            let (half, quarter, l) = (e / 128, e % 128 / 32, e % 32);
            ql[64 * half + 32 * (quarter % 2) + l] |= (q & 15) << (4 * (quarter / 2));
            qh[32 * half + l] |= (q >> 4) << (2 * quarter);
        }
        out.extend(ql);
        out.extend(qh);
        out.extend([1u8; 16]);
        out.extend(f16_le(1.0));
    }
    out
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|&v| f16_le(v)).collect()
}

fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect()
}

// ---- the synthetic two-layer model -----------------------------------------------------------

pub(crate) const HIDDEN: usize = 32;
pub(crate) const FFN: usize = 256;
pub(crate) const N_HEAD: usize = 2;
pub(crate) const N_KV_HEAD: usize = 1;
pub(crate) const HEAD_DIM: usize = 16;
pub(crate) const LAYERS: usize = 2;

/// Byte-level vocabulary: three control tokens, one user-defined token, single characters
/// ("Ġ" is a space, "Ċ" a newline) and the merges that build "hello", "Ġworld" and "12".
pub(crate) const TOKENS: [&str; 25] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tool>",
    "h",
    "e",
    "l",
    "o",
    "Ġ",
    "w",
    "r",
    "d",
    "Ċ",
    "1",
    "2",
    "he",
    "ll",
    "hell",
    "hello",
    "Ġw",
    "or",
    "Ġwor",
    "Ġworl",
    "Ġworld",
    "12",
];
pub(crate) const MERGES: [&str; 10] = [
    "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "1 2",
];
pub(crate) const CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n\
                                        {{ m['content'] }}<|im_end|>\n{% endfor %}";

/// Hugging Face-layout values of every weight, chosen to be exact in their GGUF types.
pub(crate) fn expected(hf_name: &str) -> (Vec<usize>, Vec<f32>) {
    let matrix = |rows: usize, cols: usize, f: &dyn Fn(usize, usize) -> f32| {
        (
            vec![rows, cols],
            (0..rows * cols).map(|i| f(i / cols, i % cols)).collect(),
        )
    };
    let vector = |n: usize, f: &dyn Fn(usize) -> f32| (vec![n], (0..n).map(f).collect());
    let vocab = TOKENS.len();
    match hf_name {
        "model.embed_tokens.weight" => {
            matrix(vocab, HIDDEN, &|v, c| ((v * 3 + c) % 21) as f32 * 0.5 - 5.0)
        }
        "lm_head.weight" => matrix(vocab, HIDDEN, &|v, c| (v * 32 + c) as f32 * 0.5),
        "model.norm.weight" => vector(HIDDEN, &|c| c as f32),
        _ => {
            let rest = hf_name.strip_prefix("model.layers.").unwrap();
            let (layer, part) = rest.split_once('.').unwrap();
            let l: usize = layer.parse().unwrap();
            match part {
                "input_layernorm.weight" => vector(HIDDEN, &|c| 1.0 + c as f32 * 0.125 + l as f32),
                "post_attention_layernorm.weight" => vector(HIDDEN, &|c| 2.0 - c as f32 * 0.0625),
                "self_attn.q_proj.weight" => matrix(N_HEAD * HEAD_DIM, HIDDEN, &|r, c| {
                    ((r * 7 + c + l) % 16) as f32 - 8.0
                }),
                "self_attn.k_proj.weight" => matrix(N_KV_HEAD * HEAD_DIM, HIDDEN, &|r, c| {
                    ((r * 5 + 3 * c + l) % 16) as f32 - 8.0
                }),
                "self_attn.v_proj.weight" => matrix(N_KV_HEAD * HEAD_DIM, HIDDEN, &|r, c| {
                    (r * 32 + c + l) as f32 * 0.25
                }),
                "self_attn.o_proj.weight" => {
                    matrix(HIDDEN, HIDDEN, &|r, c| ((r + c + l) % 64) as f32 - 32.0)
                }
                "mlp.gate_proj.weight" => {
                    matrix(FFN, HIDDEN, &|r, c| (r * 32 + c) as f32 * 0.001 + l as f32)
                }
                "mlp.up_proj.weight" => matrix(FFN, HIDDEN, &|r, c| {
                    ((r + 2 * c + l) % 255) as f32 * 0.25 - 31.75
                }),
                "mlp.down_proj.weight" if l == 0 => {
                    matrix(HIDDEN, FFN, &|r, c| ((r * 3 + c) % 16) as f32 - 8.0)
                }
                "mlp.down_proj.weight" => {
                    matrix(HIDDEN, FFN, &|r, c| ((r * 5 + c) % 64) as f32 - 32.0)
                }
                _ => panic!("no expected values for {hf_name}"),
            }
        }
    }
}

/// A GGUF tensor holding `expected(hf_name)` in `type_id`, Q/K rows permuted as llama.cpp does.
pub(crate) fn tensor(gguf_name: &str, hf_name: &str, type_id: u32) -> TestTensor {
    let (shape, mut values) = expected(hf_name);
    if gguf_name.ends_with("attn_q.weight") {
        values = llama_cpp_permute(&values, shape[0], shape[1], N_HEAD);
    }
    if gguf_name.ends_with("attn_k.weight") {
        values = llama_cpp_permute(&values, shape[0], shape[1], N_KV_HEAD);
    }
    let data = match GgmlType::from_id(type_id).unwrap() {
        GgmlType::F32 => f32_bytes(&values),
        GgmlType::F16 => f16_bytes(&values),
        GgmlType::BF16 => bf16_bytes(&values),
        GgmlType::Q4_0 => q4_0_d1(&values),
        GgmlType::Q4_1 => q4_1_d1_m8(&values),
        GgmlType::Q8_0 => q8_0(&values, 0.25),
        GgmlType::Q4_K => q4_k_unit(&values),
        GgmlType::Q6_K => q6_k_unit(&values),
    };
    TestTensor {
        name: gguf_name.to_string(),
        dims: shape.iter().rev().map(|&d| d as u64).collect(),
        type_id,
        data,
    }
}

pub(crate) fn synthetic_llama() -> TestGguf {
    let s = |v: &str| GgufValue::String(v.to_string());
    let u = GgufValue::U32;
    let token_types = TOKENS
        .iter()
        .enumerate()
        .map(|(i, _)| {
            GgufValue::I32(match i {
                0..=2 => 3,
                3 => 4,
                _ => 1,
            })
        })
        .collect();
    let kv = vec![
        ("general.architecture", s("llama")),
        ("general.name", s("synthetic")),
        ("llama.block_count", u(LAYERS as u32)),
        ("llama.context_length", u(64)),
        ("llama.embedding_length", u(HIDDEN as u32)),
        ("llama.feed_forward_length", u(FFN as u32)),
        ("llama.attention.head_count", u(N_HEAD as u32)),
        ("llama.attention.head_count_kv", u(N_KV_HEAD as u32)),
        ("llama.rope.freq_base", GgufValue::F32(500000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-6),
        ),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("smollm")),
        (
            "tokenizer.ggml.tokens",
            GgufValue::Array(TOKENS.iter().map(|t| s(t)).collect()),
        ),
        ("tokenizer.ggml.token_type", GgufValue::Array(token_types)),
        (
            "tokenizer.ggml.merges",
            GgufValue::Array(MERGES.iter().map(|m| s(m)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", u(1)),
        ("tokenizer.ggml.eos_token_id", u(2)),
        ("tokenizer.ggml.unknown_token_id", u(0)),
        ("tokenizer.ggml.padding_token_id", u(2)),
        ("tokenizer.ggml.add_bos_token", GgufValue::Bool(false)),
        ("tokenizer.chat_template", s(CHAT_TEMPLATE)),
    ];
    let mut tensors = vec![
        tensor("token_embd.weight", "model.embed_tokens.weight", 8),
        tensor("output_norm.weight", "model.norm.weight", 0),
    ];
    for l in 0..LAYERS {
        let hf = |part: &str| format!("model.layers.{l}.{part}.weight");
        let gg = |part: &str| format!("blk.{l}.{part}.weight");
        tensors.extend([
            tensor(&gg("attn_norm"), &hf("input_layernorm"), 0),
            tensor(&gg("attn_q"), &hf("self_attn.q_proj"), 2),
            tensor(&gg("attn_k"), &hf("self_attn.k_proj"), 3),
            tensor(&gg("attn_v"), &hf("self_attn.v_proj"), 1),
            tensor(&gg("attn_output"), &hf("self_attn.o_proj"), 30),
            tensor(&gg("ffn_norm"), &hf("post_attention_layernorm"), 0),
            tensor(&gg("ffn_gate"), &hf("mlp.gate_proj"), 0),
            tensor(&gg("ffn_up"), &hf("mlp.up_proj"), 8),
            tensor(
                &gg("ffn_down"),
                &hf("mlp.down_proj"),
                if l == 0 { 12 } else { 14 },
            ),
        ]);
    }
    TestGguf {
        version: 3,
        kv: kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        tensors,
    }
}

/// Converts `gguf`, expecting an error; returns its message.
pub(crate) fn convert_err(gguf: &TestGguf) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = gguf.write(dir, "bad.gguf");
    let out = dir.join("hf");
    let err = convert_to_hf(&path, &out, OutputDtype::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&path.display().to_string()),
        "error does not name the file: {err}"
    );
    // A failed conversion leaves nothing behind: no model directory, no staging directory.
    let entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["bad.gguf"], "after: {err}");
    err
}
