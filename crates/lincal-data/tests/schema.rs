//! The reference dataset readers: CSV and Parquet fixtures of every split, the TriviaQA join in
//! each of its formats, conversion into examples, JSONL formats, splits and the literal parser.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lincal_data::schema::pylit::{PyLiteral, parse_py_literal};
use lincal_data::schema::{
    self, HasQuestionId, PARAGRAPH_CHAR_LIMIT, ParagraphGenerationRow, ReaderPromptInput,
    RewardExample, RewardModelTrainingRow, SftExample, SftTarget, SftTrainingRow, Tally, TriviaQa,
    TriviaQuestion, WithQuestion, jsonl,
};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

fn fixture(name: &str) -> PathBuf {
    // Read at run time: a binary reused from another checkout's build names that one.
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/schema")
        .join(name)
}

fn s(text: &str) -> String {
    text.to_string()
}

fn some(text: &str) -> Option<String> {
    Some(text.to_string())
}

fn tally(kept: usize, skipped: &[(&'static str, usize)]) -> Tally {
    Tally {
        kept,
        skipped: skipped.iter().copied().collect(),
    }
}

// ---------------------------------------------------------------- Python literals

#[test]
fn literal_parser_reads_what_pandas_writes() {
    let parsed = parse_py_literal(
        r#"['a', "b's", 'it\'s', "say \"hi\"", 0.7, -3, 1e-05, nan, None, True, [], []]"#,
    );
    let items = match parsed {
        Ok(PyLiteral::List(items)) => items,
        other => panic!("expected a list, got {other:?}"),
    };
    assert_eq!(items.len(), 12);
    assert_eq!(items[0], PyLiteral::Str(s("a")));
    assert_eq!(items[1], PyLiteral::Str(s("b's")));
    assert_eq!(items[2], PyLiteral::Str(s("it's")));
    assert_eq!(items[3], PyLiteral::Str(s("say \"hi\"")));
    assert_eq!(items[4], PyLiteral::Float(0.7));
    assert_eq!(items[5], PyLiteral::Int(-3));
    assert_eq!(items[6], PyLiteral::Float(1e-5));
    assert!(matches!(items[7], PyLiteral::Float(f) if f.is_nan()));
    assert_eq!(items[8], PyLiteral::None);
    assert_eq!(items[9], PyLiteral::Bool(true));
    assert_eq!(items[10], PyLiteral::List(vec![]));
}

#[test]
fn literal_parser_handles_escapes_whitespace_and_trailing_commas() {
    assert_eq!(
        parse_py_literal(
            "[\n  'tab\\there',\n  'nl\\nx', '\\x41\\u00e9\\U0001F600', 'oct\\101', 'keep\\d',\n]\n"
        ),
        Ok(PyLiteral::List(vec![
            PyLiteral::Str(s("tab\there")),
            PyLiteral::Str(s("nl\nx")),
            PyLiteral::Str(s("Aé😀")),
            PyLiteral::Str(s("octA")),
            PyLiteral::Str(s("keep\\d")),
        ]))
    );
    assert_eq!(parse_py_literal("  []  "), Ok(PyLiteral::List(vec![])));
    assert_eq!(
        parse_py_literal("-inf"),
        Ok(PyLiteral::Float(f64::NEG_INFINITY))
    );
    assert_eq!(
        parse_py_literal("[[1, 2], ['x']]")
            .map(|v| matches!(v, PyLiteral::List(ref l) if l.len() == 2)),
        Ok(true)
    );
}

#[test]
fn literal_parser_reports_malformed_input_with_position() {
    let error = |text: &str| parse_py_literal(text).expect_err(text).to_string();
    assert_eq!(
        error("['ok', 'unterminated]"),
        "at character 8: string opened with ' is never closed"
    );
    assert_eq!(
        error("['a', 'b'"),
        "at character 1: list is never closed with ']'"
    );
    assert_eq!(
        error("['a' 'b']"),
        "at character 6: expected ',' or ']' in a list, found '\\''"
    );
    assert_eq!(
        error("[Paris]"),
        "at character 2: unknown name \"Paris\" (expected a quoted string, a number, None, True, \
         False, nan or inf)"
    );
    assert_eq!(
        error("[1.2.3]"),
        "at character 2: \"1.2.3\" is not a number"
    );
    assert_eq!(
        error("['\\x4']"),
        "at character 3: escape needs 2 hex digits, found \"4'\""
    );
    assert_eq!(
        error("[1] x"),
        "at character 5: unexpected 'x' after the literal"
    );
    assert_eq!(
        error(""),
        "at character 1: expected a value, found end of text"
    );
    assert_eq!(
        error("99999999999999999999"),
        "at character 1: integer 99999999999999999999 does not fit in 64 bits"
    );
}

#[test]
fn python_str_of_list_items_matches_python() {
    assert_eq!(PyLiteral::Float(1911.0).python_str(), some("1911.0"));
    assert_eq!(PyLiteral::Int(7).python_str(), some("7"));
    assert_eq!(PyLiteral::Bool(false).python_str(), some("False"));
    assert_eq!(PyLiteral::Float(f64::NAN).python_str(), None);
    assert_eq!(PyLiteral::None.python_str(), None);
}

// ---------------------------------------------------------------- CSV readers

fn expected_sft_rows() -> Vec<SftTrainingRow> {
    vec![
        SftTrainingRow {
            question_id: s("tc_1"),
            paragraph_generation_prompt: some(
                "Write a paragraph about the scoring system of a racket sport that \
                 counts 15 and 30.",
            ),
            claude_summary: some(
                "I am certain the sport is tennis, which counts \"15, 30, 40, game\".\n\n\
                 I estimate a 60% chance that the scoring comes from the quarters of a clock face.",
            ),
            icl_generated_paragraphs: Some(vec![
                some("Tennis scoring, which counts \"15, 30, 40\", is old."),
                some("It's played at Wimbledon."),
            ]),
            icl_generated_paragraphs_error: None,
            claude_generated_paragraph: some("Tennis counts its points as 15 and 30."),
        },
        SftTrainingRow {
            question_id: s("tc_2"),
            paragraph_generation_prompt: some(
                "Write a paragraph about the capital city of Taiwan.",
            ),
            claude_summary: None,
            icl_generated_paragraphs: Some(vec![]),
            icl_generated_paragraphs_error: None,
            claude_generated_paragraph: some("Taipei is the capital of Taiwan."),
        },
        SftTrainingRow {
            question_id: s("tc_3"),
            paragraph_generation_prompt: some(
                "Write a paragraph about a famous portrait, its painter and where it hangs.",
            ),
            claude_summary: some("I believe the painting is the Mona Lisa."),
            icl_generated_paragraphs: None,
            icl_generated_paragraphs_error: None,
            claude_generated_paragraph: None,
        },
        SftTrainingRow {
            question_id: s("tc_4"),
            paragraph_generation_prompt: some(
                "Write a paragraph about the author of a famous American novel set on \
                 the Mississippi.",
            ),
            claude_summary: some("I am certain it is Mark Twain."),
            icl_generated_paragraphs: Some(vec![
                some("He wrote 'Tom Sawyer' in 1876.\nHe lived in Hartford."),
                some("A backslash \\ stays."),
                None,
            ]),
            icl_generated_paragraphs_error: None,
            claude_generated_paragraph: some("Mark Twain wrote it."),
        },
    ]
}

#[test]
fn sft_training_csv_reads_quoted_multiline_cells_and_literal_lists() {
    let rows = schema::read_sft_training(&fixture("sft_training.csv")).unwrap();
    assert_eq!(rows, expected_sft_rows());
}

/// A row whose `icl_generated_paragraphs` is not a list is read, with the reason (file, line,
/// column); Factuality SFT, the one task that needs the column, drops and counts it (SPEC
/// 1.3), and the other tasks keep it.
#[test]
fn bad_literal_cell_drops_the_row_only_where_the_column_is_needed() {
    let path = fixture("sft_training_bad_literal.csv");
    let rows = schema::read_sft_training(&path).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].icl_generated_paragraphs_error, None);
    assert_eq!(
        rows[1].icl_generated_paragraphs_error.as_deref(),
        Some(
            format!(
                "{}:4: column icl_generated_paragraphs: not a valid Python list literal at \
                 character 8: string opened with ' is never closed",
                path.display()
            )
            .as_str()
        )
    );
    let render = |query: &str| Ok(query.to_string());
    let (factuality, tally) =
        schema::sft_examples(&rows, schema::SftTarget::FactualitySft, &render).unwrap();
    assert_eq!(factuality.len(), 1);
    assert_eq!(
        tally.to_string(),
        "kept 1 of 2 rows; skipped icl_generated_paragraphs is not a list literal: 1"
    );
    for target in [schema::SftTarget::LcSft, schema::SftTarget::ClaudeDistill] {
        assert_eq!(
            schema::sft_examples(&rows, target, &render)
                .unwrap()
                .0
                .len(),
            2
        );
    }
}

