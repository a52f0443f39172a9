//! Step kinds: the only layer that knows both the pipeline and the ML.
//!
//! A step kind is one file: its runner and its [`Kind`] declaration (implementation
//! version, which enters every key of the kind: bump it whenever the same inputs
//! would produce different bytes; its place in the pipeline; its Slurm defaults; how
//! an eval lowers it when a method needs it), plus its schema entry.

pub mod average_activation;
pub mod common;
pub mod dataset;
pub mod eval;
mod eval_parts;
pub mod expert;
pub mod model;
pub mod peft_import;
pub mod retrieval_index;
pub mod study;
pub mod tokenize;

use std::sync::Arc;

use crate::exec::{Kind, Registry};
use crate::plan::MethodInfo;
use crate::route::Method;

/// Every step kind the planner emits, each declared beside its runner.
pub const KINDS: &[Kind] = &[
    model::KIND,
    dataset::KIND,
    tokenize::KIND,
    expert::EXPERT,
    expert::GATE,
    average_activation::KIND,
    retrieval_index::KIND,
    expert::MULTITASK,
    expert::POOL,
    eval::KIND,
    study::KIND,
];

/// Evaluation methods as the planner sees them.
pub fn methods(list: &[&'static dyn Method]) -> Vec<MethodInfo> {
    list.iter()
        .map(|m| MethodInfo {
            name: m.name(),
            needs: m.needs(),
            routes_tokens: m.routes_tokens(),
        })
        .collect()
}

/// The product's registry: every kind declared (so any manifest can be planned),
/// with its runner, and the evaluation methods of `route::METHODS`.
pub fn registry() -> Registry {
    registry_with_methods(crate::route::METHODS)
}

/// The product's registry with these evaluation methods (a test adds its own).
pub fn registry_with_methods(list: &[&'static dyn Method]) -> Registry {
    let mut r = Registry::new();
    for kind in KINDS {
        r.declare(*kind);
    }
    r.set_methods(methods(list));
    r.register(Arc::new(dataset::DatasetStep));
    r.register(Arc::new(model::ModelStep));
    r.register(Arc::new(tokenize::TokenizeStep));
    r.register(Arc::new(expert::ExpertStep { kind: "expert" }));
    r.register(Arc::new(expert::ExpertStep { kind: "multitask" }));
    r.register(Arc::new(expert::GateStep));
    r.register(Arc::new(expert::PoolStep));
    r.register(Arc::new(average_activation::AverageActivationStep));
    r.register(Arc::new(retrieval_index::RetrievalIndexStep));
    r.register(Arc::new(eval::EvalStep {
        methods: list.to_vec(),
    }));
    r.register(Arc::new(study::StudyStep));
    r
}
