//! Parsers of what teachers, readers and judges answer, one pure function per output format.
//!
//! Each accepts the format its template asks for and the usual sloppiness of model output (prose
//! before or after, markdown bullets and emphasis, quotes, trailing periods, other letter case,
//! "Answer:" prefixes). Anything else is a [`DataError::Invalid`] that says what was expected and
//! quotes the start of what came, so a retry loop can log it and ask again.
//!
//! Also here: the lexical confidence reader ([`LexicalReader`]) and alias-normalised answer
//! matching ([`exact_match`], [`contains_match`]).

mod answer_match;
mod lexical;

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

pub use answer_match::{contains_match, exact_match, normalize_answer};
pub use lexical::{
    Clause, ConfidenceSource, DEFAULT_HEDGES, HedgeTable, LexicalReader, Sentence, StatedConfidence,
};

use crate::{DataError, Result};

/// How much of an unparseable response an error message quotes.
const EXCERPT_CHARS: usize = 80;

/// A base-model sample cut to its first paragraph (SPEC 1.2 step 3): surrounding whitespace is
/// stripped and the text stops at the first blank line, or at a `###` line where the model
/// starts writing the next few-shot example. Lines holding only spaces count as blank (the
/// reference splits on a literal "\n\n").
pub fn first_paragraph(sample: &str) -> String {
    sample
        .trim()
        .lines()
        .take_while(|line| !line.trim().is_empty() && !line.trim_start().starts_with("###"))
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The open-ended query from a `open_ended_query` reply ("Query: Write a paragraph about ...").
pub fn parse_open_ended_query(text: &str) -> Result<String> {
    single_value(
        text,
        |label| label.ends_with("query"),
        "open-ended query",
        "a line \"Query: Write a paragraph about ...\"",
    )
}

/// The rewritten question from a `jeopardy_rephrase` reply ("Rephrased question: ...").
pub fn parse_rephrased_question(text: &str) -> Result<String> {
    single_value(
        text,
        |label| label.contains("rephrased") || label.contains("rewritten"),
        "rephrased Jeopardy question",
        "a line \"Rephrased question: ...\"",
    )
}

/// The paragraph of a `summarize_samples` reply. A leading "### My Statement" or "Statement:"
/// header is dropped; a reply that refers to numbered Thoughts ("Thought 3 says...") is rejected,
/// since it would teach the policy to talk about sources it does not have.
pub fn parse_summary(text: &str) -> Result<String> {
    static THOUGHT_REFERENCE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?i)\bthoughts?\s*#?\s*\d").expect("valid regex"));
    let trimmed = text.trim();
    let (first, rest) = trimmed.split_once('\n').unwrap_or((trimmed, ""));
    let body = match split_label(first) {
        Some((label, value)) if label.ends_with("statement") => format!("{value}\n{rest}"),
        _ if clean(first)
            .to_lowercase()
            .trim_end_matches(':')
            .ends_with("statement") =>
        {
            rest.to_owned()
        }
        _ => trimmed.to_owned(),
    };
    let body = body.trim();
    if body.is_empty() {
        return Err(malformed(
            "summary",
            "a paragraph of first-person statements",
            text,
        ));
    }
    if let Some(found) = THOUGHT_REFERENCE.find(body) {
        return Err(DataError::Invalid(format!(
            "summary refers to \"{}\"; the statement must not mention the Thoughts: \"{}\"",
            found.as_str(),
            excerpt(body)
        )));
    }
    Ok(body.to_owned())
}

/// The candidate answers of an answer-extraction reply: from the `extract_answers` teacher
/// ("Reasoning: ...\nAnswers: a; b") or the ExtractAnswers model ("a; b", "No Answer").
/// Answers are split on ";" (or given as bullet lines), cleaned, and de-duplicated by their
/// normal form keeping the first spelling. The no-answer marker ("none", "No Answer",
/// "No Answers") gives an empty list (SPEC 1.5, 1.7). Where the reply is a teacher's,
/// [`parse_teacher_extraction`] is the stricter reading.
pub fn parse_extracted_answers(text: &str) -> Result<Vec<String>> {
    extracted_answers(text, true)
}

