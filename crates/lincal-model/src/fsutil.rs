//! Crash-safe writes: a file or directory appears under its final name complete or not at all,
//! and a write that fails (a full disk, a file size limit) leaves no temporary behind.

use crate::error::{ModelError, Result};
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    write_file_atomic(path, |tmp| {
        std::fs::write(tmp, contents).map_err(|e| ModelError::io(path, e))
    })
}

/// Lets `write` fill a temporary file beside `path` (named to it by path, for writers that
/// open files themselves) and renames it over `path`. The temporary file is removed when
/// `write` fails.
pub fn write_file_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hidden and beside the target: the same file system, so the rename is atomic.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| ModelError::io(path, e))?;
    write(tmp.path())?;
    tmp.persist(path)
        .map_err(|e| ModelError::io(path, e.error))?;
    Ok(())
}

/// Builds a directory at `out` by filling a temporary sibling with `fill` and renaming it into
/// place; an existing `out` is replaced only once the new one is complete. A failed `fill`
/// removes the temporary sibling (a killed one is removed by the next call).
pub fn write_dir_atomic(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let partial = sibling(out, ".partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| ModelError::io(&partial, e))?;
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| ModelError::io(&partial, e))?;
    if let Err(e) = fill(&partial) {
        // Best effort: the write's own error is the one to report.
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    if out.exists() {
        let old = sibling(out, ".old");
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(out, &old).map_err(|e| ModelError::io(out, e))?;
        std::fs::rename(&partial, out).map_err(|e| ModelError::io(out, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| ModelError::io(&old, e))
    } else {
        std::fs::rename(&partial, out).map_err(|e| ModelError::io(out, e))
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}
