//! Batched sampling with a KV cache: prompts are left-padded, prefilled in forward passes of
//! whole rows ([`PREFILL_TOKENS`] tokens at most), then decoded one token per step for the
//! whole batch.

use crate::cuda_graph::{self, CudaGraph};
use crate::error::{ModelError, Result};
use crate::layers::{KvCache, attention_mask, positions_from_mask};
use crate::model::CausalLm;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy decoding.
    pub temperature: f64,
    /// Nucleus sampling; 1.0 disables it.
    pub top_p: f64,
    /// 0 disables it.
    pub top_k: i64,
    pub max_new_tokens: i64,
    /// Generation of a row ends once its text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.7,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            stop: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let problem = if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            format!("temperature must be >= 0, got {}", self.temperature)
        } else if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            format!("top_p must be in (0, 1], got {}", self.top_p)
        } else if self.top_k < 0 {
            format!("top_k must be >= 0, got {}", self.top_k)
        } else if self.max_new_tokens < 1 {
            format!("max_new_tokens must be >= 1, got {}", self.max_new_tokens)
        } else {
            return Ok(());
        };
        Err(ModelError::Invalid(problem))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Eos,
    Stop,
    Length,
}

/// One row's result. `tokens` includes the EOS token when one ended the row; `logprobs[i]` is
/// the log-probability of `tokens[i]` under the temperature-scaled distribution (before top-k
/// and top-p filtering), the quantity PPO needs.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub tokens: Vec<i64>,
    pub logprobs: Vec<f32>,
    pub text: String,
    pub finish_reason: FinishReason,
}

/// Token ids and log-probs of a batch as device tensors `[B, N]`, right-padded with `pad_id`
/// (log-prob 0) after each row's end: the form PPO consumes without leaving the GPU.
pub struct GeneratedBatch {
    pub tokens: Tensor,
    pub logprobs: Tensor,
    /// Tokens each row produced (EOS included).
    pub lengths: Vec<i64>,
    pub finish_reasons: Vec<FinishReason>,
}

/// Left-pads `prompts` into `[B, P]` ids and a `[B, P]` mask (1 = real token).
pub fn left_pad(prompts: &[Vec<i64>], pad_id: i64, device: tch::Device) -> (Tensor, Tensor) {
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * width);
    let mut mask = Vec::with_capacity(prompts.len() * width);
    for prompt in prompts {
        let pad = width - prompt.len();
        ids.extend(std::iter::repeat_n(pad_id, pad).chain(prompt.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, prompt.len())));
    }
    let shape = [prompts.len() as i64, width as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}

