//! `lincal bench ...`: speed measurements that print numbers (never timed tests).

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use lincal_model::generate::GeneratedBatch;
use lincal_model::trace::Trace;
use lincal_model::{BatchRequest, CausalLm, SamplingParams, generate_batch};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;
use tch::Tensor;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Writes the f32 logits of a forward pass over token ids (left-padded rows) to a
    /// safetensors file, for parity checks against transformers.
    Logits {
        #[arg(long)]
        model: PathBuf,
        /// JSON list of lists of token ids.
        #[arg(long)]
        ids: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        device: crate::DeviceArgs,
    },
    /// Training throughput: timed SFT steps (forward, backward, clipping, AdamW) on random
    /// tokens, as `lincal sft` runs them.
    Sft {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 1024)]
        seq_len: usize,
        /// Timed steps, after the warm-up ones.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[command(flatten)]
        device: crate::DeviceArgs,
        #[command(flatten)]
        record: RecordArgs,
        #[command(flatten)]
        trace: TraceArgs,
        /// Recompute each layer's activations in the backward pass
        /// (`training.gradient_checkpointing`).
        #[arg(long)]
        gradient_checkpointing: bool,
        /// With --gradient-checkpointing, recompute only the first N decoder layers and keep
        /// the activations of the rest (`training.recomputed_layers`).
        #[arg(long, value_name = "N", requires = "gradient_checkpointing")]
        recomputed_layers: Option<usize>,
        /// Keep weights, gradients and AdamW moments in the model's precision, with no f32
        /// master weights (`training.precision = "pure_bf16"`).
        #[arg(long)]
        no_master_weights: bool,
    },
    /// One PPO step at the reference geometry (512 rollouts, 128 + 300 tokens by default),
    /// timed by part: generation, scoring (the reward, then the policy, reference and value
    /// forward passes) and the update. Every model of the run is made from --model, the
    /// answer extractor from --extractor when it is given.
    Ppo {
        #[command(flatten)]
        models: RlBenchModels,
        /// The run's config: a preset (`lc_ppo`, `factuality_ppo`) or TOML file, with overrides
        /// such as `--set generation_batch_size=128`.
        #[command(flatten)]
        config: crate::train::ConfigArgs,
        /// Untimed PPO steps before the timed one.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value = "auto")]
        device: String,
        #[command(flatten)]
        record: RecordArgs,
        #[command(flatten)]
        trace: TraceArgs,
    },
    /// One GRPO step at the LC geometry (64 prompts × 8 responses = 512 rollouts, 128 + 300
    /// tokens by default), timed by part like `bench ppo`, on the same models but without a
    /// value model.
    Grpo {
        /// As for `bench ppo`, without a value model.
        #[command(flatten)]
        models: RlBenchModels,
        /// The run's config: a preset (`lc_grpo`, `factuality_grpo`) or TOML file.
        #[command(flatten)]
        config: crate::train::ConfigArgs,
        /// Untimed steps before the timed one.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value = "auto")]
        device: String,
        #[command(flatten)]
        record: RecordArgs,
        #[command(flatten)]
        trace: TraceArgs,
    },
    /// `lincal serve` under load: an in-process server and, for each client count, that many
    /// concurrent streaming clients sending random prompts; prints aggregate tokens/s and the
    /// time to first token and latency (p50, p99).
    Serve {
        #[arg(long)]
        model: PathBuf,
        /// Concurrent clients to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        clients: Vec<usize>,
        /// Requests each client sends in turn.
        #[arg(long, default_value_t = 2)]
        requests: usize,
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        #[arg(long, default_value_t = 300)]
        max_tokens: i64,
        #[arg(long, default_value_t = 0.7)]
        temperature: f64,
        /// The server's decode rows.
        #[arg(long, default_value_t = 256)]
        max_batch: usize,
        #[command(flatten)]
        device: crate::DeviceArgs,
        #[command(flatten)]
        record: RecordArgs,
    },
    /// Batched sampling throughput: random prompts, every row runs to --new-tokens (no EOS).
    Generate {
        #[arg(long)]
        model: PathBuf,
        /// Batch sizes to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "64,256")]
        batch: Vec<usize>,
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        #[arg(long, default_value_t = 300)]
        new_tokens: i64,
        #[arg(long, default_value_t = 0.7)]
        temperature: f64,
        /// Nucleus sampling (1.0: off), to measure its cost per step.
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Top-k sampling (0: off).
        #[arg(long, default_value_t = 0)]
        top_k: i64,
        /// Stop strings (repeatable), looked for in each row's decoded text as `lincal
        /// generate` does; needs the tokenizer in --model. A string random text never holds
        /// measures the cost of looking.
        #[arg(long)]
        stop: Vec<String>,
        #[command(flatten)]
        device: crate::DeviceArgs,
        #[command(flatten)]
        record: RecordArgs,
        #[command(flatten)]
        trace: TraceArgs,
        /// Decode eagerly instead of replaying CUDA graphs (for comparison).
        #[arg(long)]
        no_cuda_graph: bool,
        /// Also check the first 8 rows against a full forward pass over prompt and output: the
        /// largest and mean gap between the log-probs decoding reported and the recomputed ones.
        #[arg(long)]
        verify: bool,
    },
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Serve {
            model,
            clients,
            requests,
            prompt_len,
            max_tokens,
            temperature,
            max_batch,
            device,
            record,
        } => {
            let (device, kind) = device.resolve()?;
            let lm = CausalLm::load(&model, device, Some(kind))?;
            let tokenizer = lincal_model::Tokenizer::from_dir(&model)?;
            let vocab = lm.config().vocab_size().min(tokenizer.vocab_size() as i64);
            let config = lincal_serve::ServeConfig {
                address: "127.0.0.1:0".into(),
                model_name: "bench".into(),
                api_key: None,
                max_body_bytes: 16 << 20,
                shutdown_timeout: std::time::Duration::from_secs(1),
                engine: lincal_serve::EngineConfig {
                    max_batch,
                    max_context: prompt_len as i64 + max_tokens,
                    max_queue: clients.iter().max().copied().unwrap_or(1) * 2,
                    prefill_tokens: 8192,
                },
            };
            let mut server = lincal_serve::BackgroundServer::start(lm, tokenizer, config)?;
            let base = server.base_url();
            let runtime = tokio::runtime::Runtime::new()?;
            for &count in &clients {
                let settings = lincal_serve::load::LoadSettings {
                    model: "bench".into(),
                    clients: count,
                    requests_per_client: requests,
                    prompt_len,
                    max_tokens,
                    temperature,
                    vocab,
                    seed: 1,
                };
                let report = runtime
                    .block_on(lincal_serve::load::drive(&base, &settings))
                    .map_err(|e| anyhow::anyhow!("a client failed: {e}"))?;
                println!(
                    "{count} clients x {requests} requests of {prompt_len} + {max_tokens} tokens: \
                     {:.0} tokens/s, time to first token p50 {:.3} s p99 {:.3} s, \
                     latency p50 {:.2} s p99 {:.2} s",
                    report.tokens_per_second,
                    report.ttft_p50,
                    report.ttft_p99,
                    report.latency_p50,
                    report.latency_p99
                );
                let mut line = serde_json::to_value(&report)?;
                line["bench"] = "serve".into();
                line["engine"] = "lincal".into();
                line["max_batch"] = max_batch.into();
                line["prompt_len"] = prompt_len.into();
                line["max_tokens"] = max_tokens.into();
                line["device"] = format!("{device:?}").into();
                record.append(line)?;
            }
            Ok(server.stop()?)
        }
        BenchCommand::Logits {
            model,
            ids,
            out,
            device,
        } => {
            let (device, kind) = device.resolve()?;
            let model = CausalLm::load(&model, device, Some(kind))?;
            let text = std::fs::read_to_string(&ids)
                .with_context(|| format!("reading {}", ids.display()))?;
            let rows: Vec<Vec<i64>> = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: expected a JSON list of equal-length lists of token ids",
                    ids.display()
                )
            })?;
            let (input, mask) = lincal_model::generate::left_pad(&rows, 0, device);
            let positions = lincal_model::layers::positions_from_mask(&mask);
            let attention = lincal_model::layers::attention_mask(&mask, 0, input.size()[1]);
            let logits = tch::no_grad(|| {
                model.logits(&model.forward(&input, &positions, Some(&attention), None))
            })
            .to_kind(tch::Kind::Float);
            Ok(lincal_model::checkpoint::write_safetensors_file(
                &out,
                &[(&"logits".to_string(), &logits)],
            )?)
        }
        BenchCommand::Sft {
            model,
            batch,
            seq_len,
            steps,
            warmup,
            device,
            record,
            trace,
            gradient_checkpointing,
            recomputed_layers,
            no_master_weights,
        } => {
            let (device, kind) = device.resolve()?;
            let model = CausalLm::load(&model, device, Some(kind))?;
            let settings = lincal_train::SftBenchSettings {
                batch_size: batch,
                seq_len,
                steps,
                warmup_steps: warmup,
                recomputed: lincal_train::config::recomputed_layers(
                    gradient_checkpointing,
                    recomputed_layers,
                ),
                master_weights: !no_master_weights,
                trace: trace.path,
            };
            let result = lincal_train::bench_sft(&model, &settings)?;
            println!(
                "{batch} x {seq_len} tokens, {} parameters: \
                 {:.0} tokens/s ({:.3} s/step over {steps} steps)",
                result.parameters, result.tokens_per_second, result.seconds_per_step
            );
            record.append(serde_json::json!({
                "bench": "sft",
                "engine": "lincal",
                "batch": batch,
                "seq_len": seq_len,
                "tokens_per_s": result.tokens_per_second,
                "seconds_per_step": result.seconds_per_step,
                "steps": steps,
                "kind": format!("{kind:?}"),
                "master_weights": !no_master_weights,
                "gradient_checkpointing": gradient_checkpointing,
                "recomputed_layers": recomputed_layers,
                "device": format!("{device:?}"),
            }))
        }
        BenchCommand::Ppo {
            models,
            config,
            warmup,
            device,
            record,
            trace,
        } => {
            let config = config.resolve(lincal_train::ppo::PpoConfig::preset, |c, scale| {
                c.scaled(scale)
            })?;
            let device = crate::parse_device(&device)?;
            let result = lincal_train::ppo::bench_ppo(
                &models.model,
                models.extractor.as_deref(),
                device,
                &config,
                lincal_train::ppo::RlBenchSteps {
                    warmup_steps: warmup,
                    trace: trace.path.as_deref(),
                },
            )?;
            let batches = serde_json::json!({
                "generation_batch_size": config.generation_batch_size,
                "forward_batch_size": config.forward_batch_size,
                "micro_batch_size": config.micro_batch_size,
                "auto_batch_sizes": config.auto_batch_sizes,
                "gradient_checkpointing": config.gradient_checkpointing,
                "recomputed_layers": config.recomputed_layers,
                "offload_idle_models": config.offload_idle_models.unwrap_or(false),
            });
            let setting = RlBenchSetting {
                bench: "ppo",
                rl_type: config.rl_type,
                lora: config.lora.is_some(),
                extractor: models.extractor.as_deref(),
                device,
            };
            record.append(rl_bench_record(&setting, &result, batches)?)
        }
        BenchCommand::Grpo {
            models,
            config,
            warmup,
            device,
            record,
            trace,
        } => {
            let config = config.resolve(lincal_train::grpo::GrpoConfig::preset, |c, scale| {
                c.scaled(scale)
            })?;
            let device = crate::parse_device(&device)?;
            let result = lincal_train::grpo::bench_grpo(
                &models.model,
                models.extractor.as_deref(),
                device,
                &config,
                lincal_train::ppo::RlBenchSteps {
                    warmup_steps: warmup,
                    trace: trace.path.as_deref(),
                },
            )?;
            let batches = serde_json::json!({
                "prompts_per_step": config.prompts_per_step,
                "group_size": config.group_size,
                "generation_batch_size": config.generation_batch_size,
                "forward_batch_size": config.forward_batch_size,
                "micro_batch_size": config.micro_batch_size,
                "auto_batch_sizes": config.auto_batch_sizes,
                "gradient_checkpointing": config.gradient_checkpointing,
                "recomputed_layers": config.recomputed_layers,
                "offload_idle_models": config.offload_idle_models.unwrap_or(false),
            });
            let setting = RlBenchSetting {
                bench: "grpo",
                rl_type: config.rl_type,
                lora: config.lora.is_some(),
                extractor: models.extractor.as_deref(),
                device,
            };
            record.append(rl_bench_record(&setting, &result, batches)?)
        }
        BenchCommand::Generate {
            model,
            batch,
            prompt_len,
            new_tokens,
            temperature,
            top_p,
            top_k,
            stop,
            device,
            record,
            trace,
            no_cuda_graph,
            verify,
        } => {
            if trace.path.is_some() && batch.len() > 1 {
                bail!("--trace records one timed run: give one --batch size");
            }
            let (device, kind) = device.resolve()?;
            let tokenizer = (!stop.is_empty())
                .then(|| {
                    lincal_model::Tokenizer::from_dir(&model).with_context(|| {
                        format!("--stop needs the tokenizer of {}", model.display())
                    })
                })
                .transpose()?;
            let mut model = CausalLm::load(&model, device, Some(kind))?;
            model.set_cuda_graphs(!no_cuda_graph);
            let vocab = model.config().vocab_size();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let mut prompts = |n: usize| -> Vec<Vec<i64>> {
                (0..n)
                    .map(|_| {
                        (0..prompt_len)
                            .map(|_| rng.random_range(0..vocab))
                            .collect()
                    })
                    .collect()
            };
            let params = SamplingParams {
                temperature,
                top_p,
                top_k,
                max_new_tokens: new_tokens,
                stop: stop.clone(),
            };
            params.validate()?;
            // Warm-up: kernel selection and allocator growth stay out of the numbers.
            let warmup = SamplingParams {
                max_new_tokens: 8,
                ..params.clone()
            };
            let warmup_prompts = prompts(2);
            generate_batch(
                &model,
                &BatchRequest {
                    stop_tokenizer: tokenizer.as_ref(),
                    ..BatchRequest::new(&warmup_prompts, &[0, 1], &warmup)
                },
                None,
            )?;
            println!(
                "{:>6} {:>7} {:>8} {:>10} {:>12}  {:<16}  {}",
                "batch",
                "prompt",
                "new",
                "seconds",
                "tokens/s",
                "tokens digest",
                if verify {
                    "log-prob gap max / mean"
                } else {
                    ""
                }
            );
            for &size in &batch {
                let batch_prompts = prompts(size);
                let seeds: Vec<u64> = (0..size as u64).collect();
                let recording = Trace::start_if(trace.path.as_deref(), device)?;
                let started = Instant::now();
                let request = BatchRequest {
                    stop_tokenizer: tokenizer.as_ref(),
                    ..BatchRequest::new(&batch_prompts, &seeds, &params)
                };
                let out = generate_batch(&model, &request, None)?;
                let seconds = started.elapsed().as_secs_f64();
                if let Some(recording) = recording {
                    recording.finish()?;
                }
                let generated: i64 = out.lengths.iter().sum();
                let rate = generated as f64 / seconds;
                // Identical digests show two runs sampled identical tokens; different ones are not
                // an error by themselves (cuBLAS may pick other kernels inside a graph, and one
                // rounding difference changes a sample), which is what --verify checks.
                let tokens = Vec::<Vec<i64>>::try_from(out.tokens.to_device(tch::Device::Cpu))?;
                let digest = tokens.iter().flatten().fold(0u64, |h, &t| {
                    h.wrapping_mul(1_000_003).wrapping_add(t as u64)
                });
                let gap = verify.then(|| logprob_gap(&model, &batch_prompts, &out, temperature));
                let gap_text =
                    gap.map_or(String::new(), |(max, mean)| format!("{max:.4} / {mean:.5}"));
                println!(
                    "{size:>6} {prompt_len:>7} {new_tokens:>8} {seconds:>10.2} \
                     {rate:>12.0}  {digest:016x}  {gap_text}"
                );
                record.append(serde_json::json!({
                    "bench": "generate",
                    "engine": "lincal",
                    "batch": size,
                    "prompt_len": prompt_len,
                    "new_tokens": new_tokens,
                    "temperature": temperature,
                    "top_p": top_p,
                    "top_k": top_k,
                    "stop": stop,
                    "seconds": seconds,
                    "tokens_per_s": rate,
                    "cuda_graph": model.cuda_graphs(),
                    "tokens_digest": format!("{digest:016x}"),
                    "logprob_gap_max": gap.map(|g| g.0),
                    "logprob_gap_mean": gap.map(|g| g.1),
                    "kind": format!("{kind:?}"),
                    "device": format!("{device:?}"),
                }))?;
            }
            Ok(())
        }
    }
}

