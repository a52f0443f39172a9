//! `goosepipe report MANIFEST --examples TASK`: a task's examples with every method's
//! answer to each, from the evals of the manifest that score it (their
//! `predictions.json`). A mean says how often a method was right; this says what it
//! answered when it was not.

use std::io::Write;
use std::path::Path;

use miette::{Report, miette};

use super::report::{not_built, stale_reasons};
use super::{existing_store, plan_in_store};
use crate::artifact_files::RESULTS_JSON;
use crate::eval::Results;
use crate::eval::predictions::{PREDICTIONS_JSON, Predictions, Selection, ran, render, selected};
use crate::exec::Registry;

/// What `report --examples` was asked for.
pub struct ExamplesRequest<'a> {
    pub task: &'a str,
    /// Only this eval (by name), when several score the task.
    pub eval: Option<&'a str>,
    pub select: Selection<'a>,
    /// `md` (text) or `json` (the same examples, each with every method's answer
    /// and score).
    pub format: &'a str,
}

/// The parameters of what is shown of an eval: its earlier run's, when that is shown.
fn params_of<'a>(
    (s, earlier): &'a (&crate::plan::Step, Option<crate::store::ArtifactMeta>),
) -> &'a serde_json::Value {
    earlier.as_ref().map_or(&s.spec.params, |m| &m.spec.params)
}

