//! Execution layer: runs the stale steps of a plan through the [`StepRunner`] trait.

pub mod progress;
pub mod run;
pub mod step;

pub use progress::{Outcome, PlainReporter, Reporter, StepProgress, reporter_for_stderr};
pub use run::{RunError, RunOptions, RunReport, execute, run, select, updated_lock};
pub use step::{CancelFlag, InputArtifact, Registry, StepContext, StepError, StepRunner};