/// How an ExtractAnswers model's output becomes its candidate answers, in the PPO reward and
/// the evaluation's surrogate reader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtractionParsing {
    /// The reference's (`postprocess_answer_extractions`, SPEC 1.5): an output that is exactly
    /// "No Answer" names none; any other is split on ";", each item stripped of surrounding
    /// whitespace, exact duplicates dropped. Nothing fails to parse: a run-on item ("Lyon\n###
    /// Question: ...") or an empty output is a candidate the forecaster scores like any other,
    /// and "The Beatles; Beatles" is two candidates.
    #[default]
    Reference,
    /// lincal's reading ([`parse_extracted_answers`]): the answers line or one bare line, items
    /// cleaned and de-duplicated by their normal form; an output that does not parse names no
    /// answer and is counted as unparsed.
    Normalized,
}

impl ExtractionParsing {
    /// The name in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ExtractionParsing::Reference => "reference",
            ExtractionParsing::Normalized => "normalized",
        }
    }

    /// The candidates `output` names, and whether it parsed (always, for the reference's).
    pub fn candidates(self, output: &str) -> (Vec<String>, bool) {
        match self {
            ExtractionParsing::Reference if output == "No Answer" => (Vec::new(), true),
            ExtractionParsing::Reference => {
                let mut candidates: Vec<String> = Vec::new();
                for item in output.split(';').map(str::trim) {
                    if !candidates.iter().any(|seen| seen == item) {
                        candidates.push(item.to_string());
                    }
                }
                (candidates, true)
            }
            ExtractionParsing::Normalized => match parse_extracted_answers(output) {
                Ok(answers) => (answers, true),
                Err(_) => (Vec::new(), false),
            },
        }
    }
}

impl std::str::FromStr for ExtractionParsing {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "reference" => Ok(ExtractionParsing::Reference),
            "normalized" => Ok(ExtractionParsing::Normalized),
            other => Err(format!(
                "{other:?} is not an extraction parsing; use \"reference\" or \"normalized\""
            )),
        }
    }
}

/// The candidate answers of an `extract_answers` teacher reply, as [`parse_extracted_answers`]
/// reads them, except that the answers line ("Answers: a; b", "Answers: none") is required: a
/// teacher that answers with one bare line (or bullets) did not follow the format, and its line
/// may as well be a sentence of the paragraph as a list of answers.
pub fn parse_teacher_extraction(text: &str) -> Result<Vec<String>> {
    extracted_answers(text, false)
}

/// The answers of an extraction reply; `unlabelled` also accepts one bare line or bullet lines
/// without the answers label (the ExtractAnswers model's format).
fn extracted_answers(text: &str, unlabelled: bool) -> Result<Vec<String>> {
    const WHAT: &str = "extracted answers";
    const EXPECTED: &str = "a line \"Answers: a; b; c\" or \"Answers: none\"";
    let lines: Vec<&str> = text.lines().collect();
    let value_lines: Vec<String> = match last_labelled(&lines, is_answers_label) {
        Some((_, value)) if !value.is_empty() => vec![value],
        Some((index, _)) => lines[index + 1..]
            .iter()
            .skip_while(|line| line.trim().is_empty())
            .take_while(|line| !line.trim().is_empty() && split_label(line).is_none())
            .map(|line| line.to_string())
            .collect(),
        None if !unlabelled => return Err(malformed(WHAT, EXPECTED, text)),
        None => {
            let filled: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|line| !line.trim().is_empty())
                .collect();
            let labelled_reasoning = filled.iter().any(|line| {
                split_label(line).is_some_and(|(label, _)| {
                    label.starts_with("reason") || label.starts_with("explanation")
                })
            });
            if labelled_reasoning || filled.is_empty() {
                return Err(malformed(WHAT, EXPECTED, text));
            }
            if filled.len() == 1 || filled.iter().all(|line| is_bullet(line)) {
                filled.iter().map(|line| line.to_string()).collect()
            } else {
                return Err(malformed(WHAT, EXPECTED, text));
            }
        }
    };
    let items: Vec<String> = value_lines
        .iter()
        .flat_map(|line| line.split(';'))
        .map(clean_item)
        .filter(|item| !item.is_empty())
        .collect();
    if items.is_empty() {
        return Err(malformed(WHAT, EXPECTED, text));
    }
    let markers = items.iter().filter(|item| is_no_answer(item)).count();
    if markers > 0 {
        return if markers == items.len() {
            Ok(Vec::new())
        } else {
            Err(malformed(
                WHAT,
                "either answers or the no-answer marker, not both",
                text,
            ))
        };
    }
    let mut seen = std::collections::HashSet::new();
    Ok(items
        .into_iter()
        .filter(|item| {
            let key = normalize_answer(item);
            seen.insert(if key.is_empty() {
                item.to_lowercase()
            } else {
                key
            })
        })
        .collect())
}

