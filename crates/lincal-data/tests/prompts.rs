//! The prompt templates: every template renders with its typed function, has the structure the
//! SPEC describes, and can be overridden from a directory with clear errors.

use std::fs;
use std::path::Path;

use lincal_data::DataError;
use lincal_data::parse::{
    parse_claims, parse_extracted_answers, parse_judge_verdicts, parse_open_ended_query,
};
use lincal_data::prompts::{
    CATALOGUE, ExtractionUse, JudgePair, Passage, PromptMessage, Role, TemplateKind, Templates,
};

fn templates() -> Templates {
    Templates::builtin().expect("built-in templates load")
}

fn roles(messages: &[PromptMessage]) -> Vec<Role> {
    messages.iter().map(|message| message.role).collect()
}

fn user_text(messages: &[PromptMessage]) -> &str {
    &messages.last().expect("at least one message").content
}

/// The text after the last occurrence of `marker`.
fn after<'a>(text: &'a str, marker: &str) -> &'a str {
    let at = text
        .rfind(marker)
        .unwrap_or_else(|| panic!("`{marker}` not found"));
    &text[at + marker.len()..]
}

fn assert_filled(text: &str) {
    for leftover in [
        "{{",
        "}}",
        "{%",
        "%}",
        "{#",
        "<<system>>",
        "<<user>>",
        "<<assistant>>",
    ] {
        assert!(
            !text.contains(leftover),
            "`{leftover}` left in rendered prompt:\n{text}"
        );
    }
}

