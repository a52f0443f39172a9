//! Downloads from the hub are watched for silence, not bounded in total: a
//! download that keeps delivering may take far longer than the limit (an
//! 11 GB checkpoint does), while a hub that never answers, or stops sending
//! in the middle of a file, gives an error within about the limit. Against a
//! local HTTP server that speaks the part of the hub protocol hf-hub uses
//! (HEAD and GET on `resolve/`, the `tree` listing), paced by the test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use goosepipe::hub::dataset::{SplitFiles, split_files_reporting};
use goosepipe::hub::{HubOptions, resolve_model, resolve_model_reporting};
use goosepipe::model::T5Model;

const SHA: &str = "89abcdef0123456789abcdef0123456789abcdef";
/// The silence limit of every test; the server's pauses are set against it.
const LIMIT: Duration = Duration::from_millis(800);

#[derive(Clone, Copy)]
enum Pace {
    /// Every body in 6 pieces, 250 ms apart: 1.25 s of steady progress per
    /// file, longer than the limit.
    Trickle,
    /// Headers and the first piece of a body, then nothing.
    StallInBody,
    /// Files whose path ends so: headers and the first piece, then nothing
    /// for 2 s, then the connection closes. Other files in one piece.
    StallIn(&'static str),
    /// Reads the request and never answers.
    Mute,
}

struct FakeHub {
    /// URL path (after the host) -> body.
    files: HashMap<String, Vec<u8>>,
    /// URL path prefix -> JSON of a `tree` listing.
    trees: HashMap<String, String>,
    pace: Pace,
}

impl FakeHub {
    fn serve(self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hub = Arc::new(self);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let hub = Arc::clone(&hub);
                std::thread::spawn(move || hub.answer(conn));
            }
        });
        url
    }

    fn answer(&self, mut conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                break;
            }
        }
        if let Pace::Mute = self.pace {
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        let path = target.split('?').next().unwrap_or("").to_string();
        let head = |status: &str, len: usize, extra: &str| {
            format!(
                "HTTP/1.1 {status}\r\nX-Repo-Commit: {SHA}\r\n{extra}Content-Length: {len}\r\nConnection: close\r\n\r\n"
            )
        };
        if let Some(json) = self.trees.get(&path) {
            let _ =
                conn.write_all(head("200 OK", json.len(), "Content-Type: application/json\r\n").as_bytes());
            let _ = conn.write_all(json.as_bytes());
            return;
        }
        let Some(body) = self.files.get(&path) else {
            let _ = conn.write_all(head("404 Not Found", 0, "X-Error-Code: EntryNotFound\r\n").as_bytes());
            return;
        };
        let etag = format!("ETag: \"{}\"\r\n", blake3::hash(body).to_hex());
        let _ = conn.write_all(head("200 OK", body.len(), &etag).as_bytes());
        if method == "HEAD" {
            return;
        }
        let pieces = match self.pace {
            Pace::StallIn(end) if !path.ends_with(end) => 1,
            _ => 6,
        };
        for (i, chunk) in body.chunks(body.len().div_ceil(pieces).max(1)).enumerate() {
            if i > 0 {
                match self.pace {
                    Pace::StallInBody => {
                        std::thread::sleep(Duration::from_secs(30));
                        return;
                    }
                    Pace::StallIn(_) => {
                        std::thread::sleep(Duration::from_secs(2));
                        return;
                    }
                    _ => std::thread::sleep(Duration::from_millis(250)),
                }
            }
            if conn.write_all(chunk).and_then(|_| conn.flush()).is_err() {
                return;
            }
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/t5")
        .join(name)
}

/// A model repo `goosepipe/far-t5` with the tiny T5.1.1 fixture's files.
fn model_hub(pace: Pace) -> FakeHub {
    repo_of(
        "goosepipe/far-t5",
        "v1_1",
        &["config.json", "model.safetensors", "tokenizer.json"],
        pace,
    )
}

/// Model repo `repo` serving `files` of fixture folder `folder` at `main`.
fn repo_of(repo: &str, folder: &str, files: &[&str], pace: Pace) -> FakeHub {
    let files = files
        .iter()
        .map(|f| {
            (
                format!("/{repo}/resolve/main/{f}"),
                std::fs::read(fixture(folder).join(f)).unwrap(),
            )
        })
        .collect();
    FakeHub {
        files,
        trees: HashMap::new(),
        pace,
    }
}

fn options(endpoint: String, cache: &std::path::Path) -> HubOptions {
    HubOptions {
        cache_dir: Some(cache.to_path_buf()),
        offline: false,
        timeout: LIMIT,
        endpoint: Some(endpoint),
    }
}

#[test]
fn a_steady_download_may_outlast_the_silence_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(model_hub(Pace::Trickle).serve(), tmp.path());
    let t0 = Instant::now();
    let seen = std::cell::RefCell::new(Vec::new());
    let report =
        |file: &str, bytes: u64, total: u64| seen.borrow_mut().push((file.to_string(), bytes, total));
    let dir = resolve_model_reporting("goosepipe/far-t5", "main", &opts, Some(&report)).unwrap();
    // Three files of 1.25 s each: far past a limit of 0.8 s in total.
    assert!(t0.elapsed() > LIMIT * 3, "took only {:?}", t0.elapsed());
    // About once a second, each download said how far it was.
    let seen = seen.into_inner();
    assert!(seen.len() >= 2, "{seen:?}");
    for (file, bytes, total) in &seen {
        let size = std::fs::metadata(fixture("v1_1").join(file)).unwrap().len();
        assert!(
            *total == size && *bytes <= size,
            "{file}: {bytes} of {total}, size {size}"
        );
    }
    assert!(dir.ends_with(SHA), "{}", dir.display());
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(fixture("v1_1").join(f)).unwrap(),
            "{f}"
        );
    }
    let got = T5Model::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let want = T5Model::load(&fixture("v1_1"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(got.config, want.config);

    // Now cached: no server needed.
    let offline = HubOptions {
        offline: true,
        endpoint: Some("http://127.0.0.1:9".into()),
        ..opts
    };
    assert_eq!(resolve_model("goosepipe/far-t5", "main", &offline).unwrap(), dir);
}

#[test]
fn a_repo_with_only_a_pickle_checkpoint_and_no_tokenizer_resolves_and_loads() {
    // The layout of google/t5-xl-lm-adapt's main branch: config.json and
    // pytorch_model.bin; the safetensors candidates and tokenizer.json are 404s.
    let tmp = tempfile::tempdir().unwrap();
    let hub = repo_of(
        "google/pickle-t5",
        "orig_bin",
        &["config.json", "pytorch_model.bin"],
        Pace::Trickle,
    );
    let opts = options(hub.serve(), tmp.path());
    let dir = resolve_model("google/pickle-t5", "main", &opts).unwrap();
    assert!(dir.ends_with(SHA), "{}", dir.display());
    assert!(!dir.join("model.safetensors").exists() && !dir.join("tokenizer.json").exists());
    let got = T5Model::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let want = T5Model::load(&fixture("orig"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(got.config, want.config);
}

/// Resolving `goosepipe/far-t5` against a hub of this pace: its error, which
/// must come within a few limits.
fn model_error_within_the_limit(pace: Pace) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(model_hub(pace).serve(), tmp.path());
    let t0 = Instant::now();
    let err = resolve_model("goosepipe/far-t5", "main", &opts)
        .unwrap_err()
        .to_string();
    assert!(t0.elapsed() < LIMIT * 4, "took {:?}", t0.elapsed());
    err
}

#[test]
fn a_download_that_stops_midway_fails_within_the_limit() {
    let err = model_error_within_the_limit(Pace::StallInBody);
    assert!(
        err.contains("goosepipe/far-t5@main: `config.json` is not in the local cache and the download stalled: no data for 0.8 s after"),
        "{err}"
    );
}

#[test]
fn a_hub_that_never_answers_fails_within_the_limit() {
    let err = model_error_within_the_limit(Pace::Mute);
    assert!(
        err.ends_with("goosepipe/far-t5@main: `config.json` is not in the local cache and the hub did not answer within 0.8 s"),
        "{err}"
    );
}

/// A dataset repo `org/far-ds` with parquet files for split `train` of
/// config `cfg` (the bytes need not be parquet: the hub layer only finds files).
fn data_hub(pace: Pace, files: &[(&str, &[u8])]) -> FakeHub {
    let entries: Vec<String> = files
        .iter()
        .map(|(f, body)| {
            format!(
                r#"{{"type":"file","oid":"1","size":{},"path":"{f}"}}"#,
                body.len()
            )
        })
        .collect();
    FakeHub {
        files: files
            .iter()
            .map(|(f, body)| (format!("/datasets/org/far-ds/resolve/main/{f}"), body.to_vec()))
            .collect(),
        trees: HashMap::from([(
            "/api/datasets/org/far-ds/tree/main".to_string(),
            format!("[{}]", entries.join(",")),
        )]),
        pace,
    }
}

fn split(
    opts: &HubOptions,
    report: Option<&goosepipe::hub::DownloadReport<'_>>,
) -> Result<SplitFiles, String> {
    split_files_reporting("org/far-ds", "main", Some("cfg"), "train", opts, report).map_err(|e| e.to_string())
}

#[test]
fn dataset_files_are_downloaded_under_the_same_watch() {
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let file = "cfg/train/0000.parquet";
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(data_hub(Pace::Trickle, &[(file, &body)]).serve(), tmp.path());
    let t0 = Instant::now();
    let seen = std::cell::RefCell::new(Vec::new());
    let report =
        |file: &str, bytes: u64, total: u64| seen.borrow_mut().push((file.to_string(), bytes, total));
    let got = split(&opts, Some(&report)).unwrap();
    assert!(t0.elapsed() > LIMIT, "took only {:?}", t0.elapsed());
    let seen = seen.into_inner();
    assert!(!seen.is_empty(), "no progress report");
    assert!(
        seen.iter().all(|(f, b, t)| f == file && *b <= 3000 && *t == 3000),
        "{seen:?}"
    );
    assert_eq!(got.commit, SHA);
    assert_eq!(got.files.len(), 1);
    assert_eq!(std::fs::read(&got.files[0]).unwrap(), body);

    // A data file that stops midway: an error naming it, not a hang.
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(data_hub(Pace::StallInBody, &[(file, &body)]).serve(), tmp.path());
    let t0 = Instant::now();
    let err = split(&opts, None).unwrap_err();
    assert!(t0.elapsed() < LIMIT * 4, "took {:?}", t0.elapsed());
    assert!(
        err.contains("hub dataset org/far-ds@main: downloading `cfg/train/0000.parquet`: the download stalled: no data for 0.8 s after 500 of 3000 bytes"),
        "{err}"
    );
}

#[test]
fn a_split_whose_download_was_interrupted_is_not_taken_for_the_whole_split() {
    let (a, b): (Vec<u8>, Vec<u8>) = ((0..3000u32).map(|i| i as u8).collect(), vec![7u8; 1200]);
    let files = [
        ("cfg/train/0000.parquet", &a[..]),
        ("cfg/train/0001.parquet", &b[..]),
    ];
    let tmp = tempfile::tempdir().unwrap();
    // The first file arrives; the second stalls.
    let opts = options(
        data_hub(Pace::StallIn("0001.parquet"), &files).serve(),
        tmp.path(),
    );
    let err = split(&opts, None).unwrap_err();
    assert!(
        err.contains("downloading `cfg/train/0001.parquet`: the download stalled"),
        "{err}"
    );
    // The first file is in the snapshot now, but it is not the split.
    let offline = HubOptions {
        offline: true,
        ..opts.clone()
    };
    let err = split(&offline, None).unwrap_err();
    assert!(
        err.contains("has only part of its data files (an earlier download was interrupted)")
            && err.contains("offline"),
        "{err}"
    );
    // With the hub back (once the stalled connection has closed: until then
    // the abandoned download holds hf-hub's lock on that file, see
    // hub/watch.rs), the split is completed and then read from the cache.
    std::thread::sleep(Duration::from_secs(2));
    let opts = HubOptions {
        endpoint: Some(data_hub(Pace::Trickle, &files).serve()),
        ..opts
    };
    let got = split(&opts, None).unwrap();
    assert_eq!(got.files.len(), 2);
    assert_eq!(std::fs::read(&got.files[0]).unwrap(), a);
    assert_eq!(std::fs::read(&got.files[1]).unwrap(), b);
    assert_eq!(split(&offline, None).unwrap().files, got.files);
}
