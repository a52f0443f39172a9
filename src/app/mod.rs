//! The commands behind the CLI. `main.rs` only parses arguments and calls these; each
//! returns the process exit code, and user-facing errors come back as miette reports.

pub mod examples;
pub mod export;
mod gc;
mod inspect;
mod report;
mod run;
pub mod score;
mod show;
pub mod token_routing;
mod verify;

pub use gc::gc;
pub use inspect::{PlanOptions, explain, graph, plan_cmd};
pub use report::report;
pub use run::{ExecTarget, RunRequest, exec_cmd, run, run_with};
pub use show::{lookup, show};
pub use verify::verify;

use std::io::Write;
use std::path::Path;

use miette::{Report, miette};

use crate::exec::Registry;
use crate::plan::{self, Plan, Status};
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
    // An empty folder is no store either: opened, it would be made one (a `report`
    // that runs nothing left a store's folders behind).
    let empty = || {
        !crate::store::identity::is_store(root)
            && std::fs::read_dir(root).is_ok_and(|mut entries| entries.next().is_none())
    };
    if !root.is_dir() || empty() {
        let why = if root.is_dir() {
            "the folder is empty, nothing was ever built there"
        } else if root.exists() {
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
            // Not a store artifact by intent: what was given is said as what it is.
            let given = if id_form {
                "a store artifact knows its base".to_string()
            } else if crate::model::checkpoint::peft::is_peft_dir(as_file) {
                format!("{what} is a PEFT adapter folder already")
            } else if as_file.is_dir() {
                format!("{what} is a folder")
            } else if !as_file.exists() {
                format!("{what} does not exist")
            } else {
                format!("{what} is not a regular file")
            };
            return Err(miette!(
                "--model goes with an expert file given by path (expert.safetensors), and {given}"
            ));
        }
        let store = existing_store(store_root)?;
        export::export_peft(&store, what, dir).map(|mut done| {
            if let Some(meta) = store.named(what).and_then(|k| store.meta(&k))
                && let Some(note) = show::last_run_note(&store, what, &meta)
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