#[test]
fn missing_column_is_reported_with_the_columns_present() {
    let path = fixture("reward_model_training_missing_column.csv");
    let error = schema::read_reward_model_training(&path)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        format!(
            "{}: missing column(s) lc_sft_ground_truth_and_extracted_answers, \
             factuality_sft_generated_paragraph, factuality_sft_binary_correctness; \
             the file has question_id, lc_sft_generated_paragraph, lc_sft_forecasted_probs. \
             Is this the right split of the reference dataset?",
            path.display()
        )
    );
}

#[test]
fn unknown_extension_is_refused() {
    let error = schema::read_sft_training(Path::new("data/sft_training.tsv"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "data/sft_training.tsv: unknown file type: expected a .csv, .parquet, \
         .json or .jsonl extension"
    );
}

fn expected_reward_rows() -> Vec<RewardModelTrainingRow> {
    let row = |id: &str,
               paragraph: &str,
               answers: Option<Vec<Option<String>>>,
               probs: Vec<f64>,
               fact: &str,
               label| {
        RewardModelTrainingRow {
            question_id: s(id),
            lc_sft_generated_paragraph: some(paragraph),
            lc_sft_ground_truth_and_extracted_answers: answers,
            lc_sft_forecasted_probs: Some(probs),
            factuality_sft_generated_paragraph: some(fact),
            factuality_sft_binary_correctness: label,
        }
    };
    vec![
        row(
            "tc_10",
            "I am fairly sure the capital of France is Paris, though Lyon is possible (20%).",
            Some(vec![some("Paris"), some("Lyon"), some("Paris")]),
            vec![0.9, 0.2, 0.9],
            "The capital of France is Paris.",
            Some(1.0),
        ),
        row(
            "tc_11",
            "The ship sank in 1912, I believe; 1911 is less likely.",
            Some(vec![some("1912"), some("1911.0")]),
            vec![0.75, 0.25],
            "The Titanic sank in 1911.",
            Some(0.0),
        ),
        row(
            "tc_12",
            "I think the mountain is Everest.",
            Some(vec![some("Mount Everest"), None]),
            vec![0.8, 0.1],
            "Everest is the tallest mountain.",
            None,
        ),
        row(
            "tc_13",
            "I do not know.",
            Some(vec![]),
            vec![],
            "I do not know.",
            Some(0.0),
        ),
        row(
            "tc_14",
            "It is either A or b.",
            Some(vec![some("A"), some("b")]),
            vec![1.2, 0.1],
            "It is A.",
            Some(2.0),
        ),
        row(
            "tc_15",
            "Either X or y, I'd say it is a toss-up.",
            Some(vec![some("X"), some("y")]),
            vec![0.5],
            "It is X.",
            Some(1.0),
        ),
        row(
            "tc_99",
            "A paragraph about a question TriviaQA does not have.",
            Some(vec![some("z"), some("z2")]),
            vec![0.1, 0.2],
            "Nothing.",
            Some(1.0),
        ),
    ]
}

#[test]
fn reward_model_training_csv_reads_answer_and_probability_lists() {
    let rows = schema::read_reward_model_training(&fixture("reward_model_training.csv")).unwrap();
    assert_eq!(rows, expected_reward_rows());
}

#[test]
fn paragraph_generation_splits_read_with_and_without_question_column() {
    let trivia =
        schema::read_paragraph_generation(&fixture("trivia_qa_paragraph_generation_test.csv"))
            .unwrap();
    assert_eq!(
        trivia,
        vec![
            ParagraphGenerationRow {
                question_id: s("tc_1"),
                paragraph_generation_prompt: s(
                    "Write a paragraph about the sport whose scores go \"15, 30, 40\", \
                     and its history."
                ),
                question: None,
            },
            ParagraphGenerationRow {
                question_id: s("tc_2"),
                paragraph_generation_prompt: s(
                    "Write a paragraph about the capital city of Taiwan."
                ),
                question: None,
            },
        ]
    );
    let jeopardy =
        schema::read_paragraph_generation(&fixture("jeopardy_paragraph_generation_test.csv"))
            .unwrap();
    assert_eq!(jeopardy[0].question_id, "17");
    assert_eq!(
        jeopardy[0].question,
        some("This 'Father of the Constitution' was the 4th U.S. president")
    );
    assert_eq!(jeopardy[1].question, None);
    assert_eq!(
        jeopardy[1].paragraph_generation_prompt,
        "Write a paragraph about the longest river in Africa."
    );
}

// ---------------------------------------------------------------- Parquet

/// Writes a flat Parquet table of optional UTF-8 columns (and DOUBLE columns named in
/// `doubles`), one row group, the way the HF conversion of a CSV looks.
fn write_flat_parquet(
    path: &Path,
    columns: &[&str],
    doubles: &[&str],
    rows: &[Vec<Option<String>>],
    codec: Compression,
) {
    let fields: Vec<String> = columns
        .iter()
        .map(|c| {
            if doubles.contains(c) {
                format!("optional double {c};")
            } else {
                format!("optional binary {c} (UTF8);")
            }
        })
        .collect();
    let schema = Arc::new(
        parse_message_type(&format!("message schema {{ {} }}", fields.join(" "))).unwrap(),
    );
    let props = Arc::new(WriterProperties::builder().set_compression(codec).build());
    let mut writer = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for (index, column) in columns.iter().enumerate() {
        let cells: Vec<Option<&String>> = rows.iter().map(|row| row[index].as_ref()).collect();
        let defs: Vec<i16> = cells.iter().map(|c| i16::from(c.is_some())).collect();
        let mut writer = group.next_column().unwrap().unwrap();
        if doubles.contains(column) {
            let values: Vec<f64> = cells.iter().flatten().map(|c| c.parse().unwrap()).collect();
            writer
                .typed::<DoubleType>()
                .write_batch(&values, Some(&defs), None)
                .unwrap();
        } else {
            let values: Vec<ByteArray> = cells
                .iter()
                .flatten()
                .map(|c| ByteArray::from(c.as_str()))
                .collect();
            writer
                .typed::<ByteArrayType>()
                .write_batch(&values, Some(&defs), None)
                .unwrap();
        }
        writer.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn reward_model_training_parquet_reads_like_the_csv() {
    let dir = tempfile::tempdir().unwrap();
    // The same columns and cells as the CSV fixture; the HF conversion stores the label as a
    // double.
    let mut reader = csv::Reader::from_path(fixture("reward_model_training.csv")).unwrap();
    let header = reader.headers().unwrap().clone();
    let columns: Vec<&str> = header.iter().collect();
    let rows: Vec<Vec<Option<String>>> = reader
        .records()
        .map(|r| {
            r.unwrap()
                .iter()
                .map(|cell| (!cell.is_empty()).then(|| cell.to_string()))
                .collect()
        })
        .collect();
    for codec in [
        Compression::SNAPPY,
        Compression::GZIP(Default::default()),
        Compression::ZSTD(Default::default()),
    ] {
        let path = dir.path().join("reward_model_training.parquet");
        write_flat_parquet(
            &path,
            &columns,
            &["factuality_sft_binary_correctness"],
            &rows,
            codec,
        );
        assert_eq!(
            schema::read_reward_model_training(&path).unwrap(),
            expected_reward_rows(),
            "{codec:?}"
        );
    }
}

#[test]
fn parquet_bad_cell_is_reported_with_row_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sft_training.parquet");
    let columns = [
        "question_id",
        "paragraph_generation_prompt",
        "claude_summary",
        "icl_generated_paragraphs",
        "claude_generated_paragraph",
    ];
    let good = vec![some("tc_1"), some("P"), some("S"), some("['a']"), None];
    let bad = vec![some("tc_2"), some("P"), some("S"), some("{'a': 1}"), None];
    write_flat_parquet(&path, &columns, &[], &[good, bad], Compression::SNAPPY);
    let rows = schema::read_sft_training(&path).unwrap();
    assert_eq!(
        rows[1].icl_generated_paragraphs_error.as_deref(),
        Some(
            format!(
                "{}:2: column icl_generated_paragraphs: not a valid Python list literal at \
                 character 1: expected a value, found '{{'",
                path.display()
            )
            .as_str()
        )
    );
}

/// TriviaQA as HF ships it: a nested `answer` struct with list columns, plus columns that the
/// reader must skip.
fn write_trivia_parquet(path: &Path, questions: &[TriviaQuestion]) {
    let schema = Arc::new(
        parse_message_type(
            "message schema {
                optional binary question (UTF8);
                optional binary question_id (UTF8);
                optional binary question_source (UTF8);
                optional group answer {
                    optional group aliases (LIST) { repeated group list { \
                        optional binary element (UTF8); } }
                    optional group normalized_aliases (LIST) { repeated group list { \
                        optional binary element (UTF8); } }
                    optional binary type (UTF8);
                    optional binary value (UTF8);
                }
            }",
        )
        .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut writer = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut write_strings = |values: Vec<&str>, defs: Vec<i16>, reps: Option<Vec<i16>>| {
        let values: Vec<ByteArray> = values.into_iter().map(ByteArray::from).collect();
        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), reps.as_deref())
            .unwrap();
        column.close().unwrap();
    };
    let n = questions.len();
    write_strings(
        questions.iter().map(|q| q.question.as_str()).collect(),
        vec![1; n],
        None,
    );
    write_strings(
        questions.iter().map(|q| q.question_id.as_str()).collect(),
        vec![1; n],
        None,
    );
    write_strings(vec![], vec![0; n], None);
    for list in [
        |q: &TriviaQuestion| q.aliases.clone(),
        |q: &TriviaQuestion| q.normalized_aliases.clone(),
    ] {
        // Levels: answer(1) list-group(2) repeated entry(3) element(4); an empty list stops at 2.
        let (mut values, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
        for question in questions {
            let items = list(question);
            if items.is_empty() {
                defs.push(2);
                reps.push(0);
            }
            for (i, item) in items.into_iter().enumerate() {
                values.push(item);
                defs.push(4);
                reps.push(i16::from(i > 0));
            }
        }
        write_strings(
            values.iter().map(String::as_str).collect(),
            defs,
            Some(reps),
        );
    }
    write_strings(vec!["WikipediaEntity"; n], vec![2; n], None);
    write_strings(
        questions.iter().map(|q| q.answer.as_str()).collect(),
        vec![2; n],
        None,
    );
    group.close().unwrap();
    writer.close().unwrap();
}

fn trivia_question(
    id: &str,
    question: &str,
    answer: &str,
    aliases: &[&str],
    normalized: &[&str],
) -> TriviaQuestion {
    TriviaQuestion {
        question_id: s(id),
        question: s(question),
        answer: s(answer),
        aliases: aliases.iter().map(|a| s(a)).collect(),
        normalized_aliases: normalized.iter().map(|a| s(a)).collect(),
    }
}

#[test]
fn trivia_qa_loads_from_parquet_original_json_and_hf_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let parquet_path = dir.path().join("validation-00000-of-00001.parquet");
    let from_parquet = vec![
        trivia_question(
            "tc_3",
            "Which painting hangs in the Louvre?",
            "Mona Lisa",
            &["Mona Lisa", "La Gioconda"],
            &["mona lisa", "la gioconda"],
        ),
        trivia_question("tc_4", "Who wrote Tom Sawyer?", "Mark Twain", &[], &[]),
    ];
    write_trivia_parquet(&parquet_path, &from_parquet);
    let trivia = TriviaQa::load(&[
        parquet_path.clone(),
        fixture("trivia_qa_original.json"),
        fixture("trivia_qa_hf.jsonl"),
    ])
    .unwrap();
    assert_eq!(trivia.len(), 10);
    assert_eq!(trivia.get("tc_3"), Some(&from_parquet[0]));
    assert_eq!(trivia.get("tc_4"), Some(&from_parquet[1]));
    assert_eq!(
        trivia.get("tc_1"),
        Some(&trivia_question(
            "tc_1",
            "\"15, 30, 40, game\" is used for the scoring system of what sport?",
            "Tennis",
            &["Tennis", "Lawn tennis"],
            &["tennis", "lawn tennis"]
        ))
    );
    assert_eq!(
        trivia.get("tc_10"),
        Some(&trivia_question(
            "tc_10",
            "Which French city is the capital?",
            "Paris",
            &["Paris", "Paris, France"],
            &["paris", "paris france"]
        ))
    );
    assert_eq!(trivia.get("tc_11").map(|q| q.answer.as_str()), Some("1912"));
}

