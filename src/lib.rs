//! goosepipe: declarative, content-addressed pipelines for PHATGOOSE.
//!
//! Layers flow one way: manifest -> plan -> exec -> steps -> (model, train, route,
//! data, eval) -> (embed, hub, kernels, process). See ARCHITECTURE.md.

pub mod app;
pub mod artifact_files;
pub mod data;
pub mod embed;
pub mod eval;
pub mod exec;
pub mod faults;
pub mod file_kind;
pub mod hub;
pub mod kdl_text;
pub mod kernels;
pub mod manifest;
pub mod model;
pub mod plan;
pub mod process;
pub mod rng;
pub mod route;
pub mod steps;
pub mod store;
pub mod train;