/// Samples `[B]` next tokens from `logits` `[B, V]` by inverting the CDF at `uniform` `[B]`
/// (draws in [0, 1)); returns them with their log-probs. The draws come from the caller's
/// seeded generator, not libtorch's global one, so results do not depend on what else runs.
pub fn sample_next(logits: &Tensor, params: &SamplingParams, uniform: &Tensor) -> (Tensor, Tensor) {
    let logits = logits.to_kind(Kind::Float);
    if params.temperature == 0.0 {
        let tokens = logits.argmax(-1, false);
        let logprobs = logits
            .log_softmax(-1, Kind::Float)
            .gather(-1, &tokens.unsqueeze(-1), false)
            .squeeze_dim(-1);
        return (tokens, logprobs);
    }
    let scaled = logits / params.temperature;
    let logprobs_all = scaled.log_softmax(-1, Kind::Float);
    let mut filtered = scaled;
    let vocab = filtered.size()[1];
    if params.top_k > 0 && params.top_k < vocab {
        let (top, _) = filtered.topk(params.top_k, -1, true, true);
        let kth = top.narrow(-1, params.top_k - 1, 1);
        filtered = filtered.masked_fill(&filtered.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if params.top_p < 1.0 {
        let (sorted, order) = filtered.sort(-1, true);
        let probs = sorted.softmax(-1, Kind::Float);
        // Drop a token when the tokens ranked above it already cover top_p; the first stays.
        let before = probs.cumsum(-1, Kind::Float) - &probs;
        let drop_sorted = before.gt(params.top_p);
        let drop = drop_sorted.scatter(-1, &order, &drop_sorted);
        filtered = filtered.masked_fill(&drop, f64::NEG_INFINITY);
    }
    let cdf = filtered.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
    let target = (uniform.unsqueeze(-1) * cdf.narrow(-1, vocab - 1, 1)).to_kind(Kind::Float);
    let tokens = target
        .searchsorted(&cdf, false, true, "right", None::<Tensor>)
        .squeeze_dim(-1)
        .clamp_max(vocab - 1);
    let logprobs = logprobs_all
        .gather(-1, &tokens.unsqueeze(-1), false)
        .squeeze_dim(-1);
    (tokens, logprobs)
}

/// How often (in steps) the loop asks the GPU whether every row has finished. Each check is a
/// device synchronisation that stalls the launch pipeline, so it is not done every token.
const FINISHED_CHECK_INTERVAL: i64 = 16;

/// The smallest step between attention windows (see [`window`]).
const MIN_WINDOW_STEP: i64 = 32;

/// The decode step's inputs and the cache it writes, held in tensors whose addresses never
/// change, so the step can run eagerly or as a CUDA graph replayed every token.
pub(crate) struct DecodeState {
    /// `[B, 1]` the tokens just sampled.
    pub(crate) input_ids: Tensor,
    /// `[B, 1]` their positions (real tokens so far; left padding does not count).
    pub(crate) positions: Tensor,
    /// `[B]` the cache slot each row's token is written to.
    pub(crate) slots: Tensor,
    /// `[B, capacity]` which cache slots hold real tokens.
    pub(crate) key_mask: Tensor,
    pub(crate) cache: KvCache,
}

impl DecodeState {
    /// Logits `[rows, V]` of the next token of the first `rows` rows (the others are left
    /// alone), attending over the first `visible` cache slots.
    fn step(&mut self, model: &CausalLm, rows: i64, visible: i64) -> Tensor {
        let mut cache = self.cache.rows(0, rows);
        cache.set_row_window(&self.slots.narrow(0, 0, rows), visible);
        let mask = self
            .key_mask
            .narrow(0, 0, rows)
            .narrow(1, 0, visible)
            .view([rows, 1, 1, visible]);
        let hidden = model.forward(
            &self.input_ids.narrow(0, 0, rows),
            &self.positions.narrow(0, 0, rows),
            Some(&mask),
            Some(&mut cache),
        );
        model.logits(&hidden.squeeze_dim(1))
    }

    /// Stores `next` `[B]` as the input of the step that writes every row's next slot.
    fn feed(&mut self, next: &Tensor) {
        self.input_ids.copy_(&next.unsqueeze(1));
        let _ = self.positions.g_add_scalar_(1);
        let _ = self.slots.g_add_scalar_(1);
        self.mark_written();
    }

    /// Marks the slots the next step writes as real tokens.
    pub(crate) fn mark_written(&mut self) {
        let _ = self.key_mask.scatter_value_(1, &self.slots.unsqueeze(1), 1);
    }
}

/// Runs decode steps: eagerly, or through one CUDA graph per (rows, attention window),
/// recorded the first time the pair is needed and replayed for every later token.
pub(crate) struct Decoder {
    /// Declared first so the graphs are dropped before the tensors they read.
    graphs: Vec<((i64, i64), CudaGraph, Tensor)>,
    pub(crate) state: DecodeState,
    use_graphs: bool,
}

impl Decoder {
    pub(crate) fn new(model: &CausalLm, state: DecodeState) -> Self {
        Decoder {
            graphs: Vec::new(),
            state,
            use_graphs: model.cuda_graphs() && cuda_graph::supported(model.device()),
        }
    }

    /// Logits `[rows, V]` of a decode step of the first `rows` rows over `visible` slots.
    pub(crate) fn logits(&mut self, model: &CausalLm, rows: i64, visible: i64) -> Result<Tensor> {
        if !self.use_graphs {
            return Ok(self.state.step(model, rows, visible));
        }
        let key = (rows, visible);
        if let Some((_, graph, logits)) = self.graphs.iter().find(|(k, _, _)| *k == key) {
            graph.replay()?;
            return Ok(logits.shallow_clone());
        }
        let mut logits = None;
        let state = &mut self.state;
        // The step only rewrites the same slot from the same inputs, so the warm-up run before
        // the first recording changes nothing.
        let graph = CudaGraph::capture(model.device(), self.graphs.is_empty(), || {
            logits = Some(state.step(model, rows, visible))
        })?;
        let logits = logits.expect("the captured step ran");
        graph.replay()?;
        self.graphs.push((key, graph, logits.shallow_clone()));
        Ok(logits)
    }
}

/// A batch to generate: prompts (token ids), one sampling seed per prompt, and what ends a row.
#[derive(Clone, Copy)]
pub struct BatchRequest<'a> {
    pub prompts: &'a [Vec<i64>],
    pub seeds: &'a [u64],
    pub params: &'a SamplingParams,
    /// A row ends at any of these (none: only `max_new_tokens` or a stop string ends it).
    pub eos_ids: &'a [i64],
    /// Fills the prompts' left padding and the rows that ended.
    pub pad_id: i64,
    /// Decodes rows to look for `params.stop`; required when there are stop strings.
    pub stop_tokenizer: Option<&'a Tokenizer>,
}

impl<'a> BatchRequest<'a> {
    /// A request whose rows end only after `max_new_tokens`, padded with id 0.
    pub fn new(prompts: &'a [Vec<i64>], seeds: &'a [u64], params: &'a SamplingParams) -> Self {
        BatchRequest {
            prompts,
            seeds,
            params,
            eos_ids: &[],
            pad_id: 0,
            stop_tokenizer: None,
        }
    }
}

/// Generates continuations of `request.prompts`. Rows end at any of `eos_ids`, at a stop string
/// (needs `stop_tokenizer`), or after `max_new_tokens`. Row `i` samples with its own random
/// stream seeded by `seeds[i]`, so what a row draws does not depend on which other rows share
/// its batch (a resumed or re-batched run samples the same). `on_token` sees each new token of
/// each row as it is sampled.
pub fn generate_batch(
    model: &CausalLm,
    request: &BatchRequest<'_>,
    mut on_token: Option<&mut dyn FnMut(usize, i64)>,
) -> Result<GeneratedBatch> {
    let BatchRequest {
        prompts,
        seeds,
        params,
        eos_ids,
        pad_id,
        stop_tokenizer,
    } = *request;
    params.validate()?;
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ModelError::Invalid(
            "every prompt needs at least one token".into(),
        ));
    }
    if seeds.len() != prompts.len() {
        return Err(ModelError::Invalid(format!(
            "{} prompts need {} seeds, got {}",
            prompts.len(),
            prompts.len(),
            seeds.len()
        )));
    }
    if !params.stop.is_empty() && stop_tokenizer.is_none() {
        return Err(ModelError::Invalid(
            "stop strings need the tokenizer".into(),
        ));
    }
    let device = model.device();
    let batch = prompts.len() as i64;
    // Every draw of the run goes to the device in one copy: a copy per step from pageable
    // memory would synchronise the host with the GPU at every token.
    let draws: Vec<f32> = seeds
        .iter()
        .flat_map(|&seed| {
            rand_chacha::ChaCha8Rng::seed_from_u64(seed)
                .random_iter::<f32>()
                .take(params.max_new_tokens as usize)
        })
        .collect();
    let draws = Tensor::from_slice(&draws)
        .view([batch, params.max_new_tokens])
        .tr()
        .contiguous()
        .to_device(device);
    let pad = Tensor::from(pad_id).to_device(device);
    let (input_ids, prompt_mask) = left_pad(prompts, pad_id, device);
    let prompt_len = input_ids.size()[1];
    let capacity = prompt_len + params.max_new_tokens;
    let eos = Tensor::from_slice(eos_ids).to_device(device);
    let mut finished = Tensor::zeros([batch], (Kind::Bool, device));
    // Stop strings and streaming need the tokens on the host: streaming every token, stop
    // strings only at each check (a row keeps sampling for a few steps after its stop string;
    // those tokens are cut below, and its draws are its own, so no other row changes).
    let mut watch = (!params.stop.is_empty() || on_token.is_some()).then(|| HostWatch {
        streams: stop_tokenizer
            .filter(|_| !params.stop.is_empty())
            .map(|tokenizer| {
                let streams = prompts.iter().map(|_| TextStream::new(&params.stop));
                (tokenizer, streams.collect())
            }),
        ended: vec![false; prompts.len()],
        stop_lengths: vec![None; prompts.len()],
        seen: 0,
    });
    let check_interval = if on_token.is_some() {
        1
    } else {
        FINISHED_CHECK_INTERVAL
    };
    let (mut tokens, mut logprobs) = (Vec::new(), Vec::new());
    // Nothing trains while a batch generates: LoRA adapters cast their factors once.
    crate::lora::with_frozen_adapters(|| {
        tch::no_grad(|| -> Result<()> {
            let key_mask = Tensor::zeros([batch, capacity], (Kind::Bool, device));
            key_mask.narrow(1, 0, prompt_len).copy_(&prompt_mask);
            let positions = positions_from_mask(&prompt_mask);
            let cache = model.new_cache(batch, capacity);
            let [mut logits] = prefill(
                model,
                (&input_ids, &prompt_mask, &positions),
                &cache,
                PREFILL_TOKENS,
                |hidden| [model.logits(&hidden.select(1, -1))],
            );
            let state = DecodeState {
                input_ids: Tensor::zeros([batch, 1], (Kind::Int64, device)),
                positions: positions.narrow(1, prompt_len - 1, 1).contiguous(),
                slots: Tensor::full([batch], prompt_len - 1, (Kind::Int64, device)),
                key_mask,
                cache,
            };
            let mut decoder = Decoder::new(model, state);
            for step in 0..params.max_new_tokens {
                let (next, logp) = sample_next(&logits, params, &draws.get(step));
                let next = next.where_self(&finished.logical_not(), &pad);
                tokens.push(next.shallow_clone());
                logprobs.push(logp.masked_fill(&finished, 0.0));
                finished = finished.logical_or(&Tensor::isin(&next, &eos, false, false));
                let last = step + 1 == params.max_new_tokens;
                let all_finished = if (step + 1) % check_interval != 0 && !last {
                    false
                } else if let Some(watch) = watch.as_mut() {
                    let stopped = watch.read(&tokens, eos_ids, &mut on_token)?;
                    if !stopped.is_empty() {
                        let rows = Tensor::from_slice(&stopped).to_device(device);
                        let _ = finished.index_fill_(0, &rows, 1);
                    }
                    watch.ended.iter().all(|&ended| ended)
                } else {
                    finished.all().int64_value(&[]) == 1
                };
                if all_finished || last {
                    break;
                }
                decoder.state.feed(&next);
                let written = prompt_len + step + 1;
                logits = decoder.logits(model, batch, window(written, capacity))?;
            }
            Ok(())
        })
    })?;
    let mut tokens = Tensor::stack(&tokens, 1);
    let mut logprobs = Tensor::stack(&logprobs, 1);
    let stop_lengths = watch.map_or_else(|| vec![None; prompts.len()], |w| w.stop_lengths);
    if stop_lengths.iter().any(Option::is_some) {
        // What rows sampled after their stop string is not output.
        let steps = tokens.size()[1];
        let beyond: Vec<bool> = stop_lengths
            .iter()
            .flat_map(|&end| (0..steps).map(move |i| end.is_some_and(|end| i >= end)))
            .collect();
        let beyond = Tensor::from_slice(&beyond)
            .view([batch, steps])
            .to_device(device);
        tokens = tokens.masked_fill(&beyond, pad_id);
        logprobs = logprobs.masked_fill(&beyond, 0.0);
    }
    let (lengths, finish_reasons) = row_ends(&tokens, eos_ids, &stop_lengths);
    Ok(GeneratedBatch {
        tokens,
        logprobs,
        lengths,
        finish_reasons,
    })
}

