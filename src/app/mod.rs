//! The commands behind the CLI. `main.rs` only parses arguments and calls these; each
//! returns the process exit code, and user-facing errors come back as miette reports.

pub mod examples;
pub mod export;
pub mod score;
pub mod token_routing;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use miette::{Report, miette};

use crate::exec::{self, CancelFlag, Registry, RunOptions};
use crate::plan::{self, Plan, Status, render};
use crate::store::fsutil::human_size;
use crate::store::lockfile::{Lockfile, lock_path};
use crate::store::{HashCache, Store};

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
/// `plan --check-cached`: something would run.
pub const EXIT_PENDING: i32 = 2;
/// The command line itself is wrong (an unknown flag, a missing argument): not 2,
/// which `plan --check-cached` gives for "something would run" (sysexits' EX_USAGE).
pub const EXIT_USAGE: i32 = 64;
/// The store is in use by a run (gc): try again later (sysexits' EX_TEMPFAIL).
pub const EXIT_BUSY: i32 = 75;
pub const EXIT_INTERRUPTED: i32 = 130;

/// A command line that parses but cannot run as given (flags that do not go together,
/// a value only known to be wrong after parsing): exits [`EXIT_USAGE`], as the
/// parser's own errors do.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
pub struct UsageError {
    pub message: String,
    #[help]
    pub help: Option<String>,
}

/// A [`UsageError`] as a report.
pub fn usage(message: impl Into<String>, help: Option<String>) -> Report {
    Report::new(UsageError {
        message: message.into(),
        help,
    })
}

/// Loads, validates and plans a manifest (no store needed; under early cutoff the
/// steps after an unbuilt dataset have provisional keys).
pub fn load_plan(path: &Path, registry: &Registry, hashes: &HashCache) -> Result<Plan, Report> {
    plan::load(path, registry, hashes).map_err(Report::new)
}

/// [`load_plan`] against a store and the manifest's lockfile: under early cutoff,
/// the steps after a dataset are keyed on the output the store holds or the lockfile
/// pins (see `plan::outputs`).
pub fn load_plan_in(
    path: &Path,
    registry: &Registry,
    hashes: &HashCache,
    store: &Store,
    lock: &Lockfile,
) -> Result<Plan, Report> {
    plan::load_with(path, registry, hashes, &plan::KnownOutputs::new(store, lock)).map_err(Report::new)
}

/// Early cutoff: when `plan` has provisional keys (a dataset edited since the last
/// run and not rebuilt), the plan the next run most likely makes, keyed on the
/// lockfile's last pin of each such dataset's output. None when nothing waits.
fn likely_plan(
    plan: &Plan,
    registry: &Registry,
    hashes: &HashCache,
    store: &Store,
    lock: &Lockfile,
) -> Result<Option<Plan>, Report> {
    if !plan.waits() {
        return Ok(None);
    }
    let outputs = plan::KnownOutputs::last_pinned(store, lock);
    plan::load_with(&plan.manifest.path, registry, hashes, &outputs)
        .map(Some)
        .map_err(Report::new)
}

fn open_store(root: &Path) -> Result<Store, Report> {
    Store::open(root).map_err(store_error)
}

fn store_error(e: crate::store::StoreError) -> Report {
    match &e {
        crate::store::StoreError::NotAStore { path, .. } => miette!(
            help = format!(
                "pass --store a new or empty folder (for example {}), or the store your runs used",
                path.join(crate::store::DEFAULT_STORE).display()
            ),
            "{e}"
        ),
        crate::store::StoreError::NotAFolder { .. } => miette!(
            help = "pass --store a folder (new, empty, or the store your runs used), or set GOOSEPIPE_STORE to one",
            "{e}"
        ),
        // A folder inside a store: the store itself is what was meant.
        crate::store::StoreError::InsideStore { store, .. } => miette!(
            help = format!("pass --store {} (the store this folder is in)", store.display()),
            "{e}"
        ),
        _ => miette!(
            help = "pass --store DIR or set GOOSEPIPE_STORE to a writable folder",
            "cannot open the store: {e}"
        ),
    }
}

/// The store, for commands that read or tidy what is there (show, export, report,
/// verify, gc): a folder that does not exist is a mistyped --store, not a store to
/// create empty.
fn existing_store(root: &Path) -> Result<Store, Report> {
    if !root.is_dir() {
        let why = if root.exists() {
            "it is not a folder"
        } else {
            "nothing was ever built there"
        };
        return Err(miette!(
            help = "pass --store DIR or set GOOSEPIPE_STORE to the store your runs used; if nothing has run yet, `goosepipe run FILE` builds into this one",
            "no store at {}: {why}",
            root.display()
        ));
    }
    open_store(root)
}

fn read_lock(manifest: &Path) -> Result<Lockfile, Report> {
    Lockfile::read(&lock_path(manifest)).map_err(|e| miette!("{e}"))
}

/// The plan's warnings, rendered as diagnostics.
fn warn(plan: &Plan, out: &mut dyn Write) {
    for w in &plan.warnings {
        let _ = writeln!(out, "{:?}", Report::new(w.clone()));
    }
}

/// `goosepipe check`.
pub fn check(path: &Path, registry: &Registry, out: &mut dyn Write) -> Result<i32, Report> {
    let plan = load_plan(path, registry, &HashCache::in_memory())?;
    warn(&plan, out);
    let mut counts: Vec<(String, usize)> = vec![];
    for s in &plan.steps {
        match counts.iter_mut().find(|(k, _)| *k == s.spec.kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((s.spec.kind.clone(), 1)),
        }
    }
    let summary = counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "{} is valid: {} files, {} steps ({summary})",
        path.display(),
        plan.manifest.sources.iter().count(),
        plan.steps.len()
    );
    Ok(EXIT_OK)
}

/// The plan and its status against the store at `store_root`, for commands that only
/// look: nothing is created (a store folder that does not exist is read as empty).
fn plan_with_status(
    path: &Path,
    store_root: &Path,
    registry: &Registry,
    verify: bool,
) -> Result<(Plan, Status, Store, Lockfile), Report> {
    // Looking creates nothing; re-hashing (`--verify`) may move a corrupt artifact aside.
    let store = if verify {
        open_store(store_root)?
    } else {
        // A folder of other files is refused as `run` refuses it (plan read the
        // objects/ there as artifacts, and --check-cached passed where run failed).
        let foreign = crate::store::identity::foreign_entries(store_root);
        if !foreign.is_empty() {
            return Err(store_error(crate::store::identity::refusal(store_root, &foreign)));
        }
        Store::at(store_root)
    };
    let (plan, status, lock) = plan_in_store(path, &store, registry, verify)?;
    Ok((plan, status, store, lock))
}

/// The plan and its status in `store`; with `verify`, cached artifacts are re-hashed
/// first. The hash cache is saved only into a store folder that exists.
fn plan_in_store(
    path: &Path,
    store: &Store,
    registry: &Registry,
    verify: bool,
) -> Result<(Plan, Status, Lockfile), Report> {
    let planned = plan_in_store_quietly(path, store, registry, verify)?;
    warn(&planned.0, &mut std::io::stderr());
    Ok(planned)
}

