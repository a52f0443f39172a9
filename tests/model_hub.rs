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
    cache_repo(
        cache,
        "models--goosepipe--tiny-t5",
        &fixture("v1_1"),
        &["config.json", "model.safetensors", "tokenizer.json"],
    );
    // A PEFT adapter repo (the pickle-stored fixture, as older repos are).
    let peft = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft/bin");
    cache_repo(
        cache,
        "models--goosepipe--tiny-peft",
        &peft,
        &["adapter_config.json", "adapter_model.bin"],
    );
}

fn cache_repo(cache: &Path, folder: &str, from: &Path, files: &[&str]) {
    let repo = cache.join(folder);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    let snap = repo.join("snapshots").join(SHA);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(repo.join("refs/main"), SHA).unwrap();
    for f in files {
        let bytes = std::fs::read(from.join(f)).unwrap();
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
        err.contains("goosepipe/absent")
            && err.contains("not in the local cache at")
            && err.contains("(offline: the repo is not in the cache; run once with network access"),
        "{err}"
    );
    // Offline errors name the layer of the cache that is missing: the ref, the
    // commit's snapshot, or the file in a snapshot that holds others.
    let err = resolve_model("goosepipe/tiny-t5", "v2", &offline)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the cache has no ref `v2` (it has: main)"), "{err}");
    let other = "fedcba9876543210fedcba9876543210fedcba98";
    let err = resolve_model("goosepipe/tiny-t5", other, &offline)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("the snapshot of commit {other} is not in the cache")),
        "{err}"
    );
    cache_repo(
        &cache,
        "models--goosepipe--half-t5",
        &fixture("v1_1"),
        &["config.json", "tokenizer.json"],
    );
    let err = resolve_model("goosepipe/half-t5", "main", &offline)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no model.safetensors, model.safetensors.index.json or pytorch_model.bin found at")
            && err.contains(&format!(
                "its snapshot {SHA} holds 2 file(s), none of the weights (config.json, tokenizer.json)"
            )),
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

    // A PEFT adapter from the cache, offline: resolved, and imported by a pipeline
    // whose lockfile pins the commit.
    let adapter = goosepipe::hub::resolve_adapter("goosepipe/tiny-peft", "main", &offline, None).unwrap();
    assert!(adapter.ends_with(SHA) && adapter.join("adapter_model.bin").is_file());
    let err = goosepipe::hub::resolve_adapter("goosepipe/tiny-t5", "main", &offline, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter_config.json"), "{err}");
    let project = tmp.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let rows: String = (0..16)
        .map(|i| format!("{{\"q\": \"the cat sat {i}\", \"a\": \"yes\"}}\n"))
        .collect();
    std::fs::write(project.join("d.jsonl"), rows).unwrap();
    std::fs::write(
        project.join("hub.kdl"),
        r#"
model "t" hub="goosepipe/tiny-t5"
dataset "d" path="d.jsonl" input-field="q" target-field="a"
expert "x" model="t" dataset="d" peft-hub="goosepipe/tiny-peft" {
    gate steps=1 batch=4 micro-batch=4 dropout=0.0
}
"#,
    )
    .unwrap();
    unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    let run_code = |manifest: &str| {
        let mut out = Vec::new();
        let code = goosepipe::app::run(
            &project.join(manifest),
            &project.join("store"),
            &goosepipe::steps::registry(),
            &goosepipe::exec::RunOptions::default(),
            true,
            &goosepipe::exec::CancelFlag::new(),
            &mut out,
        )
        .unwrap();
        (code, String::from_utf8_lossy(&out).to_string())
    };
    let run = |manifest: &str| {
        let (code, said) = run_code(manifest);
        assert_eq!(code, 0, "{said}");
    };
    run("hub.kdl");
    let lock = std::fs::read_to_string(project.join("hub.kdl.lock")).unwrap_or_else(|_| {
        let names: Vec<_> = std::fs::read_dir(&project)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        panic!("no lockfile among {names:?}")
    });
    assert!(
        lock.contains(&format!(
            "external \"hub:peft:goosepipe/tiny-peft@main\" resolved=\"{SHA}\""
        )),
        "{lock}"
    );

    // The repo ships the gate trained above (as `goosepipe export` writes it): with
    // peft-gate=#true it is read from the cache, the expert needs no dataset (the
    // snapshot held the adapter's files only, and the gate step found no gate).
    let store = goosepipe::store::Store::open(project.join("store")).unwrap();
    let gate_key = store.find("gate:x").unwrap().key;
    let cfg = T5Model::load(&dir, &Device::Cpu, DType::F32).unwrap().config;
    let gates = goosepipe::model::GateVectors::load(
        &store
            .files_dir(&gate_key)
            .join(goosepipe::artifact_files::GATES_FILE),
        &cfg,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let expert = goosepipe::model::LoraExpert::load(
        &store
            .files_dir(&store.find("expert:x").unwrap().key)
            .join(goosepipe::artifact_files::EXPERT_FILE),
        &cfg,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let exported = tmp.path().join("exported");
    goosepipe::model::checkpoint::peft::export(&expert, Some(&gates), &cfg, None, &exported).unwrap();
    cache_repo(
        &cache,
        "models--goosepipe--tiny-peft",
        &exported,
        &[goosepipe::model::checkpoint::peft::GATES_FILE],
    );
    std::fs::write(
        project.join("shipped.kdl"),
        "model \"t\" hub=\"goosepipe/tiny-t5\"\nexpert \"y\" model=\"t\" peft-hub=\"goosepipe/tiny-peft\" peft-gate=#true\n",
    )
    .unwrap();
    run("shipped.kdl");
    let read = goosepipe::model::GateVectors::load(
        &store
            .files_dir(&store.find("gate:y").unwrap().key)
            .join(goosepipe::artifact_files::GATES_FILE),
        &cfg,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let values = |g: &goosepipe::model::GateVectors| -> Vec<Vec<f32>> {
        g.gates.values().map(|t| t.to_vec1::<f32>().unwrap()).collect()
    };
    assert_eq!(values(&read), values(&gates));

    // A cached model without tokenizer.json fails as the model step, saying so (it
    // was published, and the tokenize step after it failed on a missing file).
    cache_repo(
        &cache,
        "models--goosepipe--notok",
        &fixture("v1_1"),
        &["config.json", "model.safetensors"],
    );
    std::fs::write(
        project.join("notok.kdl"),
        "model \"t\" hub=\"goosepipe/notok\"\ndataset \"d\" path=\"d.jsonl\" input-field=\"q\" target-field=\"a\"\nexpert \"x\" model=\"t\" dataset=\"d\"\n",
    )
    .unwrap();
    let (code, said) = run_code("notok.kdl");
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("model:t: ") && said.contains("has no tokenizer.json in the local cache (offline)"),
        "{said}"
    );
}
