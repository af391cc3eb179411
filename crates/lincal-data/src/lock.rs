//! An exclusive lock on an output (a stage directory, or a single output file), so that two runs
//! never write the same output at once: the second is refused, naming the first.
//!
//! The lock is a file created with `create_new` (which fails if it exists) holding the holder's
//! process id and start time, and removed when the [`OutputLock`] is dropped. A process that
//! dies without dropping it (killed, or a power cut) leaves the file behind; the next run finds
//! that its process no longer runs and takes the lock over, saying so in
//! [`OutputLock::took_over`]. Whether a process runs is read from `/proc`, so the check holds
//! for runs on this machine; where there is no `/proc`, a lock left behind is never taken over
//! and the refusal says which file to remove.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::artifact::timestamp;
use crate::{DataError, Result};

/// The name of the lock file inside a locked directory.
pub const LOCK_FILE: &str = "lincal.lock";

/// Who holds a lock: the content of a lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    /// When the lock was taken (RFC 3339, UTC).
    pub started: String,
}

impl LockHolder {
    /// What to tell the user when a run replaced this stale holder's lock file `lock`.
    pub fn takeover_warning(&self, lock: &Path) -> String {
        format!(
            "warning: took over {} left by process {} (since {}), which no longer runs",
            lock.display(),
            self.pid,
            self.started
        )
    }
}

/// An exclusive lock on an output, held until dropped.
#[derive(Debug)]
pub struct OutputLock {
    path: PathBuf,
    took_over: Option<LockHolder>,
}

impl OutputLock {
    /// Locks the directory `dir` (created if missing) with `DIR/lincal.lock`.
    pub fn dir(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|source| DataError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        Self::acquire(dir.join(LOCK_FILE))
    }

    /// Locks the output file `path` with `PATH.lock` beside it (the file itself need not exist).
    pub fn file(path: &Path) -> Result<Self> {
        let mut name = path.as_os_str().to_owned();
        name.push(".lock");
        Self::acquire(PathBuf::from(name))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The holder of a lock left behind by a process that no longer runs, which this lock
    /// replaced; the caller should say so.
    pub fn took_over(&self) -> Option<&LockHolder> {
        self.took_over.as_ref()
    }

    /// What to tell the user when this lock replaced a stale one.
    pub fn takeover_warning(&self) -> Option<String> {
        self.took_over
            .as_ref()
            .map(|holder| holder.takeover_warning(&self.path))
    }

    fn acquire(path: PathBuf) -> Result<Self> {
        let me = LockHolder {
            pid: std::process::id(),
            started: timestamp(),
        };
        let mut took_over = None;
        // A takeover removes the stale file and tries again; a second round that still finds
        // a file lost a race with another run, whose lock is then judged afresh.
        for _ in 0..3 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    let mut content = serde_json::to_vec(&me).expect("a lock holder serialises");
                    content.push(b'\n');
                    file.write_all(&content)
                        .and_then(|()| file.sync_all())
                        .map_err(|source| DataError::Write {
                            path: path.clone(),
                            source,
                        })?;
                    return Ok(OutputLock { path, took_over });
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(DataError::Write { path, source }),
            }
            let text = match fs::read_to_string(&path) {
                Ok(text) => text,
                // Released between our attempt and this read: try again.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(DataError::Read { path, source }),
            };
            let Ok(holder) = serde_json::from_str::<LockHolder>(&text) else {
                return Err(refusal(
                    &path,
                    "is held by a run whose lock file cannot be read (it may be starting now)"
                        .into(),
                ));
            };
            if process_runs(holder.pid) {
                return Err(refusal(
                    &path,
                    format!(
                        "is held by process {} (since {}), which is still running: another run \
                         is writing this output. Wait for it to end, or stop it",
                        holder.pid, holder.started
                    ),
                ));
            }
            took_over = Some(holder);
            release(&path, &text)?;
        }
        Err(refusal(
            &path,
            "keeps being taken by other runs starting at the same time".into(),
        ))
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Nothing to do about a failure here: the next run takes a stale lock over.
        let _ = fs::remove_file(&self.path);
    }
}

/// Removes the stale lock file at `path` whose content was `stale`. It is first moved aside, a
/// step only one run can make, and put back if what was moved is not the stale lock (another
/// run took it over in the meantime).
fn release(path: &Path, stale: &str) -> Result<()> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".stale-{}", std::process::id()));
    let aside = PathBuf::from(aside);
    match fs::rename(path, &aside) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(DataError::Write {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    let moved = fs::read_to_string(&aside).unwrap_or_default();
    let result = if moved == stale {
        fs::remove_file(&aside)
    } else {
        fs::rename(&aside, path)
    };
    result.map_err(|source| DataError::Write {
        path: aside.clone(),
        source,
    })
}

/// Whether process `pid` runs on this machine; without `/proc` to tell, it is assumed to.
fn process_runs(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

fn refusal(path: &Path, why: String) -> DataError {
    DataError::File {
        path: path.to_path_buf(),
        message: format!(
            "the output this lock guards {why}. If no other run is going on (after a crash, or \
             when the process id was reused), remove {} and run again",
            path.display()
        ),
    }
}
