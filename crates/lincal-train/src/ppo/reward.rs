//! Sequence rewards (SPEC 1.5-1.8). [`Reward`] is what the PPO loop calls; two built-in
//! implementations reproduce the reference: [`DecisionReward`] (ExtractAnswers + ForecastProbs,
//! decision-based RL) and [`BinaryCorrectnessReward`] (Factuality RL). Another reader, e.g. an
//! API model through `lincal_llm`, plugs in by implementing the trait.

use super::config::RewardConfig;
use super::models::eos_ids;
use crate::error::{Result, TrainError};
use crate::reward_model::RewardModel;
use crate::scorer::{Scorer, padding_id, sigmoid};
use lincal_data::prompts::Templates;
use lincal_data::schema::cut_paragraph;
use lincal_model::trace::TimedPart;
use lincal_model::{BatchRequest, CausalLm, SamplingParams, Tokenizer, generate_batch};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::rc::Rc;

/// One response to score, with what the reader is asked about (SPEC 1.7): the TriviaQA
/// question, its gold answer (`answer.value`) and the decoded paragraph.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardInput<'a> {
    pub question: &'a str,
    pub answer: &'a str,
    pub paragraph: &'a str,
}

/// The sequence reward of one response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardOutput {
    /// Everything included (the offset too); PPO adds it at the last response token.
    pub reward: f64,
    /// Parts of the reward and reader statistics; each is averaged into the step's metrics.
    pub terms: BTreeMap<String, f64>,
    /// What the reader saw and said (extracted answers, forecasts), written with the rollouts.
    pub details: serde_json::Value,
}

/// How a batch is being scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreContext {
    /// Seeds any sampling the reward does (answer extraction); row `i` of the batch draws from
    /// `row_seeds(seed, first_row + n)[first_row + i]`, so a resumed run scores exactly as an
    /// uninterrupted one, and a rank of a data-parallel job as one process would.
    pub seed: u64,
    /// The batch's first row among the step's (a data-parallel rank scores its share).
    pub first_row: usize,
    /// Periodic evaluation rather than a training rollout (the reference extracts answers
    /// with other sampling settings then).
    pub evaluation: bool,
}

