//! The local scheduler: runs stale steps in dependency order, `-j N` at a time,
//! publishing each artifact atomically and never running a step whose key another
//! run is building (per-key locks; the second run waits, then reuses).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Instant;

use super::executor::{Executor, Local, RunContext};
pub use super::executor::{RunError, RunOptions, RunReport};
use super::progress::{Outcome, Reporter};
use super::step::{CancelFlag, InputArtifact, Registry, StepContext, StepError};
use crate::plan::{Plan, Status, Twins};
use crate::store::artifact::content_digest;
use crate::store::artifact::now_unix;
use crate::store::key::short_hex;
use crate::store::lockfile::{LockedStep, Lockfile, Reproduction};
use crate::store::{ArtifactMeta, External, Presence, StepSpec, Store, StoreError};

/// Which steps this run builds, in plan order: what the options ask for ([`wanted`])
/// but a step whose key is provisional (early cutoff): it waits for its datasets, and
/// the run plans again once they are built ([`outputs_first`]). An executor never
/// sees one, so no recipe, lock or job is ever made for a provisional key.
pub fn select(plan: &Plan, status: &Status, opts: &RunOptions) -> Result<Vec<usize>, RunError> {
    let mut chosen = wanted(plan, status, opts)?;
    chosen.retain(|&i| plan.steps[i].waits_for.is_empty());
    Ok(chosen)
}

/// Every step the options ask for that is not cached, in plan order, waiting steps
/// (early cutoff) included.
pub fn wanted(plan: &Plan, status: &Status, opts: &RunOptions) -> Result<Vec<usize>, RunError> {
    let n = plan.steps.len();
    let mut want = vec![false; n];
    if !opts.only.is_empty() {
        let cached = |i: usize| matches!(status.states[i], crate::plan::State::Cached);
        let mut todo = VecDeque::new();
        for name in &opts.only {
            let i = plan.resolve(name).map_err(RunError::Selection)?;
            if !cached(i) && !want[i] {
                want[i] = true;
                todo.push_back(i);
            }
        }
        // Every input of a selected step must be built already, or be built by this
        // run: selected itself, or the twin of a selected step (same key, so one
        // artifact serves both: the first of the two in plan order builds it, the
        // other shares it). An added twin's inputs are checked the same way, after
        // every step the user named, so a missing input is named through those.
        let keys: BTreeSet<crate::store::Key> = todo.iter().map(|&k| plan.steps[k].spec.key).collect();
        while let Some(i) = todo.pop_front() {
            for j in plan.inputs_of(i) {
                if want[j] || cached(j) {
                    continue;
                }
                // Early cutoff: an input whose key waits for datasets is known once
                // they are built; the run builds the selected ones first and plans
                // again (then the input is cached, or the selection is refused).
                let waits = &plan.steps[j].waits_for;
                if !waits.is_empty() {
                    let unselected: Vec<&str> = waits
                        .iter()
                        .filter(|d| !plan.index.get(*d).is_some_and(|&k| want[k]))
                        .map(String::as_str)
                        .collect();
                    if unselected.is_empty() {
                        continue;
                    }
                    return Err(RunError::Selection(format!(
                        "{} needs {}, whose key waits for the output of {} (early cutoff); add {} to --only, or use --until {}",
                        plan.steps[i].id(),
                        plan.steps[j].id(),
                        unselected.join(", "),
                        if unselected.len() == 1 { "it" } else { "them" },
                        plan.steps[i].id()
                    )));
                }
                if !keys.contains(&plan.steps[j].spec.key) {
                    return Err(RunError::Selection(format!(
                        "{} needs {}, which is not built; add it to --only or use --until {}",
                        plan.steps[i].id(),
                        plan.steps[j].id(),
                        plan.steps[i].id()
                    )));
                }
                want[j] = true;
                todo.push_back(j);
            }
        }
    } else if let Some(t) = &opts.until {
        let t = plan.resolve(t).map_err(RunError::Selection)?;
        let mut stack = vec![t];
        while let Some(i) = stack.pop() {
            if want[i] || matches!(status.states[i], crate::plan::State::Cached) {
                continue;
            }
            want[i] = true;
            stack.extend(plan.inputs_of(i));
        }
    } else {
        for (w, st) in want.iter_mut().zip(&status.states) {
            *w = st.will_run();
        }
    }
    Ok((0..n).filter(|&i| want[i]).collect())
}

/// Early cutoff: the datasets (ids, plan order) that must be built before the steps
/// this run selects can be keyed: the stale ones whose output a selected step waits
/// for and whose own keys are known (a content-keyed step that read another would
/// wait for the next round). Empty when no selected step waits (always, without early
/// cutoff).
pub fn outputs_first(plan: &Plan, status: &Status, opts: &RunOptions) -> Result<Vec<String>, RunError> {
    if !plan.waits() {
        return Ok(vec![]);
    }
    let selected = wanted(plan, status, opts)?;
    let waited: BTreeSet<&str> = selected
        .iter()
        .flat_map(|&i| plan.steps[i].waits_for.iter().map(String::as_str))
        .collect();
    Ok(selected
        .iter()
        .filter(|&&i| plan.steps[i].waits_for.is_empty())
        .map(|&i| plan.steps[i].id())
        .filter(|id| waited.contains(id))
        .map(str::to_string)
        .collect())
}

