//! The evaluation sets from files written in the test: reference splits joined with their
//! answers (TriviaQA, Jeopardy, SciQ, BioASQ), split files found by name, entity lists, and
//! clear errors for what cannot be read.

use std::path::{Path, PathBuf};

use lincal_eval::datasets::{
    ReferenceDataset, entities_from_knowledge, find_split_file, load_reference, read_entities,
};

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// (id, question, query, answer, aliases) of every question.
fn summary(data: &lincal_eval::datasets::QaDataset) -> Vec<(&str, &str, &str, &str, Vec<&str>)> {
    data.questions
        .iter()
        .map(|q| {
            (
                q.id.as_str(),
                q.question.as_str(),
                q.query.as_str(),
                q.answer.as_str(),
                q.aliases.iter().map(String::as_str).collect(),
            )
        })
        .collect()
}

#[test]
fn trivia_qa_split_joins_with_its_questions_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let split = write(
        &dir.path()
            .join("trivia_qa_paragraph_generation/test_11k.csv"),
        "question_id,paragraph_generation_prompt\ntc_1,Write a paragraph about the Eiffel Tower.\n\
         tc_9,Write about nothing.\n",
    );
    write(
        &dir.path()
            .join("trivia_qa_paragraph_generation/validation_1k.csv"),
        "question_id,paragraph_generation_prompt\n",
    );
    let trivia = write(
        &dir.path().join("trivia.jsonl"),
        concat!(
            r#"{"question_id": "tc_1", "question": "In which city is the Eiffel Tower?", "#,
            r#""answer": {"value": "Paris", "aliases": ["Paris", "Paris, France"], "#,
            r#""normalized_aliases": ["paris"]}}"#,
            "\n",
        ),
    );
    assert_eq!(
        find_split_file(dir.path(), ReferenceDataset::TriviaQa, "test").unwrap(),
        split
    );
    let data = load_reference(&split, None, std::slice::from_ref(&trivia)).unwrap();
    assert_eq!(
        (data.name.as_str(), data.split.as_deref()),
        ("TriviaQA", Some("test_11k"))
    );
    assert_eq!(
        summary(&data),
        [(
            "tc_1",
            "In which city is the Eiffel Tower?",
            "Write a paragraph about the Eiffel Tower.",
            "Paris",
            vec!["Paris", "Paris, France"]
        )]
    );
    assert_eq!(
        data.tally.to_string(),
        "kept 1 of 2 rows; skipped question id not in the --answers files: 1"
    );
    assert_eq!(data.files, [split.clone(), trivia]);

    let error = load_reference(&split, None, &[]).unwrap_err().to_string();
    assert!(
        error.contains("give --answers with TriviaQA unfiltered.nocontext files"),
        "{error}"
    );
    let error = find_split_file(dir.path(), ReferenceDataset::TriviaQa, "ppo")
        .unwrap_err()
        .to_string();
    assert!(error.contains("no file of split `ppo`"), "{error}");
}

