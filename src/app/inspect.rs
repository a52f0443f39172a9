//! `goosepipe plan`, `graph` and `explain`: what a manifest would run, and why,
//! read against the store without building anything.

use std::io::Write;
use std::path::Path;

use miette::{Report, miette};

use crate::exec::{self, Registry, RunOptions};
use crate::plan::{Plan, Status, render};

use super::{EXIT_ERROR, EXIT_OK, EXIT_PENDING, plan_with_status};

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
    // A run would stop at these: said as an error, so that CI's `plan` fails where
    // the run would (the step's line says why).
    let refused = status.previews.values().filter(|p| p.refused).count();
    if refused > 0 {
        let _ = writeln!(
            std::io::stderr(),
            "error: {refused} step(s) would fail at once (their lines say why): a run stops there"
        );
    }
    let code = if refused > 0 {
        EXIT_ERROR
    } else if check_cached && (would_run || !status.lock_drift.is_empty()) {
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
