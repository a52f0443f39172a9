//! Evaluation: metrics, result tables, and the report's plots.

pub mod held_in;
pub mod metrics;
pub mod plots;
pub mod predictions;
pub mod routing_quality;
pub mod study;
pub mod table;

pub use table::Results;
