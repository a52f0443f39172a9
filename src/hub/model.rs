//! Resolving a Hugging Face repo id + revision to a local snapshot folder in
//! the standard HF cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`). The cache is always tried first with
//! `local_files_only`, so cached models work offline; network requests are
//! watched for silence (`hub::watch`), so an unreachable or stalled hub gives
//! an error, not a hang, and a large checkpoint may take as long as it takes.

use std::path::{Path, PathBuf};

use hf_hub::HFError;

use super::cache_layout::{RepoKind, absent_why, cache_dir};
use super::error::{HubError, Result};
use super::options::{HubOptions, client, parse_repo_id};
use super::watch::{DownloadReport, watched};
use super::weight_files::{
    ADAPTER_CONFIG, ADAPTER_PICKLE, ADAPTER_SAFETENSORS, PICKLE, SAFETENSORS, SAFETENSORS_INDEX, shard_names,
};

/// Whether a file is in the repo (and where it landed).
enum Fetch {
    Found(PathBuf),
    Absent,
}

/// One repo at one revision, as the resolution below walks its files.
struct Repo<'a> {
    id: &'a str,
    revision: &'a str,
    report: Option<&'a DownloadReport<'a>>,
}

impl Repo<'_> {
    /// One file: cache first, then (unless offline) the network, watched for silence.
    fn fetch(&self, file: &str, opts: &HubOptions) -> Result<Fetch> {
        let (repo_id, revision) = (self.id, self.revision);
        let (org, name) = parse_repo_id(repo_id)?;
        let cached = client(opts)?
            .model(org, name)
            .download_file()
            .filename(file)
            .revision(revision)
            .local_files_only(true)
            .send();
        match cached {
            Ok(p) => return Ok(Fetch::Found(p)),
            Err(HFError::LocalEntryNotFound { .. }) => {}
            Err(e) => {
                return Err(HubError::Request(format!(
                    "{repo_id}@{revision}: reading `{file}` from the cache failed: {e}"
                )));
            }
        }
        if opts.offline {
            return Ok(Fetch::Absent);
        }
        let (org, name, file_s, rev, o) = (
            org.to_owned(),
            name.to_owned(),
            file.to_owned(),
            revision.to_owned(),
            opts.clone(),
        );
        let answer = watched(opts.timeout, self.report.map(|r| (file, r)), move |progress| {
            client(&o).map(|c| {
                match c
                    .model(org, name)
                    .download_file()
                    .filename(file_s)
                    .revision(rev)
                    .progress(progress)
                    .send()
                {
                    Ok(p) => Ok(Fetch::Found(p)),
                    Err(HFError::EntryNotFound { .. }) => Ok(Fetch::Absent),
                    Err(e) => Err(super::error::with_causes(&e)),
                }
            })
        });
        let what = format!("{repo_id}@{revision}: `{file}` is not in the local cache and");
        match answer {
            Ok(Ok(Ok(f))) => Ok(f),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Err(e))) => Err(HubError::Request(format!("{what} downloading it failed: {e}"))),
            Err(silence) => Err(HubError::Request(format!("{what} {}", silence.explain()))),
        }
    }

    fn require(&self, file: &str, opts: &HubOptions) -> Result<PathBuf> {
        match self.fetch(file, opts)? {
            Fetch::Found(p) => Ok(p),
            Fetch::Absent => Err(HubError::Request(format!(
                "{}@{}: `{file}` is not in the local cache{}",
                self.id,
                self.revision,
                if opts.offline {
                    self.offline_gap(opts, &format!("not `{file}`"))
                } else {
                    " nor on the hub".into()
                }
            ))),
        }
    }

    /// Offline, which layer of the cache lacks what was looked for (the repo, the
    /// ref, the commit's snapshot, or the file in it), as ` at CACHE (offline: ...)`;
    /// nothing when the hub was asked too.
    fn offline_gap(&self, opts: &HubOptions, lacking: &str) -> String {
        if !opts.offline {
            return String::new();
        }
        let cache = cache_dir(opts);
        let why = absent_why(
            &cache,
            RepoKind::Model,
            self.id,
            self.revision,
            lacking,
            "the repo may not have it at this revision",
        );
        format!(" at {} (offline: {why})", cache.display())
    }

    /// Looks for single, sharded or pickle weights with `pass`'s network policy;
    /// shards of an index are then required under `opts`.
    fn find_weights(&self, pass: &HubOptions, opts: &HubOptions) -> Result<bool> {
        if let Fetch::Found(_) = self.fetch(SAFETENSORS, pass)? {
            return Ok(true);
        }
        if let Fetch::Found(index) = self.fetch(SAFETENSORS_INDEX, pass)? {
            for shard in shard_names(&index)? {
                self.require(&shard, opts)?;
            }
            return Ok(true);
        }
        Ok(matches!(self.fetch(PICKLE, pass)?, Fetch::Found(_)))
    }
}

/// The snapshot folder a cached file lies in.
fn snapshot_of(file: &Path) -> Result<PathBuf> {
    file.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| HubError::Request(format!("odd cache path {}", file.display())))
}

