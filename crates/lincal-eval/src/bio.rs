//! The biography evaluation pipeline (SPEC 5.3), FactScore style:
//!
//! 1. generation: the evaluated model writes a biography of each person
//!    (`generations.jsonl`, keyed by the person's name);
//! 2. decomposition: the biography becomes atomic claims, each with the writer's confidence
//!    wording; mutually exclusive alternatives ("80% 1856, 20% 1857") form one group
//!    (`claims.jsonl`). A [`Decomposer`] does it: a model ([`LlmDecomposer`], the reference's
//!    way) or the hedge reader ([`LexicalDecomposer`]);
//! 3. for each objective claim (`checks.jsonl`, keyed by claim id):
//!    - its confidence (methods that state confidence): 1 for a plain statement, the number
//!      when one is given, else the wording read with the hedge table, and where the table
//!      does not know the wording, a model when one is configured ([`ClaimConfidence`]);
//!    - retrieval: the top passages of the knowledge source for the person and the claim
//!      (BM25, [`KnowledgeIndex::search`]);
//!    - fact check: a model decides from those passages whether the claim is true.
//!
//! Metrics pool the claims of all people: accuracy is the proportion supported, and ECE uses
//! 40 equal-mass bins; of a group of alternatives only the most confident claim is scored.
//! Methods without stated confidence score every claim at 1, alternatives separately (the
//! reference's non-confidence decomposition has no groups). Subjective claims and abstentions
//! are not checked; they, people without checkable claims and decompositions that failed are
//! counted in the run's settings, and every failure is in `failures.jsonl`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use lincal_data::artifact::Keyed;
use lincal_data::parse::{
    Claim, ClaimConfidence as Stated, ClaimGroup, ClaimKind, ConfidenceSource, LexicalReader,
    Support, parse_claims, parse_fact_check, parse_probability,
};
use lincal_data::prompts::{self, Templates};
use lincal_llm::{Llm, LlmRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use crate::pipeline::GENERATIONS_FILE;
use crate::pipeline::{
    EvalOptions, GenerationRecord, ItemFailure, OpenedRun, PipelineError, Policy, Progress,
    RunOutcome, TeacherSettings, ask_parsed, chat_prompt, describe_llm, open_eval_run,
    template_inputs, template_sources,
};
use crate::readers::ItemResults;
use crate::{ClaimExample, KnowledgeIndex, RunSettings, ScoredExample, Stage};

/// The stage name in the run's manifest.
pub const STAGE_NAME: &str = "eval-bio";
pub const CLAIMS_FILE: &str = "claims.jsonl";
pub const CHECKS_FILE: &str = "checks.jsonl";

/// Passages retrieved per claim (FactScore's 5).
pub const DEFAULT_PASSAGES: usize = 5;
/// New tokens of a decomposition: a long list of claims (the reference allowed 5,000).
pub const DECOMPOSITION_MAX_TOKENS: u32 = 2048;
/// New tokens of a fact check: one word, with room for a sentence around it.
pub const FACT_CHECK_MAX_TOKENS: u32 = 32;
/// New tokens of a confidence reply.
pub const CONFIDENCE_MAX_TOKENS: u32 = 128;
/// The probability of a hedge that neither the table nor a model could read: even odds, and
/// the claim carries a failure note saying so.
pub const UNREAD_HEDGE_PROBABILITY: f64 = 0.5;

const TEMPLATES: [&str; 9] = [
    "bio_query",
    "policy",
    "icl_paragraphs",
    "summary_icl_paragraphs",
    "paragraph_zero_shot",
    "paragraph_jafu",
    "decompose_claims",
    "forecast_probability",
    "fact_check",
];

/// A biography to decompose.
#[derive(Debug, Clone, Copy)]
pub struct DecomposeInput<'a> {
    pub entity: &'a str,
    pub paragraph: &'a str,
}

/// Splits biographies into atomic claims with the writer's confidence.
pub trait Decomposer {
    /// The decomposer and its model, for reports and the run's manifest.
    fn describe(&self) -> String;

