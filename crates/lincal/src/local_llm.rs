//! The local engine behind the `Llm` trait, so that any lincal model can play a teacher,
//! reader or judge role, or be the model under evaluation, exactly where an API model could.

use anyhow::Result;
use lincal_llm::{
    Choice, FinishReason, Llm, LlmError, LlmRequest, LlmResponse, Prompt, TokenUsage,
};
use lincal_model::checkpoint::SafetensorsCheckpoint;
use lincal_model::{
    CausalLm, ChatTurn, Generation, ModelConfig, SamplingParams, Tokenizer, generate_text,
};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct LocalLlm {
    /// Tensors are not `Sync`; one caller at a time uses the GPU anyway.
    engine: Mutex<Engine>,
    /// The model directory and a fingerprint of its weights: the cache key must change when
    /// the weights do.
    name: String,
    batch_size: usize,
}

/// The tokenizer, and the weights once a request needs them: a stage that turns out to be
/// finished (or answered from the cache) never spends the time or memory to load them.
struct Engine {
    model: Option<CausalLm>,
    tokenizer: Tokenizer,
    dir: PathBuf,
    device: tch::Device,
    kind: tch::Kind,
}

impl Engine {
    fn loaded(&mut self) -> Result<(&CausalLm, &Tokenizer)> {
        if self.model.is_none() {
            self.model = Some(CausalLm::load(&self.dir, self.device, Some(self.kind))?);
        }
        Ok((self.model.as_ref().expect("loaded above"), &self.tokenizer))
    }
}

impl LocalLlm {
    /// Reads the config and tokenizer of the model in `dir` and checks that they fit; the
    /// weights are loaded at the first request.
    pub fn load(
        dir: &Path,
        device: tch::Device,
        kind: tch::Kind,
        batch_size: usize,
    ) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        SafetensorsCheckpoint::open(dir)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        tokenizer.check_model_vocab(config.vocab_size())?;
        let name = format!(
            "{}#{}",
            dir.canonicalize()?.display(),
            weights_fingerprint(dir)?
        );
        let engine = Engine {
            model: None,
            tokenizer,
            dir: dir.to_path_buf(),
            device,
            kind,
        };
        Ok(LocalLlm {
            engine: Mutex::new(engine),
            name,
            batch_size: batch_size.max(1),
        })
    }
}

/// Sizes and modification times of the weight files, hashed: cheap, and it changes whenever
/// a checkpoint is rewritten.
fn weights_fingerprint(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort_by_key(|e| e.file_name());
    let mut hash = Sha256::new();
    for file in files {
        let meta = file.metadata()?;
        let mtime = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        hash.update(format!("{:?} {} {mtime};", file.file_name(), meta.len()));
    }
    Ok(format!("{:x}", hash.finalize())[..16].to_string())
}

/// One sample to draw: request `request`, sample `sample` of its `n`.
struct Row {
    request: usize,
    ids: Vec<i64>,
    seed: u64,
}

impl Llm for LocalLlm {
    fn backend(&self) -> &str {
        "local"
    }

    fn model(&self) -> &str {
        &self.name
    }

    fn max_batch(&self) -> usize {
        self.batch_size
    }

