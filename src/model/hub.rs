//! Resolving a Hugging Face repo id + revision to a local snapshot folder in
//! the standard HF cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`). The cache is always tried first with
//! `local_files_only`, so cached models work offline; network requests are
//! watched for silence (`hub_watch`), so an unreachable or stalled hub gives
//! an error, not a hang, and a large checkpoint may take as long as it takes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::{HFClient, HFError};

use super::error::{ModelError, Result};
pub use super::hub_watch::DownloadReport;
use super::hub_watch::watched;
use super::load::{PICKLE, SAFETENSORS, SAFETENSORS_INDEX, shard_names};

#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Overrides the cache folder (else the HF environment variables decide).
    pub cache_dir: Option<PathBuf>,
    /// Never touch the network.
    pub offline: bool,
    /// How long the hub may stay silent: before it answers a request, or
    /// between two pieces of a download. Not a bound on a whole download.
    pub timeout: Duration,
    /// The hub's address (else `HF_ENDPOINT`, else huggingface.co): a mirror,
    /// or a local server in tests.
    pub endpoint: Option<String>,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            cache_dir: None,
            // huggingface_hub's switch: set, the cache is all there is.
            offline: std::env::var("HF_HUB_OFFLINE")
                .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes")),
            timeout: silence_limit(std::env::var("HF_HUB_DOWNLOAD_TIMEOUT").ok().as_deref()),
            endpoint: None,
        }
    }
}

/// The silence limit: `HF_HUB_DOWNLOAD_TIMEOUT` (huggingface_hub's setting of
/// the same meaning, in seconds) when set, else 60 s; at least 1 ms. A value
/// that is not a positive number of seconds a `Duration` can hold is
/// reported once on stderr and not used.
fn silence_limit(env: Option<&str>) -> Duration {
    const DEFAULT: Duration = Duration::from_secs(60);
    let Some(v) = env else { return DEFAULT };
    match v
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
    {
        // A limit shorter than a millisecond would fail every request at once.
        Some(d) if !d.is_zero() => d.max(Duration::from_millis(1)),
        _ => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "goosepipe: ignoring HF_HUB_DOWNLOAD_TIMEOUT={v:?} (not a positive number of seconds); the hub may stay silent for {} s",
                    DEFAULT.as_secs()
                )
            });
            DEFAULT
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
    if let Some(url) = &opts.endpoint {
        b = b.endpoint(url.clone());
    }
    b.build_sync()
        .map_err(|e| ModelError::Hub(format!("cannot create the hub client: {e}")))
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
                return Err(ModelError::Hub(format!(
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
                    Err(e) => Err(e.to_string()),
                }
            })
        });
        let what = format!("{repo_id}@{revision}: `{file}` is not in the local cache and");
        match answer {
            Ok(Ok(Ok(f))) => Ok(f),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Err(e))) => Err(ModelError::Hub(format!("{what} downloading it failed: {e}"))),
            Err(silence) => Err(ModelError::Hub(format!("{what} {}", silence.explain()))),
        }
    }

    fn require(&self, file: &str, opts: &HubOptions) -> Result<PathBuf> {
        match self.fetch(file, opts)? {
            Fetch::Found(p) => Ok(p),
            Fetch::Absent => Err(ModelError::Hub(format!(
                "{}@{}: `{file}` is not in the local cache{}",
                self.id,
                self.revision,
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
    let config = repo.require("config.json", opts)?;
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
    let found = repo.find_weights(&offline, opts)? || (!opts.offline && repo.find_weights(opts, opts)?);
    if !found {
        return Err(ModelError::Hub(format!(
            "{repo_id}@{revision}: no {SAFETENSORS}, {SAFETENSORS_INDEX} or {PICKLE} found"
        )));
    }
    // The tokenizer is optional (training from scratch has none).
    let _ = repo.fetch("tokenizer.json", opts)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_silence_limit_follows_hf_hub_download_timeout() {
        assert_eq!(silence_limit(None), Duration::from_secs(60));
        assert_eq!(silence_limit(Some("2.5")), Duration::from_millis(2500));
        assert_eq!(silence_limit(Some(" 300 ")), Duration::from_secs(300));
        assert_eq!(silence_limit(Some("0.0001")), Duration::from_millis(1));
        for bad in ["", "ten", "0", "1e-12", "-1", "inf", "NaN", "1e20"] {
            assert_eq!(silence_limit(Some(bad)), Duration::from_secs(60), "{bad:?}");
        }
    }
}
