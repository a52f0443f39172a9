//! Where a run builds its steps: the [`Executor`] trait, with [`Local`] (threads of
//! this process) and `slurm::Slurm` (jobs of a cluster), and the [`RunContext`]
//! every executor gets.

use std::path::PathBuf;

use super::progress::Reporter;
use super::step::{CancelFlag, Registry};
use crate::plan::{Plan, Status};
use crate::store::lockfile::Lockfile;
use crate::store::{Store, StoreError};

/// What a run executes: the plan and its status, the store, how to run each kind,
/// the lockfile as it was, the user's options, and where to report.
pub struct RunContext<'a> {
    pub plan: &'a Plan,
    pub status: &'a Status,
    pub store: &'a Store,
    pub registry: &'a Registry,
    pub lock: &'a Lockfile,
    /// Where the lockfile lives (cluster jobs record their pins beside it).
    pub lock_path: PathBuf,
    pub opts: &'a RunOptions,
    pub reporter: &'a dyn Reporter,
    pub cancel: &'a CancelFlag,
}

/// Builds the selected stale steps of a plan and says what happened; finished
/// artifacts are published even when other steps fail.
pub trait Executor {
    fn execute(&self, cx: &RunContext) -> Result<RunReport, RunError>;
    /// Whether steps compute in this process (so its device must open here), or on
    /// other machines (cluster jobs running this same build).
    fn runs_steps_here(&self) -> bool {
        true
    }
}

/// Threads of this process (`-j`); runs in `run.rs`.
pub struct Local;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Steps the local executor runs at once; None: what the manifest's `pipeline
    /// jobs=` says, else 1.
    pub jobs: Option<usize>,
    /// Run only these steps (ids or names); their inputs must already be built.
    pub only: Vec<String>,
    /// Run this step and whatever it needs.
    pub until: Option<String>,
    pub keep_going: bool,
    /// Fail instead of changing the lockfile.
    pub locked: bool,
    /// Re-hash cached artifacts before planning (done by the caller when it judges
    /// staleness; carried here so every executor sees the choice).
    pub verify: bool,
    pub device: String,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: None,
            only: vec![],
            until: None,
            keep_going: false,
            locked: false,
            verify: false,
            device: "cpu".into(),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct RunReport {
    pub built: Vec<String>,
    pub reused: Vec<String>,
    /// Twins: steps with the key of an earlier step of this run, which built it.
    pub shared: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub skipped: Vec<String>,
    pub cancelled: Vec<String>,
    /// Interrupted, and left running as cluster jobs (a later run adopts them).
    pub left_running: Vec<String>,
    pub cached: usize,
}

impl RunReport {
    /// Twin `twin` is done with `first`, which built their one artifact: reported and
    /// counted as shared (the same words from every executor).
    pub fn share(&mut self, reporter: &dyn Reporter, twin: &str, first: &str) {
        reporter.finished(
            twin,
            super::progress::Outcome::Shared,
            0.0,
            &format!("the artifact of {first} (same key)"),
        );
        self.shared.push(twin.to_string());
    }

    /// This report followed by `next`'s (a run in parts: early cutoff's datasets, then
    /// the rest). `cached` counts what was cached before the run: the later part's
    /// count less what the earlier part built.
    pub fn then(mut self, next: RunReport) -> RunReport {
        let done_here = self.built.len() + self.reused.len() + self.shared.len();
        self.built.extend(next.built);
        self.reused.extend(next.reused);
        self.shared.extend(next.shared);
        self.failed.extend(next.failed);
        self.skipped.extend(next.skipped);
        self.cancelled.extend(next.cancelled);
        self.left_running.extend(next.left_running);
        self.cached = next.cached.saturating_sub(done_here);
        self
    }

    /// Counts the steps of `wanted` (indices into `plan`) that this report does not
    /// mention as not run (`skipped`): steps waiting for a dataset that failed, or
    /// everything after the datasets when the run stopped between its parts.
    pub fn add_unreached(&mut self, plan: &Plan, wanted: &[usize]) {
        let mentioned: std::collections::BTreeSet<&str> = self
            .built
            .iter()
            .chain(&self.reused)
            .chain(&self.shared)
            .chain(self.failed.iter().map(|(id, _)| id))
            .chain(&self.skipped)
            .chain(&self.cancelled)
            .chain(&self.left_running)
            .map(String::as_str)
            .collect();
        let unreached: Vec<String> = wanted
            .iter()
            .map(|&i| plan.steps[i].id())
            .filter(|id| !mentioned.contains(id))
            .map(str::to_string)
            .collect();
        self.skipped.extend(unreached);
    }

    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.cancelled.is_empty() && self.skipped.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Selection(String),
    #[error("--locked: {0}")]
    Locked(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
