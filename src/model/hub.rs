//! Resolving a Hugging Face repo id + revision to a local snapshot folder in
//! the standard HF cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`). The cache is always tried first with
//! `local_files_only`, so cached models work offline; network downloads run
//! under a deadline so an unreachable hub gives an error, not a hang.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use hf_hub::{HFClient, HFError};

use super::error::{ModelError, Result};
use super::load::{PICKLE, SAFETENSORS, SAFETENSORS_INDEX, shard_names};

#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Overrides the cache folder (else the HF environment variables decide).
    pub cache_dir: Option<PathBuf>,
    /// Never touch the network.
    pub offline: bool,
    /// Upper bound for each network download.
    pub timeout: Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            cache_dir: None,
            // huggingface_hub's switch: set, the cache is all there is.
            offline: std::env::var("HF_HUB_OFFLINE")
                .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes")),
            timeout: Duration::from_secs(60),
        }
    }
}

/// `org/name` -> (`org`, `name`).
pub fn parse_repo_id(repo_id: &str) -> Result<(&str, &str)> {
    match repo_id.split_once('/') {
        Some((org, name)) if !org.is_empty() && !name.is_empty() && !name.contains('/') => Ok((org, name)),
        _ => Err(ModelError::Hub(format!(
            "`{repo_id}` is not a repo id of the form `org/name`"
        ))),
    }
}

enum Fetch {
    Found(PathBuf),
    Absent,
}

pub(crate) fn client(opts: &HubOptions) -> Result<hf_hub::HFClientSync> {
    let mut b = HFClient::builder().retry_max_attempts(1);
    if let Some(dir) = &opts.cache_dir {
        b = b.cache_dir(dir.clone());
    }
    b.build_sync()
        .map_err(|e| ModelError::Hub(format!("cannot create the hub client: {e}")))
}

/// One file: cache first, then (unless offline) the network under the deadline.
fn fetch(repo_id: &str, revision: &str, file: &str, opts: &HubOptions) -> Result<Fetch> {
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
            return Err(ModelError::Hub(format!(
                "{repo_id}@{revision}: reading `{file}` from the cache failed: {e}"
            )));
        }
    }
    if opts.offline {
        return Ok(Fetch::Absent);
    }
    let (tx, rx) = mpsc::channel();
    let (org, name, file_s, rev, o) = (
        org.to_owned(),
        name.to_owned(),
        file.to_owned(),
        revision.to_owned(),
        opts.clone(),
    );
    // The download runs on its own thread so that we can stop waiting for it;
    // if the deadline passes the thread is left to finish or fail on its own.
    std::thread::spawn(move || {
        let r = client(&o).map(|c| {
            match c
                .model(org, name)
                .download_file()
                .filename(file_s)
                .revision(rev)
                .send()
            {
                Ok(p) => Ok(Fetch::Found(p)),
                Err(HFError::EntryNotFound { .. }) => Ok(Fetch::Absent),
                Err(e) => Err(e.to_string()),
            }
        });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(opts.timeout) {
        Ok(Ok(Ok(f))) => Ok(f),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Err(e))) => Err(ModelError::Hub(format!(
            "{repo_id}@{revision}: `{file}` is not in the local cache and downloading it failed: {e}"
        ))),
        Err(_) => Err(ModelError::Hub(format!(
            "{repo_id}@{revision}: `{file}` is not in the local cache and the hub did not answer within {} s",
            opts.timeout.as_secs()
        ))),
    }
}

fn require(repo_id: &str, revision: &str, file: &str, opts: &HubOptions) -> Result<PathBuf> {
    match fetch(repo_id, revision, file, opts)? {
        Fetch::Found(p) => Ok(p),
        Fetch::Absent => Err(ModelError::Hub(format!(
            "{repo_id}@{revision}: `{file}` is not in the local cache{}",
            if opts.offline {
                " (offline)"
            } else {
                " nor on the hub"
            }
        ))),
    }
}

/// Looks for single, sharded or pickle weights with `pass`'s network policy;
/// shards of an index are then required under `opts`.
fn find_weights(repo_id: &str, revision: &str, pass: &HubOptions, opts: &HubOptions) -> Result<bool> {
    if let Fetch::Found(_) = fetch(repo_id, revision, SAFETENSORS, pass)? {
        return Ok(true);
    }
    if let Fetch::Found(index) = fetch(repo_id, revision, SAFETENSORS_INDEX, pass)? {
        for shard in shard_names(&index)? {
            require(repo_id, revision, &shard, opts)?;
        }
        return Ok(true);
    }
    Ok(matches!(fetch(repo_id, revision, PICKLE, pass)?, Fetch::Found(_)))
}

/// Makes the model folder of `repo_id` at `revision` (branch, tag or commit)
/// available locally and returns the snapshot folder that holds `config.json`,
/// the weights (single, sharded or pickle) and `tokenizer.json` when the repo has one.
pub fn resolve_model(repo_id: &str, revision: &str, opts: &HubOptions) -> Result<PathBuf> {
    let config = require(repo_id, revision, "config.json", opts)?;
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| ModelError::Hub(format!("odd cache path {}", config.display())))?;
    // Cached copies first for every candidate, so an offline cache with a
    // pickle checkpoint does not trigger network lookups for safetensors.
    let offline = HubOptions {
        offline: true,
        ..opts.clone()
    };
    let found = find_weights(repo_id, revision, &offline, opts)?
        || (!opts.offline && find_weights(repo_id, revision, opts, opts)?);
    if !found {
        return Err(ModelError::Hub(format!(
            "{repo_id}@{revision}: no {SAFETENSORS}, {SAFETENSORS_INDEX} or {PICKLE} found"
        )));
    }
    // The tokenizer is optional (training from scratch has none).
    let _ = fetch(repo_id, revision, "tokenizer.json", opts)?;
    Ok(dir)
}
