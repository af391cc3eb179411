//! `lincal generate`: one prompt streamed to the terminal, or a JSONL file of prompts written
//! as JSONL in batches, resumable (finished lines are kept in `OUT.partial` and skipped).

use anyhow::{Context, Result, bail};
use clap::Args;
use lincal_model::{CausalLm, ChatMessage, SamplingParams, Tokenizer, generate_text};
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
    let params = SamplingParams { temperature: args.temperature, top_p: args.top_p, top_k: args.top_k, max_new_tokens: args.max_new_tokens, stop: args.stop.clone() };
    params.validate()?;
    match (&args.prompt, &args.input) {
        (Some(prompt), _) => stream_one(&model, &tokenizer, &render(&tokenizer, &[ChatMessage::new("user", prompt)], prompt, args.chat)?, args.chat, args.seed, &params),
        (None, Some(input)) => {
            let output = args.output.clone().unwrap_or_else(|| input.with_extension("generations.jsonl"));
            generate_file(&model, &tokenizer, input, &output, &params, args.chat, args.batch_size, args.seed)
        }
        (None, None) => bail!("give --prompt TEXT or --input FILE.jsonl"),
    }
}

fn render(tokenizer: &Tokenizer, messages: &[ChatMessage], plain: &str, chat: bool) -> Result<String> {
    Ok(if chat { tokenizer.apply_chat_template(messages, true)? } else { plain.to_string() })
}

/// Encodes a rendered prompt. Chat templates already contain any BOS text, so special tokens
/// are added only to plain prompts.
fn encode(tokenizer: &Tokenizer, text: &str, chat: bool) -> Result<Vec<i64>> {
    Ok(tokenizer.encode(text, !chat)?)
}

fn stream_one(model: &CausalLm, tokenizer: &Tokenizer, prompt: &str, chat: bool, seed: u64, params: &SamplingParams) -> Result<()> {
    let ids = encode(tokenizer, prompt, chat)?;
    let mut tokens = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    let eos = tokenizer.eos_token_ids();
    let mut on_token = |_row: usize, id: i64| {
        if eos.contains(&id) {
            return;
        }
        tokens.push(id);
        // Decode the whole answer and print what is new: a token can complete a multi-byte
        // character started by the previous one.
        if let Ok(text) = tokenizer.decode(&tokens, true)
            && text.len() > printed
            && text.is_char_boundary(printed)
            && !text.ends_with('\u{FFFD}')
        {
            let _ = write!(stdout, "{}", &text[printed..]);
            let _ = stdout.flush();
            printed = text.len();
        }
    };
    let generation = generate_text(model, tokenizer, &[ids], &[seed], params, Some(&mut on_token))?.remove(0);
    // The stream may have shown text past a stop string; finish the line with the final cut.
    if generation.text.len() > printed && generation.text.is_char_boundary(printed) {
        print!("{}", &generation.text[printed..]);
    }
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
fn read_inputs(path: &Path, tokenizer: &Tokenizer, chat: bool, first_seed: u64) -> Result<Vec<InputRow>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut rows = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), index + 1);
        let value: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("{}: not valid JSON", at()))?;
        let serde_json::Value::Object(fields) = value else { bail!("{}: each line must be a JSON object", at()) };
        let prompt = match (fields.get("prompt"), fields.get("messages")) {
            (Some(serde_json::Value::String(p)), _) => render(tokenizer, &[ChatMessage::new("user", p)], p, chat).with_context(at)?,
            (_, Some(messages)) => {
                let messages: Vec<ChatMessage> = serde_json::from_value::<Vec<serde_json::Map<String, serde_json::Value>>>(messages.clone())
                    .ok()
                    .and_then(|list| list.iter().map(|m| Some(ChatMessage::new(m.get("role")?.as_str()?, m.get("content")?.as_str()?))).collect())
                    .with_context(|| format!("{}: `messages` must be a list of {{\"role\", \"content\"}} strings", at()))?;
                tokenizer.apply_chat_template(&messages, true).with_context(at)?
            }
            _ => bail!("{}: needs a `prompt` string or a `messages` list", at()),
        };
        let seed = match fields.get("seed") {
            None => first_seed.wrapping_add(rows.len() as u64),
            Some(value) => value.as_u64().with_context(|| format!("{}: `seed` must be a non-negative integer, got {value}", at()))?,
        };
        rows.push(InputRow { fields, prompt, seed });
    }
    Ok(rows)
}

fn generate_file(model: &CausalLm, tokenizer: &Tokenizer, input: &Path, output: &Path, params: &SamplingParams, chat: bool, batch_size: usize, seed: u64) -> Result<()> {
    let rows = read_inputs(input, tokenizer, chat, seed)?;
    let partial = output.with_extension("jsonl.partial");
    // Lines finished by an earlier, interrupted run are kept; a torn last line is dropped.
    let done_lines: Vec<String> = match std::fs::read_to_string(&partial) {
        Ok(text) => text.lines().filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()).map(str::to_string).collect(),
        Err(_) => Vec::new(),
    };
    // Each row samples from its own seed, so a resume may start mid-batch.
    let batch_size = batch_size.max(1);
    let done = done_lines.len().min(rows.len());
    let mut writer = std::io::BufWriter::new(std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?);
    for line in &done_lines[..done] {
        writeln!(writer, "{line}")?;
    }
    writer.flush()?;
    let progress = indicatif::ProgressBar::new(rows.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} prompts [{elapsed_precise} < {eta_precise}] {msg}").expect("valid template"),
    );
    progress.set_position(done as u64);
    let started = std::time::Instant::now();
    let mut new_tokens = 0usize;
    for batch in rows[done..].chunks(batch_size) {
        let prompts: Vec<Vec<i64>> = batch.iter().map(|row| encode(tokenizer, &row.prompt, chat)).collect::<Result<_>>()?;
        let seeds: Vec<u64> = batch.iter().map(|row| row.seed).collect();
        let generations = generate_text(model, tokenizer, &prompts, &seeds, params, None)?;
        for (row, generation) in batch.iter().zip(generations) {
            new_tokens += generation.tokens.len();
            let mut record = row.fields.clone();
            record.insert("completion".into(), generation.text.into());
            record.insert("finish_reason".into(), serde_json::to_value(generation.finish_reason)?);
            record.insert("num_tokens".into(), generation.tokens.len().into());
            writeln!(writer, "{}", serde_json::Value::Object(record))?;
        }
        writer.flush()?;
        progress.inc(batch.len() as u64);
        progress.set_message(format!("{:.0} tokens/s", new_tokens as f64 / started.elapsed().as_secs_f64()));
    }
    drop(writer);
    std::fs::rename(&partial, output).with_context(|| format!("renaming {} to {}", partial.display(), output.display()))?;
    progress.finish_with_message(format!("wrote {}", output.display()));
    Ok(())
}