/// A sequence-level reward for PPO. An implementation outside this crate reports its own
/// failures as [`TrainError::Reward`].
pub trait Reward {
    /// One output per input, in order.
    fn score(
        &mut self,
        inputs: &[RewardInput<'_>],
        context: ScoreContext,
    ) -> Result<Vec<RewardOutput>>;

    /// Seconds spent in each part of scoring since the last call, named (`extraction`, ...),
    /// for the step's timing metrics; a reward of one part reports none.
    fn take_timings(&mut self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    /// The frozen models this reward runs. With `offload_idle_models` they wait in host
    /// memory while the step's other parts run, and [`Reward::score`] brings back each one as
    /// it needs it ([`CausalLm::reload`]); a reward of none has nothing to do.
    fn models(&self) -> Vec<&CausalLm> {
        Vec::new()
    }
}

/// `n` sampling seeds drawn from `seed`.
pub fn row_seeds(seed: u64, n: usize) -> Vec<u64> {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
        .random_iter()
        .take(n)
        .collect()
}

/// `R = S(p_gt) − λ·|Σ_j p_j − 1| + offset` with its scoring and normalisation terms, where S
/// is the config's scoring rule: the reference's `ln(max(p_gt, ε))` (SPEC 1.7) or the Brier
/// variant `1 − (1 − p_gt)²` (`reward.scoring_rule = "brier"`). `p_extracted` are the
/// forecasts of the extracted answers only (the ground truth is forecast on its own row, in
/// the set or not, and is not in the sum); with no answer the penalty is −λ.
pub fn decision_reward(p_gt: f64, p_extracted: &[f64], config: &RewardConfig) -> (f64, f64, f64) {
    let scoring = config
        .scoring_rule
        .score(p_gt, config.cross_entropy_epsilon);
    let normalization =
        -config.normalization_lambda * (p_extracted.iter().sum::<f64>() - 1.0).abs();
    (
        scoring + normalization + config.reward_offset,
        scoring,
        normalization,
    )
}

/// `R = 1[sigmoid(ℓ) > 0.5] + offset` (SPEC 1.8) with sigmoid(ℓ). The indicator is taken as
/// `ℓ > 0`, which is the same condition without sigmoid's rounding near 0.5.
pub fn binary_reward(logit: f64, reward_offset: f64) -> (f64, f64) {
    let correct = if logit > 0.0 { 1.0 } else { 0.0 };
    (correct + reward_offset, sigmoid(logit))
}

/// Decision-based RL (SPEC 1.7): ExtractAnswers names the answers a paragraph gives,
/// ForecastProbs gives each (and the ground truth) an independent probability, and the reward
/// is the log-loss of the ground truth plus the normalisation penalty and the offset.
pub struct DecisionReward {
    extractor: CausalLm,
    extractor_tokenizer: Tokenizer,
    extractor_eos: Vec<i64>,
    extractor_pad: i64,
    forecaster: Scorer,
    templates: Templates,
    config: RewardConfig,
    /// Seconds in ExtractAnswers and in ForecastProbs since the last `take_timings`.
    extraction_seconds: f64,
    forecast_seconds: f64,
}

impl DecisionReward {
    /// `extractor` is the ExtractAnswers causal LM (GPT-NeoX in the reference) with its
    /// tokenizer; `forecaster` the ForecastProbs reward model with its tokenizer.
    pub fn new(
        extractor: CausalLm,
        extractor_tokenizer: Tokenizer,
        forecaster: Rc<RewardModel>,
        forecaster_tokenizer: Tokenizer,
        templates: Templates,
        config: RewardConfig,
    ) -> Result<Self> {
        let extractor_eos = eos_ids(&extractor, &extractor_tokenizer);
        if extractor_eos.is_empty() {
            return Err(TrainError::config(
                "answer_extractor",
                "the ExtractAnswers model names no EOS token (tokenizer_config.json or \
                 config.json); its outputs would never end",
            ));
        }
        let extractor_pad = padding_id(&extractor_tokenizer, "answer_extractor")?;
        let forecaster = Scorer::new(
            forecaster,
            forecaster_tokenizer,
            config.model_max_length,
            config.score_limits(),
            "reward_model",
        )?;
        Ok(DecisionReward {
            extractor,
            extractor_tokenizer,
            extractor_eos,
            extractor_pad,
            forecaster,
            templates,
            config,
            extraction_seconds: 0.0,
            forecast_seconds: 0.0,
        })
    }

    /// ExtractAnswers' raw outputs for `inputs` (SPEC 1.5: sampled at temperature 0.3).
    fn extract(&self, inputs: &[RewardInput<'_>], context: ScoreContext) -> Result<Vec<String>> {
        let c = &self.config;
        let (top_k, top_p) = if context.evaluation {
            (c.extractor_eval_top_k, c.extractor_eval_top_p)
        } else {
            (c.extractor_top_k, c.extractor_top_p)
        };
        let params = SamplingParams {
            temperature: c.extractor_temperature,
            top_p,
            top_k,
            max_new_tokens: c.extractor_max_new_tokens,
            stop: Vec::new(),
        };
        let prompts = inputs
            .iter()
            .map(|input| {
                self.templates
                    .extract_answers_model(input.question, input.paragraph)
            })
            .collect::<std::result::Result<Vec<String>, _>>()?;
        let prompts = self.extractor_tokenizer.encode_batch(&prompts, true)?;
        let seeds = &row_seeds(context.seed, context.first_row + inputs.len())[context.first_row..];
        let mut texts = Vec::with_capacity(inputs.len());
        for (chunk, chunk_seeds) in prompts
            .chunks(c.extractor_batch_size)
            .zip(seeds.chunks(c.extractor_batch_size))
        {
            let request = BatchRequest {
                eos_ids: &self.extractor_eos,
                pad_id: self.extractor_pad,
                ..BatchRequest::new(chunk, chunk_seeds, &params)
            };
            let out = generate_batch(&self.extractor, &request, None)?;
            let tokens = Vec::<Vec<i64>>::try_from(out.tokens.to_device(tch::Device::Cpu))?;
            let outputs: Vec<&[i64]> = tokens
                .iter()
                .zip(&out.lengths)
                .map(|(row, &len)| &row[..len as usize])
                .collect();
            let decoded = self.extractor_tokenizer.decode_batch(&outputs, true)?;
            texts.extend(decoded.iter().map(|text| text.trim().to_string()));
        }
        Ok(texts)
    }
}

impl Reward for DecisionReward {
    fn score(
        &mut self,
        inputs: &[RewardInput<'_>],
        context: ScoreContext,
    ) -> Result<Vec<RewardOutput>> {
        let device = self.extractor.device();
        let forecaster = self.forecaster.model().backbone();
        let part = TimedPart::start(c"extraction");
        forecaster.offload();
        self.extractor.reload();
        let extractions = self.extract(inputs, context)?;
        self.extractor.offload();
        self.extraction_seconds += part.finish(device);
        let part = TimedPart::start(c"forecast");
        forecaster.reload();
        let parsed: Vec<(Vec<String>, bool)> = extractions
            .iter()
            .map(|text| self.config.extraction_parsing.candidates(text))
            .collect();
        // Ground truth first, then each extracted answer, even one equal to the ground truth.
        let mut texts = Vec::new();
        for (input, (answers, _)) in inputs.iter().zip(&parsed) {
            for candidate in std::iter::once(input.answer).chain(answers.iter().map(String::as_str))
            {
                texts.push(self.templates.forecast_probs_model(
                    input.question,
                    input.paragraph,
                    candidate,
                )?);
            }
        }
        let mut probabilities = self.forecaster.probabilities(&texts)?.into_iter();
        self.forecast_seconds += part.finish(device);
        let mut outputs = Vec::with_capacity(inputs.len());
        for (extraction, (answers, parsed_ok)) in extractions.into_iter().zip(parsed) {
            let p_gt = probabilities.next().expect("one logit per candidate");
            let p_answers: Vec<f64> = probabilities.by_ref().take(answers.len()).collect();
            let (reward, scoring, normalization) = decision_reward(p_gt, &p_answers, &self.config);
            let terms = BTreeMap::from([
                (self.config.scoring_rule.term_name().to_string(), scoring),
                ("normalization".to_string(), normalization),
                ("p_ground_truth".to_string(), p_gt),
                ("p_answers_sum".to_string(), p_answers.iter().sum()),
                ("answers".to_string(), answers.len() as f64),
                (
                    "extraction_unparsed".to_string(),
                    if parsed_ok { 0.0 } else { 1.0 },
                ),
            ]);
            let details = serde_json::json!({
                "extraction": extraction,
                "answers": answers,
                "p_answers": p_answers,
                "p_ground_truth": p_gt,
            });
            outputs.push(RewardOutput {
                reward,
                terms,
                details,
            });
        }
        Ok(outputs)
    }

    fn take_timings(&mut self) -> Vec<(&'static str, f64)> {
        vec![
            ("extraction", std::mem::take(&mut self.extraction_seconds)),
            ("forecast", std::mem::take(&mut self.forecast_seconds)),
        ]
    }

    fn models(&self) -> Vec<&CausalLm> {
        vec![&self.extractor, self.forecaster.model().backbone()]
    }
}

/// Factuality RL (SPEC 1.8): the binary-correctness reward model judges whether the paragraph
/// gives the right answer, and the reward is that judgement thresholded at 0.5.
pub struct BinaryCorrectnessReward {
    model: Scorer,
    templates: Templates,
    config: RewardConfig,
}

impl BinaryCorrectnessReward {
    pub fn new(
        model: Rc<RewardModel>,
        tokenizer: Tokenizer,
        templates: Templates,
        config: RewardConfig,
    ) -> Result<Self> {
        let model = Scorer::new(
            model,
            tokenizer,
            config.model_max_length,
            config.score_limits(),
            "reward_model",
        )?;
        Ok(BinaryCorrectnessReward {
            model,
            templates,
            config,
        })
    }
}

impl Reward for BinaryCorrectnessReward {
    fn score(
        &mut self,
        inputs: &[RewardInput<'_>],
        _context: ScoreContext,
    ) -> Result<Vec<RewardOutput>> {
        self.model.model().backbone().reload();
        // The reward model was trained on paragraphs cut to their first 2000 characters.
        let texts = inputs
            .iter()
            .map(|input| {
                Ok(self.templates.binary_correctness_model(
                    input.question,
                    cut_paragraph(input.paragraph),
                    input.answer,
                )?)
            })
            .collect::<Result<Vec<String>>>()?;
        let logits = self.model.logits(&texts)?;
        Ok(logits
            .iter()
            .map(|&logit| {
                let (reward, probability) = binary_reward(logit as f64, self.config.reward_offset);
                let terms = BTreeMap::from([
                    ("probability".to_string(), probability),
                    ("correct".to_string(), reward - self.config.reward_offset),
                ]);
                RewardOutput {
                    reward,
                    terms,
                    details: serde_json::json!({ "probability": probability }),
                }
            })
            .collect())
    }

    fn models(&self) -> Vec<&CausalLm> {
        vec![self.model.model().backbone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ppo::config::{PpoConfig, ScoringRule};
    use lincal_data::parse::ExtractionParsing;

    fn lc() -> RewardConfig {
        PpoConfig::preset("lc_ppo").unwrap().reward
    }

    #[test]
    fn decision_reward_matches_hand_values() {
        // p_gt 0.5, answers 0.5 and 0.3: ln 0.5 − 5·|0.8 − 1| + 5 = −0.693147 − 1 + 5.
        let (reward, log_loss, normalization) = decision_reward(0.5, &[0.5, 0.3], &lc());
        assert!((log_loss - (-std::f64::consts::LN_2)).abs() < 1e-12);
        assert!((normalization - (-1.0)).abs() < 1e-12);
        assert!((reward - (5.0 - 1.0 - std::f64::consts::LN_2)).abs() < 1e-12);
        // Over-confident answers are penalised as much as missing mass: Σ = 1.6 → −3.
        assert!((decision_reward(0.9, &[0.9, 0.7], &lc()).2 - (-3.0)).abs() < 1e-12);
        // Nothing extracted: the sum is 0, a flat −λ = −5, cancelling the offset.
        let (reward, _, normalization) = decision_reward(0.9, &[], &lc());
        assert_eq!(normalization, -5.0);
        assert!((reward - 0.9f64.ln()).abs() < 1e-12);
        // p_gt below ε = 1e-4 is clipped: ln 1e-4 = −9.21034.
        let (reward, log_loss, _) = decision_reward(1e-7, &[1.0], &lc());
        assert!((log_loss - (-9.210_340_371_976_182)).abs() < 1e-12);
        assert!((reward - (5.0 - 9.210_340_371_976_182)).abs() < 1e-12);
        // A perfect, normalised reader: R = 0 + 0 + 5.
        assert_eq!(decision_reward(1.0, &[1.0], &lc()).0, 5.0);
    }

    #[test]
    fn the_brier_rule_replaces_only_the_ground_truth_term() {
        let brier = RewardConfig {
            scoring_rule: ScoringRule::Brier,
            ..lc()
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        // p_gt 0.8, the ground truth the one answer extracted at 0.8:
        // 1 − 0.2² − 5·|0.8 − 1| + 5 = 0.96 − 1 + 5 = 4.96.
        let (reward, scoring, normalization) = decision_reward(0.8, &[0.8], &brier);
        assert!(close(scoring, 0.96) && close(normalization, -1.0) && close(reward, 4.96));
        // Nothing extracted: 1 − 0.1² − 5 + 5 = 0.99.
        assert!(close(decision_reward(0.9, &[], &brier).0, 0.99));
        // The ground truth outside the extracted set (p_gt 0.1, "Lyon" at 0.9): the ground
        // truth's own row still scores: 1 − 0.9² − 5·|0.9 − 1| + 5 = 0.19 − 0.5 + 5 = 4.69.
        assert!(close(decision_reward(0.1, &[0.9], &brier).0, 4.69));
        // Bounded: p_gt 0 scores 0, not ln ε; no clip is involved.
        assert_eq!(decision_reward(0.0, &[1.0], &brier).1, 0.0);
        assert_eq!(
            (ScoringRule::Log.term_name(), ScoringRule::Brier.term_name()),
            ("log_loss", "brier_score")
        );
    }

    #[test]
    fn binary_reward_thresholds_the_probability() {
        assert_eq!(binary_reward(0.3, 0.0).0, 1.0);
        assert_eq!(binary_reward(-0.3, 0.0).0, 0.0);
        // Exactly 0.5 is not above it.
        assert_eq!(binary_reward(0.0, 0.0), (0.0, 0.5));
        // A logit so small that f32 sigmoid rounds to 0.5 still counts as above it.
        assert_eq!(binary_reward(1e-9, 0.0).0, 1.0);
        let (reward, p) = binary_reward(2.0, 0.5);
        assert_eq!(reward, 1.5);
        assert!((p - 0.880_797_077_977_882_3).abs() < 1e-15);
    }

    /// The rewards of two extractor outputs under each parsing, from the hand values:
    /// ground truth forecast at 0.8 and each candidate at the probability given.
    #[test]
    fn the_reference_parsing_keeps_what_the_reference_keeps() {
        let reward = |parsing: ExtractionParsing, output: &str, p: &dyn Fn(&str) -> f64| {
            let (candidates, parsed) = parsing.candidates(output);
            let probabilities: Vec<f64> = candidates.iter().map(|c| p(c)).collect();
            (
                decision_reward(0.8, &probabilities, &lc()).0,
                candidates.len(),
                parsed,
            )
        };
        let close = |(got, _, _): (f64, usize, bool), want: f64| (got - want).abs() < 1e-12;
        let ln = 0.8f64.ln();
        // "The Beatles; Beatles", 0.8 each: two candidates, Σ = 1.6 → 5 + ln 0.8 − 5·0.6 = 1.78
        // in the reference; one by normal form (lincal's), 5 + ln 0.8 − 5·0.2 = 3.78.
        let beatles = "The Beatles; Beatles";
        let at = |_: &str| 0.8;
        let reference = reward(ExtractionParsing::Reference, beatles, &at);
        assert_eq!(reference.1, 2);
        assert!(close(reference, 5.0 + ln - 3.0));
        assert!(close(
            reward(ExtractionParsing::Normalized, beatles, &at),
            5.0 + ln - 1.0
        ));
        // A run-on output, Paris at 0.8 and the run-on item at 0.05: Σ = 0.85 → 4.03 in the
        // reference; unparsed, hence no answer (−λ), −0.22 in lincal's.
        let run_on = "Paris; Lyon\n### Question: What is the capital of Peru?";
        let at = |c: &str| if c == "Paris" { 0.8 } else { 0.05 };
        let reference = reward(ExtractionParsing::Reference, run_on, &at);
        assert!(close(reference, 5.0 + ln - 5.0 * 0.15));
        let normalized = reward(ExtractionParsing::Normalized, run_on, &at);
        assert!(close(normalized, 5.0 + ln - 5.0) && !normalized.2);
        // Exactly "No Answer" names none; anything else, even empty, is a candidate.
        let parse = |text| ExtractionParsing::Reference.candidates(text).0;
        assert_eq!(parse("No Answer"), Vec::<String>::new());
        assert_eq!(parse("No Answer."), ["No Answer."]);
        assert_eq!(parse(""), [""]);
        assert_eq!(parse(" Paris ;Lyon; Paris"), ["Paris", "Lyon"]);
        assert_eq!(
            ExtractionParsing::Normalized.candidates("Paris; Lyon ; Paris"),
            (vec!["Paris".to_string(), "Lyon".to_string()], true)
        );
        assert_eq!(
            ExtractionParsing::Normalized.candidates(""),
            (vec![], false)
        );
        assert_eq!(row_seeds(7, 3), row_seeds(7, 3));
        assert_ne!(row_seeds(7, 3), row_seeds(8, 3));
    }
}
