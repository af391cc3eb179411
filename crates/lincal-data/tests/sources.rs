//! The offline question sources, on small archives packed here in the formats of the real
//! artifacts (a wheel, sdists, a .deb), and the pinned download against a loopback server.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use lincal_data::schema::Tally;
use lincal_data::sources::{
    self, Artifact, KnowledgeRecord, Progress, QaRecord, Source, fetch_artifact,
    read_knowledge_jsonl, read_qa_jsonl,
};
use sha2::{Digest, Sha256};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        // Read at run time: a binary reused from another checkout's build names that one.
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/sources")
            .join(name),
    )
    .unwrap()
}

fn tally(kept: usize, skipped: &[(&'static str, usize)]) -> Tally {
    Tally {
        kept,
        skipped: skipped.iter().copied().collect(),
    }
}

fn qa(id: &str, question: &str, aliases: &[&str], source: &str) -> QaRecord {
    QaRecord {
        id: id.to_string(),
        question: question.to_string(),
        answer: aliases[0].to_string(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        source: source.to_string(),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The id that content-addressed sources give a question: prefix and 12 hex digits of sha256.
fn content_id(prefix: &str, question: &str) -> String {
    format!("{prefix}-{}", &sha256_hex(question.as_bytes())[..12])
}

/// Builds `source` from the archive at `raw` into a JSONL file and reads it back.
fn build_qa(source: Source, raw: &Path) -> (Vec<QaRecord>, Tally) {
    let out = raw.with_file_name(format!("{source}.jsonl"));
    let report = sources::build(source, raw, &out).unwrap();
    (read_qa_jsonl(&out).unwrap(), report)
}

fn tar_gz(path: &Path, members: &[(&str, &[u8])]) {
    let encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::default(),
    );
    let mut builder = tar::Builder::new(encoder);
    for (name, data) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
}

// ---------------------------------------------------------------- FanOutQA

fn fanout_wheel(dir: &Path, dev_json: &str) -> PathBuf {
    let path = dir.join("fanoutqa-1.1.1-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("fanoutqa/__init__.py", options).unwrap();
    zip.write_all(b"").unwrap();
    zip.start_file("fanoutqa/data/fanout-final-dev.json", options)
        .unwrap();
    zip.write_all(dev_json.as_bytes()).unwrap();
    zip.finish().unwrap();
    path
}

#[test]
fn fanoutqa_keeps_leaf_questions_with_normalised_answers() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = fanout_wheel(dir.path(), &fixture("fanout-final-dev.json"));
    let (records, report) = build_qa(Source::FanoutQa, &wheel);
    let f = "fanoutqa";
    assert_eq!(
        records,
        vec![
            qa(
                "fanoutqa-a1",
                "Who were the first 2 picks in the 1998 MLB Draft?",
                &["Pat Burrell, Mark Mulder"],
                f
            ),
            qa(
                "fanoutqa-a2",
                "What is the batting hand of Pat Burrell?",
                &["Right"],
                f
            ),
            qa(
                "fanoutqa-a3",
                "Approximately how many employees did Amazon have in recent years?",
                &["1684853", "1,684,853"],
                f
            ),
            qa(
                "fanoutqa-a4",
                "Which nations won the last 2 FIFA world cups in descending order, \
                 and in what year?",
                &["2022: Argentina; 2018: France"],
                f
            ),
            qa(
                "fanoutqa-b1",
                "Was Jim Kenny born in Philadelphia, PA?",
                &["Yes"],
                f
            ),
            qa("fanoutqa-c1", "What is the height of K2?", &["8611"], f),
            qa(
                "fanoutqa-c2",
                "What is the height of Mount Everest?",
                &["8848.86"],
                f
            ),
            qa(
                "fanoutqa-b3",
                "Who is the head of state of Belgium?",
                &["King Philippe"],
                f
            ),
        ]
    );
    assert_eq!(
        report,
        tally(
            8,
            &[
                ("duplicate question (answers merged into the first)", 1),
                ("missing or nested answer", 1),
                ("no answer", 1),
            ]
        )
    );
}

#[test]
fn fanoutqa_reports_a_broken_dev_set_inside_the_wheel() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = fanout_wheel(dir.path(), "[\n{\"id\": \"x\",\n\"decomposition\": 5}\n]");
    let error = sources::build(Source::FanoutQa, &wheel, &dir.path().join("out.jsonl"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        format!(
            "{}!fanoutqa/data/fanout-final-dev.json:3: not FanOutQA questions: invalid type: \
             integer `5`, expected a sequence at line 3 column 18",
            wheel.display()
        )
    );
    assert!(!dir.path().join("out.jsonl").exists());
}

// ---------------------------------------------------------------- Red-Trivia

#[test]
fn red_trivia_keeps_general_lists_and_merges_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let sdist = dir.path().join("Red-Trivia-1.1.1.tar.gz");
    let lists = "Red-Trivia-1.1.1/redbot/ext/trivia/lists";
    tar_gz(
        &sdist,
        &[
            ("Red-Trivia-1.1.1/setup.py", b"from setuptools import setup"),
            (
                &format!("{lists}/general.yaml"),
                fixture("general.yaml").as_bytes(),
            ),
            (
                &format!("{lists}/pokemon.yaml"),
                fixture("pokemon.yaml").as_bytes(),
            ),
            (
                &format!("{lists}/sports.yaml"),
                fixture("sports.yaml").as_bytes(),
            ),
        ],
    );
    let (records, report) = build_qa(Source::RedTrivia, &sdist);
    let record = |question: &str, aliases: &[&str]| {
        qa(
            &content_id("red-trivia", question),
            question,
            aliases,
            "red-trivia",
        )
    };
    assert_eq!(
        records,
        vec![
            record(
                "\"15, 30, 40, game\" is used for the scoring system of what sport?",
                &["Tennis"]
            ),
            record(
                "'The Grand Ole Opry' in America is famous for what type of music?",
                &["Country music", "Country"]
            ),
            record(
                "In what year was the first modern Olympic Games held?",
                &["1896", "eighteen ninety-six"]
            ),
            record("Is the Earth round?", &["True"]),
            record("A shuttlecock is used in what sport?", &["Badminton"]),
        ]
    );
    assert_eq!(
        report,
        tally(
            5,
            &[
                ("duplicate question (answers merged into the first)", 1),
                ("no answer", 1),
                ("question shows a linked picture", 1),
            ]
        )
    );
}

#[test]
fn red_trivia_reports_invalid_yaml_with_member_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let sdist = dir.path().join("Red-Trivia-1.1.1.tar.gz");
    let member = "Red-Trivia-1.1.1/redbot/ext/trivia/lists/general.yaml";
    tar_gz(
        &sdist,
        &[(member, b"AUTHOR: x\nQuestion?:\n- a\n  - b: [\n")],
    );
    let error = sources::build(Source::RedTrivia, &sdist, &dir.path().join("out.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!("{}!{member}:4: invalid YAML: ", sdist.display())),
        "{error}"
    );
}

#[test]
fn red_trivia_refuses_an_archive_without_lists() {
    let dir = tempfile::tempdir().unwrap();
    let sdist = dir.path().join("other.tar.gz");
    tar_gz(&sdist, &[("other/README", b"nothing here")]);
    let error = sources::build(Source::RedTrivia, &sdist, &dir.path().join("out.jsonl"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        format!(
            "{}: no trivia list under /redbot/ext/trivia/lists/ in this archive; \
             is it the Red-Trivia sdist?",
            sdist.display()
        )
    );
}

// ---------------------------------------------------------------- BIG-bench

fn bigbench_sdist(dir: &Path) -> PathBuf {
    let path = dir.join("bigbench-1.0.0.tar.gz");
    let tasks = "bigbench-1.0.0/bigbench/benchmark_tasks";
    tar_gz(
        &path,
        &[
            (
                &format!("{tasks}/arithmetic/task.json"),
                br#"{"examples": [{"input": "1+1=", "target": "2"}]}"#,
            ),
            (
                &format!("{tasks}/contextual_parametric_knowledge_conflicts/task.json"),
                fixture("contextual_parametric_knowledge_conflicts.json").as_bytes(),
            ),
            (
                &format!("{tasks}/qa_wikidata/task.json"),
                fixture("qa_wikidata.json").as_bytes(),
            ),
        ],
    );
    path
}

#[test]
fn bigbench_natural_questions_take_the_answer_scored_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (records, report) = build_qa(
        Source::BigBenchNaturalQuestions,
        &bigbench_sdist(dir.path()),
    );
    let record = |question: &str, answer: &str| {
        qa(
            &content_id("bigbench-nq", question),
            question,
            &[answer],
            "bigbench-nq",
        )
    };
    assert_eq!(
        records,
        vec![
            record(
                "who is joseph paine in mr smith goes to washington?",
                "Claude Rains"
            ),
            record(
                "who is the voice for beef what 's for dinner?",
                "Robert Mitchum"
            ),
        ]
    );
    assert_eq!(
        report,
        tally(
            2,
            &[
                ("duplicate question (answers merged into the first)", 1),
                ("input without a \"Question:\" line", 1),
                ("no candidate scored 0", 1),
                ("several candidates scored 0", 1),
            ]
        )
    );
}

#[test]
fn bigbench_qa_wikidata_keeps_cloze_prompts_with_every_target() {
    let dir = tempfile::tempdir().unwrap();
    let (records, report) = build_qa(Source::BigBenchQaWikidata, &bigbench_sdist(dir.path()));
    let record = |question: &str, aliases: &[&str]| {
        qa(
            &content_id("bigbench-qa-wikidata", question),
            question,
            aliases,
            "bigbench-qa-wikidata",
        )
    };
    assert_eq!(
        records,
        vec![
            record(
                "The genre of \"Weird Al\" Yankovic is",
                &["comedy", "parody"]
            ),
            record(
                "The language of (I Can't Get No) Satisfaction is",
                &["English", "english"]
            ),
        ]
    );
    assert_eq!(
        report,
        tally(
            2,
            &[
                ("duplicate question (answers merged into the first)", 1),
                ("no answer", 1)
            ]
        )
    );
}

#[test]
fn bigbench_without_the_task_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let sdist = dir.path().join("bigbench-1.0.0.tar.gz");
    tar_gz(&sdist, &[("bigbench-1.0.0/README.md", b"readme")]);
    let error = sources::build(
        Source::BigBenchQaWikidata,
        &sdist,
        &dir.path().join("out.jsonl"),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: no member ending in /benchmark_tasks/qa_wikidata/task.json; \
             is this the bigbench 1.0.0 sdist?",
            sdist.display()
        )
    );
}

// ---------------------------------------------------------------- WordNet

/// A .deb: an `ar` archive of `debian-binary`, `control.tar.xz` and `data.tar.xz`.
fn wordnet_deb(dir: &Path, data_noun: &str) -> PathBuf {
    let mut tar_bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut tar_bytes);
        for (name, data) in [
            (
                "./usr/share/doc/wordnet-base/copyright",
                b"WordNet licence".as_slice(),
            ),
            ("./usr/share/wordnet/data.noun", data_noun.as_bytes()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, data).unwrap();
        }
        builder.finish().unwrap();
    }
    let mut data_tar_xz = Vec::new();
    lzma_rs::xz_compress(&mut tar_bytes.as_slice(), &mut data_tar_xz).unwrap();
    let path = dir.join("wordnet-base_3.0-37_all.deb");
    let mut deb = ar::Builder::new(std::fs::File::create(&path).unwrap());
    for (name, data) in [
        ("debian-binary", b"2.0\n".as_slice()),
        ("control.tar.xz", b"not needed".as_slice()),
        ("data.tar.xz", data_tar_xz.as_slice()),
    ] {
        deb.append(
            &ar::Header::new(name.as_bytes().to_vec(), data.len() as u64),
            data,
        )
        .unwrap();
    }
    path
}

