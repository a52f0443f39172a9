//! `goosepipe run` (the local and cluster executors) and `goosepipe exec` (one step
//! from its recipe, as a cluster job builds it).

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use miette::{Report, miette};

use crate::exec::{self, CancelFlag, Registry, RunOptions};
use crate::plan::{self, Plan, Status};
use crate::store::Store;
use crate::store::lockfile::{Lockfile, lock_path};

use super::{
    EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, command_line, open_store, plan_in_store, plan_in_store_quietly,
    report, run_command,
};

/// What a run that rewrote the lockfile says of the steps it pinned at other digests
/// under the keys they had (a diff of the lockfile would show only hex): the same
/// recipe rebuilt to other bytes, by other numerics or not. None when there are none.
fn repinned(new: &Lockfile, old: &Lockfile) -> Option<String> {
    use crate::store::lockfile::LockedStep;
    let moved: Vec<(&String, &LockedStep, &LockedStep)> = new
        .steps
        .iter()
        .filter_map(|(id, s)| {
            let pin = old.steps.get(id).filter(|p| p.key == s.key)?;
            (pin.digest.is_some() && s.digest.is_some() && pin.digest != s.digest).then_some((id, pin, s))
        })
        .collect();
    if moved.is_empty() {
        return None;
    }
    let on = crate::store::lockfile::built_and_pinned_on(moved.iter().map(|(_, pin, s)| (*pin, *s)));
    let ids: Vec<&String> = moved.iter().map(|(id, _, _)| *id).collect();
    Some(format!(
        "the lockfile now pins {} step(s) at other digests under the same keys ({}): {on}; `run --locked` checks a build against the pins instead of rewriting them",
        moved.len(),
        crate::plan::listing::first_few(ids, 4),
    ))
}

/// `goosepipe run` (local executor).
pub fn run(
    path: &Path,
    store_root: &Path,
    registry: &Registry,
    opts: &RunOptions,
    quiet: bool,
    cancel: &CancelFlag,
    out: &mut dyn Write,
) -> Result<i32, Report> {
    run_with(
        &RunRequest {
            manifest: path,
            store: store_root,
            registry,
            opts,
            executor: &exec::Local,
            quiet,
            cancel,
        },
        out,
    )
}

/// What `goosepipe run` was asked to do.
pub struct RunRequest<'a> {
    pub manifest: &'a Path,
    pub store: &'a Path,
    pub registry: &'a Registry,
    pub opts: &'a RunOptions,
    /// Where the steps are built (`exec::Local`, `exec::slurm::Slurm`).
    pub executor: &'a dyn exec::Executor,
    /// No progress bars.
    pub quiet: bool,
    pub cancel: &'a CancelFlag,
}