    /// The claims of each biography, alternatives grouped, in order.
    fn decompose(&self, inputs: &[DecomposeInput<'_>]) -> ItemResults<Vec<ClaimGroup>>;
}

/// A model with the `decompose_claims` prompt (8 examples), its JSON reply parsed and asked
/// again if it does not parse.
pub struct LlmDecomposer<'a> {
    pub llm: &'a dyn Llm,
    pub templates: &'a Templates,
    pub settings: TeacherSettings,
}

impl Decomposer for LlmDecomposer<'_> {
    fn describe(&self) -> String {
        describe_llm(self.llm)
    }

    fn decompose(&self, inputs: &[DecomposeInput<'_>]) -> ItemResults<Vec<ClaimGroup>> {
        self.settings.ask(
            self.llm,
            inputs,
            DECOMPOSITION_MAX_TOKENS,
            Stage::Decomposition,
            |input| {
                let messages = self
                    .templates
                    .decompose_claims(input.entity, input.paragraph)?;
                Ok((chat_prompt(messages), format!("decompose/{}", input.entity)))
            },
            parse_claims,
        )
    }
}

/// Claims without a model: each clause of [`LexicalReader::read`] with at least three words
/// is an objective claim, worded as the writer wrote it, with the confidence that governs it;
/// clauses of one sentence that each state a number adding up to at most 1 ("80% sure he was
/// born in 1856, 20% that it was 1857") are alternatives of one group. A quick approximation
/// of a model's decomposition: it does not split sentences that state several facts, nor tell
/// opinions from facts.
#[derive(Debug, Clone, Default)]
pub struct LexicalDecomposer {
    pub reader: LexicalReader,
}

/// Fewest words a clause needs to be a claim ("and so on" is not one).
const MIN_CLAIM_WORDS: usize = 3;

impl LexicalDecomposer {
    fn groups(&self, paragraph: &str) -> Vec<ClaimGroup> {
        let mut groups = Vec::new();
        for sentence in self.reader.read(paragraph) {
            let clauses: Vec<_> = sentence
                .clauses
                .into_iter()
                .filter(|clause| {
                    clause
                        .text
                        .split_whitespace()
                        .filter(|word| word.chars().any(char::is_alphabetic))
                        .count()
                        >= MIN_CLAIM_WORDS
                })
                .collect();
            let numeric = |clause: &lincal_data::parse::Clause| {
                clause
                    .confidence
                    .as_ref()
                    .filter(|stated| stated.source != ConfidenceSource::Hedge)
                    .map(|stated| stated.probability)
            };
            let numbers: Vec<f64> = clauses.iter().filter_map(numeric).collect();
            let alternatives = numbers.len() >= 2 && numbers.iter().sum::<f64>() <= 1.0 + 1e-9;
            let mut group = Vec::new();
            for clause in clauses {
                let confidence = match &clause.confidence {
                    None => Stated::Direct,
                    Some(stated) if stated.source == ConfidenceSource::Hedge => {
                        Stated::Phrase(stated.evidence.clone())
                    }
                    Some(stated) => Stated::Probability(stated.probability),
                };
                let in_group = alternatives && numeric(&clause).is_some();
                let claim = Claim {
                    text: clause.text,
                    kind: ClaimKind::Objective { confidence },
                };
                if in_group {
                    group.push(claim);
                } else {
                    groups.push(ClaimGroup {
                        alternatives: vec![claim],
                    });
                }
            }
            if !group.is_empty() {
                groups.push(ClaimGroup {
                    alternatives: group,
                });
            }
        }
        groups
    }
}

impl Decomposer for LexicalDecomposer {
    fn describe(&self) -> String {
        format!(
            "lexical (clauses of the hedge reader; hedge table of {} phrases)",
            self.reader.hedges().entries().len()
        )
    }

    fn decompose(&self, inputs: &[DecomposeInput<'_>]) -> ItemResults<Vec<ClaimGroup>> {
        Ok(inputs
            .iter()
            .map(|input| Ok(self.groups(input.paragraph)))
            .collect())
    }
}

/// Turns a claim's stated confidence into a probability: the hedge table first, then, for
/// wording it does not know, a model asked with the `forecast_probability` prompt (the
/// reference's confidence filter was a model throughout).
pub struct ClaimConfidence<'a> {
    pub lexical: LexicalReader,
    /// The model for wording the table does not know; without one such a claim is scored at
    /// [`UNREAD_HEDGE_PROBABILITY`] with a failure note.
    pub llm: Option<&'a dyn Llm>,
    pub templates: &'a Templates,
    pub settings: TeacherSettings,
}

impl ClaimConfidence<'_> {
    fn describe(&self) -> String {
        let fallback = match self.llm {
            Some(llm) => describe_llm(llm),
            None => format!("scored {UNREAD_HEDGE_PROBABILITY}"),
        };
        format!(
            "hedge table of {} phrases; unknown wording: {fallback}",
            self.lexical.hedges().entries().len()
        )
    }

