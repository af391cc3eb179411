//! Stage artifacts: the directory format of lincal's resumable stages. The teacher pipelines
//! (`lincal-distill`) and the evaluation runs (`lincal-eval`) use all of it; the trainers
//! (`lincal-train`'s run directories) and `lincal generate --input` (a sidecar
//! `OUT.manifest.json`) record their work with the same [`Manifest`]. A stage that calls models
//! writes one directory holding
//!
//! - `manifest.json`: the stage name, its full config as JSON, its input files with their
//!   sha256, the lincal version, when it started (and was resumed) and finished, its counts,
//!   the names of its outputs and a free-form summary (token usage and cost...);
//! - its outputs, each written under a temporary name and renamed;
//! - `failures.jsonl`: the items it could not produce, each with the reason and the raw text;
//! - `metrics.jsonl`: progress lines, appended as the stage goes.
//!
//! [`open_stage`] decides what to do with a directory: a finished stage with the same stage
//! name, config and input hashes is not run again ([`Opened::Finished`]); a finished or
//! unfinished stage with anything different is refused unless `force` is given (then its files
//! are removed, the response cache excepted); an unfinished stage with the same settings is
//! resumed. Outputs produced item by item go through a [`RecordLog`]: each record is appended to
//! `NAME.jsonl.partial` as soon as it exists, a resumed run reads back the ids already there
//! (dropping a line torn by the kill) and skips them, and [`StageRun::commit_records`] writes the
//! finished file in input order and removes the partial. Combined with a response cache in the
//! directory ([`CACHE_FILE`]), a stage killed half way through a batch repeats no call. While
//! [`open_stage`] looks at a directory and while its [`StageRun`] lives, the directory is locked
//! ([`OutputLock`]), so a second run on it is refused, naming the first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::lock::{LOCK_FILE, OutputLock};
use crate::schema::jsonl::{write_atomically, write_jsonl};
use crate::{DataError, Result};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FAILURES_FILE: &str = "failures.jsonl";
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The default response cache of a stage that calls models. It survives `force`: the cache is
/// keyed by the full request, so answers stay valid whatever the stage's new settings are.
pub const CACHE_FILE: &str = "cache.sqlite";
const PARTIAL_SUFFIX: &str = ".partial";

/// An input file of a stage and the hash of its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

impl InputFile {
    /// Hashes the file at `path`.
    pub fn hash(path: &Path) -> Result<Self> {
        let read_error = |source| DataError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut reader = BufReader::new(File::open(path).map_err(read_error)?);
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut bytes = 0u64;
        loop {
            let read = reader.read(&mut buffer).map_err(read_error)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            bytes += read as u64;
        }
        Ok(InputFile {
            path: path.to_path_buf(),
            sha256: format!("{:x}", hasher.finalize()),
            bytes,
        })
    }
}

/// The `manifest.json` of a stage directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub stage: String,
    /// Everything that decides the outputs; a rerun with another config is refused.
    pub config: Value,
    /// The model a trainer started from, or that generated the output; a rerun with another
    /// model is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<PathBuf>,
    pub inputs: Vec<InputFile>,
    pub lincal_version: String,
    /// RFC 3339, UTC.
    pub started: String,
    /// When an interrupted run was taken up again.
    #[serde(default)]
    pub resumed: Vec<String>,
    /// `None` while the stage runs or after it was killed.
    pub finished: Option<String>,
    /// What the stage counted (items, produced, failed...).
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    /// The files the stage wrote, relative to its directory.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Anything else the stage reports at the end (token usage and cost, final losses...).
    #[serde(default)]
    pub summary: serde_json::Map<String, Value>,
}

impl Manifest {
    /// The manifest of `stage` starting now, by this version of lincal.
    pub fn new(stage: &str, config: Value, inputs: Vec<InputFile>) -> Self {
        Manifest {
            stage: stage.to_string(),
            config,
            base_model: None,
            inputs,
            lincal_version: env!("CARGO_PKG_VERSION").to_string(),
            started: timestamp(),
            resumed: Vec::new(),
            finished: None,
            counts: BTreeMap::new(),
            outputs: Vec::new(),
            summary: serde_json::Map::new(),
        }
    }

