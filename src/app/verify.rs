//! `goosepipe verify`: re-hashes artifacts against their recorded digests and moves
//! corrupt ones aside.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use miette::{Report, miette};

use crate::exec::Registry;
use crate::store::fsutil::human_size;

use super::{EXIT_ERROR, EXIT_OK, existing_store, load_plan_in, read_lock, run_command};

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