pub fn examples(
    path: &Path,
    store_root: &Path,
    registry: &Registry,
    req: &ExamplesRequest,
    out: &mut dyn Write,
) -> Result<i32, Report> {
    let store = existing_store(store_root)?;
    let (plan, status, lock) = plan_in_store(path, &store, registry, false)?;
    let evals: Vec<_> = plan.steps.iter().filter(|s| s.spec.kind == "eval").collect();
    if let Some(name) = req.eval
        && !evals.iter().any(|s| s.spec.name == name)
    {
        let names: Vec<&str> = evals.iter().map(|s| s.spec.name.as_str()).collect();
        return Err(miette!(
            help = format!("its evals: {}", names.join(", ")),
            "{} has no eval {name:?}",
            path.display()
        ));
    }
    // Each eval with what is shown of it: what its manifest's last run built when the
    // key it has now is not built (an edit since), with that run's tasks and methods.
    let shown: Vec<_> = evals
        .iter()
        .filter(|s| req.eval.is_none_or(|n| s.spec.name == n))
        .map(|s| (*s, super::report::last_built(&store, &lock, s)))
        .collect();
    let scoring: Vec<_> = shown
        .iter()
        .filter(|e| params_of(e)["task"].get(req.task).is_some())
        .collect();
    if scoring.is_empty() {
        let mut tasks: Vec<&str> = shown
            .iter()
            .filter_map(|e| params_of(e)["task"].as_object())
            .flat_map(|t| t.keys().map(String::as_str))
            .collect();
        tasks.sort_unstable();
        tasks.dedup();
        let within = req.eval.map(|n| format!("eval {n:?} of ")).unwrap_or_default();
        return Err(miette!(
            help = format!("its tasks: {}", tasks.join(", ")),
            "no task {:?} in {within}{}",
            req.task,
            path.display()
        ));
    }
    // A method no eval of the task lists: said before anything is read, with the
    // methods there are (and the nearest, for a typo).
    if let Some(m) = req.select.wrong {
        let mut methods: Vec<&str> = scoring
            .iter()
            .filter_map(|e| params_of(e)["methods"].as_array())
            .flatten()
            .filter_map(|m| m.as_str())
            .collect();
        methods.sort_unstable();
        methods.dedup();
        if !methods.contains(&m) {
            let near = crate::manifest::diag::did_you_mean(m, methods.iter().copied())
                .map(|n| format!("did you mean {n:?}? "))
                .unwrap_or_default();
            return Err(miette!(
                help = format!(
                    "{near}--wrong takes one of the eval's methods: {}",
                    methods.join(", ")
                ),
                "no eval that scores {:?} ran method {m:?}",
                req.task
            ));
        }
    }
    let mut shown = vec![];
    // Answers missing, or shown from before an edit: exit 2, as `report`; nothing
    // shown at all: 1.
    let mut missing = false;
    let mut any = false;
    // Evals that did not run the method `--wrong` names: left out, said at the end.
    let mut without = vec![];
    let scoring_count = scoring.len();
    for e in scoring {
        let (s, earlier) = e;
        let id = &s.spec.id;
        let key = earlier.as_ref().map_or(s.spec.key, |m| m.key);
        let files = store.files_dir(&key);
        if let Some(m) = &earlier {
            let note = super::report::earlier_run_note(
                id,
                "answers",
                m,
                &stale_reasons(&plan, &status, id),
                &super::run_command(path, &store.root),
            );
            let _ = writeln!(std::io::stderr(), "{note}");
            missing = true;
        } else if store.meta(&key).is_none() {
            let reasons = stale_reasons(&plan, &status, id);
            not_built(&mut std::io::stderr(), id, &reasons, path, &store.root);
            missing = true;
            continue;
        }
        // Re-hashed as `report` does: a damaged file is never shown.
        crate::plan::integrity::verify(&store, &key)
            .map_err(|e| miette!(help = crate::store::corrupt_help(&store.root), "{id}: {e}"))?;
        let bytes = std::fs::read(files.join(PREDICTIONS_JSON))
            .map_err(|e| miette!("{id}: {PREDICTIONS_JSON}: {e}"))?;
        let task = Predictions::one_task(&bytes, req.task)
            .map_err(|e| miette!("{id}: unreadable {PREDICTIONS_JSON}: {e}"))?;
        let Some(task) = task else {
            // A task added since the earlier run shown: not scored yet, not damage.
            if earlier.is_some() {
                let reasons = stale_reasons(&plan, &status, id);
                not_built(&mut std::io::stderr(), id, &reasons, path, &store.root);
                missing = true;
                continue;
            }
            return Err(miette!("{id}: its {PREDICTIONS_JSON} has no task {:?}", req.task));
        };
        if let Some(m) = req.select.wrong
            && !ran(&task, m)
        {
            without.push(id.clone());
            continue;
        }
        let note = std::fs::read(files.join(RESULTS_JSON))
            .ok()
            .and_then(|b| serde_json::from_slice::<Results>(&b).ok())
            .and_then(|r| r.task_notes.get(req.task).cloned());
        let order: Vec<String> = params_of(e)["methods"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if req.format == "json" {
            let mut v = selected(&task, &order, &req.select).map_err(|e| miette!("{id}: {e}"))?;
            v["step"] = serde_json::json!(id);
            v["task"] = serde_json::json!(req.task);
            if let Some(n) = &note {
                v["note"] = serde_json::json!(n);
            }
            shown.push(v);
            any = true;
        } else {
            let text = render(
                &format!("{id}, task {:?}", req.task),
                &task,
                &order,
                &req.select,
                note.as_deref(),
            )
            .map_err(|e| miette!("{id}: {e}"))?;
            let _ = writeln!(out, "{text}\n");
            any = true;
        }
    }
    if let Some(m) = req.select.wrong
        && !without.is_empty()
    {
        if without.len() == scoring_count {
            return Err(miette!(
                help = "--wrong takes one of the eval's methods (`goosepipe report` shows them as columns)",
                "no eval that scores {:?} ran method {m:?}",
                req.task
            ));
        }
        let _ = writeln!(
            std::io::stderr(),
            "{}: did not run {m:?}; left out",
            without.join(", ")
        );
    }
    if req.format == "json" {
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&shown).expect("json"));
    }
    Ok(if !any {
        super::EXIT_ERROR
    } else if missing {
        super::EXIT_PENDING
    } else {
        super::EXIT_OK
    })
}
