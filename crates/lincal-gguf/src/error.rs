//! The error type of GGUF import.

use std::io;
use std::path::PathBuf;

use crate::quant::GgmlType;
use crate::tokenizer::SUPPORTED_PRE_TOKENIZERS;

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
    #[error("{}: {what}, which this importer cannot convert yet; extend lincal-gguf's \
        convert.rs or convert the original Hugging Face checkpoint instead", path.display())]
    UnsupportedFeature { path: PathBuf, what: String },
    #[error("{}: tokenizer model '{model}' (tokenizer.ggml.model) is not supported yet, only \
        'gpt2' (byte-level BPE) is; take tokenizer.json from the original Hugging Face \
        repository instead", path.display())]
    UnsupportedTokenizer { path: PathBuf, model: String },
    #[error("{}: pre-tokenizer '{pre}' (tokenizer.ggml.pre) is not supported (supported: \
        {supported}); add its rules to lincal-gguf's tokenizer.rs or take tokenizer.json from the \
        original Hugging Face repository", path.display(),
        supported = SUPPORTED_PRE_TOKENIZERS.join(", "))]
    UnsupportedPreTokenizer { path: PathBuf, pre: String },
    #[error("{}: tensor '{tensor}' has no Hugging Face Llama equivalent (known: token_embd, \
        output_norm, output, blk.N.{{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, \
        ffn_gate, ffn_up, ffn_down}} with N below llama.block_count); extend the name mapping \
        in lincal-gguf's convert.rs", path.display())]
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