/// The probability of a forecast reply ("Probability: 0.7"). Accepts "0.7", ".7", "70%",
/// "70 percent", "Probability: 0.70." and the like; a number above 1 is refused unless it is
/// written as a percentage, since "70" could be a slip for either.
pub fn parse_probability(text: &str) -> Result<f64> {
    const WHAT: &str = "probability";
    const EXPECTED: &str =
        "a line \"Probability: <number between 0 and 1>\" (a percentage such as 70% also works)";
    let lines: Vec<&str> = text.lines().collect();
    let is_label = |label: &str| {
        label.contains("probability")
            || matches!(label, "answer" | "forecast" | "p" | "final answer")
    };
    let (value, labelled) = match last_labelled(&lines, is_label) {
        Some((index, value)) if value.is_empty() => (next_filled_line(&lines, index), true),
        Some((_, value)) => (Some(value), true),
        None => (
            lines
                .iter()
                .rev()
                .find(|line| !line.trim().is_empty())
                .map(|line| clean(line)),
            false,
        ),
    };
    let value = value.ok_or_else(|| malformed(WHAT, EXPECTED, text))?;
    let numbers: Vec<regex::Captures> = NUMBER.captures_iter(&value).collect();
    // Unlabelled, the last line must hold one number and nothing that could be another.
    let number = match (labelled, numbers.as_slice()) {
        (true, [first, ..]) | (false, [first]) => first,
        _ => return Err(malformed(WHAT, EXPECTED, text)),
    };
    probability_from_number(number)
        .map_err(|problem| malformed(WHAT, &format!("{EXPECTED} ({problem})"), text))
}

/// A yes/no verdict from a `binary_correctness` reply ("Correct: 1"). Yes/no, true/false, 1/0 and
/// correct/incorrect are all understood.
pub fn parse_correctness(text: &str) -> Result<bool> {
    parse_verdict(
        text,
        "correctness label",
        "a line \"Correct: 1\" or \"Correct: 0\" (yes/no, \
         true/false and correct/incorrect also work)",
    )
}

/// Whether a fact check found a claim supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Support {
    Supported,
    NotSupported,
}

/// The verdict of a `fact_check` reply ("True" / "False"; "supported" / "not supported" too).
pub fn parse_fact_check(text: &str) -> Result<Support> {
    let supported = parse_verdict(text, "fact-check verdict", "\"True\" or \"False\"")?;
    Ok(if supported {
        Support::Supported
    } else {
        Support::NotSupported
    })
}

