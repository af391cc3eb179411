//! A fast, deterministic lexical reader of stated confidence (issue 6).
//!
//! It finds explicit numbers ("I am about 70% sure", "with 85% confidence", "a 1-in-4 chance",
//! "a probability of 0.3") and hedge phrases ("almost certainly", "likely", "I believe"), the
//! latter mapped to probabilities through a [`HedgeTable`]. Each sentence is cut into clauses,
//! each owned by the confidence statement that governs it, so a paragraph's candidate answers can
//! be given the confidence the writer attached to them without calling any model. The same table
//! turns the confidence wording of decomposed biography claims into numbers (SPEC 5.3).

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

use super::ClaimConfidence;
use super::answer_match::contains_match;
use crate::{DataError, Result};

/// The default phrase → probability table.
///
/// Anchors come from two published tables. Sherman Kent's "Words of Estimative Probability"
/// (CIA, 1964): certain 1.0, almost certain 0.93, probable 0.75, chances about even 0.5, probably
/// not 0.3, almost certainly not 0.07. The phrase table of the reference system's biography
/// confidence filter (SPEC 5.3): almost impossible 0.05, doubtful and improbable 0.1, unlikely
/// 0.15, possible 0.3, tossup 0.5, good chance 0.65, likely and probable 0.75, almost certain
/// 0.95. The remaining phrases (first-person belief verbs, degree adverbs) are placed by us
/// between those anchors, in the order that surveys of how readers interpret such words find
/// (for example Mauboussin and Mauboussin, Harvard Business Review, 2018).
pub const DEFAULT_HEDGES: &[(&str, f64)] = &[
    // Certainty: as strong as a plain statement.
    ("certainly", 1.0),
    ("definitely", 1.0),
    ("undoubtedly", 1.0),
    ("without a doubt", 1.0),
    ("without question", 1.0),
    ("no doubt", 1.0),
    ("i am certain", 1.0),
    ("i'm certain", 1.0),
    ("i am sure", 1.0),
    ("i'm sure", 1.0),
    // Near certainty.
    ("almost certainly", 0.95),
    ("almost certain", 0.95),
    ("nearly certain", 0.95),
    ("virtually certain", 0.95),
    ("highly confident", 0.95),
    ("very confident", 0.95),
    ("extremely likely", 0.95),
    ("very likely", 0.9),
    ("highly likely", 0.9),
    ("very probably", 0.9),
    ("confident", 0.9),
    ("quite certain", 0.9),
    ("fairly certain", 0.85),
    ("reasonably certain", 0.85),
    ("pretty sure", 0.85),
    ("fairly sure", 0.85),
    ("quite sure", 0.85),
    ("fairly confident", 0.85),
    ("reasonably confident", 0.85),
    ("most likely", 0.85),
    ("in all likelihood", 0.85),
    // Probable.
    ("likely", 0.75),
    ("probably", 0.75),
    ("probable", 0.75),
    ("i believe", 0.75),
    ("i think", 0.7),
    ("presumably", 0.7),
    ("good chance", 0.65),
    ("i suspect", 0.6),
    ("more likely than not", 0.6),
    ("more likely", 0.6),
    ("better than even", 0.6),
    // About even.
    ("toss-up", 0.5),
    ("tossup", 0.5),
    ("even chance", 0.5),
    ("even odds", 0.5),
    ("50-50", 0.5),
    ("50/50", 0.5),
    ("fifty-fifty", 0.5),
    ("not sure", 0.5),
    ("unsure", 0.5),
    ("uncertain", 0.5),
    ("not certain", 0.5),
    ("maybe", 0.45),
    ("perhaps", 0.45),
    ("might", 0.4),
    ("not confident", 0.4),
    ("could be", 0.35),
    // Improbable.
    ("possibly", 0.3),
    ("possible", 0.3),
    ("conceivably", 0.3),
    ("probably not", 0.3),
    ("less likely", 0.3),
    ("i don't think", 0.25),
    ("i do not think", 0.25),
    ("i don't believe", 0.25),
    ("i do not believe", 0.25),
    ("unlikely", 0.15),
    ("not likely", 0.15),
    ("i doubt", 0.15),
    ("doubtful", 0.1),
    ("improbable", 0.1),
    ("very unlikely", 0.1),
    ("highly unlikely", 0.1),
    ("extremely unlikely", 0.05),
    ("almost impossible", 0.05),
    ("nearly impossible", 0.05),
    ("almost certainly not", 0.05),
    ("impossible", 0.0),
    ("certainly not", 0.0),
    ("definitely not", 0.0),
];