/// [`plan_in_store`] without saying the plan's warnings (a run planning again after
/// early cutoff's datasets said them the first time).
fn plan_in_store_quietly(
    path: &Path,
    store: &Store,
    registry: &Registry,
    verify: bool,
) -> Result<(Plan, Status, Lockfile), Report> {
    // Only a store keeps a hash cache: a --store folder of someone's own files gets
    // no file from a dry run.
    let hashes = if crate::store::identity::is_store(&store.root) {
        store.hash_cache()
    } else {
        HashCache::in_memory()
    };
    let lock = read_lock(path)?;
    // Saved whatever the plan's fate: a manifest with an error is hashed too, and
    // the next try should not hash its data again.
    let plan = load_plan_in(path, registry, &hashes, store, &lock);
    hashes.save();
    let plan = plan?;
    let status = if verify {
        plan::status::status_verified(&plan, store, &lock)
    } else {
        plan::status::status(&plan, store, &lock)
    };
    Ok((plan, status, lock))
}

/// How `goosepipe plan` answers.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Machine-readable output.
    pub json: bool,
    /// Exit with [`EXIT_PENDING`] if anything would run, or the lockfile would be
    /// rewritten: passes exactly when `run --locked` would do nothing and succeed.
    pub check_cached: bool,
    /// Re-hash cached artifacts first.
    pub verify: bool,
    /// The device the run will use: an eval reuses results of the same kind of device.
    pub device: String,
    /// A run's selection (`--only` steps, or `--until` one): the plan says which of
    /// the stale steps that run would run.
    pub only: Vec<String>,
    pub until: Option<String>,
}

/// `goosepipe plan`.
pub fn plan_cmd(
    path: &Path,
    store_root: &Path,
    registry: &Registry,
    opts: &PlanOptions,
    out: &mut dyn Write,
) -> Result<i32, Report> {
    let (plan, mut status, store, lock) = plan_with_status(path, store_root, registry, opts.verify)?;
    // A mistyped --store or GOOSEPIPE_STORE would read as "rebuild everything".
    if store.root.exists() && !store.root.is_dir() {
        let _ = writeln!(
            std::io::stderr(),
            "note: {} is a file, not a store folder, so every step is stale and `run` refuses it (--store DIR or GOOSEPIPE_STORE names another)",
            store.root.display()
        );
    } else if !store.root.is_dir() {
        let _ = writeln!(
            std::io::stderr(),
            "note: no store at {}: nothing was built there, so every step is stale (--store DIR or GOOSEPIPE_STORE names another)",
            store.root.display()
        );
    }
    let selection = selection_of(&plan, &status, opts)?;
    exec::previews(
        &plan,
        &mut status,
        &store,
        registry,
        &lock,
        &opts.device,
        usize::MAX,
        selection.as_ref().map(|s| &s.steps),
    );
    let (json, check_cached) = (opts.json, opts.check_cached);
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&render::plan_json_of(
                &plan,
                &status,
                &store.root,
                selection.as_ref()
            ))
            .expect("json")
        );
    } else {
        let _ = write!(
            out,
            "{}",
            render::plan_text_of(&plan, &status, selection.as_ref())
        );
    }
    let would_run = match &selection {
        Some(s) => !s.steps.is_empty(),
        None => status.stale_count() > 0,
    };
    let code = if check_cached && (would_run || !status.lock_drift.is_empty()) {
        EXIT_PENDING
    } else {
        EXIT_OK
    };
    // Freeing a large plan object by object takes a tenth of a second at 10,000
    // experts; the answer is out, so let that happen off the caller's path.
    std::thread::spawn(move || drop((plan, status)));
    Ok(code)
}

/// The steps `run` with `opts`' selection would run, as `run` selects them (and
/// refuses a selection it would refuse); None without a selection.
fn selection_of(
    plan: &Plan,
    status: &Status,
    opts: &PlanOptions,
) -> Result<Option<render::Selection>, Report> {
    let flag = match (&opts.until, opts.only.is_empty()) {
        (Some(t), _) => format!("--until {t}"),
        (None, false) => format!("--only {}", opts.only.join(" ")),
        (None, true) => return Ok(None),
    };
    let run_opts = RunOptions {
        only: opts.only.clone(),
        until: opts.until.clone(),
        ..RunOptions::default()
    };
    let steps = exec::run::wanted(plan, status, &run_opts).map_err(|e| miette!("{e}"))?;
    Ok(Some(render::Selection {
        flag,
        steps: steps.into_iter().collect(),
    }))
}

/// `goosepipe graph`.
pub fn graph(
    path: &Path,
    store_root: &Path,
    with_status: bool,
    registry: &Registry,
    mermaid: bool,
    out: &mut dyn Write,
) -> Result<i32, Report> {
    // Planned against the store even without colours: under early cutoff the keys
    // after a dataset are the ones its built output gives.
    let (plan, status, _, _) = plan_with_status(path, store_root, registry, false)?;
    let status = with_status.then_some(status);
    let text = if mermaid {
        render::mermaid(&plan, status.as_ref())
    } else {
        render::dot(&plan, status.as_ref())
    };
    let _ = write!(out, "{text}");
    Ok(EXIT_OK)
}

