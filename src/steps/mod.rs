//! Step kinds: the only layer that knows both the pipeline and the ML.
//!
//! Each kind has an implementation version that enters every key of that kind: bump
//! it whenever the same inputs would produce different bytes.

use crate::exec::Registry;

/// Every step kind the planner emits, with its implementation version.
pub const VERSIONS: &[(&str, u32)] = &[
    ("model", 1),
    ("dataset", 1),
    ("expert", 1),
    ("gate", 1),
    ("pool", 1),
    ("average-activation", 1),
    ("retrieval-index", 1),
    ("multitask", 1),
    ("eval", 1),
];

/// The product's registry: every kind declared (so any manifest can be planned),
/// with the runners this build implements.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    for (kind, version) in VERSIONS {
        r.declare(kind, *version);
    }
    r
}