/// How a confidence was stated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfidenceSource {
    /// "70%", "70 percent", "60-70%" (the midpoint).
    Percentage,
    /// "1 in 4", "one-in-four", "3 out of 4".
    Ratio,
    /// "a probability of 0.7".
    Decimal,
    /// A phrase of the [`HedgeTable`].
    Hedge,
}

/// A confidence found in text.
#[derive(Debug, Clone, PartialEq)]
pub struct StatedConfidence {
    pub probability: f64,
    pub source: ConfidenceSource,
    /// The words it was read from, as written.
    pub evidence: String,
}

/// A stretch of a sentence and the confidence that governs it; `None` means stated plainly.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub text: String,
    pub confidence: Option<StatedConfidence>,
}

/// A sentence cut into clauses, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Sentence {
    pub text: String,
    pub clauses: Vec<Clause>,
}

/// Hedge phrases and their probabilities, matched case-insensitively on word boundaries, the
/// longest phrase first ("probably not" before "probably").
#[derive(Debug, Clone)]
pub struct HedgeTable {
    entries: Vec<(String, f64)>,
    by_phrase: HashMap<String, f64>,
    pattern: Regex,
}

impl HedgeTable {
    /// A table from (phrase, probability) pairs; phrases must be non-empty and unique, and
    /// probabilities in [0, 1].
    pub fn new<P: Into<String>>(entries: impl IntoIterator<Item = (P, f64)>) -> Result<Self> {
        let mut table = Vec::new();
        let mut by_phrase = HashMap::new();
        for (phrase, probability) in entries {
            let phrase = normalize_phrase(&phrase.into());
            if phrase.is_empty() {
                return Err(DataError::Invalid("hedge table: a phrase is empty".into()));
            }
            if !(0.0..=1.0).contains(&probability) {
                return Err(DataError::Invalid(format!(
                    "hedge table: \"{phrase}\" has probability {probability}, outside [0, 1]"
                )));
            }
            if by_phrase.insert(phrase.clone(), probability).is_some() {
                return Err(DataError::Invalid(format!(
                    "hedge table: \"{phrase}\" appears twice"
                )));
            }
            table.push((phrase, probability));
        }
        if table.is_empty() {
            return Err(DataError::Invalid("hedge table: no phrases".into()));
        }
        let mut longest_first: Vec<&str> =
            table.iter().map(|(phrase, _)| phrase.as_str()).collect();
        longest_first.sort_by_key(|phrase| std::cmp::Reverse(phrase.len()));
        let alternatives: Vec<String> = longest_first
            .iter()
            .map(|phrase| {
                phrase
                    .split(' ')
                    .map(|word| regex::escape(word).replace('\'', "['’]"))
                    .collect::<Vec<_>>()
                    .join(r"\s+")
            })
            .collect();
        let pattern =
            Regex::new(&format!(r"(?i)\b(?:{})\b", alternatives.join("|"))).map_err(|err| {
                DataError::Invalid(format!("hedge table: cannot build its pattern: {err}"))
            })?;
        Ok(HedgeTable {
            entries: table,
            by_phrase,
            pattern,
        })
    }

    /// The (phrase, probability) pairs, phrases normalised (lowercase, single spaces).
    pub fn entries(&self) -> &[(String, f64)] {
        &self.entries
    }

    /// The probability of exactly this phrase, if it is in the table.
    pub fn probability(&self, phrase: &str) -> Option<f64> {
        self.by_phrase.get(&normalize_phrase(phrase)).copied()
    }
}

impl Default for HedgeTable {
    fn default() -> Self {
        HedgeTable::new(DEFAULT_HEDGES.iter().copied())
            .expect("the built-in hedge table is valid (checked by tests)")
    }
}

/// Reads stated confidence from paragraphs and claims.
#[derive(Debug, Clone, Default)]
pub struct LexicalReader {
    hedges: HedgeTable,
}