/// The steps of `chosen` that neither are in `failed` nor read one of them, directly
/// or not (ids, plan order): what the rest of a `--keep-going` run may still build.
/// The default selection leaves a failed dataset out by its state; `--only` and
/// `--until` would pick it again, so the caller names what is left instead.
pub fn clear_of(plan: &Plan, chosen: &[usize], failed: &BTreeSet<String>) -> Vec<String> {
    // Plan order puts every input before its readers: one pass marks the held-up.
    let mut held = vec![false; plan.steps.len()];
    for (i, s) in plan.steps.iter().enumerate() {
        held[i] = failed.contains(s.id()) || plan.inputs_of(i).into_iter().any(|j| held[j]);
    }
    chosen
        .iter()
        .filter(|&&i| !held[i])
        .map(|&i| plan.steps[i].id().to_string())
        .collect()
}

/// Whether a wanted step waits for a dataset that the status finds built (another
/// run published it between this run's plan and its status): planning again keys it.
pub fn waits_on_cached(plan: &Plan, status: &Status, opts: &RunOptions) -> Result<bool, RunError> {
    if !plan.waits() {
        return Ok(false);
    }
    Ok(wanted(plan, status, opts)?.iter().any(|&i| {
        plan.steps[i].waits_for.iter().any(|d| {
            plan.index
                .get(d)
                .is_some_and(|&j| matches!(status.states[j], crate::plan::State::Cached))
        })
    }))
}

