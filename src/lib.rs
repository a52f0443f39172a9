//! goosepipe: declarative, content-addressed pipelines for PHATGOOSE.
//!
//! Layers flow one way: manifest -> plan -> exec -> steps -> (model, train, route,
//! data, eval). See ARCHITECTURE.md.

pub mod app;
pub mod exec;
pub mod manifest;
pub mod plan;
pub mod steps;
pub mod store;
