use crate::{Llm, LlmError, LlmRequest, LlmResponse, generate_checked};

/// A request whose every sample parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    /// One parsed value per sample, in order.
    pub values: Vec<T>,
    /// The response they came from.
    pub response: LlmResponse,
    /// Calls it took (1 when the first answer parsed).
    pub attempts: u32,
    /// The seed of the answer that parsed.
    pub seed: u64,
}

/// A request that never produced a parseable answer. Write it to the run's artifact: nothing
/// is dropped silently.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseFailure {
    /// Every answer failed to parse; this is the last one.
    #[error(
        "no parseable answer in {attempts} attempts (last seed {seed}): {error}; \
         last answer: {raw_text:?}"
    )]
    Unparseable {
        raw_text: String,
        error: String,
        attempts: u32,
        seed: u64,
    },
    /// The call itself failed (after the client's own retries).
    #[error("call failed on attempt {attempts}: {error}")]
    Call { error: LlmError, attempts: u32 },
}

/// Asks `llm` every request and parses every sample of the answer with `parse`; a request whose
/// answer does not parse is asked again with seed `seed + 1`, then `seed + 2`, ... up to
/// `max_attempts` calls in all (at least one). Each round is one batch, so a batching backend
/// answers all re-asks together, and with an [`crate::LlmClient`] every answer is cached, so a
/// re-run repeats none of them.
///
/// Returns one outcome per request, in order.
pub fn generate_parsed<T>(
    llm: &dyn Llm,
    requests: &[LlmRequest],
    max_attempts: u32,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Vec<Result<Parsed<T>, ParseFailure>> {
    generate_parsed_indexed(llm, requests, max_attempts, |_, text| parse(text))
}

/// [`generate_parsed`] with a parser that is also told which request the answer is for (its
/// index in `requests`), for values that must pass a check of their own request, such as not
/// containing that request's answer: a value the parser refuses is asked again like any
/// unparseable answer.
pub fn generate_parsed_indexed<T>(
    llm: &dyn Llm,
    requests: &[LlmRequest],
    max_attempts: u32,
    parse: impl Fn(usize, &str) -> Result<T, String>,
) -> Vec<Result<Parsed<T>, ParseFailure>> {
    let mut outcomes: Vec<Option<Result<Parsed<T>, ParseFailure>>> =
        requests.iter().map(|_| None).collect();
    let mut open: Vec<usize> = (0..requests.len()).collect();
    for attempt in 1..=max_attempts.max(1) {
        if open.is_empty() {
            break;
        }
        let asked: Vec<LlmRequest> = open
            .iter()
            .map(|&i| {
                requests[i].with_seed(requests[i].params.seed.wrapping_add(u64::from(attempt - 1)))
            })
            .collect();
        let results = generate_checked(llm, &asked);
        let mut still_open = Vec::new();
        for ((index, request), result) in open.into_iter().zip(&asked).zip(results) {
            let seed = request.params.seed;
            outcomes[index] = Some(match result {
                Err(error) => Err(ParseFailure::Call {
                    error,
                    attempts: attempt,
                }),
                Ok(response) => match parse_samples(&response, |text| parse(index, text)) {
                    Ok(values) => Ok(Parsed {
                        values,
                        response,
                        attempts: attempt,
                        seed,
                    }),
                    Err((raw_text, error)) => {
                        still_open.push(index);
                        Err(ParseFailure::Unparseable {
                            raw_text,
                            error,
                            attempts: attempt,
                            seed,
                        })
                    }
                },
            });
        }
        open = still_open;
    }
    outcomes
        .into_iter()
        .map(|outcome| outcome.expect("every request was asked at least once"))
        .collect()
}

/// Parses every sample, or gives the first unparseable text with its error.
fn parse_samples<T>(
    response: &LlmResponse,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, (String, String)> {
    response
        .texts()
        .map(|text| parse(text).map_err(|error| (text.to_string(), error)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeLlm;
    use crate::{SamplingParams, TokenUsage};

    fn number(text: &str) -> Result<i64, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a whole number"))
    }

    fn request(prompt: &str, seed: u64) -> LlmRequest {
        LlmRequest::completion(
            prompt,
            SamplingParams {
                seed,
                ..SamplingParams::default()
            },
        )
    }

    #[test]
    fn unparseable_answers_are_asked_again_with_the_next_seed_until_the_limit() {
        // "good" parses from seed 11 on; "bad" never parses.
        let fake = FakeLlm::new(|request| {
            let seed = request.params.seed;
            let text = match &request.prompt {
                crate::Prompt::Completion(p) if p == "good" && seed >= 11 => seed.to_string(),
                _ => format!("seed {seed}: no idea"),
            };
            Ok(LlmResponse::from_texts([text]))
        });
        let outcomes = generate_parsed(
            &fake,
            &[request("good", 10), request("bad", 20), request("first", 5)],
            3,
            |t| {
                if t.starts_with("seed 5") {
                    Ok(-1)
                } else {
                    number(t)
                }
            },
        );
        assert_eq!(
            outcomes[0],
            Ok(Parsed {
                values: vec![11],
                response: LlmResponse::from_texts(["11"]),
                attempts: 2,
                seed: 11
            })
        );
        assert_eq!(
            outcomes[1],
            Err(ParseFailure::Unparseable {
                raw_text: "seed 22: no idea".into(),
                error: "\"seed 22: no idea\" is not a whole number".into(),
                attempts: 3,
                seed: 22,
            })
        );
        assert_eq!(outcomes[2].as_ref().unwrap().attempts, 1);
        let seeds: Vec<u64> = fake.requests().iter().map(|r| r.params.seed).collect();
        // Round 1 asks all three, round 2 the two open ones, round 3 only "bad".
        assert_eq!(seeds, [10, 20, 5, 11, 21, 22]);
        assert_eq!(fake.batch_sizes(), [3, 2, 1]);
    }

    #[test]
    fn an_indexed_parser_checks_each_answer_against_its_own_request() {
        // The answer is the seed; request 0 refuses its first seed, request 1 takes anything.
        let fake =
            FakeLlm::new(|request| Ok(LlmResponse::from_texts([request.params.seed.to_string()])));
        let outcomes = generate_parsed_indexed(
            &fake,
            &[request("a", 0), request("b", 10)],
            3,
            |index, text| match (index, number(text)?) {
                (0, 0) => Err("seed 0 is refused for request 0".to_string()),
                (_, value) => Ok(value),
            },
        );
        let parsed: Vec<(Vec<i64>, u32)> = outcomes
            .into_iter()
            .map(|outcome| {
                let parsed = outcome.unwrap();
                (parsed.values, parsed.attempts)
            })
            .collect();
        assert_eq!(parsed, [(vec![1], 2), (vec![10], 1)]);
        let seeds: Vec<u64> = fake.requests().iter().map(|r| r.params.seed).collect();
        assert_eq!(seeds, [0, 10, 1]);
    }

    #[test]
    fn every_sample_must_parse_and_call_failures_are_kept() {
        let fake = FakeLlm::new(|request| match request.params.seed {
            0 => Ok(LlmResponse::from_texts(["1", "x"])),
            1 => Ok(LlmResponse {
                usage: Some(TokenUsage::default()),
                ..LlmResponse::from_texts(["1", "2"])
            }),
            _ => Err(LlmError::InvalidRequest("too long".into())),
        });
        let two = SamplingParams {
            n: 2,
            ..SamplingParams::default()
        };
        let failing = LlmRequest::completion(
            "q",
            SamplingParams {
                seed: 9,
                ..two.clone()
            },
        );
        let outcomes = generate_parsed(
            &fake,
            &[LlmRequest::completion("q", two), failing],
            5,
            number,
        );
        assert_eq!(outcomes[0].as_ref().unwrap().values, [1, 2]);
        assert_eq!(
            outcomes[1],
            Err(ParseFailure::Call {
                error: LlmError::InvalidRequest("too long".into()),
                attempts: 1
            })
        );
        assert_eq!(
            outcomes[1].as_ref().unwrap_err().to_string(),
            "call failed on attempt 1: invalid request: too long"
        );
    }
}
