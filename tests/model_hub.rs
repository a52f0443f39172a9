//! Resolving a repo id through a local folder laid out as the HF cache
//! (`models--org--name/{refs,snapshots,blobs}`), with `HF_HUB_CACHE` pointed
//! at it; and a bounded, clear failure when the hub cannot be reached.
//! One test function, because it sets process-wide environment variables.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use goosepipe::app::score::{ScoreRequest, score};
use goosepipe::hub::{HubOptions, resolve_model};
use goosepipe::model::T5Model;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/t5")
        .join(name)
}

fn make_cache(cache: &Path) {
    let repo = cache.join("models--goosepipe--tiny-t5");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    let snap = repo.join("snapshots").join(SHA);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(repo.join("refs/main"), SHA).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        let bytes = std::fs::read(fixture("v1_1").join(f)).unwrap();
        let etag = blake3::hash(&bytes).to_hex().to_string();
        std::fs::write(repo.join("blobs").join(&etag), bytes).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{etag}"), snap.join(f)).unwrap();
    }
}

#[test]
fn hub_resolution_uses_the_hf_cache_and_fails_fast_without_network() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    make_cache(&cache);
    // SAFETY: this test binary has a single test, so no other thread reads the
    // environment concurrently.
    unsafe {
        std::env::set_var("HF_HUB_CACHE", &cache);
        // Nothing listens on the discard port of the loopback address.
        std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
        std::env::remove_var("HF_HOME");
    }
    let opts = HubOptions {
        timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let dir = resolve_model("goosepipe/tiny-t5", "main", &opts).unwrap();
    assert!(dir.ends_with(SHA), "{}", dir.display());
    let by_sha = resolve_model("goosepipe/tiny-t5", SHA, &opts).unwrap();
    assert_eq!(dir, by_sha);
    let a = T5Model::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let b = T5Model::load(&fixture("v1_1"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(a.config, b.config);

    // The score entry point accepts a repo id.
    let mut req = ScoreRequest::new("goosepipe/tiny-t5", "the cat", "yes");
    req.hub = opts.clone();
    let via_hub = score(&req).unwrap();
    let local = score(&ScoreRequest::new(
        fixture("v1_1").to_str().unwrap(),
        "the cat",
        "yes",
    ))
    .unwrap();
    assert_eq!(via_hub.total, local.total);

    // Offline and not cached: a clear error, no network.
    let offline = HubOptions {
        offline: true,
        ..opts.clone()
    };
    let err = resolve_model("goosepipe/absent", "main", &offline)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("goosepipe/absent") && err.contains("not in the local cache"),
        "{err}"
    );

    // Online but the hub is unreachable: an error within the time bound.
    let t0 = Instant::now();
    let err = resolve_model("goosepipe/absent", "main", &opts)
        .unwrap_err()
        .to_string();
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
    assert!(
        err.contains("goosepipe/absent") && err.contains("config.json"),
        "{err}"
    );

    assert!(resolve_model("not-a-repo-id", "main", &opts).is_err());
}
