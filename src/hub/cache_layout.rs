//! The HF cache's layout (`{models,datasets}--org--name/{refs,snapshots,blobs}`), read
//! directly: where a repo's folder is, which commit a ref names, what a snapshot holds,
//! and, offline, which of those layers is missing when a file is not there. Models and
//! datasets share it, so both say the same thing about the same gap.

use std::path::{Path, PathBuf};

use super::options::HubOptions;

/// The two kinds of repo the cache holds, as its folder names spell them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RepoKind {
    Model,
    Dataset,
}

/// The cache folder of `repo`, as huggingface_hub names it.
pub(crate) fn repo_folder(cache: &Path, kind: RepoKind, repo: &str) -> PathBuf {
    let prefix = match kind {
        RepoKind::Model => "models",
        RepoKind::Dataset => "datasets",
    };
    cache.join(format!("{prefix}--{}", repo.replace('/', "--")))
}

/// The cache folder the options read: theirs, else the hub client's default.
pub(crate) fn cache_dir(opts: &HubOptions) -> PathBuf {
    opts.cache_dir.clone().unwrap_or_else(hf_hub::resolve_cache_dir)
}

/// A revision that is already a full commit sha.
fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit `revision` names in a cached repo's `folder`: itself when it is one,
/// else what its ref file holds (None where the cache has no such ref).
pub(crate) fn cached_commit(folder: &Path, revision: &str) -> Option<String> {
    if is_commit(revision) {
        return Some(revision.to_string());
    }
    let c = std::fs::read_to_string(folder.join("refs").join(revision)).ok()?;
    Some(c.trim().to_string())
}

/// Every file under a snapshot folder, by its path from there with `/` separators
/// (None where the snapshot, or a folder in it, cannot be read).
pub(crate) fn snapshot_files(snap: &Path) -> Option<Vec<String>> {
    let mut all = vec![];
    let mut stack = vec![snap.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(snap) {
                all.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    Some(all)
}

/// Offline, why something of `repo` at `revision` is not in the cache and what to do:
/// the repo, the ref or the commit's snapshot is not there (a download brings them), or
/// the snapshot is and lacks it (`lacking`, e.g. "none of this split" or "not
/// `config.json`"), naming what it does hold and what to check (`check`): a download
/// may not help when a name or revision is wrong.
pub(crate) fn absent_why(
    cache: &Path,
    kind: RepoKind,
    repo: &str,
    revision: &str,
    lacking: &str,
    check: &str,
) -> String {
    let folder = repo_folder(cache, kind, repo);
    let fetch = "run once with network access, or copy the HF cache here";
    if !folder.is_dir() {
        return format!("the repo is not in the cache; {fetch}");
    }
    let Some(commit) = cached_commit(&folder, revision) else {
        let mut refs: Vec<String> = std::fs::read_dir(folder.join("refs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        refs.sort();
        let refs = if refs.is_empty() {
            "none".to_string()
        } else {
            refs.join(", ")
        };
        return format!("the cache has no ref `{revision}` (it has: {refs}); {fetch}");
    };
    let snap = folder.join("snapshots").join(&commit);
    let Some(mut held) = snapshot_files(&snap) else {
        return format!("the snapshot of commit {commit} is not in the cache; {fetch}");
    };
    held.sort();
    let shown: Vec<&str> = held.iter().take(6).map(String::as_str).collect();
    format!(
        "its snapshot {commit} holds {} file(s), {lacking}{}: {check}, or {fetch}",
        held.len(),
        if shown.is_empty() {
            String::new()
        } else {
            format!(
                " ({}{})",
                shown.join(", "),
                if held.len() > 6 { ", ..." } else { "" }
            )
        }
    )
}