#[test]
fn every_template_renders_through_its_typed_function_with_values_filled_in() {
    let t = templates();
    // (template, its rendering, the values it was given); each value is unique to its
    // template, so finding it shows that this very template filled it in.
    fn filled<'v, T, const N: usize>(
        name: &'static str,
        values: [&'v str; N],
        render: impl FnOnce([&'v str; N]) -> lincal_data::Result<T>,
    ) -> (&'static str, T, Vec<&'v str>) {
        let rendered = render(values).unwrap_or_else(|err| panic!("{name}: {err}"));
        (name, rendered, values.to_vec())
    }
    let completions: Vec<(&str, String, Vec<&str>)> = vec![
        filled("policy", ["QUERY-1"], |[q]| t.policy(q)),
        filled("bio_query", ["ENTITY-1"], |[e]| t.bio_query(e)),
        filled("icl_paragraphs", ["QUERY-2"], |[q]| t.icl_paragraphs(q)),
        filled("summary_icl_paragraphs", ["QUERY-3"], |[q]| {
            t.summary_icl_paragraphs(q)
        }),
        filled(
            "extract_answers_model",
            ["QUESTION-1", "PARAGRAPH-1"],
            |[q, p]| t.extract_answers_model(q, p),
        ),
        filled(
            "extract_answers_few_shot",
            ["QUESTION-8", "PARAGRAPH-9"],
            |[q, p]| t.extract_answers_few_shot(q, p),
        ),
        filled(
            "forecast_probs_model",
            ["QUESTION-2", "PARAGRAPH-2", "CANDIDATE-2"],
            |[q, p, c]| t.forecast_probs_model(q, p, c),
        ),
        filled(
            "binary_correctness_model",
            ["QUESTION-3", "PARAGRAPH-3", "ANSWER-3"],
            |[q, p, a]| t.binary_correctness_model(q, p, a),
        ),
    ];
    let chats: Vec<(&str, Vec<PromptMessage>, Vec<&str>)> = vec![
        filled("paragraph_zero_shot", ["QUERY-4"], |[q]| {
            t.paragraph_zero_shot(q)
        }),
        filled("paragraph_jafu", ["QUERY-5"], |[q]| t.paragraph_jafu(q)),
        filled("open_ended_query", ["QUESTION-4"], |[q]| {
            t.open_ended_query(q)
        }),
        filled(
            "jeopardy_rephrase",
            ["CATEGORY-1", "CLUE-1", "ANSWER-4"],
            |[c, q, a]| t.jeopardy_rephrase(c, q, a),
        ),
        filled("summarize_samples", ["SAMPLE-A", "SAMPLE-B"], |samples| {
            t.summarize_samples(&samples)
        }),
        filled(
            "extract_answers",
            ["QUESTION-5", "PARAGRAPH-5"],
            |[q, p]| t.extract_answers(q, p, ExtractionUse::Evaluation),
        ),
        filled(
            "forecast_probability",
            ["QUESTION-6", "PARAGRAPH-6", "CANDIDATE-6"],
            |[q, p, c]| t.forecast_probability(q, p, c),
        ),
        filled(
            "binary_correctness",
            ["QUESTION-7", "PARAGRAPH-7", "ANSWER-7"],
            |[q, p, a]| t.binary_correctness(q, p, a),
        ),
        filled(
            "judge_equivalence",
            ["QUESTION-J", "GOLD-J", "PROPOSED-J"],
            |[question, gold, proposed]| {
                t.judge_equivalence(&[JudgePair {
                    question,
                    gold,
                    proposed,
                }])
            },
        ),
        filled("decompose_claims", ["ENTITY-2", "PARAGRAPH-8"], |[e, p]| {
            t.decompose_claims(e, p)
        }),
        filled(
            "fact_check",
            ["ENTITY-3", "CLAIM-1", "TITLE-P", "TEXT-P"],
            |[entity, claim, title, text]| t.fact_check(entity, claim, &[Passage { title, text }]),
        ),
    ];

    let mut covered: Vec<&str> = completions
        .iter()
        .map(|(name, ..)| *name)
        .chain(chats.iter().map(|(name, ..)| *name))
        .collect();
    covered.sort_unstable();
    let mut catalogue: Vec<&str> = CATALOGUE.iter().map(|spec| spec.name).collect();
    catalogue.sort_unstable();
    assert_eq!(
        covered, catalogue,
        "every catalogue template is exercised here"
    );

    for (name, text, values) in &completions {
        assert_eq!(
            CATALOGUE
                .iter()
                .find(|spec| spec.name == *name)
                .unwrap()
                .kind,
            TemplateKind::Completion
        );
        assert_filled(text);
        assert_eq!(text.trim(), text, "{name} is trimmed");
        for value in values {
            assert!(text.contains(value), "{name} lacks {value}");
        }
    }
    for (name, messages, values) in &chats {
        assert_eq!(
            CATALOGUE
                .iter()
                .find(|spec| spec.name == *name)
                .unwrap()
                .kind,
            TemplateKind::Chat
        );
        assert_eq!(roles(messages), [Role::System, Role::User], "{name}");
        for message in messages {
            assert_filled(&message.content);
            assert!(!message.content.is_empty(), "{name} has an empty turn");
        }
        for value in values {
            assert!(user_text(messages).contains(value), "{name} lacks {value}");
        }
    }
}

#[test]
fn policy_prompt_ends_exactly_at_the_response_header() {
    let prompt = templates()
        .policy("Write a paragraph about Ada Lovelace.")
        .unwrap();
    assert_eq!(
        prompt,
        "You are given a task below. \
         Carry it out in writing, as completely and helpfully as you can.\n\n\
         ### Instruction:\nWrite a paragraph about Ada Lovelace.\n\n### Response:"
    );
}

#[test]
fn bio_query_is_the_benchmark_query() {
    assert_eq!(
        templates().bio_query("Ada Lovelace").unwrap(),
        "Write a paragraph bio about Ada Lovelace."
    );
}

/// Splits a few-shot prompt into its example bodies: the text after each `header N` line.
fn numbered_sections<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    let mut sections: Vec<&str> = text.split(header).skip(1).collect();
    for section in &mut sections {
        *section = section.split_once('\n').map_or("", |(_, body)| body);
    }
    sections
}

#[test]
fn icl_prompts_hold_eight_examples_and_an_open_ninth_slot() {
    let t = templates();
    for prompt in [
        t.icl_paragraphs("Write a paragraph about the Moon.")
            .unwrap(),
        t.summary_icl_paragraphs("Write a paragraph about the Moon.")
            .unwrap(),
    ] {
        assert_eq!(prompt.matches("### Query ").count(), 9);
        assert_eq!(prompt.matches("### Paragraph ").count(), 9);
        for n in 1..=9 {
            assert!(prompt.contains(&format!("### Query {n}\n")), "query {n}");
        }
        assert!(
            prompt.ends_with("### Query 9\nWrite a paragraph about the Moon.\n### Paragraph 9")
        );
        let paragraphs: Vec<&str> = numbered_sections(&prompt, "### Paragraph ")
            .into_iter()
            .take(8)
            .collect();
        assert_eq!(paragraphs.len(), 8);
        for paragraph in paragraphs {
            // One paragraph each: a base model that imitates them stops at the blank line.
            let body = paragraph.split("\n\n").next().unwrap();
            assert!(
                !body.contains('\n') && body.len() > 200,
                "example paragraph: {body}"
            );
        }
    }
}

#[test]
fn summary_icl_examples_state_confidence_and_factual_ones_do_not() {
    let t = templates();
    let factual = t.icl_paragraphs("q").unwrap();
    let summary = t.summary_icl_paragraphs("q").unwrap();
    assert!(!factual.contains('%'));
    let sections = numbered_sections(&summary, "### Paragraph ");
    for section in sections.iter().take(8) {
        assert!(
            section.contains('%'),
            "each summary example states a number: {section}"
        );
    }
}

#[test]
fn extract_answers_has_8_examples_for_labels_and_10_for_evaluation_and_each_parses() {
    let t = templates();
    let labels = t
        .extract_answers("Q?", "P.", ExtractionUse::TrainingLabels)
        .unwrap();
    let eval = t
        .extract_answers("Q?", "P.", ExtractionUse::Evaluation)
        .unwrap();
    assert_eq!(user_text(&labels).matches("### Example ").count(), 8);
    assert_eq!(user_text(&eval).matches("### Example ").count(), 10);
    assert!(user_text(&eval).ends_with("### Your task\nParagraph: P.\nQuestion: Q?"));

    // The examples' replies are in the very format the parser reads.
    let replies: Vec<Vec<String>> = numbered_sections(user_text(&eval), "### Example ")
        .iter()
        .map(|example| {
            let example = example.split("\n\n###").next().unwrap();
            let reply = &example[example.find("Reasoning:").unwrap()..];
            parse_extracted_answers(reply).unwrap()
        })
        .collect();
    let expected: Vec<Vec<&str>> = vec![
        vec!["1889", "1887"],
        vec!["Louvre"],
        vec![],
        vec!["Gabriel García Márquez", "Mario Vargas Llosa"],
        vec!["October"],
        vec!["about eight minutes", "twenty minutes"],
        vec!["Albert Einstein"],
        vec!["Peru", "Bolivia", "Ecuador"],
        vec!["Alexander Fleming"],
        vec![],
    ];
    assert_eq!(replies, expected);
}

#[test]
fn open_ended_query_has_ten_examples_that_do_not_reveal_their_answers() {
    let messages = templates()
        .open_ended_query("Who discovered penicillin?")
        .unwrap();
    let text = user_text(&messages);
    assert_eq!(text.matches("\nQuestion: ").count(), 11);
    assert_eq!(text.matches("\nQuery: Write a paragraph about").count(), 10);
    assert!(text.ends_with("Question: Who discovered penicillin?"));
    let first = &text[text
        .find("Query: Write a paragraph about the fall")
        .unwrap()..];
    assert_eq!(
        parse_open_ended_query(first.lines().next().unwrap()).unwrap(),
        "Write a paragraph about the fall of the Berlin Wall."
    );
    // Spot-check the rule the examples teach: the answer is absent from the query.
    assert!(!text.contains("Query: Write a paragraph about Marie Curie"));
    assert!(!text.contains("Query: Write a paragraph about Canberra"));
}

#[test]
fn jeopardy_prompt_has_five_examples() {
    let messages = templates()
        .jeopardy_rephrase("POETS", "He wrote \"The Raven\"", "Edgar Allan Poe")
        .unwrap();
    let text = user_text(&messages);
    assert_eq!(text.matches("\nCategory: ").count(), 6);
    assert_eq!(
        after(text, "Here are five examples.")
            .matches("\nRephrased question: ")
            .count(),
        5
    );
    assert!(
        text.ends_with("Category: POETS\nClue: He wrote \"The Raven\"\nAnswer: Edgar Allan Poe")
    );
}

#[test]
fn summary_prompt_numbers_every_sample_after_three_worked_examples() {
    let samples: Vec<String> = (1..=8)
        .map(|i| format!("Sample paragraph number {i}."))
        .collect();
    let messages = templates().summarize_samples(&samples).unwrap();
    let text = user_text(&messages);
    assert_eq!(text.matches("## Example ").count(), 3);
    // 2 + 2 + 4 Thoughts in the worked examples, then the 8 real ones.
    assert_eq!(text.matches("### Thought ").count(), 16);
    let task = after(text, "## Your task");
    for i in 1..=8 {
        assert!(
            task.contains(&format!(
                "### Thought {i}\nSample paragraph number {i}.\n\n"
            )),
            "thought {i}"
        );
    }
    assert!(!task.contains("### Thought 9"));
    let empty: [&str; 0] = [];
    assert!(matches!(
        templates().summarize_samples(&empty),
        Err(DataError::Invalid(m)) if m.contains("at least one sample")
    ));
}

#[test]
fn judge_prompt_numbers_the_pairs_and_its_demonstrations_parse() {
    let t = templates();
    let questions: Vec<String> = (1..=10).map(|i| format!("Question {i}?")).collect();
    let pairs: Vec<JudgePair> = questions
        .iter()
        .map(|question| JudgePair {
            question,
            gold: "gold",
            proposed: "proposed",
        })
        .collect();
    let messages = t.judge_equivalence(&pairs).unwrap();
    let text = user_text(&messages);
    let task = after(text, "### Your 10 pairs");
    for i in 1..=10 {
        assert!(task.contains(&format!(
            "Pair {i}\nQuestion: Question {i}?\nGold answer: gold\nProposed answer: proposed"
        )));
    }
    assert!(!task.contains("Pair 11"));
    let one = t.judge_equivalence(&pairs[..1]).unwrap();
    assert!(user_text(&one).contains("### Your 1 pair\n"));

    // Demonstrations of 1, 2 and 7 pairs, each answered in the parser's format.
    let demonstrations: Vec<&str> = text.split("### Demonstration with ").skip(1).collect();
    let sizes: Vec<usize> = demonstrations
        .iter()
        .map(|d| d.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(sizes, [1, 2, 7]);
    let verdicts: Vec<Vec<bool>> = demonstrations
        .iter()
        .zip(&sizes)
        .map(|(demonstration, &size)| {
            let block = demonstration.split("\n###").next().unwrap();
            parse_judge_verdicts(&block[block.find("Verdict 1").unwrap()..], size).unwrap()
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            vec![true],
            vec![true, true],
            vec![false, false, true, false, true, false, true]
        ]
    );

    let too_many: Vec<JudgePair> = pairs
        .iter()
        .copied()
        .chain(pairs.iter().copied().take(1))
        .collect();
    let err = t.judge_equivalence(&too_many).unwrap_err().to_string();
    assert_eq!(
        err,
        "judge_equivalence takes 1 to 10 pairs per call, got 11; split the batch"
    );
    assert!(t.judge_equivalence(&[]).is_err());
}

#[test]
fn decomposition_prompt_has_eight_examples_whose_claims_parse() {
    let messages = templates()
        .decompose_claims("Grace Hopper", "Grace Hopper was a computer scientist.")
        .unwrap();
    let text = user_text(&messages);
    assert!(text.ends_with(
        "Person: Grace Hopper\nParagraph: Grace Hopper was a computer scientist.\nClaims:"
    ));
    let examples = numbered_sections(text, "### Example ");
    assert_eq!(examples.len(), 8);
    let group_sizes: Vec<Vec<usize>> = examples
        .iter()
        .map(|example| {
            let block = example.split("\n###").next().unwrap();
            let groups = parse_claims(after(block, "Claims:")).unwrap();
            groups
                .iter()
                .map(|group| group.alternatives.len())
                .collect()
        })
        .collect();
    // Groups of alternatives where the writer offered competing answers (examples 2, 5 and 8).
    assert_eq!(group_sizes[1], [1, 1, 1, 2, 1, 1]);
    assert_eq!(group_sizes[4], [1, 1, 1, 1, 1, 1, 1, 3]);
    assert_eq!(group_sizes[7], [1, 1, 1, 1, 1, 1, 2]);
    assert_eq!(
        group_sizes.iter().map(Vec::len).sum::<usize>(),
        7 + 6 + 7 + 10 + 8 + 5 + 8 + 7
    );
}

#[test]
fn fact_check_shows_the_best_passage_last() {
    let passages = [
        Passage {
            title: "Best",
            text: "first ranked",
        },
        Passage {
            title: "Second",
            text: "second ranked",
        },
    ];
    let messages = templates()
        .fact_check("Grace Hopper", "She was an admiral.", &passages)
        .unwrap();
    let text = user_text(&messages);
    let second = text.find("Title: Second").unwrap();
    let best = text.find("Title: Best").unwrap();
    assert!(second < best);
    assert!(text.contains("Title: Best\nText: first ranked\n\nStatement: She was an admiral."));
    let err = templates()
        .fact_check("Grace Hopper", "She was an admiral.", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs at least one passage"), "{err}");
}

#[test]
fn forecast_model_input_sees_at_most_2000_characters_of_the_paragraph() {
    let paragraph = "é".repeat(2500);
    let prompt = templates()
        .forecast_probs_model("Q?", &paragraph, "A")
        .unwrap();
    assert_eq!(prompt.matches('é').count(), 2000);
    assert!(prompt.contains("how likely is it that \"A\" is a correct answer"));
}

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).unwrap();
}

/// The message of the error that refuses an override directory holding only `name` with
/// `text`; the error must name that file.
fn refused_override(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), name, text);
    match Templates::with_overrides(dir.path()) {
        Err(DataError::File { path, message }) => {
            assert_eq!(path, dir.path().join(name), "{message}");
            message
        }
        Err(other) => panic!("expected a file error, got {other}"),
        Ok(_) => panic!("expected a file error, got templates"),
    }
}

