use lincal_model::ModelError;
use std::path::PathBuf;

/// Everything that can stop a training run. Each message names the field, file or example
/// at fault and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Dataset(#[from] lincal_data::DataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config field `{field}`: {message}")]
    Config { field: String, message: String },
    #[error("{path}: {message}")]
    RunDir { path: PathBuf, message: String },
    #[error("{set} example {index}: {message}")]
    Data {
        set: &'static str,
        index: usize,
        message: String,
    },
    #[error(
        "the {0} set is empty (examples whose prompt fills model_max_length are dropped); \
         give at least one example with a target"
    )]
    NoData(&'static str),
    #[error(
        "training diverged at step {step}: the loss is {loss}; lower the learning rate, \
         or check the data and the precision"
    )]
    Diverged { step: u64, loss: f64 },
    /// A collective of a data-parallel job failed (see [`crate::distributed`]).
    #[error("data-parallel job: {0}")]
    Collective(String),
    /// A PPO reward implemented outside this crate failed (e.g. an API reader).
    #[error("the reward could not be computed: {0}")]
    Reward(Box<dyn std::error::Error + Send + Sync>),
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        TrainError::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn run_dir(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TrainError::RunDir {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
