//! Training for lincal over libtorch: supervised fine-tuning ([`sft`]), reward models
//! ([`reward_model`], scoring with [`scorer`]), PPO for decision-based and Factuality RL
//! ([`ppo`]), AdamW and learning-rate schedules ([`optim`]), and run directories
//! ([`run`]) with checkpoints that resume exactly, metrics and TensorBoard logs
//! ([`tensorboard`]). Every trainer runs through one lifecycle (open or resume the run, step,
//! checkpoint, finish with `final/`); SFT and reward models share one training loop on top of
//! it. Also training-throughput benchmarks ([`bench`], [`ppo::bench`]). LoRA lives in
//! `lincal_model::lora`.

pub mod bench;
pub mod config;
pub mod cross_entropy;
pub mod data;
pub mod distributed;
pub mod error;
pub mod grpo;
pub mod memory;
pub mod optim;
pub mod ppo;
pub mod progress;
pub mod reward_model;
pub mod run;
pub mod scorer;
mod setup;
pub mod sft;
pub mod tensorboard;
mod train_loop;
mod training_run;
// GPU tests exist only in `cuda` builds: `cargo test -p lincal-train --features cuda -- --ignored`.
#[cfg(test)]
mod golden_tests;
#[cfg(all(test, feature = "cuda"))]
mod gpu_tests;
#[cfg(test)]
mod lora_tests;
#[cfg(test)]
mod resume_tests;
#[cfg(test)]
mod testutil;

pub use bench::{SftBench, SftBenchSettings, bench_sft};
pub use config::{
    Precision, REWARD_MODEL_PRESETS, RewardModelConfig, SFT_PRESETS, Schedule, SftConfig,
    TrainingConfig, with_overrides,
};
pub use data::{RewardExample, SftExample};
pub use error::{Result, TrainError};
pub use reward_model::{BatchLimits, HeadInit, RewardModel, RewardModelTrainer};
pub use run::RunOptions;
pub use scorer::{Scorer, sigmoid};
pub use sft::SftTrainer;
pub use training_run::TrainSummary;
