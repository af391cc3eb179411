//! `lincal generate`: one prompt streamed to the terminal, or a JSONL file of prompts written
//! as JSONL in batches. A file job is resumable: finished lines are appended to `OUT.partial`
//! and kept, and the stage manifest `OUT.manifest.json` records the input's sha256 and the
//! settings, so that only the same job takes up an interrupted one.

use crate::progress::ProgressDisplay;
use anyhow::{Context, Result, bail};
use clap::Args;
use lincal_data::artifact::{InputFile, Manifest, timestamp};
use lincal_data::lock::OutputLock;
use lincal_model::{CausalLm, ChatTurn, SamplingParams, TextStream, Tokenizer, generate_text};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct GenerateArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// A single prompt; the answer streams to standard output.
    #[arg(long, conflicts_with = "input", required_unless_present = "input")]
    prompt: Option<String>,
    /// JSONL with a `prompt` string (or a `messages` list of {role, content}) per line.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where to write results for --input (default: INPUT with `.generations.jsonl`).
    #[arg(long, requires = "input")]
    output: Option<PathBuf>,
    /// Wrap prompts in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    top_k: i64,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: i64,
    /// Row `i` of an input file samples with seed `SEED + i`, unless its line has a `seed`.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop generating a row once its text contains this (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[command(flatten)]
    device: crate::DeviceArgs,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let (device, kind) = args.device.resolve()?;
    let model = CausalLm::load(&args.model, device, Some(kind))?;
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    tokenizer.check_model_vocab(model.config().vocab_size())?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        max_new_tokens: args.max_new_tokens,
        stop: args.stop.clone(),
    };
    params.validate()?;
    match (&args.prompt, &args.input) {
        (Some(prompt), _) => stream_one(
            &model,
            &tokenizer,
            &render(
                &tokenizer,
                &[ChatTurn::new("user", prompt)],
                prompt,
                args.chat,
            )?,
            args.chat,
            args.seed,
            &params,
        ),
        (None, Some(input)) => {
            let output = args
                .output
                .clone()
                .unwrap_or_else(|| input.with_extension("generations.jsonl"));
            let job = FileJob {
                model_dir: &args.model,
                input,
                output: &output,
                params: &params,
                chat: args.chat,
                seed: args.seed,
                batch_size: args.batch_size,
            };
            generate_file(&model, &tokenizer, &job)
        }
        (None, None) => bail!("give --prompt TEXT or --input FILE.jsonl"),
    }
}

fn render(tokenizer: &Tokenizer, messages: &[ChatTurn], plain: &str, chat: bool) -> Result<String> {
    Ok(if chat {
        tokenizer.apply_chat_template(messages, true)?
    } else {
        plain.to_string()
    })
}

/// Encodes a rendered prompt. Chat templates already contain any BOS text, so special tokens
/// are added only to plain prompts.
fn encode(tokenizer: &Tokenizer, text: &str, chat: bool) -> Result<Vec<i64>> {
    Ok(tokenizer.encode(text, !chat)?)
}