impl LexicalReader {
    pub fn new(hedges: HedgeTable) -> Self {
        LexicalReader { hedges }
    }

    pub fn hedges(&self) -> &HedgeTable {
        &self.hedges
    }

    /// The paragraph's sentences, each cut into clauses with the confidence that governs them.
    ///
    /// A number counts as a confidence only with a cue nearby ("sure", "chance", "confidence",
    /// "estimate"... within a few words, or alone in parentheses), so "grew by 20%" is not one.
    /// A statement written before its claim ("I am 70% sure that X", "X is likely Y") governs the
    /// text up to the next statement or the next clause break (";", ", but", " or "...); one
    /// written after it, in parentheses or at the end of the sentence ("X (30%)", "X, I think."),
    /// governs the text back to the previous clause break.
    pub fn read(&self, paragraph: &str) -> Vec<Sentence> {
        sentence_spans(paragraph)
            .into_iter()
            .map(|(start, end)| {
                let sentence = &paragraph[start..end];
                let expressions = self.expressions(sentence, true);
                Sentence {
                    text: sentence.to_owned(),
                    clauses: clauses(sentence, &expressions),
                }
            })
            .collect()
    }

    /// The first confidence stated in a short text such as a claim or a confidence phrase; a
    /// bare number counts here without a cue ("60%"). `None` if nothing is stated.
    pub fn claim_confidence(&self, text: &str) -> Option<StatedConfidence> {
        self.expressions(text, false)
            .into_iter()
            .next()
            .map(|expression| expression.confidence)
    }

    /// The probability a decomposed claim's confidence stands for: 1 for a plain statement, the
    /// number if one was given, else what [`Self::claim_confidence`] reads from the wording.
    pub fn claim_probability(&self, confidence: &ClaimConfidence) -> Option<f64> {
        match confidence {
            ClaimConfidence::Direct => Some(1.0),
            ClaimConfidence::Probability(probability) => Some(*probability),
            ClaimConfidence::Phrase(phrase) => self
                .claim_confidence(phrase)
                .map(|stated| stated.probability),
        }
    }

    /// For each candidate answer, the confidence the paragraph states for it, in the manner of
    /// ForecastProbs: the first hedged clause that mentions it (alias-normalised, whole words)
    /// gives its probability; a candidate mentioned only in plain clauses gets 1; one never
    /// mentioned gets 0.
    pub fn forecast<S: AsRef<str>>(&self, paragraph: &str, candidates: &[S]) -> Vec<f64> {
        let clauses: Vec<Clause> = self
            .read(paragraph)
            .into_iter()
            .flat_map(|sentence| sentence.clauses)
            .collect();
        candidates
            .iter()
            .map(|candidate| {
                let candidate = [candidate.as_ref()];
                let mentions = || {
                    clauses
                        .iter()
                        .filter(|clause| contains_match(&clause.text, &candidate))
                };
                match mentions().find_map(|clause| clause.confidence.as_ref()) {
                    Some(stated) => stated.probability,
                    None if mentions().next().is_some() => 1.0,
                    None => 0.0,
                }
            })
            .collect()
    }

    /// Every confidence statement in `text`, in order, without overlaps. Numbers come first; a
    /// hedge phrase within a number's cue window ("I believe there is a 70% chance") is part of
    /// that statement and is dropped.
    fn expressions(&self, text: &str, require_cue: bool) -> Vec<Expression> {
        let mut found = numeric_expressions(text, require_cue);
        let windows: Vec<(usize, usize)> = found
            .iter()
            .map(|expression| cue_window(text, expression))
            .collect();
        for hedge in self.hedges.pattern.find_iter(text) {
            if windows
                .iter()
                .any(|&(start, end)| hedge.start() < end && start < hedge.end())
            {
                continue;
            }
            let Some(probability) = self.hedges.probability(hedge.as_str()) else {
                continue;
            };
            found.push(Expression {
                start: hedge.start(),
                end: hedge.end(),
                parenthesised: false,
                confidence: StatedConfidence {
                    probability,
                    source: ConfidenceSource::Hedge,
                    evidence: hedge.as_str().to_owned(),
                },
            });
        }
        found.sort_by_key(|expression| expression.start);
        found.dedup_by(|later, earlier| later.start < earlier.end);
        found
    }
}