    /// The probability of each claim, with a note where it is not what the writer stated.
    fn probabilities(
        &self,
        claims: &[&ClaimItem],
    ) -> Result<Vec<(f64, Option<ItemFailure>)>, PipelineError> {
        let mut out: Vec<Option<(f64, Option<ItemFailure>)>> = claims
            .iter()
            .map(|claim| {
                self.lexical
                    .claim_probability(&claim.confidence)
                    .map(|p| (p, None))
            })
            .collect();
        let unread: Vec<usize> = (0..claims.len()).filter(|&i| out[i].is_none()).collect();
        if let Some(llm) = self.llm.filter(|_| !unread.is_empty()) {
            let replies = self.settings.ask(
                llm,
                &unread,
                CONFIDENCE_MAX_TOKENS,
                Stage::Filter,
                |&i| {
                    let claim = claims[i];
                    let messages = self.confidence_prompt(claim)?;
                    Ok((chat_prompt(messages), format!("confidence/{}", claim.id)))
                },
                parse_probability,
            )?;
            for (&i, reply) in unread.iter().zip(replies) {
                out[i] = Some(match reply {
                    Ok(p) => (p, None),
                    Err(failure) => (
                        UNREAD_HEDGE_PROBABILITY,
                        Some(ItemFailure {
                            message: format!(
                                "{}; scored {UNREAD_HEDGE_PROBABILITY}",
                                failure.message
                            ),
                            ..failure
                        }),
                    ),
                });
            }
        }
        Ok(claims
            .iter()
            .zip(out)
            .map(|(claim, read)| {
                read.unwrap_or_else(|| {
                    let failure = ItemFailure::without_call(
                        Stage::Filter,
                        format!(
                            "the confidence wording {:?} is not in the hedge table and no \
                             confidence model was given; scored {UNREAD_HEDGE_PROBABILITY}",
                            wording(&claim.confidence)
                        ),
                    );
                    (UNREAD_HEDGE_PROBABILITY, Some(failure))
                })
            })
            .collect())
    }

    /// Asks how likely the writer thinks the claim is: the claim with its wording is the
    /// paragraph, and the forecast is for the answer "Yes" to "is it true?".
    fn confidence_prompt(
        &self,
        claim: &ClaimItem,
    ) -> Result<Vec<prompts::PromptMessage>, PipelineError> {
        let question = format!(
            "Is this statement about {} true: {}",
            claim.entity, claim.text
        );
        let paragraph = format!(
            "The writer said the following, with the confidence wording \"{}\": {}",
            wording(&claim.confidence),
            claim.text
        );
        Ok(self
            .templates
            .forecast_probability(&question, &paragraph, "Yes")?)
    }
}

fn wording(confidence: &Stated) -> String {
    match confidence {
        Stated::Direct => "direct".to_string(),
        Stated::Probability(p) => p.to_string(),
        Stated::Phrase(phrase) => phrase.clone(),
    }
}

/// Checks claims against passages retrieved from a knowledge source, with a model and the
/// `fact_check` prompt (passages shown best last, FactScore style).
pub struct FactChecker<'a> {
    pub llm: &'a dyn Llm,
    pub templates: &'a Templates,
    pub settings: TeacherSettings,
    pub index: &'a KnowledgeIndex,
    /// Passages per claim.
    pub passages: usize,
    /// The knowledge source as reports name it.
    pub source_label: String,
}

impl FactChecker<'_> {
    fn describe(&self) -> String {
        format!(
            "{}; BM25 top {} of {}",
            describe_llm(self.llm),
            self.passages,
            self.source_label
        )
    }
}

