//! JSON Lines files: the plain example formats (`{"prompt", "target"}` for SFT, `{"prompt",
//! "label"}` for reward models, each with an optional `"question_id"`), and the reading and
//! atomic writing that the question sources use too.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{RewardExample, SftExample};
use crate::{DataError, Result};

/// Reads one JSON object per line (blank lines are allowed; a UTF-8 byte-order mark is
/// skipped); `check` rejects values that parse but make no sense. Errors name the file and
/// line, and say what to do for text that is not UTF-8 or a file that is one JSON array.
pub fn read_jsonl<T: DeserializeOwned>(
    path: &Path,
    check: impl Fn(&T) -> std::result::Result<(), String>,
) -> Result<Vec<T>> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    let mut items = Vec::new();
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let row_error = |message: String| DataError::Row {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let line = std::str::from_utf8(line).map_err(|e| {
            row_error(format!(
                "is not UTF-8 text (byte {} of the line); save the file as UTF-8",
                e.valid_up_to() + 1
            ))
        })?;
        if line.trim().is_empty() {
            continue;
        }
        if index == 0 && line.trim_start().starts_with('[') {
            return Err(row_error(
                "the file is a JSON array; JSON Lines hold one JSON object per line (convert \
                 it with `jq -c '.[]' FILE`)"
                    .into(),
            ));
        }
        let item: T = serde_json::from_str(line).map_err(|e| row_error(e.to_string()))?;
        check(&item).map_err(row_error)?;
        items.push(item);
    }
    Ok(items)
}

/// Refuses a file whose records share an id (`ids` in file order).
pub fn check_unique_ids<'a>(path: &Path, ids: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut first_at: HashMap<&str, usize> = HashMap::new();
    for (index, id) in ids.enumerate() {
        if let Some(first) = first_at.insert(id, index) {
            return Err(DataError::File {
                path: path.to_path_buf(),
                message: format!(
                    "id {id:?} belongs to records {} and {}; every item needs its own id",
                    first + 1,
                    index + 1
                ),
            });
        }
    }
    Ok(())
}

/// Reads `{"prompt", "target"}` lines.
pub fn read_sft_jsonl(path: &Path) -> Result<Vec<SftExample>> {
    read_jsonl(path, |_: &SftExample| Ok(()))
}

/// Reads `{"prompt", "label"}` lines; a label must be a number in [0, 1].
pub fn read_reward_jsonl(path: &Path) -> Result<Vec<RewardExample>> {
    read_jsonl(path, |example: &RewardExample| {
        if (0.0..=1.0).contains(&example.label) {
            Ok(())
        } else {
            Err(format!("label {} is outside [0, 1]", example.label))
        }
    })
}

/// Writes one JSON object per line, atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> Result<()> {
    write_atomically(path, |out| {
        for item in items {
            serde_json::to_writer(&mut *out, item).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Writes through `write` to a temporary file beside `path`, then renames it over `path`, so a
/// crash never leaves a truncated file under the final name.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let temporary = temporary_path(path);
    let write_error = |source| DataError::Write {
        path: path.to_path_buf(),
        source,
    };
    let result = (|| {
        let mut out = BufWriter::new(File::create(&temporary)?);
        write(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        // Best effort: the error being reported matters more than a leftover temporary file.
        let _ = std::fs::remove_file(&temporary);
    }
    result.map_err(write_error)
}

/// `dir/.name.<pid>.tmp`: hidden, beside the target (same file system, so the rename is atomic),
/// and distinct per process.
pub(crate) fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}
