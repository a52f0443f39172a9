//! `goosepipe show`, and the lookup of an artifact by step id, name or key that
//! `show` and `export` share.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use miette::{Report, miette};

use crate::exec::Registry;
use crate::store::Store;
use crate::store::fsutil::human_size;

use super::{EXIT_ERROR, EXIT_OK, existing_store, plan_in_store_quietly, run_command};

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
pub(super) fn last_run_note(
    store: &Store,
    what: &str,
    meta: &crate::store::artifact::ArtifactMeta,
) -> Option<String> {
    if store.named(what) != Some(meta.key) {
        return None;
    }
    let others = store.others_of(&meta.spec.id, &meta.key);
    let last_run = match store.named_by(what) {
        Some(m) => format!("the last run, of {},", m.display()),
        None => "the last run".into(),
    };
    (others > 0).then(|| {
        format!(
            "{others} other artifact(s) of {} are in the store (earlier settings, or another manifest's step of that id; until gc); this is the one {last_run} built or found (--manifest FILE takes what a manifest has now)",
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