#[test]
fn wordnet_people_are_named_instances_under_person() {
    let dir = tempfile::tempdir().unwrap();
    let deb = wordnet_deb(dir.path(), &fixture("data.noun"));
    let out = dir.path().join("people.jsonl");
    let report = sources::build(Source::WordNetPeople, &deb, &out).unwrap();
    let person = |id: &str, title: &str, text: &str| KnowledgeRecord {
        id: id.to_string(),
        title: title.to_string(),
        text: text.to_string(),
    };
    assert_eq!(
        read_knowledge_jsonl(&out).unwrap(),
        vec![
            person(
                "wordnet-10954498",
                "Albert Einstein",
                "physicist born in Germany who formulated the special theory of relativity and \
                 the general theory of relativity; Einstein also proposed that light consists of \
                 discrete quantized bundles of energy (later called photons) (1879-1955)"
            ),
            person(
                "wordnet-11111111",
                "Abraham Lincoln",
                "16th President of the United States (1809-1865)"
            ),
            person(
                "wordnet-10969069",
                "Marie Curie",
                "French chemist (born in Poland) who won two Nobel Prizes (1867-1934)"
            ),
        ]
    );
    assert_eq!(report, tally(3, &[("no capitalised lemma", 1)]));
}

#[test]
fn wordnet_malformed_line_names_the_member_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let broken =
        fixture("data.noun").replace("10560637 18 n 01 scientist", "10560637 18 n zz scientist");
    let deb = wordnet_deb(dir.path(), &broken);
    let error =
        sources::build(Source::WordNetPeople, &deb, &dir.path().join("out.jsonl")).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}!usr/share/wordnet/data.noun:5: word count \"zz\" is not hex",
            deb.display()
        )
    );
}