/// A confidence statement at `start..end` of the text it was found in (parentheses included).
#[derive(Debug)]
struct Expression {
    start: usize,
    end: usize,
    parenthesised: bool,
    confidence: StatedConfidence,
}

/// Words that mark a number near them as a confidence, before or after it ("I am 70% sure",
/// "the chance is 70%").
const CUES: &[&str] = &[
    "sure",
    "certain",
    "certainty",
    "confident",
    "confidence",
    "chance",
    "chances",
    "probability",
    "likelihood",
    "likely",
    "odds",
];
/// Cues only before the number ("I would put it at 70%").
const BEFORE_ONLY_CUES: &[&str] = &[
    "estimate",
    "estimated",
    "guess",
    "believe",
    "think",
    "say",
    "put",
];
/// Cues only after the number ("70% probable").
const AFTER_ONLY_CUES: &[&str] = &["probable"];
const CUE_WORDS_BEFORE: usize = 5;
const CUE_WORDS_AFTER: usize = 3;

static PERCENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)(?:\b(\d{1,3}(?:\.\d+)?)\s*(?:%|percent\b|per\s+cent\b)?\s*(?:-|–|to)\s*)?",
        r"\b(\d{1,3}(?:\.\d+)?)\s*(?:%|percent\b|per\s+cent\b)",
    ))
    .expect("valid regex")
});
static RATIO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)\b(\d{1,3}|one|two|three|four|five|six|seven|eight|nine|ten)",
        r"(?:\s+|\s*-\s*)(?:in|out\s+of)(?:\s+|\s*-\s*)",
        r"(\d{1,4}|two|three|four|five|six|seven|eight|nine|ten|a\s+hundred|hundred)\b",
    ))
    .expect("valid regex")
});
static DECIMAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)\b(?:probability|likelihood|chance)(?:\s+of|\s+is|\s+at)?",
        r"\s*[:=]?\s*(0?\.\d+|1\.0+)\b|\b(0\.\d+)\s+(?:probability|likelihood|chance)\b",
    ))
    .expect("valid regex")
});
static CLAUSE_BREAK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i);|:|\s[-–—]\s|—|,\s*(?:and|but|while|whereas|although|though|or|yet|so)\b",
        r"|\b(?:but|whereas|although|though|or)\b",
    ))
    .expect("valid regex")
});

fn numeric_expressions(text: &str, require_cue: bool) -> Vec<Expression> {
    let mut found = Vec::new();
    let mut push =
        |start: usize, end: usize, probability: f64, source: ConfidenceSource, cue_needed: bool| {
            let parenthesised = parenthesised(text, start, end);
            if cue_needed && require_cue && parenthesised.is_none() && !has_cue(text, start, end) {
                return;
            }
            let (span_start, span_end) = parenthesised.unwrap_or((start, end));
            found.push(Expression {
                start: span_start,
                end: span_end,
                parenthesised: parenthesised.is_some(),
                confidence: StatedConfidence {
                    probability,
                    source,
                    evidence: text[start..end].to_owned(),
                },
            });
        };
    for caps in PERCENT.captures_iter(text) {
        let whole = caps.get(0).expect("group 0 always matches");
        let high: f64 = caps[2].parse().unwrap_or(f64::NAN);
        let low: f64 = caps
            .get(1)
            .map_or(high, |low| low.as_str().parse().unwrap_or(f64::NAN));
        if low <= high && high <= 100.0 {
            push(
                whole.start(),
                whole.end(),
                (low + high) / 200.0,
                ConfidenceSource::Percentage,
                true,
            );
        }
    }
    for caps in RATIO.captures_iter(text) {
        let whole = caps.get(0).expect("group 0 always matches");
        if let (Some(part), Some(total)) = (number_value(&caps[1]), number_value(&caps[2]))
            && total > 0.0
            && part <= total
        {
            push(
                whole.start(),
                whole.end(),
                part / total,
                ConfidenceSource::Ratio,
                true,
            );
        }
    }
    for caps in DECIMAL.captures_iter(text) {
        let whole = caps.get(0).expect("group 0 always matches");
        let value = caps
            .get(1)
            .or_else(|| caps.get(2))
            .and_then(|value| value.as_str().parse::<f64>().ok());
        if let Some(probability) = value.filter(|probability| (0.0..=1.0).contains(probability)) {
            push(
                whole.start(),
                whole.end(),
                probability,
                ConfidenceSource::Decimal,
                false,
            );
        }
    }
    found.sort_by_key(|expression| expression.start);
    found.dedup_by(|later, earlier| later.start < earlier.end);
    found
}

