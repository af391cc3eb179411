//! The engine thread: one model, one set of decode rows ([`DecodeSlots`]), and a scheduler
//! that admits waiting sequences into free rows between decode steps, so concurrent requests
//! share every step and a finished sequence's row goes to the next one at once.

use crate::metrics::Stats;
use lincal_model::generate::sample_next;
use lincal_model::{CausalLm, DecodeSlots, FinishReason, SamplingParams, TextStream, Tokenizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Instant;
use tch::{Kind, Tensor};
use tokio::sync::mpsc::UnboundedSender;

/// How the engine batches.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Decode rows: sequences decoded together.
    pub max_batch: usize,
    /// Tokens a row holds, prompt and answer.
    pub max_context: i64,
    /// Sequences waiting for a row beyond which requests are turned away (429).
    pub max_queue: usize,
    /// Prompt tokens prefilled between two decode steps (a longer prompt still goes alone):
    /// bounds how long newcomers stall the running sequences.
    pub prefill_tokens: usize,
}

/// One sequence to generate. A request with `n` choices sends `n` of them.
pub struct SequenceRequest {
    pub prompt: Vec<i64>,
    /// `max_new_tokens` and `stop` end the sequence, the rest is how to sample.
    pub params: SamplingParams,
    /// Seeds this sequence's own random stream: one uniform draw per token, as
    /// `lincal generate` draws them, so a seeded request samples the same text there and here,
    /// whatever else shares the batch.
    pub seed: u64,
    /// Alternatives to report beside each generated token's log-prob (`None`: no log-probs).
    pub logprobs: Option<usize>,
    /// The same for the prompt's tokens (`echo` with log-probs).
    pub prompt_logprobs: Option<usize>,
    /// Which of its request's choices this is; its events carry it.
    pub choice: usize,
    pub events: UnboundedSender<(usize, Event)>,
}

impl SequenceRequest {
    fn send(&self, event: Event) {
        // A closed channel means the client went away; the next pass frees the row.
        let _ = self.events.send((self.choice, event));
    }
}

/// A token's log-prob under the model's own distribution (temperature 1, before top-k and
/// top-p), with the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: i64,
    pub logprob: f32,
    pub top: Vec<(i64, f32)>,
}

/// What the engine tells a request about one of its sequences.
#[derive(Debug)]
pub enum Event {
    /// Log-probs of the prompt's tokens; the first token has none.
    Prompt(Vec<Option<TokenLogprob>>),
    /// A generated token and the text that became final with it (often empty).
    Token {
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The sequence ended: the rest of its text, and how many tokens it generated (an end of
    /// sequence token included).
    Finished {
        text: String,
        reason: FinishReason,
        /// The stop string that ended it.
        stop_sequence: Option<String>,
        completion_tokens: usize,
    },
    Failed(String),
}

/// Why a submission was turned away.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The queue is full; try again shortly.
    Busy,
    /// The server is shutting down.
    ShuttingDown,
}

enum Command {
    Submit(Vec<SequenceRequest>),
    /// Finish what is running and waiting; past the deadline, end it with an error.
    Shutdown(Instant),
}

/// The HTTP side's handle on the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: Sender<Command>,
    stats: Arc<Stats>,
    max_queue: usize,
}

impl EngineHandle {
    /// Queues the sequences of one request, all or none.
    pub fn submit(&self, sequences: Vec<SequenceRequest>) -> Result<(), Refusal> {
        if self.stats.shutting_down.load(Ordering::SeqCst) {
            return Err(Refusal::ShuttingDown);
        }
        let n = sequences.len();
        let waiting = self.stats.waiting.fetch_add(n, Ordering::SeqCst);
        if waiting + n > self.max_queue {
            self.stats.waiting.fetch_sub(n, Ordering::SeqCst);
            return Err(Refusal::Busy);
        }
        self.commands
            .send(Command::Submit(sequences))
            .map_err(|_| Refusal::ShuttingDown)
    }