    fn generate(&self, requests: &[LlmRequest]) -> Vec<Result<LlmResponse, LlmError>> {
        let mut engine = self
            .engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (model, tokenizer) = match engine.loaded() {
            Ok(loaded) => loaded,
            Err(error) => {
                let message = format!("loading the weights in {}: {error:#}", self.name);
                return requests
                    .iter()
                    .map(|_| {
                        Err(LlmError::Backend {
                            message: message.clone(),
                            retryable: false,
                        })
                    })
                    .collect();
            }
        };
        let mut results: Vec<Result<LlmResponse, LlmError>> = requests
            .iter()
            .map(|_| {
                Ok(LlmResponse {
                    choices: Vec::new(),
                    usage: Some(TokenUsage::default()),
                })
            })
            .collect();
        // Requests sharing sampling settings are decoded together, `batch_size` samples at a
        // time; sample j of a request uses seed + j, as the Anthropic backend does.
        let mut groups: Vec<(SamplingParams, Vec<Row>)> = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            let rendered = request
                .validate()
                .and_then(|()| encode_prompt(tokenizer, &request.prompt));
            let ids = match rendered {
                Ok(ids) => ids,
                Err(error) => {
                    results[index] = Err(error);
                    continue;
                }
            };
            let params = sampling_params(request);
            let rows = (0..request.params.n).map(|j| Row {
                request: index,
                ids: ids.clone(),
                seed: request.params.seed.wrapping_add(u64::from(j)),
            });
            match groups.iter_mut().find(|(p, _)| *p == params) {
                Some((_, group)) => group.extend(rows),
                None => groups.push((params, rows.collect())),
            }
        }
        for (params, rows) in &groups {
            for chunk in rows.chunks(self.batch_size) {
                let prompts: Vec<Vec<i64>> = chunk.iter().map(|row| row.ids.clone()).collect();
                let seeds: Vec<u64> = chunk.iter().map(|row| row.seed).collect();
                match generate_text(model, tokenizer, &prompts, &seeds, params, None) {
                    Ok(generations) => {
                        for (row, generation) in chunk.iter().zip(generations) {
                            if let Ok(response) = &mut results[row.request] {
                                add_sample(response, row.ids.len(), generation);
                            }
                        }
                    }
                    Err(error) => {
                        for row in chunk {
                            results[row.request] = Err(LlmError::Backend {
                                message: error.to_string(),
                                retryable: false,
                            });
                        }
                    }
                }
            }
        }
        results
    }
}

fn encode_prompt(tokenizer: &Tokenizer, prompt: &Prompt) -> Result<Vec<i64>, LlmError> {
    let invalid = |e: lincal_model::ModelError| LlmError::InvalidRequest(e.to_string());
    match prompt {
        // Chat templates already hold any BOS text, so only raw completions get special tokens.
        Prompt::Chat(messages) => {
            let messages: Vec<ChatTurn> = messages
                .iter()
                .map(|m| ChatTurn::new(m.role.as_str(), &m.content))
                .collect();
            tokenizer.encode_chat(&messages).map_err(invalid)
        }
        Prompt::Completion(text) => tokenizer.encode(text, true).map_err(invalid),
    }
}

fn sampling_params(request: &LlmRequest) -> SamplingParams {
    let p = &request.params;
    SamplingParams {
        temperature: p.temperature,
        top_p: p.top_p.unwrap_or(1.0),
        top_k: 0,
        max_new_tokens: i64::from(p.max_tokens),
        stop: p.stop.clone(),
    }
}

