//! The head: plans on the login node, submits stale steps as Slurm jobs, follows them
//! to the end, and publishes nothing itself (jobs publish into the shared store).
//!
//! Two modes. By default the head submits a step once its inputs are published, so a
//! failure never has queued dependents to clean up. With `--submit-all` it submits the
//! whole stale DAG at once, chained with `afterok` dependencies, and only watches.
//! Either way the head can die at any moment: every submission is in the run log before
//! anything else happens, and the next head adopts the jobs that are still alive.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::poll::{Backoff, RetryPolicy, array_chunks};
use super::resources::Resources;
use super::runlog::{Record, RunLog, Submitted};
use super::scheduler::{End, JobState, SchedError, Scheduler, Submission};
use super::script::{ExecArgs, log_of, write_job};
use crate::exec::executor::{Executor, RunContext};
use crate::exec::progress::{Outcome, Reporter, StepProgress};
use crate::exec::run::{RunError, RunOptions, RunReport, check_locked, select, verify_inputs};
use crate::exec::step::CancelFlag;
use crate::plan::{Plan, Twins};
use crate::store::artifact::now_unix;
use crate::store::{Key, KeyLock, Presence, Store};

/// What to do with submitted jobs when the head is interrupted (Ctrl-C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Ask on a terminal; otherwise leave them running.
    Ask,
    Cancel,
    /// Leave them running: the next `goosepipe run` adopts them.
    Leave,
}

#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// Submit the whole stale DAG at once with afterok dependencies.
    pub submit_all: bool,
    /// Group steps of one kind that are ready together into job arrays.
    pub arrays: bool,
    /// At most this many tasks of one array run at once.
    pub throttle: Option<usize>,
    /// Overrides the site's MaxArraySize (arrays are split to fit).
    pub max_array: Option<usize>,
    /// At most this many jobs (array tasks count one each) queued or running at once:
    /// sites cap them per user (MaxSubmitJobs), and a refusal for that reason is also
    /// waited out.
    pub max_jobs: Option<usize>,
    pub retry: RetryPolicy,
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// How long a finished job's artifact may take to appear (shared file systems cache
    /// directory entries).
    pub latency_wait: Duration,
    /// Extra sbatch flags for every job (site policy: --qos, --constraint, ...).
    pub extra_sbatch: Vec<String>,
    /// How long a job may pend for a reason that never clears by itself
    /// (PartitionConfig, InvalidAccount, ...) before its step fails and the job is
    /// cancelled.
    pub pending_grace: Duration,
    /// The goosepipe binary that jobs run (absolute).
    pub program: PathBuf,
    /// The manifest's lockfile (absolute), read by jobs for pinned hub resolutions.
    pub lockfile: Option<PathBuf>,
    pub on_interrupt: OnInterrupt,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        SlurmOptions {
            submit_all: false,
            arrays: true,
            throttle: None,
            max_array: None,
            max_jobs: None,
            retry: RetryPolicy::default(),
            poll_min: Duration::from_millis(500),
            poll_max: Duration::from_secs(30),
            latency_wait: Duration::from_secs(10),
            extra_sbatch: vec![],
            pending_grace: Duration::from_secs(10),
            program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("goosepipe")),
            lockfile: None,
            on_interrupt: OnInterrupt::Ask,
        }
    }
}

#[derive(Debug, Clone)]
struct Job {
    job: String,
    attempt: u32,
    log: PathBuf,
    submitted: Instant,
    started: Option<Instant>,
}

#[derive(Debug, Clone)]
enum St {
    /// Not submitted (yet): inputs pending, or resubmission due.
    Waiting,
    InFlight(Job),
    Done,
    Failed,
    /// An input failed: never submitted.
    Blocked,
    Cancelled,
    /// The run was interrupted and its job left running (`--on-interrupt leave`).
    LeftRunning,
    /// Cancelled before it started because the run stopped after a failure.
    NotRun,
}

/// Steps submitted together as one array: same kind, same sbatch flags, same
/// dependencies. A step that must go alone has a kind tag of its own.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    kind: String,
    sbatch: Vec<String>,
    after: Vec<String>,
}