    /// Stops taking requests; what runs or waits has until `deadline` to finish.
    pub fn shutdown(&self, deadline: Instant) {
        self.stats.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.commands.send(Command::Shutdown(deadline));
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// A sequence in a decode row.
struct Running {
    request: SequenceRequest,
    row: usize,
    rng: ChaCha8Rng,
    generated: usize,
    /// The token the next decode step feeds.
    next: i64,
    text: TextStream,
}

pub struct Engine {
    model: CausalLm,
    tokenizer: Tokenizer,
    slots: DecodeSlots,
    eos_ids: Vec<i64>,
    commands: Receiver<Command>,
    stats: Arc<Stats>,
    config: EngineConfig,
    waiting: VecDeque<SequenceRequest>,
    running: Vec<Running>,
    deadline: Option<Instant>,
}

impl Engine {
    /// An engine over `model` and the handle that feeds it; run it with [`Engine::run`] on a
    /// thread of its own.
    pub fn new(
        model: CausalLm,
        tokenizer: Tokenizer,
        config: EngineConfig,
    ) -> (Self, EngineHandle) {
        let eos_ids = lincal_model::generate::eos_ids(&model, &tokenizer);
        let pad_id = lincal_model::generate::pad_id(&model, &tokenizer, &eos_ids);
        let slots = DecodeSlots::new(&model, config.max_batch as i64, config.max_context, pad_id);
        let (sender, commands) = std::sync::mpsc::channel();
        let stats = Arc::new(Stats::default());
        let handle = EngineHandle {
            commands: sender,
            stats: stats.clone(),
            max_queue: config.max_queue,
        };
        let engine = Engine {
            model,
            tokenizer,
            slots,
            eos_ids,
            commands,
            stats,
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            deadline: None,
        };
        (engine, handle)
    }

    /// Serves until every handle is dropped and nothing is left to do.
    pub fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.commands.recv() {
                    Ok(command) => self.take(command),
                    Err(_) => return,
                }
            }
            loop {
                match self.commands.try_recv() {
                    Ok(command) => self.take(command),
                    Err(TryRecvError::Empty) => break,
                    // Every handle is gone: finish what is left, then stop.
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                self.fail_all("the server is shutting down");
                continue;
            }
            self.drop_abandoned();
            self.admit();
            if !self.running.is_empty() {
                self.decode_step();
            }
        }
    }

    fn take(&mut self, command: Command) {
        match command {
            Command::Submit(sequences) => self.waiting.extend(sequences),
            Command::Shutdown(deadline) => self.deadline = Some(deadline),
        }
    }