fn number_value(word: &str) -> Option<f64> {
    let word = word.to_lowercase();
    let value = match word.split_whitespace().last()? {
        "one" => 1.0,
        "two" => 2.0,
        "three" => 3.0,
        "four" => 4.0,
        "five" => 5.0,
        "six" => 6.0,
        "seven" => 7.0,
        "eight" => 8.0,
        "nine" => 9.0,
        "ten" => 10.0,
        "hundred" => 100.0,
        digits => digits.parse().ok()?,
    };
    Some(value)
}

fn lowercase_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn has_cue(text: &str, start: usize, end: usize) -> bool {
    let before = lowercase_words(&text[..start]);
    let after = lowercase_words(&text[end..]);
    before
        .iter()
        .rev()
        .take(CUE_WORDS_BEFORE)
        .any(|word| is_cue(word, BEFORE_ONLY_CUES))
        || after
            .iter()
            .take(CUE_WORDS_AFTER)
            .any(|word| is_cue(word, AFTER_ONLY_CUES))
}

fn is_cue(word: &str, cues_of_this_side: &[&str]) -> bool {
    CUES.contains(&word) || cues_of_this_side.contains(&word)
}

/// The span from `(` to `)` when the statement stands alone in short parentheses: "(30%)",
/// "(about 30%)", "(30% confidence)".
fn parenthesised(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    const SLACK: usize = 24;
    let open = text[..start].rfind('(')?;
    let close = end + text[end..].find(')')?;
    let inside_before = &text[open + 1..start];
    let inside_after = &text[end..close];
    let short = inside_before.len() <= SLACK && inside_after.len() <= SLACK;
    let unnested = !inside_before.contains(')') && !inside_after.contains('(');
    (short && unnested).then_some((open, close + 1))
}

/// The words around a number in which a hedge phrase belongs to that number's statement.
fn cue_window(text: &str, expression: &Expression) -> (usize, usize) {
    let mut start = expression.start;
    let mut words_seen = 0;
    for (index, c) in text[..expression.start].char_indices().rev() {
        if !c.is_alphanumeric() && c != '\'' && c != '’' {
            continue;
        }
        let at_word_start = text[..index]
            .chars()
            .next_back()
            .is_none_or(|prev| !prev.is_alphanumeric() && prev != '\'' && prev != '’');
        if at_word_start {
            words_seen += 1;
            start = index;
            if words_seen == CUE_WORDS_BEFORE {
                break;
            }
        }
    }
    let mut end = expression.end;
    let mut words_seen = 0;
    let after = &text[expression.end..];
    let mut in_word = false;
    for (index, c) in after.char_indices() {
        let word_char = c.is_alphanumeric() || c == '\'' || c == '’';
        if word_char {
            in_word = true;
            end = expression.end + index + c.len_utf8();
        } else if in_word {
            in_word = false;
            words_seen += 1;
            if words_seen == CUE_WORDS_AFTER {
                break;
            }
        }
    }
    (start, end)
}

