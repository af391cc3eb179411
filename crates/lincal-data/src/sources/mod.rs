//! Offline question sources: QA pairs with gold answers and knowledge text for biography
//! evaluation, built from packages on PyPI and Debian (nothing is vendored; Red-Trivia is GPLv3
//! and is only ever fetched). [`fetch`] downloads a pinned artifact and checks its sha256;
//! [`build`] turns it into the QA JSONL format (`{"id", "question", "answer", "aliases",
//! "source"}`) or the knowledge JSONL format (`{"id", "title", "text"}`).

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::path::Path;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::schema::jsonl::{check_unique_ids, read_jsonl, write_jsonl};
use crate::schema::{HasQuestionId, Tally};
use crate::{DataError, Result};

mod bigbench;
mod fanoutqa;
mod fetch;
mod red_trivia;
mod wordnet;

pub use fetch::{Artifact, Progress, fetch_artifact};
pub use red_trivia::GENERAL_KNOWLEDGE_LISTS;

/// A question with its gold answer: a line of the QA JSONL format. `aliases` lists every
/// accepted answer, `answer` first; files written by hand may leave out `aliases` and `source`,
/// and [`read_qa_jsonl`] puts the answer first among the aliases whatever the file says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaRecord {
    pub id: String,
    pub question: String,
    pub answer: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub source: String,
}

impl QaRecord {
    /// Rejects a record without an id, a question or an answer.
    fn check(&self) -> std::result::Result<(), String> {
        if self.id.trim().is_empty() {
            Err("the record has an empty `id`".into())
        } else if self.question.trim().is_empty() || self.answer.trim().is_empty() {
            Err(format!(
                "record {} needs a non-empty question and answer",
                self.id
            ))
        } else {
            Ok(())
        }
    }

    /// The gold answer, then each listed alias once.
    fn normalise_aliases(&mut self) {
        let listed = std::mem::take(&mut self.aliases);
        self.aliases.push(self.answer.clone());
        for alias in listed {
            if !self.aliases.contains(&alias) {
                self.aliases.push(alias);
            }
        }
    }
}

impl HasQuestionId for QaRecord {
    fn question_id(&self) -> &str {
        &self.id
    }
}

impl AsRef<QaRecord> for QaRecord {
    fn as_ref(&self) -> &QaRecord {
        self
    }
}

impl AsMut<QaRecord> for QaRecord {
    fn as_mut(&mut self) -> &mut QaRecord {
        self
    }
}

/// A passage of knowledge text about one named entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnowledgeRecord {
    pub id: String,
    pub title: String,
    pub text: String,
}

/// The sources that can be fetched and built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Single-hop sub-questions of FanOutQA's dev set (PyPI `fanoutqa==1.1.1`, CC BY-SA 4.0).
    FanoutQa,
    /// General-knowledge trivia of Red-DiscordBot (PyPI `Red-Trivia==1.1.1`, GPLv3).
    RedTrivia,
    /// Natural Questions with their original answers, from BIG-bench's
    /// `contextual_parametric_knowledge_conflicts` (PyPI `bigbench==1.0.0`, Apache-2.0).
    BigBenchNaturalQuestions,
    /// Cloze prompts from Wikidata triples, BIG-bench's `qa_wikidata` (CC0).
    BigBenchQaWikidata,
    /// Named people of WordNet 3.0 with their one-line glosses (Debian `wordnet-base`), the
    /// knowledge source for biography evaluation.
    WordNetPeople,
}

/// What [`build`] writes for a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Qa,
    Knowledge,
}