#[test]
fn trivia_qa_malformed_jsonl_line_is_reported() {
    let path = fixture("trivia_qa_bad.jsonl");
    let error = TriviaQa::load(&[&path]).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "{}:2: not a TriviaQA question: EOF while parsing an object at line 1 column 88",
            path.display()
        )
    );
}

#[test]
fn join_gives_questions_and_reports_unmatched_rows() {
    let trivia = TriviaQa::load(&[fixture("trivia_qa_hf.jsonl")]).unwrap();
    let rows = schema::read_reward_model_training(&fixture("reward_model_training.csv")).unwrap();
    let joined = trivia.join(rows);
    assert_eq!(joined.rows.len(), 6);
    assert_eq!(
        joined.rows[0].question.question,
        "Which French city is the capital?"
    );
    assert_eq!(
        joined.rows[0].question.aliases,
        vec![s("Paris"), s("Paris, France")]
    );
    assert_eq!(joined.unmatched_ids(), vec!["tc_99"]);
    assert_eq!(
        joined.to_string(),
        "6 rows matched a TriviaQA question; 1 rows have an id that is not in the TriviaQA files \
         given (tc_99): load the TriviaQA split they come from (test rows join with validation, \
         the others with train)"
    );
}

// ---------------------------------------------------------------- examples