/// Most tokens of one prefill pass: a batch's prompts go through the model this many tokens
/// (whole rows, at least one) at a time, so that a large batch holds one pass's activations at
/// a time beside its cache; 16k tokens still make wide products.
pub const PREFILL_TOKENS: i64 = 16_384;

/// Rows of `prompt_len` tokens that one prefill pass takes.
pub fn prefill_rows(prompt_len: i64) -> i64 {
    rows_per_pass(PREFILL_TOKENS, prompt_len)
}

/// Whole rows of `width` tokens within `max_tokens`, at least one.
fn rows_per_pass(max_tokens: i64, width: i64) -> i64 {
    (max_tokens / width.max(1)).max(1)
}

/// Writes the keys and values of left-padded prompts (`input_ids`, `mask` `[B, T]`, and the
/// positions of their tokens) into slots `0..T` of `cache`'s rows, `max_tokens` tokens of
/// whole rows a pass. `keep` maps a pass's final hidden states `[b, T, H]` to what the caller
/// keeps of them, which comes back joined along the rows. Passes change no row's values: each
/// row attends only to itself.
pub(crate) fn prefill<const N: usize>(
    model: &CausalLm,
    (input_ids, mask, positions): (&Tensor, &Tensor, &Tensor),
    cache: &KvCache,
    max_tokens: i64,
    mut keep: impl FnMut(&Tensor) -> [Tensor; N],
) -> [Tensor; N] {
    let (batch, width) = (input_ids.size()[0], input_ids.size()[1]);
    let per_pass = rows_per_pass(max_tokens, width);
    let slots = Tensor::arange(width, (Kind::Int64, input_ids.device()));
    let mut kept: [Vec<Tensor>; N] = std::array::from_fn(|_| Vec::new());
    for start in (0..batch).step_by(per_pass as usize) {
        let rows = per_pass.min(batch - start);
        let mut pass_cache = cache.rows(start, rows);
        pass_cache.set_window(&slots, width);
        let hidden = model.forward(
            &input_ids.narrow(0, start, rows),
            &positions.narrow(0, start, rows),
            Some(&attention_mask(&mask.narrow(0, start, rows), 0, width)),
            Some(&mut pass_cache),
        );
        for (all, part) in kept.iter_mut().zip(keep(&hidden)) {
            all.push(part);
        }
    }
    // One pass (the common case) keeps its tensors as they are, without a copy.
    kept.map(|mut parts| match parts.len() {
        1 => parts.remove(0),
        _ => Tensor::cat(&parts, 0),
    })
}

