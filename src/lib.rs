//! goosepipe: declarative, content-addressed pipelines for PHATGOOSE.
//!
//! Layers flow one way: manifest -> plan -> exec -> steps -> (model, train, route,
//! data, eval). See ARCHITECTURE.md.

pub mod app;
pub mod data;
pub mod eval;
pub mod exec;
pub mod faults;
pub mod manifest;
pub mod model;
pub mod plan;
pub mod route;
pub mod steps;
pub mod store;
pub mod train;

/// Planning large manifests is allocation-bound (tens of thousands of small maps);
/// mimalloc roughly halves that time against glibc malloc. For the tensor code it
/// is tuned by `model::alloc` (no purging of freed pages).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
