//! Data layer: dataset sources and the example format every step reads.

pub mod example;
pub mod local;
pub mod synthetic;
pub mod tokenizer;

pub use example::{DataError, Example, read_jsonl, write_jsonl};