/// The attention window of a step after `written` cache slots. A window is fixed within a
/// captured graph, so it is rounded up, to a multiple of an eighth of the power of two at or
/// above `written` (at least [`MIN_WINDOW_STEP`]): the cache read beyond the tokens so far is
/// under a quarter of them past 128 slots (about an eighth on average; below, under 32 slots),
/// at four graphs per doubling of the length. Decode steps are bound by reading the cache,
/// so that overshoot is their cost.
pub(crate) fn window(written: i64, capacity: i64) -> i64 {
    let written = written.max(1);
    let step = ((written as u64).next_power_of_two() as i64 / 8).max(MIN_WINDOW_STEP);
    ((written + step - 1) / step * step).min(capacity)
}

/// Length and finish reason of each row from the token matrix and the lengths of the rows a
/// stop string ended.
fn row_ends(
    tokens: &Tensor,
    eos_ids: &[i64],
    stop_lengths: &[Option<i64>],
) -> (Vec<i64>, Vec<FinishReason>) {
    let rows = Vec::<Vec<i64>>::try_from(tokens.to_device(tch::Device::Cpu)).expect("2-d ids");
    rows.iter()
        .zip(stop_lengths)
        .map(|(row, &stop_length)| {
            // A stopped row met no EOS before its stop string (the host would have ended it
            // there); the padding after it may be the EOS token.
            match (stop_length, row.iter().position(|id| eos_ids.contains(id))) {
                (Some(length), _) => (length, FinishReason::Stop),
                (None, Some(i)) => (i as i64 + 1, FinishReason::Eos),
                (None, None) => (row.len() as i64, FinishReason::Length),
            }
        })
        .unzip()
}

