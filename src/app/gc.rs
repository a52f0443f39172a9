//! `goosepipe gc`: deletes what no given manifest (nor any other manifest that ran on
//! the store) reaches, and the leftovers of interrupted runs.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use miette::{Report, miette};

use crate::exec::Registry;
use crate::store::fsutil::human_size;
use crate::store::lockfile::{Lockfile, lock_path};
use crate::store::{HashCache, Store};

use super::{EXIT_BUSY, EXIT_OK, existing_store, likely_plan, load_plan_in, read_lock};

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
        // One that does not plan now (an edit left it broken): what it last built, as
        // its lockfile pins it, said; without a lockfile nothing says what it needs.
        let theirs = match reached_keys(&m, &lock, registry, &hashes, store) {
            Ok(keys) => keys,
            Err(e) if lock.steps.is_empty() => {
                return Err(miette!(
                    help = format!(
                        "fix it (`goosepipe check {}` shows where), give it to gc too, or pass --only-given to keep only what the given manifests reach",
                        crate::store::shell_word(&m)
                    ),
                    "{} ran on this store and does not plan now ({}), and no lockfile beside it pins what it built: gc cannot tell what it needs",
                    m.display(),
                    first_line(&e)
                ));
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "{} ran on this store and does not plan now ({}): keeping what its lockfile pins",
                    m.display(),
                    first_line(&e)
                );
                lock.steps.values().map(|l| l.key).collect()
            }
        };
        let kept = theirs
            .iter()
            .filter(|k| !reachable.contains(*k) && store.meta(k).is_some())
            .count();
        reachable.extend(theirs);
        if kept > 0 {
            let _ = writeln!(
                out,
                "keeping {kept} more artifact(s) that {} reaches, which nothing listed before it keeps (it also ran on this store; pass --only-given to collect them)",
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

/// A planning error's first line, to name it inside a sentence of gc's.
fn first_line(e: &Report) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_string()
}
