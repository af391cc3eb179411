//! `lincal data fetch|build|split` over the offline question sources, and `lincal prompts
//! export`.

use anyhow::{Context, Result};
use clap::Subcommand;
use clap::builder::PossibleValuesParser;
use indicatif::{ProgressBar, ProgressStyle};
use lincal_data::prompts::Templates;
use lincal_data::schema::jsonl::write_jsonl;
use lincal_data::schema::{RoleSize, split_roles};
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
    /// Split a QA JSONL by question id into disjoint roles (SFT, reader training, PPO,
    /// validation, test): deterministic for a seed, whatever the order of the file. Writes
    /// DIR/ROLE.jsonl for each role.
    Split {
        /// A QA JSONL (`lincal data build` output or the same format by hand).
        questions: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Roles and their question counts in dealing order, `NAME=N,...`; the last may be
        /// `NAME=rest`.
        #[arg(long, default_value = DEFAULT_ROLES)]
        roles: String,
        #[arg(long, default_value_t = lincal_data::schema::SPLIT_SEED)]
        seed: u64,
        /// Keep only questions whose text contains this word (case-insensitive), e.g.
        /// `capital`: a subset chosen by a property of the questions.
        #[arg(long)]
        question_contains: Option<String>,
    },
}

/// Parses `NAME=N,NAME=rest` role sizes.
pub fn parse_roles(text: &str) -> Result<Vec<RoleSize>> {
    text.split(',')
        .map(|part| {
            let (role, size) = part
                .trim()
                .split_once('=')
                .with_context(|| format!("--roles: {part:?} is not NAME=N or NAME=rest"))?;
            let questions = match size.trim() {
                "rest" => None,
                n => Some(
                    n.parse()
                        .with_context(|| format!("--roles: {part:?}: {n:?} is not a count"))?,
                ),
            };
            Ok(RoleSize {
                role: role.trim().to_string(),
                questions,
            })
        })
        .collect()
}

/// Splits `questions` (those whose text contains `question_contains`, case-insensitive, when
/// given) into `out/ROLE.jsonl` files; returns each role's path and count.
pub fn split_questions(
    questions: &Path,
    out: &Path,
    roles: &[RoleSize],
    seed: u64,
    question_contains: Option<&str>,
) -> Result<Vec<(PathBuf, usize)>> {
    let mut records = sources::read_qa_jsonl(questions)?;
    if let Some(word) = question_contains {
        // A property of the questions alone (never of a model's answers): e.g. "capital" keeps
        // questions about well-known places.
        let word = word.to_lowercase();
        records.retain(|r| r.question.to_lowercase().contains(&word));
    }
    let split = split_roles(records, roles, seed)
        .with_context(|| format!("splitting {}", questions.display()))?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    roles
        .iter()
        .map(|role| {
            let path = out.join(format!("{}.jsonl", role.role));
            let records = &split[&role.role];
            write_jsonl(&path, records)?;
            Ok((path, records.len()))
        })
        .collect()
}

/// The default roles of `lincal data split`: the reference pipeline's disjoint question sets
/// (SPEC 1), at the tiny preset's sizes.
pub const DEFAULT_ROLES: &str = "sft=200,reader=200,ppo=64,validation=32,test=120";

#[derive(Subcommand)]
pub enum PromptsCommand {
    /// Write the built-in prompt templates to DIR for editing; pass DIR to `--prompts` later.
    Export { dir: PathBuf },
}

fn source_names() -> PossibleValuesParser {
    PossibleValuesParser::new(Source::ALL.map(Source::name))
}

fn default_cache() -> PathBuf {
    crate::lincal_cache().join("sources")
}

/// Fetches `source` into `cache` with a download bar.
fn fetch(source: Source, cache: &Path) -> Result<PathBuf> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} {bar:40} {bytes}/{total_bytes} ({bytes_per_sec})")
            .expect("valid template"),
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
            if let Some(dir) = out.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let raw = fetch(source, &cache.unwrap_or_else(default_cache))?;
            let tally = sources::build(source, &raw, &out)
                .with_context(|| format!("building {source} from {}", raw.display()))?;
            println!("{source}: {tally}; wrote {}", out.display());
        }
        DataCommand::Split {
            questions,
            out,
            roles,
            seed,
            question_contains,
        } => {
            for (path, count) in split_questions(
                &questions,
                &out,
                &parse_roles(&roles)?,
                seed,
                question_contains.as_deref(),
            )? {
                println!("{count} questions: {}", path.display());
            }
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