/// What the host knows of each row of a generation: which have ended (EOS or a stop
/// string) and where a stop string ended a row. It reads the tokens sampled since its last
/// look in one copy from the device.
struct HostWatch<'a> {
    /// The tokenizer and each row's text, when there are stop strings.
    streams: Option<(&'a Tokenizer, Vec<TextStream>)>,
    ended: Vec<bool>,
    /// Tokens a row output, its stop string's last token included, when one ended it.
    stop_lengths: Vec<Option<i64>>,
    /// Steps read so far.
    seen: usize,
}

impl HostWatch<'_> {
    /// Reads the steps after the last look, `steps[seen..]` (each `[B]` ids), passes each
    /// token of a row still going to `on_token`, and returns the rows a stop string ended.
    fn read(
        &mut self,
        steps: &[Tensor],
        eos_ids: &[i64],
        on_token: &mut Option<&mut dyn FnMut(usize, i64)>,
    ) -> Result<Vec<i64>> {
        let rows = Vec::<Vec<i64>>::try_from(
            Tensor::stack(&steps[self.seen..], 1).to_device(tch::Device::Cpu),
        )
        .expect("2-d ids");
        let mut stopped = Vec::new();
        for (row, ids) in rows.iter().enumerate() {
            for (offset, &id) in ids.iter().enumerate() {
                if self.ended[row] {
                    break;
                }
                if let Some(callback) = on_token.as_mut() {
                    callback(row, id);
                }
                if eos_ids.contains(&id) {
                    self.ended[row] = true;
                } else if let Some((tokenizer, streams)) = self.streams.as_mut() {
                    streams[row].push(tokenizer, id)?;
                    if streams[row].stopped() {
                        self.ended[row] = true;
                        self.stop_lengths[row] = Some((self.seen + offset + 1) as i64);
                        stopped.push(row as i64);
                    }
                }
            }
        }
        self.seen = steps.len();
        Ok(stopped)
    }
}

