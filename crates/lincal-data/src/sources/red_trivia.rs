//! Red-Trivia (PyPI `Red-Trivia==1.1.1`, GPLv3, so only ever fetched): the trivia lists of
//! Red-DiscordBot, one YAML mapping per list from question to accepted answers (the first is the
//! preferred one), plus an `AUTHOR` entry. Only general-knowledge lists are used; the others are
//! about single games or franchises, or show a picture the question links to.

use std::ops::ControlFlow;
use std::path::Path;

use serde_norway::Value;

use super::{QaCollector, content_id, for_each_tar_gz_member, member_error};
use crate::Result;

/// The lists kept, by file stem under `redbot/ext/trivia/lists/`.
pub const GENERAL_KNOWLEDGE_LISTS: &[&str] = &[
    "2015",
    "2016",
    "artandliterature",
    "computers",
    "elements",
    "entertainment",
    "general",
    "greekmyth",
    "nba",
    "sports",
    "uscapitals",
    "usstateabbreviations",
    "worldcapitals",
];

const LISTS_DIR: &str = "/redbot/ext/trivia/lists/";

fn list_name(member: &str) -> Option<&str> {
    let (_, file) = member.split_once(LISTS_DIR)?;
    file.strip_suffix(".yaml")
}

pub(super) fn collect(sdist: &Path, questions: &mut QaCollector) -> Result<()> {
    let wanted = |member: &str| {
        list_name(member).is_some_and(|name| GENERAL_KNOWLEDGE_LISTS.contains(&name))
    };
    let mut lists_seen = 0;
    for_each_tar_gz_member(sdist, &wanted, &mut |member, text| {
        lists_seen += 1;
        collect_list(sdist, member, &text, questions)?;
        Ok(ControlFlow::Continue(()))
    })?;
    if lists_seen == 0 {
        return Err(crate::DataError::File {
            path: sdist.to_path_buf(),
            message: format!(
                "no trivia list under {LISTS_DIR} in this archive; is it the Red-Trivia sdist?"
            ),
        });
    }
    Ok(())
}

fn collect_list(sdist: &Path, member: &str, text: &str, questions: &mut QaCollector) -> Result<()> {
    let list: Value = serde_norway::from_str(text).map_err(|e| {
        let line = e.location().map_or(1, |l| l.line());
        member_error(sdist, member, line, format!("invalid YAML: {e}"))
    })?;
    let Value::Mapping(entries) = list else {
        return Err(member_error(
            sdist,
            member,
            1,
            "expected a mapping from questions to answer lists",
        ));
    };
    for (question, answers) in entries {
        let Some(question) = scalar_text(&question) else {
            questions.skip("question that is not text");
            continue;
        };
        if question == "AUTHOR" {
            continue;
        }
        if question.contains("http://") || question.contains("https://") {
            questions.skip("question shows a linked picture");
            continue;
        }
        let answers: Option<Vec<String>> = match &answers {
            Value::Sequence(items) => items.iter().map(scalar_text).collect(),
            single => scalar_text(single).map(|a| vec![a]),
        };
        match answers {
            Some(answers) => questions.add(content_id("red-trivia", &question), &question, answers),
            None => questions.skip("answer that is not text"),
        }
    }
    Ok(())
}

/// Strings as they are; numbers (years, counts) as their decimal text; booleans as "True" and
/// "False", the text the bot compares answers with.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(yes) => Some(if *yes { "True" } else { "False" }.to_string()),
        _ => None,
    }
}
