//! The evaluation methods ("routers"), one file each, each an implementation of
//! [`Method`] listed once in [`METHODS`]. A method turns a pool of loaded experts
//! into what the model runs with: adapters on every module (`base`, `phatgoose`,
//! `merged`, `arrow`, `average-activation`, `multitask`, `expert:NAME`), one expert
//! per example (`retrieval`), or a choice among the single experts' scores
//! (`best-individual`, `oracle`). Each also says which extra steps it needs and the
//! note the results table prints beside its column.
//!
//! The per-token mechanics (scoring, top-k, gathering only the chosen experts)
//! live in `model::router`, `model::adapter` and `kernels`; this layer decides what the
//! routers are built from.

pub mod arrow;
pub mod average_activation;
pub mod base;
pub mod best_individual;
pub mod expert;
pub mod merged;
pub mod method;
pub mod multitask;
pub mod oracle;
pub mod phatgoose;
pub mod retrieval;

pub use method::{Chosen, Method, Pool, Scoring, find, parse};

/// Every evaluation method of this build, in the order help texts name them.
pub static METHODS: &[&dyn Method] = &[
    &phatgoose::Phatgoose,
    &base::Base,
    &merged::Merged,
    &average_activation::AverageActivation,
    &retrieval::Retrieval,
    &arrow::Arrow,
    &multitask::Multitask,
    &best_individual::BestIndividual,
    &oracle::Oracle,
];
