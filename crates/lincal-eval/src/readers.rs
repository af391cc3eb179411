//! Readers of QA paragraphs (SPEC 5.1 steps 2-3): a reader lists the answers a paragraph puts
//! forward and forecasts, for each, the probability that it is correct given only the
//! paragraph. Three readers stand behind the [`Reader`] trait:
//!
//! - [`LlmReader`]: a teacher model (any `Llm`: an API, a local model) with the extraction and
//!   forecast prompts, as the reference's Claude reader;
//! - the trained surrogate reader (ExtractAnswers + ForecastProbs, SPEC 1.5-1.6), which lives
//!   in the `lincal` crate because it runs on libtorch; its extraction is
//!   [`extract_with_model`];
//! - [`StatedConfidenceReader`]: the offline reader, a model's extraction (a small local one
//!   will do) and the confidence the paragraph states;
//! - [`LexicalQaReader`]: fast and deterministic, no model at all (see its caveat).

use lincal_data::parse::{
    ExtractionParsing, LexicalReader, contains_match, parse_extracted_answers, parse_probability,
};
use lincal_data::prompts::{
    EXTRACT_ANSWERS_TEMPERATURE, ExtractionPrompt, ExtractionUse, Templates,
};
use lincal_distill::offline::answers_to;
use lincal_distill::{extraction_request, parse_extraction};
use lincal_llm::{Llm, Prompt};

use crate::Stage;
use crate::pipeline::{ItemFailure, PipelineError, TeacherSettings, chat_prompt, describe_llm};

/// New tokens for a teacher's extraction reply: a line of reasoning and a line of answers.
pub const EXTRACTION_REPLY_MAX_TOKENS: u32 = 256;
/// New tokens for a teacher's forecast reply: a line of reasoning and a probability.
pub const FORECAST_REPLY_MAX_TOKENS: u32 = 128;

/// A paragraph to read for one question.
#[derive(Debug, Clone, Copy)]
pub struct ReadInput<'a> {
    pub id: &'a str,
    pub question: &'a str,
    pub paragraph: &'a str,
    /// The accepted answers, gold first. Only [`LexicalQaReader`] looks at them.
    pub gold_aliases: &'a [String],
}

/// One answer of a paragraph to forecast.
#[derive(Debug, Clone, Copy)]
pub struct ForecastInput<'a> {
    pub id: &'a str,
    pub question: &'a str,
    pub paragraph: &'a str,
    pub candidate: &'a str,
}

/// Results of a batch: one per input, in order. The outer error is a failure of the reader as
/// a whole (a broken prompt template, a model that cannot run); the inner ones are single
/// items that got no usable answer.
pub type ItemResults<T> = Result<Vec<Result<T, ItemFailure>>, PipelineError>;

/// Extracts answers from paragraphs and forecasts their probabilities.
pub trait Reader {
    /// The reader and its models, for reports and for the run's manifest: it must change
    /// whenever the reader's outputs would.
    fn describe(&self) -> String;

