//! Evaluation: metrics, result tables, and the report's plots.

pub mod metrics;
pub mod plots;
pub mod routing_quality;
pub mod study;
pub mod table;

pub use table::Results;
