//! Reading a llama.cpp GGUF file (format v2/v3): the header, the typed metadata values and the
//! tensor infos, behind a memory map that `GgufFile::open` validates up front.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::GgufError;
use crate::quant::{GgmlType, dequantize_into};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;
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
                "tensor '{}' has rows of {row} elements, \
                 not a multiple of the {} block size {block_elems}",
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

    pub(crate) fn malformed(&self, what: String) -> GgufError {
        GgufError::Malformed {
            path: self.path.clone(),
            what,
        }
    }

    pub(crate) fn missing(&self, key: &str) -> GgufError {
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

    pub(crate) fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.optional(key, "a non-negative integer", GgufValue::as_u64)
    }

    pub(crate) fn req_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.opt_u64(key)?.ok_or_else(|| self.missing(key))
    }

    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.optional(key, "a float", GgufValue::as_f64)
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.optional(key, "a string", GgufValue::as_str)
    }

    pub(crate) fn req_str(&self, key: &str) -> Result<&str, GgufError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.optional(key, "a bool", GgufValue::as_bool)
    }

    pub(crate) fn opt_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        self.optional(key, "an array of strings", |v| match v {
            GgufValue::Array(items) => items.iter().map(GgufValue::as_str).collect(),
            _ => None,
        })
    }

    pub(crate) fn opt_int_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::test_gguf::{LAYERS, MERGES, convert_err, expected, synthetic_llama};

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
}