fn add_sample(response: &mut LlmResponse, prompt_tokens: usize, generation: Generation) {
    let finish_reason = match generation.finish_reason {
        lincal_model::FinishReason::Eos | lincal_model::FinishReason::Stop => FinishReason::Stop,
        lincal_model::FinishReason::Length => FinishReason::Length,
    };
    let usage = response.usage.get_or_insert_with(TokenUsage::default);
    usage.prompt_tokens += prompt_tokens as u64;
    usage.completion_tokens += generation.tokens.len() as u64;
    response.choices.push(Choice {
        text: generation.text,
        finish_reason: Some(finish_reason),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use lincal_model::testing::{random_model, tiny_llama, write_tokenizer};

    fn local(dir: &Path, batch_size: usize) -> LocalLlm {
        random_model(tiny_llama(true), 3)
            .save(dir, usize::MAX)
            .unwrap();
        write_tokenizer(dir, 64);
        LocalLlm::load(dir, tch::Device::Cpu, tch::Kind::Float, batch_size).unwrap()
    }

    fn request(prompt: &str, n: u32, seed: u64) -> LlmRequest {
        LlmRequest::completion(
            prompt,
            lincal_llm::SamplingParams {
                n,
                temperature: 1.0,
                max_tokens: 6,
                seed,
                ..Default::default()
            },
        )
    }

    /// Sample j of a request is what the engine draws with seed + j, whatever the batching,
    /// and usage counts the prompt once per sample.
    #[test]
    fn samples_use_consecutive_seeds_and_report_usage() {
        let dir = tempfile::tempdir().unwrap();
        let llm = local(dir.path(), 2);
        let results = llm.generate(&[request("t3 t4", 2, 7), request("t5", 1, 9)]);
        let mut engine = llm.engine.lock().unwrap();
        let (model, tokenizer) = engine.loaded().unwrap();
        let params = sampling_params(&request("", 1, 0));
        let ids = tokenizer.encode("t3 t4", true).unwrap();
        let expected = generate_text(
            model,
            tokenizer,
            &[ids.clone(), ids.clone()],
            &[7, 8],
            &params,
            None,
        )
        .unwrap();
        let first = results[0].as_ref().unwrap();
        assert_eq!(
            first.texts().collect::<Vec<_>>(),
            expected.iter().map(|g| g.text.as_str()).collect::<Vec<_>>()
        );
        let usage = first.usage.unwrap();
        assert_eq!(usage.prompt_tokens, 2 * ids.len() as u64);
        assert_eq!(
            usage.completion_tokens,
            expected.iter().map(|g| g.tokens.len() as u64).sum::<u64>()
        );
        let alone = generate_text(
            model,
            tokenizer,
            &[tokenizer.encode("t5", true).unwrap()],
            &[9],
            &params,
            None,
        )
        .unwrap();
        assert_eq!(results[1].as_ref().unwrap().text(), alone[0].text);
    }

    /// The weights are read at the first request, not before: weights broken after `load`
    /// fail that request with an error naming the directory.
    #[test]
    fn weights_load_at_the_first_request() {
        let dir = tempfile::tempdir().unwrap();
        let llm = local(dir.path(), 4);
        assert!(llm.engine.lock().unwrap().model.is_none());
        std::fs::write(dir.path().join("model.safetensors"), b"not a checkpoint").unwrap();
        let results = llm.generate(&[request("t3", 1, 1), request("t4", 1, 2)]);
        for result in results {
            match result {
                Err(LlmError::Backend {
                    message,
                    retryable: false,
                }) => assert!(
                    message.starts_with("loading the weights in ")
                        && message.contains("model.safetensors"),
                    "{message}"
                ),
                other => panic!("{other:?}"),
            }
        }
        // A directory without weights is refused at once.
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        let err = LocalLlm::load(dir.path(), tch::Device::Cpu, tch::Kind::Float, 4)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("no model.safetensors or model.safetensors.index.json here"),
            "{err}"
        );
    }

    /// A bad request fails alone; the rest of the batch is answered.
    #[test]
    fn an_invalid_request_does_not_sink_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let llm = local(dir.path(), 4);
        let mut bad = request("t3", 1, 1);
        bad.params.max_tokens = 0;
        let results = llm.generate(&[bad, request("t3", 1, 1)]);
        assert!(
            matches!(results[0], Err(LlmError::InvalidRequest(_))),
            "{:?}",
            results[0]
        );
        assert_eq!(results[1].as_ref().unwrap().choices.len(), 1);
    }

    /// Chat requests go through the model's chat template.
    #[test]
    fn chat_requests_use_the_chat_template() {
        let dir = tempfile::tempdir().unwrap();
        let llm = local(dir.path(), 4);
        let params = lincal_llm::SamplingParams {
            temperature: 0.0,
            max_tokens: 5,
            ..Default::default()
        };
        let chat = LlmRequest::chat(vec![lincal_llm::ChatMessage::user("t3 t4")], params.clone());
        let got = llm.generate(&[chat]).remove(0).unwrap();
        let mut engine = llm.engine.lock().unwrap();
        let (model, tokenizer) = engine.loaded().unwrap();
        let text = tokenizer
            .apply_chat_template(&[ChatTurn::new("user", "t3 t4")], true)
            .unwrap();
        let greedy = SamplingParams {
            temperature: 0.0,
            max_new_tokens: 5,
            ..Default::default()
        };
        let expected = generate_text(
            model,
            tokenizer,
            &[tokenizer.encode(&text, false).unwrap()],
            &[0],
            &greedy,
            None,
        )
        .unwrap();
        assert_eq!(got.text(), expected[0].text);
        assert_eq!(
            got.usage.unwrap().prompt_tokens,
            tokenizer.encode(&text, false).unwrap().len() as u64
        );
    }
}