#[test]
fn an_override_file_replaces_its_template_and_only_that_one() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "policy.j2", "{# mine #}\nQ: {{ query }}\nA:\n");
    write(
        dir.path(),
        "forecast_probability.j2",
        "<<user>>\nP({{ candidate }} | {{ question }}, {{ paragraph }})?\n<<assistant>>\n\
         Probability:",
    );
    write(dir.path(), ".hidden", "ignored");
    let t = Templates::with_overrides(dir.path()).unwrap();
    assert_eq!(t.policy("Write about X.").unwrap(), "Q: Write about X.\nA:");
    assert_eq!(
        t.override_path("policy"),
        Some(dir.path().join("policy.j2").as_path())
    );
    assert_eq!(t.override_path("icl_paragraphs"), None);
    assert_eq!(
        t.forecast_probability("q", "p", "c").unwrap(),
        [
            PromptMessage {
                role: Role::User,
                content: "P(c | q, p)?".into()
            },
            PromptMessage {
                role: Role::Assistant,
                content: "Probability:".into()
            },
        ]
    );
    assert_eq!(
        t.bio_query("X").unwrap(),
        templates().bio_query("X").unwrap()
    );
}

#[test]
fn a_chat_override_without_markers_is_one_user_turn() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "open_ended_query.j2", "Rewrite: {{ question }}");
    let t = Templates::with_overrides(dir.path()).unwrap();
    assert_eq!(
        t.open_ended_query("Why?").unwrap(),
        [PromptMessage {
            role: Role::User,
            content: "Rewrite: Why?".into()
        }]
    );
}

