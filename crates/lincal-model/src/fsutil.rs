//! Crash-safe writes: a file or directory appears under its final name complete or not at all.

use crate::error::{ModelError, Result};
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = sibling(path, ".tmp");
    std::fs::write(&tmp, contents).map_err(|e| ModelError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}

/// Builds a directory at `out` by filling a temporary sibling with `fill` and renaming it into
/// place; an existing `out` is replaced only once the new one is complete.
pub fn write_dir_atomic(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let partial = sibling(out, ".partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| ModelError::io(&partial, e))?;
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| ModelError::io(&partial, e))?;
    fill(&partial)?;
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