/// `goosepipe explain`.
pub fn explain(
    path: &Path,
    step: &str,
    store_root: &Path,
    registry: &Registry,
    device: &str,
    out: &mut dyn Write,
) -> Result<i32, Report> {
    let (plan, mut status, store, lock) = plan_with_status(path, store_root, registry, false)?;
    let i = plan.resolve(step).map_err(|e| miette!("{e}"))?;
    // As `plan` gives them: a step's count leaves out what steps before it in the
    // plan will do, so theirs are computed too (not those after it).
    exec::previews(&plan, &mut status, &store, registry, &lock, device, i, None);
    let _ = write!(out, "{}", render::explain(&plan, &status, i));
    Ok(EXIT_OK)
}

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
    if !crate::store::identity::is_store(req.store) {
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
            && let Err(e) = store.record_name(id, &l.key)
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
    let mut evals = false;
    for s in plan.steps.iter().filter(|s| finished.contains(&s.spec.id)) {
        let order = task_order(plan, &s.spec.name);
        if let Ok(Some(md)) =
            headed_markdown(&store.files_dir(&s.spec.key), &s.spec.kind, &s.spec.name, &order)
        {
            let _ = writeln!(out, "\n{md}");
            evals |= s.spec.kind == "eval";
        }
    }
    // The results tables are not the whole report: say where the rest is.
    if evals {
        let _ = writeln!(
            out,
            "\n(results tables only: `{}` adds each method's held-in mean against the own experts', routing quality and gate correlation)",
            command_line("report", path, &store.root)
        );
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

/// `goosepipe report`: the results tables of a manifest's evals (with their routing
/// quality) and studies, from the store.
pub fn report(
    path: &Path,
    store_root: &Path,
    registry: &Registry,
    format: &str,
    plots: Option<&Path>,
    out: &mut dyn Write,
) -> Result<i32, Report> {
    let store = existing_store(store_root)?;
    // Plots in a store's folders would be files no step made, which gc and verify
    // neither know nor tidy (and `--plots .goosepipe/objects` reads as a store path).
    if let Some(dir) = plots
        && let Some(inside) = crate::store::identity::store_around(dir)
    {
        return Err(miette!(
            help = "give a folder outside the store",
            "report --plots: {} is inside the goosepipe store at {}, whose files only runs write",
            dir.display(),
            inside.display()
        ));
    }
    if let Some(dir) = plots
        && let Some((there, kind)) = crate::file_kind::not_a_folder_on_the_way(dir)
    {
        return Err(miette!(
            "report --plots: {} is a {kind}, not a folder; give a folder to draw the plots into",
            there.display()
        ));
    }
    let (plan, status, lock) = plan_in_store(path, &store, registry, false)?;
    // Early cutoff: an eval after a dataset edited since the last run (not rebuilt
    // yet) has a provisional key; its results are most likely those under the key the
    // lockfile's last pin of that dataset's output gives, shown with a note.
    let likely = likely_plan(&plan, registry, &store.hash_cache(), &store, &lock)?;
    let why = |id: &str| stale_reasons(&plan, &status, id);
    let mut any = false;
    // A corrupt result is moved aside and said; the exit code says it too (scripts).
    let mut corrupt = false;
    // Results missing, or shown from before an edit: said on stderr per step, and by
    // the exit code (2, as `plan --check-cached`: a run has something to do), so a
    // script that publishes the tables can tell they are not the manifest's own.
    let mut not_current = false;
    // What is said about missing or corrupt results (and plots written) goes to
    // stderr: `report > results.md` keeps the tables alone. json is one array of
    // records, each with its step.
    let machine = format != "md";
    let mut stderr = std::io::stderr();
    let mut json_items: Vec<serde_json::Value> = vec![];
    // Gate statistics belong to a pool: printed once however many evals read it.
    let mut pools_shown = HashSet::new();
    for s in plan
        .steps
        .iter()
        .filter(|s| s.spec.kind == "eval" || s.spec.kind == "study")
    {
        let notes: &mut dyn Write = &mut stderr;
        let earlier;
        let mut earlier_run: Option<serde_json::Value> = None;
        // Stale, or not needed (gone while what reads it is cached): either way
        // what is shown, if anything, is not this manifest's own result now.
        if plan
            .index
            .get(s.spec.id.as_str())
            .is_some_and(|&i| !matches!(status.states[i], crate::plan::State::Cached))
        {
            not_current = true;
        }
        let spec: &crate::store::StepSpec = match likely.as_ref().and_then(|l| l.get(&s.spec.id)) {
            Some(l) if !s.waits_for.is_empty() && store.meta(&l.spec.key).is_some() => {
                let _ = writeln!(
                    notes,
                    "{}: results from before {} changed (not rebuilt yet): they stand if its rows did not change; `{}` finds out",
                    s.spec.id,
                    s.waits_for.join(", "),
                    run_command(path, &store.root)
                );
                &l.spec
            }
            _ => match last_built(&store, &lock, s) {
                // Stale since its last run (an edit, new data): that run's results,
                // said to be so (in json, in the record too).
                Some(m) => {
                    let why = why(&s.spec.id);
                    let _ = writeln!(
                        notes,
                        "{}",
                        earlier_run_note(&s.spec.id, "results", &m, &why, &run_command(path, &store.root))
                    );
                    earlier_run = Some(serde_json::json!({
                        "key": m.key.hex(),
                        "built": crate::store::artifact::format_unix(m.started_unix),
                        "stale": why,
                    }));
                    earlier = m.spec;
                    &earlier
                }
                None => &s.spec,
            },
        };
        // Results are small: re-hash them, so a damaged table is never printed.
        if let Err(crate::store::StoreError::Corrupt { .. }) =
            crate::plan::integrity::verify(&store, &spec.key)
            && !matches!(store.presence(&spec.key), crate::store::Presence::Missing)
            && let Ok(Some(reason)) = crate::plan::integrity::quarantine_if_corrupt(&store, &spec.key)
        {
            let _ = writeln!(
                notes,
                "{}: its artifact is corrupt ({reason}); moved aside, `{}` rebuilds it",
                s.spec.id,
                run_command(path, &store.root)
            );
            corrupt = true;
            continue;
        }
        let files = store.files_dir(&spec.key);
        // A JSON record of this step, or None when not built; it names its step.
        let with_step = |v: Result<Option<serde_json::Value>, String>| -> Result<_, Report> {
            Ok(v.map_err(|e| miette!("{}: {e}", s.spec.id))?.map(|mut v| {
                v["step"] = serde_json::json!(s.spec.id);
                if let Some(e) = &earlier_run {
                    v["earlier_run"] = e.clone();
                }
                v
            }))
        };
        if s.spec.kind == "study" {
            match format {
                "json" => match with_step(read_record(&files, crate::steps::study::STUDY_JSON))? {
                    Some(v) => json_items.push(v),
                    None => not_built(notes, &s.spec.id, &why(&s.spec.id), path, &store.root),
                },
                "csv" => match study_result(&files, &study_task_order(&plan, spec))
                    .map_err(|e| miette!("{}: {e}", s.spec.id))?
                {
                    Some(r) => {
                        let records = r.csv_long(&s.spec.id, spec.key == s.spec.key);
                        let _ = writeln!(out, "{}", csv_records(!any, &records));
                        any = true;
                    }
                    None => not_built(notes, &s.spec.id, &why(&s.spec.id), path, &store.root),
                },
                _ => {
                    match headed_markdown(&files, &s.spec.kind, &s.spec.name, &study_task_order(&plan, spec))
                        .map_err(|e| miette!("{}: {e}", s.spec.id))?
                    {
                        Some(text) => {
                            any = true;
                            let _ = writeln!(out, "{text}");
                            if let Some(e) = &earlier_run {
                                let _ = writeln!(out, "{}", not_current_markdown(e));
                            }
                        }
                        None => not_built(notes, &s.spec.id, &why(&s.spec.id), path, &store.root),
                    }
                }
            }
            continue;
        }
        let order = task_order(&plan, &s.spec.name);
        if let Some(dir) = plots {
            draw_plots(&files, dir, &s.spec.name, &s.spec.id, notes)?;
        }
        let owners = task_owners(&spec.params);
        if format == "json" {
            match with_step(named_results_json(&files, &s.spec.name, &order, &owners))? {
                Some(v) => {
                    any = true;
                    json_items.push(v);
                }
                None => not_built(notes, &s.spec.id, &why(&s.spec.id), path, &store.root),
            }
            continue;
        }
        // Read once: the table, and the held-in comparison below it.
        let results = eval_results(&files, &order).map_err(|e| miette!("{}: {e}", s.spec.id))?;
        let text = match format {
            // Long records under one header (evals differ in their methods), each
            // starting with its eval's step id.
            "csv" => results
                .as_ref()
                .map(|r| csv_records(!any, &r.csv_long(&s.spec.id, spec.key == s.spec.key))),
            _ => results.as_ref().map(|r| r.markdown(&s.spec.name)),
        };
        let Some(text) = text else {
            not_built(notes, &s.spec.id, &why(&s.spec.id), path, &store.root);
            continue;
        };
        any = true;
        let _ = writeln!(out, "{text}");
        if machine {
            continue;
        }
        // In the document itself, not only on stderr: a table pasted into notes
        // must not pass for the manifest's current results.
        if let Some(e) = &earlier_run {
            let _ = writeln!(out, "{}", not_current_markdown(e));
        }
        if let Some((tasks, rows)) = results
            .as_ref()
            .and_then(|r| crate::eval::held_in::against_own(r, &owners))
        {
            let _ = writeln!(
                out,
                "{}",
                crate::eval::held_in::markdown(&s.spec.name, &tasks, &rows)
            );
        }
        if let Ok(bytes) = std::fs::read(files.join(crate::eval::routing_quality::QUALITY_JSON)) {
            let mut q: crate::eval::routing_quality::RoutingQuality = serde_json::from_slice(&bytes)
                .map_err(|e| miette!("{}: unreadable routing-quality record: {e}", s.spec.id))?;
            let pool = spec.inputs.iter().find(|i| i.role == "pool").map(|i| i.key);
            if !pool.is_some_and(|k| pools_shown.insert(k)) {
                q.gates = None;
            }
            let text = crate::eval::routing_quality::markdown(&s.spec.name, &q, &order);
            if !text.is_empty() {
                let _ = writeln!(out, "{text}");
            }
        }
    }
    // Said once, however many evals drew plots.
    if plots.is_some()
        && let Ok(None) = crate::eval::plots::png_font()
    {
        let notes: &mut dyn Write = &mut stderr;
        let _ = writeln!(
            notes,
            "note: the PNGs have no text (the SVGs do): no font file was found here, or GOOSEPIPE_PLOT_FONT=none; set GOOSEPIPE_PLOT_FONT to a .ttf file"
        );
    }
    if format == "json" && !json_items.is_empty() {
        any = true;
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json_items).expect("json")
        );
    }
    if !any {
        return Err(miette!(
            help = "run the pipeline first",
            "no evaluation of {} is in the store",
            path.display()
        ));
    }
    Ok(if corrupt {
        EXIT_ERROR
    } else if not_current {
        EXIT_PENDING
    } else {
        EXIT_OK
    })
}

