//! GGUF import: reads a llama.cpp GGUF file (format v2/v3), dequantises its tensors and writes a
//! Hugging Face Llama model directory (config, safetensors weights, tokenizer files).
//!
//! Pure Rust on purpose (no libtorch): conversion runs once, before any model is loaded, and its
//! tests run without libtorch.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, View};
use serde_json::{Map, Value, json};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal in GGUF but never nested deeply; the cap keeps a corrupt file from
/// recursing until the stack overflows.
const MAX_ARRAY_NESTING: u32 = 8;

/// One metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// Any integer type holding a non-negative value (writers differ in the width they use).
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }

    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// F32 values go through their shortest decimal form, so 1e-5 stored as f32 becomes 1e-5 in
    /// config.json rather than 9.999999747378752e-6.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.to_string().parse().unwrap_or(f64::from(v))),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::F32(_) => "f32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F64(_) => "f64",
        }
    }
}

/// The ggml tensor types this importer can dequantise.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q6_K,
}

impl GgmlType {
    const ALL: [GgmlType; 8] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];

    /// The type's id in ggml's `ggml_type` enum, as stored in tensor infos.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q6_K => "Q6_K",
        }
    }

    /// (elements per block, bytes per block).
    fn block_layout(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            // d (f16) + 32 nibbles
            GgmlType::Q4_0 => (32, 18),
            // d, m (f16) + 32 nibbles
            GgmlType::Q4_1 => (32, 20),
            // d (f16) + 32 i8
            GgmlType::Q8_0 => (32, 34),
            // d, dmin (f16) + 12 bytes of 6-bit scales/mins + 256 nibbles
            GgmlType::Q4_K => (256, 144),
            // 128 bytes low nibbles + 64 bytes high 2-bit pairs + 16 i8 scales + d (f16)
            GgmlType::Q6_K => (256, 210),
        }
    }

    fn supported_list() -> String {
        let names: Vec<String> = GgmlType::ALL
            .iter()
            .map(|t| format!("{} (id {})", t.name(), t.id()))
            .collect();
        names.join(", ")
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the tensor's data from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Element count (saturating; `open` rejects tensors whose count overflows).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }
}

/// Everything that can go wrong; each message names the file (and tensor or key) and says what to
/// do about it.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read GGUF file {}: {source}; check that the path exists and is readable",
        path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{} is not a GGUF file (it starts with \"{found}\", expected \"GGUF\"); \
        pass a llama.cpp .gguf model file", path.display())]
    BadMagic { path: PathBuf, found: String },
    #[error("{}: GGUF version {version} is not supported (this importer reads versions 2 and 3); \
        re-export the model with a current llama.cpp", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{} is truncated: {what} needs {needed} bytes at offset {offset} but the file has \
        only {len} bytes; the download or export was cut short, fetch or export the file again",
        path.display())]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("{} is malformed: {what}; the file is corrupt or was not written by llama.cpp, \
        export it again", path.display())]
    Malformed { path: PathBuf, what: String },
    #[error("{}: tensor '{tensor}' has ggml type id {id}, which this importer cannot dequantise \
        (supported: {supported}); requantise the model to one of these types",
        path.display(), supported = GgmlType::supported_list())]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        id: u32,
    },
    #[error("{}: required metadata key '{key}' is missing; the file was not written by \
        llama.cpp's converter for this architecture, export it again", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: metadata key '{key}' holds {found}, expected {expected}; the file is corrupt or \
        comes from an incompatible writer", path.display())]
    WrongKeyType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{}: architecture '{arch}' (general.architecture) is not supported; only 'llama' \
        models can be converted", path.display())]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error("{}: {what}, which this importer cannot convert yet; extend gguf.rs or convert the \
        original Hugging Face checkpoint instead", path.display())]
    UnsupportedFeature { path: PathBuf, what: String },
    #[error("{}: tokenizer model '{model}' (tokenizer.ggml.model) is not supported yet, only \
        'gpt2' (byte-level BPE) is; take tokenizer.json from the original Hugging Face \
        repository instead", path.display())]
    UnsupportedTokenizer { path: PathBuf, model: String },
    #[error("{}: pre-tokenizer '{pre}' (tokenizer.ggml.pre) is not supported (supported: \
        {supported}); add its rules to gguf.rs or take tokenizer.json from the original Hugging \
        Face repository", path.display(), supported = SUPPORTED_PRE_TOKENIZERS.join(", "))]
    UnsupportedPreTokenizer { path: PathBuf, pre: String },
    #[error("{}: tensor '{tensor}' has no Hugging Face Llama equivalent (known: token_embd, \
        output_norm, output, blk.N.{{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, \
        ffn_gate, ffn_up, ffn_down}} with N below llama.block_count); extend the name mapping \
        in gguf.rs", path.display())]
    UnexpectedTensor { path: PathBuf, tensor: String },
    #[error("{}: tensor '{tensor}' is missing; the file is incomplete, export it again",
        path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{}: tensor '{tensor}' has Hugging Face shape {found:?} but the metadata implies \
        {expected:?}; the metadata and the weights disagree, export the file again",
        path.display())]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("output directory {} already exists and is not empty; remove it or choose another \
        directory (conversion never overwrites)", path.display())]
    OutputExists { path: PathBuf },
    #[error("cannot write {}: {source}; check free disk space and permissions", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot write weights to {}: {source}; check free disk space and permissions",
        path.display())]
    Safetensors {
        path: PathBuf,
        source: safetensors::SafeTensorError,
    },
}