#[test]
fn wordnet_rejects_a_deb_without_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.deb");
    let mut deb = ar::Builder::new(std::fs::File::create(&path).unwrap());
    deb.append(
        &ar::Header::new(b"debian-binary".to_vec(), 4),
        b"2.0\n".as_slice(),
    )
    .unwrap();
    drop(deb);
    let error =
        sources::build(Source::WordNetPeople, &path, &dir.path().join("out.jsonl")).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: no data.tar.xz member; is this the wordnet-base .deb?",
            path.display()
        )
    );
}

// ---------------------------------------------------------------- names, ids, JSONL

#[test]
fn source_names_parse_and_unknown_names_are_listed() {
    for source in Source::ALL {
        assert_eq!(source.name().parse::<Source>().unwrap(), source);
    }
    assert_eq!(
        "trivia".parse::<Source>().unwrap_err().to_string(),
        "unknown question source \"trivia\"; known sources: fanoutqa, red-trivia, bigbench-nq, \
         bigbench-qa-wikidata, wordnet-people"
    );
    assert_eq!(
        Source::BigBenchNaturalQuestions.artifact(),
        Source::BigBenchQaWikidata.artifact()
    );
    assert_eq!(Source::WordNetPeople.output(), sources::Output::Knowledge);
}

#[test]
fn content_ids_do_not_depend_on_order_or_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let lists = "Red-Trivia-1.1.1/redbot/ext/trivia/lists";
    let first = dir.path().join("a").join("Red-Trivia-1.1.1.tar.gz");
    let second = dir.path().join("b").join("Red-Trivia-1.1.1.tar.gz");
    std::fs::create_dir_all(first.parent().unwrap()).unwrap();
    std::fs::create_dir_all(second.parent().unwrap()).unwrap();
    tar_gz(
        &first,
        &[(
            &format!("{lists}/general.yaml"),
            b"Q one?:\n- A\nQ two?:\n- B\n",
        )],
    );
    tar_gz(
        &second,
        &[(
            &format!("{lists}/sports.yaml"),
            b"Q zero?:\n- Z\nQ two?:\n- B\nQ one?:\n- A\n",
        )],
    );
    let id_of = |records: &[QaRecord], question: &str| {
        records
            .iter()
            .find(|r| r.question == question)
            .unwrap()
            .id
            .clone()
    };
    let (a, _) = build_qa(Source::RedTrivia, &first);
    let (b, _) = build_qa(Source::RedTrivia, &second);
    assert_eq!(id_of(&a, "Q one?"), id_of(&b, "Q one?"));
    assert_eq!(id_of(&a, "Q two?"), id_of(&b, "Q two?"));
    assert_eq!(
        id_of(&a, "Q one?"),
        "red-trivia-".to_string() + &sha256_hex(b"Q one?")[..12]
    );
}

