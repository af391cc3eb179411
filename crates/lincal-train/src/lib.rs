//! Training for lincal over libtorch: supervised fine-tuning ([`sft`]), reward models
//! ([`reward_model`]), PPO for decision-based and Factuality RL ([`ppo`]), AdamW and
//! learning-rate schedules ([`optim`]), run directories with checkpoints that resume exactly
//! ([`run`]), TensorBoard logs ([`tensorboard`]) and a training-throughput benchmark
//! ([`bench`]). LoRA lives in `lincal_model::lora`.

pub mod bench;
pub mod config;
pub mod data;
mod engine;
pub mod error;
pub mod optim;
pub mod ppo;
pub mod reward_model;
pub mod run;
mod setup;
pub mod sft;
pub mod tensorboard;
// GPU tests exist only in `cuda` builds: `cargo test -p lincal-train --features cuda -- --ignored`.
#[cfg(all(test, feature = "cuda"))]
mod gpu_tests;
#[cfg(test)]
mod lora_tests;
#[cfg(test)]
mod testutil;

pub use bench::{SftBench, SftBenchSettings, bench_sft};
pub use config::{Precision, REWARD_MODEL_PRESETS, RewardModelConfig, SFT_PRESETS, Schedule, SftConfig, TrainingConfig, with_overrides};
pub use data::{RewardExample, SftExample};
pub use engine::TrainSummary;
pub use error::{Result, TrainError};
pub use reward_model::{HeadInit, RewardModel, RewardModelTrainer};
pub use run::RunOptions;
pub use sft::SftTrainer;
