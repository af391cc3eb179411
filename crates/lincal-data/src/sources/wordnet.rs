//! Named people of WordNet 3.0 (Debian `wordnet-base`), the knowledge source for biography
//! evaluation: every noun synset that is an instance (`@i`) of a synset under `person` in the
//! hypernym tree, with a capitalised lemma, becomes `{"id", "title", "text"}` with its gloss as
//! the text. Classes of people with capitalised names ("Keynesian") are not instances and stay
//! out, and so do mythical beings, whose instance hypernyms are not under `person`.
//!
//! The `.deb` is an `ar` archive; its `data.tar.xz` holds `usr/share/wordnet/data.noun`, whose
//! lines are described in wndb(5):
//! `offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt [ptr...] | gloss`,
//! with `w_cnt` in hex and each pointer `symbol offset pos source/target`.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::ops::ControlFlow;
use std::path::Path;

use super::{KnowledgeRecord, member_error, read_tar_members};
use crate::schema::Tally;
use crate::{DataError, Result};

const DATA_NOUN: &str = "usr/share/wordnet/data.noun";
/// Lexicographer file of the top noun concepts (`noun.Tops`), where `person` lives.
const NOUN_TOPS: &str = "03";

struct Synset {
    offset: String,
    lex_filenum: String,
    words: Vec<String>,
    /// `(symbol, target offset)` of the pointers to other noun synsets.
    noun_pointers: Vec<(String, String)>,
    gloss: String,
}

pub(super) fn named_people(deb: &Path) -> Result<(Vec<KnowledgeRecord>, Tally)> {
    let data_noun = read_data_noun(deb)?;
    let synsets = parse_data_noun(&data_noun, deb)?;
    people(&synsets, deb)
}

/// Finds `data.tar.xz` in the `ar` archive and `data.noun` in it.
fn read_data_noun(deb: &Path) -> Result<String> {
    let file = std::fs::File::open(deb).map_err(|source| DataError::Read {
        path: deb.to_path_buf(),
        source,
    })?;
    let broken = |message: String| DataError::File {
        path: deb.to_path_buf(),
        message,
    };
    let mut archive = ar::Archive::new(file);
    let mut compressed = None;
    while let Some(entry) = archive.next_entry() {
        let mut entry =
            entry.map_err(|e| broken(format!("not a readable .deb (ar) archive: {e}")))?;
        if entry.header().identifier() == b"data.tar.xz" {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| broken(format!("cannot read data.tar.xz: {e}")))?;
            compressed = Some(bytes);
            break;
        }
    }
    let compressed = compressed
        .ok_or_else(|| broken("no data.tar.xz member; is this the wordnet-base .deb?".into()))?;
    let mut tar_bytes = Vec::new();
    lzma_rs::xz_decompress(&mut compressed.as_slice(), &mut tar_bytes)
        .map_err(|e| broken(format!("cannot decompress data.tar.xz: {e}")))?;
    let mut data_noun = None;
    read_tar_members(
        deb,
        tar_bytes.as_slice(),
        &|member| member.trim_start_matches("./") == DATA_NOUN,
        &mut |_, text| {
            data_noun = Some(text);
            Ok(ControlFlow::Break(()))
        },
    )?;
    data_noun.ok_or_else(|| broken(format!("data.tar.xz has no {DATA_NOUN}")))
}

fn parse_data_noun(text: &str, deb: &Path) -> Result<Vec<Synset>> {
    let mut synsets = Vec::new();
    for (index, line) in text.lines().enumerate() {
        // The licence header: each of its lines starts with two spaces.
        if line.starts_with("  ") || line.trim().is_empty() {
            continue;
        }
        let synset = parse_synset(line)
            .map_err(|message| member_error(deb, DATA_NOUN, index + 1, message))?;
        synsets.push(synset);
    }
    Ok(synsets)
}

fn parse_synset(line: &str) -> std::result::Result<Synset, String> {
    let (fields, gloss) = line.split_once(" | ").unwrap_or((line, ""));
    let mut fields = fields.split_whitespace();
    let mut next = |what: &str| {
        fields
            .next()
            .ok_or_else(|| format!("synset line ends before its {what}"))
    };
    let offset = next("offset")?.to_string();
    let lex_filenum = next("lexicographer file number")?.to_string();
    next("synset type")?;
    let word_count = next("word count")?;
    let word_count = usize::from_str_radix(word_count, 16)
        .map_err(|_| format!("word count {word_count:?} is not hex"))?;
    let mut words = Vec::with_capacity(word_count);
    for _ in 0..word_count {
        words.push(next("words")?.to_string());
        next("lex id")?;
    }
    let pointer_count = next("pointer count")?;
    let pointer_count: usize = pointer_count
        .parse()
        .map_err(|_| format!("pointer count {pointer_count:?} is not a number"))?;
    let mut noun_pointers = Vec::new();
    for _ in 0..pointer_count {
        let symbol = next("pointer symbol")?;
        let target = next("pointer target")?;
        let pos = next("pointer part of speech")?;
        next("pointer source/target")?;
        if pos == "n" {
            noun_pointers.push((symbol.to_string(), target.to_string()));
        }
    }
    Ok(Synset {
        offset,
        lex_filenum,
        words,
        noun_pointers,
        gloss: gloss.trim().to_string(),
    })
}

fn people(synsets: &[Synset], deb: &Path) -> Result<(Vec<KnowledgeRecord>, Tally)> {
    let person = synsets
        .iter()
        .find(|s| s.lex_filenum == NOUN_TOPS && s.words.first().is_some_and(|w| w == "person"))
        .ok_or_else(|| {
            member_error(
                deb,
                DATA_NOUN,
                1,
                "no `person` synset in noun.Tops; is this WordNet 3.0?",
            )
        })?;
    // Hyponyms and instances of each synset, then everything reachable from `person`.
    let mut below: HashMap<&str, Vec<&Synset>> = HashMap::new();
    for synset in synsets {
        for (symbol, target) in &synset.noun_pointers {
            if symbol == "@" || symbol == "@i" {
                below.entry(target.as_str()).or_default().push(synset);
            }
        }
    }
    let mut under_person: HashSet<&str> = HashSet::new();
    let mut stack = vec![person.offset.as_str()];
    while let Some(offset) = stack.pop() {
        for child in below.get(offset).into_iter().flatten() {
            if under_person.insert(&child.offset) {
                stack.push(&child.offset);
            }
        }
    }
    let mut records = Vec::new();
    let mut tally = Tally::default();
    for synset in synsets
        .iter()
        .filter(|s| under_person.contains(s.offset.as_str()))
    {
        let is_instance = synset
            .noun_pointers
            .iter()
            .any(|(symbol, _)| symbol == "@i");
        if !is_instance {
            continue;
        }
        let Some(title) = name_of(&synset.words) else {
            tally.skip("no capitalised lemma");
            continue;
        };
        if synset.gloss.is_empty() {
            tally.skip("no gloss");
            continue;
        }
        records.push(KnowledgeRecord {
            id: format!("wordnet-{}", synset.offset),
            title,
            text: synset.gloss.clone(),
        });
        tally.keep();
    }
    Ok((records, tally))
}

/// The full name: the first capitalised multi-word lemma ("Albert_Einstein" rather than
/// "Einstein"), else the first capitalised lemma; underscores become spaces.
fn name_of(words: &[String]) -> Option<String> {
    let capitalised: Vec<&String> = words
        .iter()
        .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
        .collect();
    let name = capitalised
        .iter()
        .find(|w| w.contains('_'))
        .or(capitalised.first())?;
    Some(name.replace('_', " "))
}