/// The claims of one biography.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ClaimsRecord {
    id: String,
    groups: Vec<ClaimGroup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<ItemFailure>,
}

/// One checked claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CheckRecord {
    id: String,
    /// The claim's probability; `None` for methods without confidence.
    confidence: Option<f64>,
    /// Ids of the passages the checker saw, best first.
    passages: Vec<String>,
    supported: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    failures: Vec<ItemFailure>,
}

impl Keyed for ClaimsRecord {
    fn key(&self) -> &str {
        &self.id
    }
}

impl Keyed for CheckRecord {
    fn key(&self) -> &str {
        &self.id
    }
}

/// An objective claim to check.
#[derive(Debug, Clone, PartialEq)]
struct ClaimItem {
    /// `<entity>#<group>` or `<entity>#<group>.<alternative>`, counting from 1.
    id: String,
    entity: String,
    text: String,
    confidence: Stated,
    group: Option<String>,
}

/// A biography evaluation: the model under test, how claims are made, read and checked.
pub struct BioEvaluation<'a> {
    pub policy: Policy<'a>,
    pub decomposer: &'a dyn Decomposer,
    pub confidence: ClaimConfidence<'a>,
    pub checker: FactChecker<'a>,
    /// The people as reports name them ("WordNet people", "FactScore").
    pub dataset_name: String,
    pub model_label: String,
    pub extra: BTreeMap<String, Value>,
    pub options: EvalOptions,
    pub progress: &'a dyn Progress,
}

