//! The exclusive lock on an output: a second holder is refused with the first one's pid, a lock
//! left behind by a process that no longer runs is taken over, and dropping releases it.

use lincal_data::lock::{LOCK_FILE, LockHolder, OutputLock};

/// The pid of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn a_second_lock_on_a_directory_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stage");
    let lock = OutputLock::dir(&out).unwrap();
    assert_eq!(lock.path(), out.join(LOCK_FILE));
    assert!(lock.took_over().is_none());
    let holder: LockHolder =
        serde_json::from_str(&std::fs::read_to_string(lock.path()).unwrap()).unwrap();
    assert_eq!(holder.pid, std::process::id());

    let error = OutputLock::dir(&out).unwrap_err().to_string();
    let path = out.join(LOCK_FILE);
    assert!(
        error.starts_with(&format!(
            "{}: the output this lock guards is held by process {} (since {}), \
             which is still running",
            path.display(),
            holder.pid,
            holder.started
        )),
        "{error}"
    );
    assert!(
        error.ends_with(&format!(
            "If no other run is going on (after a crash, or when the process id was reused), \
             remove {} and run again",
            path.display()
        )),
        "{error}"
    );

    drop(lock);
    assert!(!path.exists());
    OutputLock::dir(&out).unwrap();
}

#[test]
fn a_lock_left_by_a_process_that_no_longer_runs_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let stale = LockHolder {
        pid: dead_pid(),
        started: "2026-01-01T00:00:00Z".into(),
    };
    let path = dir.path().join(LOCK_FILE);
    std::fs::write(&path, serde_json::to_string(&stale).unwrap()).unwrap();
    let lock = OutputLock::dir(dir.path()).unwrap();
    assert_eq!(lock.took_over(), Some(&stale));
    let holder: LockHolder =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(holder.pid, std::process::id());
    // Nothing but the lock is left of the takeover.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [LOCK_FILE]);
}

#[test]
fn a_file_is_locked_beside_it_and_an_unreadable_lock_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("paragraphs.jsonl");
    let lock = OutputLock::file(&output).unwrap();
    assert_eq!(lock.path(), dir.path().join("paragraphs.jsonl.lock"));
    drop(lock);

    std::fs::write(dir.path().join("paragraphs.jsonl.lock"), "").unwrap();
    let error = OutputLock::file(&output).unwrap_err().to_string();
    assert!(
        error.contains("is held by a run whose lock file cannot be read"),
        "{error}"
    );
}
