//! BM25 retrieval on a small knowledge source: ranking, the entity restriction, index reuse
//! and rebuild, and errors that name the file and line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use lincal_eval::{EvalError, IndexLocation, IndexStatus, KnowledgeIndex, SourceSummary};

const PEOPLE: &str = concat!(
    r#"{"id": "w1", "title": "Ada Lovelace", "text": "English mathematician who wrote about "#,
    r#"Charles Babbage's analytical engine; often called the first computer programmer."}"#,
    "\n",
    r#"{"id": "w2", "title": "Charles Babbage", "text": "English mathematician who designed the "#,
    r#"difference engine and the analytical engine."}"#,
    "\n",
    r#"{"id": "w3", "title": "Marie Curie", "text": "French chemist born in Warsaw who "#,
    r#"discovered radium and polonium."}"#,
    "\n",
    r#"{"id": "w4", "title": "Pierre Curie", "text": "French physicist who shared the Nobel "#,
    r#"Prize in physics with his wife for research on radioactivity.", "url": "ignored"}"#,
    "\n",
    r#"{"id": "w5", "title": "Grace Hopper", "text": "United States computer scientist and naval "#,
    r#"officer who wrote the first compiler."}"#,
    "\n",
    "\n",
    r#"{"id": "w6", "title": "Nobody", "text": "  "}"#,
    "\n",
);

#[test]
fn an_index_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<KnowledgeIndex>();
}

