//! Safetensors checkpoints in the Hugging Face layout: `model.safetensors`, or shards listed
//! in `model.safetensors.index.json`. Files are memory-mapped and copied tensor by tensor
//! into the model's variables, so loading never holds a second full copy in memory.

use crate::error::{ModelError, Result};
use crate::fsutil::{write_atomic, write_file_atomic};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Memory-mapped safetensors files of one checkpoint, and which file holds each tensor.
pub struct SafetensorsCheckpoint {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    location: HashMap<String, usize>,
}

impl SafetensorsCheckpoint {
    /// Opens `dir/model.safetensors` or the shards named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        let names: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Checkpoint {
                    path: index.clone(),
                    message: format!("malformed JSON ({e})"),
                })?;
            let map = value
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Checkpoint {
                    path: index.clone(),
                    message: "no `weight_map` object".into(),
                })?;
            let mut shards: Vec<PathBuf> = map
                .values()
                .filter_map(|v| v.as_str())
                .map(|s| dir.join(s))
                .collect();
            shards.sort();
            shards.dedup();
            shards
        } else if dir.join(SINGLE_FILE).exists() {
            vec![dir.join(SINGLE_FILE)]
        } else if dir.join("pytorch_model.bin").exists() {
            return Err(ModelError::Checkpoint {
                path: dir.join("pytorch_model.bin"),
                message: "pickle checkpoints are not read (unsafe and slow); convert once with \
                          `model.save_pretrained(dir, safe_serialization=True)` in transformers"
                    .into(),
            });
        } else {
            return Err(ModelError::Checkpoint {
                path: dir.to_path_buf(),
                message: format!(
                    "no {SINGLE_FILE} or {INDEX_FILE} here; is this a Hugging Face model directory?"
                ),
            });
        };
        let mut files = Vec::new();
        let mut location = HashMap::new();
        for path in names {
            let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the file is opened read-only and not modified while mapped; a concurrent
            // writer would be a user error that safetensors' own bounds checks still contain.
            let mmap =
                unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let tensors = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Checkpoint {
                path: path.clone(),
                message: format!(
                    "not a valid safetensors file ({e}); it may be truncated: \
                     download or save it again"
                ),
            })?;
            for name in tensors.names() {
                location.insert(name.to_string(), files.len());
            }
            files.push((path, mmap));
        }
        Ok(SafetensorsCheckpoint { files, location })
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.location.keys()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// The file holding `name`, for error messages.
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.location.get(name).map(|&i| self.files[i].0.as_path())
    }

    /// Reads one tensor (on the CPU, in its stored dtype).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let &file = self
            .location
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.into(),
                path: self.describe(),
            })?;
        let (path, mmap) = &self.files[file];
        let tensors = SafeTensors::deserialize(mmap).expect("validated in open");
        let view = tensors.tensor(name).map_err(|e| ModelError::Checkpoint {
            path: path.clone(),
            message: format!("tensor `{name}`: {e}"),
        })?;
        let kind = kind_of(view.dtype()).ok_or_else(|| ModelError::Checkpoint {
            path: path.clone(),
            message: format!(
                "tensor `{name}` has dtype {:?}, which lincal does not load",
                view.dtype()
            ),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?)
    }

    /// Copies every variable of `vars` from the checkpoint, checking names and shapes.
    pub fn load_into(&self, vars: &HashMap<String, Tensor>) -> Result<()> {
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        for name in names {
            let mut var = vars[name].shallow_clone();
            let stored = self.tensor(name)?;
            if stored.size() != var.size() {
                return Err(ModelError::ShapeMismatch {
                    name: name.clone(),
                    path: self.path_of(name).unwrap_or(Path::new("?")).to_path_buf(),
                    expected: var.size(),
                    actual: stored.size(),
                });
            }
            tch::no_grad(|| var.f_copy_(&stored))?;
        }
        Ok(())
    }

    fn describe(&self) -> PathBuf {
        match self.files.as_slice() {
            [(path, _)] => path.clone(),
            files => files
                .first()
                .and_then(|(p, _)| p.parent())
                .map(|d| d.join(INDEX_FILE))
                .unwrap_or_default(),
        }
    }
}

