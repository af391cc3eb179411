//! Stage directories: manifests, skipping a finished stage, refusing a different one, resuming
//! a killed one record by record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lincal_data::artifact::{
    CACHE_FILE, Failure, InputFile, Keyed, Manifest, Opened, StageRun, open_stage,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: String,
    value: u32,
}

impl Keyed for Row {
    fn key(&self) -> &str {
        &self.id
    }
}

fn row(id: &str, value: u32) -> Row {
    Row {
        id: id.to_string(),
        value,
    }
}

/// A directory with an input file holding "abc".
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "abc").unwrap();
    let out = dir.path().join("stage");
    (dir, input, out)
}

fn open(
    out: &Path,
    input: &Path,
    config: serde_json::Value,
    force: bool,
) -> lincal_data::Result<Opened> {
    open_stage(out, "test-stage", &config, &[input], force)
}

fn expect_run(opened: Opened) -> StageRun {
    match opened {
        Opened::Run(run) => run,
        Opened::Finished(_) => panic!("expected the stage to run"),
    }
}

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Runs the whole stage over ids a, b, c (b fails) and returns the manifest.
fn run_to_the_end(out: &Path, input: &Path, config: serde_json::Value) -> Manifest {
    let mut run = expect_run(open(out, input, config, false).unwrap());
    let mut log = run.record_log::<Row>("rows.jsonl").unwrap();
    log.append(&[row("c", 3), row("a", 1)]).unwrap();
    run.fail(&[Failure {
        id: "b".into(),
        step: "compute".into(),
        reason: "no usable answer in 2 attempts: not a number".into(),
        raw_text: Some("seven".into()),
        attempts: 2,
    }])
    .unwrap();
    run.log_metrics(&json!({"done": 3})).unwrap();
    let records = run.commit_records(log, &["a", "b", "c"]).unwrap();
    assert_eq!(records, [row("a", 1), row("c", 3)]);
    run.write_output("extra.txt", |path| {
        std::fs::write(path, "x").map_err(|source| lincal_data::DataError::Write {
            path: path.to_path_buf(),
            source,
        })
    })
    .unwrap();
    run.finish(
        BTreeMap::from([("items".to_string(), 3), ("failed".to_string(), 1)]),
        serde_json::Map::from_iter([("note".to_string(), json!("done"))]),
    )
    .unwrap()
}

#[test]
fn a_finished_stage_has_its_manifest_outputs_in_order_and_failures() {
    let (_dir, input, out) = setup();
    let manifest = run_to_the_end(&out, &input, json!({"temperature": 0.3}));
    assert_eq!(manifest.stage, "test-stage");
    assert_eq!(manifest.config, json!({"temperature": 0.3}));
    // sha256("abc"), the FIPS 180-2 test vector.
    assert_eq!(
        manifest.inputs,
        [InputFile {
            path: input.clone(),
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
            bytes: 3
        }]
    );
    assert_eq!(manifest.lincal_version, env!("CARGO_PKG_VERSION"));
    assert!(manifest.finished.is_some() && manifest.resumed.is_empty());
    assert_eq!(manifest.counts["failed"], 1);
    assert_eq!(
        manifest.outputs,
        ["rows.jsonl", "extra.txt", "failures.jsonl", "metrics.jsonl"]
    );
    assert_eq!(manifest.summary["note"], "done");
    assert_eq!(Manifest::read(&out).unwrap(), manifest);
    // Records in input order; no partial files left.
    assert_eq!(
        read_lines(&out.join("rows.jsonl")),
        [
            json!({"id": "a", "value": 1}),
            json!({"id": "c", "value": 3})
        ]
    );
    assert_eq!(
        read_lines(&out.join("failures.jsonl")),
        [json!({
            "id": "b",
            "step": "compute",
            "reason": "no usable answer in 2 attempts: not a number",
            "raw_text": "seven",
            "attempts": 2,
        })]
    );
    assert_eq!(read_lines(&out.join("metrics.jsonl")), [json!({"done": 3})]);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "extra.txt",
            "failures.jsonl",
            "manifest.json",
            "metrics.jsonl",
            "rows.jsonl"
        ]
    );
}

#[test]
fn the_same_stage_is_skipped_and_a_different_one_refused_unless_forced() {
    let (_dir, input, out) = setup();
    let manifest = run_to_the_end(&out, &input, json!({"sampling": {"temperature": 0.3}}));
    // Same config, same input content (even at another path): finished, nothing to do.
    let moved = input.with_file_name("moved.txt");
    std::fs::copy(&input, &moved).unwrap();
    match open(
        &out,
        &moved,
        json!({"sampling": {"temperature": 0.3}}),
        false,
    )
    .unwrap()
    {
        Opened::Finished(found) => assert_eq!(found, manifest),
        Opened::Run(_) => panic!("a finished stage with the same config must be skipped"),
    }
    let error = open(
        &out,
        &input,
        json!({"sampling": {"temperature": 0.5}}),
        false,
    )
    .err()
    .unwrap();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: holds a finished `test-stage` run that does not match this one: its config \
             differs: `sampling.temperature` was 0.3, now 0.5. Use --force to replace it (its \
             response cache is kept), or choose another output directory",
            out.display()
        )
    );
    std::fs::write(&input, "abd").unwrap();
    let error = open(
        &out,
        &input,
        json!({"sampling": {"temperature": 0.3}}),
        false,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        error.contains(&format!(
            "input {} has changed (sha256 ba7816bf8f01 then, ",
            input.display()
        )),
        "{error}"
    );
    let error = open_stage(&out, "other-stage", &json!({}), &[&input], false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("it holds a `test-stage` stage, not `other-stage`"),
        "{error}"
    );

    // --force: the old outputs go, the response cache stays.
    std::fs::write(out.join(CACHE_FILE), "cache").unwrap();
    let run = expect_run(
        open(
            &out,
            &input,
            json!({"sampling": {"temperature": 0.5}}),
            true,
        )
        .unwrap(),
    );
    assert!(!run.is_resumed());
    for gone in ["rows.jsonl", "extra.txt", "failures.jsonl"] {
        assert!(!out.join(gone).exists(), "{gone} should be removed");
    }
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap(),
        "",
        "metrics start afresh"
    );
    assert!(out.join(CACHE_FILE).exists());
    assert_eq!(Manifest::read(&out).unwrap().finished, None);
}