fn stream_one(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompt: &str,
    chat: bool,
    seed: u64,
    params: &SamplingParams,
) -> Result<()> {
    let ids = encode(tokenizer, prompt, chat)?;
    let mut text = TextStream::new(&params.stop);
    let mut stdout = std::io::stdout();
    let eos = tokenizer.eos_token_ids();
    let mut on_token = |_row: usize, id: i64| {
        if eos.contains(&id) {
            return;
        }
        if let Ok(piece) = text.push(tokenizer, id) {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
    };
    generate_text(
        model,
        tokenizer,
        &[ids],
        &[seed],
        params,
        Some(&mut on_token),
    )?;
    print!("{}", text.finish(tokenizer)?);
    println!();
    Ok(())
}

struct InputRow {
    fields: serde_json::Map<String, serde_json::Value>,
    prompt: String,
    seed: u64,
}

/// Reads the prompts of `path`; row `i` gets seed `first_seed + i` unless its line has a
/// `seed` of its own.
fn read_inputs(
    path: &Path,
    tokenizer: &Tokenizer,
    chat: bool,
    first_seed: u64,
) -> Result<Vec<InputRow>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut rows = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), index + 1);
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}: not valid JSON", at()))?;
        let serde_json::Value::Object(fields) = value else {
            bail!("{}: each line must be a JSON object", at())
        };
        let prompt = match (fields.get("prompt"), fields.get("messages")) {
            (Some(serde_json::Value::String(p)), _) => {
                render(tokenizer, &[ChatTurn::new("user", p)], p, chat).with_context(at)?
            }
            (_, Some(messages)) => {
                let messages: Vec<ChatTurn> = serde_json::from_value::<
                    Vec<serde_json::Map<String, serde_json::Value>>,
                >(messages.clone())
                .ok()
                .and_then(|list| {
                    list.iter()
                        .map(|m| {
                            Some(ChatTurn::new(
                                m.get("role")?.as_str()?,
                                m.get("content")?.as_str()?,
                            ))
                        })
                        .collect()
                })
                .with_context(|| {
                    format!(
                        "{}: `messages` must be a list of {{\"role\", \"content\"}} strings",
                        at()
                    )
                })?;
                tokenizer
                    .apply_chat_template(&messages, true)
                    .with_context(at)?
            }
            _ => bail!("{}: needs a `prompt` string or a `messages` list", at()),
        };
        let seed = match fields.get("seed") {
            None => first_seed.wrapping_add(rows.len() as u64),
            Some(value) => value.as_u64().with_context(|| {
                format!(
                    "{}: `seed` must be a non-negative integer, got {value}",
                    at()
                )
            })?,
        };
        rows.push(InputRow {
            fields,
            prompt,
            seed,
        });
    }
    Ok(rows)
}

/// A `generate --input` job.
struct FileJob<'a> {
    /// The model's directory, recorded in the manifest.
    model_dir: &'a Path,
    input: &'a Path,
    output: &'a Path,
    params: &'a SamplingParams,
    chat: bool,
    /// Row `i` samples with seed `seed + i` unless its line has a `seed`.
    seed: u64,
    /// Rows per generation call. Each row samples from its own seed, so the batch size does
    /// not decide the output and a resume may use another.
    batch_size: usize,
}

impl FileJob<'_> {
    /// The stage manifest of the job: the input's hash, the model and every setting that
    /// decides the output.
    fn manifest(&self) -> Result<Manifest> {
        let p = self.params;
        let config = serde_json::json!({
            "chat": self.chat,
            "seed": self.seed,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k,
            "max_new_tokens": p.max_new_tokens,
            "stop": p.stop,
        });
        let input = InputFile::hash(self.input)?;
        Ok(Manifest {
            base_model: Some(self.model_dir.to_path_buf()),
            ..Manifest::new("generate", config, vec![input])
        })
    }
}