fn joined_reward_rows() -> Vec<WithQuestion<RewardModelTrainingRow>> {
    let trivia = TriviaQa::load(&[fixture("trivia_qa_hf.jsonl")]).unwrap();
    trivia
        .join(schema::read_reward_model_training(&fixture("reward_model_training.csv")).unwrap())
        .rows
}

fn render_reader(input: &ReaderPromptInput) -> lincal_data::Result<String> {
    Ok(format!(
        "Q={}|P={}|A={}",
        input.question, input.paragraph, input.answer
    ))
}

#[test]
fn sft_examples_for_each_target_skip_and_count_missing_targets() {
    let rows = schema::read_sft_training(&fixture("sft_training.csv")).unwrap();
    let render = |query: &str| Ok(format!("### Instruction:\n{query}\n\n### Response:"));

    let (lc, lc_tally) = schema::sft_examples(&rows, SftTarget::LcSft, &render).unwrap();
    assert_eq!(
        lc.iter()
            .map(|e| e.question_id.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["tc_1", "tc_3", "tc_4"]
    );
    assert_eq!(
        lc[1],
        SftExample {
            question_id: some("tc_3"),
            prompt: s(
                "### Instruction:\nWrite a paragraph about a famous portrait, \
                 its painter and where it hangs.\n\n### Response:"
            ),
            target: s("I believe the painting is the Mona Lisa."),
        }
    );
    assert_eq!(lc_tally, tally(3, &[("missing target", 1)]));

    let (factuality, factuality_tally) =
        schema::sft_examples(&rows, SftTarget::FactualitySft, &render).unwrap();
    let targets: Vec<&str> = factuality.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            "Tennis scoring, which counts \"15, 30, 40\", is old.",
            "He wrote 'Tom Sawyer' in 1876.\nHe lived in Hartford."
        ]
    );
    assert_eq!(factuality_tally, tally(2, &[("missing target", 2)]));

    let (distill, distill_tally) =
        schema::sft_examples(&rows, SftTarget::ClaudeDistill, &render).unwrap();
    assert_eq!(distill.len(), 3);
    assert_eq!(
        distill_tally.to_string(),
        "kept 3 of 4 rows; skipped missing target: 1"
    );
}