/// The verdicts of a `judge_equivalence` reply for a batch of `expected` pairs: one
/// "Verdict i: Yes/No" per pair, in any order and with some formatting latitude ("1. Yes",
/// "**Verdict 1:** yes", `{"Verdict 1": "Yes"}`). Every number from 1 to `expected` must appear,
/// and no other (SPEC 8, item 10: the reference did not check this).
pub fn parse_judge_verdicts(text: &str, expected: usize) -> Result<Vec<bool>> {
    static VERDICT_LINE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(concat!(
            r#"(?i)(?:^|[\s{,"'*])(?:(?:verdict|answer|pair|item)\s*)?#?(\d{1,3})"#,
            r#"\s*["'*]*\s*[:.)=\-–]+\s*["'*]*\s*(yes|no|true|false|correct|incorrect)\b"#,
        ))
        .expect("valid regex")
    });
    const WHAT: &str = "judge verdicts";
    if expected == 0 {
        return Err(DataError::Invalid(
            "judge verdicts: a batch holds at least one pair".into(),
        ));
    }
    let expected_text = format!(
        "{expected} lines \"Verdict i: Yes\" or \"Verdict i: No\", numbered 1 to {expected}"
    );
    let mut verdicts: Vec<Option<bool>> = vec![None; expected];
    let mut found_any = false;
    for caps in VERDICT_LINE.captures_iter(text) {
        found_any = true;
        let number: usize = caps[1].parse().unwrap_or(0);
        let verdict = matches!(caps[2].to_lowercase().as_str(), "yes" | "true" | "correct");
        let Some(slot) = number
            .checked_sub(1)
            .and_then(|index| verdicts.get_mut(index))
        else {
            return Err(malformed(
                WHAT,
                &format!("{expected_text}; found verdict {number}"),
                text,
            ));
        };
        match slot {
            Some(earlier) if *earlier != verdict => {
                return Err(malformed(
                    WHAT,
                    &format!("{expected_text}; verdict {number} is given twice, differently"),
                    text,
                ));
            }
            _ => *slot = Some(verdict),
        }
    }
    if !found_any {
        return Err(malformed(WHAT, &expected_text, text));
    }
    let missing: Vec<String> = verdicts
        .iter()
        .enumerate()
        .filter(|(_, verdict)| verdict.is_none())
        .map(|(index, _)| (index + 1).to_string())
        .collect();
    if !missing.is_empty() {
        return Err(malformed(
            WHAT,
            &format!("{expected_text}; missing {}", missing.join(", ")),
            text,
        ));
    }
    Ok(verdicts.into_iter().flatten().collect())
}

/// The confidence a decomposed claim was stated with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClaimConfidence {
    /// Stated without hedging: confidence 1 (SPEC 5.3, "Direct").
    Direct,
    /// A number, from "0.7" or "70%".
    Probability(f64),
    /// The writer's wording ("I believe", "about 70% sure"); read it with
    /// [`LexicalReader::claim_probability`].
    Phrase(String),
}

/// What kind of claim a decomposed claim is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClaimKind {
    /// A checkable fact, with the writer's confidence in it.
    Objective { confidence: ClaimConfidence },
    /// Opinion or praise; not checked.
    Subjective,
    /// The writer says they do not know; not checked.
    Abstention,
}

/// One atomic claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub text: String,
    pub kind: ClaimKind,
}

/// One claim, or several mutually exclusive alternatives of which at most one is true; for the
/// metrics a group counts once, through its most confident alternative (SPEC 5.3 step 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimGroup {
    pub alternatives: Vec<Claim>,
}

/// The claims of a `decompose_claims` reply: a JSON list whose elements are claims
/// `{"claim", "type", "confidence"}` or groups `{"alternatives": [...]}` (a nested list is also
/// read as a group). Prose or a code fence around the list, and trailing commas, are tolerated.
pub fn parse_claims(text: &str) -> Result<Vec<ClaimGroup>> {
    static TRAILING_COMMA: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r",(\s*[\]}])").expect("valid regex"));
    const WHAT: &str = "claims";
    const EXPECTED: &str = "a JSON list of {\"claim\", \"type\", \"confidence\"} objects and \
                            {\"alternatives\": [...]} groups";
    let (Some(start), Some(end)) = (text.find('['), text.rfind(']')) else {
        return Err(malformed(WHAT, EXPECTED, text));
    };
    // Claims written as bare objects, outside any list, would otherwise be read through the
    // first group's inner list.
    if end < start || text[..start].contains('{') {
        return Err(malformed(WHAT, EXPECTED, text));
    }
    let json = TRAILING_COMMA.replace_all(&text[start..=end], "$1");
    let items: Vec<Json> = serde_json::from_str(&json)
        .map_err(|err| malformed(WHAT, &format!("{EXPECTED} (JSON error: {err})"), text))?;
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let at = format!("item {}", index + 1);
            let members = match item {
                Json::Object(object) => match object.get("alternatives") {
                    Some(Json::Array(members)) => Some(members),
                    Some(_) => {
                        return Err(claim_error(
                            &at,
                            "\"alternatives\" must be a list of claims",
                            text,
                        ));
                    }
                    None => None,
                },
                Json::Array(members) => Some(members),
                _ => return Err(claim_error(&at, "expected a claim object or a group", text)),
            };
            let Some(members) = members else {
                return Ok(ClaimGroup {
                    alternatives: vec![claim_from_json(item, &at, text)?],
                });
            };
            if members.is_empty() {
                return Err(claim_error(&at, "a group of alternatives is empty", text));
            }
            let alternatives = members
                .iter()
                .enumerate()
                .map(|(member, value)| {
                    let at = format!("{at}, alternative {}", member + 1);
                    let claim = claim_from_json(value, &at, text)?;
                    match claim.kind {
                        ClaimKind::Objective { .. } => Ok(claim),
                        _ => Err(claim_error(
                            &at,
                            "alternatives must be objective claims",
                            text,
                        )),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(ClaimGroup { alternatives })
        })
        .collect()
}

