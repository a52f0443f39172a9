//! Artifact metadata: what the store keeps beside each artifact's files.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::key::Key;
use super::spec::StepSpec;

pub const META_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the artifact's `files/` folder, with `/` separators.
    pub path: String,
    pub size: u64,
    pub blake3: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactMeta {
    pub format: u32,
    pub key: Key,
    pub spec: StepSpec,
    pub files: Vec<FileEntry>,
    /// blake3 over the sorted file list (path, size, hash): the artifact's identity.
    pub digest: String,
    /// External identities resolved while running (e.g. hub revision -> commit).
    pub pins: BTreeMap<String, String>,
    /// What set the last bits of its floating-point results (`process::numerics`: the
    /// device and the CPU's vector level). None in artifacts built before it was
    /// recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerics: Option<String>,
    pub tool_version: String,
    pub host: String,
    pub started_unix: f64,
    pub finished_unix: f64,
}

impl ArtifactMeta {
    /// The recorded blake3 of the artifact's file `path` (relative to `files/`).
    pub fn file_blake3(&self, path: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|f| f.path == path)
            .map(|f| f.blake3.as_str())
    }

    pub fn seconds(&self) -> f64 {
        self.finished_unix - self.started_unix
    }
}

/// The digest of a file list, order-independent.
pub fn digest_of(files: &[FileEntry]) -> String {
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut h = blake3::Hasher::new();
    h.update(b"goosepipe-artifact-v1\n");
    for f in sorted {
        h.update(f.path.as_bytes());
        h.update(b"\0");
        h.update(f.size.to_string().as_bytes());
        h.update(b"\0");
        h.update(f.blake3.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

/// The digest of an artifact's files but those in `leave_out` (provenance no
/// consumer reads): what early cutoff keys consumers on. Same form as [`digest_of`].
pub fn content_digest(files: &[FileEntry], leave_out: &[&str]) -> String {
    let kept: Vec<FileEntry> = files
        .iter()
        .filter(|f| !leave_out.contains(&f.path.as_str()))
        .cloned()
        .collect();
    digest_of(&kept)
}

/// Lists and hashes every file below `dir` (the artifact payload).
pub fn scan_files(dir: &Path) -> std::io::Result<Vec<FileEntry>> {
    let mut out = vec![];
    for (rel, p, ft) in payload_entries(dir)? {
        if ft.is_file() {
            out.push(FileEntry {
                path: rel,
                size: std::fs::metadata(&p)?.len(),
                blake3: super::hashing::hash_file(&p)?.to_hex().to_string(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Every entry below `dir` that is not a folder: its path relative to `dir` written
/// with `/` (as an artifact records its files), its full path and its type.
pub fn payload_entries(dir: &Path) -> std::io::Result<Vec<(String, std::path::PathBuf, std::fs::FileType)>> {
    let mut out = vec![];
    walk(dir, dir, &mut out)?;
    Ok(out)
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, std::path::PathBuf, std::fs::FileType)>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let p = entry.path();
        if ft.is_dir() {
            walk(root, &p, out)?;
        } else {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect::<Vec<_>>()
                .join("/");
            out.push((rel, p, ft));
        }
    }
    Ok(())
}

/// UTC time as RFC 3339 (seconds), without a date-time dependency.
pub fn format_unix(t: f64) -> String {
    let secs = t.floor() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days -> civil date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(format_unix(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(1_795_000_000.0), "2026-11-18T11:06:40Z");
    }
}
