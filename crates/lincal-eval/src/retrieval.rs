//! BM25 retrieval over a knowledge source, for checking biography claims (SPEC 5.3 step 4).
//!
//! The source is JSONL, one page a line: `{"id": "...", "title": "...", "text": "..."}`
//! (other fields are ignored). The offline default is WordNet's named people, one short
//! gloss per person; a user may give Wikipedia-like pages. Each page is split into passages of
//! at most [`PASSAGE_WORDS`] whitespace-separated words, windows that do not overlap, each
//! keeping the page's title. Pages with empty text are skipped and counted.
//!
//! The index is tantivy's BM25 over the passage text and title, tokenised into lower-case
//! ASCII-folded words without English stop words, stemmed. It lives in a directory beside the
//! source (`<source>.index`) or one of the caller's choosing, and is rebuilt only when the
//! source changed: same size and modification time, it is reused at once; otherwise the
//! source's SHA-256 decides (a touched but unchanged file keeps its index).
//!
//! [`KnowledgeIndex::search`] follows FactScore, which retrieves from the entity's own page:
//! when passages exist whose title is the entity (compared case-insensitively, with runs of
//! spaces and underscores as one space), only those are ranked; otherwise the whole source
//! is. The query is the entity and the claim together. [`KnowledgeIndex::search_all`] never
//! restricts.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    StopWordFilter, TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::EvalError;
use crate::files::{read_json, temporary_beside, write_json};

/// Longest passage, in whitespace-separated words (FactScore used 256 RoBERTa tokens).
pub const PASSAGE_WORDS: usize = 256;

/// Changes whenever the schema, tokenisation or passage split change, so old indexes rebuild.
const INDEX_FORMAT: u32 = 1;
/// Inside the index directory: what the index was built from.
const FINGERPRINT_FILE: &str = "lincal-source.json";
const TOKENIZER: &str = "lincal_english";
/// tantivy's indexing memory budget: enough for one thread to write large segments.
const WRITER_MEMORY: usize = 200_000_000;

/// A retrieved passage, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    /// `<page id>#<n>`, n counting the page's passages from 1.
    pub id: String,
    pub title: String,
    pub text: String,
    /// BM25 score of the claim's words (and the entity's, outside a restricted search).
    pub score: f32,
}

/// Where the index is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexLocation {
    /// `<source file name>.index` in the source's directory.
    BesideSource,
    /// A directory of the caller's choosing (say, when the source's directory is read-only).
    Dir(PathBuf),
    /// In memory, built on every open; fine for small sources such as WordNet's people.
    Memory,
}

/// What [`KnowledgeIndex::open`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexStatus {
    /// Built from the source now: no index yet, in memory, or the source's content changed.
    Built,
    /// Reused: the source has the size and modification time it was indexed with.
    Reused,
    /// Reused after hashing: size or time changed, the content did not.
    ReusedAfterHash,
}

/// What the source held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SourceSummary {
    pub pages: usize,
    pub passages: usize,
    /// Pages with empty text, left out.
    pub empty_pages: usize,
}

/// The source as it was when indexed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Fingerprint {
    format: u32,
    size: u64,
    modified_ns: u64,
    sha256: String,
    summary: SourceSummary,
}

#[derive(Debug, Clone, Copy)]
struct Fields {
    id: Field,
    title: Field,
    /// The normalised title as one untokenised term, for restricting a search to a page.
    title_key: Field,
    text: Field,
}

/// A BM25 index of a knowledge source.
pub struct KnowledgeIndex {
    source: PathBuf,
    fields: Fields,
    analyzer: TextAnalyzer,
    reader: IndexReader,
    status: IndexStatus,
    summary: SourceSummary,
}

/// The page fields read from each line.
#[derive(Deserialize)]
struct Page {
    id: String,
    title: String,
    text: String,
}