    /// Frees the rows of sequences whose client went away, and forgets waiting ones.
    fn drop_abandoned(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|s| !s.events.is_closed());
        self.dequeued(before - self.waiting.len());
        let mut index = 0;
        while index < self.running.len() {
            if self.running[index].request.events.is_closed() {
                let running = self.running.swap_remove(index);
                self.slots.release(running.row);
                self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            } else {
                index += 1;
            }
        }
        self.publish_running();
    }

    fn dequeued(&self, n: usize) {
        self.stats.waiting.fetch_sub(n, Ordering::SeqCst);
    }

    fn publish_running(&self) {
        self.stats
            .running
            .store(self.running.len(), Ordering::Relaxed);
    }

    fn fail_all(&mut self, message: &str) {
        let waiting = std::mem::take(&mut self.waiting);
        self.dequeued(waiting.len());
        for sequence in waiting {
            sequence.send(Event::Failed(message.into()));
        }
        for running in std::mem::take(&mut self.running) {
            self.slots.release(running.row);
            running.request.send(Event::Failed(message.into()));
        }
        self.publish_running();
    }

    /// Moves waiting sequences into free rows, prefilled together up to the token budget
    /// (those that want prompt log-probs alone, as their logits cover every position), and
    /// samples each one's first token.
    fn admit(&mut self) {
        // Lowest rows first: a decode step runs the rows up to the last one in use.
        let mut free: Vec<usize> = (0..self.slots.rows())
            .filter(|&row| self.running.iter().all(|r| r.row != row))
            .rev()
            .collect();
        let mut budget = self.config.prefill_tokens;
        let mut admitted: Vec<(usize, SequenceRequest)> = Vec::new();
        while let (Some(front), Some(&row)) = (self.waiting.front(), free.last()) {
            let alone = front.prompt_logprobs.is_some();
            if !admitted.is_empty() && (front.prompt.len() > budget || alone) {
                break;
            }
            budget = budget.saturating_sub(front.prompt.len());
            free.pop();
            admitted.push((row, self.waiting.pop_front().expect("front exists")));
            if alone {
                break;
            }
        }
        if admitted.is_empty() {
            return;
        }
        self.dequeued(admitted.len());
        let prompt_logprobs = admitted[0].1.prompt_logprobs;
        let prompts: Vec<(usize, &[i64])> = admitted
            .iter()
            .map(|(row, s)| (*row, s.prompt.as_slice()))
            .collect();
        let started = Instant::now();
        let prefill = self
            .slots
            .prefill(&self.model, &prompts, prompt_logprobs.is_some());
        let prefill = match prefill {
            Ok(prefill) => prefill,
            Err(error) => {
                for (row, sequence) in admitted {
                    self.slots.release(row);
                    sequence.send(Event::Failed(error.to_string()));
                }
                return;
            }
        };
        let prompt_tokens: usize = admitted.iter().map(|(_, s)| s.prompt.len()).sum();
        self.stats
            .prompt_tokens
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        self.stats
            .prefill_seconds
            .add(started.elapsed().as_secs_f64());
        if let (Some(top), Some(logits)) = (prompt_logprobs, &prefill.prompt_logits) {
            let sequence = &admitted[0].1;
            sequence.send(Event::Prompt(prompt_token_logprobs(
                logits,
                &sequence.prompt,
                top,
            )));
        }
        let first = self.running.len();
        let mut generating = Vec::new();
        for (position, (row, request)) in admitted.into_iter().enumerate() {
            // A prompt scored without generating (`max_tokens` 0) ends here.
            if request.params.max_new_tokens == 0 {
                request.send(Event::Finished {
                    text: String::new(),
                    reason: FinishReason::Length,
                    stop_sequence: None,
                    completion_tokens: 0,
                });
                self.slots.release(row);
                continue;
            }
            generating.push(position as i64);
            self.running.push(Running {
                rng: ChaCha8Rng::seed_from_u64(request.seed),
                text: TextStream::new(&request.params.stop),
                request,
                row,
                generated: 0,
                next: 0,
            });
        }
        let logits = &prefill.next_logits;
        let logits = logits.index_select(
            0,
            &Tensor::from_slice(&generating).to_device(logits.device()),
        );
        let indices: Vec<usize> = (first..self.running.len()).collect();
        self.sample_and_advance(&logits, &indices);
        self.publish_running();
    }

    fn decode_step(&mut self) {
        let inputs: Vec<(usize, i64)> = self.running.iter().map(|r| (r.row, r.next)).collect();
        let started = Instant::now();
        let logits = match self.slots.step(&self.model, &inputs) {
            Ok(logits) => logits,
            Err(error) => {
                self.fail_all(&format!("decoding failed: {error}"));
                return;
            }
        };
        let rows: Vec<i64> = self.running.iter().map(|r| r.row as i64).collect();
        let logits = logits.index_select(0, &Tensor::from_slice(&rows).to_device(logits.device()));
        let indices: Vec<usize> = (0..self.running.len()).collect();
        self.sample_and_advance(&logits, &indices);
        self.stats
            .record_step(rows.len(), started.elapsed().as_secs_f64());
        self.publish_running();
    }

    /// Samples one token for each of `self.running[indices]` from `logits` (one row each, in
    /// that order), hands it to its request, and retires the sequences that ended.
    fn sample_and_advance(&mut self, logits: &Tensor, indices: &[usize]) {
        let tokens = tch::no_grad(|| self.sample(logits, indices));
        let mut ended = Vec::new();
        for (&index, (token, logprob)) in indices.iter().zip(tokens) {
            if let Some(last) = self.advance(index, token, logprob) {
                ended.push((index, last));
            }
        }
        ended.sort_unstable_by_key(|(index, _)| *index);
        let mut retired = Vec::new();
        for (index, last) in ended.into_iter().rev() {
            let running = self.running.swap_remove(index);
            self.slots.release(running.row);
            retired.push((running.request, last));
        }
        // Counted out before the client hears the end, so `/metrics` never shows a finished
        // sequence as running.
        self.publish_running();
        for (request, last) in retired {
            request.send(last);
        }
    }

    /// Draws the tokens: rows sharing temperature, top-p and top-k go through
    /// [`sample_next`] together, each with the next draw of its own stream.
    fn sample(&mut self, logits: &Tensor, indices: &[usize]) -> Vec<(i64, Option<TokenLogprob>)> {
        let mut out = vec![(0, None); indices.len()];
        let mut groups: Vec<(SamplingParams, Vec<usize>)> = Vec::new();
        for (position, &index) in indices.iter().enumerate() {
            let p = &self.running[index].request.params;
            let key = SamplingParams {
                temperature: p.temperature,
                top_p: p.top_p,
                top_k: p.top_k,
                ..SamplingParams::default()
            };
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(position),
                None => groups.push((key, vec![position])),
            }
        }
        let device = logits.device();
        for (params, members) in groups {
            let select = Tensor::from_slice(&members.iter().map(|&m| m as i64).collect::<Vec<_>>())
                .to_device(device);
            let group_logits = logits.index_select(0, &select);
            let draws: Vec<f32> = members
                .iter()
                .map(|&m| self.running[indices[m]].rng.random::<f32>())
                .collect();
            let (tokens, _) = sample_next(
                &group_logits,
                &params,
                &Tensor::from_slice(&draws).to_device(device),
            );
            let tokens = Vec::<i64>::try_from(tokens.to_device(tch::Device::Cpu)).expect("ids");
            let top = members
                .iter()
                .filter_map(|&m| self.running[indices[m]].request.logprobs)
                .max();
            let logprobs = top.map(|top| token_logprobs(&group_logits, &tokens, top));
            for (i, &m) in members.iter().enumerate() {
                let wanted = self.running[indices[m]].request.logprobs;
                let logprob = logprobs.as_ref().zip(wanted).map(|(all, top)| {
                    let mut one = all[i].clone();
                    one.top.truncate(top);
                    one
                });
                out[m] = (tokens[i], logprob);
            }
        }
        out
    }

    /// Gives `token` to sequence `index`; returns the event that ends it, when it has ended.
    fn advance(
        &mut self,
        index: usize,
        token: i64,
        logprob: Option<TokenLogprob>,
    ) -> Option<Event> {
        let capacity = self.slots.capacity();
        let running = &mut self.running[index];
        running.generated += 1;
        self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let reason = if self.eos_ids.contains(&token) {
            FinishReason::Eos
        } else {
            let piece = match running.text.push(&self.tokenizer, token) {
                Ok(piece) => piece,
                Err(error) => return Some(Event::Failed(error.to_string())),
            };
            running.request.send(Event::Token {
                text: piece,
                logprob,
            });
            let full = (running.request.prompt.len() + running.generated) as i64 >= capacity;
            if running.text.stopped() {
                FinishReason::Stop
            } else if running.generated as i64 >= running.request.params.max_new_tokens || full {
                FinishReason::Length
            } else {
                running.next = token;
                return None;
            }
        };
        self.stats.finished.fetch_add(1, Ordering::Relaxed);
        let text = match running.text.finish(&self.tokenizer) {
            Ok(text) => text,
            Err(error) => return Some(Event::Failed(error.to_string())),
        };
        Some(Event::Finished {
            text,
            reason,
            stop_sequence: running.text.stopped_by().map(str::to_string),
            completion_tokens: running.generated,
        })
    }
}

