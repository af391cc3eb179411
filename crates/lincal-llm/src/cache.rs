use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{CacheError, LlmRequest, LlmResponse};

/// Bumped whenever the key material or the stored response format changes.
const SCHEMA_VERSION: i64 = 1;

/// How long opening or writing waits for another process holding the file.
const BUSY_WAIT: Duration = Duration::from_secs(30);

/// The cache key of a request: a SHA-256 (hex) over the backend family, the model, the full
/// prompt or messages and every sampling parameter including the seed.
pub fn cache_key(backend: &str, model: &str, request: &LlmRequest) -> String {
    #[derive(Serialize)]
    struct KeyMaterial<'a> {
        schema: i64,
        backend: &'a str,
        model: &'a str,
        request: &'a LlmRequest,
    }
    let material = KeyMaterial {
        schema: SCHEMA_VERSION,
        backend,
        model,
        request,
    };
    // Plain structs of strings and numbers always serialise.
    let bytes = serde_json::to_vec(&material).expect("request key material serialises");
    Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Successful responses on disk, in SQLite, one row per request.
///
/// Every response is committed on its own as soon as its call finishes, in WAL mode with
/// `synchronous = NORMAL`: a killed process loses nothing committed (a power cut may lose the
/// last few commits, never the file), so a re-run repeats only the calls that had not
/// finished. Several processes may share one file. Errors are not cached: they are asked
/// again next time.
#[derive(Debug)]
pub struct ResponseCache {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl ResponseCache {
    /// Opens the cache at `path`, creating the file and its directory if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CacheError> {
        let path = path.as_ref().to_path_buf();
        let fail = |message: String| CacheError {
            path: path.clone(),
            message,
        };
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(format!("cannot create its directory: {e}")))?;
        }
        let connection = Connection::open(&path).map_err(|e| fail(format!("cannot open: {e}")))?;
        let setup = || -> rusqlite::Result<i64> {
            // Other processes may hold the write lock for a moment.
            connection.busy_timeout(BUSY_WAIT)?;
            connection.pragma_update(None, "journal_mode", "WAL")?;
            connection.pragma_update(None, "synchronous", "NORMAL")?;
            connection.execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS responses (
                     key TEXT PRIMARY KEY,
                     backend TEXT NOT NULL,
                     model TEXT NOT NULL,
                     request TEXT NOT NULL,
                     response TEXT NOT NULL,
                     created_unix INTEGER NOT NULL
                 );
                 COMMIT;",
            )?;
            let version: i64 =
                connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
            if version == 0 {
                connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                return Ok(SCHEMA_VERSION);
            }
            Ok(version)
        };
        // Turning a new file to WAL mode reports "busy" at once, without waiting, while another
        // process turns it too: such a setup is tried again.
        let deadline = Instant::now() + BUSY_WAIT;
        let version = loop {
            match setup() {
                Err(rusqlite::Error::SqliteFailure(error, _))
                    if error.code == ErrorCode::DatabaseBusy && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                done => {
                    break done
                        .map_err(|e| fail(format!("cannot set up the cache tables: {e}")))?;
                }
            }
        };
        if version != SCHEMA_VERSION {
            return Err(fail(format!(
                "was written in cache format {version}, this build reads format {SCHEMA_VERSION}; \
                 point the cache at a new file"
            )));
        }
        Ok(Self {
            path,
            connection: Mutex::new(connection),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, message: String) -> CacheError {
        CacheError {
            path: self.path.clone(),
            message,
        }
    }

    /// The stored response for `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<LlmResponse>, CacheError> {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stored: Option<String> = connection
            .query_row(
                "SELECT response FROM responses WHERE key = ?1",
                [key],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.error(format!("cannot read entry {key}: {e}")))?;
        stored
            .map(|json| {
                serde_json::from_str(&json)
                    .map_err(|e| self.error(format!("entry {key} is not a stored response: {e}")))
            })
            .transpose()
    }

    /// Stores `response` under `key` and commits at once. The request is kept beside it so
    /// the file can be inspected.
    pub fn put(
        &self,
        key: &str,
        backend: &str,
        model: &str,
        request: &LlmRequest,
        response: &LlmResponse,
    ) -> Result<(), CacheError> {
        // Plain structs of strings and numbers always serialise.
        let request_json = serde_json::to_string(request).expect("request serialises");
        let response_json = serde_json::to_string(response).expect("response serialises");
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        connection
            .execute(
                "INSERT OR REPLACE INTO responses \
                 (key, backend, model, request, response, created_unix)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![key, backend, model, request_json, response_json, created],
            )
            .map(|_| ())
            .map_err(|e| self.error(format!("cannot store entry {key}: {e}")))
    }

    /// How many responses are stored.
    pub fn len(&self) -> Result<u64, CacheError> {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        connection
            .query_row("SELECT COUNT(*) FROM responses", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|count| count as u64)
            .map_err(|e| self.error(format!("cannot count entries: {e}")))
    }

    pub fn is_empty(&self) -> Result<bool, CacheError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChatMessage, FinishReason, SamplingParams, TokenUsage};

    fn request(seed: u64) -> LlmRequest {
        LlmRequest::chat(
            vec![ChatMessage::user("Name a prime.")],
            SamplingParams {
                seed,
                ..SamplingParams::default()
            },
        )
    }

    #[test]
    fn key_changes_with_every_part_and_only_then() {
        let base = cache_key("openai", "m", &request(1));
        assert_eq!(base.len(), 64);
        assert_eq!(base, cache_key("openai", "m", &request(1)));
        assert_ne!(base, cache_key("anthropic", "m", &request(1)));
        assert_ne!(base, cache_key("openai", "m2", &request(1)));
        assert_ne!(base, cache_key("openai", "m", &request(2)));
        let mut stop = request(1);
        stop.params.stop.push("\n".into());
        assert_ne!(base, cache_key("openai", "m", &stop));
        let completion = LlmRequest::completion("Name a prime.", request(1).params);
        assert_ne!(base, cache_key("openai", "m", &completion));
    }

    #[test]
    fn responses_survive_reopening_and_misses_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/cache.sqlite");
        let response = LlmResponse {
            choices: vec![crate::Choice {
                text: "7".into(),
                finish_reason: Some(FinishReason::Length),
            }],
            usage: Some(TokenUsage {
                prompt_tokens: 12,
                completion_tokens: 1,
            }),
        };
        {
            let cache = ResponseCache::open(&path).unwrap();
            assert!(cache.is_empty().unwrap());
            cache
                .put("k1", "openai", "m", &request(1), &response)
                .unwrap();
            assert_eq!(cache.get("k2").unwrap(), None);
        }
        let cache = ResponseCache::open(&path).unwrap();
        assert_eq!(cache.get("k1").unwrap(), Some(response));
        assert_eq!(cache.len().unwrap(), 1);
    }

    #[test]
    fn a_cache_of_another_format_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let error = ResponseCache::open(&path).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "response cache {}: was written in cache format 99, this build reads format 1; \
                 point the cache at a new file",
                path.display()
            )
        );
    }

    #[test]
    fn caches_opened_at_once_on_a_new_file_all_open() {
        // Turning a new file to WAL takes an exclusive lock SQLite does not wait for: a parent
        // polling a cache its child was creating met "database is locked" in CI.
        for round in 0..100 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cache.sqlite");
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || ResponseCache::open(&path).map(|cache| cache.len()))
                })
                .collect();
            for opener in openers {
                let opened = opener.join().unwrap();
                assert!(matches!(opened, Ok(Ok(0))), "round {round}: {opened:?}");
            }
        }
    }
}