impl KnowledgeIndex {
    /// Opens the index of `source` at `location`, building it first when it is missing or the
    /// source changed. A malformed line fails with `<file>:<line>: <what is wrong>`.
    pub fn open(source: impl AsRef<Path>, location: IndexLocation) -> Result<Self, EvalError> {
        let source = source.as_ref();
        let dir = match location {
            IndexLocation::Memory => {
                let index = Index::create_in_ram(schema());
                let fingerprint = fill(&index, source, stat(source)?)?;
                return Self::with_index(source, &index, IndexStatus::Built, fingerprint.summary);
            }
            IndexLocation::BesideSource => {
                let mut name = source.as_os_str().to_owned();
                name.push(".index");
                PathBuf::from(name)
            }
            IndexLocation::Dir(dir) => dir,
        };
        let (size, modified_ns) = stat(source)?;
        let index_error = |e: tantivy::TantivyError| EvalError::Index {
            path: dir.clone(),
            message: format!("{e}; delete the directory to rebuild the index"),
        };
        let fingerprint_path = dir.join(FINGERPRINT_FILE);
        if let Ok(old) = read_json::<Fingerprint>(&fingerprint_path)
            && old.format == INDEX_FORMAT
        {
            let status = if (old.size, old.modified_ns) == (size, modified_ns) {
                Some(IndexStatus::Reused)
            } else if hash_file(source)? == old.sha256 {
                write_json(
                    &fingerprint_path,
                    &Fingerprint {
                        size,
                        modified_ns,
                        ..old.clone()
                    },
                )?;
                Some(IndexStatus::ReusedAfterHash)
            } else {
                None
            };
            if let Some(status) = status {
                let index = Index::open_in_dir(&dir).map_err(index_error)?;
                return Self::with_index(source, &index, status, old.summary);
            }
        }
        let summary = build_in_dir(source, &dir, (size, modified_ns))?;
        let index = Index::open_in_dir(&dir).map_err(index_error)?;
        Self::with_index(source, &index, IndexStatus::Built, summary)
    }

    fn with_index(
        source: &Path,
        index: &Index,
        status: IndexStatus,
        summary: SourceSummary,
    ) -> Result<Self, EvalError> {
        let index_error = |message: String| EvalError::Index {
            path: source.to_path_buf(),
            message,
        };
        index.tokenizers().register(TOKENIZER, analyzer());
        let fields = fields_of(&index.schema())
            .map_err(|e| index_error(format!("not an index of this lincal version: {e}")))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| index_error(format!("cannot open a reader: {e}")))?;
        Ok(Self {
            source: source.to_path_buf(),
            fields,
            analyzer: analyzer(),
            reader,
            status,
            summary,
        })
    }

    pub fn status(&self) -> IndexStatus {
        self.status
    }

    pub fn summary(&self) -> SourceSummary {
        self.summary
    }

    /// The `k` passages that best match `entity` and `claim` together, from the entity's own
    /// page when the source has one (see the module documentation), else from all pages.
    pub fn search(&self, entity: &str, claim: &str, k: usize) -> Result<Vec<Passage>, EvalError> {
        let query_text = format!("{entity} {claim}");
        let page = Term::from_field_text(self.fields.title_key, &title_key(entity));
        let searcher = self.reader.searcher();
        let has_page = searcher.doc_freq(&page).map_err(|e| self.search_error(e))? > 0;
        if !has_page {
            return self.search_all(&query_text, k);
        }
        // The page filter scores 0, so scores are BM25 of the query's words alone; with no
        // usable words every passage of the page scores 0 and they come in page order.
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(
            Occur::Must,
            Box::new(ConstScoreQuery::new(
                Box::new(TermQuery::new(page, IndexRecordOption::Basic)),
                0.0,
            )),
        )];
        clauses.extend(
            self.word_clauses(&query_text)
                .into_iter()
                .map(|q| (Occur::Should, q)),
        );
        self.run(&BooleanQuery::new(clauses), k)
    }

    /// The `k` passages of the whole source that best match `query`, unrestricted. A query
    /// with no searchable words (only stop words or punctuation) finds nothing.
    pub fn search_all(&self, query: &str, k: usize) -> Result<Vec<Passage>, EvalError> {
        let clauses: Vec<_> = self
            .word_clauses(query)
            .into_iter()
            .map(|q| (Occur::Should, q))
            .collect();
        if clauses.is_empty() {
            return Ok(Vec::new());
        }
        self.run(&BooleanQuery::new(clauses), k)
    }

    /// One term query per distinct word of `text`, in the title and in the text. Built from
    /// the analyser directly rather than tantivy's query parser, so that a claim's quotes,
    /// colons or dashes are words, never query syntax.
    fn word_clauses(&self, text: &str) -> Vec<Box<dyn Query>> {
        let mut analyzer = self.analyzer.clone();
        let mut stream = analyzer.token_stream(text);
        let mut words: Vec<String> = Vec::new();
        while stream.advance() {
            let word = &stream.token().text;
            if !words.contains(word) {
                words.push(word.clone());
            }
        }
        let mut clauses: Vec<Box<dyn Query>> = Vec::new();
        for word in &words {
            for field in [self.fields.title, self.fields.text] {
                clauses.push(Box::new(TermQuery::new(
                    Term::from_field_text(field, word),
                    IndexRecordOption::WithFreqs,
                )));
            }
        }
        clauses
    }

    fn run(&self, query: &dyn Query, k: usize) -> Result<Vec<Passage>, EvalError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let hits = searcher
            .search(query, &TopDocs::with_limit(k).order_by_score())
            .map_err(|e| self.search_error(e))?;
        hits.into_iter()
            .map(|(score, address)| {
                let doc: TantivyDocument =
                    searcher.doc(address).map_err(|e| self.search_error(e))?;
                let text_of = |field| {
                    doc.get_first(field)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                Ok(Passage {
                    id: text_of(self.fields.id),
                    title: text_of(self.fields.title),
                    text: text_of(self.fields.text),
                    score,
                })
            })
            .collect()
    }

    fn search_error(&self, e: tantivy::TantivyError) -> EvalError {
        EvalError::Index {
            path: self.source.clone(),
            message: format!("search failed: {e}"),
        }
    }
}

