//! The Slurm head's decisions, driven by a fake scheduler that runs each job in-process
//! with the test step kinds: retries, keep-going, adoption after a head dies, array
//! splitting, submit-all chains, Ctrl-C. Fast (no Slurm); tests/slurm.rs covers the real one.

use crate::support;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use goosepipe::app;
use goosepipe::exec::slurm::{
    End, JobInfo, JobState, NodeShape, OnInterrupt, Partition, Record, RunLog, SchedError, Scheduler, Slurm,
    SlurmOptions, Submission,
};
use goosepipe::exec::{CancelFlag, PlainReporter, Registry, RunOptions, execute};
use goosepipe::store::lockfile::Lockfile;
use goosepipe::store::{Key, Store};
use support::{BASE, Behaviour, Log, Project, TWINS, registry, with_twins};

struct Task {
    name: String,
    key: Key,
    after: Vec<String>,
    state: JobState,
    node: Option<String>,
}

/// A scheduler whose jobs run in this process when polled: a queued task starts when
/// its dependencies completed (and is cancelled when one of them did not, like
/// `--kill-on-invalid-dep=yes`), a running one builds its step on the next poll.
struct FakeSlurm {
    store: Store,
    registry: Registry,
    tasks: Mutex<BTreeMap<String, Task>>,
    next_id: AtomicUsize,
    /// Scripted ends per step id, one per attempt, before the step is really built.
    ends: Mutex<HashMap<String, VecDeque<End>>>,
    submissions: Mutex<Vec<Submission>>,
    cancelled: Mutex<Vec<String>>,
    max_array: usize,
    /// Jobs never progress (a cluster that is busy).
    frozen: Mutex<bool>,
    /// Set this flag at the Nth poll (a Ctrl-C).
    interrupt: Mutex<Option<(usize, CancelFlag)>>,
    polls: AtomicUsize,
    /// Refuse submissions (Busy) beyond this many live tasks, like MaxSubmitJobs.
    limit: Option<usize>,
    /// The most tasks ever alive at once.
    max_alive: AtomicUsize,
    /// No controller answers: every submission fails so (counted).
    unreachable: bool,
    tried: AtomicUsize,
    /// What `sinfo` would say (None: the scheduler cannot tell).
    partitions: Option<Vec<Partition>>,
    /// Per step id: the pending reason its job is held with, for this many polls.
    reasons: Mutex<HashMap<String, (String, usize)>>,
}