/// `goosepipe run --executor ...`.
pub fn run_with(req: &RunRequest, out: &mut dyn Write) -> Result<i32, Report> {
    let (path, opts) = (req.manifest, req.opts);
    // Into a store not made yet every step would run: a device that cannot open is
    // said before the store is made (a mistyped --store left an empty one behind).
    let new_store = !crate::store::identity::is_store(req.store);
    if new_store {
        device_opens(req)?;
    }
    let store = open_store(req.store)?;
    // From the status check to the last publish, no gc may delete what this run found
    // or built (it waits for a gc that is under way).
    let mut read_only = None;
    let _in_use = match store.try_in_use() {
        Ok(Some(lock)) => Some(lock),
        Ok(None) => {
            let _ = writeln!(
                out,
                "waiting for a gc of the store {} to finish (Ctrl-C twice to give up)",
                store.root.display()
            );
            let _ = out.flush();
            Some(store.in_use().map_err(|e| miette!("{e}"))?)
        }
        // A store this user may only read (a shared cache, a read-only mount) still
        // answers a run with nothing to build; the error stands if anything would run.
        Err(e) if e.is_read_only() => {
            read_only = Some(e);
            None
        }
        Err(e) => return Err(miette!("{e}")),
    };
    let (mut plan, mut status, old_lock) = plan_in_store(path, &store, req.registry, opts.verify)?;
    if new_store && old_lock.steps.values().any(|pin| pin.digest.is_some()) {
        let _ = writeln!(out, "{}", new_store_note(path, &store.root));
    }
    if let Some(e) = &read_only {
        let chosen = exec::run::wanted(&plan, &status, opts).map_err(|e| miette!("{e}"))?;
        if !chosen.is_empty() {
            return Err(miette!(
                help = "pass --store DIR or set GOOSEPIPE_STORE to a folder you can write",
                "the store {} cannot be written here ({e}), and {} step(s) would have to be built into it",
                store.root.display(),
                chosen.len()
            ));
        }
    }
    check_device(req, &status)?;
    // --locked without a lockfile: said as that, not as every step "not in the
    // lockfile" (most often it was never committed, or is git-ignored).
    if opts.locked && !lock_path(path).exists() {
        return Err(miette!(
            help = "run once without --locked to write it, and commit it beside the manifest",
            "--locked: there is no lockfile to hold the run to ({} does not exist)",
            lock_path(path).display()
        ));
    }
    // For `gc` of another manifest on this store: this one's lockfile pins its work.
    // As given, made absolute but not resolved: its lockfile lies beside this path.
    if read_only.is_none()
        && let Ok(abs) = std::path::absolute(path)
        && let Err(e) = store.record_manifest(&abs)
    {
        let _ = writeln!(out, "note: {e}");
    }
    let reporter = exec::reporter_for_stderr(req.quiet);
    let execute = |plan: &Plan, status: &Status, opts: &RunOptions| {
        req.executor
            .execute(&exec::RunContext {
                plan,
                status,
                store: &store,
                registry: req.registry,
                lock: &old_lock,
                lock_path: lock_path(path),
                opts,
                reporter: reporter.as_ref(),
                cancel: req.cancel,
            })
            .map_err(|e| miette!("{e}"))
    };
    // Early cutoff: the datasets whose output some wanted step's key needs are built
    // first; then the plan is made again with their outputs known, and steps whose
    // keys come out as before are cached. Rounds, until no wanted step waits.
    let mut earlier: Option<exec::RunReport> = None;
    let mut built_first: BTreeSet<(String, crate::store::Key)> = BTreeSet::new();
    let mut failed_first: BTreeSet<String> = BTreeSet::new();
    let mut planned_again_for_cached = false;
    let mut stopped = false;
    // Fail fast on what earlier runs built: a step this run wants that refuses a
    // cached input fails now, before anything else starts.
    let wanted_now = exec::run::wanted(&plan, &status, opts).map_err(|e| miette!("{e}"))?;
    let refused = exec::run::refusals_of_cached(&plan, &status, &store, req.registry, &wanted_now);
    // A refused step fails as a step would (said, reported, held back under
    // every id of its key, with what reads it).
    let fail_refused = |refused: Vec<(String, String)>,
                        plan: &Plan,
                        report: &mut exec::RunReport,
                        failed_first: &mut BTreeSet<String>| {
        for (id, why) in refused {
            reporter.finished(&id, exec::Outcome::Failed, 0.0, &why);
            failed_first.extend(exec::run::same_key(plan, &id));
            report.failed.push((id, why));
        }
    };
    if !refused.is_empty() {
        let mut report = exec::RunReport::default();
        fail_refused(refused, &plan, &mut report, &mut failed_first);
        earlier = Some(report);
        stopped = !opts.keep_going;
    }
    while !stopped {
        if req.cancel.is_cancelled() {
            stopped = true;
            break;
        }
        let mut first = exec::run::outputs_first(&plan, &status, opts).map_err(|e| miette!("{e}"))?;
        // With --keep-going, a dataset that failed is not tried again this run: the
        // steps after it stay unbuilt and are said to be so.
        first.retain(|id| !failed_first.contains(id));
        if first.is_empty() {
            // Another run may have published a waited-for dataset between this
            // run's plan and its status: plan once more to key on it.
            let waits_on_cached =
                exec::run::waits_on_cached(&plan, &status, opts).map_err(|e| miette!("{e}"))?;
            if waits_on_cached && !planned_again_for_cached {
                planned_again_for_cached = true;
                (plan, status, _) = plan_in_store_quietly(path, &store, req.registry, opts.verify)?;
                continue;
            }
            break;
        }
        // Built and planned again, and still waited for with the same key: the plan
        // cannot learn its output (a bug), and building it again would loop. (A
        // dataset edited while the run built another has a new key: built again.)
        for id in &first {
            let key = plan.get(id).expect("an id of this plan").spec.key;
            if !built_first.insert((id.clone(), key)) {
                return Err(miette!(
                    "{id} was built, yet the plan still cannot key the steps after it on its output (a bug)"
                ));
            }
        }
        let datasets = RunOptions {
            only: first,
            until: None,
            ..opts.clone()
        };
        let mut report = execute(&plan, &status, &datasets)?;
        let mut failed =
            !report.failed.is_empty() || !report.cancelled.is_empty() || !report.left_running.is_empty();
        // A failed key is held back under every id it has (a twin's too).
        for (id, _) in &report.failed {
            failed_first.extend(exec::run::same_key(&plan, id));
        }
        let built_now: Vec<String> = report.built.iter().chain(&report.reused).cloned().collect();
        // Re-hashed again with --verify: steps keyed only now were not checked.
        if !(failed && (!opts.keep_going || req.cancel.is_cancelled())) {
            (plan, status, _) = plan_in_store_quietly(path, &store, req.registry, opts.verify)?;
            // Fail fast across the parts: the steps this run wants that read a dataset
            // just built check it now, not when their turn comes (the part that built
            // it held none of them).
            let wanted_now = exec::run::wanted(&plan, &status, opts).map_err(|e| miette!("{e}"))?;
            let refused = exec::run::refusals(&plan, &store, req.registry, &wanted_now, &built_now);
            failed |= !refused.is_empty();
            fail_refused(refused, &plan, &mut report, &mut failed_first);
        }
        earlier = Some(match earlier {
            Some(e) => e.then(report),
            None => report,
        });
        if failed && (!opts.keep_going || req.cancel.is_cancelled()) {
            stopped = true;
            break;
        }
        // --keep-going: a dataset that failed is not built again by this run (its
        // failure is reported once; what waits for it is said to be held up).
        for id in &failed_first {
            if let Some(&i) = plan.index.get(id)
                && let plan::State::Stale { reasons } = &status.states[i]
            {
                status.states[i] = plan::State::Unneeded {
                    reasons: reasons.clone(),
                };
            }
        }
    }
    // --keep-going: the rest of the run names what it may still build, so that nothing
    // that failed (or refused its data) above runs again, nor anything after it.
    let rest = if failed_first.is_empty() {
        Some(opts.clone())
    } else {
        let chosen = exec::run::wanted(&plan, &status, opts).map_err(|e| miette!("{e}"))?;
        let only = exec::run::clear_of(&plan, &chosen, &failed_first);
        (!only.is_empty()).then(|| RunOptions {
            only,
            until: None,
            ..opts.clone()
        })
    };
    let mut report = match (earlier, rest) {
        (Some(first), _) if stopped => first,
        (Some(first), Some(rest)) => first.then(execute(&plan, &status, &rest)?),
        (Some(first), None) => first,
        (None, _) if stopped => exec::RunReport::default(),
        (None, _) => execute(&plan, &status, opts)?,
    };
    // What was wanted and did not run: after a stop between the parts, everything
    // after the datasets; otherwise the steps still waiting for a dataset that failed.
    report.add_unreached(
        &plan,
        &exec::run::wanted(&plan, &status, opts).map_err(|e| miette!("{e}"))?,
    );
    let interrupted_between = stopped && req.cancel.is_cancelled();
    let new_lock = exec::updated_lock(&plan, &store, &old_lock);
    // Which key each step id has, for `show` and `export` by id: an artifact records
    // only its builder's id. An index, not a result: a failure to write it is said.
    for (id, l) in &new_lock.steps {
        if l.digest.is_some()
            && let Err(e) = store.record_name(id, &l.key, path)
        {
            let _ = writeln!(out, "note: {e}");
            break;
        }
    }
    let lock_file = lock_path(path);
    let manifest_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if opts.locked {
        match exec::run::check_locked_digests(&new_lock, &old_lock) {
            Ok(notes) => {
                for note in notes {
                    let _ = writeln!(out, "note: {note}");
                }
            }
            // Said with the failures below (a step `--locked` stopped among them).
            Err(e) if !report.failed.is_empty() => {
                let _ = writeln!(out, "{e}");
            }
            Err(e) => return Err(miette!("{e}")),
        }
    } else if new_lock != old_lock || !lock_file.exists() {
        new_lock.write(&lock_file, &manifest_name).map_err(|e| {
            // Written through a temporary file beside it: the folder must be
            // writable, which a writable lockfile does not make it.
            let folder = lock_file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let why = if e.kind() == std::io::ErrorKind::PermissionDenied {
                format!(
                    " (it is replaced through a new file beside it: its folder {} must be writable)",
                    folder.display()
                )
            } else {
                String::new()
            };
            miette!(
                help = "every step built is in the store: once the lockfile can be written, `goosepipe run` writes it without building anything",
                "cannot write the lockfile {}: {e}{why}",
                lock_file.display()
            )
        })?;
        if let Some(note) = repinned(&new_lock, &old_lock) {
            let _ = writeln!(out, "note: {note}");
        }
    }
    let built = report.built.len() + report.reused.len() + report.shared.len();
    if !report.cancelled.is_empty() || !report.left_running.is_empty() || interrupted_between {
        let left = match report.left_running.len() {
            0 => String::new(),
            n => format!("; {n} left running as cluster jobs (the same command adopts them)"),
        };
        let stopped = match report.cancelled.len() {
            0 if !report.left_running.is_empty() => String::new(),
            n => format!("; {n} stopped with their checkpoints kept"),
        };
        let _ = writeln!(
            out,
            "interrupted: {built} step(s) finished and published{stopped}{left}; run the same command again to resume.",
        );
        return Ok(EXIT_INTERRUPTED);
    }
    if !report.failed.is_empty() {
        // What finished (with --keep-going, evals beside the failure) is shown first.
        print_finished_results(path, &plan, &store, &report, out);
        let _ = writeln!(out, "{} step(s) failed:", report.failed.len());
        for (id, msg) in &report.failed {
            let _ = writeln!(out, "  {id}: {msg}");
        }
        // What needed a failed step, apart from what the run stopped before starting.
        let downstream = plan.downstream_of(report.failed.iter().map(|(id, _)| id.as_str()));
        let (blocked, unstarted): (Vec<&str>, Vec<&str>) = report
            .skipped
            .iter()
            .map(String::as_str)
            .partition(|id| plan.index.get(*id).is_some_and(|i| downstream.contains(i)));
        if !blocked.is_empty() {
            let _ = writeln!(out, "not run because of the failure: {}", blocked.join(", "));
        }
        if !unstarted.is_empty() {
            let _ = writeln!(
                out,
                "not started (a failure stops the run; --keep-going runs what does not need the failed step): {}",
                unstarted.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "{built} step(s) finished and published; they will not run again."
        );
        return Ok(EXIT_ERROR);
    }
    if built == 0 && status.stale_count() > 0 {
        // --only / --until left the stale steps out: "all cached" would be false.
        let _ = writeln!(
            out,
            "nothing to do for the selected steps: {} other step(s) are stale (`{}` lists them)",
            status.stale_count(),
            command_line("plan", path, &store.root)
        );
    } else if built == 0 {
        // Say it when the lockfile changed: `run --locked` refused just before.
        let rewritten = if status.lock_drift.is_empty() || opts.locked {
            String::new()
        } else {
            format!(
                "; the lockfile now pins {} step(s) as they are",
                status.lock_drift.len()
            )
        };
        // A step whose artifact is gone while everything after it is cached is not
        // rebuilt (nothing needs it): "all cached" was false, and `score` or `export`
        // of it kept failing with nothing to say how to get it back.
        let unneeded: Vec<String> = plan
            .steps
            .iter()
            .zip(&status.states)
            .filter(|(_, st)| matches!(st, crate::plan::status::State::Unneeded { .. }))
            .map(|(s, _)| s.spec.id.clone())
            .collect();
        if unneeded.is_empty() {
            let _ = writeln!(
                out,
                "nothing to do: all {} steps are cached{rewritten}",
                plan.steps.len()
            );
        } else {
            let (step, which) = match unneeded.as_slice() {
                [one] => (one.as_str(), "it"),
                _ => ("ID", "one, with what it needs"),
            };
            let _ = writeln!(
                out,
                "nothing to do: {} steps are cached{rewritten}; {} not needed, not rebuilt (artifact gone, and nothing that runs reads it: {}); `{} --until {step}` rebuilds {which}",
                plan.steps.len() - unneeded.len(),
                unneeded.len(),
                crate::plan::listing::first_few(&unneeded, 3),
                run_command(path, &store.root),
            );
        }
    } else {
        // A step another run built while this one waited for it is not ours to claim.
        let by_other = if report.reused.is_empty() {
            String::new()
        } else {
            format!(", {} built by another run at the same time", report.reused.len())
        };
        // Twins name an artifact that a step of this run built: not built twice.
        let twins = if report.shared.is_empty() {
            String::new()
        } else {
            format!(
                ", {} sharing the artifact of one of them (same key)",
                report.shared.len()
            )
        };
        let _ = writeln!(
            out,
            "done: {} step(s) built{twins}{by_other}, {} cached",
            report.built.len(),
            report.cached
        );
        print_finished_results(path, &plan, &store, &report, out);
    }
    Ok(EXIT_OK)
}

/// The results of every evaluation and study that ran (also of those whose artifact
/// another step or run built meanwhile), as the last thing the user sees.
fn print_finished_results(
    path: &Path,
    plan: &Plan,
    store: &Store,
    report: &exec::RunReport,
    out: &mut dyn Write,
) {
    let finished: HashSet<&String> = report
        .built
        .iter()
        .chain(&report.shared)
        .chain(&report.reused)
        .collect();
    let (mut evals, mut owned) = (false, false);
    for s in plan.steps.iter().filter(|s| finished.contains(&s.spec.id)) {
        let order = report::task_order(plan, &s.spec.name);
        if let Ok(Some(md)) = report::headed_markdown(&store.files_dir(&s.spec.key), &s.spec, &order) {
            let _ = writeln!(out, "\n{md}");
            evals |= s.spec.kind == "eval";
            owned |= s.spec.kind == "eval" && !report::task_owners(&s.spec.params).is_empty();
        }
    }
    // The results tables are not the whole report: say where the rest is, and what
    // it lacks without tasks that name their experts (it was promised regardless).
    if evals {
        let report = command_line("report", path, &store.root);
        let _ = if owned {
            writeln!(
                out,
                "\n(results tables only: `{report}` adds each method's held-in mean against the own experts', routing quality and gate correlation)"
            )
        } else {
            writeln!(
                out,
                "\n(results tables only: `{report}` adds each pool's gate correlation; a task that names the expert trained for it, `task ... expert=NAME`, also gets each method's mean against the own experts' and routing quality)"
            )
        };
    }
}

/// With the local executor a device other than the CPU is opened before any step
/// runs: a missing GPU or a build without CUDA is said at once, not by the first
/// model step after the data steps. A run with nothing to do needs no device. Cluster
/// jobs open theirs on their nodes (the head may run where there is no GPU).
fn check_device(req: &RunRequest, status: &Status) -> Result<(), Report> {
    if !status.states.iter().any(|s| s.will_run()) {
        return Ok(());
    }
    device_opens(req)
}

/// The run's device opens here (the CPU always does; cluster jobs open theirs).
fn device_opens(req: &RunRequest) -> Result<(), Report> {
    let device = &req.opts.device;
    if device == "cpu" || !req.executor.runs_steps_here() {
        return Ok(());
    }
    crate::model::device::parse_device(device).map_err(|e| miette!("--device {device}: {e}"))?;
    Ok(())
}

/// Which key `goosepipe exec` builds: given, or line N of a key list (array tasks).
pub enum ExecTarget {
    Key(String),
    List { file: PathBuf, index: usize },
}

/// `goosepipe exec`: builds one step from its recipe in the store (what a cluster job
/// runs). Exit 0 when the key is published (now or before), 1 when the step failed,
/// 130 when interrupted (its checkpoints are kept for the next attempt).
pub fn exec_cmd(
    store_root: &Path,
    target: &ExecTarget,
    lockfile: Option<&Path>,
    opts: &RunOptions,
    registry: &Registry,
    cancel: &CancelFlag,
) -> Result<i32, Report> {
    let store = open_store(store_root)?;
    let _in_use = store.in_use().map_err(|e| miette!("{e}"))?;
    let key = match target {
        ExecTarget::Key(k) => k.parse().map_err(|e: String| miette!("--key: {e}"))?,
        ExecTarget::List { file, index } => {
            exec::worker::key_from_list(file, *index).map_err(|e| miette!("{e}"))?
        }
    };
    let lock = match lockfile {
        // Without it a job builds with no pins (a manifest's first run has none);
        // under --locked a mistyped path would build unchecked.
        Some(p) if opts.locked && !p.exists() => {
            return Err(miette!(
                help = "--locked holds the job to the manifest's FILE.lock: give its path as the job sees it",
                "--lockfile {}: no such file",
                p.display()
            ));
        }
        Some(p) => Lockfile::read(p).map_err(|e| miette!("{e}"))?,
        None => Lockfile::default(),
    };
    let reporter = exec::PlainReporter::new(false);
    match exec::worker::exec_key(&store, &key, registry, &lock, opts, &reporter, cancel) {
        Ok(_) => Ok(EXIT_OK),
        Err(exec::worker::ExecError::Step(exec::StepError::Cancelled)) => Ok(EXIT_INTERRUPTED),
        Err(e) => Err(miette!("{e}")),
    }
}

/// A run into a store it just made, of a manifest whose lockfile says its steps were
/// built: most often another working folder than the last run's (the default store is
/// `.goosepipe` in the current folder), which would rebuild everything unsaid. Said
/// with the store beside the manifest, where there is one.
fn new_store_note(manifest: &Path, store: &Path) -> String {
    let beside = manifest
        .parent()
        .map(|d| d.join(crate::store::DEFAULT_STORE))
        .filter(|b| crate::store::identity::is_store(b))
        .filter(|b| std::fs::canonicalize(b).ok() != std::fs::canonicalize(store).ok());
    match beside {
        Some(b) => format!(
            "note: no store was at {} before this run, so every step is built into it, though the lockfile says they were built; a store is beside the manifest at {} (Ctrl-C, then --store {} to use it)",
            store.display(),
            b.display(),
            b.display()
        ),
        None => format!(
            "note: no store was at {} before this run, so every step is built into it, though the lockfile says they were built elsewhere (--store DIR or GOOSEPIPE_STORE names another store)",
            store.display()
        ),
    }
}