impl BioEvaluation<'_> {
    /// Evaluates biographies of `entities` in `run_dir`; `inputs` are the files they and the
    /// knowledge source came from (hashed into the run's identity).
    pub fn run(
        &self,
        run_dir: &Path,
        entities: &[String],
        inputs: &[&Path],
    ) -> Result<RunOutcome, PipelineError> {
        self.policy.check()?;
        if entities.is_empty() {
            return Err(PipelineError::Invalid(
                "no people to write biographies of".into(),
            ));
        }
        let templates = self.policy.templates;
        let states_confidence = self.policy.method.states_confidence;
        let config = json!({
            "dataset": {"name": self.dataset_name, "entities": entities},
            "policy": self.policy.config(),
            "decomposer": self.decomposer.describe(),
            "confidence": states_confidence.then(|| self.confidence.describe()),
            "checker": self.checker.describe(),
            "templates": template_sources(templates, &TEMPLATES),
        });
        let inputs = [inputs, &template_inputs(templates, &TEMPLATES)].concat();
        let opened = open_eval_run(
            run_dir,
            STAGE_NAME,
            &config,
            &inputs,
            &self.options,
            self.progress,
        )?;
        let mut stages = match opened {
            OpenedRun::Finished(outcome) => return Ok(outcome),
            OpenedRun::Run(stages) => stages,
        };

        let queries = entities
            .iter()
            .map(|entity| Ok((entity.as_str(), templates.bio_query(entity)?)))
            .collect::<Result<Vec<(&str, String)>, PipelineError>>()?;
        let queries: Vec<(&str, &str)> = queries
            .iter()
            .map(|(entity, query)| (*entity, query.as_str()))
            .collect();
        let generations = stages.generate(&self.policy, &queries)?;

        let claims = stages.run(
            CLAIMS_FILE,
            Stage::Decomposition,
            &generations,
            |g| &g.id,
            |chunk| self.decompose(chunk),
        )?;

        let items = claim_items(&claims, states_confidence);
        let checks = stages.run(
            CHECKS_FILE,
            Stage::FactCheck,
            &items,
            |c| &c.id,
            |chunk| self.check(chunk, states_confidence),
        )?;
        if items.is_empty() {
            let failed = claims.iter().filter(|c| c.failure.is_some()).count();
            return Err(PipelineError::Invalid(format!(
                "none of the {} biographies gave a checkable claim ({failed} decompositions \
                 failed); see {} in {}",
                entities.len(),
                CLAIMS_FILE,
                run_dir.display()
            )));
        }

        let mut failures: Vec<(String, ItemFailure)> = Vec::new();
        for (generation, record) in generations.iter().zip(&claims) {
            for failure in generation.failure.iter().chain(&record.failure) {
                failures.push((generation.id.clone(), failure.clone()));
            }
        }
        let examples: Vec<ScoredExample> = items
            .iter()
            .zip(&checks)
            .map(|(item, check)| {
                failures.extend(check.failures.iter().map(|f| (item.id.clone(), f.clone())));
                let claim = match &item.confidence {
                    Stated::Direct => item.text.clone(),
                    stated => format!("{} [{}]", item.text, wording(stated)),
                };
                ScoredExample::Claim(ClaimExample {
                    id: item.id.clone(),
                    entity: item.entity.clone(),
                    claim,
                    core_claim: states_confidence.then(|| item.text.clone()),
                    group: item.group.clone(),
                    confidence: check.confidence,
                    supported: check.supported,
                    failures: check.failures.iter().map(ItemFailure::note).collect(),
                })
            })
            .collect();

        let count_kind = |wanted: fn(&ClaimKind) -> bool| -> usize {
            claims
                .iter()
                .flat_map(|c| &c.groups)
                .flat_map(|g| &g.alternatives)
                .filter(|claim| wanted(&claim.kind))
                .count()
        };
        let with_claims: HashSet<&str> = items.iter().map(|i| i.entity.as_str()).collect();
        let without_claims = entities.len() - with_claims.len();
        let tallies = [
            ("people", entities.len()),
            ("people without a checkable claim", without_claims),
            (
                "failed decompositions",
                claims.iter().filter(|c| c.failure.is_some()).count(),
            ),
            (
                "failed generations",
                generations.iter().filter(|g| g.failure.is_some()).count(),
            ),
            (
                "subjective claims (not checked)",
                count_kind(|k| matches!(k, ClaimKind::Subjective)),
            ),
            (
                "abstentions (not checked)",
                count_kind(|k| matches!(k, ClaimKind::Abstention)),
            ),
        ];
        let mut extra = self.policy.settings_with(&self.extra);
        for (name, count) in tallies {
            extra.insert(name.to_string(), json!(count));
        }
        extra.insert("decomposer".into(), json!(self.decomposer.describe()));
        if states_confidence {
            extra.insert("confidence".into(), json!(self.confidence.describe()));
        }
        let settings = RunSettings {
            method: self.policy.method.name.clone(),
            model: self.model_label.clone(),
            dataset: self.dataset_name.clone(),
            split: None,
            reader: Some(format!("decomposer: {}", self.decomposer.describe())),
            judge: Some(self.checker.describe()),
            extra,
        };
        let counts = BTreeMap::from([
            ("people".to_string(), entities.len() as u64),
            ("claims".to_string(), items.len() as u64),
            (
                "supported".to_string(),
                checks.iter().filter(|c| c.supported).count() as u64,
            ),
            ("failures".to_string(), failures.len() as u64),
        ]);
        stages.finish(&settings, examples, &failures, counts, without_claims)
    }

    fn decompose(&self, chunk: &[&GenerationRecord]) -> Result<Vec<ClaimsRecord>, PipelineError> {
        let inputs: Vec<DecomposeInput<'_>> = chunk
            .iter()
            .filter(|g| !g.text.trim().is_empty())
            .map(|g| DecomposeInput {
                entity: &g.id,
                paragraph: &g.text,
            })
            .collect();
        let mut outcomes = self.decomposer.decompose(&inputs)?.into_iter();
        chunk
            .iter()
            .map(|g| {
                let outcome = if g.text.trim().is_empty() {
                    Ok(Vec::new())
                } else {
                    outcomes.next().ok_or_else(|| {
                        PipelineError::Invalid(
                            "the decomposer returned fewer results than it was asked for".into(),
                        )
                    })?
                };
                Ok(match outcome {
                    Ok(groups) => ClaimsRecord {
                        id: g.id.clone(),
                        groups,
                        failure: None,
                    },
                    Err(failure) => ClaimsRecord {
                        id: g.id.clone(),
                        groups: Vec::new(),
                        failure: Some(failure),
                    },
                })
            })
            .collect()
    }

    fn check(
        &self,
        chunk: &[&ClaimItem],
        states_confidence: bool,
    ) -> Result<Vec<CheckRecord>, PipelineError> {
        let confidences = if states_confidence {
            Some(self.confidence.probabilities(chunk)?)
        } else {
            None
        };
        let checker = &self.checker;
        let mut records = Vec::with_capacity(chunk.len());
        // (record index, request) of the claims that have passages to check against.
        let mut asked: Vec<(usize, LlmRequest)> = Vec::new();
        for (i, claim) in chunk.iter().enumerate() {
            let mut record = CheckRecord {
                id: claim.id.clone(),
                confidence: None,
                passages: Vec::new(),
                supported: false,
                failures: Vec::new(),
            };
            if let Some((p, failure)) = confidences.as_ref().map(|c| c[i].clone()) {
                record.confidence = Some(p);
                record.failures.extend(failure);
            }
            match checker
                .index
                .search(&claim.entity, &claim.text, checker.passages)
            {
                Ok(passages) if passages.is_empty() => {
                    record.failures.push(ItemFailure::without_call(
                        Stage::Retrieval,
                        "no passage of the knowledge source matches the claim; counted as \
                         not supported",
                    ));
                }
                Ok(passages) => {
                    let shown: Vec<prompts::Passage<'_>> = passages
                        .iter()
                        .map(|p| prompts::Passage {
                            title: &p.title,
                            text: &p.text,
                        })
                        .collect();
                    let messages =
                        checker
                            .templates
                            .fact_check(&claim.entity, &claim.text, &shown)?;
                    asked.push((
                        i,
                        checker.settings.request(
                            chat_prompt(messages),
                            FACT_CHECK_MAX_TOKENS,
                            &format!("check/{}", claim.id),
                        ),
                    ));
                    record.passages = passages.into_iter().map(|p| p.id).collect();
                }
                Err(error) => {
                    record.failures.push(ItemFailure::without_call(
                        Stage::Retrieval,
                        format!("{error}; counted as not supported"),
                    ));
                }
            }
            records.push(record);
        }
        let requests: Vec<LlmRequest> = asked.iter().map(|(_, r)| r.clone()).collect();
        let verdicts = ask_parsed(
            checker.llm,
            &requests,
            checker.settings.max_attempts,
            Stage::FactCheck,
            parse_fact_check,
        );
        for ((i, _), verdict) in asked.iter().zip(verdicts) {
            match verdict {
                Ok(support) => records[*i].supported = support == Support::Supported,
                Err(failure) => records[*i].failures.push(failure),
            }
        }
        Ok(records)
    }
}