/// A GGUF file, memory-mapped. `open` parses the header, metadata and tensor infos and checks that
/// every tensor has a supported type and lies inside the file, so later reads cannot run off it.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    /// Absolute file offset of the (aligned) data section.
    data_start: u64,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let open_error = |source| GgufError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_error)?;
        // SAFETY: the map is read-only; like every mmap reader we rely on nobody truncating the
        // file while it is open (llama.cpp and the HF loaders make the same assumption).
        let mmap = unsafe { Mmap::map(&file) }.map_err(open_error)?;
        let mut reader = Reader {
            bytes: &mmap,
            pos: 0,
            path,
        };

        let magic: [u8; 4] = reader.array("the file header")?;
        if &magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
                found: magic.escape_ascii().to_string(),
            });
        }
        let version = reader.u32("the file header")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let n_tensors = reader.u64("the file header")?;
        let n_kv = reader.u64("the file header")?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = reader.string(&format!("metadata key #{i}"))?;
            let what = format!("metadata value of '{key}'");
            let type_id = reader.u32(&what)?;
            let value = reader.value(type_id, &what, 0)?;
            if metadata.contains_key(&key) {
                return Err(reader.malformed(format!("metadata key '{key}' appears twice")));
            }
            metadata.insert(key, value);
        }

        let mut tensors: Vec<GgufTensorInfo> = Vec::new();
        let mut names = BTreeSet::new();
        for i in 0..n_tensors {
            let name = reader.string(&format!("tensor info #{i}"))?;
            let what = format!("tensor info of '{name}'");
            let n_dims = reader.u32(&what)?;
            if n_dims > MAX_DIMS {
                return Err(reader.malformed(format!(
                    "tensor '{name}' has {n_dims} dimensions (ggml allows at most {MAX_DIMS})"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| reader.u64(&what))
                .collect::<Result<Vec<_>, _>>()?;
            let type_id = reader.u32(&what)?;
            let offset = reader.u64(&what)?;
            let ggml_type =
                GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnsupportedType {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    id: type_id,
                })?;
            if !names.insert(name.clone()) {
                return Err(reader.malformed(format!("tensor '{name}' appears twice")));
            }
            tensors.push(GgufTensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                reader.malformed(format!("general.alignment is {v:?}, not a power of two"))
            })?,
        };
        let data_start = (reader.pos as u64).next_multiple_of(alignment);

        let gguf = GgufFile {
            path: path.to_path_buf(),
            mmap,
            metadata,
            tensors,
            data_start,
        };
        for tensor in &gguf.tensors {
            gguf.tensor_bytes(tensor)?;
        }
        Ok(gguf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The tensor's values as f32 in GGUF order (`dims[0]` fastest), exactly as ggml computes
    /// them.
    pub fn dequantize(&self, tensor: &GgufTensorInfo) -> Result<Vec<f32>, GgufError> {
        let (bytes, n_elements) = self.tensor_bytes(tensor)?;
        let mut out = vec![0.0f32; n_elements];
        dequantize_into(tensor.ggml_type, bytes, &mut out);
        Ok(out)
    }

    /// The tensor's raw bytes and element count, after checking its shape against its block size
    /// and its extent against the file.
    fn tensor_bytes(&self, tensor: &GgufTensorInfo) -> Result<(&[u8], usize), GgufError> {
        let (block_elems, block_bytes) = tensor.ggml_type.block_layout();
        let n_elements = tensor
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                self.malformed(format!(
                    "tensor '{}' has dims {:?}, too many elements",
                    tensor.name, tensor.dims
                ))
            })?;
        let row = tensor.dims.first().copied().unwrap_or(1);
        if row % block_elems != 0 {
            return Err(self.malformed(format!(
                "tensor '{}' has rows of {row} elements, not a multiple of the {} block size {block_elems}",
                tensor.name, tensor.ggml_type
            )));
        }
        let len = self.mmap.len() as u64;
        let size = n_elements / block_elems * block_bytes;
        let start = self.data_start.checked_add(tensor.offset);
        let end = start.and_then(|s| s.checked_add(size));
        match (start, end) {
            (Some(start), Some(end)) if end <= len => Ok((
                &self.mmap[start as usize..end as usize],
                n_elements as usize,
            )),
            _ => Err(GgufError::Truncated {
                path: self.path.clone(),
                what: format!("the data of tensor '{}'", tensor.name),
                offset: start.unwrap_or(u64::MAX),
                needed: size,
                len,
            }),
        }
    }

    fn malformed(&self, what: String) -> GgufError {
        GgufError::Malformed {
            path: self.path.clone(),
            what,
        }
    }

    fn missing(&self, key: &str) -> GgufError {
        GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        }
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &GgufValue) -> GgufError {
        let found = match found {
            GgufValue::Array(items) => {
                format!(
                    "an array of {} ({})",
                    items.len(),
                    items.first().map_or("nothing", GgufValue::type_name)
                )
            }
            other => format!("a {} ({other:?})", other.type_name()),
        };
        GgufError::WrongKeyType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found,
        }
    }

    /// Reads an optional key with `convert`, failing if it is present with the wrong type.
    fn optional<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl Fn(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => convert(v)
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, expected, v)),
        }
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.optional(key, "a non-negative integer", GgufValue::as_u64)
    }

    fn req_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.opt_u64(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.optional(key, "a float", GgufValue::as_f64)
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.optional(key, "a string", GgufValue::as_str)
    }

    fn req_str(&self, key: &str) -> Result<&str, GgufError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.optional(key, "a bool", GgufValue::as_bool)
    }

    fn opt_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        self.optional(key, "an array of strings", |v| match v {
            GgufValue::Array(items) => items.iter().map(GgufValue::as_str).collect(),
            _ => None,
        })
    }

    fn opt_int_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        self.optional(key, "an array of integers", |v| match v {
            GgufValue::Array(items) => items.iter().map(GgufValue::as_i64).collect(),
            _ => None,
        })
    }
}