/// An eval's or study's tables as markdown, headed with the step's name (its artifact
/// does not record it: a name is no ingredient of a key). None when the artifact has
/// no record to read (not built); an error when the record is unreadable.
fn headed_markdown(files: &Path, kind: &str, name: &str, order: &[String]) -> Result<Option<String>, String> {
    Ok(match kind {
        "eval" => eval_results(files, order)?.map(|r| r.markdown(name)),
        "study" => {
            study_result(files, order)?.map(|r| crate::eval::study::markdown(&format!("study {name}"), &r))
        }
        _ => None,
    })
}

/// `KIND:NAME` on a command line is a step id even where a file or folder of that name
/// is in the working folder (which one is read must not depend on the folder): the
/// note that says so, where one is there. The entry itself is `./KIND:NAME`.
pub(crate) fn shadowed_id_note(id: &str) -> Option<String> {
    let m = std::fs::metadata(id).ok()?;
    Some(format!(
        "{id} was read as a step id; the {} of that name here is ./{id}",
        crate::file_kind::file_kind(&m)
    ))
}

/// A step's long CSV records as `report` prints them: under the one header when they
/// are the first printed (evals and studies share it).
fn csv_records(first: bool, records: &str) -> String {
    let head = if first {
        format!("{}\n", crate::eval::table::LONG_CSV_HEADER)
    } else {
        String::new()
    };
    format!("{head}{}", records.trim_end())
}

/// A study's result with its tasks in the manifest's order (the artifact sorts them),
/// as its markdown and CSV show them. None when not built.
fn study_result(files: &Path, order: &[String]) -> Result<Option<crate::eval::study::StudyResult>, String> {
    Ok(
        read_record::<crate::eval::study::StudyResult>(files, crate::steps::study::STUDY_JSON)?.map(
            |mut r| {
                r.tasks
                    .sort_by_key(|t| order.iter().position(|o| o == t).unwrap_or(usize::MAX));
                r
            },
        ),
    )
}

/// An eval's results with its rows in the manifest's task order, and how many
/// examples each task scored (from its per-example scores, where it has them).
fn eval_results(files: &Path, order: &[String]) -> Result<Option<crate::eval::Results>, String> {
    let Some(mut r) = read_record::<crate::eval::Results>(files, crate::artifact_files::RESULTS_JSON)? else {
        return Ok(None);
    };
    r.order_tasks(order);
    // Per method, per task, the examples' scores (what a study resamples).
    if let Some(per) =
        read_record::<crate::eval::study::Replicate>(files, crate::artifact_files::PER_EXAMPLE_JSON)?
    {
        for tasks in per.values() {
            for (t, rows) in tasks {
                let n = r.examples.entry(t.clone()).or_default();
                *n = (*n).max(rows.len());
            }
        }
    }
    Ok(Some(r))
}