/// The objective claims of every biography, in order. Without stated confidence, alternatives
/// are claims of their own.
fn claim_items(claims: &[ClaimsRecord], states_confidence: bool) -> Vec<ClaimItem> {
    let mut items = Vec::new();
    for record in claims {
        for (g, group) in record.groups.iter().enumerate() {
            let grouped = group.alternatives.len() > 1;
            for (a, claim) in group.alternatives.iter().enumerate() {
                let ClaimKind::Objective { confidence } = &claim.kind else {
                    continue;
                };
                let id = if grouped {
                    format!("{}#{}.{}", record.id, g + 1, a + 1)
                } else {
                    format!("{}#{}", record.id, g + 1)
                };
                items.push(ClaimItem {
                    id,
                    entity: record.id.clone(),
                    text: claim.text.clone(),
                    confidence: confidence.clone(),
                    group: (grouped && states_confidence).then(|| (g + 1).to_string()),
                });
            }
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_decomposition_groups_numbered_alternatives_of_one_sentence() {
        let decomposer = LexicalDecomposer::default();
        let groups = decomposer.groups(
            "Nikola Tesla was an inventor and engineer. I am 80% sure he was born in 1856, and \
             20% sure that he was born in 1857. He probably moved to New York later.",
        );
        let shape: Vec<usize> = groups.iter().map(|g| g.alternatives.len()).collect();
        assert_eq!(shape, [1, 2, 1], "{groups:#?}");
        let confidence = |g: usize, a: usize| match &groups[g].alternatives[a].kind {
            ClaimKind::Objective { confidence } => confidence.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(confidence(0, 0), Stated::Direct);
        assert_eq!(confidence(1, 0), Stated::Probability(0.8));
        assert_eq!(confidence(1, 1), Stated::Probability(0.2));
        assert_eq!(confidence(2, 0), Stated::Phrase("probably".into()));
    }
}
