//! The integration tests, one module a file, built as one test binary. A binary a
//! file linked the whole crate and its dependencies 30 times (about 90 MB apiece):
//! minutes of CI spent compiling and linking the same code. `tests/model_hub.rs` stays a
//! binary of its own: it sets the process's HF_* environment, which no other test may
//! see. Run one file's tests with `cargo test --test integration FILE::`.

mod support;

mod cli;
mod crash;
mod data_sources;
mod diagnostics;
mod engine_cutoff;
mod engine_incremental;
mod engine_keys;
mod engine_store;
mod eval_methods;
mod eval_reuse;
mod extension;
mod folder_keys;
mod fuzz;
mod hub_transfer;
mod layers;
mod model_adapters;
mod model_dropout;
mod model_grad;
mod model_inference;
mod model_load;
mod model_parity;
mod model_score;
mod peft;
mod pipelines;
mod plan_json_schema;
mod quickstart;
mod slurm;
mod slurm_head;
mod study;
mod train_steps;