/// Checks, before anything runs, that `--locked` can hold: every step and local file
/// must be exactly as the lockfile says. `here`: the numerics this run's steps compute,
/// where it knows them (not a Slurm head's: its nodes may be other CPUs).
pub fn check_locked(plan: &Plan, store: &Store, lock: &Lockfile, here: Option<&str>) -> Result<(), RunError> {
    let mut problems = vec![];
    // Cached artifacts refused for tables built on other numerics than pins this
    // process computes: built again here, they would be the pins.
    let mut rebuild_here = false;
    for s in &plan.steps {
        match lock.steps.get(&s.spec.id) {
            // A provisional key (early cutoff): the lockfile would have let the plan
            // key it had it pinned the output of each dataset it waits for (as built
            // with the key it has now), so it will change: said before anything is
            // built.
            _ if !s.waits_for.is_empty() => {
                for d in &s.waits_for {
                    problems.push(format!(
                        "{d}: the lockfile does not pin its output (content=) under the key it has now, and the steps after it are keyed by it (early cutoff; a lockfile written before early-cutoff was turned on pins none: run once without --locked)"
                    ));
                }
            }
            None => problems.push(format!("{} is not in the lockfile", s.spec.id)),
            Some(l) if l.key != s.spec.key => problems.push(format!(
                "{} has key {}, the lockfile pins {}",
                s.spec.id,
                s.spec.key.short(),
                l.key.short()
            )),
            // Already in the store: its digest (and under early cutoff a dataset's
            // content) is known now, before anything runs.
            Some(pin @ LockedStep { digest: Some(_), .. }) => {
                if let Some(m) = store.meta(&s.spec.key) {
                    // Another digest from other numerics is last bits, unless its
                    // tables differ too (said after the run, with the others).
                    let built = s.pinned_as(&m);
                    let found = pin.reproduced_by(&built);
                    if let (Reproduction::Content, Some(content)) = (&found, &built.content) {
                        problems.push(format!(
                            "{} is in the store with content {}, the lockfile pins {}",
                            s.spec.id,
                            short_hex(content),
                            pin.content.as_deref().map_or("none", short_hex)
                        ));
                    } else if found.refused() {
                        problems.push(format!(
                            "{} is in the store with {}",
                            s.spec.id,
                            not_the_pin(&built, pin, &found)
                        ));
                        if matches!(found, Reproduction::OtherNumerics { .. })
                            && here.is_some_and(|h| {
                                pin.numerics.as_deref() == Some(h)
                                    && crate::process::numerics::reproducible(h)
                            })
                        {
                            rebuild_here = true;
                        }
                    }
                }
            }
            _ => {}
        }
        for e in &s.spec.externals {
            if let External::Path { blake3, .. } = e {
                let name = e.lock_name();
                match lock.externals.get(&name) {
                    Some(v) if v == blake3 => {}
                    Some(v) => problems.push(format!(
                        "{name} changed (blake3 {}, locked {})",
                        short_hex(blake3),
                        short_hex(v)
                    )),
                    None => problems.push(format!("{name} is not in the lockfile")),
                }
            }
        }
    }
    for id in lock.steps.keys() {
        if plan.get(id).is_none() {
            problems.push(format!(
                "the lockfile has {id}, which the manifest no longer defines"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        // Once each (many steps wait for one dataset), in the order found.
        let mut seen = BTreeSet::new();
        problems.retain(|p| seen.insert(p.clone()));
        // The store was built on other numerics than pins this run computes (another
        // machine, another build; before 2026-12-08 an AVX-512 CPU computed `avx512f`
        // by default): the check of the pins is a store of this run's artifacts.
        let remedy = match here.filter(|_| rebuild_here) {
            None => "(run without --locked to update it)".to_string(),
            Some(h) => format!(
                "(this goosepipe computes {h}, the numerics of those pins, and the store's were built on others (another machine, an `avx512` build, an earlier goosepipe): `run --locked --store NEW_DIR` builds them here to check the pins; a run without --locked updates the lockfile to this store)"
            ),
        };
        Err(RunError::Locked(format!(
            "the lockfile would change:\n  {}\n{remedy}",
            problems.join("\n  ")
        )))
    }
}

/// Re-hashes every cached artifact that a step of this run will read. A corrupt one is
/// quarantined and joins the run, so it is rebuilt rather than consumed.
pub(crate) fn verify_inputs(
    plan: &Plan,
    status: &Status,
    store: &Store,
    opts: &RunOptions,
    reporter: &dyn Reporter,
) -> Result<Status, RunError> {
    let mut status = status.clone();
    let mut verified = BTreeSet::new();
    loop {
        let selected = select(plan, &status, opts)?;
        let mut changed = false;
        for &i in &selected {
            for j in plan.inputs_of(i) {
                if !matches!(status.states[j], crate::plan::State::Cached) || !verified.insert(j) {
                    continue;
                }
                let key = plan.steps[j].spec.key;
                if let Err(e) = crate::plan::integrity::verify(store, &key) {
                    // A file this user may not read (a shared store, another user's
                    // umask) is not damage: moving an intact artifact aside and
                    // rebuilding it would be wrong; the run stops, naming the file.
                    if e.is_permission_denied() {
                        return Err(RunError::Store(e));
                    }
                    reporter.note(&format!("{}: {e}; it will be rebuilt", plan.steps[j].id()));
                    store.quarantine(&key)?;
                    status.states[j] = crate::plan::State::Stale {
                        reasons: vec![crate::plan::Reason::Corrupt {
                            detail: e.to_string(),
                        }],
                    };
                    changed = true;
                }
            }
        }
        if !changed {
            return Ok(status);
        }
    }
}

enum Done {
    Ok(usize, Outcome, f64),
    Err(usize, Outcome, f64, String),
}

impl Executor for Local {
    fn execute(&self, cx: &RunContext) -> Result<RunReport, RunError> {
        run(cx)
    }
}

/// Runs the selected steps on threads of this process (the [`Local`] executor).
/// Artifacts that finish are published even if others fail.
pub fn run(cx: &RunContext) -> Result<RunReport, RunError> {
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
        let here = crate::process::numerics::numerics(&opts.device);
        check_locked(plan, store, lock, Some(&here))?;
    }
    let status = &verify_inputs(plan, status, store, opts, reporter)?;
    let selected = select(plan, status, opts)?;
    let mut report = RunReport {
        cached: status
            .states
            .iter()
            .filter(|s| matches!(s, crate::plan::State::Cached))
            .count(),
        ..Default::default()
    };
    ensure_runnable(plan, registry, &selected)?;
    reporter.begin(selected.len(), report.cached);
    let mut frontier = Frontier::new(plan, &selected);
    let mut stop = false;
    let jobs = opts.jobs.or(plan.manifest.jobs).unwrap_or(1).max(1);
    let (tx, rx) = mpsc::channel::<Done>();
    let mut running = 0usize;
    std::thread::scope(|scope| {
        loop {
            while !stop && !cancel.is_cancelled() && running < jobs {
                let Some(i) = frontier.ready.pop_front() else {
                    break;
                };
                running += 1;
                let tx = tx.clone();
                scope.spawn(move || {
                    let _ = tx.send(execute_caught(cx, i));
                });
            }
            if running == 0 {
                break;
            }
            let Ok(done) = rx.recv() else { break };
            running -= 1;
            stop |= record(done, &mut frontier, &mut report, cx);
        }
    });
    report.skipped = not_finished(plan, &selected, &report);
    reporter.end();
    Ok(report)
}

/// The selected steps not yet started: how many of its selected inputs each still
/// waits for, those ready to start, and those a failure upstream blocks.
struct Frontier<'p> {
    plan: &'p Plan,
    in_run: BTreeSet<usize>,
    waiting_on: BTreeMap<usize, usize>,
    ready: VecDeque<usize>,
    blocked: BTreeSet<usize>,
    /// Selected steps with the key of an earlier selected step, mapped to it. A twin
    /// never starts (it would only wait for the other's lock, holding a job slot): it
    /// finishes when that step does, or is blocked with it.
    twins: Twins,
}

impl<'p> Frontier<'p> {
    fn new(plan: &'p Plan, selected: &[usize]) -> Self {
        let in_run: BTreeSet<usize> = selected.iter().copied().collect();
        let twins = plan.twins(selected.iter().copied());
        let waiting_on: BTreeMap<usize, usize> = selected
            .iter()
            .filter(|&&i| !twins.is_twin(i))
            .map(|&i| {
                (
                    i,
                    plan.inputs_of(i)
                        .into_iter()
                        .filter(|j| in_run.contains(j))
                        .count(),
                )
            })
            .collect();
        let ready = selected
            .iter()
            .copied()
            .filter(|i| waiting_on.get(i) == Some(&0))
            .collect();
        Frontier {
            plan,
            in_run,
            waiting_on,
            ready,
            blocked: BTreeSet::new(),
            twins,
        }
    }

    /// Step `i` is built: its consumers wait for one input less.
    fn built(&mut self, i: usize) {
        for c in self.plan.consumers_of(i) {
            if let Some(w) = self.waiting_on.get_mut(&c) {
                *w -= 1;
                if *w == 0 && !self.blocked.contains(&c) {
                    self.ready.push_back(c);
                }
            }
        }
    }

    /// Step `i` refused an input before it started: it never starts, and neither
    /// does anything downstream of it.
    fn refuse(&mut self, i: usize) {
        self.ready.retain(|&r| r != i);
        self.blocked.insert(i);
        self.blocked_by(i);
    }

    /// Step `i` failed or stopped: everything downstream of it cannot run.
    fn blocked_by(&mut self, i: usize) {
        let mut stack = self.plan.consumers_of(i);
        stack.extend(self.twins.built_by(i));
        while let Some(c) = stack.pop() {
            if self.in_run.contains(&c) && self.blocked.insert(c) {
                stack.extend(self.plan.consumers_of(c));
                stack.extend(self.twins.built_by(c));
            }
        }
    }
}

/// Reports a finished step and moves the frontier; true when the run should start
/// nothing more (a failure without `--keep-going`).
fn record(done: Done, frontier: &mut Frontier, report: &mut RunReport, cx: &RunContext) -> bool {
    let (plan, reporter) = (cx.plan, cx.reporter);
    match done {
        Done::Ok(i, outcome, secs) => {
            let id = plan.steps[i].id().to_string();
            reporter.finished(&id, outcome, secs, "");
            frontier.built(i);
            // Its twins are done too: the artifact they name is the one just published.
            for t in frontier.twins.built_by(i) {
                report.share(reporter, plan.steps[t].id(), &id);
                frontier.built(t);
            }
            if outcome == Outcome::Reused {
                report.reused.push(id.clone());
            } else {
                report.built.push(id.clone());
            }
            // Fail fast: a step that reads what was just published checks it now, not
            // when its turn comes after everything else before it.
            let mut stop = false;
            for published in std::iter::once(i).chain(frontier.twins.built_by(i)) {
                for (c, msg) in refused_by_readers(cx, frontier, published) {
                    frontier.refuse(c);
                    let reader = plan.steps[c].id().to_string();
                    reporter.finished(&reader, Outcome::Failed, 0.0, &msg);
                    report.failed.push((reader, msg));
                    stop |= !cx.opts.keep_going;
                }
            }
            stop
        }
        Done::Err(i, outcome, secs, msg) => {
            let id = plan.steps[i].id().to_string();
            frontier.blocked_by(i);
            if outcome == Outcome::Cancelled {
                reporter.finished(
                    &id,
                    outcome,
                    secs,
                    "its checkpoints are kept; run the same command again to resume",
                );
                report.cancelled.push(id);
                return false;
            }
            reporter.finished(&id, outcome, secs, &msg);
            report.failed.push((id, msg));
            !cx.opts.keep_going
        }
    }
}

/// The ids of the plan's steps with the key of step `id` (itself and its twins).
pub fn same_key(plan: &Plan, id: &str) -> Vec<String> {
    let Some(step) = plan.get(id) else {
        return vec![id.to_string()];
    };
    plan.steps
        .iter()
        .filter(|s| s.spec.key == step.spec.key)
        .map(|s| s.id().to_string())
        .collect()
}

/// Fail fast between runs of an executor (early cutoff's parts): of `chosen`, the
/// steps that read one of `built` (ids just published) and refuse it, with why.
pub fn refusals(
    plan: &Plan,
    store: &Store,
    registry: &Registry,
    chosen: &[usize],
    built: &[String],
) -> Vec<(String, String)> {
    let built: Vec<usize> = built
        .iter()
        .filter_map(|id| plan.index.get(id).copied())
        .collect();
    chosen
        .iter()
        .filter_map(|&r| {
            let inputs = plan.inputs_of(r);
            let why = built
                .iter()
                .filter(|b| inputs.contains(b))
                .find_map(|&b| refusal(plan, store, registry, r, b))?;
            Some((plan.steps[r].id().to_string(), why))
        })
        .collect()
}

/// Fail fast before a run starts: of `chosen`, the steps that refuse an input an
/// earlier run built (cached now), with why. Without this, a reader whose data was
/// already in the store would find out only at its turn, after every step before it
/// (hours of training) had run.
pub fn refusals_of_cached(
    plan: &Plan,
    status: &Status,
    store: &Store,
    registry: &Registry,
    chosen: &[usize],
) -> Vec<(String, String)> {
    chosen
        .iter()
        .filter_map(|&r| {
            let why = plan
                .inputs_of(r)
                .into_iter()
                .filter(|&b| matches!(status.states[b], crate::plan::State::Cached))
                .find_map(|b| {
                    let why = refused_input(plan, store, registry, r, b)?;
                    // A damaged artifact is the run's to find and rebuild (it
                    // re-hashes what it reads), not a reason to refuse: re-hashed
                    // before it is refused.
                    crate::plan::integrity::verify(store, &plan.steps[b].spec.key).ok()?;
                    Some(format!(
                        "{why} (found in {}, built by an earlier run, before this run started anything)",
                        plan.steps[b].id()
                    ))
                })?;
            Some((plan.steps[r].id().to_string(), why))
        })
        .collect()
}

/// The steps of this run that read `i` and refuse what it published, with why.
fn refused_by_readers(cx: &RunContext, frontier: &Frontier, i: usize) -> Vec<(usize, String)> {
    cx.plan
        .consumers_of(i)
        .into_iter()
        .filter(|c| frontier.in_run.contains(c) && !frontier.blocked.contains(c))
        .filter_map(|c| Some((c, refusal(cx.plan, cx.store, cx.registry, c, i)?)))
        .collect()
}

/// Fail fast: why step `reader` refuses what its input `published` just published
/// ([`StepRunner::check_input`](crate::exec::StepRunner::check_input)), said as the
/// reader's failure; None when it takes it. Every executor asks its readers that
/// have not started.
pub fn refusal(
    plan: &Plan,
    store: &Store,
    registry: &Registry,
    reader: usize,
    published: usize,
) -> Option<String> {
    let why = refused_input(plan, store, registry, reader, published)?;
    Some(format!(
        "{why} (found when {} was built, before {} could start)",
        plan.steps[published].id(),
        plan.steps[reader].id()
    ))
}

/// Why step `reader` refuses the published artifact of its input `input`, or None.
fn refused_input(
    plan: &Plan,
    store: &Store,
    registry: &Registry,
    reader: usize,
    input: usize,
) -> Option<String> {
    let input = &plan.steps[input].spec;
    let spec = &plan.steps[reader].spec;
    let runner = registry.get(&spec.kind)?;
    let files = store.files_dir(&input.key);
    spec.inputs.iter().filter(|i| i.id == input.id).find_map(|i| {
        match runner.check_input(spec, &i.role, &files) {
            Err(StepError::Failed(m)) => Some(m),
            _ => None,
        }
    })
}

/// Every selected step's kind has a runner in this build.
fn ensure_runnable(plan: &Plan, registry: &Registry, selected: &[usize]) -> Result<(), RunError> {
    for &i in selected {
        let kind = &plan.steps[i].spec.kind;
        if registry.get(kind).is_none() {
            return Err(RunError::Selection(format!(
                "step {} is of kind `{kind}`, which this build of goosepipe can plan but not run",
                plan.steps[i].id()
            )));
        }
    }
    Ok(())
}

/// Step `i` built on this thread; a panic in its runner becomes its failure.
fn execute_caught(cx: &RunContext, i: usize) -> Done {
    let t0 = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        execute(
            &cx.plan.steps[i].spec,
            cx.store,
            cx.registry,
            cx.lock,
            cx.opts,
            cx.reporter,
            cx.cancel,
        )
    }));
    let secs = t0.elapsed().as_secs_f64();
    match result {
        Ok(Ok(outcome)) => Done::Ok(i, outcome, secs),
        Ok(Err(StepError::Cancelled)) => Done::Err(i, Outcome::Cancelled, secs, String::new()),
        Ok(Err(StepError::Failed(m))) => {
            Done::Err(i, Outcome::Failed, secs, super::step::with_full_disk_hint(m))
        }
        Err(p) => {
            let what = crate::process::contain::panic_message(p.as_ref());
            Done::Err(
                i,
                Outcome::Failed,
                secs,
                format!("internal error (a bug in goosepipe, please report it): {what}"),
            )
        }
    }
}