#[test]
fn extract_answers_targets_dedupe_in_order_and_say_no_answer() {
    let (examples, report) =
        schema::extract_answers_examples(&joined_reward_rows(), &render_reader).unwrap();
    let targets: Vec<(&str, &str)> = examples
        .iter()
        .map(|e| (e.question_id.as_deref().unwrap(), e.target.as_str()))
        .collect();
    assert_eq!(
        targets,
        [
            ("tc_10", "Lyon; Paris"),
            ("tc_11", "1911.0"),
            ("tc_14", "b"),
            ("tc_15", "y")
        ]
    );
    assert_eq!(
        examples[1].prompt,
        "Q=In which year did the Titanic sink?|P=The ship sank in 1912, I believe; 1911 is \
         less likely.|A="
    );
    assert_eq!(
        report,
        tally(
            4,
            &[
                ("NaN in answers or probabilities list", 1),
                ("empty answers or probabilities list", 1)
            ]
        )
    );
}

#[test]
fn forecast_probs_examples_cover_every_candidate_and_count_skips() {
    let (examples, report) =
        schema::forecast_probs_examples(&joined_reward_rows(), &render_reader).unwrap();
    let labelled: Vec<(&str, f64)> = examples
        .iter()
        .map(|e| (e.prompt.rsplit("|A=").next().unwrap(), e.label))
        .collect();
    assert_eq!(
        labelled,
        [
            ("Paris", 0.9),
            ("Lyon", 0.2),
            ("Paris", 0.9),
            ("1912", 0.75),
            ("1911.0", 0.25)
        ]
    );
    assert_eq!(
        report,
        tally(
            2,
            &[
                ("NaN in answers or probabilities list", 1),
                ("answers and probabilities differ in length", 1),
                ("empty answers or probabilities list", 1),
                ("label outside [0, 1]", 1),
            ]
        )
    );
}

