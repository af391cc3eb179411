//! `lincal data fetch|build` over the offline question sources, and `lincal prompts export`.

use anyhow::{Context, Result};
use clap::Subcommand;
use clap::builder::PossibleValuesParser;
use indicatif::{ProgressBar, ProgressStyle};
use lincal_data::prompts::Templates;
use lincal_data::sources::{self, Source};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Download a source's pinned package into the cache (once; its sha256 is checked).
    Fetch {
        #[arg(value_parser = source_names())]
        name: String,
        /// Where downloads are kept; default $LINCAL_CACHE/sources (~/.cache/lincal/sources).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Build a source's JSONL: questions `{id, question, answer, aliases, source}`, or
    /// knowledge `{id, title, text}` for wordnet-people. Fetches the package first if needed.
    Build {
        #[arg(value_parser = source_names())]
        name: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        cache: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum PromptsCommand {
    /// Write the built-in prompt templates to DIR for editing; pass DIR to `--prompts` later.
    Export { dir: PathBuf },
}

fn source_names() -> PossibleValuesParser {
    PossibleValuesParser::new(Source::ALL.map(Source::name))
}

fn default_cache() -> PathBuf {
    let root = match std::env::var_os("LINCAL_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/lincal"),
    };
    root.join("sources")
}

/// Fetches `source` into `cache` with a download bar.
fn fetch(source: Source, cache: &Path) -> Result<PathBuf> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} {bar:40} {bytes}/{total_bytes} ({bytes_per_sec})").expect("valid template"),
    );
    let path = sources::fetch(source, cache, &mut |progress| {
        bar.set_message(progress.file_name.to_string());
        if let Some(total) = progress.total {
            bar.set_length(total);
        }
        bar.set_position(progress.downloaded);
    })
    .with_context(|| format!("fetching {source}"))?;
    bar.finish_and_clear();
    Ok(path)
}

pub fn run_data(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Fetch { name, cache } => {
            let source: Source = name.parse()?;
            let path = fetch(source, &cache.unwrap_or_else(default_cache))?;
            println!("{source}: {}", path.display());
        }
        DataCommand::Build { name, out, cache } => {
            let source: Source = name.parse()?;
            let raw = fetch(source, &cache.unwrap_or_else(default_cache))?;
            let tally = sources::build(source, &raw, &out).with_context(|| format!("building {source} from {}", raw.display()))?;
            println!("{source}: {tally}; wrote {}", out.display());
        }
    }
    Ok(())
}

pub fn run_prompts(command: PromptsCommand) -> Result<()> {
    match command {
        PromptsCommand::Export { dir } => {
            let written = Templates::export_builtin(&dir)?;
            println!("wrote {} templates to {}", written.len(), dir.display());
        }
    }
    Ok(())
}
