//! Engine benchmarks (targets from the engine issue):
//! - plan of a generated manifest with 10,000 experts: < 1 s
//! - no-op re-run of an all-cached pipeline: < 200 ms
//! - blake3 hashing of a 1 GiB file: >= 1 GB/s on 2 cores

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use goosepipe::exec::{CancelFlag, Registry, RunOptions, StepContext, StepError, StepRunner};
use goosepipe::store::HashCache;

/// The allocator the goosepipe binary runs with (its `main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn manifest(experts: usize) -> String {
    let mut m = String::from(
        "pipeline \"bench\"\nmodel \"base\" hub=\"org/t5\"\ndefaults {\n    train steps=10\n}\n",
    );
    for i in 0..experts {
        let _ = writeln!(m, "dataset \"d{i}\" hub=\"org/data\" config=\"c{i}\"");
        let _ = writeln!(m, "expert \"e{i}\" model=\"base\" dataset=\"d{i}\"");
    }
    m.push_str(
        "dataset \"heldout\" hub=\"org/data\" config=\"h\" split=\"validation\"\npool \"all\" {\n    experts",
    );
    for i in 0..experts {
        let _ = write!(m, " \"e{i}\"");
    }
    m.push_str("\n}\neval \"e\" pool=\"all\" {\n    methods \"phatgoose\" \"base\"\n    task \"h\" dataset=\"heldout\"\n}\n");
    m
}

struct Touch(&'static str);

impl StepRunner for Touch {
    fn kind(&self) -> &'static str {
        self.0
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        std::fs::write(ctx.out.join("out"), ctx.spec.key.hex())?;
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = goosepipe::steps::registry();
    for k in goosepipe::steps::KINDS {
        r.register(Arc::new(Touch(k.name)));
    }
    r
}

fn plan_10k(c: &mut Criterion) {
    // As `goosepipe plan` runs (its `main`): no transparent huge pages.
    goosepipe::process::alloc::without_huge_pages();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.kdl");
    std::fs::write(&path, manifest(10_000)).unwrap();
    let reg = goosepipe::steps::registry();
    let store = goosepipe::store::Store::open(dir.path().join("store")).unwrap();
    let mut g = c.benchmark_group("plan");
    g.sample_size(10);
    // The plan is freed outside the timing, as `goosepipe plan` frees it off the
    // answer's path.
    g.bench_function("plan 10k experts (validate, lower, key, status)", |b| {
        b.iter_with_large_drop(|| {
            let plan = goosepipe::app::load_plan(&path, &reg, &HashCache::in_memory()).unwrap();
            let lock = goosepipe::store::lockfile::Lockfile::default();
            let status = goosepipe::plan::status::status(&plan, &store, &lock);
            assert_eq!(status.stale_count(), plan.steps.len());
            (plan, status)
        })
    });
    g.finish();
}

fn noop_rerun(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.kdl");
    // The paper's pool size: 36 experts -> 112 steps.
    std::fs::write(&path, manifest(36)).unwrap();
    let store = dir.path().join("store");
    let reg = registry();
    let mut sink = Vec::new();
    let opts = RunOptions::default();
    goosepipe::app::run(&path, &store, &reg, &opts, true, &CancelFlag::new(), &mut sink).unwrap();
    let mut g = c.benchmark_group("run");
    g.sample_size(20);
    g.bench_function("no-op re-run, 36 experts all cached", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            let code =
                goosepipe::app::run(&path, &store, &reg, &opts, true, &CancelFlag::new(), &mut out).unwrap();
            assert_eq!(code, 0);
            assert!(out.starts_with(b"nothing to do"));
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one-gib.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut block = vec![0u8; 1 << 20];
        for i in 0..1024u32 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u32).wrapping_mul(2_654_435_761).wrapping_add(i) as u8;
            }
            f.write_all(&block).unwrap();
        }
    }
    let mut g = c.benchmark_group("hash");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(1 << 30));
    g.bench_function("blake3 1 GiB file (mmap, rayon)", |b| {
        b.iter(|| goosepipe::store::hashing::hash_file(&path).unwrap())
    });
    g.finish();
}

criterion_group!(benches, plan_10k, noop_rerun, hashing);
criterion_main!(benches);
