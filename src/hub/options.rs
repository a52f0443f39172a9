//! How goosepipe talks to the Hugging Face hub: the cache folder, offline
//! mode, the silence limit and the endpoint; the client built from them.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use hf_hub::HFClient;

use super::error::{HubError, Result};

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
                let _ = writeln!(
                    std::io::stderr(),
                    "goosepipe: ignoring HF_HUB_DOWNLOAD_TIMEOUT={v:?} (not a positive number of seconds); the hub may stay silent for {} s",
                    DEFAULT.as_secs()
                );
            });
            DEFAULT
        }
    }
}

/// `org/name` -> (`org`, `name`).
pub fn parse_repo_id(repo_id: &str) -> Result<(&str, &str)> {
    match repo_id.split_once('/') {
        Some((org, name)) if !org.is_empty() && !name.is_empty() && !name.contains('/') => Ok((org, name)),
        _ => Err(HubError::Request(format!(
            "`{repo_id}` is not a repo id of the form `org/name`"
        ))),
    }
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
        .map_err(|e| HubError::Request(format!("cannot create the hub client: {e}")))
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
