//! Continuous batching: a fixed set of decode rows over one KV cache, which sequences join
//! (a prefill into a free row) and leave (a release) between decode steps, so a short request
//! need not wait for the longest one in its batch. Rows sit at different lengths, so each
//! writes its own cache slot; the step itself is [`crate::generate`]'s, CUDA graphs included.

use crate::error::{ModelError, Result};
use crate::generate::{DecodeState, Decoder, PREFILL_TOKENS, left_pad, prefill, window};
use crate::layers::positions_from_mask;
use crate::model::CausalLm;
use tch::{Kind, Tensor};

pub struct DecodeSlots {
    decoder: Decoder,
    /// Tokens in the cache of each row; 0 for a free row.
    lengths: Vec<i64>,
    /// The input of rows without a sequence.
    pad_id: i64,
}

/// What a prefill computed for its prompts.
pub struct Prefill {
    /// `[n, V]` logits of the token after each prompt.
    pub next_logits: Tensor,
    /// `[n, W, V]` logits at every prompt position, prompts right-aligned in width `W`
    /// (prompt `i`'s token `j` is predicted at `W - len_i + j - 1`); only when asked for.
    pub prompt_logits: Option<Tensor>,
}

impl DecodeSlots {
    /// `rows` empty rows of `capacity` tokens each (prompt and generated).
    pub fn new(model: &CausalLm, rows: i64, capacity: i64, pad_id: i64) -> Self {
        let device = model.device();
        let state = DecodeState {
            input_ids: Tensor::zeros([rows, 1], (Kind::Int64, device)),
            positions: Tensor::zeros([rows, 1], (Kind::Int64, device)),
            slots: Tensor::zeros([rows], (Kind::Int64, device)),
            key_mask: Tensor::zeros([rows, capacity], (Kind::Bool, device)),
            cache: model.new_cache(rows, capacity),
        };
        DecodeSlots {
            decoder: Decoder::new(model, state),
            lengths: vec![0; rows as usize],
            pad_id,
        }
    }

    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// Tokens a row holds at most.
    pub fn capacity(&self) -> i64 {
        self.decoder.state.cache.capacity()
    }

    /// Tokens in row `row`'s cache (0: free).
    pub fn length(&self, row: usize) -> i64 {
        self.lengths[row]
    }

    /// Runs `prompts` (row, token ids) through the model (in passes of at most
    /// [`PREFILL_TOKENS`] tokens) and puts each in its row, replacing what the row held.
    /// Returns the logits of the token after each prompt and, with `prompt_logits`, those at
    /// every prompt position.
    pub fn prefill(
        &mut self,
        model: &CausalLm,
        prompts: &[(usize, &[i64])],
        prompt_logits: bool,
    ) -> Result<Prefill> {
        if prompts.is_empty() {
            return Err(ModelError::Invalid("no prompts to prefill".into()));
        }
        for &(row, prompt) in prompts {
            if row >= self.rows() {
                return Err(ModelError::Invalid(format!(
                    "row {row} of {} decode rows",
                    self.rows()
                )));
            }
            if prompt.is_empty() || prompt.len() as i64 >= self.capacity() {
                return Err(ModelError::Invalid(format!(
                    "a prompt of {} tokens does not fit a row of {} (it needs at least one token and room for one more)",
                    prompt.len(),
                    self.capacity()
                )));
            }
        }
        let device = model.device();
        let ids: Vec<Vec<i64>> = prompts.iter().map(|(_, p)| p.to_vec()).collect();
        tch::no_grad(|| {
            let (input_ids, mask) = left_pad(&ids, self.pad_id, device);
            let width = input_ids.size()[1];
            let cache = model.new_cache(prompts.len() as i64, width);
            // The prompts' logits only where asked for (an empty tensor a pass otherwise).
            let [next_logits, all_logits] = prefill(
                model,
                (&input_ids, &mask, &positions_from_mask(&mask)),
                &cache,
                PREFILL_TOKENS,
                |hidden| {
                    let all = if prompt_logits {
                        model.logits(hidden)
                    } else {
                        Tensor::zeros([0], (Kind::Float, device))
                    };
                    [model.logits(&hidden.select(1, -1)), all]
                },
            );
            let state = &mut self.decoder.state;
            for (i, &(row, prompt)) in prompts.iter().enumerate() {
                let len = prompt.len() as i64;
                state
                    .cache
                    .copy_row(row as i64, &cache, i as i64, width - len, len);
                let mut key_row = state.key_mask.get(row as i64);
                let _ = key_row.fill_(0);
                let _ = key_row.narrow(0, 0, len).fill_(1);
                self.lengths[row] = len;
            }
            Ok(Prefill {
                next_logits,
                prompt_logits: prompt_logits.then_some(all_logits),
            })
        })
    }

