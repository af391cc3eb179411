//! `lincal generate --input`: what a resume takes up, and what it refuses.

mod common;

use common::{
    leftover_temporaries, lincal, lincal_with_file_size_limit, read_jsonl, tiny_model_dir,
};
use std::path::PathBuf;

/// A tiny model, prompts and the arguments of a job on them, run to the end once.
struct Job {
    _dir: tempfile::TempDir,
    input: PathBuf,
    output: PathBuf,
    partial: PathBuf,
    args: Vec<String>,
    /// The rows of the uninterrupted run.
    full: Vec<serde_json::Value>,
}

impl Job {
    fn new() -> Self {
        Self::with_prompts(5)
    }

    fn with_prompts(count: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_model_dir(dir.path());
        let input = dir.path().join("prompts.jsonl");
        let lines: Vec<String> = (0..count)
            .map(|i| {
                format!(
                    "{{\"id\": {i}, \"prompt\": \"t{} t{}\"}}",
                    3 + i % 50,
                    10 + i % 40
                )
            })
            .collect();
        std::fs::write(&input, lines.join("\n") + "\n").unwrap();
        let output = dir.path().join("out.jsonl");
        let args: Vec<String> = [
            "generate",
            "--model",
            &model,
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--max-new-tokens",
            "6",
            "--device",
            "cpu",
            "--seed",
            "3",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let mut job = Job {
            partial: dir.path().join("out.jsonl.partial"),
            _dir: dir,
            input,
            output,
            args,
            full: Vec::new(),
        };
        let run = job.run(&[]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        job.full = read_jsonl(&job.output);
        job
    }

    /// Runs the job with `extra` arguments, in batches of 2 unless they say otherwise.
    fn run(&self, extra: &[&str]) -> std::process::Output {
        lincal(&self.args_with(extra))
    }

    /// The job's arguments with `extra`, in batches of 2 unless they say otherwise.
    fn args_with<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend(extra);
        if !extra.contains(&"--batch-size") {
            args.extend(["--batch-size", "2"]);
        }
        args
    }

    /// Leaves what a run killed during its third batch leaves: `rows` finished lines and a
    /// torn one in the partial file, no output.
    fn kill_after(&self, rows: &[serde_json::Value]) {
        std::fs::remove_file(&self.output).unwrap();
        let kept: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(&self.partial, kept + "{\"id\": 4, \"comp").unwrap();
    }

    fn manifest(&self) -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.output.with_extension("jsonl.manifest.json")).unwrap(),
        )
        .unwrap()
    }
}

