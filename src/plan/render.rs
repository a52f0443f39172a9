//! Human and machine renderings of a plan: the `plan` table, `--json`, DOT and
//! Mermaid graphs, and `explain`.

use std::fmt::Write as _;

use serde_json::json;

use super::Plan;
use super::status::{State, Status};
use crate::manifest::{Origin, Value};

fn pipeline_name(plan: &Plan) -> String {
    plan.manifest.pipeline.clone().unwrap_or_else(|| {
        plan.manifest
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default()
    })
}

/// A run's selection (`--only`, `--until`) as `plan` previews it: the steps that run
/// would run (plan indices), and the flag that says so.
#[derive(Debug, Clone)]
pub struct Selection {
    pub flag: String,
    pub steps: std::collections::BTreeSet<usize>,
}

/// The `goosepipe plan` table.
pub fn plan_text(plan: &Plan, status: &Status) -> String {
    plan_text_of(plan, status, None)
}

/// The `goosepipe plan` table; with a selection, the stale steps outside it are
/// marked as not run.
pub fn plan_text_of(plan: &Plan, status: &Status, selection: Option<&Selection>) -> String {
    let mut out = String::new();
    let stale = status.stale_count();
    let cached = status
        .states
        .iter()
        .filter(|s| matches!(s, State::Cached))
        .count();
    let shared = status.shared_count();
    let twins = match shared {
        0 => String::new(),
        1 => format!(" (one has the key of another: {} to build)", stale - 1),
        n => format!(" ({n} have the key of another: {} to build)", stale - n),
    };
    // Steps with provisional keys (early cutoff); always stale, since every step
    // that reads one waits too.
    let waiting = plan.steps.iter().filter(|s| !s.waits_for.is_empty()).count();
    let twins = if waiting > 0 {
        format!("{twins} ({waiting} of them wait for datasets and may stay cached)")
    } else {
        twins
    };
    let _ = writeln!(
        out,
        "pipeline {:?}: {} steps, {} to run{twins}, {} cached",
        pipeline_name(plan),
        plan.steps.len(),
        stale,
        cached
    );
    if let Some(sel) = selection {
        let outside = (0..plan.steps.len())
            .filter(|&i| status.states[i].will_run() && !sel.steps.contains(&i))
            .count();
        let runs = match sel.steps.len() {
            0 => "runs nothing: what it selects is cached".to_string(),
            n => format!("runs {n} step(s)"),
        };
        let runs = match outside {
            0 => runs,
            m => format!("{runs}; the {m} other stale step(s) stay stale"),
        };
        let _ = writeln!(out, "{} {runs}", sel.flag);
    }
    let wk = plan
        .steps
        .iter()
        .map(|s| s.spec.kind.len())
        .max()
        .unwrap_or(4)
        .max(4);
    // A step's name as the table shows it: its id's name part (`count@held-in` for
    // an eval's per-member step), which can be longer than the entity's name.
    let shown_name = |s: &super::Step| {
        if s.spec.id == crate::store::spec::step_id(&s.spec.kind, &s.spec.name) {
            s.spec.name.clone()
        } else {
            s.spec.id[s.spec.kind.len() + 1..].to_string()
        }
    };
    let wn = plan
        .steps
        .iter()
        .map(|s| shown_name(s).chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(out, "  {:wk$}  {:wn$}  {:12}  STATE", "KIND", "NAME", "KEY");
    for (i, (s, st)) in plan.steps.iter().zip(&status.states).enumerate() {
        let mut reasons: Vec<String> = st.reasons().iter().map(|r| r.describe()).collect();
        reasons.extend(status.previews.get(&i).map(|p| p.text.clone()));
        // With a selection: stale steps outside it stay so; a step inside it that a
        // plain run would not run (not needed) is run by it.
        let label = match selection {
            Some(sel) if st.will_run() && !sel.steps.contains(&i) => {
                format!("{}, not run by {}", st.label(), sel.flag)
            }
            Some(sel) if !st.will_run() && sel.steps.contains(&i) => {
                format!("{}, run by {}", st.label(), sel.flag)
            }
            _ => st.label().to_string(),
        };
        let state = if reasons.is_empty() {
            label
        } else {
            format!("{label}: {}", reasons.join("; "))
        };
        let name = shown_name(s);
        let _ = writeln!(
            out,
            "  {:wk$}  {:wn$}  {:12}  {}",
            s.spec.kind,
            name,
            shown_key(s),
            state
        );
    }
    if stale == 0 {
        let _ = writeln!(out, "nothing to do: every step is cached");
    }
    if waiting > 0 {
        let _ = writeln!(
            out,
            "early cutoff: {waiting} step(s) wait for datasets that are not built; their keys are known once those are, and any whose key comes out as before stays cached"
        );
    }
    if let Some(note) = lock_drift_note(plan, status) {
        let _ = writeln!(out, "{note}");
    }
    if !status.lock_other_bits.is_empty() {
        let _ = writeln!(
            out,
            "lockfile: {} cached step(s) differ from their pins in the last bits only ({}): built on other numerics than the lockfile records, under the pinned keys and with the pinned results tables where it pins some; `run --locked` accepts them, `goosepipe run` re-pins them",
            status.lock_other_bits.len(),
            super::listing::first_few(&status.lock_other_bits, 5)
        );
    }
    if !status.lock_unrecorded.is_empty() {
        let _ = writeln!(out, "{}", unrecorded_note(&status.lock_unrecorded));
    }
    out
}

/// Pins of the right digest that leave out the numerics or results tables their
/// artifacts record: said by `plan` and `run --locked` (which accept them: the pins
/// are the same), recorded by the next plain run.
pub fn unrecorded_note(ids: &[String]) -> String {
    format!(
        "lockfile: {} pin(s) do not record the numerics or results tables their artifacts record ({}): written by an earlier goosepipe, or edited; the pins themselves hold (`run --locked` accepts them), and `goosepipe run` records the rest",
        ids.len(),
        super::listing::first_few(ids, 5)
    )
}

/// A step's short key, or `pending` while it is provisional (early cutoff).
fn shown_key(s: &super::Step) -> String {
    if s.waits_for.is_empty() {
        s.spec.key.short()
    } else {
        "pending".into()
    }
}

/// A line on cached steps the lockfile pins otherwise, if any (everything cached and
/// yet `run --locked` refused, with nothing in `plan` to say why).
fn lock_drift_note(plan: &Plan, status: &Status) -> Option<String> {
    let drift = &status.lock_drift;
    if drift.is_empty() {
        return None;
    }
    let lock = crate::store::lockfile::lock_path(&plan.manifest.path);
    let file = lock
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    if !lock.exists() {
        return Some(format!(
            "lockfile: {file} does not exist yet: `goosepipe run` writes it beside the manifest (commit it), `run --locked` refuses until then"
        ));
    }
    let ids = super::listing::first_few(drift, 5);
    Some(format!(
        "lockfile: {file} does not match this manifest for {} step(s) ({ids}: cached under other keys or digests, unpinned, or no longer in the manifest): it was written for another version of the manifest, or not yet; `goosepipe run` rewrites it, `run --locked` refuses until then",
        drift.len()
    ))
}

/// The version of `plan --json`'s layout: raised when a field is removed or changes
/// meaning (new fields may appear within a version).
pub const PLAN_JSON_VERSION: u32 = 1;

/// The JSON Schema of `plan --json` (schemas/plan.schema.json).
pub const PLAN_JSON_SCHEMA: &str = include_str!("../../schemas/plan.schema.json");

/// `store`: the store folder the status was read from (a mistyped one reads as
/// "rebuild everything": the JSON names it, and whether it exists).
pub fn plan_json(plan: &Plan, status: &Status, store: &std::path::Path) -> serde_json::Value {
    plan_json_of(plan, status, store, None)
}

/// [`plan_json`] with a run's selection: `selection` names the flag and the steps it
/// would run, and each step says whether it is one of them.
pub fn plan_json_of(
    plan: &Plan,
    status: &Status,
    store: &std::path::Path,
    selection: Option<&Selection>,
) -> serde_json::Value {
    let steps: Vec<_> = plan
        .steps
        .iter()
        .zip(&status.states)
        .enumerate()
        .map(|(i, (s, st))| {
            json!({
                "id": s.spec.id,
                "kind": s.spec.kind,
                "name": s.spec.name,
                // A provisional key (early cutoff) is no key to look up: null, with
                // `waits_for` naming the datasets it waits for.
                "key": s.waits_for.is_empty().then(|| s.spec.key.hex()),
                "short_key": s.waits_for.is_empty().then(|| s.spec.key.short()),
                "state": st.label(),
                "will_run": st.will_run(),
                "selected": selection.map_or(st.will_run(), |sel| sel.steps.contains(&i)),
                "reasons": st.reasons(),
                "reasons_text": st.reasons().iter().map(|r| r.describe()).collect::<Vec<_>>(),
                "preview": status.previews.get(&i).map(|p| &p.text),
                "preview_counts": status.previews.get(&i).filter(|p| !p.counts.is_empty()).map(|p| &p.counts),
                "inputs": s.spec.inputs.iter().map(|i| {
                    let provisional = plan.get(&i.id).is_some_and(|p| !p.waits_for.is_empty());
                    let key = (!provisional).then(|| i.key.hex());
                    let mut j = json!({"role": i.role, "id": i.id, "key": key});
                    if let Some(d) = i.digest.as_ref().filter(|_| !i.pending()) {
                        j["content"] = json!(d);
                    }
                    j
                }).collect::<Vec<_>>(),
                // Early cutoff: the key is provisional until these datasets are built.
                "waits_for": s.waits_for,
            })
        })
        .collect();
    // The layout is documented in schemas/plan.schema.json (PLAN_JSON_SCHEMA).
    json!({
        "format": "goosepipe.plan",
        "format_version": PLAN_JSON_VERSION,
        "pipeline": pipeline_name(plan),
        "manifest": plan.manifest.path.display().to_string(),
        "store": {
            "path": std::path::absolute(store).unwrap_or(store.to_path_buf()).display().to_string(),
            "exists": store.is_dir(),
        },
        "summary": {
            "steps": plan.steps.len(),
            "to_run": status.stale_count(),
            "to_build": status.stale_count() - status.shared_count(),
            "cached": status.states.iter().filter(|s| matches!(s, State::Cached)).count(),
        },
        "steps": steps,
        "lockfile_outdated": status.lock_drift,
        "lockfile_other_bits": status.lock_other_bits,
        "lockfile_unrecorded": status.lock_unrecorded,
        "selection": selection.map(|sel| json!({
            "flag": sel.flag,
            "runs": sel.steps.iter().map(|&i| plan.steps[i].id()).collect::<Vec<_>>(),
        })),
    })
}

fn colour(st: Option<&State>) -> &'static str {
    match st {
        Some(State::Cached) => "#c8e6c9",
        Some(State::Stale { .. }) => "#ffe0b2",
        Some(State::Unneeded { .. }) => "#eeeeee",
        None => "#ffffff",
    }
}