/// One safetensors file with the `{"format": "pt"}` metadata transformers checks for, written
/// through a temporary name (removed if the write fails).
pub fn write_safetensors_file(path: &Path, tensors: &[(&String, &Tensor)]) -> Result<()> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let tensor = tensor.to_device(tch::Device::Cpu).contiguous();
        let dtype = dtype_of(tensor.kind()).ok_or_else(|| {
            ModelError::Invalid(format!(
                "tensor `{name}` has kind {:?}, which safetensors cannot store",
                tensor.kind()
            ))
        })?;
        let mut bytes = vec![0u8; tensor.numel() * tensor.kind().elt_size_in_bytes()];
        tensor.f_copy_data_u8(&mut bytes, tensor.numel())?;
        buffers.push((
            name.as_str(),
            dtype,
            tensor
                .size()
                .iter()
                .map(|&d| d as usize)
                .collect::<Vec<_>>(),
            bytes,
        ));
    }
    let views = buffers.iter().map(|(name, dtype, shape, bytes)| {
        safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).map(|view| (*name, view))
    });
    let views = views
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ModelError::Checkpoint {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_file_atomic(path, |tmp| {
        safetensors::serialize_to_file(views, Some(metadata), tmp).map_err(|e| match e {
            // The OS error (a full disk, a file size limit) stays a cause the CLI can explain.
            safetensors::SafeTensorError::IoError(e) => ModelError::io(path, e),
            e => ModelError::Checkpoint {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
        })
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Writes named tensors as `model.safetensors`, or as shards of at most `max_shard_bytes` with
/// an index (transformers' naming), every file through a temporary name.
pub fn save_safetensors(
    dir: &Path,
    tensors: &BTreeMap<String, Tensor>,
    max_shard_bytes: usize,
) -> Result<()> {
    let mut writer = ShardWriter::new(dir, max_shard_bytes);
    for (name, tensor) in tensors {
        writer.add(name, tensor)?;
    }
    writer.finish()
}

/// Streams tensors into shard files, holding at most one shard in host memory, so that a
/// checkpoint larger than RAM (a 7B model in f32) can be written.
pub struct ShardWriter {
    dir: PathBuf,
    max_shard_bytes: usize,
    pending: Vec<(String, Tensor)>,
    pending_bytes: usize,
    /// Temporary file and tensor names of each shard written so far.
    written: Vec<(PathBuf, Vec<String>)>,
    total_bytes: usize,
}

impl ShardWriter {
    pub fn new(dir: &Path, max_shard_bytes: usize) -> Self {
        ShardWriter {
            dir: dir.to_path_buf(),
            max_shard_bytes,
            pending: Vec::new(),
            pending_bytes: 0,
            written: Vec::new(),
            total_bytes: 0,
        }
    }

    pub fn add(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        let bytes = tensor.numel() * tensor.kind().elt_size_in_bytes();
        if self.pending_bytes > 0 && self.pending_bytes + bytes > self.max_shard_bytes {
            self.flush()?;
        }
        self.pending
            .push((name.to_string(), tensor.to_device(tch::Device::Cpu)));
        self.pending_bytes += bytes;
        self.total_bytes += bytes;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let tmp = self
            .dir
            .join(format!("shard-{}.safetensors.tmp", self.written.len()));
        let refs: Vec<(&String, &Tensor)> = self.pending.iter().map(|(n, t)| (n, t)).collect();
        write_safetensors_file(&tmp, &refs)?;
        self.written
            .push((tmp, self.pending.drain(..).map(|(n, _)| n).collect()));
        self.pending_bytes = 0;
        Ok(())
    }

    /// Renames the shards to their final names and writes the index (for several shards).
    pub fn finish(mut self) -> Result<()> {
        if !self.pending.is_empty() || self.written.is_empty() {
            self.flush()?;
        }
        let count = self.written.len();
        let mut weight_map = BTreeMap::new();
        for (i, (tmp, names)) in self.written.iter().enumerate() {
            let file_name = if count == 1 {
                SINGLE_FILE.to_string()
            } else {
                format!("model-{:05}-of-{count:05}.safetensors", i + 1)
            };
            let path = self.dir.join(&file_name);
            std::fs::rename(tmp, &path).map_err(|e| ModelError::io(&path, e))?;
            for name in names {
                weight_map.insert(name.clone(), file_name.clone());
            }
        }
        if count > 1 {
            let index = serde_json::json!({
                "metadata": { "total_size": self.total_bytes },
                "weight_map": weight_map,
            });
            write_atomic(
                &self.dir.join(INDEX_FILE),
                serde_json::to_string_pretty(&index)
                    .expect("json")
                    .as_bytes(),
            )?;
        }
        Ok(())
    }
}

impl Drop for ShardWriter {
    /// A writer dropped before `finish` completed (a failed write, a full disk) removes the
    /// shards it wrote; renamed shards are gone from their temporary names already.
    fn drop(&mut self) {
        for (tmp, _) in &self.written {
            let _ = std::fs::remove_file(tmp);
        }
    }
}