/// Largest and mean absolute difference, over the first 8 rows, between the log-probs that
/// generation reported for its tokens and those of one full causal forward pass over prompt and
/// output (every row runs to full length here, and prompts are unpadded).
fn logprob_gap(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    out: &GeneratedBatch,
    temperature: f64,
) -> (f64, f64) {
    let rows = prompts.len().min(8) as i64;
    let device = model.device();
    let prompt = Tensor::from_slice2(&prompts[..rows as usize]).to_device(device);
    let (prompt_len, new) = (prompt.size()[1], out.tokens.size()[1]);
    let ids = Tensor::cat(&[prompt, out.tokens.narrow(0, 0, rows)], 1);
    let positions = Tensor::arange(ids.size()[1], (tch::Kind::Int64, device))
        .unsqueeze(0)
        .expand_as(&ids);
    let logits = tch::no_grad(|| model.logits(&model.forward(&ids, &positions, None, None)))
        .to_kind(tch::Kind::Float);
    let scaled = if temperature > 0.0 {
        logits / temperature
    } else {
        logits
    };
    let expected = scaled
        .narrow(1, prompt_len - 1, new)
        .log_softmax(-1, tch::Kind::Float)
        .gather(-1, &out.tokens.narrow(0, 0, rows).unsqueeze(-1), false)
        .squeeze_dim(-1);
    let gap = (expected - out.logprobs.narrow(0, 0, rows).to_kind(tch::Kind::Float)).abs();
    (
        gap.max().double_value(&[]),
        gap.mean(tch::Kind::Float).double_value(&[]),
    )
}

