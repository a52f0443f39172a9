//! The Slurm executor: `goosepipe run --executor slurm`. The head (this process, on the
//! login node) plans as usual and submits stale steps as jobs that run
//! `goosepipe exec --store DIR --key KEY` on the compute nodes; the store, on a shared
//! file system, is the only thing head and jobs share.
//!
//! One concept per file: [`head`] (scheduling loop, adoption, failures, interrupt),
//! [`scheduler`] (the trait the head talks to, job states), [`cli`] (the real Slurm
//! commands), [`resources`] (sbatch flags per step), [`script`] (job scripts),
//! [`runlog`] (submissions on disk, for adoption), [`poll`] (back-off, retry policy,
//! array splitting), [`fit`] (requests checked against what the partitions offer).

pub mod cli;
pub mod fit;
pub mod head;
pub mod poll;
pub mod resources;
pub mod runlog;
pub mod scheduler;
pub mod script;

pub use cli::SlurmCli;
pub use head::{OnInterrupt, Slurm, SlurmOptions, run_slurm};
pub use poll::{Backoff, RetryPolicy};
pub use resources::Resources;
pub use runlog::{Record, RunLog};
pub use scheduler::{
    End, JobInfo, JobState, NodeShape, Partition, Pending, SchedError, Scheduler, Submission,
    classify_pending,
};