    /// One decode step: feeds `inputs` (row, token) to their rows, each at its next slot, and
    /// returns the logits `[R, V]` of the next token of the first `R` rows, `R` covering every
    /// row fed (meaningless for rows not fed). A row that is full is refused before anything
    /// runs.
    pub fn step(&mut self, model: &CausalLm, inputs: &[(usize, i64)]) -> Result<Tensor> {
        let rows = self.rows();
        let mut ids = vec![self.pad_id; rows];
        let mut slots = vec![0i64; rows];
        for &(row, token) in inputs {
            if row >= rows || self.lengths[row] == 0 {
                return Err(ModelError::Invalid(format!(
                    "decode row {row} holds no sequence"
                )));
            }
            if self.lengths[row] >= self.capacity() {
                return Err(ModelError::Invalid(format!(
                    "decode row {row} is full ({} tokens)",
                    self.capacity()
                )));
            }
            ids[row] = token;
            slots[row] = self.lengths[row];
        }
        let written = inputs
            .iter()
            .map(|&(row, _)| self.lengths[row] + 1)
            .max()
            .unwrap_or(1);
        // Only the rows up to the last one fed run, rounded up to a power of two so that few
        // shapes (and CUDA graphs) are needed: a step of one sequence costs a step of one
        // row, not of the whole table. Sequences should take the lowest free rows.
        let last = inputs.iter().map(|&(row, _)| row + 1).max().unwrap_or(1);
        let step_rows = last.next_power_of_two().min(rows) as i64;
        let device = model.device();
        let state = &mut self.decoder.state;
        // Rows without a sequence write slot 0 and see it, so no row is fully masked (NaN);
        // a prefill overwrites that slot before the row is used again.
        let slots = Tensor::from_slice(&slots).to_device(device);
        state.slots.copy_(&slots);
        state.positions.copy_(&slots.unsqueeze(1));
        state
            .input_ids
            .copy_(&Tensor::from_slice(&ids).to_device(device).unsqueeze(1));
        state.mark_written();
        let visible = window(written, self.capacity());
        let logits = tch::no_grad(|| self.decoder.logits(model, step_rows, visible))?;
        for &(row, _) in inputs {
            self.lengths[row] += 1;
        }
        Ok(logits)
    }

