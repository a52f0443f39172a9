//! Garbage collection: delete what no given manifest reaches, and leftovers of
//! interrupted runs. Anything locked by a live run is left alone.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use super::fsutil::disk_size;
use super::{Key, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcReason {
    /// A published artifact no manifest reaches.
    Unreachable,
    /// Staging folder of a run that died before publishing.
    InterruptedStaging,
    /// Resumable scratch of a step no manifest reaches any more, or whose artifact is
    /// already published.
    OrphanWork,
    /// A corrupt artifact moved aside.
    Quarantined,
    /// Recipe or lock file of an unreachable key.
    Bookkeeping,
}

impl GcReason {
    pub fn label(&self) -> &'static str {
        match self {
            GcReason::Unreachable => "unreachable artifact",
            GcReason::InterruptedStaging => "leftover of an interrupted run",
            GcReason::OrphanWork => "checkpoints of an unreachable or finished step",
            GcReason::Quarantined => "corrupt artifact (quarantined)",
            GcReason::Bookkeeping => "recipe/lock of an unreachable step",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GcEntry {
    pub path: PathBuf,
    pub key: Option<Key>,
    pub size: u64,
    pub reason: GcReason,
}

impl GcEntry {
    fn new(path: PathBuf, key: Option<Key>, reason: GcReason) -> GcEntry {
        GcEntry {
            size: disk_size(&path),
            path,
            key,
            reason,
        }
    }
}

/// The partial writes anywhere below a work folder (checkpoints beside it, an eval's
/// saved parts below it).
fn partial_writes(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(partial_writes(&path));
        } else if super::fsutil::is_partial_write(&e.file_name().to_string_lossy()) {
            out.push(path);
        }
    }
    out
}

fn key_prefix(name: &str) -> Option<Key> {
    name.get(..64)?.parse().ok()
}

/// Whether a name in a store folder is one goosepipe writes there: gc never deletes
/// anything else (a file put there by hand is not a leftover of ours).
fn written_by_us(sub: &str, name: &str) -> bool {
    match sub {
        // Staging folders (KEY.pid.nanos), quarantined copies, a gc's renamed object.
        "tmp" => {
            key_prefix(name).is_some()
                || super::quarantined_key(name).is_some()
                || name
                    .strip_prefix("gc.")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        }
        // Name records: 32 hex digits of the id's hash (and their partial writes).
        "names" => {
            name.get(..32)
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                && (name.len() == 32 || super::fsutil::is_partial_write(name))
        }
        // work/KEY, recipes/KEY.json, locks/KEY.lock, and a write of one cut short
        // (`write_atomic`'s `.KEY.json.tmp-PID-N`).
        _ => {
            key_prefix(name).is_some()
                || (super::fsutil::is_partial_write(name)
                    && name.strip_prefix('.').and_then(key_prefix).is_some())
        }
    }
}

impl Store {
    /// Whether a run holds the lock of this key right now (its files are in use).
    fn held_by_live_run(&self, key: Option<Key>) -> bool {
        key.is_some_and(|k| matches!(self.try_lock(&k), Ok(None)))
    }

    /// What gc would delete, given the keys the manifests reach.
    pub fn gc_candidates(&self, reachable: &HashSet<Key>) -> Vec<GcEntry> {
        let mut out = vec![];
        for k in self.keys() {
            if !reachable.contains(&k) {
                out.push(GcEntry::new(self.object_dir(&k), Some(k), GcReason::Unreachable));
            }
        }
        let list = |sub: &str| -> Vec<(PathBuf, String)> {
            std::fs::read_dir(self.root.join(sub))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| (e.path(), e.file_name().to_string_lossy().to_string()))
                        .filter(|(_, name)| written_by_us(sub, name))
                        .collect()
                })
                .unwrap_or_default()
        };
        for (p, name) in list("tmp") {
            if name.starts_with("corrupt.") {
                let key = super::quarantined_key(&name);
                // A manifest still needs it and it is not rebuilt yet: the quarantined
                // copy is what tells the next run to rebuild it (even where nothing
                // downstream needs it now), as `verify` promised. Kept until then.
                let awaited = key.is_some_and(|k| reachable.contains(&k) && !self.object_dir(&k).exists());
                if !awaited {
                    out.push(GcEntry::new(p, key, GcReason::Quarantined));
                }
                continue;
            }
            let key = key_prefix(&name);
            // A staging folder whose key is locked belongs to a live run.
            if !self.held_by_live_run(key) {
                out.push(GcEntry::new(p, key, GcReason::InterruptedStaging));
            }
        }
        for (sub, reason) in [
            ("work", GcReason::OrphanWork),
            ("recipes", GcReason::Bookkeeping),
            ("locks", GcReason::Bookkeeping),
        ] {
            for (p, name) in list(sub) {
                let key = key_prefix(&name);
                // Work of a reachable key is kept so the step resumes from its checkpoint,
                // until the key is published (a kill between publishing and removing the
                // work folder leaves it behind).
                let published = sub == "work" && key.is_some_and(|k| self.object_dir(&k).exists());
                let kept = key.is_some_and(|k| reachable.contains(&k)) && !published;
                // Recipes are read only by runs that also hold the key's lock.
                let live = sub != "recipes" && self.held_by_live_run(key);
                if !kept && !live {
                    out.push(GcEntry::new(p, key, reason.clone()));
                } else if sub == "work" && kept && !live {
                    // Kept for its checkpoints; a partial write beside them (a kill or
                    // a full disk cut it short) is no progress, and a resume deletes
                    // it anyway: space gc can give back now.
                    for tmp in partial_writes(&p) {
                        out.push(GcEntry::new(tmp, key, GcReason::InterruptedStaging));
                    }
                }
            }
        }
        // Name records (id -> key) of keys no manifest reaches, and leftovers of an
        // interrupted write of one.
        for (p, name) in list("names") {
            // A partial write of a record goes whatever key it may hold (the record
            // beside it is the one read).
            if super::fsutil::is_partial_write(&name) {
                out.push(GcEntry::new(p, None, GcReason::InterruptedStaging));
                continue;
            }
            let key = super::read_name_record(&p).map(|(_, k, _)| k);
            if !key.is_some_and(|k| reachable.contains(&k)) {
                out.push(GcEntry::new(p, key, GcReason::Bookkeeping));
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Deletes the given entries; returns bytes freed. An object is first renamed out
    /// of `objects/` so a concurrent reader never sees it half-deleted.
    pub fn gc_delete(&self, entries: &[GcEntry]) -> std::io::Result<u64> {
        let mut freed = 0;
        for e in self.consumers_first(entries) {
            if e.reason == GcReason::Unreachable {
                let aside = self
                    .root
                    .join("tmp")
                    .join(format!("gc.{}", super::fsutil::nanos()));
                std::fs::rename(&e.path, &aside)?;
                std::fs::remove_dir_all(&aside)?;
                crate::faults::point("gc.deleted");
            } else if e.path.is_dir() {
                std::fs::remove_dir_all(&e.path)?;
            } else if e.path.exists() {
                std::fs::remove_file(&e.path)?;
            }
            freed += e.size;
        }
        Ok(freed)
    }

    /// The entries in the order gc deletes them: objects before the objects they read,
    /// so that a gc cut short (a kill, a full disk) never leaves a published artifact
    /// whose input is gone (a run then took the input for "not needed" and left it
    /// unbuilt); the rest after, as given.
    fn consumers_first<'e>(&self, entries: &'e [GcEntry]) -> Vec<&'e GcEntry> {
        let objects: HashMap<Key, &GcEntry> = entries
            .iter()
            .filter(|e| e.reason == GcReason::Unreachable)
            .filter_map(|e| Some((e.key?, e)))
            .collect();
        // Each object's inputs among the deleted, and how many deleted objects read each.
        let inputs: HashMap<Key, Vec<Key>> = objects
            .keys()
            .map(|k| {
                let read = self.meta(k).map_or_else(Vec::new, |m| {
                    m.spec
                        .inputs
                        .iter()
                        .map(|i| i.key)
                        .filter(|i| objects.contains_key(i) && i != k)
                        .collect()
                });
                (*k, read)
            })
            .collect();
        let mut readers: HashMap<Key, usize> = objects.keys().map(|k| (*k, 0)).collect();
        for read in inputs.values() {
            for i in read {
                *readers.get_mut(i).expect("an object") += 1;
            }
        }
        // Kahn's order, unread objects first (in the given order, for a stable run).
        let mut ready: Vec<Key> = entries
            .iter()
            .filter(|e| e.reason == GcReason::Unreachable)
            .filter_map(|e| e.key.filter(|k| readers[k] == 0))
            .collect();
        ready.reverse(); // popped from the end: the given order first
        let mut order: Vec<&GcEntry> = vec![];
        let mut done: HashSet<Key> = HashSet::new();
        while let Some(k) = ready.pop() {
            if !done.insert(k) {
                continue;
            }
            order.push(objects[&k]);
            for i in &inputs[&k] {
                let n = readers.get_mut(i).expect("an object");
                *n -= 1;
                if *n == 0 {
                    ready.push(*i);
                }
            }
        }
        // Keys are content addresses, so no cycle can hold an object back; whatever
        // did (a damaged meta.json naming itself) goes last rather than never.
        order.extend(
            entries
                .iter()
                .filter(|e| e.reason == GcReason::Unreachable)
                .filter(|e| e.key.is_none_or(|k| !done.contains(&k))),
        );
        order.extend(entries.iter().filter(|e| e.reason != GcReason::Unreachable));
        order
    }
}