#[test]
fn an_unknown_template_name_is_refused_with_the_file_and_the_known_names() {
    let message = refused_override("polciy.j2", "{{ query }}");
    assert!(
        message.starts_with("unknown template name `polciy`; the templates are policy, bio_query,"),
        "{message}"
    );

    let message = refused_override("policy.txt", "{{ query }}");
    assert!(
        message.starts_with("not a template: override files are named <template>.j2"),
        "{message}"
    );
}

#[test]
fn a_missing_required_placeholder_is_refused_naming_file_and_placeholder() {
    let message = refused_override("extract_answers.j2", "<<user>>\nQuestion: {{ question }}\n");
    assert_eq!(
        message,
        "template `extract_answers`: never uses the required placeholder `{{ paragraph }}`"
    );
}

#[test]
fn an_optional_variable_may_be_left_out() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "extract_answers.j2",
        "<<user>>\n{{ paragraph }} / {{ question }}",
    );
    let t = Templates::with_overrides(dir.path()).unwrap();
    assert_eq!(
        user_text(
            &t.extract_answers("q", "p", ExtractionUse::TrainingLabels)
                .unwrap()
        ),
        "p / q"
    );
}

#[test]
fn a_misspelt_variable_is_refused_at_load() {
    let message = refused_override(
        "forecast_probs_model.j2",
        "{{ question }} {{ paragraph }} {{ candidate }} {{ canddiate }}",
    );
    assert_eq!(
        message,
        "template `forecast_probs_model`: uses `{{ canddiate }}`, which is not one of its \
         variables (question, paragraph, candidate)"
    );
}

