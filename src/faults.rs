//! Fault injection for the crash tests: the process dies at a named point between two
//! writes, as a `kill -9` at the worst moment would leave it.
//!
//! `GOOSEPIPE_FAULT=POINT` (or `POINT:N`, the N-th time the point is reached, 1 by
//! default; `*` stands for any point, so `*:N` dies at the N-th write of any kind)
//! makes the process abort there: no destructors, no buffered output, no
//! cleanup, exactly what an OOM kill or a power cut leaves behind. Unset (every
//! user's case) it costs one cached environment lookup per point. The points are the
//! places where a multi-file write can be cut in two; `tests/crash.rs` kills at each of
//! them and checks that the next run publishes the same bytes as an uninterrupted one.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The environment variable that arms a fault point.
pub const FAULT_ENV: &str = "GOOSEPIPE_FAULT";

/// Every point a fault can be injected at, in the order a training step reaches them.
pub const POINTS: &[&str] = &[
    // Trainer checkpoint (train/checkpoint.rs): the new state is written and synced
    // beside the old one; the old one is moved aside; the new one is renamed in.
    "checkpoint.written",
    "checkpoint.previous-kept",
    "checkpoint.replaced",
    // Eval progress (steps/eval_parts.rs): a part is marked as being scored; one
    // finished (method, task) result is saved.
    "eval.part-claimed",
    "eval.task-saved",
    // Store publish (store/mod.rs): meta.json written in staging; the staging folder
    // renamed into objects/ (before the step's work folder is removed).
    "publish.meta-written",
    "publish.renamed",
    // gc (store/gc.rs): one unreachable artifact deleted.
    "gc.deleted",
];

struct Armed {
    point: String,
    nth: usize,
    seen: AtomicUsize,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(FAULT_ENV).ok()?;
            let (point, nth) = match spec.split_once(':') {
                Some((p, n)) => (p.to_string(), n.parse().ok()?),
                None => (spec, 1),
            };
            Some(Armed {
                point,
                nth,
                seen: AtomicUsize::new(0),
            })
        })
        .as_ref()
}

/// Dies here if this point is armed and reached for the armed time.
pub fn point(name: &str) {
    debug_assert!(POINTS.contains(&name), "unknown fault point {name}");
    if let Some(a) = armed()
        && (a.point == name || a.point == "*")
        && a.seen.fetch_add(1, Ordering::SeqCst) + 1 == a.nth
    {
        eprintln!("goosepipe: fault injected at {name} ({FAULT_ENV})");
        std::process::abort();
    }
}
