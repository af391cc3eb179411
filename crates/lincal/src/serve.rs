//! `lincal serve`: the model behind OpenAI's and Anthropic's HTTP APIs (see `lincal-serve`).

use anyhow::{Context, Result, bail};
use clap::Args;
use lincal_model::{CausalLm, Tokenizer};
use lincal_serve::{EngineConfig, ServeConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed at start).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The name clients ask for (default: the model directory's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Required as `Authorization: Bearer KEY` or `x-api-key: KEY` (default: $LINCAL_API_KEY;
    /// neither: no authentication).
    #[arg(long)]
    api_key: Option<String>,
    /// Sequences decoded together (decode rows of the KV cache).
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Tokens per sequence, prompt and answer (default: the model's context, at most 4096).
    #[arg(long)]
    max_context: Option<i64>,
    /// Sequences waiting for a row beyond which requests get 429 and Retry-After.
    #[arg(long, default_value_t = 1024)]
    max_queue: usize,
    /// Prompt tokens prefilled between two decode steps (longer prompts go alone).
    #[arg(long, default_value_t = 4096)]
    prefill_tokens: usize,
    /// Largest request body accepted (413 beyond).
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seconds in-flight requests may run on after SIGINT/SIGTERM before they are ended.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
    /// Decode without CUDA graphs.
    #[arg(long)]
    no_cuda_graph: bool,
    #[command(flatten)]
    device: crate::DeviceArgs,
}

/// The context when `--max-context` is not given: the model's, capped so that the default
/// cache stays small.
const DEFAULT_MAX_CONTEXT: i64 = 4096;

pub fn run(args: ServeArgs) -> Result<()> {
    if args.max_batch == 0 {
        bail!("--max-batch must be at least 1");
    }
    let (device, kind) = args.device.resolve()?;
    let mut model = CausalLm::load(&args.model, device, Some(kind))?;
    model.set_cuda_graphs(!args.no_cuda_graph);
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    tokenizer.check_model_vocab(model.config().vocab_size())?;
    let model_context = model.config().max_position_embeddings();
    let max_context = match args.max_context {
        Some(n) if n < 2 => bail!("--max-context must be at least 2 tokens"),
        Some(n) if n > model_context => bail!(
            "--max-context {n} is beyond the model's {model_context} positions (max_position_embeddings in {})",
            args.model.join("config.json").display()
        ),
        Some(n) => n,
        None => model_context.min(DEFAULT_MAX_CONTEXT),
    };
    let model_name = match args.served_model_name {
        Some(name) => name,
        None => args
            .model
            .canonicalize()
            .with_context(|| format!("reading {}", args.model.display()))?
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned()),
    };
    let api_key = args
        .api_key
        .or_else(|| std::env::var("LINCAL_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let config = ServeConfig {
        address: format!("{}:{}", args.host, args.port),
        model_name: model_name.clone(),
        api_key,
        max_body_bytes: args.max_body_bytes,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        engine: EngineConfig {
            max_batch: args.max_batch,
            max_context,
            max_queue: args.max_queue,
            prefill_tokens: args.prefill_tokens,
        },
    };
    let batch = args.max_batch;
    lincal_serve::serve(
        model,
        tokenizer,
        config,
        |address| {
            eprintln!(
                "serving {model_name:?} on http://{address}/v1 ({batch} decode rows of {max_context} tokens; Ctrl-C stops)"
            );
        },
        lincal_serve::shutdown_signal(),
    )?;
    eprintln!("stopped");
    Ok(())
}