/// Text inside a DOT quoted string: names may hold `"` and `\\` (DOT's only escapes);
/// any other character goes through as it is (Rust's `{:?}` would write `\u{..}`
/// escapes, which DOT does not read).
fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn dot_str(s: &str) -> String {
    format!("\"{}\"", dot_escape(s))
}

pub fn dot(plan: &Plan, status: Option<&Status>) -> String {
    let mut out = format!(
        "digraph {} {{\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n",
        dot_str(&pipeline_name(plan))
    );
    for (i, s) in plan.steps.iter().enumerate() {
        let st = status.map(|st| &st.states[i]);
        // Lines of a label are separated by DOT's `\n`, added after escaping.
        let label = format!(
            "{}\\n{}\\n{}{}",
            dot_escape(&s.spec.kind),
            dot_escape(&s.spec.name),
            shown_key(s),
            st.map(|s| format!(" ({})", dot_escape(s.label())))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "  {} [label=\"{label}\", fillcolor=\"{}\"];",
            dot_str(&s.spec.id),
            colour(st)
        );
    }
    for s in &plan.steps {
        for i in &s.spec.inputs {
            let _ = writeln!(out, "  {} -> {};", dot_str(&i.id), dot_str(&s.spec.id));
        }
    }
    out.push_str("}\n");
    out
}