#[test]
fn reward_model_paragraphs_are_cut_to_the_character_limit() {
    let long = "é".repeat(PARAGRAPH_CHAR_LIMIT) + "TAIL";
    let row = WithQuestion {
        row: RewardModelTrainingRow {
            question_id: s("tc_10"),
            lc_sft_generated_paragraph: Some(long.clone()),
            lc_sft_ground_truth_and_extracted_answers: Some(vec![some("Paris")]),
            lc_sft_forecasted_probs: Some(vec![0.5]),
            factuality_sft_generated_paragraph: Some(long),
            factuality_sft_binary_correctness: Some(1.0),
        },
        question: trivia_question("tc_10", "Q?", "Paris", &[], &[]),
    };
    let paragraph_of = |prompt: &str| {
        prompt
            .split("|P=")
            .nth(1)
            .unwrap()
            .split("|A=")
            .next()
            .unwrap()
            .to_string()
    };
    let (forecast, _) =
        schema::forecast_probs_examples(std::slice::from_ref(&row), &render_reader).unwrap();
    let (binary, _) =
        schema::binary_correctness_examples(std::slice::from_ref(&row), &render_reader).unwrap();
    for prompt in [&forecast[0].prompt, &binary[0].prompt] {
        assert_eq!(paragraph_of(prompt), "é".repeat(PARAGRAPH_CHAR_LIMIT));
    }
    // ExtractAnswers reads the whole paragraph.
    let (extract, _) =
        schema::extract_answers_examples(std::slice::from_ref(&row), &render_reader).unwrap();
    assert!(paragraph_of(&extract[0].prompt).ends_with("TAIL"));
}

