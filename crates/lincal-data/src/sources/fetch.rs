//! Downloading pinned artifacts: each has a URL and the sha256 published by its registry (the
//! PyPI JSON API / simple index, Debian bookworm's `Packages` index). A download goes to
//! `<file>.part` and is renamed once its hash checks out; an interrupted download resumes from
//! the partial file with an HTTP range request.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use ureq::tls::{RootCerts, TlsConfig};

use crate::{DataError, Result};

/// A file to download, pinned by its sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Artifact<'a> {
    /// Name of the file in the cache directory.
    pub file_name: &'a str,
    pub url: &'a str,
    /// Lower-case hex sha256 of the whole file.
    pub sha256: &'a str,
}

pub(super) const FANOUTQA_WHEEL: Artifact<'static> = Artifact {
    file_name: "fanoutqa-1.1.1-py3-none-any.whl",
    url: concat!(
        "https://files.pythonhosted.org/packages/",
        "59/e0/8ce713b806c525171c6754d1aa472c059489dfbf81b0e5d83a9a54f5bf4c/",
        "fanoutqa-1.1.1-py3-none-any.whl",
    ),
    sha256: "1d97c901e62e90507ac0c039a357895308bed1c6a5b49207ae81d81eac6fd795",
};

pub(super) const RED_TRIVIA_SDIST: Artifact<'static> = Artifact {
    file_name: "Red-Trivia-1.1.1.tar.gz",
    url: concat!(
        "https://files.pythonhosted.org/packages/",
        "36/46/6442a0c6d0a18a0e12a4aec3e829f458e3c26ca89f86ac6734aea71431ff/",
        "Red-Trivia-1.1.1.tar.gz",
    ),
    sha256: "39413b9fb3f9b9362d6de1dcf69a4bf635b0f3518243f7178299b96d26cbb6a7",
};

pub(super) const BIGBENCH_SDIST: Artifact<'static> = Artifact {
    file_name: "bigbench-1.0.0.tar.gz",
    url: concat!(
        "https://files.pythonhosted.org/packages/",
        "95/f8/c019b3579df548a04cac12342cfcb878e50ddf6cfcd7fddba8cfc721c157/",
        "bigbench-1.0.0.tar.gz",
    ),
    sha256: "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
};

pub(super) const WORDNET_DEB: Artifact<'static> = Artifact {
    file_name: "wordnet-base_3.0-37_all.deb",
    url: "https://deb.debian.org/debian/pool/main/w/wordnet/wordnet-base_3.0-37_all.deb",
    sha256: "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
};

/// How far a download has got; `total` is known when the server sends a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<'a> {
    pub file_name: &'a str,
    pub downloaded: u64,
    pub total: Option<u64>,
}

/// Progress is reported at most once per this many bytes (and at the end).
const PROGRESS_STEP: u64 = 1 << 20;

/// Returns the path of `artifact` in `cache_dir`, downloading it first unless a file with the
/// pinned hash is already there. A file there with another hash is replaced.
pub fn fetch_artifact(
    artifact: &Artifact<'_>,
    cache_dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf> {
    std::fs::create_dir_all(cache_dir).map_err(|source| DataError::Write {
        path: cache_dir.to_path_buf(),
        source,
    })?;
    let path = cache_dir.join(artifact.file_name);
    if path.exists() && sha256_of_file(&path)? == artifact.sha256 {
        return Ok(path);
    }
    let partial = cache_dir.join(format!("{}.part", artifact.file_name));
    let actual = download(artifact, &partial, progress)?;
    if actual != artifact.sha256 {
        // A corrupt partial file must not be resumed next time.
        let _ = std::fs::remove_file(&partial);
        return Err(DataError::Invalid(format!(
            "sha256 mismatch for {}: expected {}, got {}; the download was discarded. \
             If the registry really changed the file, the pinned hash in lincal-data must be \
             updated after checking it",
            artifact.url, artifact.sha256, actual
        )));
    }
    std::fs::rename(&partial, &path).map_err(|source| DataError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn sha256_of_file(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let file = File::open(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    std::io::copy(&mut BufReader::new(file), &mut hasher).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Downloads `artifact` into `partial`, resuming from what is already there, and returns the
/// sha256 of the complete file.
fn download(
    artifact: &Artifact<'_>,
    partial: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<String> {
    let network_error = |e: &dyn std::fmt::Display| {
        DataError::Invalid(format!(
            "cannot download {}: {e}. Without network access, \
             download it elsewhere and place it at {}",
            artifact.url,
            partial.with_file_name(artifact.file_name).display()
        ))
    };
    let write_error = |source| DataError::Write {
        path: partial.to_path_buf(),
        source,
    };
    let already = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    // The system's trust store rather than a bundled one, so that machines behind a
    // TLS-inspecting proxy can download; the pinned hash guarantees the content either way.
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::PlatformVerifier)
        .build();
    let mut request = ureq::get(artifact.url)
        .config()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build();
    if already > 0 {
        request = request.header("Range", format!("bytes={already}-"));
    }
    let mut response = request.call().map_err(|e| network_error(&e))?;
    let status = response.status().as_u16();
    let resumed = match status {
        206 => true,
        200 => false,
        // The partial file is already complete (or longer than the file): start over.
        416 => {
            std::fs::remove_file(partial).map_err(write_error)?;
            return download(artifact, partial, progress);
        }
        other => return Err(network_error(&format!("the server answered HTTP {other}"))),
    };
    let mut hasher = Sha256::new();
    let mut downloaded = 0;
    let mut out = if resumed {
        let mut existing = File::open(partial).map_err(write_error)?;
        std::io::copy(&mut existing, &mut hasher).map_err(write_error)?;
        downloaded = already;
        OpenOptions::new()
            .append(true)
            .open(partial)
            .map_err(write_error)?
    } else {
        File::create(partial).map_err(write_error)?
    };
    let remaining = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let total = remaining.map(|n| n + downloaded);
    let mut body = response.body_mut().as_reader();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut reported = downloaded;
    progress(Progress {
        file_name: artifact.file_name,
        downloaded,
        total,
    });
    loop {
        let n = body.read(&mut buffer).map_err(|e| network_error(&e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buffer[..n]).map_err(write_error)?;
        hasher.update(&buffer[..n]);
        downloaded += n as u64;
        if downloaded - reported >= PROGRESS_STEP {
            progress(Progress {
                file_name: artifact.file_name,
                downloaded,
                total,
            });
            reported = downloaded;
        }
    }
    out.sync_all().map_err(write_error)?;
    progress(Progress {
        file_name: artifact.file_name,
        downloaded,
        total,
    });
    Ok(hex(&hasher.finalize()))
}
