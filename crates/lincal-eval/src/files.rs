//! Atomic writes and the JSON / JSONL readers shared by every module.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::EvalError;

/// Writes `bytes` to a temporary name beside `path`, syncs it and renames it over `path`, so a
/// crash leaves either the old file or the new one, never half of one.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    let write_error = |source| EvalError::Write {
        path: path.to_path_buf(),
        source,
    };
    let temporary = temporary_beside(path);
    let result = File::create(&temporary)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temporary, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.map_err(write_error)
}

/// `.<name>.tmp-<pid>` in the same folder: the same file system, so the rename is atomic, and
/// hidden, so a half-written file is never mistaken for a result.
pub(crate) fn temporary_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), EvalError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| EvalError::File {
        path: path.to_path_buf(),
        message: format!("cannot serialise: {e}"),
    })?;
    text.push('\n');
    write_atomically(path, text.as_bytes())
}

/// Reads a JSON file; serde's message names the missing or mistyped field and its line.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| EvalError::File {
        path: path.to_path_buf(),
        message: format!("not a valid file of this kind: {e}"),
    })
}

/// Calls `each(line_number, line)` for every non-blank line (1-based numbers); an `Err(message)`
/// from `each` becomes an error naming the file and line.
pub(crate) fn for_each_line(
    path: &Path,
    mut each: impl FnMut(usize, &str) -> Result<(), String>,
) -> Result<(), EvalError> {
    let read_error = |source| EvalError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(read_error)?;
        if line.trim().is_empty() {
            continue;
        }
        each(index + 1, &line).map_err(|message| EvalError::Line {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_into_missing_folder_names_the_file() {
        let err = write_atomically(Path::new("/nonexistent/dir/a.json"), b"x").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot write /nonexistent/dir/a.json: "),
            "{err}"
        );
    }

    #[test]
    fn line_errors_carry_file_and_line_and_skip_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, "a\n\nb\n").unwrap();
        let mut seen = Vec::new();
        let err = for_each_line(&path, |n, line| {
            seen.push((n, line.to_string()));
            if line == "b" {
                Err("bad b".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(seen, [(1, "a".to_string()), (3, "b".to_string())]);
        assert_eq!(err.to_string(), format!("{}:3: bad b", path.display()));
    }
}