#[test]
fn a_misspelt_attribute_is_caught_by_the_trial_render_at_load() {
    let message = refused_override(
        "judge_equivalence.j2",
        "<<user>>\n{% for pair in pairs %}\n{{ pair.question }}\n{{ pair.gold_answer }}\n\
         {% endfor %}",
    );
    assert!(
        message.starts_with("template `judge_equivalence`: line 4: undefined value"),
        "{message}"
    );
    assert!(message.contains("pair.gold_answer"), "{message}");
}

#[test]
fn role_markers_and_syntax_errors_are_reported_with_their_line() {
    assert_eq!(
        refused_override("policy.j2", "Task:\n<<user>>\n{{ query }}"),
        "template `policy`: line 2: `<<user>>` is a role marker, but this is a completion template \
         (one plain text, no chat turns)"
    );
    assert_eq!(
        refused_override("paragraph_jafu.j2", "Hello\n<<user>>\n{{ query }}"),
        "template `paragraph_jafu`: text before the first role marker; \
         start the file with <<system>> or <<user>>"
    );
    let message = refused_override(
        "paragraph_jafu.j2",
        "<<system>>\nBe brief.\n<<user>>\nfirst line\n{{ query }\n",
    );
    assert!(
        message.starts_with("template `paragraph_jafu`: line 5: syntax error"),
        "{message}"
    );
}