#[test]
fn jeopardy_and_sciq_ids_are_row_indices_of_their_answer_files() {
    let dir = tempfile::tempdir().unwrap();
    let jeopardy_split = write(
        &dir.path().join("jeopardy_paragraph_generation/test.csv"),
        "question_id,paragraph_generation_prompt,question\n\
         1,Write about a river.,Which river flows through Cairo?\n",
    );
    let jeopardy = write(
        &dir.path().join("JEOPARDY_QUESTIONS1.json"),
        r#"[{"category": "HISTORY", "question": "'First clue'", "answer": "Rome"},
            {"category": "RIVERS", "question": "'It flows through Cairo'", "answer": "the Nile"}]"#,
    );
    let data = load_reference(&jeopardy_split, None, &[jeopardy]).unwrap();
    assert_eq!(
        summary(&data),
        [(
            "1",
            "Which river flows through Cairo?",
            "Write about a river.",
            "the Nile",
            vec!["the Nile"]
        )]
    );

    // SciQ: the index runs over train, validation and test in that order.
    let sciq_split = write(
        &dir.path().join("sciq_paragraph_generation/test.csv"),
        "question_id,paragraph_generation_prompt\n2,Write about the sun.\n",
    );
    let train = write(
        &dir.path().join("sciq/train.jsonl"),
        "{\"question\": \"Q0?\", \"correct_answer\": \"a0\"}\n\
         {\"question\": \"Q1?\", \"correct_answer\": \"a1\"}\n",
    );
    let validation = write(
        &dir.path().join("sciq/valid.json"),
        concat!(
            r#"[{"question": "What is the sun?", "correct_answer": "a star", "#,
            r#""distractor1": "a planet"}]"#,
        ),
    );
    let data = load_reference(&sciq_split, None, &[train, validation.clone()]).unwrap();
    assert_eq!(
        summary(&data),
        [(
            "2",
            "What is the sun?",
            "Write about the sun.",
            "a star",
            vec!["a star"]
        )]
    );

    // A row without its answer field is named by file and row.
    let broken = write(
        &dir.path().join("sciq/broken.jsonl"),
        "{\"question\": \"Q0?\"}\n",
    );
    let error = load_reference(&sciq_split, None, std::slice::from_ref(&broken))
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        format!("{}:1: row 1 has no `correct_answer` text", broken.display())
    );
}

#[test]
fn bioasq_keeps_factoid_questions_with_their_first_answer_and_its_synonyms() {
    let dir = tempfile::tempdir().unwrap();
    let split = write(
        &dir.path().join("bioasq_paragraph_generation/test.csv"),
        "question_id,paragraph_generation_prompt\nb1,Write about a gene.\nb2,Write about a list.\n\
         b3,Write about an enzyme.\n",
    );
    let answers = write(
        &dir.path().join("training12b_new.json"),
        concat!(
            r#"{"questions": [
            {"id": "b1", "type": "factoid", "body": "Which gene is mutated?", "#,
            r#""exact_answer": [["BRCA1", "breast cancer 1"], ["TP53"]]},
            {"id": "b2", "type": "list", "body": "List genes.", "exact_answer": [["A"], ["B"]]},
            {"id": "b3", "type": "factoid", "body": "Which enzyme?", "exact_answer": ["lactase"]}
        ]}"#
        ),
    );
    let data = load_reference(&split, None, &[answers]).unwrap();
    assert_eq!(
        summary(&data),
        [
            (
                "b1",
                "Which gene is mutated?",
                "Write about a gene.",
                "BRCA1",
                vec!["BRCA1", "breast cancer 1"]
            ),
            (
                "b3",
                "Which enzyme?",
                "Write about an enzyme.",
                "lactase",
                vec!["lactase"]
            ),
        ]
    );
    assert_eq!(data.tally.skipped_total(), 1);
}

#[test]
fn entity_lists_skip_comments_and_refuse_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let list = write(
        &dir.path().join("entities.txt"),
        "# people\nAda Lovelace\n\n  Alan Turing \n",
    );
    assert_eq!(
        read_entities(&list).unwrap(),
        ["Ada Lovelace", "Alan Turing"]
    );
    write(&list, "Ada Lovelace\nAlan Turing\nAda Lovelace\n");
    assert_eq!(
        read_entities(&list).unwrap_err().to_string(),
        format!(
            "{}:3: \"Ada Lovelace\" is already on line 1; list each person once",
            list.display()
        )
    );

    let knowledge = write(
        &dir.path().join("people.jsonl"),
        &(0..10)
            .map(|i| {
                format!(
                    "{{\"id\": \"p{i}\", \"title\": \"Person {i}\", \"text\": \"Gloss {i}.\"}}\n"
                )
            })
            .collect::<String>(),
    );
    assert_eq!(
        entities_from_knowledge(&knowledge, 3).unwrap(),
        ["Person 0", "Person 3", "Person 6"]
    );
    let error = entities_from_knowledge(&knowledge, 11)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        format!(
            "{} names 10 people; ask for between 1 and 10 of them",
            knowledge.display()
        )
    );
}