fn claim_from_json(value: &Json, at: &str, text: &str) -> Result<Claim> {
    let Json::Object(object) = value else {
        return Err(claim_error(at, "expected an object with \"claim\"", text));
    };
    let claim = match object.get("claim") {
        Some(Json::String(claim)) if !claim.trim().is_empty() => claim.trim().to_owned(),
        _ => {
            return Err(claim_error(
                at,
                "\"claim\" must be a non-empty string",
                text,
            ));
        }
    };
    let kind_name = match object.get("type") {
        None => "objective".to_owned(),
        Some(Json::String(kind)) => kind.trim().to_lowercase(),
        Some(_) => return Err(claim_error(at, "\"type\" must be a string", text)),
    };
    let kind = match kind_name.as_str() {
        "objective" => ClaimKind::Objective {
            confidence: confidence_from_json(object.get("confidence"), at, text)?,
        },
        "subjective" => ClaimKind::Subjective,
        "abstention" | "full uncertainty" | "unknown" => ClaimKind::Abstention,
        other => {
            return Err(claim_error(
                at,
                &format!("unknown type \"{other}\"; expected objective, subjective or abstention"),
                text,
            ));
        }
    };
    Ok(Claim { text: claim, kind })
}

fn confidence_from_json(value: Option<&Json>, at: &str, text: &str) -> Result<ClaimConfidence> {
    let problem = |message: &str| claim_error(at, message, text);
    match value {
        None | Some(Json::Null) => Err(problem(
            "an objective claim needs a \"confidence\" (\"direct\" if unhedged)",
        )),
        Some(Json::Number(number)) => {
            let value = number.as_f64().unwrap_or(f64::NAN);
            if (0.0..=1.0).contains(&value) {
                Ok(ClaimConfidence::Probability(value))
            } else {
                Err(problem(&format!(
                    "confidence {number} is not in [0, 1]; write 0.7 or \"70%\""
                )))
            }
        }
        Some(Json::String(wording)) => {
            let wording = wording.trim();
            let lowered = wording.to_lowercase();
            if lowered.is_empty() {
                return Err(problem(
                    "\"confidence\" is empty; write \"direct\" if the claim is unhedged",
                ));
            }
            if matches!(
                lowered.as_str(),
                "direct" | "stated directly" | "none" | "no hedge"
            ) {
                return Ok(ClaimConfidence::Direct);
            }
            // A number is the confidence when it is a percentage or the whole wording ("0.7");
            // "1-in-3 chance" is wording for the lexical reader.
            let number = NUMBER.captures(wording).filter(|caps| {
                let found = caps.get(0).map_or("", |found| found.as_str());
                wording.starts_with(found)
                    && (caps.get(3).is_some() || found.trim() == wording.trim_end_matches('.'))
            });
            match number {
                Some(number) => probability_from_number(&number)
                    .map(ClaimConfidence::Probability)
                    .map_err(|message| problem(&format!("confidence \"{wording}\": {message}"))),
                None => Ok(ClaimConfidence::Phrase(wording.to_owned())),
            }
        }
        Some(_) => Err(problem("\"confidence\" must be a string or a number")),
    }
}