/// A bounds-checked little-endian cursor over the file; every read that would run past the end
/// becomes a `Truncated` error saying what was being read.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n));
        match end {
            Some(end) if end <= self.bytes.len() => {
                let slice = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(slice)
            }
            _ => Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n,
                len: self.bytes.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.malformed(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, type_id: u32, what: &str, depth: u32) -> Result<GgufValue, GgufError> {
        Ok(match type_id {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => GgufValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => GgufValue::String(self.string(what)?),
            9 => {
                let elem_type = self.u32(what)?;
                let count = self.u64(what)?;
                if depth >= MAX_ARRAY_NESTING {
                    return Err(self.malformed(format!(
                        "{what} nests arrays more than {MAX_ARRAY_NESTING} deep"
                    )));
                }
                // Every element takes at least one byte, so the remaining length bounds the
                // allocation even when `count` is corrupt.
                let remaining = (self.bytes.len() - self.pos) as u64;
                let mut items = Vec::with_capacity(count.min(remaining) as usize);
                for _ in 0..count {
                    items.push(self.value(elem_type, what, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(self.malformed(format!("{what} has unknown value type id {other}")));
            }
        })
    }

    fn malformed(&self, what: String) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_path_buf(),
            what,
        }
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Dequantises `bytes` of type `ty` into `out`, following ggml's `dequantize_row_*` reference
/// code operation for operation so the results are bit-identical. `bytes` holds exactly
/// `out.len()` elements (checked by `GgufFile::tensor_bytes`).
fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (block_elems, block_bytes) = ty.block_layout();
    let blocks = bytes
        .chunks_exact(block_bytes as usize)
        .zip(out.chunks_exact_mut(block_elems as usize));
    match ty {
        GgmlType::F32 => {
            for (x, y) in blocks {
                y[0] = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
            }
        }
        GgmlType::F16 => {
            for (x, y) in blocks {
                y[0] = f16_at(x, 0);
            }
        }
        GgmlType::BF16 => {
            for (x, y) in blocks {
                y[0] = bf16::from_bits(u16::from_le_bytes([x[0], x[1]])).to_f32();
            }
        }
        GgmlType::Q4_0 => {
            for (x, y) in blocks {
                let d = f16_at(x, 0);
                // Low nibbles are elements 0..16, high nibbles 16..32.
                let (lo, hi) = y.split_at_mut(16);
                for ((&q, a), b) in x[2..18].iter().zip(lo).zip(hi) {
                    *a = ((q & 0x0F) as i32 - 8) as f32 * d;
                    *b = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (x, y) in blocks {
                let d = f16_at(x, 0);
                let m = f16_at(x, 2);
                let (lo, hi) = y.split_at_mut(16);
                for ((&q, a), b) in x[4..20].iter().zip(lo).zip(hi) {
                    *a = (q & 0x0F) as f32 * d + m;
                    *b = (q >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (x, y) in blocks {
                let d = f16_at(x, 0);
                for (&q, v) in x[2..34].iter().zip(y) {
                    *v = q as i8 as f32 * d;
                }
            }
        }
        GgmlType::Q4_K => {
            for (x, y) in blocks {
                let d = f16_at(x, 0);
                let dmin = f16_at(x, 2);
                let scales = &x[4..16];
                // Each 32-byte group of quants holds two sub-blocks of 32: low nibbles first.
                for (j, (qs, y)) in x[16..144]
                    .chunks_exact(32)
                    .zip(y.chunks_exact_mut(64))
                    .enumerate()
                {
                    let (sc1, m1) = q4_k_scale_min(2 * j, scales);
                    let (sc2, m2) = q4_k_scale_min(2 * j + 1, scales);
                    let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
                    let (lo, hi) = y.split_at_mut(32);
                    for ((&q, a), b) in qs.iter().zip(lo).zip(hi) {
                        *a = d1 * (q & 0x0F) as f32 - min1;
                        *b = d2 * (q >> 4) as f32 - min2;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (x, y) in blocks {
                let d = f16_at(x, 208);
                // Two halves of 128 elements; each takes 64 bytes of low nibbles, 32 bytes of
                // high bit pairs and 8 scales.
                for half in 0..2 {
                    let ql = &x[64 * half..64 * half + 64];
                    let qh = &x[128 + 32 * half..128 + 32 * half + 32];
                    let sc = &x[192 + 8 * half..192 + 8 * half + 8];
                    let y = &mut y[128 * half..128 * half + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * sc[is] as i8 as f32 * q1 as f32;
                        y[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                        y[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                        y[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
                    }
                }
            }
        }
    }
}

/// Scale and min of sub-block `j` (0..8) of a Q4_K super-block, as ggml's `get_scale_min_k4`:
/// 6-bit values, the first four stored whole in bytes 0..8, the last four split into a low
/// nibble (bytes 8..12) and two high bits borrowed from the top of bytes 0..8.
fn q4_k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

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
            path: gguf.path.clone(),
            arch: arch.to_string(),
        });
    }
    let tokenizer = TokenizerFiles::read(&gguf)?;
    let params = LlamaParams::read(&gguf, tokenizer.vocab_size)?;
    let plan = plan_tensors(&gguf, &params)?;
    let tied = !gguf.tensors.iter().any(|t| t.name == "output.weight");

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
                    "llama.attention.head_count = {n_head} does not divide llama.embedding_length = {hidden}"
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
                "llama.attention.head_count_kv = {n_kv_head} does not divide llama.attention.head_count = {n_head}"
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
                    path: gguf.path.clone(),
                    what: format!("llama.rope.scaling.type is '{other}' (supported: none, linear)"),
                });
            }
        };
        // Hugging Face's Llama rotates whole heads; partial rotary embeddings have no config key.
        if let Some(rope_dims) = gguf.opt_u64("llama.rope.dimension_count")?
            && rope_dims != head_dim
        {
            return Err(GgufError::UnsupportedFeature {
                path: gguf.path.clone(),
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
    let mut plan = Vec::with_capacity(gguf.tensors.len());
    for info in &gguf.tensors {
        let unexpected = || GgufError::UnexpectedTensor {
            path: gguf.path.clone(),
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
                path: gguf.path.clone(),
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

    let present: BTreeSet<&str> = gguf.tensors.iter().map(|t| t.name.as_str()).collect();
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
                path: gguf.path.clone(),
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

/// The `tokenizer.ggml.pre` names this importer knows, each mapped to the Hugging Face
/// pre-tokenizer that reproduces llama.cpp's splitting rules in `pre_tokenizer`.
const SUPPORTED_PRE_TOKENIZERS: [&str; 8] = [
    "smollm",
    "starcoder",
    "refact",
    "gpt2",
    "gpt-2",
    "default",
    "llama-bpe",
    "llama3",
];

/// Llama 3's split regex, as in Meta's tokenizer.json.
const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The Hugging Face pre-tokenizer for a `tokenizer.ggml.pre` name, and whether the BPE model
/// must ignore merges for whole words found in the vocabulary (llama.cpp does for Llama 3).
fn pre_tokenizer(pre: &str) -> Option<(Value, bool)> {
    let byte_level = |use_regex: bool| {
        json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": use_regex,
        })
    };
    Some(match pre {
        // StarCoder-family tokenizers split every digit off before the GPT-2 rules.
        "smollm" | "starcoder" | "refact" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        "gpt2" | "gpt-2" | "default" => (byte_level(true), false),
        "llama-bpe" | "llama3" => (
            json!({"type": "Sequence", "pretokenizers": [
                {
                    "type": "Split", "pattern": {"Regex": LLAMA3_SPLIT_REGEX},
                    "behavior": "Isolated", "invert": false,
                },
                byte_level(false),
            ]}),
            true,
        ),
        _ => return None,
    })
}

/// ggml token types that become Hugging Face added tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

struct SpecialToken {
    id: u64,
    content: String,
}

/// The tokenizer files of a `gpt2` (byte-level BPE) GGUF vocabulary.
struct TokenizerFiles {
    vocab_size: u64,
    tokenizer_json: Value,
    chat_template: Option<String>,
    add_bos: bool,
    add_eos: bool,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    pad: Option<SpecialToken>,
    unk: Option<SpecialToken>,
}

impl TokenizerFiles {
    fn read(gguf: &GgufFile) -> Result<TokenizerFiles, GgufError> {
        let model = gguf.req_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(GgufError::UnsupportedTokenizer {
                path: gguf.path.clone(),
                model: model.to_string(),
            });
        }
        let tokens = gguf
            .opt_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| gguf.missing("tokenizer.ggml.tokens"))?;
        let merges = gguf
            .opt_str_array("tokenizer.ggml.merges")?
            .ok_or_else(|| gguf.missing("tokenizer.ggml.merges"))?;
        let token_types = gguf
            .opt_int_array("tokenizer.ggml.token_type")?
            .unwrap_or_else(|| vec![1; tokens.len()]);
        if token_types.len() != tokens.len() {
            return Err(gguf.malformed(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                token_types.len(),
                tokens.len()
            )));
        }
        // llama.cpp treats a missing pre-tokenizer name as "default".
        let pre = gguf.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let (pre_tokenizer, ignore_merges) =
            pre_tokenizer(pre).ok_or_else(|| GgufError::UnsupportedPreTokenizer {
                path: gguf.path.clone(),
                pre: pre.to_string(),
            })?;

        let special = |key: &str| -> Result<Option<SpecialToken>, GgufError> {
            let Some(id) = gguf.opt_u64(key)? else {
                return Ok(None);
            };
            let content = tokens.get(id as usize).ok_or_else(|| {
                gguf.malformed(format!(
                    "{key} = {id} is not a token id (the vocabulary has {} tokens)",
                    tokens.len()
                ))
            })?;
            Ok(Some(SpecialToken {
                id,
                content: content.to_string(),
            }))
        };
        let bos = special("tokenizer.ggml.bos_token_id")?;
        let eos = special("tokenizer.ggml.eos_token_id")?;
        let add_bos = gguf
            .opt_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(false);
        let add_eos = gguf
            .opt_bool("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(gguf.missing("tokenizer.ggml.bos_token_id"));
        }
        if add_eos && eos.is_none() {
            return Err(gguf.missing("tokenizer.ggml.eos_token_id"));
        }

        let mut vocab = Map::new();
        let mut added_tokens = Vec::new();
        for (id, (&token, &token_type)) in tokens.iter().zip(&token_types).enumerate() {
            if let Some(first) = vocab.insert(token.to_string(), json!(id)) {
                return Err(gguf.malformed(format!(
                    "token {token:?} appears twice in tokenizer.ggml.tokens (ids {first} and {id})"
                )));
            }
            if token_type == TOKEN_TYPE_CONTROL || token_type == TOKEN_TYPE_USER_DEFINED {
                added_tokens.push(json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false,
                    "rstrip": false,
                    "normalized": false, "special": token_type == TOKEN_TYPE_CONTROL,
                }));
            }
        }
        // GGUF stores merges as "left right"; the left part is never empty, so split at the first
        // space after its first character (as llama.cpp does). Pairs survive tokens with spaces.
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, merge)| {
                merge
                    .char_indices()
                    .skip(1)
                    .find(|&(_, c)| c == ' ')
                    .map(|(at, _)| json!([&merge[..at], &merge[at + 1..]]))
                    .ok_or_else(|| {
                        gguf.malformed(format!(
                            "tokenizer.ggml.merges entry #{i} ({merge:?}) has no space"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let byte_level_post = json!({
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true,
        });
        let post_processor = if add_bos || add_eos {
            let bos = bos.as_ref().filter(|_| add_bos);
            let eos = eos.as_ref().filter(|_| add_eos);
            let template = template_processing(bos, eos);
            json!({"type": "Sequence", "processors": [byte_level_post, template]})
        } else {
            byte_level_post
        };
        let tokenizer_json = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {
                "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true,
            },
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": ignore_merges,
                "vocab": vocab,
                "merges": merges,
            },
        });
        Ok(TokenizerFiles {
            vocab_size: tokens.len() as u64,
            tokenizer_json,
            chat_template: gguf.opt_str("tokenizer.chat_template")?.map(str::to_string),
            add_bos,
            add_eos,
            pad: special("tokenizer.ggml.padding_token_id")?,
            unk: special("tokenizer.ggml.unknown_token_id")?,
            bos,
            eos,
        })
    }

    fn named_specials(&self) -> [(&'static str, &Option<SpecialToken>); 4] {
        [
            ("bos", &self.bos),
            ("eos", &self.eos),
            ("pad", &self.pad),
            ("unk", &self.unk),
        ]
    }

    /// Adds `bos_token_id`, `eos_token_id` and `pad_token_id` (those the GGUF defines).
    fn add_special_ids(&self, json: &mut Value) {
        for (name, token) in [("bos", &self.bos), ("eos", &self.eos), ("pad", &self.pad)] {
            if let Some(token) = token {
                json[format!("{name}_token_id")] = json!(token.id);
            }
        }
    }

    fn generation_config(&self) -> Value {
        let mut config = json!({});
        self.add_special_ids(&mut config);
        config
    }

    fn special_tokens_map(&self) -> Value {
        let mut map = json!({});
        for (name, token) in self.named_specials() {
            if let Some(token) = token {
                map[format!("{name}_token")] = json!(token.content);
            }
        }
        map
    }

    fn tokenizer_config(&self, context_length: u64) -> Value {
        let mut config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": context_length,
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "clean_up_tokenization_spaces": false,
        });
        for (name, token) in self.named_specials() {
            if let Some(token) = token {
                config[format!("{name}_token")] = json!(token.content);
            }
        }
        if let Some(template) = &self.chat_template {
            config["chat_template"] = json!(template);
        }
        config
    }
}

/// A `TemplateProcessing` post-processor that wraps each sequence in BOS and/or EOS (the
/// fast tokenizer ignores `add_bos_token`, so the tokenizer itself must add them).
fn template_processing(bos: Option<&SpecialToken>, eos: Option<&SpecialToken>) -> Value {
    let wrap = |sequence: &str, type_id: u32| {
        let mut pieces = Vec::new();
        if let Some(bos) = bos {
            pieces.push(json!({"SpecialToken": {"id": bos.content, "type_id": type_id}}));
        }
        pieces.push(json!({"Sequence": {"id": sequence, "type_id": type_id}}));
        if let Some(eos) = eos {
            pieces.push(json!({"SpecialToken": {"id": eos.content, "type_id": type_id}}));
        }
        pieces
    };
    let mut special_tokens = Map::new();
    for token in bos.into_iter().chain(eos) {
        special_tokens.insert(
            token.content.clone(),
            json!({"id": token.content, "ids": [token.id], "tokens": [token.content]}),
        );
    }
    let pair = [wrap("A", 0), wrap("B", 1)].concat();
    json!({
        "type": "TemplateProcessing",
        "single": wrap("A", 0),
        "pair": pair,
        "special_tokens": special_tokens,
    })
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
    use super::*;
    use safetensors::SafeTensors;
    use tokenizers::Tokenizer;

    // ---- dequantisation of hand-built blocks -------------------------------------------------

    fn dequant(ty: GgmlType, block: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; n];
        dequantize_into(ty, block, &mut out);
        out
    }

    #[test]
    fn dequantizes_f32_f16_bf16() {
        let f32_bytes: Vec<u8> = [-1.5f32, 3.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(dequant(GgmlType::F32, &f32_bytes, 2), [-1.5, 3.25]);
        // f16 0x3C00 = 1.0, 0xC000 = -2.0, 0x3800 = 0.5, 0x7BFF = 65504 (largest finite).
        let f16_bytes = [0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38, 0xFF, 0x7B];
        assert_eq!(
            dequant(GgmlType::F16, &f16_bytes, 4),
            [1.0, -2.0, 0.5, 65504.0]
        );
        // bf16 is the top half of an f32: 0x3F80 = 1.0, 0xC040 = -3.0, 0x4049 = 3.140625.
        let bf16_bytes = [0x80, 0x3F, 0x40, 0xC0, 0x49, 0x40];
        assert_eq!(
            dequant(GgmlType::BF16, &bf16_bytes, 3),
            [1.0, -3.0, 3.140625]
        );
    }

    #[test]
    fn dequantizes_q4_0() {
        // d = 0.5 (f16 0x3800); byte j holds element j in its low nibble and element j+16 in its
        // high nibble: low = j, high = 15 - j.
        let mut block = vec![0x00, 0x38];
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequant(GgmlType::Q4_0, &block, 32);
        assert_eq!(out[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(out[3], -2.5); // (3 - 8) * 0.5
        assert_eq!(out[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(out[16], 3.5); // high nibble of byte 0 = 15: (15 - 8) * 0.5
        assert_eq!(out[20], 1.5); // high nibble of byte 4 = 11: (11 - 8) * 0.5
        assert_eq!(out[31], -4.0); // high nibble of byte 15 = 0: (0 - 8) * 0.5
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(out[16 + j], (15.0 - j as f32 - 8.0) * 0.5);
        }
    }

    #[test]
    fn dequantizes_q4_1() {
        // d = 0.25 (0x3400), m = -1.0 (0xBC00), then the same nibble layout as Q4_0.
        let mut block = vec![0x00, 0x34, 0x00, 0xBC];
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequant(GgmlType::Q4_1, &block, 32);
        assert_eq!(out[0], -1.0); // 0 * 0.25 - 1
        assert_eq!(out[5], 0.25); // 5 * 0.25 - 1
        assert_eq!(out[16], 2.75); // 15 * 0.25 - 1
        assert_eq!(out[31], -1.0); // 0 * 0.25 - 1
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 0.25 - 1.0);
            assert_eq!(out[16 + j], (15 - j) as f32 * 0.25 - 1.0);
        }
    }

    #[test]
    fn dequantizes_q8_0() {
        // d = 0.5; quant j = j - 16 as i8, except quant 0 = -128 (byte 0x80).
        let mut block = vec![0x00, 0x38];
        block.extend((0..32i32).map(|j| (j - 16) as i8 as u8));
        block[2] = 0x80;
        let out = dequant(GgmlType::Q8_0, &block, 32);
        assert_eq!(out[0], -64.0); // -128 * 0.5
        assert_eq!(out[1], -7.5); // -15 * 0.5
        assert_eq!(out[16], 0.0);
        assert_eq!(out[31], 7.5); // 15 * 0.5
        for (j, &v) in out.iter().enumerate().skip(1) {
            assert_eq!(v, (j as f32 - 16.0) * 0.5);
        }
    }

    /// Sub-block scales and mins used by the Q4_K tests, and their 12-byte packing: bytes 0..4
    /// are sc[0..4] plus the top two bits of sc[4..8] in bits 6..8, bytes 4..8 the same for the
    /// mins, bytes 8..12 the low nibbles of sc[4..8] (low) and m[4..8] (high). For example
    /// byte 0 = 1 | (37 >> 4) << 6 = 129 and byte 8 = (37 & 15) | (50 & 15) << 4 = 37.
    const Q4_K_SC: [u8; 8] = [1, 2, 3, 4, 37, 40, 50, 63];
    const Q4_K_M: [u8; 8] = [5, 6, 7, 8, 50, 33, 20, 1];
    const Q4_K_PACKED: [u8; 12] = [129, 130, 195, 196, 197, 134, 71, 8, 37, 24, 66, 31];

    #[test]
    fn unpacks_q4_k_scales() {
        for j in 0..8 {
            assert_eq!(
                q4_k_scale_min(j, &Q4_K_PACKED),
                (Q4_K_SC[j], Q4_K_M[j]),
                "sub-block {j}"
            );
        }
    }

    #[test]
    fn dequantizes_q4_k() {
        // d = 0.5 (0x3800), dmin = 0.25 (0x3400); quant byte i = (i % 16) | (15 - i % 16) << 4.
        let mut block = vec![0x00, 0x38, 0x00, 0x34];
        block.extend(Q4_K_PACKED);
        block.extend((0..128u8).map(|i| (i % 16) | ((15 - i % 16) << 4)));
        let out = dequant(GgmlType::Q4_K, &block, 256);
        // Element 0: low nibble of byte 0 = 0, sub-block 0: 0.5 * 1 * 0 - 0.25 * 5.
        assert_eq!(out[0], -1.25);
        // Element 163: 64-element chunk 2, second half -> high nibble of byte 64 + 3 = 15 - 3 = 12,
        // sub-block 5: 0.5 * 40 * 12 - 0.25 * 33 = 240 - 8.25.
        assert_eq!(out[163], 231.75);
        // Element 200: chunk 3, first half -> low nibble of byte 96 + 8 = 104 % 16 = 8,
        // sub-block 6: 0.5 * 50 * 8 - 0.25 * 20 = 200 - 5.
        assert_eq!(out[200], 195.0);
        // Element 255: high nibble of byte 127 = 15 - 15 = 0, sub-block 7: 0 - 0.25 * 1.
        assert_eq!(out[255], -0.25);
        for (e, &v) in out.iter().enumerate() {
            let byte = block[16 + (e / 64) * 32 + e % 32];
            let nibble = if e % 64 < 32 { byte & 15 } else { byte >> 4 };
            let sub = e / 32;
            assert_eq!(
                v,
                0.5 * Q4_K_SC[sub] as f32 * nibble as f32 - 0.25 * Q4_K_M[sub] as f32,
                "element {e}"
            );
        }
    }

    #[test]
    fn dequantizes_q6_k() {
        // ql[i] = i, qh[i] = 3 * i, scales[i] = i - 8, d = 0.25 (0x3400) at the end.
        let mut block: Vec<u8> = (0..128u8).collect();
        block.extend((0..64u8).map(|i| 3 * i));
        block.extend((0..16i8).map(|i| (i - 8) as u8));
        block.extend([0x00, 0x34]);
        let out = dequant(GgmlType::Q6_K, &block, 256);
        // Element 0: low nibble of ql[0] = 0, bits 0..2 of qh[0] = 0 -> q = 0 - 32; scale -8:
        // 0.25 * -8 * -32.
        assert_eq!(out[0], 64.0);
        // Element 100: half 0, quarter 3, l = 4 -> high nibble of ql[36] = 2, bits 6..8 of
        // qh[4] = 12 -> 0, q = 2 - 32 = -30; scale[100 / 16 = 6] = -2: 0.25 * -2 * -30.
        assert_eq!(out[100], 15.0);
        // Element 170: half 1, quarter 1, l = 10 -> low nibble of ql[64 + 32 + 10] = 106 & 15 = 10,
        // bits 2..4 of qh[32 + 10] = 126 -> 3, q = (10 | 3 << 4) - 32 = 26; scale[10] = 2:
        // 0.25 * 2 * 26.
        assert_eq!(out[170], 13.0);
        for (e, &v) in out.iter().enumerate() {
            let (half, quarter, l) = (e / 128, e % 128 / 32, e % 32);
            let ql = block[64 * half + 32 * (quarter % 2) + l];
            let low = if quarter < 2 { ql & 15 } else { ql >> 4 };
            let high = (block[128 + 32 * half + l] >> (2 * quarter)) & 3;
            let q = (low | (high << 4)) as i32 - 32;
            let scale = block[192 + e / 16] as i8;
            assert_eq!(v, 0.25 * scale as f32 * q as f32, "element {e}");
        }
    }

    // ---- Q/K permutation ---------------------------------------------------------------------

    /// llama.cpp's converter: `w.reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2)
    /// .reshape(rows, cols)`; output row (h, b, a) is input row (h, a, b).
    fn llama_cpp_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
        let half = rows / n_head / 2;
        let mut out = vec![0.0; w.len()];
        for h in 0..n_head {
            for b in 0..half {
                for a in 0..2 {
                    let dst = (h * half + b) * 2 + a;
                    let src = (h * 2 + a) * half + b;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

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

    // ---- a small GGUF writer -----------------------------------------------------------------

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

    struct TestTensor {
        name: String,
        dims: Vec<u64>,
        type_id: u32,
        data: Vec<u8>,
    }

    struct TestGguf {
        version: u32,
        kv: Vec<(String, GgufValue)>,
        tensors: Vec<TestTensor>,
    }

    impl TestGguf {
        fn set(&mut self, key: &str, value: GgufValue) {
            self.kv.retain(|(k, _)| k != key);
            self.kv.push((key.to_string(), value));
        }

        fn remove(&mut self, key: &str) {
            self.kv.retain(|(k, _)| k != key);
        }

        fn tensor_mut(&mut self, name: &str) -> &mut TestTensor {
            self.tensors.iter_mut().find(|t| t.name == name).unwrap()
        }

        fn bytes(&self) -> Vec<u8> {
            self.layout().0
        }

        /// The file (header, metadata, tensor infos, then each tensor's data at an aligned
        /// offset, with no padding after the last one, so every proper prefix is truncated),
        /// and where its metadata and its tensor infos end.
        fn layout(&self) -> (Vec<u8>, usize, usize) {
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

        fn write(&self, dir: &Path, name: &str) -> PathBuf {
            let path = dir.join(name);
            fs::write(&path, self.bytes()).unwrap();
            path
        }
    }

    // ---- test-side quantisers for exactly representable values --------------------------------

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

    // ---- the synthetic two-layer model -------------------------------------------------------

    const HIDDEN: usize = 32;
    const FFN: usize = 256;
    const N_HEAD: usize = 2;
    const N_KV_HEAD: usize = 1;
    const HEAD_DIM: usize = 16;
    const LAYERS: usize = 2;

    /// Byte-level vocabulary: three control tokens, one user-defined token, single characters
    /// ("Ġ" is a space, "Ċ" a newline) and the merges that build "hello", "Ġworld" and "12".
    const TOKENS: [&str; 25] = [
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
    const MERGES: [&str; 10] = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "1 2",
    ];
    const CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}";

    /// Hugging Face-layout values of every weight, chosen to be exact in their GGUF types.
    fn expected(hf_name: &str) -> (Vec<usize>, Vec<f32>) {
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
                    "input_layernorm.weight" => {
                        vector(HIDDEN, &|c| 1.0 + c as f32 * 0.125 + l as f32)
                    }
                    "post_attention_layernorm.weight" => {
                        vector(HIDDEN, &|c| 2.0 - c as f32 * 0.0625)
                    }
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
    fn tensor(gguf_name: &str, hf_name: &str, type_id: u32) -> TestTensor {
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

    fn synthetic_llama() -> TestGguf {
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
    fn opens_v2_and_v3_with_custom_alignment() {
        let dir = tempfile::tempdir().unwrap();
        for (version, alignment) in [(2, 32), (3, 64), (3, 256)] {
            let mut gguf = synthetic_llama();
            gguf.version = version;
            gguf.set("general.alignment", GgufValue::U32(alignment));
            let path = gguf.write(dir.path(), &format!("v{version}-{alignment}.gguf"));
            let file = GgufFile::open(&path).unwrap();
            assert_eq!(file.metadata()["llama.block_count"], GgufValue::U32(2));
            assert_eq!(
                file.metadata()["tokenizer.ggml.merges"],
                GgufValue::Array(
                    MERGES
                        .iter()
                        .map(|m| GgufValue::String(m.to_string()))
                        .collect()
                )
            );
            assert_eq!(file.tensors().len(), 2 + 9 * LAYERS);
            let q = &file.tensors()[3];
            assert_eq!(
                (q.name.as_str(), q.dims.as_slice(), q.ggml_type),
                ("blk.0.attn_q.weight", &[32u64, 32][..], GgmlType::Q4_0)
            );
            // The norm is F32, so its dequantised values are the written ones.
            let norm = file
                .tensors()
                .iter()
                .find(|t| t.name == "output_norm.weight")
                .unwrap();
            assert_eq!(
                file.dequantize(norm).unwrap(),
                expected("model.norm.weight").1
            );
        }
    }

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

    #[test]
    fn every_supported_pre_tokenizer_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = synthetic_llama().write(dir.path(), "tiny.gguf");
        let files = TokenizerFiles::read(&GgufFile::open(&path).unwrap()).unwrap();
        for pre in SUPPORTED_PRE_TOKENIZERS {
            let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre).unwrap();
            let mut json = files.tokenizer_json.clone();
            json["pre_tokenizer"] = pre_tokenizer;
            json["model"]["ignore_merges"] = json!(ignore_merges);
            let tokenizer: Tokenizer = json.to_string().parse().unwrap();
            let ids = tokenizer
                .encode("hello world", false)
                .unwrap()
                .get_ids()
                .to_vec();
            assert_eq!(ids, [18, 23], "pre-tokenizer {pre}");
        }
        assert!(pre_tokenizer("qwen2").is_none());
    }

    // ---- failures ----------------------------------------------------------------------------

    /// Converts `gguf`, expecting an error; returns its message.
    fn convert_err(gguf: &TestGguf) -> String {
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

    #[test]
    fn truncated_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, metadata_end, infos_end) = synthetic_llama().layout();
        let len = bytes.len();
        let mut cuts = vec![
            0,
            1,
            4,
            7,
            8,
            20,
            23,
            24,
            30,
            metadata_end - 1,
            metadata_end,
            infos_end - 1,
            infos_end,
            len - 1,
        ];
        cuts.extend((0..len).step_by(len / 50));
        for cut in cuts {
            let path = dir.path().join(format!("cut-{cut}.gguf"));
            fs::write(&path, &bytes[..cut]).unwrap();
            let err = GgufFile::open(&path).unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, GgufError::Truncated { .. }),
                "cut at {cut}: {message}"
            );
            assert!(
                message.contains(&path.display().to_string()),
                "cut at {cut}: {message}"
            );
            let region = if cut < 24 {
                "the file header"
            } else if cut < metadata_end {
                "metadata"
            } else if cut < infos_end {
                "tensor info"
            } else {
                // Cuts in the padding before the data section land here too.
                "the data of tensor"
            };
            assert!(message.contains(region), "cut at {cut}: {message}");
        }
        // Through the converter, too.
        let mut short = synthetic_llama();
        short.tensor_mut("blk.1.ffn_down.weight").data.truncate(100);
        let err = convert_err(&short);
        assert!(
            err.contains("truncated") && err.contains("blk.1.ffn_down.weight"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_type_id_is_an_error() {
        let mut gguf = synthetic_llama();
        gguf.tensor_mut("blk.0.attn_v.weight").type_id = 99;
        let err = convert_err(&gguf);
        assert!(
            err.contains("ggml type id 99") && err.contains("'blk.0.attn_v.weight'"),
            "{err}"
        );
        assert!(
            err.contains("Q4_K (id 12)") && err.contains("Q8_0 (id 8)"),
            "{err}"
        );
    }

    #[test]
    fn bad_magic_and_version_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = synthetic_llama().bytes();
        bytes[..4].copy_from_slice(b"GGML");
        let path = dir.path().join("magic.gguf");
        fs::write(&path, &bytes).unwrap();
        let err = GgufFile::open(&path).unwrap_err();
        assert!(matches!(err, GgufError::BadMagic { .. }), "{err}");
        assert!(
            err.to_string().contains("magic.gguf") && err.to_string().contains("\"GGML\""),
            "{err}"
        );

        for version in [1, 4] {
            let mut gguf = synthetic_llama();
            gguf.version = version;
            let path = gguf.write(dir.path(), "version.gguf");
            let err = GgufFile::open(&path).unwrap_err().to_string();
            assert!(
                err.contains("version.gguf") && err.contains(&format!("GGUF version {version}")),
                "{err}"
            );
        }
        let missing = dir.path().join("absent.gguf");
        let err = GgufFile::open(&missing).unwrap_err().to_string();
        assert!(err.contains("absent.gguf"), "{err}");
    }

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