#[test]
fn a_killed_stage_resumes_from_its_finished_records_dropping_a_torn_line() {
    let (_dir, input, out) = setup();
    let config = json!({"k": 1});
    {
        let mut run = expect_run(open(&out, &input, config.clone(), false).unwrap());
        let mut log = run.record_log::<Row>("rows.jsonl").unwrap();
        log.append(&[row("a", 1), row("b", 2)]).unwrap();
        run.fail(&[Failure {
            id: "c".into(),
            step: "compute".into(),
            reason: "call failed".into(),
            raw_text: None,
            attempts: 1,
        }])
        .unwrap();
        // Killed while writing the next record.
    }
    let partial = out.join("rows.jsonl.partial");
    let mut text = std::fs::read_to_string(&partial).unwrap();
    text.push_str("{\"id\": \"d\", \"val");
    std::fs::write(&partial, text).unwrap();

    // Another config is refused even for an unfinished run.
    let error = open(&out, &input, json!({"k": 2}), false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("holds an unfinished `test-stage` run"),
        "{error}"
    );

    let mut run = expect_run(open(&out, &input, config, false).unwrap());
    assert!(run.is_resumed());
    let mut log = run.record_log::<Row>("rows.jsonl").unwrap();
    assert_eq!(log.done_count(), 2);
    assert!(log.is_done("a") && log.is_done("b") && !log.is_done("c") && !log.is_done("d"));
    // The failed item is tried again; the torn line is gone, so new records start cleanly.
    log.append(&[row("d", 4), row("c", 3)]).unwrap();
    let records = run.commit_records(log, &["a", "b", "c", "d"]).unwrap();
    assert_eq!(
        records,
        [row("a", 1), row("b", 2), row("c", 3), row("d", 4)]
    );
    let manifest = run.finish(BTreeMap::new(), serde_json::Map::new()).unwrap();
    assert_eq!(manifest.resumed.len(), 1);
    assert!(
        read_lines(&out.join("failures.jsonl")).is_empty(),
        "the retried failure is not kept"
    );
    assert!(!partial.exists());
}

#[test]
fn records_committed_before_a_kill_are_read_back_from_the_final_file() {
    let (_dir, input, out) = setup();
    {
        let mut run = expect_run(open(&out, &input, json!({}), false).unwrap());
        let mut log = run.record_log::<Row>("rows.jsonl").unwrap();
        log.append(&[row("a", 1)]).unwrap();
        run.commit_records(log, &["a"]).unwrap();
        // Killed before the manifest was finished.
    }
    let mut run = expect_run(open(&out, &input, json!({}), false).unwrap());
    let log = run.record_log::<Row>("rows.jsonl").unwrap();
    assert!(log.is_done("a"));
    assert_eq!(run.commit_records(log, &["a"]).unwrap(), [row("a", 1)]);
}

#[test]
fn a_damaged_record_line_is_named() {
    let (_dir, input, out) = setup();
    drop(expect_run(open(&out, &input, json!({}), false).unwrap()));
    std::fs::write(
        out.join("rows.jsonl.partial"),
        "{\"id\": \"a\", \"value\": 1}\nnot json\n{\"id\": \"b\", \"value\": 2}\n",
    )
    .unwrap();
    let run = expect_run(open(&out, &input, json!({}), false).unwrap());
    let error = run
        .record_log::<Row>("rows.jsonl")
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.starts_with(&format!(
            "{}:2: not a valid record (",
            out.join("rows.jsonl.partial").display()
        )),
        "{error}"
    );
    assert!(
        error.ends_with("the file is damaged: delete it to produce its items again"),
        "{error}"
    );
}

#[test]
fn a_directory_of_other_files_is_not_taken_over() {
    let (_dir, input, out) = setup();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(CACHE_FILE), "").unwrap();
    // A response cache alone is the stage's own.
    drop(expect_run(open(&out, &input, json!({}), false).unwrap()));
    let other = out.with_file_name("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let error = open(&other, &input, json!({}), false)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        error,
        format!(
            "{}: exists and holds files but no manifest.json, so it is not a stage directory; \
             choose a new or empty output directory (or --force to write into it anyway)",
            other.display()
        )
    );
    drop(expect_run(open(&other, &input, json!({}), true).unwrap()));
    assert_eq!(
        std::fs::read_to_string(other.join("notes.txt")).unwrap(),
        "mine"
    );
}