/// Byte offset of the first stop string in `text`, if any.
fn stop_position(text: &str, stop: &[String]) -> Option<usize> {
    first_stop(text, stop).map(|(at, _)| at)
}

/// Byte offset and index of the stop string that occurs first in `text`.
fn first_stop(text: &str, stop: &[String]) -> Option<(usize, usize)> {
    stop.iter()
        .enumerate()
        .filter_map(|(i, s)| text.find(s.as_str()).map(|at| (at, i)))
        .min()
}

/// The text of a growing generation, handed out in pieces as each becomes final: a token can
/// complete a multi-byte character begun by the one before, and text that could be the start
/// of a stop string is held back until it is known not to be. Tokens are decoded as they come
/// (only the last few are decoded again, see [`IncrementalDecoder`]), so a long answer costs
/// time in proportion to its length. The pieces joined equal the generation's final text, cut
/// before the first stop string as [`generate_text`] cuts it.
pub struct TextStream {
    decoder: IncrementalDecoder,
    stop: Vec<String>,
    text: String,
    /// Bytes of `text` handed out.
    sent: usize,
    /// The stop string found, by index.
    stopped_by: Option<usize>,
}

impl TextStream {
    pub fn new(stop: &[String]) -> Self {
        TextStream {
            decoder: IncrementalDecoder::default(),
            stop: stop.to_vec(),
            text: String::new(),
            sent: 0,
            stopped_by: None,
        }
    }

    /// Takes the next generated token (special tokens add no text) and returns the piece of
    /// text that is now final, often empty. After a stop string, [`Self::stopped`] is true and
    /// the text ends before it.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: i64) -> Result<String> {
        let piece = tokenizer.decode_next(&mut self.decoder, token)?;
        Ok(self.push_text(piece.as_deref().unwrap_or("")))
    }

    /// The rest of the text, once the generation has ended: what was held back, and a
    /// character the last tokens left incomplete (as U+FFFD, as a whole decode shows it).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let tail = tokenizer.decode_rest(&self.decoder)?;
        let mut rest = self.push_text(&tail);
        rest.push_str(&self.take(self.text.len()));
        Ok(rest)
    }

    pub fn stopped(&self) -> bool {
        self.stopped_by.is_some()
    }

    /// The stop string that ended the text.
    pub fn stopped_by(&self) -> Option<&str> {
        self.stopped_by.map(|i| self.stop[i].as_str())
    }

    fn push_text(&mut self, piece: &str) -> String {
        if self.stopped() || piece.is_empty() {
            return String::new();
        }
        self.text.push_str(piece);
        // A stop string cannot begin in the text handed out: that text never ends with the
        // start of one (see `settled_end`), so the search starts where it ends.
        if let Some((at, index)) = first_stop(&self.text[self.sent..], &self.stop) {
            self.text.truncate(self.sent + at);
            self.stopped_by = Some(index);
            return self.take(self.text.len());
        }
        self.take(self.settled_end())
    }

    /// The end of the text that no later token can change: before the longest ending that
    /// begins a stop string.
    fn settled_end(&self) -> usize {
        let held = self
            .stop
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .filter(|&k| stop.is_char_boundary(k) && self.text.ends_with(&stop[..k]))
                    .max()
            })
            .max()
            .unwrap_or(0);
        self.text.len() - held
    }

    fn take(&mut self, end: usize) -> String {
        if end <= self.sent {
            return String::new();
        }
        let piece = self.text[self.sent..end].to_string();
        self.sent = end;
        piece
    }
}