/// Log-probs of `tokens[i]` under row `i` of `logits` `[n, V]`, with the `top` most likely.
fn token_logprobs(logits: &Tensor, tokens: &[i64], top: usize) -> Vec<TokenLogprob> {
    let logp = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
    let chosen = logp.gather(
        -1,
        &Tensor::from_slice(tokens)
            .to_device(logp.device())
            .unsqueeze(-1),
        false,
    );
    let chosen =
        Vec::<f32>::try_from(chosen.flatten(0, -1).to_device(tch::Device::Cpu)).expect("log-probs");
    let alternatives = top_alternatives(&logp, top);
    tokens
        .iter()
        .zip(chosen)
        .zip(alternatives)
        .map(|((&token, logprob), top)| TokenLogprob {
            token,
            logprob,
            top,
        })
        .collect()
}

/// The `top` most likely tokens of each row of `logp` `[n, V]`, best first.
fn top_alternatives(logp: &Tensor, top: usize) -> Vec<Vec<(i64, f32)>> {
    let rows = logp.size()[0] as usize;
    if top == 0 {
        return vec![Vec::new(); rows];
    }
    let (values, ids) = logp.topk(top as i64, -1, true, true);
    let values = Vec::<Vec<f32>>::try_from(values.to_device(tch::Device::Cpu)).expect("2-d");
    let ids = Vec::<Vec<i64>>::try_from(ids.to_device(tch::Device::Cpu)).expect("2-d");
    ids.into_iter()
        .zip(values)
        .map(|(ids, values)| ids.into_iter().zip(values).collect())
        .collect()
}

/// Log-probs of each prompt token given the ones before it, from a lone prompt's prefill
/// logits `[1, P, V]`.
fn prompt_token_logprobs(logits: &Tensor, prompt: &[i64], top: usize) -> Vec<Option<TokenLogprob>> {
    let len = prompt.len() as i64;
    let predicting = logits.get(0).narrow(0, 0, len - 1);
    let mut out = vec![None];
    if len > 1 {
        out.extend(
            token_logprobs(&predicting, &prompt[1..], top)
                .into_iter()
                .map(Some),
        );
    }
    out
}