/// Cuts a sentence into clauses owned by its confidence statements (see [`LexicalReader::read`]).
fn clauses(sentence: &str, expressions: &[Expression]) -> Vec<Clause> {
    let mut spans: Vec<(usize, usize, Option<usize>)> = Vec::new();
    // The open span starts at `cursor` and belongs to `owner`: a statement written before its
    // claim, or nobody.
    let mut cursor = 0;
    let mut owner = None;
    let mut last_end = 0;
    for (index, expression) in expressions.iter().enumerate() {
        let clause_break = CLAUSE_BREAK
            .find_iter(&sentence[last_end..expression.start])
            .last()
            .map(|found| last_end + found.end());
        // Where this statement's own stretch begins: after the last clause break; with none,
        // at the statement itself if an earlier statement still governs the text, else at the
        // open span's start (so "Lyon is likely the capital" is all governed by "likely").
        let lead = match (clause_break, owner) {
            (Some(position), _) => position,
            (None, Some(_)) => expression.start,
            (None, None) => cursor,
        };
        if lead > cursor {
            spans.push((cursor, lead, owner));
        }
        let ends_sentence = sentence[expression.end..]
            .chars()
            .all(|c| c.is_whitespace() || ".!?,;:\"'”’)".contains(c));
        if expression.parenthesised || ends_sentence {
            // A statement that closes the sentence takes the closing punctuation with it.
            let end = if ends_sentence {
                sentence.len()
            } else {
                expression.end
            };
            spans.push((lead, end, Some(index)));
            cursor = end;
            owner = None;
        } else {
            cursor = lead;
            owner = Some(index);
        }
        last_end = expression.end;
    }
    if cursor < sentence.len() {
        spans.push((cursor, sentence.len(), owner));
    }
    spans
        .into_iter()
        .filter_map(|(start, end, owner)| {
            let text = sentence[start..end].trim();
            (!text.is_empty()).then(|| Clause {
                text: text.to_owned(),
                confidence: owner.map(|index| expressions[index].confidence.clone()),
            })
        })
        .collect()
}

/// Byte spans of the sentences of `text`: a sentence ends at ".", "!" or "?" followed by space
/// and a capital, digit or quote (not after an initial or a common abbreviation), or at a blank
/// line.
fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    const ABBREVIATIONS: &[&str] = &[
        "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "no", "mt", "ft", "approx",
        "ca", "gen", "col", "lt", "sgt", "capt", "rev", "hon", "inc", "ltd", "co", "e.g", "i.e",
    ];
    let mut spans = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (position, c) = chars[i];
        let mut boundary = None;
        if matches!(c, '.' | '!' | '?') {
            let mut j = i + 1;
            while j < chars.len() && "\"'”’)]".contains(chars[j].1) {
                j += 1;
            }
            let end = chars.get(j).map_or(text.len(), |&(at, _)| at);
            let mut k = j;
            while k < chars.len() && chars[k].1.is_whitespace() {
                k += 1;
            }
            let next = chars.get(k).map(|&(_, next)| next);
            let starts_sentence = next.is_none_or(|next| {
                next.is_uppercase() || next.is_numeric() || "\"'“‘(".contains(next)
            });
            let word_before: String = text[start..position]
                .rsplit(char::is_whitespace)
                .next()
                .unwrap_or("")
                .trim_start_matches(|ch: char| !ch.is_alphanumeric())
                .to_lowercase();
            let abbreviation = c == '.'
                && (word_before.chars().count() == 1
                    && word_before.chars().all(char::is_alphabetic)
                    || word_before.contains('.')
                    || ABBREVIATIONS.contains(&word_before.as_str()));
            if (k > j || k == chars.len()) && starts_sentence && !abbreviation {
                boundary = Some((end, k));
            }
        } else if c == '\n' {
            let mut k = i + 1;
            let mut newlines = 1;
            while k < chars.len() && chars[k].1.is_whitespace() {
                newlines += usize::from(chars[k].1 == '\n');
                k += 1;
            }
            if newlines >= 2 {
                boundary = Some((position, k));
            }
        }
        match boundary {
            Some((end, next_start)) => {
                push_trimmed(&mut spans, text, start, end);
                start = chars.get(next_start).map_or(text.len(), |&(at, _)| at);
                i = next_start.max(i + 1);
            }
            None => i += 1,
        }
    }
    push_trimmed(&mut spans, text, start, text.len());
    spans
}

fn push_trimmed(spans: &mut Vec<(usize, usize)>, text: &str, start: usize, end: usize) {
    let piece = &text[start..end];
    let trimmed_start = start + (piece.len() - piece.trim_start().len());
    let trimmed_end = start + piece.trim_end().len();
    if trimmed_start < trimmed_end {
        spans.push((trimmed_start, trimmed_end));
    }
}

fn normalize_phrase(phrase: &str) -> String {
    phrase
        .to_lowercase()
        .replace('’', "'")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