    /// The answers each paragraph puts forward, in the order it gives them.
    fn extract(&self, inputs: &[ReadInput<'_>]) -> ItemResults<Vec<String>>;

    /// The probability that each candidate is a correct answer, given only the paragraph.
    fn forecast(&self, inputs: &[ForecastInput<'_>]) -> ItemResults<f64>;
}

/// A teacher model as reader: the extraction prompt `extraction` (the teacher prompt with 10
/// examples, as in evaluation, or the few-shot completion) and the `forecast_probability`
/// prompt, each answer parsed and asked again if it does not parse.
pub struct LlmReader<'a> {
    pub llm: &'a dyn Llm,
    pub templates: &'a Templates,
    pub settings: TeacherSettings,
    pub extraction: ExtractionPrompt,
}

impl Reader for LlmReader<'_> {
    fn describe(&self) -> String {
        match self.extraction {
            ExtractionPrompt::Teacher => describe_llm(self.llm),
            ExtractionPrompt::FewShot => {
                format!("{} (few-shot extraction)", describe_llm(self.llm))
            }
        }
    }

    fn extract(&self, inputs: &[ReadInput<'_>]) -> ItemResults<Vec<String>> {
        self.settings.ask_requests(
            self.llm,
            inputs,
            Stage::Extraction,
            |input| {
                let params = self.settings.params(
                    EXTRACTION_REPLY_MAX_TOKENS,
                    &format!("extract/{}", input.id),
                );
                Ok(extraction_request(
                    self.templates,
                    self.extraction,
                    input.question,
                    input.paragraph,
                    ExtractionUse::Evaluation,
                    params,
                )?)
            },
            |reply| parse_extraction(self.extraction, reply),
        )
    }

    fn forecast(&self, inputs: &[ForecastInput<'_>]) -> ItemResults<f64> {
        self.settings.ask(
            self.llm,
            inputs,
            FORECAST_REPLY_MAX_TOKENS,
            Stage::Forecast,
            |input| {
                let messages = self.templates.forecast_probability(
                    input.question,
                    input.paragraph,
                    input.candidate,
                )?;
                let key = format!("forecast/{}/{}", input.id, input.candidate);
                Ok((chat_prompt(messages), key))
            },
            parse_probability,
        )
    }
}

/// The offline reader: a model finds the answers a paragraph gives, as [`LlmReader`] does (a
/// small local model with the few-shot prompt), and each answer's probability is the
/// confidence the paragraph states for it ([`LexicalReader::forecast`]: stated percentages and
/// the hedge table; 1 for a plain statement), as the offline forecaster of the reader's
/// training labels reads it. Unlike [`LexicalQaReader`] it sees wrong answers, so a paragraph
/// that hedges a wrong answer is read at its stated confidence.
pub struct StatedConfidenceReader<'a> {
    pub extractor: LlmReader<'a>,
    pub stated: LexicalQaReader,
}

impl Reader for StatedConfidenceReader<'_> {
    fn describe(&self) -> String {
        format!(
            "stated confidence (answers found by {}, but those the question names; confidence \
             as the paragraph states it, hedge table of {} phrases)",
            self.extractor.describe(),
            self.stated.reader.hedges().entries().len()
        )
    }

    /// The extractor's answers but those the question names itself ([`answers_to`]), which a
    /// small extractor lists for a paragraph that only repeats the question.
    fn extract(&self, inputs: &[ReadInput<'_>]) -> ItemResults<Vec<String>> {
        let extracted = self.extractor.extract(inputs)?;
        Ok(inputs
            .iter()
            .zip(extracted)
            .map(|(input, answers)| {
                let answers = answers?;
                Ok(answers_to(input.question, &answers)
                    .into_iter()
                    .cloned()
                    .collect())
            })
            .collect())
    }

    fn forecast(&self, inputs: &[ForecastInput<'_>]) -> ItemResults<f64> {
        self.stated.forecast(inputs)
    }
}

/// Extraction by a trained ExtractAnswers model (SPEC 1.5): the `extract_answers_model`
/// prompt as a completion, sampled as PPO samples it ([`EXTRACT_ANSWERS_TEMPERATURE`], up to
/// `max_tokens` new tokens: the reference's
/// [`EXTRACT_ANSWERS_MAX_TOKENS`](lincal_data::prompts::EXTRACT_ANSWERS_MAX_TOKENS) unless a run caps
/// a poorly trained extractor that runs on), the reply `"a; b"` or `"No Answer"`, read as
/// `parsing` says (a reply the normalised reading cannot parse is asked again). `settings`
/// gives the attempts and the seed.
pub fn extract_with_model(
    llm: &dyn Llm,
    templates: &Templates,
    settings: &TeacherSettings,
    parsing: ExtractionParsing,
    max_tokens: u32,
    inputs: &[ReadInput<'_>],
) -> ItemResults<Vec<String>> {
    let settings = TeacherSettings {
        temperature: EXTRACT_ANSWERS_TEMPERATURE,
        ..settings.clone()
    };
    settings.ask(
        llm,
        inputs,
        max_tokens,
        Stage::Extraction,
        |input| {
            let prompt = templates.extract_answers_model(input.question, input.paragraph)?;
            Ok((Prompt::Completion(prompt), format!("extract/{}", input.id)))
        },
        |reply| match parsing {
            ExtractionParsing::Reference => Ok(parsing.candidates(reply).0),
            ExtractionParsing::Normalized => parse_extracted_answers(reply),
        },
    )
}

/// A reader without a model, for quick and fully reproducible runs.
///
/// Extraction finds the gold answer: the first of the accepted answers that the paragraph
/// mentions (alias-normalised, whole words), or nothing. Forecasting reads the confidence the
/// paragraph states for the candidate with the hedge table ([`LexicalReader::forecast`]).
///
/// Caveat: it never sees wrong answers. A paragraph that does not mention the gold answer
/// counts as giving no answer (wrong, confidence 1), even when it hedges a wrong one, so ECE
/// is higher than a model reader would find for paragraphs that hedge their wrong answers;
/// use a model reader for numbers to compare with the paper.
#[derive(Debug, Clone, Default)]
pub struct LexicalQaReader {
    pub reader: LexicalReader,
}

impl Reader for LexicalQaReader {
    fn describe(&self) -> String {
        format!(
            "lexical (gold aliases found in the paragraph; hedge table of {} phrases)",
            self.reader.hedges().entries().len()
        )
    }

    fn extract(&self, inputs: &[ReadInput<'_>]) -> ItemResults<Vec<String>> {
        Ok(inputs
            .iter()
            .map(|input| {
                Ok(input
                    .gold_aliases
                    .iter()
                    .find(|alias| contains_match(input.paragraph, std::slice::from_ref(*alias)))
                    .cloned()
                    .into_iter()
                    .collect())
            })
            .collect())
    }

    fn forecast(&self, inputs: &[ForecastInput<'_>]) -> ItemResults<f64> {
        Ok(inputs
            .iter()
            .map(|input| Ok(self.reader.forecast(input.paragraph, &[input.candidate])[0]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lincal_llm::testing::FakeLlm;
    use lincal_llm::{LlmResponse, Prompt};

    #[test]
    fn the_stated_confidence_reader_reads_a_models_answers_at_the_paragraphs_confidence() {
        // A few-shot extractor that lists the capitalised words of the text's last line.
        let extractor = FakeLlm::new(|request| {
            let Prompt::Completion(prompt) = &request.prompt else {
                panic!("few-shot extraction is a completion")
            };
            let text = prompt
                .lines()
                .rev()
                .find_map(|line| line.strip_prefix("Text: "))
                .unwrap();
            let answers: Vec<&str> = text
                .split(|c: char| !c.is_alphanumeric())
                .filter(|word| ["Lyon", "Paris", "Nice", "France"].contains(word))
                .collect();
            let reply = match answers.is_empty() {
                true => " No Answer\nQuestion:".to_string(),
                false => format!(" {}\nQuestion:", answers.join("; ")),
            };
            Ok(LlmResponse::from_texts([reply]))
        });
        let templates = Templates::builtin().unwrap();
        let reader = StatedConfidenceReader {
            extractor: LlmReader {
                llm: &extractor,
                templates: &templates,
                settings: TeacherSettings::default(),
                extraction: ExtractionPrompt::FewShot,
            },
            stated: LexicalQaReader::default(),
        };
        let question = "What is the capital of France?";
        let gold = vec!["Paris".to_string()];
        let paragraphs = [
            "I am 70% sure that the answer is Lyon. It may instead be Paris (30%).",
            "The capital of France is Nice.",
            "I do not know the answer to this question.",
            // The extractor lists "France", which the question names: no answer.
            "The capital of France is a lovely city.",
        ];
        let inputs: Vec<ReadInput> = paragraphs
            .iter()
            .enumerate()
            .map(|(i, paragraph)| ReadInput {
                id: ["a", "b", "c", "d"][i],
                question,
                paragraph,
                gold_aliases: &gold,
            })
            .collect();
        let answers: Vec<Vec<String>> = reader
            .extract(&inputs)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        // The wrong answers are seen, which the lexical reader (gold only) cannot do.
        assert_eq!(
            answers,
            [vec!["Lyon", "Paris"], vec!["Nice"], vec![], vec![]]
        );
        let forecast = |paragraph: &str, candidate: &str| {
            reader
                .forecast(&[ForecastInput {
                    id: "a",
                    question,
                    paragraph,
                    candidate,
                }])
                .unwrap()
                .remove(0)
                .unwrap()
        };
        assert_eq!(forecast(paragraphs[0], "Lyon"), 0.7);
        assert_eq!(forecast(paragraphs[0], "Paris"), 0.3);
        assert_eq!(forecast(paragraphs[1], "Nice"), 1.0);
        assert!(reader.describe().contains("(few-shot extraction)"));
    }
}