#[test]
fn qa_jsonl_with_an_empty_answer_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qa.jsonl");
    std::fs::write(
        &path,
        "{\"id\":\"q1\",\"question\":\"Q?\",\
         \"answer\":\"A\",\"aliases\":[\"A\"],\"source\":\"x\"}\n\
         {\"id\":\"q2\",\"question\":\"Q?\",\
         \"answer\":\" \",\"aliases\":[],\"source\":\"x\"}\n",
    )
    .unwrap();
    assert_eq!(
        read_qa_jsonl(&path).unwrap_err().to_string(),
        format!(
            "{}:2: record q2 needs a non-empty question and answer",
            path.display()
        )
    );
}

#[test]
fn qa_jsonl_puts_the_answer_first_among_its_aliases_and_needs_unique_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qa.jsonl");
    // A hand-written file: no `source`, aliases without the answer or with it last and twice.
    std::fs::write(
        &path,
        "{\"id\":\"q1\",\"question\":\"Q?\",\"answer\":\"A\",\"aliases\":[\"a1\",\"A\",\"a1\"]}\n\
         {\"id\":\"q2\",\"question\":\"Q2?\",\"answer\":\"B\"}\n",
    )
    .unwrap();
    let records = read_qa_jsonl(&path).unwrap();
    assert_eq!(records[0].aliases, ["A", "a1"]);
    assert_eq!(records[1].aliases, ["B"]);
    assert_eq!(records[1].source, "");
    std::fs::write(
        &path,
        "{\"id\":\"q1\",\"question\":\"Q?\",\"answer\":\"A\"}\n\
         {\"id\":\"q1\",\"question\":\"Q2?\",\"answer\":\"B\"}\n",
    )
    .unwrap();
    assert_eq!(
        read_qa_jsonl(&path).unwrap_err().to_string(),
        format!(
            "{}: id \"q1\" belongs to records 1 and 2; every item needs its own id",
            path.display()
        )
    );
    std::fs::write(
        &path,
        "{\"id\":\" \",\"question\":\"Q?\",\"answer\":\"A\"}\n",
    )
    .unwrap();
    assert_eq!(
        read_qa_jsonl(&path).unwrap_err().to_string(),
        format!("{}:1: the record has an empty `id`", path.display())
    );
}