/// Where a benchmark's measurements go besides the terminal.
#[derive(clap::Args)]
pub struct RecordArgs {
    /// Append one JSON line per measurement here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Name recorded with each measurement (e.g. the model shape).
    #[arg(long, default_value = "")]
    label: String,
}

impl RecordArgs {
    /// Appends `measurement`, with the label as `model`, as one line of the --json file.
    fn append(&self, mut measurement: serde_json::Value) -> Result<()> {
        use std::io::Write;
        let Some(path) = &self.json else {
            return Ok(());
        };
        measurement["model"] = self.label.clone().into();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(file, "{measurement}").with_context(|| format!("writing {}", path.display()))
    }
}

/// A profiler trace of a benchmark's timed part.
#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// Write a Chrome trace of the timed part here (PyTorch's profiler: every operator, and
    /// on a GPU every kernel with its time; `bench/gpu/trace_summary.py` totals them). Times
    /// measured while tracing include the profiler's own overhead.
    #[arg(long = "trace", value_name = "FILE")]
    path: Option<PathBuf>,
}

/// The models of `bench ppo` and `bench grpo`.
#[derive(clap::Args)]
pub struct RlBenchModels {
    /// A causal LM with its tokenizer, which must have a pad token (an SFT model does): the
    /// policy, the reference (or LoRA adapters), the reward model and value backbone (with a
    /// new head) and, for decision-based RL, the answer extractor. Random weights of the
    /// shape to measure are fine.
    #[arg(long)]
    model: PathBuf,
    /// Another causal LM with its tokenizer as the answer extractor of decision-based RL (the
    /// reference's is a 3B GPT-NeoX beside a 7B policy).
    #[arg(long)]
    extractor: Option<PathBuf>,
}