    /// Reads `DIR/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        Self::read_at(
            &dir.join(MANIFEST_FILE),
            "remove the directory or choose another",
        )
    }

    /// Reads a manifest kept next to a single output file rather than in a stage directory.
    pub fn read_file(path: &Path) -> Result<Self> {
        Self::read_at(
            path,
            "remove it with the output it describes, or choose another output",
        )
    }

    fn read_at(path: &Path, advice: &str) -> Result<Self> {
        let text = fs::read_to_string(path).map_err(|source| DataError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| DataError::File {
            path: path.to_path_buf(),
            message: format!("not a stage manifest ({e}); {advice}"),
        })
    }

    /// Writes `DIR/manifest.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        self.write_file(&dir.join(MANIFEST_FILE))
    }

    /// Writes the manifest to `path` atomically.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        write_atomically(path, |out| {
            serde_json::to_writer_pretty(&mut *out, self).map_err(std::io::Error::from)?;
            out.write_all(b"\n")
        })
    }

    /// Whether this manifest is of the same stage with the same config, base model and input
    /// contents (where the inputs lie does not matter).
    pub fn same_run(&self, other: &Manifest) -> bool {
        self.stage == other.stage
            && self.config == other.config
            && self.base_model == other.base_model
            && self.inputs.len() == other.inputs.len()
            && self
                .inputs
                .iter()
                .zip(&other.inputs)
                .all(|(a, b)| a.sha256 == b.sha256)
    }

    /// What differs from `new`, in words, for a refusal message.
    pub fn difference(&self, new: &Manifest) -> String {
        if self.stage != new.stage {
            return format!("it holds a `{}` stage, not `{}`", self.stage, new.stage);
        }
        if let Some(change) = json_difference("", &self.config, &new.config) {
            return format!("its config differs: {change}");
        }
        if self.base_model != new.base_model {
            let name = |model: &Option<PathBuf>| {
                model
                    .as_ref()
                    .map_or("none".to_string(), |path| path.display().to_string())
            };
            return format!(
                "its base model was {}, now {}",
                name(&self.base_model),
                name(&new.base_model)
            );
        }
        if self.inputs.len() != new.inputs.len() {
            return format!(
                "it was made from {} input files, this run has {}",
                self.inputs.len(),
                new.inputs.len()
            );
        }
        for (old, now) in self.inputs.iter().zip(&new.inputs) {
            if old.sha256 != now.sha256 {
                return format!(
                    "input {} has changed (sha256 {} then, {} now)",
                    now.path.display(),
                    &old.sha256[..12.min(old.sha256.len())],
                    &now.sha256[..12]
                );
            }
        }
        "nothing differs".into()
    }
}

/// The first difference between two JSON values, as "`a.b` was X, now Y".
fn json_difference(at: &str, old: &Value, new: &Value) -> Option<String> {
    if old == new {
        return None;
    }
    if let (Value::Object(old), Value::Object(new)) = (old, new) {
        let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for key in keys {
            let path = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            let (a, b) = (
                old.get(key).unwrap_or(&Value::Null),
                new.get(key).unwrap_or(&Value::Null),
            );
            if let Some(change) = json_difference(&path, a, b) {
                return Some(change);
            }
        }
    }
    Some(format!("`{at}` was {old}, now {new}"))
}

/// Now, in RFC 3339 (UTC, whole seconds), as manifests record times.
pub fn timestamp() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// What [`open_stage`] found.
pub enum Opened {
    /// The directory holds this stage finished, with the same config and inputs: nothing to do.
    Finished(Manifest),
    /// The stage is to run, from the start or resumed.
    Run(StageRun),
}