    /// Frees row `row` for another sequence.
    pub fn release(&mut self, row: usize) {
        self.lengths[row] = 0;
        let _ = self.decoder.state.key_mask.get(row as i64).fill_(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{BatchRequest, SamplingParams, generate_batch};
    use crate::testing::{random_model, tiny_llama};

    /// Greedy logits of one prompt decoded alone by `generate_batch`.
    fn alone(model: &CausalLm, prompt: &[i64], steps: i64) -> (Vec<i64>, Vec<f32>) {
        let params = SamplingParams {
            temperature: 0.0,
            max_new_tokens: steps,
            ..SamplingParams::default()
        };
        let prompts = [prompt.to_vec()];
        let batch =
            generate_batch(model, &BatchRequest::new(&prompts, &[0], &params), None).unwrap();
        (
            Vec::<i64>::try_from(batch.tokens.get(0)).unwrap(),
            Vec::<f32>::try_from(batch.logprobs.get(0)).unwrap(),
        )
    }

    /// Sequences that join and leave a shared set of rows at different times, at different
    /// lengths, decode exactly what each decodes alone: the per-row slots, masks and positions
    /// keep the rows apart, and a released row holds nothing of its last sequence.
    #[test]
    fn sequences_joining_and_leaving_decode_as_they_would_alone() {
        let model = random_model(tiny_llama(false), 11);
        let prompts: [&[i64]; 4] = [&[5, 9, 2], &[7, 1, 3, 3, 8, 12, 4], &[20], &[6, 6, 6, 6]];
        let steps = [6usize, 3, 9, 5];
        // Join at these steps; row 1 is released after prompt 1 and reused by prompt 3.
        let joins = [0usize, 1, 2, 4];
        let rows = [0usize, 1, 2, 1];
        let mut slots = DecodeSlots::new(&model, 3, 24, 0);
        let mut got: Vec<(Vec<i64>, Vec<f32>)> = vec![Default::default(); 4];
        let mut next: Vec<Option<i64>> = vec![None; 4];
        let greedy = |logits: &Tensor| -> (i64, f32) {
            let logp = logits.log_softmax(-1, Kind::Float);
            let token = logp.argmax(-1, false).int64_value(&[]);
            (token, logp.double_value(&[token]) as f32)
        };
        for tick in 0..20 {
            for seq in 0..4 {
                if joins[seq] == tick {
                    let prefill = slots
                        .prefill(&model, &[(rows[seq], prompts[seq])], false)
                        .unwrap();
                    let (token, logp) = greedy(&prefill.next_logits.get(0));
                    got[seq].0.push(token);
                    got[seq].1.push(logp);
                    next[seq] = Some(token);
                }
            }
            let active: Vec<(usize, usize)> = (0..4)
                .filter(|&s| next[s].is_some() && got[s].0.len() < steps[s])
                .map(|s| (s, rows[s]))
                .collect();
            for seq in 0..4 {
                if next[seq].is_some() && got[seq].0.len() == steps[seq] {
                    slots.release(rows[seq]);
                    next[seq] = None;
                }
            }
            if active.is_empty() {
                continue;
            }
            let inputs: Vec<(usize, i64)> = active
                .iter()
                .map(|&(s, row)| (row, next[s].unwrap()))
                .collect();
            let logits = slots.step(&model, &inputs).unwrap();
            for &(seq, row) in &active {
                let (token, logp) = greedy(&logits.get(row as i64));
                got[seq].0.push(token);
                got[seq].1.push(logp);
                next[seq] = Some(token);
            }
        }
        for seq in 0..4 {
            let (tokens, logprobs) = alone(&model, prompts[seq], steps[seq] as i64);
            assert_eq!(got[seq].0, tokens, "sequence {seq}");
            for (a, b) in got[seq].1.iter().zip(&logprobs) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "sequence {seq}: {:?} vs {logprobs:?}",
                    got[seq].1
                );
            }
        }
    }

    #[test]
    fn prompts_that_do_not_fit_and_empty_rows_are_refused() {
        let model = random_model(tiny_llama(false), 11);
        let mut slots = DecodeSlots::new(&model, 2, 4, 0);
        assert!(slots.prefill(&model, &[(0, &[1, 2, 3, 4])], false).is_err());
        assert!(slots.prefill(&model, &[(2, &[1])], false).is_err());
        assert!(slots.step(&model, &[(1, 5)]).is_err());
        slots.prefill(&model, &[(0, &[1, 2, 3])], false).unwrap();
        // A step of row 0 alone runs one row, not both.
        assert_eq!(slots.step(&model, &[(0, 5)]).unwrap().size(), [1, 64]);
        let full = slots.step(&model, &[(0, 5)]).unwrap_err().to_string();
        assert!(full.contains("full"), "{full}");
    }

    /// Prompt logits of a prefill are the plain forward pass's, for right-aligned prompts.
    #[test]
    fn prompt_logits_match_a_plain_forward_pass() {
        let model = random_model(tiny_llama(false), 11);
        let mut slots = DecodeSlots::new(&model, 2, 16, 0);
        let prompts: [&[i64]; 2] = [&[3, 4, 5, 6, 7], &[9, 10]];
        let prefill = slots
            .prefill(&model, &[(0, prompts[0]), (1, prompts[1])], true)
            .unwrap();
        let all = prefill.prompt_logits.unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            let ids = Tensor::from_slice(prompt).unsqueeze(0);
            let positions =
                Tensor::arange(prompt.len() as i64, (Kind::Int64, tch::Device::Cpu)).unsqueeze(0);
            let expected = model
                .logits(&model.forward(&ids, &positions, None, None))
                .get(0);
            let width = all.size()[1];
            let got = all
                .get(i as i64)
                .narrow(0, width - prompt.len() as i64, prompt.len() as i64);
            let diff = (got - expected).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "prompt {i}: max abs diff {diff}");
        }
    }
}