/// Each task of an eval's parameters that an expert owns, with its owner's name.
fn task_owners(params: &serde_json::Value) -> BTreeMap<String, String> {
    params["task"]
        .as_object()
        .map(|tasks| {
            tasks
                .iter()
                .filter_map(|(t, v)| Some((t.clone(), v["expert"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The tasks of a study in the order the manifest lists them in its first eval.
fn study_task_order(plan: &Plan, spec: &crate::store::StepSpec) -> Vec<String> {
    spec.params["evals"]
        .as_array()
        .and_then(|e| e.first())
        .and_then(|e| e.as_str())
        .map(|first| task_order(plan, first))
        .unwrap_or_default()
}

/// The tasks of eval `name` in the order its manifest lists them.
fn task_order(plan: &Plan, name: &str) -> Vec<String> {
    plan.manifest
        .entity("eval", name)
        .map(|e| {
            e.block
                .records("task")
                .iter()
                .filter_map(|t| t.arg.as_ref().and_then(|a| a.value.as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// An eval's results.json with the eval's name put in front of its title, as the
/// tables are headed (the artifact does not record the name). None when not built.
fn named_results_json(
    files: &Path,
    name: &str,
    order: &[String],
    owners: &BTreeMap<String, String>,
) -> Result<Option<serde_json::Value>, String> {
    let quality = read_record::<serde_json::Value>(files, crate::eval::routing_quality::QUALITY_JSON)?;
    Ok(eval_results(files, order)?.map(|mut r| {
        let held_in = crate::eval::held_in::against_own(&r, owners);
        r.title = format!("{name} ({})", r.title);
        let mut v = serde_json::to_value(&r).expect("json");
        // What md shows as the held-in table (owned tasks whose owner ran alone).
        if let Some((tasks, rows)) = held_in {
            v["held_in"] = serde_json::json!({"tasks": tasks, "methods": rows});
        }
        // What md shows as the routing-quality table (evals with owned tasks).
        if let Some(q) = quality {
            v["routing_quality"] = q;
        }
        v
    }))
}

/// A JSON record of an artifact: None when the file is not there (not built, or not
/// written by this kind), an error naming the file when it does not parse.
fn read_record<T: serde::de::DeserializeOwned>(files: &Path, file: &str) -> Result<Option<T>, String> {
    let Ok(bytes) = std::fs::read(files.join(file)) else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("unreadable {file}: {e}"))
}

/// Why step `id`'s result is not in the store, as `plan` says it (new, an edit, gc'd).
fn stale_reasons(plan: &Plan, status: &Status, id: &str) -> String {
    plan.index
        .get(id)
        .map(|&i| {
            let reasons: Vec<String> = status.states[i].reasons().iter().map(|r| r.describe()).collect();
            reasons.join("; ")
        })
        .unwrap_or_default()
}

/// What this manifest's last run built for step `s` (its lockfile's pin: never another
/// manifest's step of the same id), when the key the manifest has now is not built:
/// that artifact, named for the step as the manifest has it now. None when there is
/// none, or it is the current key.
fn last_built(store: &Store, lock: &Lockfile, s: &crate::plan::Step) -> Option<crate::store::ArtifactMeta> {
    if store.meta(&s.spec.key).is_some() {
        return None;
    }
    let key = lock
        .steps
        .get(&s.spec.id)
        .map(|l| l.key)
        .filter(|k| *k != s.spec.key)?;
    let mut meta = store.meta(&key)?;
    meta.spec.id = s.spec.id.clone();
    meta.spec.name = s.spec.name.clone();
    Some(meta)
}

/// Under a markdown table of an earlier run (`earlier`: its key, build time and why
/// it is stale, as the JSON form records them): that it is not the current result.
fn not_current_markdown(earlier: &serde_json::Value) -> String {
    format!(
        "> **Not current**: the results of an earlier run ({}, built {}); the manifest changed since ({}).\n",
        earlier["key"].as_str().map_or("", |k| &k[..k.len().min(12)]),
        earlier["built"].as_str().unwrap_or("at an unknown time"),
        earlier["stale"].as_str().unwrap_or("see `goosepipe plan`")
    )
}

/// The note shown with an earlier run's `what` (results, answers) of step `id`.
fn earlier_run_note(id: &str, what: &str, meta: &crate::store::ArtifactMeta, why: &str, run: &str) -> String {
    format!(
        "{id}: the {what} of an earlier run ({}, built {}); stale now ({why}): `{run}` brings them up to date",
        meta.key.short(),
        crate::store::artifact::format_unix(meta.started_unix),
    )
}

/// Says that step `id`'s result is not in the store, why (`plan`'s reasons), and the
/// command that builds it.
fn not_built(out: &mut dyn Write, id: &str, why: &str, manifest: &Path, store: &Path) {
    let why = if why.is_empty() || why == "new" {
        "not built yet".to_string()
    } else {
        format!("not in the store: {why}")
    };
    // --until: a plain run leaves out an eval that is gone while its study is cached.
    let _ = writeln!(
        out,
        "{id}: {why} (run `{} --until {id}`)",
        run_command(manifest, store)
    );
}

/// The `goosepipe run` command that builds `manifest` into the store at `store`, to
/// copy from a hint: `--store` is named unless it is where a bare command looks.
fn run_command(manifest: &Path, store: &Path) -> String {
    command_line("run", manifest, store)
}

/// `goosepipe SUBCOMMAND MANIFEST` against the store at `store`, as [`run_command`].
fn command_line(subcommand: &str, manifest: &Path, store: &Path) -> String {
    format!(
        "goosepipe {subcommand} {}{}",
        crate::store::shell_word(manifest),
        crate::store::store_flag(store)
    )
}

/// `report --plots`: an eval's routing heatmaps and score chart into DIR/EVAL/; the
/// files written are listed on `notes`.
fn draw_plots(files: &Path, dir: &Path, name: &str, id: &str, notes: &mut dyn Write) -> Result<(), Report> {
    let Some(results) = read_record::<crate::eval::Results>(files, crate::artifact_files::RESULTS_JSON)
        .map_err(|e| miette!("{id}: {e}"))?
    else {
        return Ok(());
    };
    let routing: Option<crate::eval::plots::RoutingRecord> =
        read_record(files, crate::eval::plots::ROUTING_JSON).map_err(|e| miette!("{id}: {e}"))?;
    let written = crate::eval::plots::write_plots(
        &dir.join(crate::eval::plots::slug(name)),
        name,
        &results,
        routing.as_ref(),
    )
    .map_err(|e| miette!("{id}: drawing the plots failed: {e}"))?;
    for f in written {
        let _ = writeln!(notes, "wrote {}", f.display());
    }
    Ok(())
}

/// `goosepipe score`: per-token log-probabilities of a target under a model (and
/// experts), to check a checkpoint by hand against another implementation.
pub fn score(req: &score::ScoreRequest, json: bool, out: &mut dyn Write) -> Result<i32, Report> {
    let r = score::score(req).map_err(|e| miette!("{e}"))?;
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&r).expect("json"));
    } else {
        let _ = write!(out, "{}", score::render_text(&r));
    }
    Ok(EXIT_OK)
}

/// `goosepipe export WHAT --format peft DIR`: a store artifact, or an expert file with
/// `--model`, as a PEFT adapter folder (a model as an HF checkpoint folder).
pub fn export(
    what: &str,
    model: Option<&Path>,
    dir: &Path,
    store_root: &Path,
    force: bool,
    out: &mut dyn Write,
) -> Result<i32, Report> {
    if let Some((there, kind)) = crate::file_kind::not_a_folder_on_the_way(dir) {
        return Err(miette!(
            "export {what}: {} is a {kind}, not a folder; give a folder to export into",
            there.display()
        ));
    }
    // Into a store's own folders (`show --path` of an artifact), --force wrote over
    // the published files it was reading: a good artifact destroyed.
    if let Some(store) = crate::store::identity::store_around(dir) {
        return Err(miette!(
            help = "export into a folder outside the store",
            "export {what}: {} is inside the goosepipe store at {}, whose files only runs write",
            dir.display(),
            store.display()
        ));
    }
    // Another adapter (or anything else) already there would be replaced file by file,
    // which nobody should learn afterwards: asked for by --force.
    if !force && let Ok(entries) = std::fs::read_dir(dir) {
        let mut there: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !there.is_empty() {
            there.sort();
            return Err(miette!(
                help = "export into a new or empty folder, or pass --force to replace the files an export writes (others are left as they are)",
                "export {what}: {} is not empty ({})",
                dir.display(),
                crate::plan::listing::first_few(&there, 4)
            ));
        }
    }
    let as_file = Path::new(what);
    // `KIND:NAME` is a step id, even where a file of that name is here (it is
    // `./KIND:NAME`): which one a command reads must not depend on the working folder.
    let id_form = ["expert", "gate", "model"]
        .iter()
        .any(|k| crate::store::spec::member_of(what, k).is_some());
    let shadowed = id_form.then(|| shadowed_id_note(what)).flatten();
    let done = if as_file.is_file() && !id_form {
        let model = model.ok_or_else(|| {
            miette!(
                help = format!(
                    "give the base model folder it was trained on: an HF checkpoint folder, or a model step's, `--model \"$(goosepipe show model:NAME --path{})/model\"`",
                    crate::store::store_flag(store_root)
                ),
                "{what} is an expert file: export needs --model"
            )
        })?;
        export::export_peft_file(as_file, model, dir)
    } else {
        if model.is_some() {
            return Err(miette!(
                "--model is only for an expert file given by path; a store artifact knows its base"
            ));
        }
        let store = existing_store(store_root)?;
        export::export_peft(&store, what, dir).map(|mut done| {
            if let Some(meta) = store.named(what).and_then(|k| store.meta(&k))
                && let Some(note) = last_run_note(&store, what, &meta)
            {
                done.notes.push(note);
            }
            done.notes.extend(shadowed);
            done
        })
    }
    .map_err(|e| miette!("export {what}: {e}"))?;
    let _ = writeln!(out, "exported {} to {}", done.step, dir.display());
    for f in &done.files {
        let _ = writeln!(out, "  {}", f.display());
    }
    for n in &done.notes {
        let _ = writeln!(out, "note: {n}");
    }
    Ok(EXIT_OK)
}

/// `goosepipe gc`.
pub fn gc(
    manifests: &[PathBuf],
    store_root: &Path,
    registry: &Registry,
    dry_run: bool,
    only_given: bool,
    out: &mut dyn Write,
) -> Result<i32, Report> {
    // A mistyped --store is said, not created empty and found to hold nothing.
    let store = existing_store(store_root)?;
    // Held from listing to deleting: a run that starts meanwhile waits for it.
    let _alone = if dry_run {
        None
    } else {
        match store.alone().map_err(|e| miette!("{e}"))? {
            Some(lock) => Some(lock),
            // Busy, not failed: its own exit code, for a cron job to try again.
            None => {
                let busy = miette!(
                    help = "run gc again when they have finished (`gc --dry-run` lists what it would delete now)",
                    "a run is using the store {} right now (goosepipe run, a cluster job's goosepipe exec, or another gc); gc could delete what it has built or is about to read",
                    store.root.display()
                );
                let _ = writeln!(std::io::stderr(), "{busy:?}");
                return Ok(EXIT_BUSY);
            }
        }
    };
    let hashes = store.hash_cache();
    let mut reachable = HashSet::new();
    for m in manifests {
        let lock = read_lock(m)?;
        reachable.extend(reached_keys(m, &lock, registry, &hashes, &store)?);
    }
    hashes.save();
    others_on_store(
        &store,
        registry,
        manifests,
        only_given,
        dry_run,
        &mut reachable,
        out,
    )?;
    let entries = store.gc_candidates(&reachable);
    let total: u64 = entries.iter().map(|e| e.size).sum();
    // Artifacts and leftovers one per line, named by their step where the recipe
    // says it; the bookkeeping of those steps (recipes, locks, name records) as a count.
    let (books, items): (Vec<_>, Vec<_>) = entries
        .iter()
        .partition(|e| e.reason == crate::store::gc::GcReason::Bookkeeping);
    for e in &items {
        let rel = e.path.strip_prefix(&store.root).unwrap_or(&e.path);
        let step = e
            .key
            .and_then(|k| store.recipe(&k))
            .map(|spec| format!(": {}", spec.id))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:>10}  {}  ({}{step})",
            human_size(e.size),
            rel.display(),
            e.reason.label()
        );
    }
    if !books.is_empty() {
        let _ = writeln!(
            out,
            "{:>10}  {} recipe, lock and name record(s) of steps no manifest reaches",
            human_size(books.iter().map(|e| e.size).sum()),
            books.len()
        );
    }
    if dry_run {
        let _ = writeln!(
            out,
            "would free {} in {} entries (dry run: nothing deleted)",
            human_size(total),
            entries.len()
        );
    } else {
        let freed = store.gc_delete(&entries).map_err(|e| miette!("gc failed: {e}"))?;
        let _ = writeln!(out, "freed {} in {} entries", human_size(freed), entries.len());
    }
    Ok(EXIT_OK)
}

/// The other manifests that ran on this store (its record, `runs/manifests/`): what
/// each reaches is kept (unless `only_given`), planned as a given manifest is (its
/// unfinished work and what its lockfile pins included), and said, so that a gc of
/// one project's manifest never deletes a sibling's work silently. A recorded
/// manifest that no longer exists is forgotten, and what only it reached goes; one
/// that cannot be read (permissions, an unmounted share) stops gc, as it cannot tell
/// what that manifest needs; so does a record that names no manifest (emptied or
/// overwritten: whose work it kept cannot be told), unless `only_given`.
fn others_on_store(
    store: &Store,
    registry: &Registry,
    given: &[PathBuf],
    only_given: bool,
    dry_run: bool,
    reachable: &mut HashSet<crate::store::Key>,
    out: &mut dyn Write,
) -> Result<(), Report> {
    // A given manifest's own record, damaged, costs nothing: what that manifest
    // reaches is kept anyway, and its next run writes the record again. (Recorded as
    // run: made absolute, not resolved.)
    let given_as_run: Vec<PathBuf> = given.iter().filter_map(|m| std::path::absolute(m).ok()).collect();
    let given: HashSet<PathBuf> = given
        .iter()
        .filter_map(|m| std::fs::canonicalize(m).ok())
        .collect();
    let hashes = store.hash_cache();
    let (recorded, damaged) = store.recorded_manifests();
    for d in damaged
        .iter()
        .filter(|d| !given_as_run.iter().any(|m| store.is_record_of(&d.path, m)))
    {
        let record = &d.path;
        if only_given {
            let _ = writeln!(
                out,
                "{} names no manifest ({}): --only-given",
                record.display(),
                d.why
            );
            continue;
        }
        return Err(miette!(
            help = "if the manifest it named is gone, delete the record; else run that manifest (which writes its record again) or give it to gc too, or pass --only-given to keep only what the given manifests reach",
            "{} records a manifest that ran on this store, and names none ({}): gc cannot tell what that manifest needs",
            record.display(),
            d.why
        ));
    }
    for m in recorded {
        // Recorded as run (a symlink not resolved: its lockfile is beside that path).
        match std::fs::canonicalize(&m) {
            Ok(real) if given.contains(&real) => continue,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = writeln!(
                    out,
                    "{} ran on this store and no longer exists: what only it reached is collected",
                    m.display()
                );
                if !dry_run {
                    store.forget_manifest(&m);
                }
                continue;
            }
            Err(e) if only_given => {
                let _ = writeln!(
                    out,
                    "{} ran on this store and cannot be read ({e}): --only-given",
                    m.display()
                );
                continue;
            }
            Err(e) => {
                return Err(miette!(
                    help = "make it readable, give it to gc too, or pass --only-given to keep only what the given manifests reach",
                    "{} ran on this store and cannot be read ({e}): gc cannot tell what it needs",
                    m.display()
                ));
            }
        }
        if only_given {
            let _ = writeln!(
                out,
                "collecting what {} (which also ran on this store) reaches: --only-given",
                m.display()
            );
            continue;
        }
        let lock = Lockfile::read(&lock_path(&m)).map_err(|e| {
            miette!(
                help = "fix it, or pass --only-given to keep only what the given manifests reach",
                "{} ran on this store, and gc cannot tell what it needs: {e}",
                m.display()
            )
        })?;
        // One that does not plan now (an edit left it broken): what it last built.
        let theirs = reached_keys(&m, &lock, registry, &hashes, store)
            .unwrap_or_else(|_| lock.steps.values().map(|l| l.key).collect());
        let kept = theirs
            .iter()
            .filter(|k| !reachable.contains(*k) && store.meta(k).is_some())
            .count();
        reachable.extend(theirs);
        if kept > 0 {
            let _ = writeln!(
                out,
                "keeping {kept} artifact(s) that {} reaches (it also ran on this store; pass --only-given to collect them)",
                m.display()
            );
        }
    }
    Ok(())
}

/// The keys a manifest reaches, for gc: its plan's; early cutoff's likely keys (the
/// next run most likely finds the artifacts after an edited, unbuilt dataset under
/// the keys its last pinned output gives); and what its lockfile pins, which stays
/// until a run moves the pins on (after an edit, `report` shows those results, and
/// a revert needs nothing rebuilt).
fn reached_keys(
    manifest: &Path,
    lock: &Lockfile,
    registry: &Registry,
    hashes: &HashCache,
    store: &Store,
) -> Result<HashSet<crate::store::Key>, Report> {
    let plan = load_plan_in(manifest, registry, hashes, store, lock)?;
    let mut keys: HashSet<crate::store::Key> = plan.steps.iter().map(|s| s.spec.key).collect();
    keys.extend(lock.steps.values().map(|l| l.key));
    if let Some(likely) = likely_plan(&plan, registry, hashes, store, lock)? {
        keys.extend(likely.steps.iter().map(|s| s.spec.key));
    }
    Ok(keys)
}

/// `goosepipe verify`: re-hashes artifacts against the digests recorded when they were
/// published (the manifests' artifacts, or with `all` everything in the store); a
/// mismatch is moved out of `objects/` (quarantined) so nothing reads it again, and the
/// next `run` rebuilds it. Exit 1 when anything was corrupt.
pub fn verify(
    manifests: &[PathBuf],
    all: bool,
    store_root: &Path,
    registry: &Registry,
    out: &mut dyn Write,
) -> Result<i32, Report> {
    use rayon::prelude::*;
    if manifests.is_empty() && !all {
        return Err(miette!(
            help = "goosepipe verify pipelines/quickstart.kdl, or goosepipe verify --all",
            "say what to verify: manifests (their artifacts), or --all (the whole store)"
        ));
    }
    // Verifying a store that does not exist would pass: say it instead.
    let store = existing_store(store_root)?;
    let mut keys: Vec<crate::store::Key> = if all { store.keys() } else { vec![] };
    let hashes = store.hash_cache();
    // Artifacts moved aside earlier (by a verify, a report, a run) and not rebuilt yet:
    // still a damaged store, said every time until a run rebuilds them.
    let mut aside: BTreeMap<crate::store::Key, String> = BTreeMap::new();
    // The manifest that reaches each key: its `run` command rebuilds what is moved
    // aside (a key `--all` finds is said with MANIFEST).
    let mut rebuilt_by: BTreeMap<crate::store::Key, String> = BTreeMap::new();
    for m in manifests {
        let plan = load_plan_in(m, registry, &hashes, &store, &read_lock(m)?)?;
        for s in &plan.steps {
            rebuilt_by
                .entry(s.spec.key)
                .or_insert_with(|| run_command(m, &store.root));
            match store.presence(&s.spec.key) {
                crate::store::Presence::Missing => {
                    if store.was_quarantined(&s.spec.key) {
                        aside.insert(s.spec.key, s.spec.id.clone());
                    }
                }
                _ => keys.push(s.spec.key),
            }
        }
    }
    if all {
        for key in store.quarantined() {
            if matches!(store.presence(&key), crate::store::Presence::Missing) {
                let id = store
                    .recipe(&key)
                    .map_or_else(|| "(unknown step)".into(), |r| r.id);
                aside.entry(key).or_insert(id);
            }
        }
    }
    hashes.save();
    keys.sort();
    keys.dedup();
    let rebuild = |key: &crate::store::Key| {
        rebuilt_by
            .get(key)
            .cloned()
            .unwrap_or_else(|| format!("goosepipe run MANIFEST{}", crate::store::store_flag(&store.root)))
    };
    let results: Vec<_> = keys
        .par_iter()
        .map(|k| (*k, crate::plan::integrity::verify(&store, k)))
        .collect();
    let (mut bytes, mut corrupt, mut unreadable) = (0u64, 0usize, 0usize);
    for (key, r) in results {
        let id = store
            .recipe(&key)
            .map(|r| r.id)
            .unwrap_or_else(|| "(unknown step)".into());
        match r {
            Ok(meta) => {
                bytes += meta.files.iter().map(|f| f.size).sum::<u64>();
                for extra in store.unrecorded(&meta) {
                    let _ = writeln!(
                        out,
                        "extra    {id} {}: {extra} is not one of its files (no reader opens it; delete it)",
                        key.short()
                    );
                }
            }
            // Moved aside only if still corrupt with its lock held (a run may be
            // rebuilding it right now).
            Err(crate::store::StoreError::Corrupt { .. }) => {
                match crate::plan::integrity::quarantine_if_corrupt(&store, &key) {
                    Ok(Some(reason)) => {
                        corrupt += 1;
                        let _ = writeln!(
                            out,
                            "corrupt  {id} {}: {reason}; moved aside, `{}` rebuilds it",
                            key.short(),
                            rebuild(&key)
                        );
                    }
                    Ok(None) => {}
                    Err(e) => {
                        corrupt += 1;
                        let _ = writeln!(out, "corrupt  {id} {}: could not move it aside: {e}", key.short());
                    }
                }
            }
            // Not damage (permissions): said apart, nothing moved.
            Err(e) if e.is_permission_denied() => {
                unreadable += 1;
                let _ = writeln!(out, "unreadable  {id} {}: {e}", key.short());
            }
            Err(e) => {
                corrupt += 1;
                let _ = writeln!(out, "unreadable  {id} {}: {e}", key.short());
            }
        }
    }
    for (key, id) in &aside {
        let _ = writeln!(
            out,
            "missing  {id} {}: moved aside as corrupt earlier and not rebuilt yet; `{}` rebuilds it",
            key.short(),
            rebuild(key)
        );
    }
    let _ = writeln!(
        out,
        "verified {} artifact(s): {} ok ({}), {corrupt} corrupt{}{}",
        keys.len(),
        keys.len() - corrupt - unreadable,
        human_size(bytes),
        if unreadable == 0 {
            String::new()
        } else {
            format!(", {unreadable} unreadable by this user (not checked, nothing moved)")
        },
        if aside.is_empty() {
            String::new()
        } else {
            format!(", {} moved aside earlier and not rebuilt", aside.len())
        }
    );
    Ok(if corrupt > 0 || unreadable > 0 || !aside.is_empty() {
        EXIT_ERROR
    } else {
        EXIT_OK
    })
}

/// What `show` and `export` look up: `what` itself, or with `--manifest FILE` the key
/// that manifest gives step `what` now (an id or a name), which must be built: the
/// store keeps a step's earlier artifacts, and the last run's may be one of those.
///
/// `export` (`with_gate`) takes an expert with its gate: the gate the manifest has
/// now is looked up instead (its recipe names the expert), so that an earlier gate of
/// the same expert never goes along.
pub fn lookup(
    what: &str,
    manifest: Option<&Path>,
    store_root: &Path,
    registry: &Registry,
    with_gate: bool,
) -> Result<String, Report> {
    let Some(path) = manifest else {
        return Ok(what.to_string());
    };
    let store = existing_store(store_root)?;
    let (plan, _, _) = plan_in_store_quietly(path, &store, registry, false)?;
    let mut step = &plan.steps[plan.resolve(what).map_err(|e| miette!("{e}"))?];
    // The gate carries its expert along; an expert that is gone is said as itself.
    if with_gate
        && step.spec.kind == "expert"
        && store.meta(&step.spec.key).is_some()
        && let Some(gate) = plan.get(&crate::store::spec::step_id("gate", &step.spec.name))
    {
        step = gate;
    }
    let id = step.id();
    let file = path.display();
    // With --until (the step and what it needs): a plain run leaves out a step whose
    // artifact is gone while everything after it is cached.
    let builds_it = format!("`{} --until {id}` builds it", run_command(path, &store.root));
    if !step.waits_for.is_empty() {
        return Err(miette!(
            help = builds_it,
            "{id}: its key waits for the output of {} (early cutoff), not built as {file} has it now",
            crate::plan::listing::first_few(&step.waits_for, 3)
        ));
    }
    let key = step.spec.key;
    if store.meta(&key).is_none() {
        let last = match store.named(id) {
            Some(k) if store.meta(&k).is_some() => format!(
                "; the last run found it at {}, under the manifest as it was then (`goosepipe show {}`)",
                k.short(),
                k.short()
            ),
            _ => String::new(),
        };
        return Err(miette!(
            help = builds_it,
            "{id} is not built as {file} has it now (key {}){last}",
            key.short()
        ));
    }
    Ok(key.hex())
}

/// The line `show` and `export` add when `what` is a step id whose artifact they took
/// from the last run's record while the store holds others of that step.
fn last_run_note(store: &Store, what: &str, meta: &crate::store::artifact::ArtifactMeta) -> Option<String> {
    if store.named(what) != Some(meta.key) {
        return None;
    }
    let others = store.others_of(&meta.spec.id, &meta.key);
    (others > 0).then(|| {
        format!(
            "{others} other artifact(s) of {} are in the store (earlier settings, or another manifest's step of that id; until gc); this is the one the last run built or found (--manifest FILE takes what a manifest has now)",
            meta.spec.id
        )
    })
}

/// A step's parameters as `show` prints them: a dataset's without the settings its
/// source does not read (the schema fills and keys them all; `check` warns where one
/// is written), which are named apart.
fn shown_params(spec: &crate::store::StepSpec) -> String {
    use crate::plan::dataset_sources::Source;
    let roles: Vec<&str> = spec.externals.iter().map(|e| e.role()).collect();
    let source = (spec.kind == "dataset")
        .then(|| Source::of_spec(&roles, &spec.params))
        .flatten();
    let (Some(source), Some(map)) = (source, spec.params.as_object()) else {
        return spec.params.to_string();
    };
    let unread = source.unread();
    let (left_out, read): (Vec<_>, Vec<_>) = map.iter().partition(|(k, _)| unread.contains(&k.as_str()));
    let read: serde_json::Map<String, serde_json::Value> =
        read.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut shown = serde_json::Value::Object(read).to_string();
    if !left_out.is_empty() {
        let names: Vec<&str> = left_out.iter().map(|(k, _)| k.as_str()).collect();
        shown.push_str(&format!(
            "\n         (also keyed, and not read for {}: {})",
            source.noun(),
            names.join(", ")
        ));
    }
    shown
}

/// `goosepipe show`.
pub fn show(
    what: &str,
    store_root: &Path,
    json: bool,
    path: bool,
    out: &mut dyn Write,
) -> Result<i32, Report> {
    let store = existing_store(store_root)?;
    let meta = store.find(what).map_err(|e| miette!("{e}"))?;
    // The payload is re-hashed: a flipped byte of the same size is only seen this way.
    let integrity = match crate::plan::integrity::verify(&store, &meta.key) {
        Ok(_) => {
            "ok (every file matches its recorded blake3; its recorded step hashes to its key)".to_string()
        }
        Err(e) if path && e.is_permission_denied() => {
            return Err(miette!("{} cannot be checked: {e}", meta.spec.id));
        }
        Err(e) if path => {
            return Err(miette!(
                "{} is corrupt: {e}; {}",
                meta.spec.id,
                crate::store::corrupt_help(&store.root)
            ));
        }
        // Not damage: a file this user may not read. Nothing to rebuild.
        Err(e) if e.is_permission_denied() => format!("UNREADABLE, not checked: {e}"),
        Err(e) => format!("CORRUPT: {e}; {}", crate::store::corrupt_help(&store.root)),
    };
    // Shown either way (what it was is worth seeing); a corrupt one exits 1.
    let verified = integrity.starts_with("ok");
    let shown = if verified { EXIT_OK } else { EXIT_ERROR };
    if path {
        let dir = store.files_dir(&meta.key);
        let _ = writeln!(out, "{}", std::fs::canonicalize(&dir).unwrap_or(dir).display());
        return Ok(EXIT_OK);
    }
    if json {
        let mut v = serde_json::to_value(&meta).expect("json");
        v["verified"] = serde_json::json!(verified);
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(shown);
    }
    // Written to a terminal: what a meta.json says (an edited host, a name) must not
    // carry terminal escape sequences there; they are shown escaped.
    let terminal = out;
    let mut text = Vec::new();
    let out: &mut dyn Write = &mut text;
    let s = &meta.spec;
    let _ = writeln!(
        out,
        "{}  ({} \"{}\", implementation version {})",
        s.id, s.kind, s.name, s.version
    );
    // Asked for by another id with the same key (a twin, a renamed step): the artifact
    // records only the step that built it, so say which one asked.
    if what.contains(':') && what != s.id && store.named(what) == Some(meta.key) {
        let _ = writeln!(out, "also     {what} (same key: one artifact; {} built it)", s.id);
    }
    let _ = writeln!(out, "key      {}", meta.key);
    if let Some(note) = last_run_note(&store, what, &meta) {
        let _ = writeln!(out, "note     {note}");
    }
    let _ = writeln!(out, "digest   {}", meta.digest);
    let _ = writeln!(out, "status   {integrity}");
    let numerics = meta
        .numerics
        .as_deref()
        .map_or(String::new(), |n| format!(" ({n})"));
    // A clock set back during the build (or an edit) records an end before the start.
    let took = match meta.seconds() {
        t if t.is_finite() && t >= 0.0 => format!("{t:.1}s"),
        _ => "an unknown time (its recorded end is before its start: a clock set back, or an edit)".into(),
    };
    let _ = writeln!(
        out,
        "built    {} on {}{numerics} in {took} by goosepipe {}",
        crate::store::artifact::format_unix(meta.started_unix),
        meta.host,
        meta.tool_version
    );
    let _ = writeln!(out, "params   {}", shown_params(s));
    // What its run warned of (a training step's summary): said to whoever finds it.
    if let Some(warnings) = std::fs::read(
        store
            .files_dir(&meta.key)
            .join(crate::artifact_files::SUMMARY_JSON),
    )
    .ok()
    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    .and_then(|v| v["warnings"].as_array().cloned())
    {
        for w in warnings.iter().filter_map(|w| w.as_str()) {
            let _ = writeln!(out, "warning  {w}");
        }
    }
    if s.settings.as_object().is_some_and(|o| !o.is_empty()) {
        let _ = writeln!(out, "settings {}", s.settings);
    }
    for i in &s.inputs {
        let _ = writeln!(out, "input    {:24} {} {}", i.role, i.id, i.key.short());
    }
    for e in &s.externals {
        let _ = writeln!(out, "external {:24} {}", e.role(), e.identity());
    }
    for (k, v) in &meta.pins {
        let _ = writeln!(out, "pinned   {k} -> {v}");
    }
    let _ = writeln!(
        out,
        "files    ({} in {})",
        meta.files.len(),
        store.files_dir(&meta.key).display()
    );
    for (size, name) in file_rows(&meta.files) {
        let _ = writeln!(out, "  {:>10}  {name}", human_size(size));
    }
    let _ = terminal.write_all(without_controls(&String::from_utf8_lossy(&text)).as_bytes());
    Ok(shown)
}

/// `text` with every control character but newline and tab written as its escape
/// (`\u{1b}`), so that text read from a file cannot move a terminal's cursor,
/// recolour it or retitle its window.
fn without_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `show`'s file list: one row per file, but a folder of more than
/// `FOLDER_ROWS` files (an eval's parts, hundreds at the paper's scale) is one row
/// with its count and total size.
fn file_rows(files: &[crate::store::FileEntry]) -> Vec<(u64, String)> {
    const FOLDER_ROWS: usize = 8;
    let mut per_folder: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for f in files {
        if let Some((dir, _)) = f.path.split_once('/') {
            let e = per_folder.entry(dir).or_default();
            e.0 += 1;
            e.1 += f.size;
        }
    }
    let mut rows = vec![];
    let mut folded = std::collections::BTreeSet::new();
    for f in files {
        match f.path.split_once('/') {
            Some((dir, _)) if per_folder[dir].0 > FOLDER_ROWS => {
                if folded.insert(dir) {
                    let (n, size) = per_folder[dir];
                    rows.push((size, format!("{dir}/ ({n} files)")));
                }
            }
            _ => rows.push((f.size, f.path.clone())),
        }
    }
    rows
}