/// Opens `dir` for stage `stage` with `config` and `inputs` (hashed here). See the module
/// documentation for what happens to a directory that already holds a stage.
pub fn open_stage(
    dir: &Path,
    stage: &str,
    config: &impl Serialize,
    inputs: &[&Path],
    force: bool,
) -> Result<Opened> {
    let config = serde_json::to_value(config)
        .map_err(|e| DataError::Invalid(format!("the `{stage}` config does not serialise: {e}")))?;
    let inputs = inputs
        .iter()
        .map(|path| InputFile::hash(path))
        .collect::<Result<Vec<_>>>()?;
    let mut manifest = Manifest::new(stage, config, inputs);
    let lock = OutputLock::dir(dir)?;
    let refuse = |message: String| DataError::File {
        path: dir.to_path_buf(),
        message,
    };
    let mut resuming = false;
    if dir.join(MANIFEST_FILE).exists() {
        let old = Manifest::read(dir)?;
        let state = if old.finished.is_some() {
            "a finished"
        } else {
            "an unfinished"
        };
        match (old.same_run(&manifest), old.finished.is_some(), force) {
            (true, true, false) => return Ok(Opened::Finished(old)),
            (true, false, false) => {
                manifest.started = old.started;
                manifest.resumed = old.resumed;
                manifest.resumed.push(timestamp());
                resuming = true;
            }
            (false, _, false) => {
                return Err(refuse(format!(
                    "holds {state} `{}` run that does not match this one: {}. Use --force to \
                     replace it (its response cache is kept), or choose another output directory",
                    old.stage,
                    old.difference(&manifest)
                )));
            }
            (_, _, true) => remove_stage_files(dir, &old)?,
        }
    } else if !force && holds_foreign_files(dir)? {
        return Err(refuse(
            "exists and holds files but no manifest.json, so it is not a stage directory; \
             choose a new or empty output directory (or --force to write into it anyway)"
                .into(),
        ));
    }
    fs::create_dir_all(dir).map_err(|source| DataError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    manifest.write(dir)?;
    // Failed items are tried again by a resumed run, so the failures of the new run start empty.
    let failures = open_append(&partial_path(&dir.join(FAILURES_FILE)), true)?;
    let metrics = open_append(&dir.join(METRICS_FILE), false)?;
    Ok(Opened::Run(StageRun {
        dir: dir.to_path_buf(),
        manifest,
        resuming,
        failures,
        metrics,
        outputs: Vec::new(),
        lock,
    }))
}

/// Whether `dir` exists and holds anything other than a response cache and the lock.
fn holds_foreign_files(dir: &Path) -> Result<bool> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(DataError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| DataError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(CACHE_FILE) && name != LOCK_FILE {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes what a stage wrote: its outputs, partial files, failures, metrics and manifest.
fn remove_stage_files(dir: &Path, old: &Manifest) -> Result<()> {
    let mut doomed: Vec<PathBuf> = old.outputs.iter().map(|name| dir.join(name)).collect();
    doomed.extend([FAILURES_FILE, METRICS_FILE, MANIFEST_FILE].map(|name| dir.join(name)));
    let entries = fs::read_dir(dir).map_err(|source| DataError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(PARTIAL_SUFFIX)
        {
            doomed.push(entry.path());
        }
    }
    for path in doomed {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataError::Write { path, source }),
        }
    }
    Ok(())
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(PARTIAL_SUFFIX);
    PathBuf::from(name)
}

fn open_append(path: &Path, truncate: bool) -> Result<File> {
    let mut options = OpenOptions::new();
    options.create(true);
    if truncate {
        options.write(true).truncate(true);
    } else {
        options.append(true);
    }
    options.open(path).map_err(|source| DataError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Appends `lines` (each one JSON value) and makes them durable before returning, so that what
/// a later resume reads back was really finished.
fn append_lines<T: Serialize>(file: &mut File, path: &Path, lines: &[T]) -> Result<()> {
    let mut buffer = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut buffer, line).map_err(|e| {
            DataError::Invalid(format!(
                "a record for {} does not serialise: {e}",
                path.display()
            ))
        })?;
        buffer.push(b'\n');
    }
    let write_error = |source| DataError::Write {
        path: path.to_path_buf(),
        source,
    };
    file.write_all(&buffer).map_err(write_error)?;
    file.sync_data().map_err(write_error)
}

/// An item that could not be produced, as written to `failures.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The item's id.
    pub id: String,
    /// Which step of the stage failed ("query", "forecast", ...).
    pub step: String,
    pub reason: String,
    /// The last unparseable answer, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_text: Option<String>,
    /// Calls made for it.
    pub attempts: u32,
}

/// A record of a stage output, identified by the id of the item it belongs to.
pub trait Keyed: Serialize + DeserializeOwned {
    fn key(&self) -> &str;
}

/// A stage that is running: it appends records, failures and metrics, and finally commits its
/// outputs and the finished manifest.
pub struct StageRun {
    dir: PathBuf,
    manifest: Manifest,
    resuming: bool,
    failures: File,
    metrics: File,
    outputs: Vec<String>,
    /// Released when the run ends, finished or not.
    lock: OutputLock,
}

impl StageRun {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock on the directory; it says whether it replaced one left by a dead process.
    pub fn lock(&self) -> &OutputLock {
        &self.lock
    }

    /// Whether this run takes up an interrupted one.
    pub fn is_resumed(&self) -> bool {
        self.resuming
    }

    /// Opens the record log of output `name` (a `.jsonl` file name), reading back the records an
    /// interrupted run finished.
    pub fn record_log<T: Keyed>(&self, name: &str) -> Result<RecordLog<T>> {
        RecordLog::open(&self.dir.join(name))
    }

    /// Writes the records of `log` to their final file in the order of `order` (the ids of the
    /// stage's input; records of other ids go last), removes the partial file and returns the
    /// records in that order.
    pub fn commit_records<T: Keyed>(
        &mut self,
        log: RecordLog<T>,
        order: &[&str],
    ) -> Result<Vec<T>> {
        let mut records = read_records::<T>(&log.partial)?.0;
        let position: HashMap<&str, usize> =
            order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        records.sort_by_key(|record| position.get(record.key()).copied().unwrap_or(usize::MAX));
        write_jsonl(&log.path, &records)?;
        fs::remove_file(&log.partial).map_err(|source| DataError::Write {
            path: log.partial.clone(),
            source,
        })?;
        self.add_output(&log.path);
        Ok(records)
    }