/// `opts` without the network: for looking at cached copies first.
fn cache_only(opts: &HubOptions) -> HubOptions {
    HubOptions {
        offline: true,
        ..opts.clone()
    }
}

/// Makes the model folder of `repo_id` at `revision` (branch, tag or commit)
/// available locally and returns the snapshot folder that holds `config.json`,
/// the weights (single, sharded or pickle) and `tokenizer.json` when the repo has one.
pub fn resolve_model(repo_id: &str, revision: &str, opts: &HubOptions) -> Result<PathBuf> {
    resolve_model_reporting(repo_id, revision, opts, None)
}

/// [`resolve_model`], telling `report` how each download is going (a step's
/// progress bar: an 11 GB checkpoint takes minutes).
pub fn resolve_model_reporting(
    repo_id: &str,
    revision: &str,
    opts: &HubOptions,
    report: Option<&DownloadReport<'_>>,
) -> Result<PathBuf> {
    let repo = Repo {
        id: repo_id,
        revision,
        report,
    };
    let dir = snapshot_of(&repo.require("config.json", opts)?)?;
    // Cached copies first for every candidate, so an offline cache with a
    // pickle checkpoint does not trigger network lookups for safetensors.
    let offline = cache_only(opts);
    let found = repo.find_weights(&offline, opts)? || (!opts.offline && repo.find_weights(opts, opts)?);
    if !found {
        return Err(HubError::Request(format!(
            "{repo_id}@{revision}: no {SAFETENSORS}, {SAFETENSORS_INDEX} or {PICKLE} found{}",
            repo.offline_gap(opts, "none of the weights")
        )));
    }
    // The tokenizer is optional (training from scratch has none).
    let _ = repo.fetch("tokenizer.json", opts)?;
    Ok(dir)
}

/// Makes the PEFT adapter of `repo_id` at `revision` available locally (cache first,
/// as [`resolve_model`]) and returns the snapshot folder holding `adapter_config.json`
/// and its weights (`adapter_model.safetensors`, else `adapter_model.bin`).
pub fn resolve_adapter(
    repo_id: &str,
    revision: &str,
    opts: &HubOptions,
    report: Option<&DownloadReport<'_>>,
) -> Result<PathBuf> {
    resolve_adapter_with(repo_id, revision, opts, report, &[])
}

/// [`resolve_adapter`], also fetching the optional files `extra` of the repo (a gate
/// file the adapter ships: the snapshot holds only what was asked for).
pub fn resolve_adapter_with(
    repo_id: &str,
    revision: &str,
    opts: &HubOptions,
    report: Option<&DownloadReport<'_>>,
    extra: &[&str],
) -> Result<PathBuf> {
    let repo = Repo {
        id: repo_id,
        revision,
        report,
    };
    let dir = snapshot_of(&repo.require(ADAPTER_CONFIG, opts)?)?;
    for file in extra {
        let _ = repo.fetch(file, opts)?;
    }
    let offline = cache_only(opts);
    for pass in [&offline, opts] {
        for file in [ADAPTER_SAFETENSORS, ADAPTER_PICKLE] {
            if let Fetch::Found(_) = repo.fetch(file, pass)? {
                return Ok(dir);
            }
        }
        if opts.offline {
            break;
        }
    }
    Err(HubError::Request(format!(
        "{repo_id}@{revision}: {ADAPTER_CONFIG} but no {ADAPTER_SAFETENSORS} or {ADAPTER_PICKLE}{}",
        repo.offline_gap(opts, "none of the adapter's weights")
    )))
}

/// A local folder if `model` is one, else a hub repo id resolved through the cache.
pub fn resolve_model_dir(model: &str, revision: &str, hub: &HubOptions) -> Result<PathBuf> {
    let p = Path::new(model);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    // Spelled as a path (a hub id is `org/name`, never absolute or dotted): say so.
    // A file or anything else here under that name is what was meant, too.
    let path_like = model.starts_with(['/', '.', '~']) || model.matches('/').count() > 1 || p.exists();
    if path_like {
        let what = if p.exists() {
            "is not a folder"
        } else {
            "does not exist"
        };
        return Err(HubError::Request(format!(
            "model folder {model} {what} (a local model is a folder with config.json, the weights and tokenizer.json; a hub model is `org/name`)"
        )));
    }
    // `org/name` may also be a relative folder the user mistyped: when the hub cannot
    // answer either, say both places were looked at.
    resolve_model(model, revision, hub).map_err(|e| match e {
        HubError::Request(m) if model.contains('/') => HubError::Request(format!(
            "{m} (nor is there a folder {model} here, in {})",
            std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "the working folder".into())
        )),
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file here under a bare name was taken for a malformed hub id (`org/name`);
    /// it is said as the file it is. (Tests run in the package root.)
    #[test]
    fn a_file_here_given_as_the_model_is_said_as_a_file() {
        let hub = HubOptions {
            offline: true,
            ..HubOptions::default()
        };
        let e = resolve_model_dir("Cargo.toml", "main", &hub)
            .unwrap_err()
            .to_string();
        assert!(e.contains("model folder Cargo.toml is not a folder"), "{e}");
    }
}
