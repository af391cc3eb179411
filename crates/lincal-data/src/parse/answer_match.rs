//! Alias-normalised answer matching: the cheap QA judge.
//!
//! Normalisation follows TriviaQA's official evaluation script: lowercase, punctuation (and any
//! other non-alphanumeric character) replaced by a space, the articles "a", "an", "the" removed,
//! whitespace collapsed. Replacing punctuation by a space rather than deleting it (SQuAD's choice)
//! makes "Jean-Paul" match "Jean Paul"; the cost is that "U.S." becomes "u s" and no longer
//! matches "US".

/// The normal form in which answers are compared.
pub fn normalize_answer(text: &str) -> String {
    let spaced: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    spaced
        .split_whitespace()
        .filter(|word| !matches!(*word, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// True when the normalised prediction equals the normalised form of any alias. A prediction
/// that normalises to nothing (say "The") matches nothing.
pub fn exact_match<S: AsRef<str>>(prediction: &str, aliases: &[S]) -> bool {
    let prediction = normalize_answer(prediction);
    !prediction.is_empty()
        && aliases
            .iter()
            .any(|alias| normalize_answer(alias.as_ref()) == prediction)
}

/// True when some alias appears, as whole words, inside the normalised text: "the answer is
/// Paris, France" contains "Paris". Also tells whether a query gives its answer away.
pub fn contains_match<S: AsRef<str>>(text: &str, aliases: &[S]) -> bool {
    let text = normalize_answer(text);
    let words: Vec<&str> = text.split_whitespace().collect();
    aliases.iter().any(|alias| {
        let alias = normalize_answer(alias.as_ref());
        let alias_words: Vec<&str> = alias.split_whitespace().collect();
        !alias_words.is_empty()
            && words
                .windows(alias_words.len())
                .any(|window| window == alias_words.as_slice())
    })
}