/// The selected steps that neither finished, failed nor stopped (blocked by a failure).
fn not_finished(plan: &Plan, selected: &[usize], report: &RunReport) -> Vec<String> {
    let finished: BTreeSet<&str> = report
        .built
        .iter()
        .chain(&report.reused)
        .chain(&report.shared)
        .chain(report.failed.iter().map(|(id, _)| id))
        .chain(&report.cancelled)
        .chain(&report.left_running)
        .map(String::as_str)
        .collect();
    selected
        .iter()
        .map(|&i| plan.steps[i].id())
        .filter(|id| !finished.contains(id))
        .map(str::to_string)
        .collect()
}

/// Builds one step: lock its key, reuse if someone else built it meanwhile, verify
/// inputs, run into a staging folder, publish. Used by the local scheduler and by
/// cluster workers (`goosepipe exec --key`).
pub fn execute(
    spec: &StepSpec,
    store: &Store,
    registry: &Registry,
    lock: &Lockfile,
    opts: &RunOptions,
    reporter: &dyn Reporter,
    cancel: &CancelFlag,
) -> Result<Outcome, StepError> {
    let store_err = |e: StoreError| StepError::msg(e.to_string());
    store.save_recipe(spec).map_err(store_err)?;
    let _guard = match store.try_lock(&spec.key).map_err(store_err)? {
        Some(g) => g,
        None => {
            reporter.note(&format!(
                "{}: another run is building this key; waiting for it",
                spec.id
            ));
            // Asked again and again rather than blocked on: Ctrl-C stops the wait
            // (a training step may hold the key for hours, and this run has nothing
            // of its own to save).
            loop {
                cancel.check()?;
                if let Some(g) = store.try_lock(&spec.key).map_err(store_err)? {
                    break g;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    };
    match store.presence(&spec.key) {
        Presence::Present(_) => return Ok(Outcome::Reused),
        Presence::Corrupt(why) => {
            // Another user's artifact this user may not read is not moved aside.
            if let Some(denied) = store.denied(&spec.key) {
                return Err(StepError::msg(format!(
                    "its artifact is in the store but this user may not read it ({denied}); nothing was moved or rebuilt"
                )));
            }
            reporter.note(&format!(
                "{}: stored artifact is corrupt ({why}); rebuilding",
                spec.id
            ));
            store.quarantine(&spec.key).map_err(store_err)?;
        }
        Presence::Missing => {}
    }
    let runner = registry
        .get(&spec.kind)
        .ok_or_else(|| StepError::msg(format!("no runner for step kind `{}` in this build", spec.kind)))?;
    let mut inputs = vec![];
    for inp in &spec.inputs {
        let meta: ArtifactMeta = match crate::plan::integrity::verify(store, &inp.key) {
            Ok(m) => m,
            // Not there at all (a gc, or never built) is not corruption: said so.
            Err(_) if matches!(store.presence(&inp.key), Presence::Missing) => {
                return Err(StepError::msg(format!(
                    "input {} ({}) is not in the store (removed by gc, or never built); run again to build it",
                    inp.id,
                    inp.key.short()
                )));
            }
            Err(e) if e.is_permission_denied() => {
                return Err(StepError::msg(format!(
                    "input {} ({}) cannot be read by this user: {e}; nothing was moved or rebuilt",
                    inp.id,
                    inp.key.short()
                )));
            }
            Err(e) => {
                if matches!(e, StoreError::Corrupt { .. }) {
                    let _ = store.quarantine(&inp.key);
                }
                return Err(StepError::msg(format!(
                    "input {} ({}) cannot be used: {e}; run again to rebuild it",
                    inp.id,
                    inp.key.short()
                )));
            }
        };
        check_content(spec, inp, &meta, registry)?;
        inputs.push(InputArtifact {
            role: inp.role.clone(),
            id: inp.id.clone(),
            key: inp.key,
            files: store.files_dir(&inp.key),
            meta,
        });
    }
    let numerics_label = numerics_of(spec, registry, &opts.device, &inputs);
    local_files_as_keyed(spec, store, "since the run planned")?;
    let staging = store.begin(&spec.key).map_err(store_err)?;
    let work = store.work_dir(&spec.key);
    std::fs::create_dir_all(&work)?;
    let progress = reporter.started(&spec.id, &spec.key.short());
    let ctx = StepContext {
        spec,
        inputs,
        out: staging.files.clone(),
        work: work.clone(),
        store,
        progress: progress.as_ref(),
        cancel,
        device: &opts.device,
        locked: &lock.externals,
        pins: Mutex::new(BTreeMap::new()),
        strict: opts.locked,
        planned: None,
        numerics: numerics_label.clone(),
    };
    let started = now_unix();
    let result = runner.run(&ctx);
    let pins = ctx.take_pins();
    drop(ctx);
    drop(progress);
    // What the step read must still be what its key names: an edit while it ran
    // would publish one content's output under the other's key.
    let result = result.and_then(|()| local_files_as_keyed(spec, store, "while the step read it"));
    match result {
        Ok(()) => {
            let meta = store
                .publish(staging, spec, pins, Some(numerics_label), started)
                .map_err(store_err)?;
            let _ = std::fs::remove_dir_all(&work);
            if opts.locked {
                not_the_pinned(spec, &meta, registry, lock)?;
            }
            Ok(Outcome::Built)
        }
        Err(e) => {
            store.abandon(staging);
            Err(e)
        }
    }
}

/// The local files and folders a step reads (data, a model or adapter folder) have
/// the content its key was computed from: the plan hashed them, the step reads them
/// later, and an edit in between (`when`) would otherwise be built, and published,
/// under the old content's key. Files go through the store's hash cache (unchanged
/// files are not read again); a folder's files are those its recipe lists (a folder
/// of more than `MAX_LISTED_FILES` is not listed, and not checked here).
fn local_files_as_keyed(spec: &StepSpec, store: &Store, when: &str) -> Result<(), StepError> {
    let locals: Vec<_> = spec
        .externals
        .iter()
        .filter_map(|e| match e {
            External::Path {
                path,
                display,
                blake3,
                files,
                ..
            } => Some((path, display, blake3, files)),
            External::Hub { .. } => None,
        })
        .collect();
    // Most steps read no local file: the hash cache is not even opened for them.
    if locals.is_empty() {
        return Ok(());
    }
    let hashes = store.hash_cache();
    for (path, display, blake3, files) in locals {
        let root = std::path::Path::new(path);
        // (file, label, the blake3 the key was computed from): a folder's listed
        // files, or the file itself (a folder too large to be listed is not checked).
        let wanted: Vec<(std::path::PathBuf, String, &String)> = match files {
            Some(files) => files
                .iter()
                .map(|(rel, want)| (root.join(rel), format!("{display}/{rel}"), want))
                .collect(),
            None if root.is_dir() => vec![],
            None => vec![(root.to_path_buf(), display.clone(), blake3)],
        };
        let changed: Vec<String> = wanted
            .into_iter()
            .filter_map(|(file, label, want)| match hashes.file(&file) {
                Ok(h) if h.to_hex().as_str() == want.as_str() => None,
                Ok(h) => Some(format!("{label} (now {})", short_hex(h.to_hex().as_str()))),
                Err(e) => Some(format!("{label} (now unreadable: {e})")),
            })
            .collect();
        if !changed.is_empty() {
            return Err(StepError::msg(format!(
                "{} changed {when}: the step's key names the content it had when the run planned (blake3 {}); run again to key the step on what it holds now (nothing was published)",
                changed.join(", "),
                short_hex(blake3)
            )));
        }
    }
    Ok(())
}

/// Early cutoff's guard: an input that entered this step's key by its content must
/// have exactly that content, or the artifact published under the key would not be
/// the one the key names. (The plan takes the content from the store, or from the
/// lockfile's pin before the input is built; a pin the build does not reproduce stops
/// here.)
fn check_content(
    spec: &StepSpec,
    inp: &crate::store::SpecInput,
    meta: &ArtifactMeta,
    registry: &Registry,
) -> Result<(), StepError> {
    let Some(expected) = &inp.digest else {
        return Ok(());
    };
    if inp.pending() {
        return Err(StepError::msg(format!(
            "step {} was planned before {} was built (a bug: the run plans again first)",
            spec.id, inp.id
        )));
    }
    let found = content_in(meta, registry);
    if found != *expected {
        return Err(StepError::msg(format!(
            "{} was built with content {}, but this step's key was computed from content {} (what the lockfile pinned, or the store held, when the run planned): run again to key this step on the output that was built (`--locked` will refuse it)",
            inp.id,
            short_hex(&found),
            short_hex(expected),
        )));
    }
    Ok(())
}

/// Under early cutoff, the content of an artifact its readers key on: its files but
/// the provenance its kind leaves out.
fn content_in(meta: &ArtifactMeta, registry: &Registry) -> String {
    let leave_out = crate::plan::Catalog::content_keyed(registry, &meta.spec.kind).unwrap_or(&[]);
    content_digest(&meta.files, leave_out)
}

/// The lockfile after a run: every step of the plan that is in the store, every local
/// file's digest, every pin recorded by the artifacts; a step that is not in the store
/// keeps its old entry (a new one is entered with its key and no digest). Steps the
/// manifest no longer has are dropped.
pub fn updated_lock(plan: &Plan, store: &Store, old: &Lockfile) -> Lockfile {
    let mut lock = Lockfile::default();
    for s in &plan.steps {
        // A provisional key (early cutoff, its dataset not built) is never built and
        // never pinned: the step keeps what the lockfile said, if anything.
        let provisional = !s.waits_for.is_empty();
        let meta = if provisional {
            None
        } else {
            store.meta(&s.spec.key)
        };
        let built = meta.is_some();
        match meta {
            Some(meta) => {
                // The same bytes as pinned, under the same key: the pin stands as
                // written, its numerics label too, which was as true of these bytes (a
                // CPU of another label can compute the same ones: gemm's k-block splits
                // only long products), so that running where they reproduce leaves
                // the lockfile alone. A pin that records less is completed.
                let built = s.pinned_as(&meta);
                let pin = match old.steps.get(&s.spec.id) {
                    Some(l)
                        if l.key == built.key
                            && matches!(l.reproduced_by(&built), Reproduction::Same)
                            && l.digest.is_some()
                            && !l.records_less_than(&built) =>
                    {
                        l.clone()
                    }
                    _ => built,
                };
                lock.steps.insert(s.spec.id.clone(), pin);
                for (k, v) in meta.pins {
                    lock.externals.insert(k, v);
                }
            }
            None => {
                // Not built by this run (a failure, an interrupt, `--until`, `--only`):
                // the lockfile keeps what it said about the step, its old key and
                // digest included, so the pin is not lost and `plan` still says what
                // changed since (`--locked` then refuses the new key, as it should).
                // A provisional key is never entered.
                if let Some(l) = old.steps.get(&s.spec.id) {
                    lock.steps.insert(s.spec.id.clone(), l.clone());
                } else if !provisional {
                    lock.steps
                        .insert(s.spec.id.clone(), LockedStep::key_only(s.spec.key));
                }
            }
        }
        for e in &s.spec.externals {
            match e {
                // A file's digest is pinned by a step built from it; a step that was
                // not (it failed on the file, or was not selected) keeps the old pin,
                // so a broken file once run is not what `--locked` then expects.
                External::Path { blake3, .. } => {
                    let name = e.lock_name();
                    match old.externals.get(&name) {
                        Some(v) if !built => {
                            lock.externals.entry(name).or_insert_with(|| v.clone());
                        }
                        _ => {
                            lock.externals.insert(name, blake3.clone());
                        }
                    }
                }
                External::Hub { .. } => {
                    let name = e.lock_name();
                    if let Some(v) = old.externals.get(&name) {
                        lock.externals.entry(name).or_insert_with(|| v.clone());
                    }
                }
            }
        }
    }
    lock
}

/// What sets the last bits of the artifact a step builds here from `inputs`: this
/// machine's arithmetic (none for an exact kind) and what its inputs were built with.
pub(crate) fn numerics_of(
    spec: &StepSpec,
    registry: &Registry,
    device: &str,
    inputs: &[InputArtifact],
) -> String {
    let own = (!registry.kind(&spec.kind).is_some_and(|k| k.exact))
        .then(|| crate::process::numerics::numerics(device));
    crate::process::numerics::combined(own.as_deref(), inputs.iter().map(|i| i.meta.numerics.as_deref()))
}

/// Under `--locked`, as soon as a step is built: an artifact that is not the one the
/// lockfile pins for its key (the same numerics gave other bytes, or other numerics
/// other tables) fails the step, so the run stops there rather than after building
/// everything else. The artifact stays published: it is what its key builds here.
fn not_the_pinned(
    spec: &StepSpec,
    meta: &ArtifactMeta,
    registry: &Registry,
    lock: &Lockfile,
) -> Result<(), StepError> {
    let Some(pin) = lock.steps.get(&spec.id).filter(|p| p.key == spec.key) else {
        return Ok(());
    };
    // As `Step::pinned_as` pins it, from the kind's declarations (a worker has no
    // plan); under early cutoff the pin holds its content too.
    let built = LockedStep {
        key: spec.key,
        digest: Some(meta.digest.clone()),
        content: pin.content.as_ref().map(|_| content_in(meta, registry)),
        numerics: meta.numerics.clone(),
        tables: crate::plan::Catalog::tables_file(registry, &spec.kind)
            .and_then(|file| meta.file_blake3(file))
            .map(str::to_string),
    };
    let found = pin.reproduced_by(&built);
    if !found.refused() {
        return Ok(());
    }
    Err(StepError::msg(format!(
        "built with {}; `--locked` stops here",
        not_the_pin(&built, pin, &found)
    )))
}

/// "digest X, the lockfile pins Y" and why that is refused (see [`Reproduction`]), of
/// an artifact as a run would pin it (`built`).
fn not_the_pin(built: &LockedStep, pin: &LockedStep, found: &Reproduction) -> String {
    let numerics = built.numerics.as_deref();
    let why = match found {
        Reproduction::Content => {
            " and other content, by which the steps after it are keyed (data is the same on every machine)"
                .to_string()
        }
        Reproduction::Differs if pin.numerics.is_none() => format!(
            " (built on {}; the lockfile does not record the numerics of its pin, so other last bits cannot be told from another result: run without --locked to re-pin it)",
            numerics.unwrap_or("numerics it does not record")
        ),
        Reproduction::Differs => format!(
            " (not reproducible: both built on {})",
            numerics.unwrap_or("the same numerics")
        ),
        _ => format!(
            " and its results tables differ ({}, built on {})",
            pin.pinned_on(),
            numerics.unwrap_or("numerics it does not record")
        ),
    };
    format!(
        "digest {}, the lockfile pins {}{why}",
        built.digest.as_deref().map_or("", short_hex),
        pin.digest.as_deref().map_or("", short_hex)
    )
}

/// After a `--locked` run: rebuilt artifacts must have the digests the lockfile pins,
/// or, built on other numerics (`process::numerics`), the pinned results tables. Those
/// last are returned, to be said: the same keys, other last bits.
pub fn check_locked_digests(new: &Lockfile, old: &Lockfile) -> Result<Vec<String>, RunError> {
    let mut problems = vec![];
    let mut other_bits = vec![];
    let mut same_tables = vec![];
    let mut unrecorded = vec![];
    for (id, s) in &new.steps {
        let Some(pin) = old.steps.get(id) else {
            continue;
        };
        let found = pin.reproduced_by(s);
        match found {
            Reproduction::Same if pin.records_less_than(s) => unrecorded.push(id.clone()),
            Reproduction::Same => {}
            Reproduction::OtherNumerics { tables: Some(true) } => same_tables.push((id.as_str(), pin, s)),
            Reproduction::OtherNumerics { tables: None } => other_bits.push((id.as_str(), pin, s)),
            _ => problems.push(format!("{id} was rebuilt with {}", not_the_pin(s, pin, &found))),
        }
    }
    for (name, v) in &new.externals {
        if old.externals.get(name).is_some_and(|o| o != v) {
            problems.push(format!("{name} resolved differently"));
        }
    }
    if !problems.is_empty() {
        return Err(RunError::Locked(problems.join("\n  ")));
    }
    let mut notes = vec![];
    if !unrecorded.is_empty() {
        notes.push(crate::plan::render::unrecorded_note(&unrecorded));
    }
    if !other_bits.is_empty() || !same_tables.is_empty() {
        let moved: Vec<&(&str, &LockedStep, &LockedStep)> = other_bits.iter().chain(&same_tables).collect();
        let on = crate::store::lockfile::built_and_pinned_on(moved.iter().map(|(_, pin, s)| (*pin, *s)));
        notes.push(format!(
            "{} artifact(s) differ from their pins in the last bits: {on} (the keys are the pinned ones; only a machine of the same numerics reproduces the bytes)",
            moved.len(),
        ));
        if !same_tables.is_empty() {
            let ids: Vec<&str> = same_tables.iter().map(|(id, _, _)| *id).collect();
            notes.push(format!(
                "the results tables are the pinned ones, to the digit: {}",
                ids.join(", ")
            ));
        }
    }
    Ok(notes)
}