fn source_with(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("people.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn ids(passages: &[lincal_eval::Passage]) -> Vec<&str> {
    passages.iter().map(|p| p.id.as_str()).collect()
}

#[test]
fn rare_shared_words_rank_their_passage_first() {
    let dir = tempfile::tempdir().unwrap();
    let index =
        KnowledgeIndex::open(source_with(dir.path(), PEOPLE), IndexLocation::Memory).unwrap();
    assert_eq!(
        index.summary(),
        SourceSummary {
            pages: 6,
            passages: 5,
            empty_pages: 1
        }
    );
    let hits = index.search_all("Who discovered polonium?", 3).unwrap();
    assert_eq!(hits[0].id, "w3#1");
    assert_eq!(hits[0].title, "Marie Curie");
    assert_eq!(
        hits[0].text,
        "French chemist born in Warsaw who discovered radium and polonium."
    );
    // "who" is in every passage, so three come back; the rare words decide the first.
    assert_eq!(hits.len(), 3);
    assert!(hits[0].score > hits[1].score);
    // Only Marie Curie's passage has "discovered" or "polonium".
    assert_eq!(
        ids(&index.search_all("discovered polonium", 5).unwrap()),
        ["w3#1"]
    );

    // Stemming: "engines" and "designing" find the passage with "engine" and "designed".
    let hits = index.search_all("designing difference engines", 5).unwrap();
    assert_eq!(hits[0].id, "w2#1");
    // Query syntax is just words: quotes, colons, minus signs and AND do not break the query.
    let hits = index
        .search_all("title:\"Grace\" AND -(compiler) [naval", 1)
        .unwrap();
    assert_eq!(ids(&hits), ["w5#1"]);
    assert!(index.search_all("the of and", 5).unwrap().is_empty());
    assert!(index.search_all("polonium", 0).unwrap().is_empty());
}

#[test]
fn search_keeps_to_the_entitys_page_when_there_is_one() {
    let dir = tempfile::tempdir().unwrap();
    let index =
        KnowledgeIndex::open(source_with(dir.path(), PEOPLE), IndexLocation::Memory).unwrap();
    // Marie Curie's page matches this claim best, but the entity is Pierre Curie.
    let hits = index
        .search("pierre  curie", "He discovered radium and polonium.", 5)
        .unwrap();
    assert_eq!(ids(&hits), ["w4#1"]);
    let hits = index
        .search("Marie_Curie", "She discovered radium.", 5)
        .unwrap();
    assert_eq!(ids(&hits), ["w3#1"]);
    // No page titled with the entity: the whole source is searched, entity words included
    // ("ada" and "wrote" put Ada Lovelace before Charles Babbage; Grace Hopper "wrote" too).
    let hits = index
        .search(
            "Augusta Ada King",
            "She wrote about the analytical engine.",
            5,
        )
        .unwrap();
    assert_eq!(ids(&hits), ["w1#1", "w2#1", "w5#1"]);
}

#[test]
fn long_pages_are_split_and_ranked_within_the_page() {
    let filler = |from: usize| -> String {
        (from..from + 256)
            .map(|i| format!("word{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let text = format!("{} {} {} zeppelin", filler(0), filler(1000), filler(2000));
    let page = serde_json::json!({"id": "long", "title": "Long Page", "text": text});
    let dir = tempfile::tempdir().unwrap();
    let source = source_with(dir.path(), &format!("{PEOPLE}{page}\n"));
    let index = KnowledgeIndex::open(source, IndexLocation::Memory).unwrap();
    assert_eq!(index.summary().passages, 5 + 4);
    let hits = index.search("Long Page", "flew a zeppelin", 10).unwrap();
    // Four passages of the page: 256, 256, 256 and 1 words; "zeppelin" is the 769th word.
    assert_eq!(hits.len(), 4);
    assert_eq!(hits[0].id, "long#4");
    assert_eq!(hits[0].text, "zeppelin");
    assert!(hits.iter().all(|h| h.title == "Long Page"));
    assert!(hits[0].score > hits[1].score);
}

fn set_modified(path: &Path, time: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

#[test]
fn the_index_on_disk_is_reused_until_the_source_changes() {
    let dir = tempfile::tempdir().unwrap();
    let source = source_with(dir.path(), PEOPLE);
    let open = || KnowledgeIndex::open(&source, IndexLocation::BesideSource).unwrap();
    assert_eq!(open().status(), IndexStatus::Built);
    assert!(
        dir.path()
            .join("people.jsonl.index/lincal-source.json")
            .exists()
    );
    let reused = open();
    assert_eq!(reused.status(), IndexStatus::Reused);
    assert_eq!(reused.summary().passages, 5);
    assert_eq!(reused.search_all("polonium", 1).unwrap()[0].id, "w3#1");

    // Touched, same bytes: the hash says the index still fits.
    set_modified(&source, SystemTime::now() + Duration::from_secs(5));
    assert_eq!(open().status(), IndexStatus::ReusedAfterHash);
    assert_eq!(open().status(), IndexStatus::Reused);

    // New content: rebuilt, and the new page is found.
    let mut file = OpenOptions::new().append(true).open(&source).unwrap();
    writeln!(
        file,
        concat!(
            r#"{{"id": "w7", "title": "Alan Turing", "#,
            r#""text": "English logician who broke the Enigma cipher."}}"#
        )
    )
    .unwrap();
    drop(file);
    let rebuilt = open();
    assert_eq!(rebuilt.status(), IndexStatus::Built);
    assert_eq!(
        rebuilt.search_all("enigma", 1).unwrap()[0].title,
        "Alan Turing"
    );

    // An edit that keeps the size ("Warsaw" to "Krakow") changes the time, and the hash.
    let text = std::fs::read_to_string(&source)
        .unwrap()
        .replace("Warsaw", "Krakow");
    std::fs::write(&source, text).unwrap();
    set_modified(&source, SystemTime::now() + Duration::from_secs(10));
    let edited = open();
    assert_eq!(edited.status(), IndexStatus::Built);
    assert_eq!(edited.search_all("krakow", 1).unwrap()[0].id, "w3#1");

    // Only the source, the index and nothing temporary are left.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["people.jsonl", "people.jsonl.index"]);
}

#[test]
fn a_directory_that_is_not_an_index_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let source = source_with(dir.path(), PEOPLE);
    let precious = dir.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "keep me").unwrap();
    let err = KnowledgeIndex::open(&source, IndexLocation::Dir(precious.clone()))
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "search index {}: exists but is not a lincal index (no lincal-source.json); choose \
             another index directory or remove this one",
            precious.display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(precious.join("notes.txt")).unwrap(),
        "keep me"
    );
    let elsewhere = dir.path().join("cache/people-index");
    let index = KnowledgeIndex::open(&source, IndexLocation::Dir(elsewhere.clone())).unwrap();
    assert_eq!(index.status(), IndexStatus::Built);
    assert!(elsewhere.join("lincal-source.json").exists());
}

fn open_error(text: &str) -> (PathBuf, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let source = source_with(dir.path(), text);
    let err = KnowledgeIndex::open(&source, IndexLocation::BesideSource)
        .err()
        .unwrap();
    assert!(matches!(err, EvalError::Line { .. }), "{err}");
    (source, err.to_string(), dir)
}

#[test]
fn malformed_lines_are_reported_with_file_and_line() {
    let good = r#"{"id": "a", "title": "A", "text": "x"}"#;
    let (source, err, dir) = open_error(&format!("{good}\n\n{{\"id\": \"b\", \"title\": \"B\"\n"));
    assert!(
        err.starts_with(&format!("{}:3: ", source.display())),
        "{err}"
    );
    assert!(
        err.contains("each line must be one object such as"),
        "{err}"
    );
    // A failed build leaves no index and no temporary directory behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let (source, err, _dir) = open_error(&format!("{good}\n{{\"id\": \"b\", \"text\": \"y\"}}\n"));
    assert!(
        err.starts_with(&format!("{}:2: missing field `title`", source.display())),
        "{err}"
    );
    let (source, err, _dir) = open_error(&format!(
        "{good}\n{{\"id\": \"b\", \"title\": \" \", \"text\": \"y\"}}\n"
    ));
    assert_eq!(
        err,
        format!(
            "{}:2: field `title` is empty; every page needs the name of its entity",
            source.display()
        )
    );
    let (source, err, _dir) = open_error(&format!(
        "{good}\n{{\"id\": 7, \"title\": \"B\", \"text\": \"y\"}}\n"
    ));
    assert!(
        err.starts_with(&format!(
            "{}:2: invalid type: integer `7`, expected a string",
            source.display()
        )),
        "{err}"
    );
}

#[test]
fn a_missing_source_names_the_file() {
    let err = KnowledgeIndex::open("/nonexistent/people.jsonl", IndexLocation::Memory)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .starts_with("cannot read /nonexistent/people.jsonl: "),
        "{err}"
    );
}