/// Lower-case words, ASCII-folded (so "Gödel" finds "Godel"), English stop words out, stemmed.
fn analyzer() -> TextAnalyzer {
    let builder = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter);
    match StopWordFilter::new(Language::English) {
        Some(stop_words) => builder
            .filter(stop_words)
            .filter(Stemmer::new(Language::English))
            .build(),
        None => builder.filter(Stemmer::new(Language::English)).build(),
    }
}

fn schema() -> Schema {
    let words = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqs),
        )
        .set_stored();
    let mut builder = Schema::builder();
    builder.add_text_field("id", STORED);
    builder.add_text_field("title", words.clone());
    builder.add_text_field("title_key", STRING);
    builder.add_text_field("text", words);
    builder.build()
}

fn fields_of(schema: &Schema) -> tantivy::Result<Fields> {
    Ok(Fields {
        id: schema.get_field("id")?,
        title: schema.get_field("title")?,
        title_key: schema.get_field("title_key")?,
        text: schema.get_field("text")?,
    })
}

/// A title or entity as compared for page restriction: lower case, words separated by one
/// space (underscores count as spaces, as in Wikipedia's page names).
fn title_key(title: &str) -> String {
    title
        .to_lowercase()
        .split(|c: char| c.is_whitespace() || c == '_')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits `text` into runs of at most `PASSAGE_WORDS` whitespace-separated words, each a slice
/// of the original text (line breaks inside a passage are kept).
fn split_passages(text: &str) -> Vec<&str> {
    let mut words: Vec<(usize, usize)> = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                words.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        words.push((s, text.len()));
    }
    words
        .chunks(PASSAGE_WORDS)
        .map(|chunk| &text[chunk[0].0..chunk[chunk.len() - 1].1])
        .collect()
}

/// Size and modification time (ns since 1970) of `source`.
fn stat(source: &Path) -> Result<(u64, u64), EvalError> {
    let read_error = |source_error| EvalError::Read {
        path: source.to_path_buf(),
        source: source_error,
    };
    let meta = std::fs::metadata(source).map_err(read_error)?;
    let modified = meta.modified().map_err(read_error)?;
    let modified_ns = modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Ok((meta.len(), modified_ns))
}

fn hash_file(path: &Path) -> Result<String, EvalError> {
    let read_error = |source| EvalError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(read_error)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Builds the index in a temporary directory beside `dir` and then moves it into place, so
/// `dir` only ever holds a complete index. An existing `dir` is replaced only when it is one
/// of ours (it has the fingerprint file), so a mistyped path never deletes someone's folder.
fn build_in_dir(source: &Path, dir: &Path, stat: (u64, u64)) -> Result<SourceSummary, EvalError> {
    let dir_error = |message: String| EvalError::Index {
        path: dir.to_path_buf(),
        message,
    };
    if dir.exists() && !dir.join(FINGERPRINT_FILE).exists() {
        return Err(dir_error(format!(
            "exists but is not a lincal index (no {FINGERPRINT_FILE}); choose another index \
             directory or remove this one"
        )));
    }
    let temporary = temporary_beside(dir);
    let io_error = |what: &str, e: std::io::Error| dir_error(format!("cannot {what}: {e}"));
    if temporary.exists() {
        std::fs::remove_dir_all(&temporary)
            .map_err(|e| io_error("remove a leftover temporary index", e))?;
    }
    std::fs::create_dir_all(&temporary).map_err(|e| {
        io_error(
            "create the index directory (pass IndexLocation::Dir with a writable one)",
            e,
        )
    })?;
    let built = (|| {
        let index = Index::create_in_dir(&temporary, schema())
            .map_err(|e| dir_error(format!("cannot create the index: {e}")))?;
        let fingerprint = fill(&index, source, stat)?;
        write_json(&temporary.join(FINGERPRINT_FILE), &fingerprint)?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io_error("remove the old index", e))?;
        }
        std::fs::rename(&temporary, dir).map_err(|e| io_error("move the new index in place", e))?;
        Ok(fingerprint.summary)
    })();
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&temporary);
    }
    built
}