/// The tokens that end a generation: the tokenizer's and the model config's.
pub fn eos_ids(model: &CausalLm, tokenizer: &Tokenizer) -> Vec<i64> {
    let mut eos_ids = tokenizer.eos_token_ids();
    for id in model.config().eos_token_ids() {
        if !eos_ids.contains(&id) {
            eos_ids.push(id);
        }
    }
    eos_ids
}

/// The padding token: the config's, else the tokenizer's, else the first of `eos_ids`.
pub fn pad_id(model: &CausalLm, tokenizer: &Tokenizer, eos_ids: &[i64]) -> i64 {
    model
        .config()
        .pad_token_id()
        .or_else(|| tokenizer.pad_token().and_then(|t| tokenizer.token_id(&t)))
        .or(eos_ids.first().copied())
        .unwrap_or(0)
}

/// Generates for text prompts and decodes the results.
pub fn generate_text(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompts: &[Vec<i64>],
    seeds: &[u64],
    params: &SamplingParams,
    on_token: Option<&mut dyn FnMut(usize, i64)>,
) -> Result<Vec<Generation>> {
    let eos_ids = eos_ids(model, tokenizer);
    let pad_id = pad_id(model, tokenizer, &eos_ids);
    let request = BatchRequest {
        eos_ids: &eos_ids,
        pad_id,
        stop_tokenizer: Some(tokenizer),
        ..BatchRequest::new(prompts, seeds, params)
    };
    let batch = generate_batch(model, &request, on_token)?;
    let tokens =
        Vec::<Vec<i64>>::try_from(batch.tokens.to_device(tch::Device::Cpu)).expect("2-d ids");
    let logprobs = Vec::<Vec<f32>>::try_from(
        batch
            .logprobs
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float),
    )
    .expect("2-d logprobs");
    let mut out = Vec::with_capacity(tokens.len());
    for (row, (ids, lps)) in tokens.into_iter().zip(logprobs).enumerate() {
        let len = batch.lengths[row] as usize;
        let reason = batch.finish_reasons[row];
        let mut text = tokenizer.decode(&ids[..len], true)?;
        if reason == FinishReason::Stop {
            let cut = stop_position(&text, &params.stop).unwrap_or(text.len());
            text.truncate(cut);
        }
        out.push(Generation {
            tokens: ids[..len].to_vec(),
            logprobs: lps[..len].to_vec(),
            text,
            finish_reason: reason,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{TextStream, left_pad, prefill, window};
    use crate::layers::positions_from_mask;
    use crate::testing::{random_model, tiny_llama, tiny_neox};
    use tch::{Device, Tensor};

    /// Prefilling in passes of 1, 2 or 3 rows (token budgets of 4, 8 and 15 for prompts padded
    /// to 4, or of 1: still a row a pass) writes the cache and gives the last positions'
    /// logits of one pass over all five rows, for a Llama and a GPT-NeoX (f32 on the CPU).
    #[test]
    fn prefill_in_passes_equals_one_pass() {
        let prompts = vec![
            vec![1, 2, 3],
            vec![4, 5],
            vec![6, 7, 8, 9],
            vec![10],
            vec![11, 12, 13],
        ];
        for config in [tiny_llama(false), tiny_neox()] {
            let model = random_model(config, 3);
            let (ids, mask) = left_pad(&prompts, 0, Device::Cpu);
            let positions = positions_from_mask(&mask);
            let run = |max_tokens| {
                let cache = model.new_cache(5, 6);
                let [logits] = tch::no_grad(|| {
                    prefill(&model, (&ids, &mask, &positions), &cache, max_tokens, |h| {
                        [model.logits(&h.select(1, -1))]
                    })
                });
                (logits, cache)
            };
            let (whole, whole_cache) = run(1000);
            assert_eq!(whole.size()[0], 5);
            for max_tokens in [1, 4, 8, 15] {
                let (logits, cache) = run(max_tokens);
                let gap = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
                assert!(gap(&logits, &whole) < 1e-5, "{max_tokens} tokens a pass");
                for ((k, v), (wk, wv)) in cache.layers().iter().zip(whole_cache.layers()) {
                    assert!(gap(k, wk) < 1e-5 && gap(v, wv) < 1e-5, "{max_tokens}");
                }
                // Written: the 4 prompt slots of every row (padding's keys included).
                assert!(
                    cache.layers()[0]
                        .0
                        .narrow(2, 0, 4)
                        .abs()
                        .sum(tch::Kind::Float)
                        .double_value(&[])
                        > 0.0
                );
            }
        }
    }

    #[test]
    fn windows_round_up_by_an_eighth_of_the_next_power_of_two() {
        // (written, capacity) -> window, by hand: steps of 32 up to 256 slots, then 64 up to
        // 512, 128 up to 1024; never past the capacity.
        for (written, capacity, want) in [
            (0, 428, 32),
            (1, 428, 32),
            (32, 428, 32),
            (33, 428, 64),
            (129, 428, 160),
            (256, 428, 256),
            (257, 428, 320),
            (300, 428, 320),
            (385, 428, 428),
            (513, 4096, 640),
            (1000, 4096, 1024),
            (20, 16, 16),
        ] {
            assert_eq!(window(written, capacity), want, "written {written}");
        }
        // Four graphs per doubling of the length at most, and the overshoot under a quarter.
        let windows: std::collections::BTreeSet<i64> =
            (1..=4096).map(|w| window(w, 4096)).collect();
        assert_eq!(windows.len(), 8 + 4 * 4);
        assert!((1..=4096).all(|w| window(w, 4096) - w < (w / 4).max(32)));
    }

    /// Pieces handed out for text arriving in `chunks`, the rest at the end, and whether a
    /// stop string ended it.
    fn pieces(stop: &[&str], chunks: &[&str]) -> (Vec<String>, String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut stream = TextStream::new(&stop);
        let pieces: Vec<String> = chunks.iter().map(|c| stream.push_text(c)).collect();
        let rest = stream.take(stream.text.len());
        (pieces, rest, stream.stopped())
    }

    #[test]
    fn text_that_may_begin_a_stop_string_is_held_back_until_it_cannot() {
        // "\n\n" is the stop string: one "\n" waits, and goes out once "x" follows it.
        let (got, rest, stopped) = pieces(&["\n\n"], &["Hi", "\n", "x", "\n\nmore"]);
        assert_eq!(got, ["Hi", "", "\nx", ""]);
        assert_eq!((rest.as_str(), stopped), ("", true));
        // Without the stop string arriving, the held text is handed out at the end.
        let (got, rest, stopped) = pieces(&["END"], &["a E", "N"]);
        assert_eq!(got, ["a ", ""]);
        assert_eq!((rest.as_str(), stopped), ("EN", false));
        // A stop string split over pieces, after held text.
        let (got, rest, stopped) = pieces(&["<|end|>"], &["ok <|", "en", "d|> tail"]);
        assert_eq!(got, ["ok ", "", ""]);
        assert_eq!((rest.as_str(), stopped), ("", true));
    }

    /// Streamed pieces join to the whole decode of the tokens, with a byte-level tokenizer
    /// whose tokens are single bytes, so multi-byte characters arrive split over tokens; no
    /// piece holds half a character.
    #[test]
    fn streamed_pieces_join_to_the_whole_decode() {
        let dir = tempfile::tempdir().unwrap();
        crate::testing::write_byte_tokenizer(dir.path());
        let tokenizer = crate::Tokenizer::from_dir(dir.path()).unwrap();
        let text = "café — naïve 日本, done.";
        let ids = tokenizer.encode(text, false).unwrap();
        assert_eq!(ids.len(), text.len(), "one token per byte");
        let mut stream = TextStream::new(&[]);
        let mut joined = String::new();
        for &id in &ids {
            let piece = stream.push(&tokenizer, id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            joined.push_str(&piece);
        }
        joined.push_str(&stream.finish(&tokenizer).unwrap());
        assert_eq!(joined, text);
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), text);
        // Tokens that end mid-character leave it as U+FFFD, as a whole decode does.
        let cut = &ids[..4];
        let mut stream = TextStream::new(&[]);
        let mut joined: String = cut
            .iter()
            .map(|&id| stream.push(&tokenizer, id).unwrap())
            .collect();
        joined.push_str(&stream.finish(&tokenizer).unwrap());
        assert_eq!(joined, tokenizer.decode(cut, true).unwrap());
        assert_eq!(joined, "caf\u{FFFD}");
    }
}
