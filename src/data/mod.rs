//! Data layer: dataset sources and the example format every step reads.

pub mod bigbench;
pub mod example;
pub mod local;
mod numpy_rng;
pub mod promptsource;
pub mod rows;
pub mod synthetic;
pub mod tokenizer;
pub mod tokens;
pub mod unknown_words;

pub use example::{DataError, Example, read_jsonl, write_jsonl};
pub use numpy_rng::permutation as numpy_permutation;