struct Head<'a> {
    plan: &'a Plan,
    store: &'a Store,
    registry: &'a crate::exec::Registry,
    opts: &'a RunOptions,
    sopts: &'a SlurmOptions,
    sched: &'a dyn Scheduler,
    reporter: &'a dyn Reporter,
    log: RunLog,
    exec: ExecArgs,
    selected: Vec<usize>,
    in_run: BTreeSet<usize>,
    /// Selected steps with the key of an earlier selected step, mapped to it: never
    /// submitted (their job would only find the artifact built); done when that
    /// step is, blocked with it.
    twins: Twins,
    st: BTreeMap<usize, St>,
    /// Attempt number the next submission of a step gets (retries count up).
    next_attempt: HashMap<usize, u32>,
    resources: HashMap<usize, Resources>,
    bars: HashMap<usize, Box<dyn StepProgress + 'a>>,
    report: RunReport,
    stop: bool,
    /// The scheduler refused a submission for a per-user limit: no more until a job ends.
    busy: bool,
    /// Why no controller answers a submission (said once): nothing more is submitted.
    unreachable: Option<String>,
    counter: usize,
    /// A queued job's pending reason and since when Slurm has given it.
    pending: HashMap<usize, (String, Instant)>,
}

/// Jobs of a Slurm cluster, submitted and followed by this process (the head).
pub struct Slurm<'a> {
    pub opts: SlurmOptions,
    pub scheduler: &'a dyn Scheduler,
}

impl Executor for Slurm<'_> {
    fn runs_steps_here(&self) -> bool {
        false
    }
    fn execute(&self, cx: &RunContext) -> Result<RunReport, RunError> {
        let mut sopts = self.opts.clone();
        if sopts.lockfile.is_none() {
            sopts.lockfile = Some(std::path::absolute(&cx.lock_path).unwrap_or(cx.lock_path.clone()));
        }
        run_slurm(cx, &sopts, self.scheduler)
    }
}