impl FakeSlurm {
    fn new(p: &Project, reg: &Registry) -> FakeSlurm {
        FakeSlurm {
            store: Store::open(p.store()).unwrap(),
            registry: reg.clone(),
            tasks: Mutex::new(BTreeMap::new()),
            next_id: AtomicUsize::new(100),
            ends: Mutex::new(HashMap::new()),
            submissions: Mutex::new(vec![]),
            cancelled: Mutex::new(vec![]),
            max_array: 1000,
            frozen: Mutex::new(false),
            interrupt: Mutex::new(None),
            polls: AtomicUsize::new(0),
            limit: None,
            max_alive: AtomicUsize::new(0),
            unreachable: false,
            tried: AtomicUsize::new(0),
            partitions: None,
            reasons: Mutex::new(HashMap::new()),
        }
    }
    /// Holds the job of `step` pending with `reason` for `polls` polls.
    fn hold(&self, step: &str, reason: &str, polls: usize) {
        self.reasons
            .lock()
            .unwrap()
            .insert(step.into(), (reason.into(), polls));
    }
    /// The reason a queued task is held with this poll, if any (counting the poll).
    fn held(&self, r: &str) -> Option<String> {
        let key = {
            let tasks = self.tasks.lock().unwrap();
            let t = tasks.get(r)?;
            if t.state != JobState::Queued {
                return None;
            }
            t.key
        };
        let step = self.store.recipe(&key)?.id;
        let mut reasons = self.reasons.lock().unwrap();
        let (reason, left) = reasons.get_mut(&step)?;
        if *left == 0 {
            return None;
        }
        *left -= 1;
        Some(reason.clone())
    }
    fn script(&self, step: &str, ends: &[End]) {
        self.ends
            .lock()
            .unwrap()
            .insert(step.into(), ends.iter().cloned().collect());
    }
    fn subs(&self) -> Vec<Submission> {
        self.submissions.lock().unwrap().clone()
    }
    /// Submissions naming a step.
    fn subs_of(&self, step: &str) -> Vec<Submission> {
        self.subs()
            .into_iter()
            .filter(|s| s.steps.iter().any(|x| x == step))
            .collect()
    }
    fn advance(&self, r: &str) {
        let mut tasks = self.tasks.lock().unwrap();
        let Some(t) = tasks.get(r) else { return };
        match &t.state {
            JobState::Queued => {
                let deps: Vec<JobState> = t
                    .after
                    .iter()
                    .map(|d| tasks.get(d).map(|x| x.state.clone()).unwrap_or(JobState::Unknown))
                    .collect();
                let next = if deps.iter().all(|s| *s == JobState::Ended(End::Completed)) {
                    JobState::Running
                } else if deps
                    .iter()
                    .any(|s| matches!(s, JobState::Ended(e) if *e != End::Completed))
                {
                    JobState::Ended(End::Cancelled)
                } else {
                    JobState::Queued
                };
                tasks.get_mut(r).unwrap().state = next;
            }
            JobState::Running => {
                let key = t.key;
                let spec = self.store.recipe(&key).expect("the head saved the recipe");
                let scripted = self
                    .ends
                    .lock()
                    .unwrap()
                    .get_mut(&spec.id)
                    .and_then(|q| q.pop_front());
                let end = match scripted {
                    Some(e) => e,
                    None => {
                        let r = execute(
                            &spec,
                            &self.store,
                            &self.registry,
                            &Lockfile::default(),
                            &RunOptions::default(),
                            &PlainReporter::new(true),
                            &CancelFlag::new(),
                        );
                        if r.is_ok() { End::Completed } else { End::Failed }
                    }
                };
                let t = tasks.get_mut(r).unwrap();
                t.state = JobState::Ended(end);
                t.node = Some("n1".into());
            }
            _ => {}
        }
    }
}

