//! The few scheduler operations the head needs, behind a trait: the real Slurm
//! commands live in `cli.rs`, and tests drive the head with a fake scheduler.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::resources::Resources;
use crate::store::Key;

/// One sbatch call: a single job (one key) or a job array (one task per key).
#[derive(Debug, Clone)]
pub struct Submission {
    /// Job name (`--job-name`).
    pub name: String,
    /// The keys built, one per array task (index = position).
    pub keys: Vec<Key>,
    /// Step ids, parallel to `keys` (for messages).
    pub steps: Vec<String>,
    /// The job script (calls `goosepipe exec`).
    pub script: PathBuf,
    /// `--output` pattern.
    pub log: PathBuf,
    pub chdir: PathBuf,
    pub resources: Resources,
    /// Jobs (or array tasks, `ID_N`) that must complete first (`--dependency=afterok`).
    pub after_ok: Vec<String>,
    /// At most this many tasks of the array run at once (`--array=...%N`).
    pub throttle: Option<usize>,
    /// Site-wide extra flags from the command line.
    pub extra: Vec<String>,
}

impl Submission {
    pub fn is_array(&self) -> bool {
        self.keys.len() > 1
    }

    /// The job reference of task `i` of a submission that got job id `job`.
    pub fn task_ref(&self, job: &str, i: usize) -> String {
        if self.is_array() {
            format!("{job}_{i}")
        } else {
            job.to_string()
        }
    }
}

/// How a job ended, as far as the head cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Completed,
    /// The step failed (non-zero exit): deterministic, not retried.
    Failed,
    /// Cancelled by a user, or by Slurm because a dependency can never be satisfied.
    Cancelled,
    Timeout,
    OutOfMemory,
    NodeFail,
    Preempted,
    /// Anything else terminal (BOOT_FAIL, DEADLINE, ...).
    Other(String),
}

impl End {
    /// Ends that say nothing about the step itself: the job may well succeed when
    /// resubmitted (a timed-out training step resumes from its checkpoint).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            End::Timeout | End::OutOfMemory | End::NodeFail | End::Preempted
        )
    }

    pub fn label(&self) -> &str {
        match self {
            End::Completed => "COMPLETED",
            End::Failed => "FAILED",
            End::Cancelled => "CANCELLED",
            End::Timeout => "TIMEOUT",
            End::OutOfMemory => "OUT_OF_MEMORY",
            End::NodeFail => "NODE_FAIL",
            End::Preempted => "PREEMPTED",
            End::Other(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Ended(End),
    /// The scheduler no longer knows the job (purged after MinJobAge, or never existed):
    /// the store decides whether it succeeded.
    Unknown,
}

impl JobState {
    pub fn alive(&self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }
}

/// A job's state with where it ran (to exclude a failed node on retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    pub state: JobState,
    pub node: Option<String>,
    /// The job name, when the scheduler says: a job id in the run log is only adopted
    /// if the name matches too (ids restart when a cluster loses its state).
    pub name: Option<String>,
    /// Why a queued job is not running (squeue's %r: `Resources`, `Priority`,
    /// `PartitionConfig`, ...); None when it says `None` or nothing.
    pub reason: Option<String>,
}

impl JobInfo {
    pub fn new(state: JobState) -> JobInfo {
        JobInfo {
            state,
            node: None,
            name: None,
            reason: None,
        }
    }
}

/// A Slurm reason field as the head wants it: None for `None`, empty or `(null)`.
pub fn reason_of(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s != "None" && s != "(null)").then(|| s.to_string())
}

/// What a pending job's reason means for the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// It clears by itself (the cluster is busy, the job waits its turn).
    Transient,
    /// It never clears by itself: the request cannot run as it is. The text says what
    /// to change.
    Never(&'static str),
}

