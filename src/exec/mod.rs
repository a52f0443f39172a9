//! Execution layer: runs the stale steps of a plan through the [`StepRunner`] trait,
//! locally ([`run`]) or as Slurm jobs ([`slurm`]), each of which builds its step with
//! [`worker::exec_key`].

pub mod executor;
pub mod kind;
pub mod preview;
pub mod progress;
pub mod run;
pub mod slurm;
pub mod step;
pub mod worker;

pub use executor::{Executor, Local, RunContext};
pub use kind::{JobDefaults, JobResources, Kind};
pub use preview::{preview, previews};
pub use progress::{Outcome, PlainReporter, Reporter, Silent, StepProgress, reporter_for_stderr};
pub use run::{RunError, RunOptions, RunReport, execute, run, select, updated_lock};
pub use step::{CancelFlag, InputArtifact, PlannedWork, Registry, StepContext, StepError, StepRunner};
