//! Training: the loop, AdamW, schedules and batching, shared by every training step.

pub mod adamw;
pub mod batches;
pub mod checkpoint;
pub mod schedule;
pub mod trainer;

pub use batches::Pair;
pub use schedule::Schedule;
pub use trainer::{GateParams, Monitor, Objective, TrainConfig, TrainError, TrainOutcome, train};