// ---------------------------------------------------------------- fetch

/// Serves `body` over HTTP on a loopback port for `connections` requests (honouring a `Range:
/// bytes=N-` header with 206), then stops; returns the port and the request heads it saw.
fn serve(body: Vec<u8>, connections: usize) -> (u16, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut heads = Vec::new();
        for stream in listener.incoming().take(connections) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let range_start = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("range: bytes=")
                        .map(str::to_string)
                })
                .map(|r| r.trim_end_matches('-').parse::<usize>().unwrap());
            let (status, part) = match range_start {
                Some(start) => ("206 Partial Content", &body[start..]),
                None => ("200 OK", &body[..]),
            };
            write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                part.len()
            )
            .unwrap();
            stream.write_all(part).unwrap();
            heads.push(head);
        }
        heads
    });
    (port, handle)
}

fn artifact<'a>(url: &'a str, sha256: &'a str) -> Artifact<'a> {
    Artifact {
        file_name: "thing.tar.gz",
        url,
        sha256,
    }
}

#[test]
fn fetch_downloads_checks_the_hash_and_reuses_the_file() {
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let hash = sha256_hex(&body);
    let (port, server) = serve(body.clone(), 1);
    let url = format!("http://127.0.0.1:{port}/thing.tar.gz");
    let dir = tempfile::tempdir().unwrap();
    let mut reports = Vec::new();
    let path = fetch_artifact(&artifact(&url, &hash), dir.path(), &mut |p: Progress| {
        reports.push((p.downloaded, p.total))
    })
    .unwrap();
    assert_eq!(path, dir.path().join("thing.tar.gz"));
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(reports.first(), Some(&(0, Some(3_000_000))));
    assert_eq!(reports.last(), Some(&(3_000_000, Some(3_000_000))));
    assert!(reports.windows(2).all(|w| w[0].0 <= w[1].0));
    assert!(reports.len() >= 3, "{reports:?}");
    assert_eq!(server.join().unwrap().len(), 1);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("thing.tar.gz")]);

    // The server is gone: a second fetch must not need it.
    let mut called = false;
    let again = fetch_artifact(&artifact(&url, &hash), dir.path(), &mut |_| called = true).unwrap();
    assert_eq!(again, path);
    assert!(!called);
}