fn claim_error(at: &str, message: &str, text: &str) -> DataError {
    DataError::Invalid(format!(
        "cannot parse claims: {at}: {message}; got \"{}\"",
        excerpt(text)
    ))
}

/// A number as written, with an optional leading "about"/"~" and sign, and an optional percent.
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)(?:(?:about|approximately|around|roughly|~|≈)\s*)?",
        r"(-)?(\d+(?:\.\d+)?|\.\d+)\s*(%|percent\b|per\s+cent\b)?",
    ))
    .expect("valid regex")
});

fn probability_from_number(caps: &regex::Captures) -> std::result::Result<f64, String> {
    let value: f64 = caps[2]
        .parse()
        .map_err(|_| format!("\"{}\" is not a number", &caps[2]))?;
    if caps.get(1).is_some() {
        return Err(format!("-{value} is negative"));
    }
    match caps.get(3) {
        Some(_) if value <= 100.0 => Ok(value / 100.0),
        Some(_) => Err(format!("{value}% is above 100%")),
        None if value <= 1.0 => Ok(value),
        None => Err(format!("{value} is above 1; write 0.7 or 70%")),
    }
}

/// Shared by the correctness and fact-check parsers: the verdict on the last labelled line
/// ("Correct: 1", "Answer: True", "Verdict: supported"), else on the last non-empty line.
fn parse_verdict(text: &str, what: &str, expected: &str) -> Result<bool> {
    let lines: Vec<&str> = text.lines().collect();
    let is_label = |label: &str| {
        label.contains("correct")
            || label.contains("true or false")
            || matches!(
                label,
                "answer"
                    | "final answer"
                    | "verdict"
                    | "label"
                    | "score"
                    | "output"
                    | "result"
                    | "judgement"
                    | "judgment"
                    | "decision"
                    | "supported"
            )
    };
    let value = match last_labelled(&lines, is_label) {
        Some((index, value)) if value.is_empty() => next_filled_line(&lines, index),
        Some((_, value)) => Some(value),
        None => lines
            .iter()
            .rev()
            .find(|line| !line.trim().is_empty())
            .map(|line| clean(line)),
    };
    value
        .and_then(|value| verdict_of(&value))
        .ok_or_else(|| malformed(what, expected, text))
}

/// The first verdict word of a value: "yes", "not correct", "1", "Supported."... A leading
/// "not" flips a positive word; a bare digit counts only as the first word ("1 of the answers"
/// is no verdict).
fn verdict_of(value: &str) -> Option<bool> {
    let words: Vec<String> = value
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect();
    for (index, word) in words.iter().enumerate() {
        let negated = index > 0 && words[index - 1] == "not";
        match word.as_str() {
            "yes" | "true" | "correct" | "supported" | "right" => return Some(!negated),
            "no" | "false" | "incorrect" | "wrong" | "unsupported" => return Some(false),
            "1" if index == 0 => return Some(true),
            "0" if index == 0 => return Some(false),
            _ => {}
        }
    }
    None
}

/// The value of a one-line answer: the last labelled line's value (or the line after an empty
/// label such as "Here is the query:"), else the only non-empty line.
fn single_value(
    text: &str,
    is_label: impl Fn(&str) -> bool,
    what: &str,
    expected: &str,
) -> Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    let value = match last_labelled(&lines, is_label) {
        Some((index, value)) if value.is_empty() => next_filled_line(&lines, index),
        Some((_, value)) => Some(value),
        None => match lines
            .iter()
            .filter(|line| !line.trim().is_empty())
            .collect::<Vec<_>>()
            .as_slice()
        {
            [only] if split_label(only).is_none() => Some(clean(only)),
            _ => None,
        },
    };
    value
        .filter(|value| !value.is_empty())
        .ok_or_else(|| malformed(what, expected, text))
}

/// The index and cleaned value of the last line whose label satisfies `is_label`.
fn last_labelled(lines: &[&str], is_label: impl Fn(&str) -> bool) -> Option<(usize, String)> {
    lines.iter().enumerate().rev().find_map(|(index, line)| {
        let (label, value) = split_label(line)?;
        is_label(&label).then(|| (index, clean_value(value)))
    })
}

