//! Staleness: for each step, is its artifact in the store, and if not, why not.
//!
//! The reason names the first differing ingredient of the key against the step's
//! previous key (from the lockfile), whose recipe the store keeps: which parameter
//! changed (old -> new), which input changed, or that the implementation version moved.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::Plan;
use crate::manifest::Value;
use crate::store::lockfile::{Lockfile, Reproduction};
use crate::store::{Key, Presence, StepSpec, Store};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Reason {
    /// Never built (no earlier key for this step in the lockfile or store).
    New,
    /// Same key as locked, built before, but the store does not have it.
    Missing,
    /// Started by an earlier run that was interrupted; its saved progress is kept, so
    /// it resumes.
    Interrupted,
    /// A run holds its key's lock right now: being built (with its saved progress).
    Building,
    /// The stored artifact failed its check.
    Corrupt {
        detail: String,
    },
    ParamsChanged {
        changes: Vec<ParamChange>,
    },
    InputChanged {
        inputs: Vec<String>,
    },
    InputsAdded {
        inputs: Vec<String>,
    },
    InputsRemoved {
        inputs: Vec<String>,
    },
    ExternalChanged {
        externals: Vec<String>,
        /// The files that changed within the folders among them, where both recipes
        /// list them (see `External::Path::files`).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        files: Vec<FileChange>,
    },
    VersionChanged {
        old: u32,
        new: u32,
    },
    /// The key changed but the old recipe is not in this store to compare with.
    KeyChanged {
        old: String,
    },
    /// Without the old recipe: these inputs have other keys than at the lockfile's
    /// run (the step's own settings cannot be compared).
    InputsMovedSinceLock {
        inputs: Vec<String>,
    },
    /// Not built, and neither was its key at the lockfile's run (a step after a
    /// failure, or one that run did not select).
    NeverBuilt,
    /// Another step that runs has the same key (all its ingredients are equal): the
    /// artifact is built once, by that step, and this one shares it.
    SameArtifact {
        with: String,
    },
    /// `early-cutoff` was turned on or off since the old key: the inputs that are
    /// datasets enter the key by their output (on) or by their key (off).
    CutoffChanged {
        on: bool,
    },
    /// Early cutoff: the key is computed from the output of these datasets, which are
    /// not built yet; the run builds them first, then keeps this step if they came
    /// out as before.
    AwaitsOutput {
        of: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamChange {
    pub param: String,
    pub old: Option<serde_json::Value>,
    pub new: Option<serde_json::Value>,
}

impl Reason {
    pub fn describe(&self) -> String {
        match self {
            Reason::New => "new".into(),
            Reason::Missing => "artifact missing from this store (the lockfile says it was built)".into(),
            Reason::Interrupted => "interrupted in an earlier run; resumes from its saved progress".into(),
            Reason::Building => "being built by a run right now (its key is locked)".into(),
            Reason::Corrupt { detail } => format!("artifact corrupt ({detail})"),
            Reason::ParamsChanged { changes } => format!(
                "parameters changed: {}",
                changes
                    .iter()
                    .map(ParamChange::describe)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            // A settings edit in `defaults` changes every expert: the pool and evals
            // after them name a few (`plan --json` lists all; each named input says
            // its own reason on its line).
            Reason::InputChanged { inputs } => {
                format!("input changed: {}", super::listing::first_few(inputs, 6))
            }
            Reason::InputsAdded { inputs } => format!("inputs added: {}", inputs.join(", ")),
            Reason::InputsRemoved { inputs } => format!("inputs removed: {}", inputs.join(", ")),
            Reason::ExternalChanged { externals, files } => {
                let named: Vec<String> = externals
                    .iter()
                    .map(|e| {
                        let within: Vec<String> = files
                            .iter()
                            .filter(|f| &f.external == e)
                            .map(|f| format!("{} {}", f.file, f.change.word()))
                            .collect();
                        if within.is_empty() {
                            e.clone()
                        } else {
                            format!("{e} ({})", super::listing::first_few(&within, 4))
                        }
                    })
                    .collect();
                format!("external input changed: {}", named.join(", "))
            }
            Reason::VersionChanged { old, new } => {
                format!("implementation version changed: {old} -> {new}")
            }
            Reason::KeyChanged { old } => {
                format!("key changed (was {old}; its recipe is not in this store)")
            }
            Reason::InputsMovedSinceLock { inputs } => format!(
                "input changed since the lockfile's run: {} (its old recipe is not in this store, so its own settings are not compared)",
                inputs.join(", ")
            ),
            Reason::NeverBuilt => "not built yet (nor was it at the lockfile's run)".into(),
            Reason::SameArtifact { with } => {
                format!("same key as {with}, which builds the artifact for both")
            }
            Reason::CutoffChanged { on: true } => {
                "early-cutoff was turned on: the datasets it reads now enter its key by their output".into()
            }
            Reason::CutoffChanged { on: false } => {
                "early-cutoff was turned off: the datasets it reads now enter its key by their key".into()
            }
            Reason::AwaitsOutput { of } => {
                // An eval over a large pool waits for dozens: the first few name them
                // (`plan --json` lists all under `waits_for`).
                let named = super::listing::first_few(of, 3);
                format!(
                    "its key is computed from the output of {named}, not built yet (early cutoff): the run builds {} first, then this step only if its key is not in the store",
                    if of.len() == 1 { "that" } else { "those" },
                )
            }
        }
    }
}

impl ParamChange {
    /// `train.lr 0.005 -> 0.001`; a whole group that came or went (a task added to or
    /// removed from an eval) by its name alone, not leaf by leaf with defaults the user
    /// never wrote; a list by the items that came and went.
    pub fn describe(&self) -> String {
        use serde_json::Value as J;
        match (&self.old, &self.new) {
            (Some(J::Object(_)), None) => format!("{} removed", self.param),
            (None, Some(J::Object(_))) => format!("{} added", self.param),
            (Some(J::Array(a)), Some(J::Array(b))) => {
                let items = |of: &[J], not_in: &[J]| {
                    of.iter()
                        .filter(|x| !not_in.contains(x))
                        .map(|x| show(&Some(x.clone())))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let (added, removed) = (items(b, a), items(a, b));
                match (added.is_empty(), removed.is_empty()) {
                    (true, true) => format!(
                        "{} reordered: {} -> {}",
                        self.param,
                        show(&self.old),
                        show(&self.new)
                    ),
                    (false, true) => format!("{} added {added}", self.param),
                    (true, false) => format!("{} removed {removed}", self.param),
                    (false, false) => format!("{} added {added}, removed {removed}", self.param),
                }
            }
            _ => format!("{} {} -> {}", self.param, show(&self.old), show(&self.new)),
        }
    }
}

fn show(v: &Option<serde_json::Value>) -> String {
    match v {
        None => "(unset)".into(),
        Some(j) => Value::from_json(j)
            .map(|v| v.to_string())
            .unwrap_or_else(|| j.to_string()),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum State {
    Cached,
    Stale {
        reasons: Vec<Reason>,
    },
    /// Stale, but nothing needs it: every consumer is cached (e.g. an intermediate
    /// artifact was garbage-collected after its consumers were built).
    Unneeded {
        reasons: Vec<Reason>,
    },
}

impl State {
    pub fn will_run(&self) -> bool {
        matches!(self, State::Stale { .. })
    }
    pub fn label(&self) -> &'static str {
        match self {
            State::Cached => "cached",
            State::Stale { .. } => "stale",
            State::Unneeded { .. } => "not needed",
        }
    }
    pub fn reasons(&self) -> &[Reason] {
        match self {
            State::Cached => &[],
            State::Stale { reasons } | State::Unneeded { reasons } => reasons,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Status {
    pub states: Vec<State>,
    /// By step index, what running a stale step would do, as its runner tells from
    /// its published inputs (filled by the exec layer's `previews`; empty otherwise).
    pub previews: BTreeMap<usize, Preview>,
    /// Cached steps that the lockfile pins otherwise (another key or digest, or not at
    /// all), and steps it pins that the manifest no longer has: it was written by a
    /// run of another version of the manifest, and the next `run` rewrites it (`run
    /// --locked` refuses).
    pub lock_drift: Vec<String>,
    /// Cached steps whose artifacts have other digests than the lockfile pins under
    /// the same keys, from other numerics and with the pinned tables where it pins
    /// some: what `run --locked` accepts (the last bits of another machine), and a
    /// plain `run` re-pins.
    pub lock_other_bits: Vec<String>,
    /// Cached steps pinned with their artifacts' digests, but without the numerics
    /// or results tables those record (see `LockedStep::records_less_than`): the pins
    /// hold, and a plain `run` records the rest.
    pub lock_unrecorded: Vec<String>,
}

impl Status {
    pub fn stale_count(&self) -> usize {
        self.states.iter().filter(|s| s.will_run()).count()
    }
    /// Steps that run but build nothing of their own: twins of an earlier step that
    /// runs ([`Reason::SameArtifact`]).
    pub fn shared_count(&self) -> usize {
        self.states
            .iter()
            .filter(|s| {
                s.will_run()
                    && s.reasons()
                        .iter()
                        .any(|r| matches!(r, Reason::SameArtifact { .. }))
            })
            .count()
    }
    pub fn stale_ids<'a>(&self, plan: &'a Plan) -> BTreeSet<&'a str> {
        self.states
            .iter()
            .enumerate()
            .filter(|(_, s)| s.will_run())
            .map(|(i, _)| plan.steps[i].id())
            .collect()
    }
}

/// Judges every step of the plan against the store and the lockfile (metadata and
/// file sizes; see [`status_verified`] for re-hashing).
pub fn status(plan: &Plan, store: &Store, lock: &Lockfile) -> Status {
    status_with(plan, store, lock, false)
}

/// [`status`], with every present artifact re-hashed against its recorded digests
/// first (`plan --verify`, `run --verify`): a mismatch is quarantined and its step is
/// stale with the reason.
pub fn status_verified(plan: &Plan, store: &Store, lock: &Lockfile) -> Status {
    status_with(plan, store, lock, true)
}

fn status_with(plan: &Plan, store: &Store, lock: &Lockfile, verify: bool) -> Status {
    use rayon::prelude::*;
    // One stat (and for missing steps a lockfile lookup) per step, independent of each
    // other: in parallel, which matters for plans of tens of thousands of steps.
    type Outcome = (bool, Vec<Reason>);
    // Per step in the store: its artifact as the lockfile pins it.
    type Pinned = Option<crate::store::lockfile::LockedStep>;
    let (outcomes, digests): (Vec<Outcome>, Vec<Pinned>) = plan
        .steps
        .par_iter()
        .map(|step| {
            // A provisional key is never in a store: nothing to look up.
            if !step.waits_for.is_empty() {
                let why = vec![Reason::AwaitsOutput {
                    of: step.waits_for.clone(),
                }];
                return ((false, why), None);
            }
            let presence = store.presence(&step.spec.key);
            let digest = match &presence {
                Presence::Present(m) => Some(step.pinned_as(m)),
                _ => None,
            };
            (presence_outcome(step, presence, store, lock, verify), digest)
        })
        .unzip();
    let (built, mut reasons): (Vec<bool>, Vec<Vec<Reason>>) = outcomes.into_iter().unzip();
    // Cached steps the lockfile pins otherwise (another key, another digest, or not
    // at all): a run of another version of the manifest wrote it. Another digest
    // under the pinned key from other numerics, with the pinned tables, is apart:
    // `run --locked` accepts it.
    let mut lock_other_bits = vec![];
    let mut lock_unrecorded = vec![];
    let lock_drift = plan
        .steps
        .iter()
        .zip(&digests)
        .zip(&built)
        .filter(|((s, d), built)| {
            **built
                && match lock.steps.get(&s.spec.id) {
                    None => true,
                    Some(l) if l.key != s.spec.key => true,
                    Some(l) => {
                        let Some(d) = d else { return false };
                        match l.reproduced_by(d) {
                            Reproduction::Same => {
                                if l.records_less_than(d) {
                                    lock_unrecorded.push(s.spec.id.clone());
                                }
                                false
                            }
                            r if r.refused() => true,
                            _ => {
                                lock_other_bits.push(s.spec.id.clone());
                                false
                            }
                        }
                    }
                }
        })
        .map(|((s, _), _)| s.spec.id.clone())
        // And steps the lockfile pins that the manifest no longer has.
        .chain(lock.steps.keys().filter(|id| plan.get(id).is_none()).cloned())
        .collect();
    let n = plan.steps.len();
    // What has to run: missing artifacts that are wanted. Sinks are wanted; a missing
    // input of a step that runs is wanted.
    let mut needed = vec![false; n];
    for i in (0..n).rev() {
        if built[i] {
            continue;
        }
        let consumers = plan.consumers_of(i);
        // A corrupt artifact is always rebuilt: it must never be consumed later.
        let corrupt = reasons[i].iter().any(|r| matches!(r, Reason::Corrupt { .. }));
        if corrupt || consumers.is_empty() || consumers.iter().any(|&c| needed[c]) {
            needed[i] = true;
        }
    }
    // A step that runs with the key of an earlier step that runs builds nothing of its
    // own: say so first.
    for (i, first) in plan.twins((0..n).filter(|&i| !built[i] && needed[i])).iter() {
        reasons[i].insert(
            0,
            Reason::SameArtifact {
                with: plan.steps[first].id().to_string(),
            },
        );
    }
    let states = (0..n)
        .map(|i| {
            if built[i] {
                State::Cached
            } else if needed[i] {
                State::Stale {
                    reasons: std::mem::take(&mut reasons[i]),
                }
            } else {
                State::Unneeded {
                    reasons: std::mem::take(&mut reasons[i]),
                }
            }
        })
        .collect();
    Status {
        states,
        previews: BTreeMap::new(),
        lock_drift,
        lock_other_bits,
        lock_unrecorded,
    }
}

/// Whether a step's artifact is there to use, and if not, why.
fn presence_outcome(
    step: &crate::plan::Step,
    presence: Presence,
    store: &Store,
    lock: &Lockfile,
    verify: bool,
) -> (bool, Vec<Reason>) {
    match presence {
        Presence::Present(_) if verify => match crate::plan::integrity::verify(store, &step.spec.key) {
            Ok(_) => (true, vec![]),
            Err(crate::store::StoreError::Corrupt { .. }) => {
                match crate::plan::integrity::quarantine_if_corrupt(store, &step.spec.key) {
                    Ok(Some(detail)) => (false, vec![Reason::Corrupt { detail }]),
                    // Fine on a second read, or being rebuilt by a run right now.
                    Ok(None) => (true, vec![]),
                    Err(e) => (
                        false,
                        vec![Reason::Corrupt {
                            detail: e.to_string(),
                        }],
                    ),
                }
            }
            // Unreadable by this user (permissions) is not corrupt: nothing to move or
            // rebuild (a rebuild found the intact artifact and was said to be another
            // run's). `verify` says it; a run that reads it stops, naming the file.
            Err(e) if e.is_permission_denied() => (true, vec![]),
            Err(e) => (
                false,
                vec![Reason::Corrupt {
                    detail: e.to_string(),
                }],
            ),
        },
        Presence::Present(_) => (true, vec![]),
        // This user may not read it: not damage (a run that reads it says so).
        Presence::Corrupt(_) if store.denied(&step.spec.key).is_some() => (true, vec![]),
        Presence::Corrupt(detail) => (false, vec![Reason::Corrupt { detail }]),
        Presence::Missing if store.was_quarantined(&step.spec.key) => (
            false,
            vec![Reason::Corrupt {
                detail: "found corrupt and moved aside".into(),
            }],
        ),
        Presence::Missing => (false, why_missing(&step.spec, store, lock)),
    }
}

/// Whether an earlier attempt left saved progress (checkpoints) for this step: a
/// file that is no partial write (`*.tmp`, which a write cut short by a kill or a
/// full disk leaves, and a resume discards).
fn has_progress(store: &Store, spec: &StepSpec) -> bool {
    std::fs::read_dir(store.work_dir(&spec.key)).is_ok_and(|d| {
        d.flatten()
            .any(|e| !crate::store::fsutil::is_partial_write(&e.file_name().to_string_lossy()))
    })
}

fn why_missing(spec: &StepSpec, store: &Store, lock: &Lockfile) -> Vec<Reason> {
    let mut reasons = why_not_built(spec, store, lock);
    // Saved progress says more than the lockfile: this store's run of the step was
    // interrupted (the lockfile may come from a run on another store, or pin the key
    // the step had before an edit), or, when a run holds its key locked, is being
    // built now (the lock is asked only where there is progress: a syscall each).
    let progress = has_progress(store, spec).then(|| {
        if crate::store::KeyLock::is_held(&store.lock_path(&spec.key)).unwrap_or(false) {
            Reason::Building
        } else {
            Reason::Interrupted
        }
    });
    if let Some(r) = progress {
        match reasons.as_slice() {
            [Reason::New | Reason::Missing | Reason::NeverBuilt] => reasons = vec![r],
            _ => reasons.push(r),
        }
    }
    reasons
}

/// Why a step's artifact is not in the store, from the lockfile and the old recipe.
fn why_not_built(spec: &StepSpec, store: &Store, lock: &Lockfile) -> Vec<Reason> {
    let Some(locked) = lock.steps.get(&spec.id) else {
        return vec![Reason::New];
    };
    if locked.key == spec.key {
        return vec![if locked.digest.is_some() {
            Reason::Missing
        } else {
            Reason::NeverBuilt
        }];
    }
    // A recipe of another kind (a pin edited by hand to another step's key) is no
    // earlier version of this step: its diff would list every ingredient as changed.
    let old = store
        .recipe(&locked.key)
        .or_else(|| store.meta(&locked.key).map(|m| m.spec))
        .filter(|old| old.kind == spec.kind);
    match old {
        Some(old) => diff(&old, spec),
        // Without the old recipe, the lockfile still says which inputs moved.
        None => {
            let moved: Vec<String> = spec
                .inputs
                .iter()
                .filter(|i| lock.steps.get(&i.id).is_some_and(|l| l.key != i.key))
                .map(|i| i.id.clone())
                .collect();
            if !moved.is_empty() {
                vec![Reason::InputsMovedSinceLock { inputs: moved }]
            } else if locked.digest.is_none() {
                // Its last key was never built either: nothing to compare with.
                vec![Reason::NeverBuilt]
            } else {
                vec![Reason::KeyChanged {
                    old: locked.key.short(),
                }]
            }
        }
    }
}

/// The ingredients that differ between an old and a new spec of the same step.
pub fn diff(old: &StepSpec, new: &StepSpec) -> Vec<Reason> {
    let mut out = vec![];
    if old.version != new.version {
        out.push(Reason::VersionChanged {
            old: old.version,
            new: new.version,
        });
    }
    let mut changes = vec![];
    param_changes("", Some(&old.params), Some(&new.params), &mut changes);
    if !changes.is_empty() {
        out.push(Reason::ParamsChanged { changes });
    }
    // Inputs compare by what entered the key: the key, or under early cutoff a
    // dataset's content.
    let old_in: BTreeMap<&str, Key> = old
        .inputs
        .iter()
        .map(|i| (i.role.as_str(), i.identity()))
        .collect();
    let new_in: BTreeMap<&str, (Key, &str)> = new
        .inputs
        .iter()
        .map(|i| (i.role.as_str(), (i.identity(), i.id.as_str())))
        .collect();
    // An input keyed the other way (early cutoff turned on or off) changed in how,
    // not necessarily in what: said as such, not as a changed input.
    let by_content = |spec: &StepSpec, role: &str| spec.input(role).map(|i| i.digest.is_some());
    let rekeyed: Vec<bool> = new
        .inputs
        .iter()
        .filter_map(|i| {
            let (was, is) = (by_content(old, &i.role)?, i.digest.is_some());
            (was != is).then_some(is)
        })
        .collect();
    if let Some(&on) = rekeyed.first() {
        out.push(Reason::CutoffChanged { on });
    }
    let mut changed: Vec<String> = new_in
        .iter()
        .filter(|(r, (k, _))| {
            old_in.get(*r).is_some_and(|ok| ok != k) && by_content(old, r) == by_content(new, r)
        })
        .map(|(_, (_, id))| id.to_string())
        .collect();
    // One step read in two roles (a dataset as two tasks) is named once.
    let mut seen = BTreeSet::new();
    changed.retain(|id| seen.insert(id.clone()));
    // A step read in a role on both sides (two tasks on one dataset, one added or
    // removed) is named with the role that came or went: its id alone would say it
    // came or went itself.
    let named = |id: &str, role: &str, on_other_side: &[crate::store::spec::SpecInput]| {
        if on_other_side.iter().any(|o| o.id == id) {
            format!("{id} as {role}")
        } else {
            id.to_string()
        }
    };
    let added: Vec<String> = new_in
        .iter()
        .filter(|(r, _)| !old_in.contains_key(*r))
        .map(|(r, (_, id))| named(id, r, &old.inputs))
        .collect();
    let removed: Vec<String> = old
        .inputs
        .iter()
        .filter(|i| !new_in.contains_key(i.role.as_str()))
        .map(|i| named(&i.id, &i.role, &new.inputs))
        .collect();
    if !added.is_empty() {
        out.push(Reason::InputsAdded { inputs: added });
    }
    if !removed.is_empty() {
        out.push(Reason::InputsRemoved { inputs: removed });
    }
    if !changed.is_empty() {
        out.push(Reason::InputChanged { inputs: changed });
    }
    let moved: Vec<&crate::store::spec::External> = new
        .externals
        .iter()
        .filter(|e| {
            !old.externals
                .iter()
                .any(|o| o.role() == e.role() && o.identity() == e.identity())
        })
        .collect();
    if !moved.is_empty() {
        let files = moved
            .iter()
            .filter_map(|e| {
                let was = old.externals.iter().find(|o| o.role() == e.role())?;
                Some(folder_changes(was, e))
            })
            .flatten()
            .collect();
        out.push(Reason::ExternalChanged {
            externals: moved.iter().map(|e| e.lock_name()).collect(),
            files,
        });
    }
    if out.is_empty() {
        out.push(Reason::KeyChanged { old: old.key.short() });
    }
    out
}

/// One file of a folder input that changed between two recipes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileChange {
    /// The folder, as the lockfile names it (`path:models/t5`).
    pub external: String,
    /// The file, relative to the folder.
    pub file: String,
    pub change: Change,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Changed,
    Added,
    Removed,
}

impl Change {
    fn word(self) -> &'static str {
        match self {
            Change::Changed => "changed",
            Change::Added => "added",
            Change::Removed => "removed",
        }
    }
}

/// The files that differ between the same folder input of two recipes, when both list
/// their files (a recipe from before the listing, or of a file or a very large folder,
/// does not: then the folder alone is named, as it is when the setting now names
/// another folder).
fn folder_changes(old: &crate::store::spec::External, new: &crate::store::spec::External) -> Vec<FileChange> {
    use crate::store::spec::External::Path;
    // The same folder on both sides: another one in its place is named as the
    // external that changed, not as edits to its files.
    let (
        Path {
            files: Some(was),
            path: was_at,
            ..
        },
        Path {
            files: Some(is),
            path: is_at,
            ..
        },
    ) = (old, new)
    else {
        return vec![];
    };
    if was_at != is_at {
        return vec![];
    }
    let external = new.lock_name();
    let names: BTreeSet<&String> = was.keys().chain(is.keys()).collect();
    names
        .into_iter()
        .filter_map(|f| {
            let change = match (was.get(f), is.get(f)) {
                (Some(a), Some(b)) if a != b => Change::Changed,
                (None, Some(_)) => Change::Added,
                (Some(_), None) => Change::Removed,
                _ => return None,
            };
            Some(FileChange {
                external: external.clone(),
                file: f.clone(),
                change,
            })
        })
        .collect()
}

/// The parameters that differ, by dotted path (`{"train":{"lr":0.005}}` ->
/// `train.lr`), in path order. Groups present on both sides are compared member by
/// member; a group present on one side only is one change; lists stay whole.
fn param_changes(
    prefix: &str,
    old: Option<&serde_json::Value>,
    new: Option<&serde_json::Value>,
    out: &mut Vec<ParamChange>,
) {
    use serde_json::Value as J;
    if let (Some(J::Object(a)), Some(J::Object(b))) = (old, new) {
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            param_changes(&path, a.get(k), b.get(k), out);
        }
    } else if old != new {
        out.push(ParamChange {
            param: prefix.to_string(),
            old: old.cloned(),
            new: new.cloned(),
        });
    }
}

/// What running a stale step would do, as `plan` shows it beside the step: a line of
/// text, and the counts behind it for scripts (`plan --json`'s `preview_counts`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Preview {
    pub text: String,
    /// An eval's (method, task) results: `results`, `to_score`, `reused`, `shared`,
    /// `resumed`, `planned`; a training step's saved state: `saved_step`, `steps`.
    /// Empty where the text tells of no count.
    pub counts: BTreeMap<&'static str, u64>,
    /// A run would refuse the step at once (data an earlier run built that it cannot
    /// use): `plan` exits 1, as the run would.
    pub refused: bool,
}

impl From<String> for Preview {
    fn from(text: String) -> Preview {
        Preview {
            text,
            counts: BTreeMap::new(),
            refused: false,
        }
    }
}

impl std::fmt::Display for Preview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}