/// Text inside a Mermaid node label (`["..."]`, read as HTML): quotes and markup
/// characters as Mermaid's numeric entity codes, so a name is shown, never rendered.
fn mermaid_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '<' | '>' | '&' | '#' => out.push_str(&format!("#{};", c as u32)),
            c => out.push(c),
        }
    }
    out
}

pub fn mermaid(plan: &Plan, status: Option<&Status>) -> String {
    let mut out = String::from("flowchart LR\n");
    let node_id = |i: usize| format!("s{i}");
    for (i, s) in plan.steps.iter().enumerate() {
        let st = status.map(|st| st.states[i].label());
        let _ = writeln!(
            out,
            "  {}[\"{} {}<br/>{}{}\"]",
            node_id(i),
            s.spec.kind,
            mermaid_text(&s.spec.name),
            shown_key(s),
            st.map(|s| format!(" ({s})")).unwrap_or_default()
        );
    }
    for (i, s) in plan.steps.iter().enumerate() {
        for inp in &s.spec.inputs {
            if let Some(&j) = plan.index.get(&inp.id) {
                let _ = writeln!(out, "  {} --> {}", node_id(j), node_id(i));
            }
        }
    }
    if let Some(status) = status {
        out.push_str("  classDef cached fill:#c8e6c9\n  classDef stale fill:#ffe0b2\n  classDef unneeded fill:#eeeeee\n");
        for (i, st) in status.states.iter().enumerate() {
            let class = match st {
                State::Cached => "cached",
                State::Stale { .. } => "stale",
                State::Unneeded { .. } => "unneeded",
            };
            let _ = writeln!(out, "  class {} {class}", node_id(i));
        }
    }
    out
}