#[test]
fn binary_correctness_examples_use_the_true_answer_and_skip_bad_labels() {
    let (examples, report) =
        schema::binary_correctness_examples(&joined_reward_rows(), &render_reader).unwrap();
    let got: Vec<(&str, f64)> = examples
        .iter()
        .map(|e| (e.question_id.as_deref().unwrap(), e.label))
        .collect();
    assert_eq!(
        got,
        [
            ("tc_10", 1.0),
            ("tc_11", 0.0),
            ("tc_13", 0.0),
            ("tc_15", 1.0)
        ]
    );
    assert_eq!(
        examples[0].prompt,
        "Q=Which French city is the capital?|P=The capital of France is Paris.|A=Paris"
    );
    assert_eq!(
        report,
        tally(4, &[("label outside [0, 1]", 1), ("missing label", 1)])
    );
}

#[test]
fn prompt_rendering_errors_propagate() {
    let rows = schema::read_sft_training(&fixture("sft_training.csv")).unwrap();
    let failing = |_: &str| Err(lincal_data::DataError::Invalid(s("template has no slot")));
    assert_eq!(
        schema::sft_examples(&rows, SftTarget::LcSft, &failing)
            .unwrap_err()
            .to_string(),
        "template has no slot"
    );
}

// ---------------------------------------------------------------- JSONL formats

#[test]
fn jsonl_examples_round_trip() {
    let examples = jsonl::read_sft_jsonl(&fixture("sft_examples.jsonl")).unwrap();
    assert_eq!(
        examples,
        vec![
            SftExample {
                question_id: some("tc_1"),
                prompt: s("### Instruction:\nWrite a paragraph about tennis.\n\n### Response:"),
                target: s(" Tennis is a racket sport."),
            },
            SftExample {
                question_id: None,
                prompt: s("P2"),
                target: s("T2")
            },
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sft.jsonl");
    jsonl::write_jsonl(&path, &examples).unwrap();
    assert_eq!(jsonl::read_sft_jsonl(&path).unwrap(), examples);
    assert_eq!(
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap(),
        r#"{"prompt":"P2","target":"T2"}"#
    );
    let rewards = vec![RewardExample {
        question_id: some("q"),
        prompt: s("P"),
        label: 0.25,
    }];
    jsonl::write_jsonl(&path, &rewards).unwrap();
    assert_eq!(jsonl::read_reward_jsonl(&path).unwrap(), rewards);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, [std::ffi::OsString::from("sft.jsonl")]);
}

#[test]
fn malformed_jsonl_lines_are_reported_with_file_and_line() {
    let path = fixture("sft_examples_bad.jsonl");
    assert_eq!(
        jsonl::read_sft_jsonl(&path).unwrap_err().to_string(),
        format!(
            "{}:3: missing field `target` at line 1 column 16",
            path.display()
        )
    );
    let path = fixture("reward_examples_bad.jsonl");
    assert_eq!(
        jsonl::read_reward_jsonl(&path).unwrap_err().to_string(),
        format!("{}:2: label 1.5 is outside [0, 1]", path.display())
    );
}

// ---------------------------------------------------------------- splits

fn rows_for(ids: &[&str]) -> Vec<ParagraphGenerationRow> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| ParagraphGenerationRow {
            question_id: s(id),
            paragraph_generation_prompt: format!("prompt {i}"),
            question: None,
        })
        .collect()
}