impl Source {
    pub const ALL: [Source; 5] = [
        Source::FanoutQa,
        Source::RedTrivia,
        Source::BigBenchNaturalQuestions,
        Source::BigBenchQaWikidata,
        Source::WordNetPeople,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Source::FanoutQa => "fanoutqa",
            Source::RedTrivia => "red-trivia",
            Source::BigBenchNaturalQuestions => "bigbench-nq",
            Source::BigBenchQaWikidata => "bigbench-qa-wikidata",
            Source::WordNetPeople => "wordnet-people",
        }
    }

    /// The pinned package the source is built from (the two BIG-bench sources share one).
    pub fn artifact(self) -> &'static Artifact<'static> {
        match self {
            Source::FanoutQa => &fetch::FANOUTQA_WHEEL,
            Source::RedTrivia => &fetch::RED_TRIVIA_SDIST,
            Source::BigBenchNaturalQuestions | Source::BigBenchQaWikidata => &fetch::BIGBENCH_SDIST,
            Source::WordNetPeople => &fetch::WORDNET_DEB,
        }
    }

    pub fn output(self) -> Output {
        match self {
            Source::WordNetPeople => Output::Knowledge,
            _ => Output::Qa,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Source {
    type Err = DataError;

    fn from_str(name: &str) -> Result<Self> {
        Source::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Source::ALL.iter().map(|s| s.name()).collect();
                DataError::Invalid(format!(
                    "unknown question source {name:?}; known sources: {}",
                    known.join(", ")
                ))
            })
    }
}