/// `output` with `suffix` appended to its file name.
fn beside(output: &Path, suffix: &str) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn generate_file(model: &CausalLm, tokenizer: &Tokenizer, job: &FileJob) -> Result<()> {
    // Two runs on one output would append to the same partial file.
    let lock = OutputLock::file(job.output)?;
    if let Some(warning) = lock.takeover_warning() {
        eprintln!("{warning}");
    }
    let rows = read_inputs(job.input, tokenizer, job.chat, job.seed)?;
    let partial = beside(job.output, ".partial");
    let manifest_path = beside(job.output, ".manifest.json");
    let mut manifest = job.manifest()?;
    let done = if partial.exists() {
        take_up(&partial, &manifest_path, &mut manifest, rows.len())?
    } else {
        0
    };
    manifest.write_file(&manifest_path)?;
    // Each row samples from its own seed, so a resume may start mid-batch.
    let batch_size = job.batch_size.max(1);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .with_context(|| format!("opening {}", partial.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let progress = ProgressDisplay::new(
        job.output.display().to_string(),
        "prompt",
        rows.len() as u64,
        done as u64,
        "{bar:40} {pos}/{len} prompts [{elapsed_precise} < {eta_precise}] {msg}",
    );
    let started = std::time::Instant::now();
    let mut new_tokens = 0usize;
    for batch in rows[done..].chunks(batch_size) {
        let prompts: Vec<Vec<i64>> = batch
            .iter()
            .map(|row| encode(tokenizer, &row.prompt, job.chat))
            .collect::<Result<_>>()?;
        let seeds: Vec<u64> = batch.iter().map(|row| row.seed).collect();
        let generations = generate_text(model, tokenizer, &prompts, &seeds, job.params, None)?;
        for (row, generation) in batch.iter().zip(generations) {
            new_tokens += generation.tokens.len();
            let mut record = row.fields.clone();
            record.insert("completion".into(), generation.text.into());
            record.insert(
                "finish_reason".into(),
                serde_json::to_value(generation.finish_reason)?,
            );
            record.insert("num_tokens".into(), generation.tokens.len().into());
            writeln!(writer, "{}", serde_json::Value::Object(record))
                .with_context(|| format!("writing {}", partial.display()))?;
        }
        writer
            .flush()
            .with_context(|| format!("writing {}", partial.display()))?;
        progress.set_message(format!(
            "{:.0} tokens/s",
            new_tokens as f64 / started.elapsed().as_secs_f64()
        ));
        progress.inc(batch.len() as u64);
    }
    drop(writer);
    std::fs::rename(&partial, job.output)
        .with_context(|| format!("renaming {} to {}", partial.display(), job.output.display()))?;
    manifest.finished = Some(timestamp());
    manifest.counts.insert("rows".into(), rows.len() as u64);
    manifest.outputs = job
        .output
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .into_iter()
        .collect();
    manifest.write_file(&manifest_path)?;
    progress.finish_with_message(format!("wrote {}", job.output.display()));
    Ok(())
}

/// Takes up the rows an interrupted run left in `partial`: refuses unless its manifest (at
/// `manifest_path`) has the same input and settings as `manifest`, which then records the
/// resume; cuts a last line torn by the kill (finished lines stay as written) and returns
/// how many rows are done.
fn take_up(
    partial: &Path,
    manifest_path: &Path,
    manifest: &mut Manifest,
    rows: usize,
) -> Result<usize> {
    let start_over = format!(
        "delete {} (or give another --output) to start over",
        partial.display()
    );
    if !manifest_path.exists() {
        bail!(
            "{} holds rows of an interrupted run, but {} that records its input and settings is \
             missing; {start_over}",
            partial.display(),
            manifest_path.display()
        );
    }
    let stored = Manifest::read_file(manifest_path)?;
    if !stored.same_run(manifest) {
        bail!(
            "{} holds rows of an interrupted run that does not match this one: {}; \
             run with the same input and settings to finish it, or {start_over}",
            partial.display(),
            stored.difference(manifest)
        );
    }
    manifest.started = stored.started;
    manifest.resumed = stored.resumed;
    manifest.resumed.push(timestamp());
    let bytes = std::fs::read(partial).with_context(|| format!("reading {}", partial.display()))?;
    let intact = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines: Vec<&[u8]> = bytes[..intact]
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .collect();
    for (index, line) in lines.iter().enumerate() {
        serde_json::from_slice::<serde_json::Value>(line).with_context(|| {
            format!(
                "{}:{}: not a finished row; the file is damaged: {start_over}",
                partial.display(),
                index + 1
            )
        })?;
    }
    if lines.len() > rows {
        bail!(
            "{} holds {} rows, but the input has only {rows}; the file is damaged: {start_over}",
            partial.display(),
            lines.len()
        );
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(partial)
        .with_context(|| format!("opening {}", partial.display()))?;
    file.set_len(intact as u64)
        .with_context(|| format!("cutting the torn last line of {}", partial.display()))?;
    Ok(lines.len())
}