/// What an RL step benchmark ran: the method, the reward, LoRA or full fine-tuning, the
/// extractor, the device.
struct RlBenchSetting<'a> {
    bench: &'static str,
    rl_type: lincal_train::ppo::RlType,
    lora: bool,
    /// The answer extractor, when it is not the benchmark's model.
    extractor: Option<&'a std::path::Path>,
    device: tch::Device,
}

/// Prints an RL step's times and returns its JSON record (the setting, `batches`, the times).
fn rl_bench_record(
    setting: &RlBenchSetting<'_>,
    result: &lincal_train::ppo::RlStepBench,
    batches: serde_json::Value,
) -> Result<serde_json::Value> {
    println!(
        "{} rollouts of {} + {} tokens{}: {:.1} s per {} step = generation {:.1} s \
         ({:.0} tokens/s) + scoring {:.1} s (reward {:.1} s) + update {:.1} s; \
         {} trained parameters; first step KL {}, approx KL {}",
        result.rollouts,
        result.query_len,
        result.response_len,
        if setting.lora { " (LoRA)" } else { "" },
        result.total_seconds,
        setting.bench.to_uppercase(),
        result.generation_seconds,
        result.generated_tokens_per_second,
        result.scoring_seconds,
        result.reward_seconds,
        result.update_seconds,
        result.trainable_parameters,
        result.first_step_kl,
        result.first_step_approx_kl
    );
    if !result.reward_parts_seconds.is_empty() {
        let parts: Vec<String> = result
            .reward_parts_seconds
            .iter()
            .map(|(part, seconds)| format!("{part} {seconds:.1} s"))
            .collect();
        println!("reward parts: {}", parts.join(", "));
    }
    if let Some(plan) = &result.batch_plan {
        println!("auto batch sizes: {plan}");
    }
    let mut measured = serde_json::json!({
        "bench": setting.bench,
        "engine": "lincal",
        "rl_type": format!("{:?}", setting.rl_type),
        "lora": setting.lora,
        "extractor": setting.extractor.map(|dir| dir.display().to_string()),
        "device": format!("{:?}", setting.device),
    });
    let object = measured.as_object_mut().expect("an object");
    object.extend(batches.as_object().expect("an object").clone());
    // With auto_batch_sizes the step ran at the planned sizes and offloading, not the config's.
    if let Some(plan) = &result.batch_plan {
        object.extend(
            [
                ("generation_batch_size", plan.generation_batch_size),
                ("forward_batch_size", plan.forward_batch_size),
                ("micro_batch_size", plan.micro_batch_size),
            ]
            .map(|(key, size)| (key.to_string(), serde_json::json!(size))),
        );
        object.insert(
            "offload_idle_models".to_string(),
            serde_json::json!(plan.offload_idle_models),
        );
    }
    object.extend(
        serde_json::to_value(result)?
            .as_object()
            .expect("a struct")
            .clone(),
    );
    Ok(measured)
}