/// Classifies squeue's reason for a pending job. Reasons that say the request itself
/// cannot run (no node or limit of the partition, account or QOS allows it) never clear;
/// everything else (Resources, Priority, Dependency, ReqNodeNotAvail, job-count
/// limits, ...) does.
pub fn classify_pending(reason: &str) -> Pending {
    const RESOURCES: &str = "lower cpus, memory, gpus or time in the step's `resources` (on the node or in `defaults`), or choose another partition there";
    const ACCOUNT: &str = "set `account` (and a QOS through `resources sbatch=...` or --slurm-sbatch) in `resources` to one this user may use";
    let r = reason.trim();
    match r {
        "PartitionConfig" | "PartitionNodeLimit" | "PartitionTimeLimit" | "BadConstraints"
        | "PartitionInactive" | "InactiveLimit" => Pending::Never(RESOURCES),
        "InvalidAccount"
        | "InvalidQOS"
        | "QOSUsageThreshold"
        | "AccountNotAllowed"
        | "QOSNotAllowed"
        | "PartitionDown_Account" => Pending::Never(ACCOUNT),
        "DependencyNeverSatisfied" => Pending::Never("an input's job failed or was cancelled: see that step"),
        // Association/QOS limits on the size of one job (as opposed to how many jobs or
        // how much at once, which clear as other jobs end): `AssocMaxCpuPerJobLimit`,
        // `QOSMaxGRESPerJob`, `QOSMaxWallDurationPerJobLimit`, `AssocMaxNodePerJobLimit`...
        _ if (r.starts_with("Assoc") || r.starts_with("QOS"))
            && (r.contains("PerJob") || r.contains("WallDuration"))
            && !r.contains("MaxJobs")
            && !r.contains("Submit") =>
        {
            Pending::Never(RESOURCES)
        }
        _ => Pending::Transient,
    }
}

/// What one partition offers, as `sinfo` says: one entry per node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    /// The partition jobs go to when they name none.
    pub default: bool,
    /// `up`, `down`, `drain` or `inact`.
    pub state: String,
    /// MaxTime in minutes; None: unlimited.
    pub max_minutes: Option<u64>,
    pub nodes: Vec<NodeShape>,
}

/// One node configuration of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeShape {
    pub cpus: u64,
    pub memory_mb: u64,
    pub gpus: u64,
    /// How many nodes have this shape.
    pub count: u64,
}

/// Maps a Slurm state name (squeue %T, sacct State, scontrol JobState) to ours.
/// sacct writes "CANCELLED by 1000": only the first word counts.
pub fn parse_state(s: &str) -> JobState {
    let word = s.split_whitespace().next().unwrap_or("").trim_end_matches('+');
    match word {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_FED" | "REQUEUE_HOLD" | "RESIZING"
        | "SUSPENDED" | "STOPPED" | "RESV_DEL_HOLD" => JobState::Queued,
        "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" | "SPECIAL_EXIT" => JobState::Running,
        "COMPLETED" => JobState::Ended(End::Completed),
        "FAILED" => JobState::Ended(End::Failed),
        "CANCELLED" | "REVOKED" => JobState::Ended(End::Cancelled),
        "TIMEOUT" => JobState::Ended(End::Timeout),
        "OUT_OF_MEMORY" => JobState::Ended(End::OutOfMemory),
        "NODE_FAIL" => JobState::Ended(End::NodeFail),
        "PREEMPTED" => JobState::Ended(End::Preempted),
        "" => JobState::Unknown,
        other => JobState::Ended(End::Other(other.to_string())),
    }
}

