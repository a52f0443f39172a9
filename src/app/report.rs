//! `goosepipe report`: the results tables of a manifest's evals and studies, from the
//! store (runs nothing), as text, markdown, CSV or JSON, with plots on request.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

use miette::{Report, miette};

use crate::exec::Registry;
use crate::plan::{Plan, Status};
use crate::store::Store;
use crate::store::lockfile::Lockfile;

use super::{EXIT_ERROR, EXIT_OK, EXIT_PENDING, existing_store, likely_plan, plan_in_store, run_command};

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
    // Made (or found writable) before any eval's subfolder is: a folder that cannot be
    // made is named as given (`/proc/plots`), not as `/proc/plots/EVAL` after the
    // tables were printed.
    if let Some(dir) = plots {
        writable_folder(dir).map_err(|e| {
            miette!(
                help = "give a folder you can write to",
                "report --plots: {}: {e}",
                dir.display()
            )
        })?;
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
                    match headed_markdown(&files, spec, &study_task_order(&plan, spec))
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
            match with_step(named_results_json(
                &files,
                &s.spec.name,
                &order,
                &owners,
                &spec.params,
            ))? {
                Some(v) => {
                    any = true;
                    json_items.push(v);
                }
                None => not_built(notes, &s.spec.id, &why(&s.spec.id), path, &store.root),
            }
            continue;
        }
        // Read once: the table, and the held-in comparison below it.
        let results =
            eval_results(&files, &order, &spec.params).map_err(|e| miette!("{}: {e}", s.spec.id))?;
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
pub(super) fn headed_markdown(
    files: &Path,
    spec: &crate::store::StepSpec,
    order: &[String],
) -> Result<Option<String>, String> {
    let name = &spec.name;
    Ok(match spec.kind.as_str() {
        "eval" => eval_results(files, order, &spec.params)?.map(|r| r.markdown(name)),
        "study" => {
            study_result(files, order)?.map(|r| crate::eval::study::markdown(&format!("study {name}"), &r))
        }
        _ => None,
    })
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
fn eval_results(
    files: &Path,
    order: &[String],
    params: &serde_json::Value,
) -> Result<Option<crate::eval::Results>, String> {
    let Some(mut r) = read_record::<crate::eval::Results>(files, crate::artifact_files::RESULTS_JSON)? else {
        return Ok(None);
    };
    r.order_tasks(order);
    // The routing setting the numbers depend on, beside the pool (the stored title
    // says the pool only: a top-k edit changed the numbers and nothing else shown).
    if let Some(routing) = routing_setting(params) {
        r.title = format!("{}; {routing}", r.title);
    }
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

/// "top-2 routing" where an eval runs a method that keeps the top k experts per token.
fn routing_setting(params: &serde_json::Value) -> Option<String> {
    let routes = params["methods"]
        .as_array()?
        .iter()
        .filter_map(|m| m.as_str())
        .any(|m| crate::route::parse(crate::route::METHODS, m).is_some_and(|c| c.routes_tokens()));
    let k = params["routing"]["top-k"].as_u64()?;
    routes.then(|| format!("top-{k} routing"))
}

/// Each task of an eval's parameters that an expert owns, with its owner's name.
pub(super) fn task_owners(params: &serde_json::Value) -> BTreeMap<String, String> {
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
pub(super) fn task_order(plan: &Plan, name: &str) -> Vec<String> {
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
    params: &serde_json::Value,
) -> Result<Option<serde_json::Value>, String> {
    let quality = read_record::<serde_json::Value>(files, crate::eval::routing_quality::QUALITY_JSON)?;
    Ok(eval_results(files, order, params)?.map(|mut r| {
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
pub(super) fn stale_reasons(plan: &Plan, status: &Status, id: &str) -> String {
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
pub(super) fn last_built(
    store: &Store,
    lock: &Lockfile,
    s: &crate::plan::Step,
) -> Option<crate::store::ArtifactMeta> {
    if store.meta(&s.spec.key).is_some() {
        return None;
    }
    let key = lock
        .steps
        .get(&s.spec.id)
        .map(|l| l.key)
        .filter(|k| *k != s.spec.key)?;
    // A pin edited by hand to another kind's artifact (an expert's key under an eval's
    // id) is no earlier run of this step. (Of the same kind, the recorded id may differ
    // rightly: twins share a key, recorded under the id that built it first.)
    let mut meta = store.meta(&key).filter(|m| m.spec.kind == s.spec.kind)?;
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
pub(super) fn earlier_run_note(
    id: &str,
    what: &str,
    meta: &crate::store::ArtifactMeta,
    why: &str,
    run: &str,
) -> String {
    format!(
        "{id}: the {what} of an earlier run ({}, built {}); stale now ({why}): `{run}` brings them up to date",
        meta.key.short(),
        crate::store::artifact::format_unix(meta.started_unix),
    )
}

/// Says that step `id`'s result is not in the store, why (`plan`'s reasons), and the
/// command that builds it.
pub(super) fn not_built(out: &mut dyn Write, id: &str, why: &str, manifest: &Path, store: &Path) {
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

/// Makes `dir` (and its parents) and checks that a file can be made in it, by making
/// one and removing it: permissions, a read-only mount and procfs all say no here.
fn writable_folder(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".goosepipe-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}