    /// Writes output `name` with `write`, which is given the final path and must write it
    /// atomically (the `schema` writers do).
    pub fn write_output(
        &mut self,
        name: &str,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let path = self.dir.join(name);
        write(&path)?;
        self.add_output(&path);
        Ok(())
    }

    fn add_output(&mut self, path: &Path) {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !self.outputs.contains(&name) {
            self.outputs.push(name);
        }
    }

    /// Records items that could not be produced.
    pub fn fail(&mut self, failures: &[Failure]) -> Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        let path = partial_path(&self.dir.join(FAILURES_FILE));
        append_lines(&mut self.failures, &path, failures)
    }

    /// Appends one line to `metrics.jsonl`.
    pub fn log_metrics(&mut self, line: &impl Serialize) -> Result<()> {
        let path = self.dir.join(METRICS_FILE);
        append_lines(&mut self.metrics, &path, std::slice::from_ref(line))
    }

    /// Commits the failures, then the finished manifest with `counts` and `summary`: the
    /// manifest is written last, so a stage counts as finished only once everything is there.
    pub fn finish(
        mut self,
        counts: BTreeMap<String, u64>,
        summary: serde_json::Map<String, Value>,
    ) -> Result<Manifest> {
        let failures = self.dir.join(FAILURES_FILE);
        fs::rename(partial_path(&failures), &failures).map_err(|source| DataError::Write {
            path: failures.clone(),
            source,
        })?;
        self.add_output(&failures);
        self.add_output(&self.dir.join(METRICS_FILE));
        self.manifest.finished = Some(timestamp());
        self.manifest.counts = counts;
        self.manifest.outputs = self.outputs;
        self.manifest.summary = summary;
        self.manifest.write(&self.dir)?;
        Ok(self.manifest)
    }
}

/// The records of one output, appended as they are produced (see the module documentation).
pub struct RecordLog<T> {
    path: PathBuf,
    partial: PathBuf,
    file: File,
    done: HashSet<String>,
    _records: PhantomData<T>,
}

impl<T: Keyed> RecordLog<T> {
    fn open(path: &Path) -> Result<Self> {
        let partial = partial_path(path);
        // Killed after the output was renamed but before the manifest said finished: the
        // finished records are in the final file.
        if !partial.exists() && path.exists() {
            fs::rename(path, &partial).map_err(|source| DataError::Write {
                path: partial.clone(),
                source,
            })?;
        }
        let done = if partial.exists() {
            let (records, intact_bytes) = read_records::<T>(&partial)?;
            // Cut a torn last line so that the next record starts on a line of its own.
            let file = OpenOptions::new()
                .write(true)
                .open(&partial)
                .map_err(|source| DataError::Write {
                    path: partial.clone(),
                    source,
                })?;
            file.set_len(intact_bytes)
                .map_err(|source| DataError::Write {
                    path: partial.clone(),
                    source,
                })?;
            records
                .iter()
                .map(|record| record.key().to_string())
                .collect()
        } else {
            HashSet::new()
        };
        let file = open_append(&partial, false)?;
        Ok(RecordLog {
            path: path.to_path_buf(),
            partial,
            file,
            done,
            _records: PhantomData,
        })
    }

    /// Whether the item `id` already has its record.
    pub fn is_done(&self, id: &str) -> bool {
        self.done.contains(id)
    }

    /// How many items have their record.
    pub fn done_count(&self) -> usize {
        self.done.len()
    }

    /// Appends records and makes them durable.
    pub fn append(&mut self, records: &[T]) -> Result<()> {
        append_lines(&mut self.file, &self.partial, records)?;
        self.done
            .extend(records.iter().map(|record| record.key().to_string()));
        Ok(())
    }
}

/// Reads the records of a partial file and the length of its intact part: a last line without
/// its newline was torn by a kill and is dropped; any other bad line is an error naming it. A
/// record whose id came before is dropped too.
fn read_records<T: Keyed>(path: &Path) -> Result<(Vec<T>, u64)> {
    let bytes = fs::read(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let intact = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut records: Vec<T> = Vec::new();
    let mut seen = HashSet::new();
    for (index, line) in bytes[..intact].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: T = serde_json::from_slice(line).map_err(|e| DataError::Row {
            path: path.to_path_buf(),
            line: index + 1,
            message: format!(
                "not a valid record ({e}); the file is damaged: \
                 delete it to produce its items again"
            ),
        })?;
        if seen.insert(record.key().to_string()) {
            records.push(record);
        }
    }
    Ok((records, intact as u64))
}