/// Expands Slurm's array notation into task refs: `123_4` -> [`123_4`],
/// `123_[0-2,5%2]` -> [`123_0`, `123_1`, `123_2`, `123_5`]; a plain id is itself.
pub fn expand_job_ids(s: &str) -> Vec<String> {
    let Some((job, rest)) = s.split_once('_') else {
        return vec![s.to_string()];
    };
    let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
        return vec![s.to_string()];
    };
    let inner = inner.split('%').next().unwrap_or("");
    let mut out = vec![];
    for part in inner.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                    out.extend((a..=b).map(|i| format!("{job}_{i}")));
                }
            }
            None => {
                if part.parse::<u64>().is_ok() {
                    out.push(format!("{job}_{part}"));
                }
            }
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("{0}")]
    Command(String),
    /// The site refuses more jobs for now (MaxSubmitJobs and the like): try later.
    #[error("{0}")]
    Busy(String),
    /// The controller cannot be reached or configured (after retries): no submission
    /// will get through, so the head submits nothing more.
    #[error("{0}")]
    Unreachable(String),
}

pub trait Scheduler: Send + Sync {
    /// Submits a job (or array); returns the job id.
    fn submit(&self, sub: &Submission) -> Result<String, SchedError>;
    /// States of jobs and array tasks by ref (`123` or `123_4`). Refs the scheduler does
    /// not know come back as [`JobState::Unknown`].
    fn query(&self, refs: &[String]) -> Result<BTreeMap<String, JobInfo>, SchedError>;
    fn cancel(&self, refs: &[String]) -> Result<(), SchedError>;
    /// The largest array this site accepts (Slurm's MaxArraySize - 1 tasks).
    fn max_array_tasks(&self) -> usize;
    /// What the partitions offer, read once per run to refuse requests no node can
    /// satisfy before anything is submitted; None when the scheduler cannot say.
    fn partitions(&self) -> Result<Option<Vec<Partition>>, SchedError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_states_map_to_ours() {
        assert_eq!(parse_state("PENDING"), JobState::Queued);
        assert_eq!(parse_state("COMPLETING"), JobState::Running);
        assert_eq!(parse_state("CANCELLED by 1000"), JobState::Ended(End::Cancelled));
        assert_eq!(parse_state("OUT_OF_MEMORY"), JobState::Ended(End::OutOfMemory));
        assert_eq!(
            parse_state("BOOT_FAIL"),
            JobState::Ended(End::Other("BOOT_FAIL".into()))
        );
        for s in ["TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"] {
            match parse_state(s) {
                JobState::Ended(e) => assert!(e.retryable(), "{s}"),
                other => panic!("{s}: {other:?}"),
            }
        }
        for s in ["FAILED", "CANCELLED", "COMPLETED", "DEADLINE"] {
            match parse_state(s) {
                JobState::Ended(e) => assert!(!e.retryable(), "{s}"),
                other => panic!("{s}: {other:?}"),
            }
        }
    }

    #[test]
    fn pending_reasons_that_never_clear_are_told_apart() {
        for r in [
            "PartitionConfig",
            "PartitionNodeLimit",
            "PartitionTimeLimit",
            "BadConstraints",
            "InvalidAccount",
            "InvalidQOS",
            "DependencyNeverSatisfied",
            "AssocMaxCpuPerJobLimit",
            "QOSMaxGRESPerJob",
            "QOSMaxWallDurationPerJobLimit",
        ] {
            assert!(matches!(classify_pending(r), Pending::Never(_)), "{r}");
        }
        for r in [
            "Resources",
            "Priority",
            "Dependency",
            "ReqNodeNotAvail",
            "QOSMaxJobsPerUserLimit",
            "AssocMaxJobsLimit",
            "AssocGrpCpuLimit",
            "BeginTime",
        ] {
            assert_eq!(classify_pending(r), Pending::Transient, "{r}");
        }
        assert_eq!(reason_of("None"), None);
        assert_eq!(reason_of(" Resources "), Some("Resources".into()));
    }

    #[test]
    fn array_notation_expands() {
        assert_eq!(expand_job_ids("77"), ["77"]);
        assert_eq!(expand_job_ids("77_3"), ["77_3"]);
        assert_eq!(expand_job_ids("77_[0-2,5%2]"), ["77_0", "77_1", "77_2", "77_5"]);
    }
}