/// Downloads the artifact of `source` into `cache_dir` (once: a file there with the pinned hash
/// is used as it is) and returns its path.
pub fn fetch(
    source: Source,
    cache_dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<std::path::PathBuf> {
    fetch_artifact(source.artifact(), cache_dir, progress)
}

/// Builds the JSONL of `source` from its fetched artifact at `raw_path`, atomically, and says
/// how many records were kept and what was skipped why.
pub fn build(source: Source, raw_path: &Path, out_jsonl: &Path) -> Result<Tally> {
    match source {
        Source::FanoutQa => build_qa(source, out_jsonl, |q| fanoutqa::collect(raw_path, q)),
        Source::RedTrivia => build_qa(source, out_jsonl, |q| red_trivia::collect(raw_path, q)),
        Source::BigBenchNaturalQuestions => build_qa(source, out_jsonl, |q| {
            bigbench::collect_natural_questions(raw_path, q)
        }),
        Source::BigBenchQaWikidata => build_qa(source, out_jsonl, |q| {
            bigbench::collect_qa_wikidata(raw_path, q)
        }),
        Source::WordNetPeople => {
            let (people, tally) = wordnet::named_people(raw_path)?;
            write_jsonl(out_jsonl, &people)?;
            Ok(tally)
        }
    }
}

fn build_qa(
    source: Source,
    out_jsonl: &Path,
    collect: impl FnOnce(&mut QaCollector) -> Result<()>,
) -> Result<Tally> {
    let mut questions = QaCollector::new(source);
    collect(&mut questions)?;
    write_jsonl(out_jsonl, &questions.records)?;
    Ok(questions.tally)
}

/// Reads a QA JSONL file written by [`build`] (or by hand in the same format): every record
/// has an id, a question and an answer, ids are unique, and the aliases are the gold answer
/// followed by the listed ones.
pub fn read_qa_jsonl(path: &Path) -> Result<Vec<QaRecord>> {
    read_qa_records(path, |_: &QaRecord| Ok(()))
}

/// [`read_qa_jsonl`] for lines that carry fields of their own beside the [`QaRecord`] (a type
/// that flattens one); `check` adds the caller's rules about those fields.
pub fn read_qa_records<T>(
    path: &Path,
    check: impl Fn(&T) -> std::result::Result<(), String>,
) -> Result<Vec<T>>
where
    T: DeserializeOwned + AsRef<QaRecord> + AsMut<QaRecord>,
{
    let mut records = read_jsonl(path, |record: &T| {
        record.as_ref().check()?;
        check(record)
    })?;
    for record in &mut records {
        record.as_mut().normalise_aliases();
    }
    check_unique_ids(path, records.iter().map(|r| r.as_ref().id.as_str()))?;
    Ok(records)
}

/// Reads a knowledge JSONL file written by [`build`].
pub fn read_knowledge_jsonl(path: &Path) -> Result<Vec<KnowledgeRecord>> {
    read_jsonl(path, |_: &KnowledgeRecord| Ok(()))
}

/// A stable id from content, for sources whose questions have none: the same question gets the
/// same id whatever the order or the other questions of the file.
fn content_id(prefix: &str, text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// Collects QA records in first-seen order, merging a repeated id into its first record (its
/// answers join the aliases) and counting what is skipped.
struct QaCollector {
    source: Source,
    records: Vec<QaRecord>,
    index_of: HashMap<String, usize>,
    tally: Tally,
}

const DUPLICATE_MERGED: &str = "duplicate question (answers merged into the first)";

impl QaCollector {
    fn new(source: Source) -> Self {
        QaCollector {
            source,
            records: Vec::new(),
            index_of: HashMap::new(),
            tally: Tally::default(),
        }
    }

    fn skip(&mut self, reason: &'static str) {
        self.tally.skip(reason);
    }

    /// Adds a question; `answers` are the accepted answers, the preferred one first. Blank
    /// answers are dropped and the rest trimmed and de-duplicated.
    fn add(&mut self, id: String, question: &str, answers: Vec<String>) {
        let question = question.trim();
        if question.is_empty() {
            self.tally.skip("empty question");
            return;
        }
        let mut aliases: Vec<String> = Vec::new();
        for answer in answers {
            let answer = answer.trim();
            if !answer.is_empty() && !aliases.iter().any(|a| a == answer) {
                aliases.push(answer.to_string());
            }
        }
        if aliases.is_empty() {
            self.tally.skip("no answer");
            return;
        }
        if let Some(&index) = self.index_of.get(&id) {
            let existing = &mut self.records[index].aliases;
            for alias in aliases {
                if !existing.contains(&alias) {
                    existing.push(alias);
                }
            }
            self.tally.skip(DUPLICATE_MERGED);
            return;
        }
        self.index_of.insert(id.clone(), self.records.len());
        self.records.push(QaRecord {
            id,
            question: question.to_string(),
            answer: aliases[0].clone(),
            aliases,
            source: self.source.name().to_string(),
        });
        self.tally.keep();
    }
}

/// Reads members of a `.tar.gz` by streaming through the archive (nothing is extracted to
/// disk). `wanted` picks members by their path inside the archive; `each` receives their text
/// and says whether to go on reading.
fn for_each_tar_gz_member(
    archive_path: &Path,
    wanted: &dyn Fn(&str) -> bool,
    each: &mut dyn FnMut(&str, String) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let file = std::fs::File::open(archive_path).map_err(|source| DataError::Read {
        path: archive_path.to_path_buf(),
        source,
    })?;
    let decoder = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    read_tar_members(archive_path, decoder, wanted, each)
}

/// Iterates a tar stream, handing the text of the wanted members to `each`.
fn read_tar_members(
    archive_path: &Path,
    stream: impl std::io::Read,
    wanted: &dyn Fn(&str) -> bool,
    each: &mut dyn FnMut(&str, String) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let broken = |e: std::io::Error| DataError::File {
        path: archive_path.to_path_buf(),
        message: format!(
            "cannot read the archive: {e}; delete the file so that it is fetched again"
        ),
    };
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        let member = entry.path().map_err(broken)?.to_string_lossy().into_owned();
        if wanted(&member) {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).map_err(|e| DataError::File {
                path: archive_path.to_path_buf(),
                message: format!("cannot read member {member} as UTF-8 text: {e}"),
            })?;
            if each(&member, text)?.is_break() {
                break;
            }
        }
    }
    Ok(())
}

/// An error about a member of an archive, reported as `archive!member:line: ...`.
fn member_error(
    archive_path: &Path,
    member: &str,
    line: usize,
    message: impl Into<String>,
) -> DataError {
    DataError::Row {
        path: std::path::PathBuf::from(format!("{}!{member}", archive_path.display())),
        line,
        message: message.into(),
    }
}