#[test]
fn fetch_hash_mismatch_names_url_and_both_hashes() {
    let body = b"not the file you pinned".to_vec();
    let actual = sha256_hex(&body);
    let expected = "0".repeat(64);
    let (port, server) = serve(body, 1);
    let url = format!("http://127.0.0.1:{port}/thing.tar.gz");
    let dir = tempfile::tempdir().unwrap();
    let error = fetch_artifact(&artifact(&url, &expected), dir.path(), &mut |_| {}).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "sha256 mismatch for {url}: expected {expected}, got {actual}; \
             the download was discarded. If the registry really changed the file, \
             the pinned hash in lincal-data must be updated after checking it"
        )
    );
    server.join().unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn fetch_resumes_a_partial_download_and_replaces_a_corrupt_file() {
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
    let hash = sha256_hex(&body);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("thing.tar.gz.part"), &body[..40_000]).unwrap();
    let (port, server) = serve(body.clone(), 1);
    let url = format!("http://127.0.0.1:{port}/thing.tar.gz");
    let mut first_report = None;
    let path = fetch_artifact(&artifact(&url, &hash), dir.path(), &mut |p: Progress| {
        first_report.get_or_insert((p.downloaded, p.total));
    })
    .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(first_report, Some((40_000, Some(100_000))));
    let heads = server.join().unwrap();
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("range: bytes=40000-"),
        "{heads:?}"
    );

    // A file with the wrong content under the final name is downloaded again.
    std::fs::write(&path, b"corrupt").unwrap();
    let (port, server) = serve(body.clone(), 1);
    let url = format!("http://127.0.0.1:{port}/thing.tar.gz");
    fetch_artifact(&artifact(&url, &hash), dir.path(), &mut |_| {}).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert!(
        !server.join().unwrap()[0]
            .to_ascii_lowercase()
            .contains("range:")
    );
}

#[test]
fn fetch_reports_an_unreachable_server() {
    // A socket bound but not listening holds the port, and connections to it are refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/thing.tar.gz");
    let dir = tempfile::tempdir().unwrap();
    let error = fetch_artifact(&artifact(&url, &"0".repeat(64)), dir.path(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!("cannot download {url}: ")),
        "{error}"
    );
    assert!(
        error.ends_with(&format!(
            "Without network access, download it elsewhere and place it at {}",
            dir.path().join("thing.tar.gz").display()
        )),
        "{error}"
    );
}

#[test]
fn pinned_artifacts_name_their_registry_files() {
    let wheel = Source::FanoutQa.artifact();
    assert!(
        wheel.url.starts_with("https://files.pythonhosted.org/")
            && wheel.url.ends_with(wheel.file_name)
    );
    let deb = Source::WordNetPeople.artifact();
    assert!(
        deb.url
            .ends_with("/pool/main/w/wordnet/wordnet-base_3.0-37_all.deb")
    );
    for source in Source::ALL {
        let artifact = source.artifact();
        assert_eq!(artifact.sha256.len(), 64);
        assert!(
            artifact
                .sha256
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
}