/// Runs the selected stale steps as Slurm jobs. Returns when every submitted job has
/// ended (or on interrupt); the artifacts are in the store, published by the jobs.
pub fn run_slurm(
    cx: &RunContext,
    sopts: &SlurmOptions,
    sched: &dyn Scheduler,
) -> Result<RunReport, RunError> {
    let RunContext {
        plan,
        status,
        store,
        registry,
        lock,
        opts,
        reporter,
        cancel,
        ..
    } = *cx;
    if opts.locked {
        // The nodes may compute other numerics than this head.
        check_locked(plan, store, lock, None)?;
    }
    // One head per store: two heads would each adopt or submit the same steps.
    let head_lock_path = store.root.join("runs").join("slurm.head.lock");
    let _head_lock = KeyLock::try_acquire(&head_lock_path)
        .map_err(|e| RunError::Selection(format!("cannot lock {}: {e}", head_lock_path.display())))?
        .ok_or_else(|| {
            RunError::Selection(format!(
                "another goosepipe head is running on the store {}; wait for it or stop it",
                store.root.display()
            ))
        })?;
    let status = &verify_inputs(plan, status, store, opts, reporter)?;
    let selected = select(plan, status, opts)?;
    for &i in &selected {
        let kind = &plan.steps[i].spec.kind;
        if registry.get(kind).is_none() {
            return Err(RunError::Selection(format!(
                "step {} is of kind `{kind}`, which this build of goosepipe can plan but not run",
                plan.steps[i].id()
            )));
        }
        // Jobs read their step from here, never from the manifest.
        store.save_recipe(&plan.steps[i].spec)?;
    }
    let root = absolute(&store.root);
    let mut head = Head {
        plan,
        store,
        registry,
        opts,
        sopts,
        sched,
        reporter,
        log: RunLog::new(&store.root),
        exec: ExecArgs {
            program: sopts.program.clone(),
            store: root,
            device: opts.device.clone(),
            lockfile: sopts.lockfile.clone(),
            locked: opts.locked,
        },
        in_run: selected.iter().copied().collect(),
        twins: plan.twins(selected.iter().copied()),
        st: selected.iter().map(|&i| (i, St::Waiting)).collect(),
        next_attempt: HashMap::new(),
        resources: selected
            .iter()
            .map(|&i| {
                (
                    i,
                    Resources::for_step(
                        &plan.steps[i].spec,
                        registry.kind(&plan.steps[i].spec.kind),
                        &opts.device,
                    ),
                )
            })
            .collect(),
        selected,
        bars: HashMap::new(),
        report: RunReport {
            cached: status
                .states
                .iter()
                .filter(|s| matches!(s, crate::plan::State::Cached))
                .count(),
            ..Default::default()
        },
        stop: false,
        busy: false,
        unreachable: None,
        counter: 0,
        pending: HashMap::new(),
    };
    let refused = head.unsatisfiable_requests();
    if !refused.is_empty() {
        return Err(RunError::Selection(format!(
            "no node can run {} of this run's jobs as requested; nothing was submitted:\n  {}",
            if refused.len() == 1 {
                "one".to_string()
            } else {
                refused.len().to_string()
            },
            refused.join("\n  ")
        )));
    }
    reporter.begin(head.selected.len(), head.report.cached);
    head.adopt();
    head.main_loop(cancel);
    head.bars.clear();
    let report = head.finish();
    reporter.end();
    Ok(report)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

impl<'a> Head<'a> {
    fn id(&self, i: usize) -> &'a str {
        self.plan.steps[i].id()
    }

    /// The steps of this run that `i` waits for: its inputs, a twin input standing
    /// for the step that builds its artifact.
    fn in_run_inputs(&self, i: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .plan
            .inputs_of(i)
            .into_iter()
            .filter(|j| self.in_run.contains(j))
            .map(|j| self.twins.first_of(j).unwrap_or(j))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The steps that read `i`'s artifact: its consumers and its twins' consumers.
    fn dependents(&self, i: usize) -> Vec<usize> {
        let mut v = self.plan.consumers_of(i);
        for t in self.twins.built_by(i) {
            v.extend(self.plan.consumers_of(t));
        }
        v
    }

    fn in_flight(&self) -> Vec<(usize, Job)> {
        self.st
            .iter()
            .filter_map(|(&i, s)| match s {
                St::InFlight(j) => Some((i, j.clone())),
                _ => None,
            })
            .collect()
    }

    /// Jobs of an earlier head that are still queued or running take the place of a
    /// submission; anything else in the run log is history.
    fn adopt(&mut self) {
        let latest = self.log.latest_submissions();
        let unended = self.log.unended_submissions();
        let open: HashSet<&str> = unended.iter().map(|(_, s)| s.job.as_str()).collect();
        let mut candidates = BTreeMap::new();
        for &i in self.selected.iter().filter(|&&i| !self.twins.is_twin(i)) {
            if let Some(s) = latest.get(&self.plan.steps[i].spec.key) {
                if open.contains(s.job.as_str()) {
                    candidates.insert(i, s.clone());
                } else {
                    // A head saw it end (failed, or cancelled by that head): submitted
                    // again, as the next attempt, with nothing to report.
                    self.next_attempt.insert(i, s.attempt + 1);
                }
            }
        }
        // Jobs an earlier run left for keys this plan does not have (the manifest was
        // edited since, or it was another manifest's run): nobody adopts them, and
        // they hold the queue. Not published, so possibly still queued or running.
        let planned: HashSet<Key> = self.plan.steps.iter().map(|s| s.spec.key).collect();
        // The newest few whose end no head saw, with the job name that tells them from
        // a job that took the same id later.
        let elsewhere: Vec<Submitted> = unended
            .into_iter()
            .filter(|(k, s)| !planned.contains(k) && !s.name.is_empty() && !self.store.object_dir(k).exists())
            .map(|(_, s)| s)
            .take(200)
            .collect();
        if candidates.is_empty() && elsewhere.is_empty() {
            return;
        }
        let refs: Vec<String> = candidates
            .values()
            .chain(&elsewhere)
            .map(|s| s.job.clone())
            .collect();
        let infos = match self.sched.query(&refs) {
            Ok(m) => m,
            Err(e) => {
                // Without an answer we cannot know what is alive; submitting anyway is
                // still safe (a second job for a key waits for the first's lock and then
                // reuses its artifact), just wasteful.
                self.reporter.note(&format!(
                    "cannot ask the scheduler about earlier jobs ({e}); submitting afresh"
                ));
                return;
            }
        };
        let mut stale_children = vec![];
        for (&i, sub) in &candidates {
            let (job, attempt, log) = (&sub.job, &sub.attempt, PathBuf::from(&sub.log));
            let Some(info) = infos.get(job) else { continue };
            // A live job of that id but another name is not ours: job ids start over
            // when a cluster loses its state.
            let foreign = info
                .name
                .as_ref()
                .is_some_and(|n| !sub.name.is_empty() && *n != sub.name);
            if !info.state.alive() || foreign {
                // It ended while no head watched (its final state from accounting, or
                // slurmctld's memory): its step is stale, so it did not publish.
                let how = match &info.state {
                    JobState::Ended(e) => format!("ended {}", e.label()),
                    _ if foreign => "is another job now (the cluster reused its id)".into(),
                    _ => "is unknown to the scheduler".into(),
                };
                self.reporter.note(&format!(
                    "job {job} for {} {how} while no head was watching (see {}); submitting it again",
                    self.id(i),
                    log.display()
                ));
                self.next_attempt.insert(i, attempt + 1);
                continue;
            }
            // In submit-all mode an adopted job may wait on an input whose job is gone;
            // that dependency can never be satisfied, so it is cancelled and resubmitted.
            let orphan = self
                .in_run_inputs(i)
                .iter()
                .any(|j| !matches!(self.st.get(j), Some(St::InFlight(_))));
            if orphan {
                stale_children.push((i, job.clone()));
                self.next_attempt.insert(i, attempt + 1);
                continue;
            }
            let started = matches!(info.state, JobState::Running).then(Instant::now);
            self.reporter.note(&format!(
                "adopted job {job} for {} ({}), submitted by an earlier run",
                self.id(i),
                if started.is_some() { "running" } else { "queued" }
            ));
            self.st.insert(
                i,
                St::InFlight(Job {
                    job: job.clone(),
                    attempt: *attempt,
                    log,
                    submitted: Instant::now(),
                    started,
                }),
            );
            if started.is_some() {
                self.bars.insert(
                    i,
                    self.reporter
                        .started(self.id(i), &self.plan.steps[i].spec.key.short()),
                );
            }
        }
        let _ = self.cancel_logged(&stale_children);
        let live: Vec<&str> = elsewhere
            .iter()
            .filter(|sub| {
                infos
                    .get(&sub.job)
                    .is_some_and(|info| info.state.alive() && info.name.as_ref() == Some(&sub.name))
            })
            .map(|sub| sub.job.as_str())
            .collect();
        if !live.is_empty() {
            self.reporter.note(&format!(
                "{} job(s) an earlier run submitted are still queued or running for steps this plan does not have (the manifest changed since, or another manifest's run): {}; `scancel {}` stops them if they are not wanted",
                live.len(),
                live.join(" "),
                live.join(" ")
            ));
        }
    }

    /// Steps that can be submitted now, in plan (topological) order.
    fn submittable(&self) -> Vec<usize> {
        self.selected
            .iter()
            .copied()
            .filter(|&i| !self.twins.is_twin(i))
            .filter(|i| matches!(self.st[i], St::Waiting))
            .filter(|&i| {
                self.in_run_inputs(i).iter().all(|j| match &self.st[j] {
                    St::Done => true,
                    St::InFlight(_) => self.sopts.submit_all,
                    _ => false,
                })
            })
            .collect()
    }

    fn submit_ready(&mut self) {
        loop {
            if self.busy {
                return;
            }
            let mut ready = self.submittable();
            if let Some(max) = self.sopts.max_jobs {
                ready.truncate(max.saturating_sub(self.in_flight().len()));
            }
            if ready.is_empty() {
                return;
            }
            // In submit-all mode a step may depend on one submitted in this same pass:
            // submit in waves so every dependency has its job id.
            let ready_set: BTreeSet<usize> = ready.iter().copied().collect();
            let wave: Vec<usize> = ready
                .into_iter()
                .filter(|&i| self.in_run_inputs(i).iter().all(|j| !ready_set.contains(j)))
                .collect();
            let mut groups: BTreeMap<GroupKey, Vec<usize>> = BTreeMap::new();
            for i in wave {
                let after: Vec<String> = self
                    .in_run_inputs(i)
                    .iter()
                    .filter_map(|j| match &self.st[j] {
                        St::InFlight(job) => Some(job.job.clone()),
                        _ => None,
                    })
                    .collect();
                // A retry is its own job (its resources may have changed).
                let retry = self.next_attempt.get(&i).is_some_and(|&a| a > 1);
                let single = retry || !self.sopts.arrays;
                let kind = if single {
                    format!("{}#{i}", self.plan.steps[i].spec.kind)
                } else {
                    self.plan.steps[i].spec.kind.clone()
                };
                let key = GroupKey {
                    kind,
                    sbatch: self.resources[&i].sbatch_args(),
                    after,
                };
                groups.entry(key).or_default().push(i);
            }
            let max = self
                .sopts
                .max_array
                .unwrap_or_else(|| self.sched.max_array_tasks())
                .max(1);
            for (key, members) in groups {
                for chunk in array_chunks(members.len(), max) {
                    self.submit(&members[chunk], &key.after);
                }
            }
        }
    }

    /// The selected steps whose requests no node of their partition can satisfy (read
    /// from the scheduler once, before anything is submitted). Twins are never
    /// submitted: only the request of the step that builds their artifact counts.
    fn unsatisfiable_requests(&self) -> Vec<String> {
        let parts = match self.sched.partitions() {
            Ok(Some(p)) => p,
            Ok(None) => return vec![],
            Err(e) => {
                self.reporter.note(&format!(
                    "cannot read the partitions ({e}); requests are not checked before submission"
                ));
                return vec![];
            }
        };
        self.selected
            .iter()
            .filter(|&&i| !self.twins.is_twin(i))
            .filter_map(|&i| {
                super::fit::unsatisfiable(self.id(i), &self.resources[&i], &self.sopts.extra_sbatch, &parts)
            })
            .collect()
    }

    /// Records in the run log that step `i`'s job ended in `state` (so no later head
    /// adopts it).
    fn log_end(&self, i: usize, job: &Job, state: &str) {
        let _ = self.log.append(&[Record::End {
            key: self.plan.steps[i].spec.key,
            job: job.job.clone(),
            state: state.into(),
            unix: now_unix(),
        }]);
    }

    /// Cancels the jobs of steps `(i, job)` and records their end in the run log, so
    /// that a later head neither reports them as ended unwatched nor names them as
    /// left over.
    fn cancel_logged(&self, jobs: &[(usize, String)]) -> Result<(), super::scheduler::SchedError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let refs: Vec<String> = jobs.iter().map(|(_, j)| j.clone()).collect();
        let done = self.sched.cancel(&refs);
        let ends: Vec<Record> = jobs
            .iter()
            .map(|(i, job)| Record::End {
                key: self.plan.steps[*i].spec.key,
                job: job.clone(),
                state: End::Cancelled.label().into(),
                unix: now_unix(),
            })
            .collect();
        let _ = self.log.append(&ends);
        done
    }

    /// A queued job's pending reason: shown when it changes; a reason that never
    /// clears by itself fails the step (and cancels the job) once it has lasted the
    /// grace period. True if the step was settled.
    fn pending_reason(&mut self, i: usize, job: &Job, reason: Option<String>) -> bool {
        let Some(reason) = reason else {
            self.pending.remove(&i);
            return false;
        };
        let since = match self.pending.get(&i) {
            Some((r, t)) if *r == reason => *t,
            _ => {
                self.reporter
                    .waiting(self.id(i), &format!("job {} pending ({reason})", job.job));
                let now = Instant::now();
                self.pending.insert(i, (reason.clone(), now));
                now
            }
        };
        let super::scheduler::Pending::Never(fix) = super::scheduler::classify_pending(&reason) else {
            return false;
        };
        if since.elapsed() < self.sopts.pending_grace {
            return false;
        }
        self.pending.remove(&i);
        let _ = self.sched.cancel(std::slice::from_ref(&job.job));
        self.log_end(i, job, End::Cancelled.label());
        let asked = self.resources[&i].sbatch_args().join(" ");
        self.fail(
            i,
            format!(
                "job {} can never start: Slurm holds it with reason {reason} (asked: {asked}); cancelled it. To fix: {fix}",
                job.job
            ),
        );
        true
    }

    fn submit(&mut self, members: &[usize], after: &[String]) {
        // No controller answered an earlier submission: no script is written, no
        // sbatch tried.
        if let Some(why) = &self.unreachable {
            let msg = format!("not submitted: the Slurm controller could not be reached ({why})");
            for &i in members {
                self.fail(i, msg.clone());
            }
            return;
        }
        let first = &self.plan.steps[members[0]].spec;
        self.counter += 1;
        let name = if members.len() > 1 {
            format!("gp-{}-x{}", first.kind, members.len())
        } else {
            format!("gp-{}-{}", first.kind, first.key.short())
        };
        // Unique per head and submission: a live job of an earlier head may still read
        // its script or key list.
        let stem = format!(
            "{name}-{}-{}-{}",
            now_unix() as u64,
            std::process::id(),
            self.counter
        );
        let keys: Vec<_> = members.iter().map(|&i| self.plan.steps[i].spec.key).collect();
        let steps: Vec<String> = members.iter().map(|&i| self.id(i).to_string()).collect();
        let written = write_job(&self.exec.store, &stem, &keys, &steps, &self.exec);
        let (script, log) = match written {
            Ok(x) => x,
            Err(e) => {
                for &i in members {
                    self.fail(i, format!("cannot write its job script: {e}"));
                }
                return;
            }
        };
        let sub = Submission {
            name,
            keys: keys.clone(),
            steps: steps.clone(),
            script,
            log: log.clone(),
            chdir: self.exec.store.clone(),
            resources: self.resources[&members[0]].clone(),
            after_ok: after.to_vec(),
            throttle: self.sopts.throttle.filter(|_| members.len() > 1),
            extra: self.sopts.extra_sbatch.clone(),
        };
        let job = match self.sched.submit(&sub) {
            Ok(j) => j,
            Err(SchedError::Unreachable(why)) => {
                // Said once in full, with the first step; what would be submitted
                // after it is not tried.
                let first = self.id(members[0]).to_string();
                self.unreachable = Some(format!("as for {first}"));
                let msg = format!(
                    "{why}; nothing more is submitted in this run: check that this machine is a Slurm submit host (SLURM_CONF, `sinfo`), or run with --executor local"
                );
                for &i in members {
                    self.fail(i, msg.clone());
                }
                return;
            }
            Err(SchedError::Busy(why)) if !self.in_flight().is_empty() => {
                // Our own jobs fill the site's quota: submit again when one ends.
                self.reporter.note(&format!(
                    "the cluster takes no more jobs for now ({why}); waiting for some to end"
                ));
                self.busy = true;
                return;
            }
            Err(e) => {
                for &i in members {
                    self.fail(i, format!("submission failed: {e}"));
                }
                return;
            }
        };
        let mut records = vec![];
        for (t, &i) in members.iter().enumerate() {
            let r = sub.task_ref(&job, t);
            let attempt = self.next_attempt.get(&i).copied().unwrap_or(1);
            let log_file = log_of(&log, &r);
            records.push(Record::Submit {
                key: keys[t],
                step: steps[t].clone(),
                job: r.clone(),
                attempt,
                unix: now_unix(),
                log: log_file.display().to_string(),
                name: sub.name.clone(),
            });
            self.st.insert(
                i,
                St::InFlight(Job {
                    job: r,
                    attempt,
                    log: log_file,
                    submitted: Instant::now(),
                    started: None,
                }),
            );
        }
        if let Err(e) = self.log.append(&records) {
            self.reporter.note(&format!(
                "warning: cannot append to {}: {e}",
                self.log.path().display()
            ));
        }
        let what = if members.len() > 1 {
            format!("array job {job} ({} tasks: {})", members.len(), steps.join(", "))
        } else {
            format!("job {job} for {}", steps[0])
        };
        let deps = if after.is_empty() {
            String::new()
        } else {
            format!(" after {}", after.join(","))
        };
        self.reporter.note(&format!("submitted {what}{deps}"));
    }

    fn main_loop(&mut self, cancel: &CancelFlag) {
        let mut backoff = Backoff::new(self.sopts.poll_min, self.sopts.poll_max);
        loop {
            if !self.stop && !cancel.is_cancelled() {
                self.submit_ready();
            }
            if self.in_flight().is_empty() {
                return;
            }
            let wait = backoff.next_wait();
            let t0 = Instant::now();
            while t0.elapsed() < wait && !cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(50).min(wait));
            }
            if cancel.is_cancelled() {
                self.interrupted();
                return;
            }
            if self.poll() {
                self.busy = false;
                backoff.reset();
            }
        }
    }

    /// One poll of every job in flight; true if anything changed.
    fn poll(&mut self) -> bool {
        let flying = self.in_flight();
        let refs: Vec<String> = flying.iter().map(|(_, j)| j.job.clone()).collect();
        let infos = match self.sched.query(&refs) {
            Ok(m) => m,
            Err(e) => {
                self.reporter.note(&format!("poll failed ({e}); trying again"));
                return false;
            }
        };
        let mut changed = false;
        for (i, job) in flying {
            // A step may have been settled by an earlier one of this loop (blocked).
            if !matches!(self.st.get(&i), Some(St::InFlight(j)) if j.job == job.job) {
                continue;
            }
            let info = infos
                .get(&job.job)
                .cloned()
                .unwrap_or_else(|| super::scheduler::JobInfo::new(JobState::Unknown));
            match info.state {
                JobState::Queued => {
                    changed |= self.pending_reason(i, &job, info.reason);
                }
                JobState::Running => {
                    self.pending.remove(&i);
                    if job.started.is_none() {
                        changed = true;
                        let bar = self
                            .reporter
                            .started(self.id(i), &self.plan.steps[i].spec.key.short());
                        self.bars.insert(i, bar);
                        if let Some(St::InFlight(j)) = self.st.get_mut(&i) {
                            j.started = Some(Instant::now());
                        }
                    }
                }
                JobState::Ended(end) => {
                    changed = true;
                    self.ended(i, &job, Some(end), info.node);
                }
                JobState::Unknown => {
                    changed = true;
                    self.ended(i, &job, None, None);
                }
            }
        }
        changed
    }

    /// Whether the step's artifact is in the store, read fresh: a job on another host
    /// published it, and a shared file system may serve stale directory entries for a
    /// while, so a miss is retried for up to `latency_wait` when the job said it
    /// completed.
    fn published(&self, i: usize, patient: bool) -> bool {
        let key = self.plan.steps[i].spec.key;
        let deadline = Instant::now()
            + if patient {
                self.sopts.latency_wait
            } else {
                Duration::ZERO
            };
        loop {
            // Listing the shard folder makes NFS revalidate it; opening and reading
            // meta.json (presence does) bypasses cached attributes.
            if let Some(parent) = self.store.object_dir(&key).parent() {
                let _ = std::fs::read_dir(parent).map(|d| d.count());
            }
            if matches!(self.store.presence(&key), Presence::Present(_)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn ended(&mut self, i: usize, job: &Job, end: Option<End>, node: Option<String>) {
        let label = end
            .as_ref()
            .map(|e| e.label().to_string())
            .unwrap_or("GONE".into());
        self.log_end(i, job, &label);
        let secs = job.started.unwrap_or(job.submitted).elapsed().as_secs_f64();
        let completed = matches!(end, Some(End::Completed));
        if self.published(i, completed) {
            self.bars.remove(&i);
            self.st.insert(i, St::Done);
            self.reporter
                .finished(self.id(i), Outcome::Built, secs, &format!("job {}", job.job));
            self.report.built.push(self.id(i).to_string());
            for t in self.twins.built_by(i) {
                self.st.insert(t, St::Done);
                self.report.share(self.reporter, self.id(t), self.id(i));
            }
            self.check_readers(i);
            return;
        }
        let log = job.log.display();
        match end {
            Some(End::Completed) => self.fail(
                i,
                format!(
                    "job {} completed but its artifact is not in the store (see {log})",
                    job.job
                ),
            ),
            None => self.fail(
                i,
                format!(
                    "job {} left the scheduler without publishing its artifact (see {log})",
                    job.job
                ),
            ),
            Some(End::Cancelled) => {
                let inputs = self.in_run_inputs(i);
                if inputs.iter().all(|j| matches!(self.st[j], St::Done)) {
                    self.fail(i, format!("job {} was cancelled outside goosepipe", job.job));
                } else if inputs
                    .iter()
                    .any(|j| matches!(self.st[j], St::Failed | St::Blocked | St::NotRun))
                {
                    self.bars.remove(&i);
                    self.st.insert(i, St::Blocked);
                } else {
                    // Slurm cancelled it because an input's job ended badly and that
                    // input is being resubmitted: so is this step, after it.
                    self.bars.remove(&i);
                    self.st.insert(i, St::Waiting);
                }
            }
            Some(e) => {
                if !self.stop && self.sopts.retry.should_retry(&e, job.attempt) {
                    self.retry(i, job, &e, node);
                } else {
                    let hint = match e {
                        End::Timeout => " (raise `resources time=`)",
                        End::OutOfMemory => " (raise `resources memory=`)",
                        _ => "",
                    };
                    self.fail(i, format!("job {} ended {}{hint}; see {log}", job.job, e.label()));
                }
            }
        }
    }

    /// Fail fast: the readers of `i` (and of its twins) that have not started check
    /// what it published; one that refuses fails now (a queued job of it is
    /// cancelled), not when its job runs after everything before it.
    fn check_readers(&mut self, i: usize) {
        let mut published = vec![i];
        published.extend(self.twins.built_by(i));
        for p in published {
            for c in self.plan.consumers_of(p) {
                let queued = match self.st.get(&c) {
                    Some(St::Waiting) => None,
                    Some(St::InFlight(j)) if j.started.is_none() => Some(j.job.clone()),
                    _ => continue,
                };
                if let Some(msg) = crate::exec::run::refusal(self.plan, self.store, self.registry, c, p) {
                    if let Some(job) = queued {
                        let _ = self.cancel_logged(&[(c, job)]);
                    }
                    self.fail(c, msg);
                }
            }
        }
    }

    fn retry(&mut self, i: usize, job: &Job, end: &End, node: Option<String>) {
        let res = self.resources.get_mut(&i).expect("resources of a selected step");
        let mut change = String::new();
        if *end == End::OutOfMemory
            && self.sopts.retry.grow_memory
            && let Some(m) = res.doubled_memory()
        {
            change = format!(" with --mem={m}");
            res.memory = Some(m);
        }
        if *end == End::NodeFail
            && self.sopts.retry.exclude_failed_node
            && let Some(n) = node
        {
            change = format!(" excluding node {n}");
            res.sbatch.push(format!("--exclude={n}"));
        }
        self.reporter.note(&format!(
            "{}: job {} ended {}; resubmitting{change} (attempt {})",
            self.id(i),
            job.job,
            end.label(),
            job.attempt + 1
        ));
        self.bars.remove(&i);
        self.next_attempt.insert(i, job.attempt + 1);
        self.st.insert(i, St::Waiting);
        // Dependents queued on the dead job would wait forever (or be cancelled by
        // Slurm): cancel them and submit them again after the retry.
        let mut stack = self.dependents(i);
        let mut orphans = vec![];
        while let Some(c) = stack.pop() {
            if let Some(St::InFlight(j)) = self.st.get(&c) {
                orphans.push((c, j.job.clone()));
                self.st.insert(c, St::Waiting);
                stack.extend(self.dependents(c));
            }
        }
        let _ = self.cancel_logged(&orphans);
    }

    fn fail(&mut self, i: usize, msg: String) {
        self.bars.remove(&i);
        self.st.insert(i, St::Failed);
        self.reporter.finished(self.id(i), Outcome::Failed, 0.0, &msg);
        self.report.failed.push((self.id(i).to_string(), msg));
        // Nothing downstream can run: waiting dependents (and twins) are never
        // submitted; queued ones (submit-all) are cancelled (Slurm would too, with
        // kill-on-invalid-dep).
        let mut stack = self.plan.consumers_of(i);
        stack.extend(self.twins.built_by(i));
        let mut queued = vec![];
        while let Some(c) = stack.pop() {
            match self.st.get(&c) {
                Some(St::Waiting) => {}
                Some(St::InFlight(j)) => queued.push((c, j.job.clone())),
                _ => continue,
            }
            self.bars.remove(&c);
            self.st.insert(c, St::Blocked);
            stack.extend(self.plan.consumers_of(c));
            stack.extend(self.twins.built_by(c));
        }
        if !self.opts.keep_going && !self.stop {
            self.stop = true;
            // Without --keep-going the run stops: jobs that have not started are
            // cancelled, running ones finish (their work is kept).
            for (c, j) in self.in_flight() {
                if j.started.is_none() {
                    queued.push((c, j.job.clone()));
                    self.st.insert(c, St::NotRun);
                }
            }
        }
        let _ = self.cancel_logged(&queued);
    }

    fn interrupted(&mut self) {
        let flying = self.in_flight();
        if flying.is_empty() {
            return;
        }
        let refs: Vec<String> = flying.iter().map(|(_, j)| j.job.clone()).collect();
        let cancel = match self.sopts.on_interrupt {
            OnInterrupt::Cancel => true,
            OnInterrupt::Leave => false,
            OnInterrupt::Ask => {
                if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
                    eprint!(
                        "\n{} job(s) of this run are queued or running. Cancel them with scancel? [y/N] ",
                        refs.len()
                    );
                    let _ = std::io::stderr().flush();
                    let mut line = String::new();
                    let _ = std::io::stdin().lock().read_line(&mut line);
                    matches!(line.trim(), "y" | "Y" | "yes")
                } else {
                    false
                }
            }
        };
        if cancel {
            let jobs: Vec<(usize, String)> = flying.iter().map(|(i, j)| (*i, j.job.clone())).collect();
            match self.cancel_logged(&jobs) {
                Ok(()) => self
                    .reporter
                    .note(&format!("cancelled job(s) {}", refs.join(" "))),
                Err(e) => self.reporter.note(&format!("scancel failed: {e}")),
            }
        } else {
            self.reporter.note(&format!(
                "left {} job(s) running: {}. `goosepipe run` again adopts them; `scancel {}` stops them",
                refs.len(),
                refs.join(" "),
                refs.join(" ")
            ));
        }
        for (i, _) in flying {
            self.bars.remove(&i);
            self.st
                .insert(i, if cancel { St::Cancelled } else { St::LeftRunning });
        }
    }

    fn finish(mut self) -> RunReport {
        for &i in &self.selected {
            match self.st[&i] {
                St::Cancelled => self.report.cancelled.push(self.id(i).to_string()),
                St::LeftRunning => self.report.left_running.push(self.id(i).to_string()),
                St::Waiting | St::Blocked | St::NotRun | St::InFlight(_) => {
                    self.report.skipped.push(self.id(i).to_string())
                }
                St::Done | St::Failed => {}
            }
        }
        self.report
    }
}
