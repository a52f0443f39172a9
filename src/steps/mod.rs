//! Step kinds: the only layer that knows both the pipeline and the ML.
//!
//! Each kind has an implementation version that enters every key of that kind: bump
//! it whenever the same inputs would produce different bytes.

pub mod average_activation;
pub mod common;
pub mod dataset;
pub mod eval;
pub mod expert;
pub mod model;
pub mod retrieval_index;
pub mod study;
pub mod tokenize;

use std::sync::Arc;

use crate::exec::Registry;

/// Every step kind the planner emits, with its implementation version.
pub const VERSIONS: &[(&str, u32)] = &[
    ("model", 3),
    ("dataset", 2),
    ("tokenize", 2),
    ("expert", 5),
    ("gate", 5),
    ("pool", 1),
    ("average-activation", 3),
    ("retrieval-index", 1),
    ("multitask", 5),
    ("eval", 10),
    ("study", 1),
];

/// The implementation version of a kind (0 for a kind this build does not know,
/// which no plan ever asks for).
pub fn version_of(kind: &str) -> u32 {
    VERSIONS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| *v)
        .unwrap_or(0)
}

/// The product's registry: every kind declared (so any manifest can be planned),
/// with the runners this build implements.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    for (kind, version) in VERSIONS {
        r.declare(kind, *version);
    }
    r.register(Arc::new(dataset::DatasetStep));
    r.register(Arc::new(model::ModelStep));
    r.register(Arc::new(tokenize::TokenizeStep));
    r.register(Arc::new(expert::ExpertStep { kind: "expert" }));
    r.register(Arc::new(expert::ExpertStep { kind: "multitask" }));
    r.register(Arc::new(expert::GateStep));
    r.register(Arc::new(expert::PoolStep));
    r.register(Arc::new(average_activation::AverageActivationStep));
    r.register(Arc::new(retrieval_index::RetrievalIndexStep));
    r.register(Arc::new(eval::EvalStep));
    r.register(Arc::new(study::StudyStep));
    r
}