/// `goosepipe explain`: the key's ingredients, the inputs, and why the step is stale.
pub fn explain(plan: &Plan, status: &Status, i: usize) -> String {
    let s = &plan.steps[i];
    let st = &status.states[i];
    let mut out = String::new();
    let _ = writeln!(out, "step {}  ({} \"{}\")", s.spec.id, s.spec.kind, s.spec.name);
    if s.waits_for.is_empty() {
        let _ = writeln!(out, "key  {}", s.spec.key.hex());
    } else {
        let _ = writeln!(
            out,
            "key  pending: computed from the output of {}, which is not built yet (early cutoff)",
            s.waits_for.join(", ")
        );
    }
    let _ = writeln!(out, "state  {}", st.label());
    for r in st.reasons() {
        let _ = writeln!(out, "  - {}", r.describe());
    }
    if let Some(p) = status.previews.get(&i) {
        let _ = writeln!(out, "  - {p}");
    }
    let _ = writeln!(out, "\nkey ingredients ({}):", super::key::KEY_FORMAT);
    let _ = writeln!(
        out,
        "  kind     {} (implementation version {})",
        s.spec.kind, s.spec.version
    );
    let params = s.params();
    let _ = writeln!(out, "  params   {}", params.canonical());
    let mut flat = vec![];
    flatten_value("", &params, &mut flat);
    // Unkeyed props written otherwise than their default: the key holds the default,
    // the step runs with the settings' value.
    let mut runs_with = vec![];
    if let Some(settings) = Value::from_json(&s.spec.settings) {
        flatten_value("", &settings, &mut runs_with);
    }
    for (path, v) in flat {
        // file:line of a value's field (in an included file, that file).
        let at = |loc: &crate::manifest::Loc| {
            let f = plan.manifest.sources.get(loc.file);
            format!("{}:{}", f.display, f.line_col(loc.span.offset()).0)
        };
        let origin = match s.origins.get(&path) {
            Some((Origin::Explicit, Some(loc))) => format!("set at {}", at(loc)),
            Some((Origin::Explicit, None)) => "set in the manifest".into(),
            Some((Origin::Defaults, Some(loc))) => format!("from `defaults` at {}", at(loc)),
            Some((Origin::Defaults, None)) => "from `defaults`".into(),
            Some((Origin::Schema, _)) => "schema default".into(),
            None => "derived".into(),
        };
        let origin = match runs_with.iter().find(|(p, _)| *p == path) {
            Some((_, actual)) => {
                format!("not keyed (the key holds the default): runs with {actual}, {origin}")
            }
            None => origin,
        };
        let _ = writeln!(out, "    {path:28} = {v:<24} {origin}");
    }
    if !s.spec.externals.is_empty() {
        let _ = writeln!(out, "  externals");
        for e in &s.spec.externals {
            let _ = writeln!(out, "    {:28} {}", e.role(), e.identity());
        }
    }
    if !s.spec.inputs.is_empty() {
        let _ = writeln!(out, "  inputs");
        for inp in &s.spec.inputs {
            let state = plan
                .index
                .get(&inp.id)
                .map(|&j| status.states[j].label())
                .unwrap_or("?");
            // Under early cutoff a dataset enters by its output's content.
            let by = match &inp.digest {
                None => String::new(),
                Some(_) if inp.pending() => ", keyed by its output: not built yet".into(),
                Some(d) => format!(
                    ", keyed by its output: content {}",
                    crate::store::key::short_hex(d)
                ),
            };
            let key = match plan.get(&inp.id) {
                Some(p) => shown_key(p),
                None => inp.key.short(),
            };
            let _ = writeln!(out, "    {:28} {} {} ({state}{by})", inp.role, inp.id, key);
        }
    }
    let consumers = plan.consumers_of(i);
    if !consumers.is_empty() {
        let _ = writeln!(
            out,
            "\nread by: {}",
            consumers
                .iter()
                .map(|&c| plan.steps[c].id())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !s.spec.settings.as_object().is_none_or(|o| o.is_empty()) {
        let _ = writeln!(out, "settings (not in the key): {}", s.spec.settings);
    }
    out
}

fn flatten_value(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Map(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_value(&p, x, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}