/// The finished rows of an interrupted run are appended to, never written again: rows marked
/// in the partial file come back marked, and the last row is the one an uninterrupted run
/// makes. The manifest beside the output records the input, settings and the resume.
#[test]
fn a_resume_keeps_finished_rows_as_written() {
    let job = Job::new();
    let manifest = job.manifest();
    assert_eq!(manifest["stage"], "generate");
    assert_eq!(
        (
            manifest["config"]["temperature"].as_f64(),
            manifest["config"]["seed"].as_u64()
        ),
        (Some(0.7), Some(3))
    );
    assert_eq!(
        manifest["inputs"][0]["bytes"].as_u64(),
        Some(std::fs::metadata(&job.input).unwrap().len())
    );
    assert_eq!(manifest["counts"]["rows"], 5);
    assert!(
        manifest["finished"].is_string() && manifest["resumed"].as_array().unwrap().is_empty(),
        "{manifest}"
    );

    let mut marked = job.full[..4].to_vec();
    for row in &mut marked {
        row["completion"] = "written before the kill".into();
    }
    job.kill_after(&marked);
    let run = job.run(&[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let resumed = read_jsonl(&job.output);
    assert_eq!(resumed[..4], marked[..]);
    assert_eq!(resumed[4], job.full[4]);
    assert!(!job.partial.exists());
    let manifest = job.manifest();
    assert_eq!(
        manifest["resumed"].as_array().unwrap().len(),
        1,
        "{manifest}"
    );
    assert!(manifest["finished"].is_string());
}

/// Rows made from another input are not mixed with new ones: the resume is refused, naming
/// the file, what changed and what to do, and the partial file is left as it was.
#[test]
fn a_resume_from_a_changed_input_is_refused() {
    let job = Job::new();
    job.kill_after(&job.full[..2]);
    let before = std::fs::read(&job.partial).unwrap();
    let text = std::fs::read_to_string(&job.input).unwrap();
    std::fs::write(&job.input, text.replace("t4 t11", "t4 t12")).unwrap();
    let run = job.run(&[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    let expected = format!(
        "{} holds rows of an interrupted run that does not match this one: \
         input {} has changed (sha256 ",
        job.partial.display(),
        job.input.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "run with the same input and settings to finish it, or delete {} (or give another \
             --output) to start over",
            job.partial.display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&job.partial).unwrap(), before);
    assert!(!job.output.exists());
}

/// The same for other sampling settings; and a partial file without its manifest is not taken
/// up either.
#[test]
fn a_resume_with_other_settings_is_refused() {
    let job = Job::new();
    job.kill_after(&job.full[..2]);
    let run = job.run(&["--temperature", "0.5"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains(&format!(
            "{} holds rows of an interrupted run that does not match this one: its config differs: \
             `temperature` was 0.7, now 0.5;",
            job.partial.display()
        )),
        "{stderr}"
    );
    let run = job.run(&["--stop", "t9"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("its config differs: `stop` was [], now [\"t9\"]"),
        "{stderr}"
    );
    // The batch size does not decide the output: a resume may change it.
    let run = job.run(&["--batch-size", "3"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(read_jsonl(&job.output), job.full);

    std::fs::remove_file(&job.output).unwrap();
    std::fs::remove_file(job.output.with_extension("jsonl.manifest.json")).unwrap();
    std::fs::write(&job.partial, format!("{}\n", job.full[0])).unwrap();
    let run = job.run(&[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success()
            && stderr
                .contains("out.jsonl.manifest.json that records its input and settings is missing"),
        "{stderr}"
    );
}

/// A second run on an output in use is refused, naming the holder (here this test process,
/// which holds the lock as a running `generate` would), and leaves the output as it was.
#[test]
fn a_second_run_on_an_output_in_use_is_refused() {
    let job = Job::new();
    let before = std::fs::read(&job.output).unwrap();
    let lock = lincal_data::lock::OutputLock::file(&job.output).unwrap();
    let run = job.run(&[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success()
            && stderr.contains(&format!("{}: ", lock.path().display()))
            && stderr.contains(&format!("is held by process {}", std::process::id())),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&job.output).unwrap(), before);
    drop(lock);
    assert!(job.run(&[]).status.success());
}

/// A write that fails (here a 2 KiB file size limit, as a full disk would) stops the run with
/// an error naming the file and what to do; the rows written stay, and the same command run
/// again finishes the job with exactly the rows of an uninterrupted run.
#[test]
fn a_full_disk_stops_generate_and_the_same_command_finishes_it() {
    let job = Job::with_prompts(40);
    assert!(std::fs::metadata(&job.output).unwrap().len() > 4096);
    std::fs::remove_file(&job.output).unwrap();
    let run = lincal_with_file_size_limit(&job.args_with(&[]), 2);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains(&format!("writing {}", job.partial.display()))
            && stderr.contains("The disk is full or a file size limit was reached"),
        "{stderr}"
    );
    assert!(std::fs::metadata(&job.partial).unwrap().len() > 1000);
    let run = job.run(&[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert_eq!(read_jsonl(&job.output), job.full);
    // stderr is no terminal here: progress comes as lines, the last after the last prompt.
    assert!(
        stderr.contains(&format!("{}: 40/40 prompts, ", job.output.display())),
        "{stderr}"
    );
    assert_eq!(leftover_temporaries(job._dir.path()), Vec::<PathBuf>::new());
}