/// Reads every page of `source` into `index` (hashing the bytes on the way) and commits.
fn fill(
    index: &Index,
    source: &Path,
    (size, modified_ns): (u64, u64),
) -> Result<Fingerprint, EvalError> {
    let index_error = |e: tantivy::TantivyError| EvalError::Index {
        path: source.to_path_buf(),
        message: format!("indexing failed: {e}"),
    };
    index.tokenizers().register(TOKENIZER, analyzer());
    let fields = fields_of(&index.schema()).map_err(index_error)?;
    // One thread: documents get the same order, and ties the same ranking, on every build.
    let mut writer: IndexWriter = index
        .writer_with_num_threads(1, WRITER_MEMORY)
        .map_err(index_error)?;
    let read_error = |e| EvalError::Read {
        path: source.to_path_buf(),
        source: e,
    };
    let mut reader = BufReader::new(File::open(source).map_err(read_error)?);
    let mut hasher = Sha256::new();
    let mut summary = SourceSummary::default();
    let mut bytes = Vec::new();
    for line_number in 1.. {
        bytes.clear();
        if reader.read_until(b'\n', &mut bytes).map_err(read_error)? == 0 {
            break;
        }
        hasher.update(&bytes);
        let line_error = |message: String| EvalError::Line {
            path: source.to_path_buf(),
            line: line_number,
            message,
        };
        let line =
            std::str::from_utf8(&bytes).map_err(|e| line_error(format!("not UTF-8 text ({e})")))?;
        if line.trim().is_empty() {
            continue;
        }
        let page: Page = serde_json::from_str(line).map_err(|e| {
            line_error(format!(
                "{e}; each line must be one object such as \
                 {{\"id\": \"p1\", \"title\": \"Ada Lovelace\", \"text\": \"...\"}}"
            ))
        })?;
        if page.title.trim().is_empty() {
            return Err(line_error(
                "field `title` is empty; every page needs the name of its entity".into(),
            ));
        }
        summary.pages += 1;
        let passages = split_passages(&page.text);
        if passages.is_empty() {
            summary.empty_pages += 1;
        }
        for (n, passage) in passages.into_iter().enumerate() {
            let mut doc = TantivyDocument::default();
            doc.add_text(fields.id, format!("{}#{}", page.id, n + 1));
            doc.add_text(fields.title, &page.title);
            doc.add_text(fields.title_key, title_key(&page.title));
            doc.add_text(fields.text, passage);
            writer.add_document(doc).map_err(index_error)?;
            summary.passages += 1;
        }
    }
    writer.commit().map_err(index_error)?;
    writer.wait_merging_threads().map_err(index_error)?;
    Ok(Fingerprint {
        format: INDEX_FORMAT,
        size,
        modified_ns,
        sha256: format!("{:x}", hasher.finalize()),
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_keep_the_text_between_words_and_hold_at_most_256_words() {
        assert_eq!(split_passages("  one\ntwo  three "), ["one\ntwo  three"]);
        assert!(split_passages(" \n ").is_empty());
        let words: Vec<String> = (0..600).map(|i| format!("w{i}")).collect();
        let text = words.join(" ");
        let passages = split_passages(&text);
        assert_eq!(passages.len(), 3);
        assert_eq!(passages[0].split(' ').count(), 256);
        assert!(passages[1].starts_with("w256 ") && passages[1].ends_with(" w511"));
        assert_eq!(passages[2].split(' ').count(), 600 - 512);
    }

    #[test]
    fn title_keys_ignore_case_spacing_and_underscores() {
        assert_eq!(title_key("  Albert_Einstein "), "albert einstein");
        assert_eq!(
            title_key("Francisco  Urroz (footballer)"),
            "francisco urroz (footballer)"
        );
    }
}