#[test]
fn a_missing_override_directory_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    match Templates::with_overrides(&missing) {
        Err(DataError::Read { path, .. }) => assert_eq!(path, missing),
        Err(other) => panic!("expected a read error, got {other}"),
        Ok(_) => panic!("expected a read error"),
    }
}

#[test]
fn exported_builtins_load_back_unchanged_and_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let written = Templates::export_builtin(dir.path()).unwrap();
    assert_eq!(written.len(), CATALOGUE.len());
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = CATALOGUE
        .iter()
        .map(|spec| format!("{}.j2", spec.name))
        .collect();
    expected.sort();
    assert_eq!(names, expected, "no temporary files are left behind");

    let reloaded = Templates::with_overrides(dir.path()).unwrap();
    let builtin = templates();
    assert_eq!(
        reloaded.summary_icl_paragraphs("q").unwrap(),
        builtin.summary_icl_paragraphs("q").unwrap()
    );
    assert_eq!(
        reloaded.decompose_claims("e", "p").unwrap(),
        builtin.decompose_claims("e", "p").unwrap()
    );
    assert_eq!(
        reloaded.override_path("policy"),
        Some(dir.path().join("policy.j2").as_path())
    );

    fs::write(dir.path().join("policy.j2"), "edited {{ query }}").unwrap();
    match Templates::export_builtin(dir.path()) {
        Err(DataError::File { path, message }) => {
            assert_eq!(path, dir.path().join("policy.j2"));
            assert_eq!(
                message,
                "already exists; remove it or export into an empty directory"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        fs::read_to_string(dir.path().join("policy.j2")).unwrap(),
        "edited {{ query }}"
    );
}

#[test]
fn the_few_shot_extraction_reads_the_text_on_one_line_and_ends_where_the_answers_go() {
    let prompt = templates()
        .extract_answers_few_shot(
            "What is the capital of Peru?",
            "I am 60% sure that it is Lima.\n\nIt may  instead be Cusco (40%).",
        )
        .unwrap();
    assert!(prompt.ends_with(
        "Question: What is the capital of Peru?\n\
         Text: I am 60% sure that it is Lima. It may instead be Cusco (40%).\n\
         Answers:"
    ));
}
