use std::path::PathBuf;

/// Everything that can go wrong loading, running or saving a model. Each message names the
/// file (or tensor, or field) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid model config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(
        "tensor `{name}` is missing from {path}; the checkpoint does not match this architecture \
         (check config.json or re-export the model)"
    )]
    MissingTensor { name: String, path: PathBuf },
    #[error(
        "tensor `{name}` in {path} has shape {actual:?}, but config.json implies {expected:?}; \
         the config and the weights disagree"
    )]
    ShapeMismatch {
        name: String,
        path: PathBuf,
        expected: Vec<i64>,
        actual: Vec<i64>,
    },
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