fn next_filled_line(lines: &[&str], index: usize) -> Option<String> {
    lines[index + 1..]
        .iter()
        .find(|line| !line.trim().is_empty())
        .map(|line| clean(line))
}

/// Splits "Label: value" into the normalised label (lowercase, markdown removed, single spaces)
/// and the raw value, when the part before the first colon is short enough to be a label.
fn split_label(line: &str) -> Option<(String, &str)> {
    const MAX_LABEL_WORDS: usize = 10;
    let (label, value) = line.split_once(':')?;
    let label = clean(label).to_lowercase();
    let words: Vec<&str> = label.split_whitespace().collect();
    if words.is_empty() || words.len() > MAX_LABEL_WORDS {
        return None;
    }
    Some((words.join(" "), value))
}

fn is_answers_label(label: &str) -> bool {
    let words: Vec<&str> = label.split_whitespace().collect();
    let names_answers = words.contains(&"answers") || words.last() == Some(&"answer");
    names_answers && !label.starts_with("reason") && !label.starts_with("explanation")
}

fn is_bullet(line: &str) -> bool {
    static BULLET: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^\s*(?:[-*•+]|\d{1,2}[.)])\s+").expect("valid regex"));
    BULLET.is_match(line)
}

/// One line without markdown: heading marks, bullets (numbered ones too), emphasis, code
/// ticks, and quotes around the whole line.
fn clean(line: &str) -> String {
    static BULLET: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^\s*(?:#+\s*|[-*•+]\s+|\d{1,2}[.)]\s+)").expect("valid regex")
    });
    without_markdown(line, &BULLET)
}

/// The value after a label, cleaned as [`clean`] does a line except that a leading number
/// stays: a list would start on the next line, so in "Probability: 1. The answer..." the "1."
/// is the value, not a list marker.
fn clean_value(value: &str) -> String {
    static BULLET: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^\s*(?:#+\s*|[-*•+]\s+)").expect("valid regex"));
    without_markdown(value, &BULLET)
}

fn without_markdown(line: &str, bullet: &Regex) -> String {
    let unbulleted = bullet.replace(line, "");
    let plain = unbulleted
        .replace("**", "")
        .replace("__", "")
        .replace('`', "");
    strip_quotes(plain.trim()).trim().to_owned()
}

fn strip_quotes(text: &str) -> &str {
    const PAIRS: &[(char, char)] = &[('"', '"'), ('\'', '\''), ('“', '”'), ('‘', '’'), ('«', '»')];
    for &(open, close) in PAIRS {
        if let Some(inner) = text
            .strip_prefix(open)
            .and_then(|rest| rest.strip_suffix(close))
        {
            return inner;
        }
    }
    text
}

/// An extracted answer without decoration, and without a sentence-final period unless the
/// period closes an abbreviation ("Washington, D.C." keeps it).
fn clean_item(item: &str) -> String {
    let cleaned = clean(item);
    let Some(body) = cleaned.strip_suffix('.') else {
        return cleaned;
    };
    let abbreviation = body.chars().rev().nth(1) == Some('.');
    let body = if abbreviation { cleaned.as_str() } else { body };
    strip_quotes(body.trim()).trim().to_owned()
}

fn is_no_answer(item: &str) -> bool {
    matches!(
        item.to_lowercase().trim_end_matches('.').trim(),
        "none"
            | "no answer"
            | "no answers"
            | "n/a"
            | "no answer found"
            | "no answers found"
            | "(none)"
            | "nothing"
    )
}

fn excerpt(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}…", &flat[..end]),
        None => flat,
    }
}

fn malformed(what: &str, expected: &str, text: &str) -> DataError {
    if text.trim().is_empty() {
        return DataError::Invalid(format!(
            "cannot parse {what}: expected {expected}; got an empty response"
        ));
    }
    DataError::Invalid(format!(
        "cannot parse {what}: expected {expected}; got \"{}\"",
        excerpt(text)
    ))
}