impl Scheduler for FakeSlurm {
    fn submit(&self, sub: &Submission) -> Result<String, SchedError> {
        self.tried.fetch_add(1, Ordering::SeqCst);
        if self.unreachable {
            return Err(SchedError::Unreachable(
                "sbatch cannot reach a Slurm controller: sbatch: fatal: Could not establish a configuration source".into(),
            ));
        }
        let mut tasks = self.tasks.lock().unwrap();
        let alive = tasks.values().filter(|t| t.state.alive()).count();
        if self.limit.is_some_and(|l| alive + sub.keys.len() > l) {
            return Err(SchedError::Busy("QOSMaxSubmitJobPerUserLimit".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst).to_string();
        for (i, key) in sub.keys.iter().enumerate() {
            tasks.insert(
                sub.task_ref(&id, i),
                Task {
                    name: sub.name.clone(),
                    key: *key,
                    after: sub.after_ok.clone(),
                    state: JobState::Queued,
                    node: None,
                },
            );
        }
        let alive = tasks.values().filter(|t| t.state.alive()).count();
        self.max_alive.fetch_max(alive, Ordering::SeqCst);
        self.submissions.lock().unwrap().push(sub.clone());
        Ok(id)
    }
    fn query(&self, refs: &[String]) -> Result<BTreeMap<String, JobInfo>, SchedError> {
        let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((at, flag)) = &*self.interrupt.lock().unwrap()
            && n >= *at
        {
            flag.cancel();
        }
        let mut held = HashMap::new();
        for r in refs {
            if let Some(reason) = self.held(r) {
                held.insert(r.clone(), reason);
            } else if !*self.frozen.lock().unwrap() {
                self.advance(r);
            }
        }
        let tasks = self.tasks.lock().unwrap();
        Ok(refs
            .iter()
            .map(|r| {
                let info = tasks
                    .get(r)
                    .map(|t| JobInfo {
                        state: t.state.clone(),
                        node: t.node.clone(),
                        name: Some(t.name.clone()),
                        reason: held.get(r).cloned(),
                    })
                    .unwrap_or(JobInfo::new(JobState::Unknown));
                (r.clone(), info)
            })
            .collect())
    }
    fn cancel(&self, refs: &[String]) -> Result<(), SchedError> {
        let mut tasks = self.tasks.lock().unwrap();
        for r in refs {
            if let Some(t) = tasks.get_mut(r)
                && t.state.alive()
            {
                t.state = JobState::Ended(End::Cancelled);
            }
        }
        self.cancelled.lock().unwrap().extend(refs.iter().cloned());
        Ok(())
    }
    fn max_array_tasks(&self) -> usize {
        self.max_array
    }
    fn partitions(&self) -> Result<Option<Vec<Partition>>, SchedError> {
        Ok(self.partitions.clone())
    }
}

fn sopts() -> SlurmOptions {
    SlurmOptions {
        poll_min: Duration::from_millis(1),
        poll_max: Duration::from_millis(4),
        latency_wait: Duration::ZERO,
        on_interrupt: OnInterrupt::Leave,
        ..Default::default()
    }
}

fn run(p: &Project, reg: &Registry, fake: &FakeSlurm, opts: &RunOptions, s: SlurmOptions) -> (i32, String) {
    run_cancellable(p, reg, fake, opts, s, &CancelFlag::new())
}

fn run_cancellable(
    p: &Project,
    reg: &Registry,
    fake: &FakeSlurm,
    opts: &RunOptions,
    s: SlurmOptions,
    cancel: &CancelFlag,
) -> (i32, String) {
    let mut out = Vec::new();
    let ex = Slurm {
        opts: s,
        scheduler: fake,
    };
    let (manifest, store) = (p.manifest(), p.store());
    let req = app::RunRequest {
        manifest: &manifest,
        store: &store,
        registry: reg,
        opts,
        executor: &ex,
        quiet: true,
        cancel,
    };
    let code = app::run_with(&req, &mut out).unwrap_or_else(|e| panic!("{e:?}"));
    (code, String::from_utf8(out).unwrap())
}

fn setup() -> (Project, Registry, Log) {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    (Project::new(BASE), reg, log)
}

#[test]
fn builds_everything_with_independent_steps_as_arrays() {
    let (p, reg, log) = setup();
    let fake = FakeSlurm::new(&p, &reg);
    let (code, out) = run(&p, &reg, &fake, &RunOptions::default(), sopts());
    assert_eq!(code, 0, "{out}");
    assert_eq!(log.take().len(), p.plan(&reg).steps.len());
    assert!(p.stale(&reg).is_empty());
    let experts = fake.subs_of("expert:a");
    assert_eq!(experts.len(), 1);
    assert_eq!(
        experts[0].steps,
        ["expert:a", "expert:b"],
        "one array for both experts"
    );
    assert!(
        experts[0].after_ok.is_empty(),
        "head mode submits only ready steps"
    );
    // A re-run submits nothing.
    let n = fake.subs().len();
    let (code, out) = run(&p, &reg, &fake, &RunOptions::default(), sopts());
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(fake.subs().len(), n);
}

#[test]
fn arrays_are_split_at_the_site_limit_and_throttled() {
    let (p, reg, _) = setup();
    let mut fake = FakeSlurm::new(&p, &reg);
    fake.max_array = 2;
    let s = SlurmOptions {
        throttle: Some(1),
        ..sopts()
    };
    let (code, out) = run(&p, &reg, &fake, &RunOptions::default(), s);
    assert_eq!(code, 0, "{out}");
    // model + 3 datasets are ready at once: datasets (3) split into 2 + 1.
    let sizes: Vec<usize> = fake
        .subs()
        .iter()
        .filter(|s| s.steps[0].starts_with("dataset:"))
        .map(|s| s.keys.len())
        .collect();
    assert_eq!(sizes, [2, 1]);
    let arrays: Vec<Option<usize>> = fake
        .subs()
        .iter()
        .filter(|s| s.is_array())
        .map(|s| s.throttle)
        .collect();
    assert!(
        !arrays.is_empty() && arrays.iter().all(|t| *t == Some(1)),
        "{arrays:?}"
    );
}

#[test]
fn a_timeout_is_retried_once_and_an_out_of_memory_retry_gets_twice_the_memory() {
    let (p, reg, _) = setup();
    let fake = FakeSlurm::new(&p, &reg);
    fake.script("expert:a", &[End::Timeout]);
    fake.script("expert:b", &[End::OutOfMemory]);
    let (code, out) = run(&p, &reg, &fake, &RunOptions::default(), sopts());
    assert_eq!(code, 0, "{out}");
    let a = fake.subs_of("expert:a");
    assert_eq!(a.len(), 2, "first attempt + one retry");
    assert_eq!(a[1].steps, ["expert:a"], "a retry is its own job");
    let b = fake.subs_of("expert:b");
    assert_eq!(
        b[1].resources.memory.as_deref(),
        Some("64G"),
        "{:?}",
        b[1].resources
    );
    // The run log numbers the attempts.
    let attempts: Vec<u32> = RunLog::new(&p.store())
        .read()
        .into_iter()
        .filter_map(|r| match r {
            Record::Submit { step, attempt, .. } if step == "expert:a" => Some(attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [1, 2]);
}

#[test]
fn retries_are_bounded_and_a_failed_step_is_not_retried() {
    let (p, reg, _) = setup();
    let fake = FakeSlurm::new(&p, &reg);
    fake.script("expert:a", &[End::Timeout, End::Timeout]);
    fake.script("expert:b", &[End::Failed]);
    // --keep-going: without it the first failure stops the run, retries included.
    let opts = RunOptions {
        keep_going: true,
        ..Default::default()
    };
    let (code, out) = run(&p, &reg, &fake, &opts, sopts());
    assert_eq!(code, 1, "{out}");
    assert_eq!(fake.subs_of("expert:a").len(), 2);
    assert_eq!(
        fake.subs_of("expert:b").len(),
        1,
        "FAILED is the step's own failure"
    );
    assert!(
        out.contains("ended TIMEOUT") && out.contains("raise `resources time=`"),
        "{out}"
    );
    assert!(fake.subs_of("gate:a").is_empty() && fake.subs_of("pool:p").is_empty());
}

#[test]
fn keep_going_finishes_independent_branches_and_never_submits_dependents() {
    let log = Log::default();
    let reg = registry(
        &log,
        &Behaviour {
            fail: vec!["expert:a".into()],
            ..Default::default()
        },
    );
    let p = Project::new(BASE);
    let fake = FakeSlurm::new(&p, &reg);
    let opts = RunOptions {
        keep_going: true,
        ..Default::default()
    };
    let (code, out) = run(&p, &reg, &fake, &opts, sopts());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("expert:a"), "{out}");
    for id in ["gate:a", "pool:p", "eval:e"] {
        assert!(fake.subs_of(id).is_empty(), "{id} submitted");
    }
    assert_eq!(fake.subs_of("gate:b").len(), 1, "the independent branch finishes");
    assert_eq!(p.stale(&reg), ["eval:e", "expert:a", "gate:a", "pool:p"]);
}

#[test]
fn submit_all_chains_dependencies_and_resubmits_dependents_of_a_retried_job() {
    let (p, reg, _) = setup();
    let fake = FakeSlurm::new(&p, &reg);
    fake.script("expert:a", &[End::NodeFail]);
    let s = SlurmOptions {
        submit_all: true,
        ..sopts()
    };
    let (code, out) = run(&p, &reg, &fake, &RunOptions::default(), s);
    assert_eq!(code, 0, "{out}");
    let first = &fake.subs()[..];
    let eval = fake.subs_of("eval:e");
    assert!(!eval[0].after_ok.is_empty(), "submitted up front with afterok");
    assert_eq!(
        first
            .iter()
            .filter(|s| s.steps.contains(&"eval:e".to_string()))
            .count(),
        2
    );
    let a = fake.subs_of("expert:a");
    assert!(
        a[1].resources.sbatch.contains(&"--exclude=n1".to_string()),
        "{:?}",
        a[1].resources
    );
    // gate:a waited on the dead job: cancelled, and submitted again after the retry.
    let g = fake.subs_of("gate:a");
    assert_eq!(g.len(), 2);
    assert!(!fake.cancelled.lock().unwrap().is_empty());
    assert!(p.stale(&reg).is_empty());
}

#[test]
fn a_new_head_adopts_live_jobs_and_submits_each_step_once() {
    let (p, reg, _) = setup();
    let fake = FakeSlurm::new(&p, &reg);
    // The first head submits the ready steps, then is interrupted and leaves them queued.
    *fake.frozen.lock().unwrap() = true;
    let cancel = CancelFlag::new();
    *fake.interrupt.lock().unwrap() = Some((2, cancel.clone()));
    let (code, out) = run_cancellable(&p, &reg, &fake, &RunOptions::default(), sopts(), &cancel);
    assert_eq!(code, 130, "{out}");
    let first = fake.subs().len();
    assert!(first > 0);
    assert!(fake.cancelled.lock().unwrap().is_empty(), "left running");
    // Said as left running, not as stopped.
    let said = out
        .lines()
        .find(|l| l.starts_with("interrupted:"))
        .unwrap_or_default();
    assert!(
        !said.contains("stopped with their checkpoints kept")
            && said.contains(" left running as cluster jobs (the same command adopts them)"),
        "{out}"
    );
    // The next head adopts them: nothing is submitted twice.
    *fake.frozen.lock().unwrap() = false;
    *fake.interrupt.lock().unwrap() = None;
    let mut out = Vec::new();
    let ex = Slurm {
        opts: sopts(),
        scheduler: &fake,
    };
    let (manifest, store) = (p.manifest(), p.store());
    let req = app::RunRequest {
        manifest: &manifest,
        store: &store,
        registry: &reg,
        opts: &RunOptions::default(),
        executor: &ex,
        quiet: false,
        cancel: &CancelFlag::new(),
    };
    let code = app::run_with(&req, &mut out).unwrap();
    assert_eq!(code, 0);
    let mut per_step: HashMap<String, usize> = HashMap::new();
    for s in fake.subs() {
        for id in s.steps {
            *per_step.entry(id).or_default() += 1;
        }
    }
    assert_eq!(per_step.len(), p.plan(&reg).steps.len());
    assert!(per_step.values().all(|&n| n == 1), "{per_step:?}");
    assert!(p.stale(&reg).is_empty());
}

#[test]
fn ctrl_c_can_cancel_what_was_submitted() {
    let (p, reg, _) = setup();
    let fake = FakeSlurm::new(&p, &reg);
    *fake.frozen.lock().unwrap() = true;
    let cancel = CancelFlag::new();
    *fake.interrupt.lock().unwrap() = Some((1, cancel.clone()));
    let s = SlurmOptions {
        on_interrupt: OnInterrupt::Cancel,
        ..sopts()
    };
    let (code, out) = run_cancellable(&p, &reg, &fake, &RunOptions::default(), s, &cancel);
    assert_eq!(code, 130, "{out}");
    let submitted: usize = fake.subs().iter().map(|s| s.keys.len()).sum();
    assert_eq!(fake.cancelled.lock().unwrap().len(), submitted);
    assert!(
        out.contains(&format!("{submitted} stopped with their checkpoints kept;"))
            && !out.contains("left running"),
        "{out}"
    ); // The head's cancellations are in the run log: the next head resubmits those
    // steps without calling them ended while no head watched.
    *fake.frozen.lock().unwrap() = false;
    *fake.interrupt.lock().unwrap() = None;
    let said = notes_of_a_head(&p, &reg, &fake, &CancelFlag::new());
    assert!(!said.contains("while no head was watching"), "{said}");
    assert!(p.stale(&reg).is_empty(), "{said}");
}

#[test]
fn exec_builds_a_step_from_its_recipe_alone_and_exits_at_once_when_published() {
    let (p, reg, log) = setup();
    let plan = p.plan(&reg);
    let store = Store::open(p.store()).unwrap();
    let spec = &plan.get("dataset:a").unwrap().spec;
    store.save_recipe(spec).unwrap();
    // The manifest is gone: a job only has the store.
    std::fs::remove_file(p.manifest()).unwrap();
    let target = app::ExecTarget::Key(spec.key.hex());
    let try_exec = || {
        app::exec_cmd(
            &p.store(),
            &target,
            None,
            &RunOptions::default(),
            &reg,
            &CancelFlag::new(),
        )
    };
    let exec = || try_exec().unwrap();
    // A recipe edited by hand (a parameter changed, the key kept) is refused: it
    // would publish another step's output under this key.
    let mut edited = spec.clone();
    edited.params["rows"] = serde_json::json!(99);
    store.save_recipe(&edited).unwrap();
    let err = try_exec().unwrap_err().to_string();
    assert!(
        err.contains("does not hash to its key (edited by hand?)"),
        "{err}"
    );
    assert!(log.take().is_empty(), "nothing built from an edited recipe");
    // A damaged recipe is said to be damaged, not missing (it is there).
    let recipe_file = p.store().join("recipes").join(format!("{}.json", spec.key.hex()));
    std::fs::write(&recipe_file, "{\"oops\":").unwrap();
    let err = try_exec().unwrap_err().to_string();
    assert!(
        err.contains("is damaged: ") && err.contains("not a recipe") && !err.contains("has no recipe"),
        "{err}"
    );
    store.save_recipe(spec).unwrap();
    // Held to a lockfile that is not there: refused, not built unchecked.
    let missing = p.dir.path().join("no-such.lock");
    let err = app::exec_cmd(
        &p.store(),
        &target,
        Some(&missing),
        &RunOptions {
            locked: true,
            ..RunOptions::default()
        },
        &reg,
        &CancelFlag::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no-such.lock: no such file"), "{err}");
    assert!(log.take().is_empty(), "{err}");
    assert_eq!(exec(), 0);
    assert_eq!(log.take(), ["dataset:a"]);
    assert!(store.meta(&spec.key).is_some());
    assert_eq!(exec(), 0);
    assert!(log.take().is_empty(), "a published key is not built again");
}

#[test]
fn max_jobs_caps_what_is_queued_and_a_submit_limit_is_waited_out() {
    let (p, reg, _) = setup();
    let fake = FakeSlurm::new(&p, &reg);
    let s = SlurmOptions {
        max_jobs: Some(2),
        ..sopts()
    };
    let (code, out) = run(&p, &reg, &fake, &RunOptions::default(), s);
    assert_eq!(code, 0, "{out}");
    assert_eq!(fake.max_alive.load(Ordering::SeqCst), 2);

    // A site that refuses the third live job: the head waits for one to end.
    let (p, reg, _) = setup();
    let mut fake = FakeSlurm::new(&p, &reg);
    fake.limit = Some(3);
    let s = SlurmOptions {
        arrays: false,
        ..sopts()
    };
    let (code, out) = run(&p, &reg, &fake, &RunOptions::default(), s);
    assert_eq!(code, 0, "{out}");
    assert!(p.stale(&reg).is_empty());
    assert!(fake.max_alive.load(Ordering::SeqCst) <= 3);
}

/// A head with no controller to reach says so once, and submits nothing more: it
/// repeated sbatch's fatal error for every step the run had.
#[test]
fn an_unreachable_controller_is_said_once_and_nothing_more_is_submitted() {
    let (p, reg, _) = setup();
    let mut fake = FakeSlurm::new(&p, &reg);
    fake.unreachable = true;
    let s = SlurmOptions {
        arrays: false,
        ..sopts()
    };
    let (code, out) = run(&p, &reg, &fake, &RunOptions::default(), s);
    assert_ne!(code, 0, "{out}");
    assert_eq!(fake.tried.load(Ordering::SeqCst), 1, "{out}");
    assert_eq!(
        out.matches("Could not establish a configuration source").count(),
        1,
        "{out}"
    );
    assert!(out.contains("nothing more is submitted in this run"), "{out}");
}

fn node(cpus: u64, memory_mb: u64, gpus: u64) -> NodeShape {
    NodeShape {
        cpus,
        memory_mb,
        gpus,
        count: 1,
    }
}

#[test]
fn requests_no_node_can_satisfy_are_refused_before_anything_is_submitted() {
    let (p, reg, log) = setup();
    let mut fake = FakeSlurm::new(&p, &reg);
    // A 2-CPU cluster: the expert kind's GPU-cluster default (4 CPUs, 32G) cannot run here.
    fake.partitions = Some(vec![Partition {
        name: "debug".into(),
        default: true,
        state: "up".into(),
        max_minutes: None,
        nodes: vec![node(2, 19000, 0)],
    }]);
    let ex = Slurm {
        opts: sopts(),
        scheduler: &fake,
    };
    let (manifest, store) = (p.manifest(), p.store());
    let t0 = std::time::Instant::now();
    let err = app::run_with(
        &app::RunRequest {
            manifest: &manifest,
            store: &store,
            registry: &reg,
            opts: &RunOptions::default(),
            executor: &ex,
            quiet: true,
            cancel: &CancelFlag::new(),
        },
        &mut Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(fake.subs().is_empty(), "nothing may be submitted");
    assert!(log.take().is_empty());
    for needle in [
        "nothing was submitted",
        "expert:a asks for cpus=4 memory=32G gpus=0 time=8:00:00",
        "which no node of partition `debug` has (1 node of 2 CPUs, 19000 MB, 0 GPUs)",
        "change `resources` on its node or in `defaults`",
        "gate:b",
    ] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
    // Sized to the site in the manifest, the same run goes through.
    p.write(&BASE.replace(
        "    gate steps=5\n",
        "    gate steps=5\n    resources cpus=2 memory=\"4G\" time=\"1:00:00\"\n",
    ));
    let (code, out) = run(&p, &reg, &fake, &RunOptions::default(), sopts());
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_job_pending_for_a_reason_that_never_clears_fails_its_step_and_transient_ones_only_show() {
    let (p, reg, _) = setup();
    let fake = FakeSlurm::new(&p, &reg);
    fake.hold("expert:a", "PartitionTimeLimit", usize::MAX);
    fake.hold("expert:b", "Priority", 3);
    let s = SlurmOptions {
        pending_grace: Duration::from_millis(20),
        arrays: false,
        ..sopts()
    };
    let opts = RunOptions {
        keep_going: true,
        ..Default::default()
    };
    let (code, out) = run(&p, &reg, &fake, &opts, s);
    assert_ne!(code, 0, "{out}");
    // (The pending reasons themselves are notes of the reporter, on stderr: tests/slurm.rs reads them.)
    assert!(
        out.contains("can never start: Slurm holds it with reason PartitionTimeLimit")
            && out.contains("To fix: lower cpus, memory, gpus or time"),
        "{out}"
    );
    // Its job was cancelled; the transient wait of expert:b only delayed it.
    assert_eq!(fake.subs_of("expert:a").len(), 1, "not resubmitted");
    assert_eq!(fake.cancelled.lock().unwrap().len(), 1, "its job, nothing else");
    let stale = p.stale(&reg);
    assert!(stale.contains(&"expert:a".to_string()));
    assert!(
        !stale.contains(&"expert:b".to_string()) && !stale.contains(&"gate:b".to_string()),
        "{stale:?}"
    );
}

#[test]
fn twins_are_never_submitted_and_share_the_artifact_of_their_first() {
    // Submit-all too: a twin's consumers chain on the job that builds its artifact.
    for submit_all in [false, true] {
        let log = Log::default();
        let reg = registry(&log, &Behaviour::default());
        let p = Project::new(&with_twins());
        let fake = FakeSlurm::new(&p, &reg);
        let s = SlurmOptions {
            submit_all,
            ..sopts()
        };
        let (code, out) = run(&p, &reg, &fake, &RunOptions::default(), s);
        assert_eq!(code, 0, "{out}");
        for t in TWINS {
            assert!(
                fake.subs_of(t).is_empty(),
                "{t} was submitted (submit-all {submit_all})"
            );
        }
        assert!(
            out.contains("4 sharing the artifact of one of them (same key)"),
            "{out}"
        );
        assert_eq!(log.take().len(), p.plan(&reg).steps.len() - 4);
        assert!(p.stale(&reg).is_empty());
    }
}

/// A head interrupted with jobs left queued, then the manifest edited: the next head
/// submits the new keys and names the jobs left for keys its plan no longer has,
/// with the command that stops them (they held the queue unseen).
#[test]
fn a_new_head_names_jobs_left_for_steps_its_plan_no_longer_has() {
    let (p, reg, _) = setup();
    let fake = FakeSlurm::new(&p, &reg);
    *fake.frozen.lock().unwrap() = true;
    let cancel = CancelFlag::new();
    *fake.interrupt.lock().unwrap() = Some((2, cancel.clone()));
    let (code, out) = run_cancellable(&p, &reg, &fake, &RunOptions::default(), sopts(), &cancel);
    assert_eq!(code, 130, "{out}");
    assert!(!fake.subs_of("dataset:a").is_empty());
    p.write(&BASE.replace("config=\"a\"", "config=\"a2\""));
    let cancel = CancelFlag::new();
    *fake.interrupt.lock().unwrap() = Some((fake.polls.load(Ordering::SeqCst) + 2, cancel.clone()));
    let said = notes_of_a_head(&p, &reg, &fake, &cancel);
    assert!(
        said.contains(
            "1 job(s) an earlier run submitted are still queued or running for steps this plan does not have"
        ),
        "{said}"
    );
    assert!(said.contains("`scancel "), "{said}");
}

/// The notes a head says (they go to stderr through `run`), from the executor alone
/// with a reporter that keeps them.
fn notes_of_a_head(p: &Project, reg: &Registry, fake: &FakeSlurm, cancel: &CancelFlag) -> String {
    let notes = Notes::default();
    let plan = p.plan(reg);
    let store = Store::open(p.store()).unwrap();
    let lock = goosepipe::store::lockfile::Lockfile::default();
    let status = goosepipe::plan::status::status(&plan, &store, &lock);
    let ex = Slurm {
        opts: sopts(),
        scheduler: fake,
    };
    let cx = goosepipe::exec::executor::RunContext {
        plan: &plan,
        status: &status,
        store: &store,
        registry: reg,
        lock: &lock,
        lock_path: p.dir.path().join("pipeline.kdl.lock"),
        opts: &RunOptions::default(),
        reporter: &notes,
        cancel,
    };
    let _ = goosepipe::exec::executor::Executor::execute(&ex, &cx);
    notes.0.lock().unwrap().join("\n")
}

/// A reporter that keeps the notes it is given.
#[derive(Default)]
struct Notes(std::sync::Mutex<Vec<String>>);

impl goosepipe::exec::progress::Reporter for Notes {
    fn begin(&self, _: usize, _: usize) {}
    fn started(&self, _: &str, _: &str) -> Box<dyn goosepipe::exec::progress::StepProgress + '_> {
        Box::new(goosepipe::exec::progress::Silent)
    }
    fn finished(&self, _: &str, _: goosepipe::exec::progress::Outcome, _: f64, _: &str) {}
    fn note(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
    fn end(&self) {}
}