#[test]
fn split_is_deterministic_disjoint_and_keeps_questions_whole() {
    // 40 questions, three rows each, in two different input orders.
    let ids: Vec<String> = (0..40).map(|i| format!("q{i:02}")).collect();
    let mut forward: Vec<&str> = Vec::new();
    for round in 0..3 {
        forward.extend(ids.iter().map(String::as_str).skip(round));
        forward.extend(ids.iter().map(String::as_str).take(round));
    }
    let mut backward = forward.clone();
    backward.reverse();

    let split = schema::split_by_question_id(rows_for(&forward), 10, schema::SPLIT_SEED).unwrap();
    let eval_ids = |split: &schema::Split<ParagraphGenerationRow>| {
        let mut ids: Vec<String> = split.eval.iter().map(|r| r.question_id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let held_out = eval_ids(&split);
    assert_eq!(held_out.len(), 10);
    assert_eq!(split.eval.len(), 30);
    assert_eq!(split.train.len(), 90);
    assert!(
        split
            .train
            .iter()
            .all(|r| !held_out.contains(&r.question_id))
    );
    // Input order is kept within a side.
    let train_prompts: Vec<&str> = split
        .train
        .iter()
        .map(|r| r.paragraph_generation_prompt.as_str())
        .collect();
    let mut sorted = train_prompts.clone();
    sorted.sort_by_key(|p| p.trim_start_matches("prompt ").parse::<usize>().unwrap());
    assert_eq!(train_prompts, sorted);

    let reordered =
        schema::split_by_question_id(rows_for(&backward), 10, schema::SPLIT_SEED).unwrap();
    assert_eq!(eval_ids(&reordered), held_out);
    let again = schema::split_by_question_id(rows_for(&forward), 10, schema::SPLIT_SEED).unwrap();
    assert_eq!(again, split);
    let other_seed = schema::split_by_question_id(rows_for(&forward), 10, 7).unwrap();
    assert_ne!(eval_ids(&other_seed), held_out);
}

#[test]
fn split_groups_examples_without_ids_by_prompt() {
    let examples = vec![
        SftExample {
            question_id: None,
            prompt: s("A"),
            target: s("1"),
        },
        SftExample {
            question_id: None,
            prompt: s("A"),
            target: s("2"),
        },
        SftExample {
            question_id: None,
            prompt: s("B"),
            target: s("3"),
        },
    ];
    assert_eq!(examples[0].question_id(), "A");
    let split = schema::split_by_question_id(examples, 1, schema::SPLIT_SEED).unwrap();
    let eval_prompts: Vec<&str> = split.eval.iter().map(|e| e.prompt.as_str()).collect();
    assert!(
        eval_prompts == ["A", "A"] || eval_prompts == ["B"],
        "{eval_prompts:?}"
    );
}

#[test]
fn split_refuses_to_hold_out_every_question() {
    let error = schema::split_by_question_id(rows_for(&["a", "b", "a"]), 2, 42)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "cannot hold out 2 question ids for evaluation: the data has only 2 distinct ids, \
         which would leave nothing to train on; lower the eval size"
    );
    let nothing_held_out = schema::split_by_question_id(rows_for(&["a", "b"]), 0, 42).unwrap();
    assert_eq!(
        (nothing_held_out.train.len(), nothing_held_out.eval.len()),
        (2, 0)
    );
}

/// A byte-order mark is skipped; a JSON array, or text that is not UTF-8, is named with what
/// to do instead of a parser's message.
#[test]
fn jsonl_with_a_bom_reads_and_arrays_or_other_encodings_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.jsonl");
    let line = b"{\"prompt\": \"a\", \"target\": \" b\"}\n";
    std::fs::write(&path, [b"\xef\xbb\xbf".as_slice(), line, line].concat()).unwrap();
    assert_eq!(jsonl::read_sft_jsonl(&path).unwrap().len(), 2);
    std::fs::write(&path, "[{\"prompt\": \"a\", \"target\": \" b\"}]\n").unwrap();
    assert_eq!(
        jsonl::read_sft_jsonl(&path).unwrap_err().to_string(),
        format!(
            "{}:1: the file is a JSON array; JSON Lines hold one JSON object per line (convert \
             it with `jq -c '.[]' FILE`)",
            path.display()
        )
    );
    std::fs::write(
        &path,
        [line.as_slice(), b"{\"prompt\": \"\xff\"}\n"].concat(),
    )
    .unwrap();
    assert_eq!(
        jsonl::read_sft_jsonl(&path).unwrap_err().to_string(),
        format!(
            "{}:2: is not UTF-8 text (byte 13 of the line); save the file as UTF-8",
            path.display()
        )
    );
}
