//! The parsers of teacher, reader and judge outputs, the lexical confidence reader and the
//! alias-normalised matcher: well-formed, sloppy and malformed inputs.

use lincal_data::DataError;
use lincal_data::parse::*;

fn error(result: Result<impl std::fmt::Debug, DataError>) -> String {
    match result {
        Err(DataError::Invalid(message)) => message,
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

// ---- base-model samples ------------------------------------------------------------------

#[test]
fn first_paragraph_stops_at_a_blank_line_or_the_next_example() {
    assert_eq!(
        first_paragraph("\n  Jupiter is big.\nIt has moons.\n\n### Query 10\nWrite"),
        "Jupiter is big.\nIt has moons."
    );
    assert_eq!(
        first_paragraph("Jupiter is big.\n   \nMore."),
        "Jupiter is big."
    );
    assert_eq!(
        first_paragraph("Jupiter is big.\n### Query 10\nWrite a paragraph"),
        "Jupiter is big."
    );
    assert_eq!(first_paragraph("Jupiter is big.  "), "Jupiter is big.");
    assert_eq!(first_paragraph("\n\n"), "");
}

// ---- open-ended queries and Jeopardy rephrasings ----------------------------------------

#[test]
fn open_ended_query_well_formed_and_sloppy() {
    let expected = "Write a paragraph about the fall of the Berlin Wall.";
    assert_eq!(
        parse_open_ended_query("Query: Write a paragraph about the fall of the Berlin Wall.")
            .unwrap(),
        expected
    );
    assert_eq!(
        parse_open_ended_query(
            "Sure! Here is the rewrite.\n\n\
             **Query:** \"Write a paragraph about the fall of the Berlin Wall.\"\n"
        )
        .unwrap(),
        expected
    );
    assert_eq!(
        parse_open_ended_query(
            "Here is the query:\n\nWrite a paragraph about the fall of the Berlin Wall."
        )
        .unwrap(),
        expected
    );
    assert_eq!(
        parse_open_ended_query("  Write a paragraph about the fall of the Berlin Wall.  ").unwrap(),
        expected
    );
    assert_eq!(
        parse_open_ended_query(
            "OPEN-ENDED QUERY: Write a paragraph about the fall of the Berlin Wall."
        )
        .unwrap(),
        expected
    );
}

#[test]
fn open_ended_query_malformed() {
    assert_eq!(
        error(parse_open_ended_query(
            "I think the question is about Germany.\nIt asks for a year."
        )),
        "cannot parse open-ended query: expected a line \"Query: Write a paragraph about ...\"; \
         got \"I think the question is about Germany. It asks for a year.\""
    );
    assert_eq!(
        error(parse_open_ended_query("   ")),
        "cannot parse open-ended query: expected a line \"Query: Write a paragraph about ...\"; \
         got an empty response"
    );
    assert!(error(parse_open_ended_query("Query:   ")).contains("expected a line \"Query:"));
}

#[test]
fn a_query_that_gives_its_answer_away_is_detected_by_contains_match() {
    assert!(contains_match(
        "Write a paragraph about Canberra, the capital.",
        &["Canberra"]
    ));
    assert!(!contains_match(
        "Write a paragraph about the capital city of Australia.",
        &["Canberra"]
    ));
}

#[test]
fn rephrased_question_well_formed_sloppy_and_malformed() {
    let reply = "Explanation: The category says it is about presidents.\n\
                 Rephrased question: Who was the first U.S. president to live in the White House?";
    assert_eq!(
        parse_rephrased_question(reply).unwrap(),
        "Who was the first U.S. president to live in the White House?"
    );
    assert_eq!(
        parse_rephrased_question(
            "explanation: none needed\n\
             - **Rephrased Question**: 'What is the most abundant gas in air?'"
        )
        .unwrap(),
        "What is the most abundant gas in air?"
    );
    assert_eq!(
        error(parse_rephrased_question(
            "Explanation: The category adds context."
        )),
        "cannot parse rephrased Jeopardy question: expected a line \"Rephrased question: ...\"; \
         got \"Explanation: The category adds context.\""
    );
}

// ---- summaries ---------------------------------------------------------------------------

#[test]
fn summary_well_formed_and_with_headers() {
    let paragraph = "I am certain that Bell invented the telephone. \
                     I estimate a 50% chance that he was born in Edinburgh.";
    assert_eq!(
        parse_summary(&format!("  {paragraph}\n")).unwrap(),
        paragraph
    );
    assert_eq!(
        parse_summary(&format!("### My Statement\n{paragraph}")).unwrap(),
        paragraph
    );
    assert_eq!(
        parse_summary(&format!("Here is my statement:\n\n{paragraph}")).unwrap(),
        paragraph
    );
    assert_eq!(
        parse_summary(&format!("Statement: {paragraph}")).unwrap(),
        paragraph
    );
}

#[test]
fn summary_malformed() {
    assert_eq!(
        error(parse_summary("### My Statement\n")),
        "cannot parse summary: expected a paragraph of first-person statements; \
         got \"### My Statement\""
    );
    assert_eq!(
        error(parse_summary(
            "I believe, as Thought 3 says, that it was 1876."
        )),
        "summary refers to \"Thought 3\"; the statement must not mention the Thoughts: \
         \"I believe, as Thought 3 says, that it was 1876.\""
    );
}

// ---- extracted answers -------------------------------------------------------------------

#[test]
fn extracted_answers_well_formed() {
    assert_eq!(
        parse_extracted_answers("Reasoning: It names two years.\nAnswers: 1889; 1887").unwrap(),
        ["1889", "1887"]
    );
    assert_eq!(
        parse_extracted_answers("Reasoning: Nothing fits.\nAnswers: none").unwrap(),
        Vec::<String>::new()
    );
    // The ExtractAnswers model's own format (SPEC 1.5).
    assert_eq!(
        parse_extracted_answers("Peru; Bolivia; Ecuador").unwrap(),
        ["Peru", "Bolivia", "Ecuador"]
    );
    assert_eq!(
        parse_extracted_answers("No Answer").unwrap(),
        Vec::<String>::new()
    );
    // The reference evaluation prompt's format (SPEC 5.1).
    assert_eq!(
        parse_extracted_answers(
            "Reasoning for Answer: The paragraph names one.\n\
             List of Answers to the Question in the Context Paragraph: Louvre."
        )
        .unwrap(),
        ["Louvre"]
    );
    assert_eq!(
        parse_extracted_answers("Reasoning: x\nList of Answers: No Answers.").unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn extracted_answers_sloppy() {
    assert_eq!(
        parse_extracted_answers(
            "Let me look.\n\n**Reasoning:** two names.\n\
             **Answers:** \"Gabriel García Márquez\"; 'Mario Vargas Llosa'.\n\nHope this helps!"
        )
        .unwrap(),
        ["Gabriel García Márquez", "Mario Vargas Llosa"]
    );
    assert_eq!(
        parse_extracted_answers("Answers:\n- Paris\n- Lyon.\n* `Marseille`\n\nDone.").unwrap(),
        ["Paris", "Lyon", "Marseille"]
    );
    assert_eq!(
        parse_extracted_answers("- Paris\n- Lyon").unwrap(),
        ["Paris", "Lyon"]
    );
    // Duplicates by normal form keep their first spelling; empty items vanish.
    assert_eq!(
        parse_extracted_answers("answers: The Beatles; beatles;; Beatles.; Wings").unwrap(),
        ["The Beatles", "Wings"]
    );
    // The period of an abbreviation stays.
    assert_eq!(
        parse_extracted_answers("Answers: Washington, D.C.; Boston.").unwrap(),
        ["Washington, D.C.", "Boston"]
    );
    assert_eq!(
        parse_extracted_answers("ANSWER: NONE.").unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn extracted_answers_malformed() {
    assert_eq!(
        error(parse_extracted_answers(
            "Reasoning: The paragraph names Paris."
        )),
        "cannot parse extracted answers: expected a line \"Answers: a; b; c\" or \
         \"Answers: none\"; got \"Reasoning: The paragraph names Paris.\""
    );
    assert_eq!(
        error(parse_extracted_answers(
            "The paragraph mentions Paris.\nIt also mentions Lyon."
        )),
        "cannot parse extracted answers: expected a line \"Answers: a; b; c\" or \
         \"Answers: none\"; got \"The paragraph mentions Paris. It also mentions Lyon.\""
    );
    assert_eq!(
        error(parse_extracted_answers("Answers: Paris; none")),
        "cannot parse extracted answers: expected either answers or the no-answer marker, \
         not both; got \"Answers: Paris; none\""
    );
    assert!(error(parse_extracted_answers("Answers: ;  ;")).contains("expected a line \"Answers:"));
    assert!(error(parse_extracted_answers("")).ends_with("got an empty response"));
}

#[test]
fn teacher_extractions_need_the_answers_line() {
    // Every labelled form reads as parse_extracted_answers reads it.
    for reply in [
        "Reasoning: It names two years.\nAnswers: 1889; 1887",
        "Reasoning: Nothing fits.\nAnswers: none",
        "Reasoning for Answer: The paragraph names one.\n\
         List of Answers to the Question in the Context Paragraph: Louvre.",
        "Let me look.\n\n**Reasoning:** two names.\n\
         **Answers:** \"Gabriel García Márquez\"; 'Mario Vargas Llosa'.\n\nHope this helps!",
        "Answers:\n- Paris\n- Lyon.\n* `Marseille`\n\nDone.",
        "ANSWER: NONE.",
    ] {
        assert_eq!(
            parse_teacher_extraction(reply).unwrap(),
            parse_extracted_answers(reply).unwrap(),
            "{reply}"
        );
    }
    // The ExtractAnswers model's bare formats are a teacher that did not follow its format: a
    // one-line reply may be a sentence of the paragraph rather than an answer list.
    let expected =
        "cannot parse extracted answers: expected a line \"Answers: a; b; c\" or \"Answers: none\"";
    for reply in [
        "Peru; Bolivia; Ecuador",
        "No Answer",
        "- Paris\n- Lyon",
        "The paragraph says it is Paris.",
    ] {
        assert!(
            error(parse_teacher_extraction(reply)).starts_with(expected),
            "{reply}"
        );
    }
    assert_eq!(
        error(parse_teacher_extraction("Paris")),
        format!("{expected}; got \"Paris\"")
    );
}

// ---- probabilities -----------------------------------------------------------------------

#[test]
fn probability_well_formed_and_sloppy() {
    let cases = [
        ("Reasoning: It says 70%.\nProbability: 0.7", 0.7),
        ("0.7", 0.7),
        (".7", 0.7),
        ("70%", 0.7),
        ("Probability: 0.70.", 0.7),
        ("Probability: 70 percent", 0.7),
        ("**Probability:** `0.25`", 0.25),
        ("Answer: 1", 1.0),
        ("Probability: 0", 0.0),
        ("Answer Probability, float in range [0.0, 1.0]: 0.35.", 0.35),
        (
            "Reasoning: The paragraph says 40% for Lyon and 60% for Paris.\n\
             Probability: 0.6 (it states 60%)",
            0.6,
        ),
        ("Reasoning: stated plainly.\n\nprobability:\n\n 0.9", 0.9),
        ("The paragraph never mentions it.\nI'd say 0.05", 0.05),
        ("Probability: about 0.8", 0.8),
        ("Probability: 12.5%", 0.125),
    ];
    for (text, expected) in cases {
        let parsed = parse_probability(text).unwrap_or_else(|err| panic!("{text:?}: {err}"));
        assert!(
            (parsed - expected).abs() < 1e-12,
            "{text:?} gave {parsed}, expected {expected}"
        );
    }
}

/// A full stop after the number ends a sentence: "1." is the probability 1, neither a list
/// marker nor the start of a decimal, whatever the sentence after it says.
#[test]
fn probability_followed_by_a_full_stop_and_a_sentence() {
    let cases = [
        ("Probability: 1. The answer is stated plainly.", 1.0),
        (
            "Reasoning: it is the only answer given.\nProbability: 1. It is named 3 times.",
            1.0,
        ),
        ("Probability: 0. The paragraph names another city.", 0.0),
        ("Probability: 0.7. The paragraph hedges a little.", 0.7),
        ("Probability: 70%. The paragraph says so.", 0.7),
        ("Probability: 1. ", 1.0),
        ("Probability: 1.", 1.0),
        ("Probability: 0.7.", 0.7),
    ];
    for (text, expected) in cases {
        let parsed = parse_probability(text).unwrap_or_else(|err| panic!("{text:?}: {err}"));
        assert_eq!(parsed, expected, "{text:?}");
    }
    // The same holds for a verdict after its label.
    assert!(parse_correctness("Correct: 1. The paragraph gives the true answer.").unwrap());
    assert!(!parse_correctness("Correct: 0. It gives two answers.").unwrap());
}

#[test]
fn probability_malformed() {
    let expected =
        "a line \"Probability: <number between 0 and 1>\" (a percentage such as 70% also works)";
    assert_eq!(
        error(parse_probability("Probability: 70")),
        format!(
            "cannot parse probability: expected {expected} (70 is above 1; write 0.7 or 70%); \
             got \"Probability: 70\""
        )
    );
    assert_eq!(
        error(parse_probability("Probability: 120%")),
        format!(
            "cannot parse probability: expected {expected} (120% is above 100%); \
             got \"Probability: 120%\""
        )
    );
    assert_eq!(
        error(parse_probability("Probability: -0.2")),
        format!(
            "cannot parse probability: expected {expected} (-0.2 is negative); \
             got \"Probability: -0.2\""
        )
    );
    assert_eq!(
        error(parse_probability("Probability: high")),
        format!("cannot parse probability: expected {expected}; got \"Probability: high\"")
    );
    // Unlabelled text with several numbers is ambiguous.
    assert_eq!(
        error(parse_probability(
            "It says 40% for one and 60% for the other."
        )),
        format!(
            "cannot parse probability: expected {expected}; \
             got \"It says 40% for one and 60% for the other.\""
        )
    );
    assert!(error(parse_probability("")).ends_with("got an empty response"));
}

// ---- binary correctness and fact checks ---------------------------------------------------

#[test]
fn correctness_well_formed_and_sloppy() {
    let cases = [
        ("Reasoning: One answer, it matches.\nCorrect: 1", true),
        ("Reasoning: Two answers.\nCorrect: 0", false),
        ("Correct: yes", true),
        ("Correct: No.", false),
        ("correct: TRUE", true),
        ("Correct: false", false),
        ("**Correct:** `1`", true),
        ("Answer: correct", true),
        ("Answer: incorrect", false),
        ("Answer: not correct", false),
        (
            "The reasoning is long.\n\nYes, the paragraph is right.",
            true,
        ),
        ("Verdict:\n\n0", false),
    ];
    for (text, expected) in cases {
        assert_eq!(
            parse_correctness(text).unwrap_or_else(|err| panic!("{text:?}: {err}")),
            expected,
            "{text:?}"
        );
    }
}

#[test]
fn correctness_malformed() {
    assert_eq!(
        error(parse_correctness(
            "Reasoning: The paragraph gives 1 answer."
        )),
        "cannot parse correctness label: expected a line \"Correct: 1\" or \
         \"Correct: 0\" (yes/no, true/false and correct/incorrect also work); \
         got \"Reasoning: The paragraph gives 1 answer.\""
    );
    assert!(
        error(parse_correctness("Correct: maybe"))
            .starts_with("cannot parse correctness label: expected")
    );
    // A bare digit counts only as the first word: "2 of 3" is no verdict.
    assert!(
        error(parse_correctness("Correct: 2 of 3 match")).contains("got \"Correct: 2 of 3 match\"")
    );
}

#[test]
fn fact_check_verdicts() {
    assert_eq!(parse_fact_check("True").unwrap(), Support::Supported);
    assert_eq!(parse_fact_check("False.").unwrap(), Support::NotSupported);
    assert_eq!(
        parse_fact_check("Answer: true").unwrap(),
        Support::Supported
    );
    assert_eq!(
        parse_fact_check("The passages say she was born in 1906.\nOutput: FALSE").unwrap(),
        Support::NotSupported
    );
    assert_eq!(
        parse_fact_check("Not supported").unwrap(),
        Support::NotSupported
    );
    assert_eq!(parse_fact_check("Supported").unwrap(), Support::Supported);
    assert_eq!(
        parse_fact_check("The statement is true according to passage 2.").unwrap(),
        Support::Supported
    );
    assert_eq!(
        error(parse_fact_check("The passages do not say.")),
        "cannot parse fact-check verdict: expected \"True\" or \"False\"; \
         got \"The passages do not say.\""
    );
}

// ---- judge verdicts ----------------------------------------------------------------------

#[test]
fn judge_verdicts_well_formed_and_sloppy() {
    let reply = (1..=10)
        .map(|i| format!("Verdict {i}: {}", if i % 3 == 0 { "No" } else { "Yes" }))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        parse_judge_verdicts(&reply, 10).unwrap(),
        [
            true, true, false, true, true, false, true, true, false, true
        ]
    );
    assert_eq!(
        parse_judge_verdicts("Here you go:\n1. Yes\n2) no\n3 - YES\n\nAll done.", 3).unwrap(),
        [true, false, true]
    );
    assert_eq!(
        parse_judge_verdicts("**Verdict 2:** No\n**Verdict 1:** Yes", 2).unwrap(),
        [true, false]
    );
    assert_eq!(
        parse_judge_verdicts(
            r#"{"Answer 1": "Yes", "Answer 2": "No", "Answer 3": "No"}"#,
            3
        )
        .unwrap(),
        [true, false, false]
    );
    // A verdict restated identically (say, in a closing summary) is fine.
    assert_eq!(
        parse_judge_verdicts("Verdict 1: Yes\nVerdict 2: No\nSummary: Verdict 1: Yes", 2).unwrap(),
        [true, false]
    );
}

#[test]
fn judge_verdicts_with_wrong_count_or_numbering_fail_clearly() {
    assert_eq!(
        error(parse_judge_verdicts("Verdict 1: Yes\nVerdict 2: No", 3)),
        "cannot parse judge verdicts: expected 3 lines \"Verdict i: Yes\" or \"Verdict i: No\", \
         numbered 1 to 3; missing 3; got \"Verdict 1: Yes Verdict 2: No\""
    );
    assert_eq!(
        error(parse_judge_verdicts(
            "Verdict 1: Yes\nVerdict 2: No\nVerdict 3: Yes",
            2
        )),
        "cannot parse judge verdicts: expected 2 lines \"Verdict i: Yes\" or \"Verdict i: No\", \
         numbered 1 to 2; found verdict 3; got \"Verdict 1: Yes Verdict 2: No Verdict 3: Yes\""
    );
    assert_eq!(
        error(parse_judge_verdicts("Verdict 1: Yes\nVerdict 1: No", 1)),
        "cannot parse judge verdicts: expected 1 lines \"Verdict i: Yes\" or \"Verdict i: No\", \
         numbered 1 to 1; verdict 1 is given twice, differently; \
         got \"Verdict 1: Yes Verdict 1: No\""
    );
    assert_eq!(
        error(parse_judge_verdicts("Verdict 0: Yes", 1)),
        "cannot parse judge verdicts: expected 1 lines \"Verdict i: Yes\" or \"Verdict i: No\", \
         numbered 1 to 1; found verdict 0; got \"Verdict 0: Yes\""
    );
    // Unnumbered verdicts could be misaligned with the batch, so they are refused.
    assert_eq!(
        error(parse_judge_verdicts("Yes\nNo", 2)),
        "cannot parse judge verdicts: expected 2 lines \"Verdict i: Yes\" or \"Verdict i: No\", \
         numbered 1 to 2; got \"Yes No\""
    );
    assert_eq!(
        error(parse_judge_verdicts("Verdict 1: Yes", 0)),
        "judge verdicts: a batch holds at least one pair"
    );
}

// ---- claims ------------------------------------------------------------------------------

fn objective(text: &str, confidence: ClaimConfidence) -> Claim {
    Claim {
        text: text.into(),
        kind: ClaimKind::Objective { confidence },
    }
}

#[test]
fn claims_well_formed() {
    let reply = r#"[
      {"claim": "Tesla was an inventor.", "type": "objective", "confidence": "direct"},
      {"alternatives": [
        {"claim": "Tesla was born in 1856.", "type": "objective", "confidence": "about 80% sure"},
        {"claim": "Tesla was born in 1857.", "type": "objective", "confidence": 0.2}
      ]},
      {"claim": "Tesla moved to the US.", "type": "objective", "confidence": "I believe"},
      {"claim": "Tesla wrote his first paper early.", "confidence": "perhaps a 1-in-3 chance"},
      {"claim": "Tesla was a genius.", "type": "subjective"},
      {"claim": "The writer does not know where Tesla died.", "type": "abstention"}
    ]"#;
    assert_eq!(
        parse_claims(reply).unwrap(),
        [
            ClaimGroup {
                alternatives: vec![objective("Tesla was an inventor.", ClaimConfidence::Direct)]
            },
            ClaimGroup {
                alternatives: vec![
                    objective("Tesla was born in 1856.", ClaimConfidence::Probability(0.8)),
                    objective("Tesla was born in 1857.", ClaimConfidence::Probability(0.2)),
                ]
            },
            ClaimGroup {
                alternatives: vec![objective(
                    "Tesla moved to the US.",
                    ClaimConfidence::Phrase("I believe".into())
                )]
            },
            ClaimGroup {
                alternatives: vec![objective(
                    "Tesla wrote his first paper early.",
                    ClaimConfidence::Phrase("perhaps a 1-in-3 chance".into())
                )]
            },
            ClaimGroup {
                alternatives: vec![Claim {
                    text: "Tesla was a genius.".into(),
                    kind: ClaimKind::Subjective
                }]
            },
            ClaimGroup {
                alternatives: vec![Claim {
                    text: "The writer does not know where Tesla died.".into(),
                    kind: ClaimKind::Abstention
                }]
            },
        ]
    );
}

#[test]
fn claims_sloppy() {
    let reply = r#"Here are the claims:
```json
[
  {"claim": "Pelé was Brazilian.", "type": "Objective", "confidence": "Direct"},
  [
    {"claim": "Pelé was 17.", "confidence": "70%"},
    {"claim": "Pelé was 18.", "confidence": "30%"},
  ],
]
```
Let me know if you need more."#;
    assert_eq!(
        parse_claims(reply).unwrap(),
        [
            ClaimGroup {
                alternatives: vec![objective("Pelé was Brazilian.", ClaimConfidence::Direct)]
            },
            ClaimGroup {
                alternatives: vec![
                    objective("Pelé was 17.", ClaimConfidence::Probability(0.7)),
                    objective("Pelé was 18.", ClaimConfidence::Probability(0.3)),
                ]
            },
        ]
    );
}

#[test]
fn claims_malformed() {
    assert_eq!(
        error(parse_claims("The paragraph has three claims.")),
        "cannot parse claims: expected a JSON list of {\"claim\", \"type\", \"confidence\"} \
         objects and {\"alternatives\": [...]} groups; got \"The paragraph has three claims.\""
    );
    assert_eq!(
        error(parse_claims(
            r#"[{"claim": "A was born in 1900.", "type": "objective"}]"#
        )),
        "cannot parse claims: item 1: an objective claim needs a \"confidence\" (\"direct\" if \
         unhedged); got \"[{\"claim\": \"A was born in 1900.\", \"type\": \"objective\"}]\""
    );
    assert_eq!(
        error(parse_claims(
            r#"[{"claim": "A", "confidence": "direct"}, {"claim": "B", "confidence": 70}]"#
        )),
        "cannot parse claims: item 2: confidence 70 is not in [0, 1]; write 0.7 or \"70%\"; \
         got \"[{\"claim\": \"A\", \"confidence\": \"direct\"}, \
         {\"claim\": \"B\", \"confidence\": 70}]\""
    );
    assert!(
        error(parse_claims(
            r#"[{"alternatives": [{"claim": "A", "type": "subjective"}]}]"#
        ))
        .starts_with(
            "cannot parse claims: item 1, alternative 1: alternatives must be objective claims"
        )
    );
    assert!(
        error(parse_claims(r#"[{"claim": "A", "type": "opinion"}]"#)).starts_with(
            "cannot parse claims: item 1: unknown type \"opinion\"; \
             expected objective, subjective or abstention"
        )
    );
    assert!(
        error(parse_claims(r#"[{"claim": "A", "confidence": "150%"}]"#))
            .starts_with("cannot parse claims: item 1: confidence \"150%\": 150% is above 100%")
    );
    assert!(
        error(parse_claims(r#"["A was born in 1900."]"#))
            .starts_with("cannot parse claims: item 1: expected a claim object or a group")
    );
    assert!(
        error(parse_claims(r#"[{"claim": "A", "confidence": "direct"}"#))
            .starts_with("cannot parse claims: expected a JSON list")
    );
    // Bare objects outside a list are not silently read through an inner group.
    let bare = concat!(
        r#"{"claim": "A", "confidence": "direct"}, "#,
        r#"{"alternatives": [{"claim": "B", "confidence": "60%"}]}"#
    );
    assert!(error(parse_claims(bare)).starts_with("cannot parse claims: expected a JSON list"));
}

// ---- lexical reader ----------------------------------------------------------------------

fn reader() -> LexicalReader {
    LexicalReader::default()
}

fn clause_view(paragraph: &str) -> Vec<(String, Option<f64>)> {
    reader()
        .read(paragraph)
        .into_iter()
        .flat_map(|sentence| sentence.clauses)
        .map(|clause| {
            (
                clause.text,
                clause.confidence.map(|stated| stated.probability),
            )
        })
        .collect()
}

fn owned(pairs: &[(&str, Option<f64>)]) -> Vec<(String, Option<f64>)> {
    pairs
        .iter()
        .map(|(text, p)| (text.to_string(), *p))
        .collect()
}

#[test]
fn explicit_numbers_with_cues_are_confidences() {
    let r = reader();
    let read = |text: &str| {
        r.claim_confidence(text)
            .map(|stated| (stated.probability, stated.source, stated.evidence))
    };
    assert_eq!(
        read("I am about 70% sure"),
        Some((0.7, ConfidenceSource::Percentage, "70%".into()))
    );
    assert_eq!(
        read("with 85 percent confidence"),
        Some((0.85, ConfidenceSource::Percentage, "85 percent".into()))
    );
    assert_eq!(
        read("roughly a 1-in-4 chance"),
        Some((0.25, ConfidenceSource::Ratio, "1-in-4".into()))
    );
    assert_eq!(
        read("three out of four"),
        Some((0.75, ConfidenceSource::Ratio, "three out of four".into()))
    );
    assert_eq!(
        read("a probability of 0.3"),
        Some((0.3, ConfidenceSource::Decimal, "probability of 0.3".into()))
    );
    assert_eq!(
        read("60-70% likely"),
        Some((0.65, ConfidenceSource::Percentage, "60-70%".into()))
    );
    assert_eq!(
        read("I believe"),
        Some((0.75, ConfidenceSource::Hedge, "I believe".into()))
    );
    assert_eq!(
        read("Almost  certainly"),
        Some((0.95, ConfidenceSource::Hedge, "Almost  certainly".into()))
    );
    assert_eq!(
        read("probably not"),
        Some((0.3, ConfidenceSource::Hedge, "probably not".into()))
    );
    assert_eq!(
        read("I don’t think so"),
        Some((0.25, ConfidenceSource::Hedge, "I don’t think".into()))
    );
    assert_eq!(read("stated as fact"), None);
}

#[test]
fn numbers_without_a_cue_are_not_confidences_in_paragraphs() {
    assert_eq!(
        clause_view("The city's population grew by 20% in the 1990s."),
        owned(&[("The city's population grew by 20% in the 1990s.", None)])
    );
    assert_eq!(
        clause_view("I am 20% sure the population grew."),
        owned(&[("I am 20% sure the population grew.", Some(0.2))])
    );
}

#[test]
fn clauses_belong_to_the_statement_that_governs_them() {
    assert_eq!(
        clause_view(
            "I estimate a 60% chance that the capital is Lyon and a 40% chance that it is Paris."
        ),
        owned(&[
            (
                "I estimate a 60% chance that the capital is Lyon and a",
                Some(0.6)
            ),
            ("40% chance that it is Paris.", Some(0.4)),
        ])
    );
    assert_eq!(
        clause_view("I am 70% sure he was born in 1912, but it could also have been 1913 (30%)."),
        owned(&[
            ("I am 70% sure he was born in 1912, but", Some(0.7)),
            ("it could also have been 1913 (30%).", Some(0.3))
        ])
    );
    assert_eq!(
        clause_view("My best guesses are Lyon (60%) and Paris (40%)."),
        owned(&[
            ("My best guesses are Lyon (60%)", Some(0.6)),
            ("and Paris (40%).", Some(0.4))
        ])
    );
    assert_eq!(
        clause_view(
            "Lyon is the capital of France, and it is unlikely that Paris is. \
             Marseille is a port, I think."
        ),
        owned(&[
            ("Lyon is the capital of France, and", None),
            ("it is unlikely that Paris is.", Some(0.15)),
            ("Marseille is a port, I think.", Some(0.7)),
        ])
    );
    // "I believe" sits in the cue window of the number, which is the more precise statement.
    assert_eq!(
        clause_view("I believe there is a 70% chance that Dr. J. Smith won."),
        owned(&[(
            "I believe there is a 70% chance that Dr. J. Smith won.",
            Some(0.7)
        )])
    );
}

#[test]
fn sentences_split_at_ends_but_not_at_initials_or_abbreviations() {
    let sentences: Vec<String> = reader()
        .read(
            "J. K. Rowling wrote it in the U.S. or U.K. in 1997. \
             Dr. Who? No! It was \"Mr. X.\" Then\n\nA new paragraph",
        )
        .into_iter()
        .map(|sentence| sentence.text)
        .collect();
    assert_eq!(
        sentences,
        [
            "J. K. Rowling wrote it in the U.S. or U.K. in 1997.",
            "Dr. Who?",
            "No!",
            "It was \"Mr. X.\" Then",
            "A new paragraph"
        ]
    );
}

#[test]
fn forecast_gives_each_candidate_its_stated_confidence() {
    let paragraph = "The Eiffel Tower stands in Paris. I believe it was completed in 1889, \
                     though there is a 20% chance it was 1887. It is unlikely to date from 1900.";
    assert_eq!(
        reader().forecast(paragraph, &["1889", "1887", "1900", "Paris", "1950"]),
        [0.75, 0.2, 0.15, 1.0, 0.0]
    );
    // Candidates match alias-normalised, on whole words.
    assert_eq!(
        reader().forecast("I am 90% sure it was the Beatles.", &["beatles", "Beat"]),
        [0.9, 0.0]
    );
}

#[test]
fn decomposed_claim_confidences_become_probabilities() {
    let r = reader();
    assert_eq!(r.claim_probability(&ClaimConfidence::Direct), Some(1.0));
    assert_eq!(
        r.claim_probability(&ClaimConfidence::Probability(0.35)),
        Some(0.35)
    );
    assert_eq!(
        r.claim_probability(&ClaimConfidence::Phrase("perhaps a 1-in-3 chance".into())),
        Some(1.0 / 3.0)
    );
    assert_eq!(
        r.claim_probability(&ClaimConfidence::Phrase("more likely".into())),
        Some(0.6)
    );
    assert_eq!(
        r.claim_probability(&ClaimConfidence::Phrase("less likely than 17".into())),
        Some(0.3)
    );
    assert_eq!(
        r.claim_probability(&ClaimConfidence::Phrase("fairly confident".into())),
        Some(0.85)
    );
    assert_eq!(
        r.claim_probability(&ClaimConfidence::Phrase("60%".into())),
        Some(0.6)
    );
    assert_eq!(
        r.claim_probability(&ClaimConfidence::Phrase("as the sources say".into())),
        None
    );
}

#[test]
fn hedge_tables_are_validated_and_replaceable() {
    let default = HedgeTable::default();
    assert_eq!(default.entries().len(), DEFAULT_HEDGES.len());
    assert_eq!(default.probability("Likely"), Some(0.75));
    assert_eq!(default.probability("I’m  sure"), Some(1.0));
    for (phrase, p) in DEFAULT_HEDGES {
        assert!((0.0..=1.0).contains(p), "{phrase}");
    }

    let custom = HedgeTable::new([("kinda sure", 0.6), ("no way", 0.02)]).unwrap();
    let r = LexicalReader::new(custom);
    assert_eq!(
        r.forecast(
            "I'm kinda sure it's Lyon, no way it's Paris.",
            &["Lyon", "Paris"]
        ),
        [0.6, 0.02]
    );
    assert_eq!(r.claim_confidence("likely"), None);

    assert_eq!(
        HedgeTable::new([("likely", 1.5)]).unwrap_err().to_string(),
        "hedge table: \"likely\" has probability 1.5, outside [0, 1]"
    );
    assert_eq!(
        HedgeTable::new([("Likely", 0.7), ("likely ", 0.8)])
            .unwrap_err()
            .to_string(),
        "hedge table: \"likely\" appears twice"
    );
    assert_eq!(
        HedgeTable::new([(" ", 0.5)]).unwrap_err().to_string(),
        "hedge table: a phrase is empty"
    );
    assert_eq!(
        HedgeTable::new(Vec::<(String, f64)>::new())
            .unwrap_err()
            .to_string(),
        "hedge table: no phrases"
    );
}

// ---- answer matching ---------------------------------------------------------------------

#[test]
fn normalisation_follows_triviaqa() {
    assert_eq!(normalize_answer("  The Beatles! "), "beatles");
    assert_eq!(normalize_answer("Jean-Paul Sartre"), "jean paul sartre");
    assert_eq!(
        normalize_answer("A Tale of Two Cities"),
        "tale of two cities"
    );
    assert_eq!(normalize_answer("U.S.A."), "u s");
    assert_eq!(normalize_answer("Gulliver's_Travels"), "gulliver s travels");
    assert_eq!(normalize_answer("Théâtre  NATIONAL"), "théâtre national");
    assert_eq!(
        normalize_answer("Anne of the Thousand Days"),
        "anne of thousand days"
    );
}

#[test]
fn exact_and_contains_match_against_aliases() {
    let aliases = ["The Beatles", "Beatles, The", "Fab Four"];
    assert!(exact_match("beatles.", &aliases));
    assert!(exact_match("the fab four", &aliases));
    assert!(!exact_match("The Rolling Stones", &aliases));
    assert!(
        !exact_match("The", &["The"]),
        "an answer that normalises to nothing matches nothing"
    );
    assert!(!exact_match("Beatles", &[] as &[&str]));

    assert!(contains_match("It was the Beatles, I think.", &aliases));
    assert!(contains_match("Answer: Fab Four", &aliases));
    assert!(
        !contains_match("The Beatlemania era", &aliases),
        "whole words only"
    );
    assert!(!contains_match("anything", &["a", "the"]));
}
