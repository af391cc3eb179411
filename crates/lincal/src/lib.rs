//! The commands of the `lincal` command line, as a library: `main.rs` parses arguments and
//! calls in here ([`cli`]), and the pipeline runner, integration tests and other tools call the
//! same functions.

pub mod bench;
pub mod cli;
pub mod convert;
pub mod data;
pub mod distill;
pub mod eval;
pub mod generate;
pub mod launch;
pub mod local_llm;
pub mod pipeline;
pub mod ppo;
mod progress;
pub mod select;
pub mod serve;
pub mod surrogate_reader;
pub mod train;

use anyhow::{Context, Result};
use std::path::Path;

/// Where and in which precision a command runs its models.
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// auto (the first GPU if there is one), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto (bf16 on a GPU, f32 on the CPU), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
}

impl DeviceArgs {
    pub fn resolve(&self) -> Result<(tch::Device, tch::Kind)> {
        let device = parse_device(&self.device)?;
        Ok((device, parse_kind(&self.dtype, device)?))
    }
}

/// `--device auto|cpu|cuda|cuda:N`.
pub fn parse_device(name: &str) -> Result<tch::Device> {
    Ok(match name {
        "auto" => lincal_model::default_device(),
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(index) => tch::Device::Cuda(index),
            None => anyhow::bail!("--device {other:?}: use auto, cpu, cuda or cuda:N"),
        },
    })
}

/// `--dtype auto|f32|bf16|f16`; auto is bf16 on a GPU and f32 on the CPU.
pub fn parse_kind(name: &str, device: tch::Device) -> Result<tch::Kind> {
    Ok(match name {
        "auto" if device.is_cuda() => tch::Kind::BFloat16,
        "auto" => tch::Kind::Float,
        other => lincal_model::model::kind_from_name(other)
            .with_context(|| format!("--dtype {other:?}: use auto, f32, bf16 or f16"))?,
    })
}

/// `$LINCAL_CACHE`, else `~/.cache/lincal`: where downloads and converted models are kept.
pub fn lincal_cache() -> std::path::PathBuf {
    match std::env::var_os("LINCAL_CACHE") {
        Some(dir) => dir.into(),
        None => std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/lincal"),
    }
}

/// Warns when a model directory among `models` was rebuilt by `lincal recover` and is about
/// to be fed lincal's built-in templates (`prompts` unset).
pub fn warn_if_recovered<'a>(models: impl IntoIterator<Item = &'a Path>, prompts: Option<&Path>) {
    if prompts.is_some() {
        return;
    }
    for model in models {
        if let Some(warning) = lincal_model::recover::built_in_templates_warning(model) {
            eprintln!("warning: {warning}");
        }
    }
}

/// An error and its causes on one line, as `error: {error:#}` prints them, but without a cause
/// whose text the message already holds (an error that names its OS error, with the OS error
/// as its source, would otherwise say it twice).
pub fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    let out_of_space = error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::FileTooLarge
                    | std::io::ErrorKind::QuotaExceeded
            )
        })
    });
    if out_of_space {
        message.push_str(
            "\nThe disk is full or a file size limit was reached; nothing half-written was \
             left. Free space (or raise the limit) and run the same command again: it takes \
             up from the work already saved.",
        );
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_message_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, "not valid UTF-8");
        let data = lincal_data::DataError::Read {
            path: "/data/x.jsonl".into(),
            source: io,
        };
        let error = anyhow::Error::new(data).context("reading the SFT examples");
        assert_eq!(
            error_message(&error),
            "reading the SFT examples: cannot read /data/x.jsonl: not valid UTF-8"
        );
        assert_eq!(error_message(&anyhow::anyhow!("plain")), "plain");
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let error = anyhow::Error::new(full).context("writing /runs/a/out.jsonl");
        assert!(
            error_message(&error).contains("\nThe disk is full"),
            "{}",
            error_message(&error)
        );
    }
}
