//! Evaluation: metrics and result tables.

pub mod metrics;
pub mod table;

pub use table::Results;
