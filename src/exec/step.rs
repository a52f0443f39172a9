//! The one trait through which the engine runs a step, and what a step gets to see.
//!
//! The engine knows nothing about models or data: a step kind is a [`StepRunner`]
//! that reads its declared inputs and parameters from a [`StepContext`] and writes its
//! output files into `ctx.out`. Everything it reads must be a declared input or a
//! parameter (that is what makes the content key honest).

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::plan::{LocalPaths, MethodInfo, Needed, Review};
use crate::store::{ArtifactMeta, Key, StepSpec, Store};

use super::kind::Kind;

use super::progress::StepProgress;

pub trait StepRunner: Send + Sync {
    /// The step kind this runner implements ("expert", "gate", ...); its version,
    /// order and resources are its [`Kind`] declaration's.
    fn kind(&self) -> &'static str;
    fn run(&self, ctx: &StepContext) -> Result<(), StepError>;
    /// Whether [`StepRunner::preview`] may have something to say of a stale step
    /// (`interrupted`: an earlier run left its work folder); the engine reads the
    /// step's inputs' metadata for a preview only then.
    fn previews(&self, _interrupted: bool) -> bool {
        false
    }
    /// What a run would do, told from the published inputs without computing it
    /// (`plan` shows it beside the stale step), or None. It must only read: `ctx.out`
    /// does not exist, and nothing may be written to `ctx.work`.
    fn preview(&self, _ctx: &StepContext) -> Result<Option<crate::plan::status::Preview>, StepError> {
        Ok(None)
    }
    /// A check of one input (`role`, its published files in `files`) as soon as that
    /// input is built, before this step can start: a mistake in the data that this
    /// step would find is said then, not after every other step before it has run
    /// (an eval comes after hours of training). Only reads.
    fn check_input(&self, _spec: &StepSpec, _role: &str, _files: &std::path::Path) -> Result<(), StepError> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{0}")]
    Failed(String),
    #[error("cancelled")]
    Cancelled,
}

impl StepError {
    pub fn msg(m: impl Into<String>) -> StepError {
        StepError::Failed(m.into())
    }
}

/// A step's failure message, with what to do when the cause is a full file system
/// (or quota): the OS says only "No space left on device".
pub fn with_full_disk_hint(msg: String) -> String {
    if msg.contains("(os error 28)") || msg.contains("(os error 122)") {
        format!(
            "{msg}\n  a file system is full (the path above says which): free space there (in the store, `goosepipe gc MANIFEST...` deletes what no manifest reaches), then run the same command again; what finished is kept"
        )
    } else {
        msg
    }
}

impl From<std::io::Error> for StepError {
    fn from(e: std::io::Error) -> Self {
        StepError::Failed(format!("I/O error: {e}"))
    }
}

/// Work that the previews of one plan have counted so far, by names of the runners'
/// own (an eval's part keys): a step later in the plan that needs the same work finds
/// it done by the time it runs (reused, or shared as it goes), so it does not count it
/// as its own.
#[derive(Default)]
pub struct PlannedWork {
    counted: Mutex<HashSet<String>>,
    /// What the previews read from the store once for all of them (the store does not
    /// change while a plan is made), by names of the runners' own.
    read: Mutex<HashMap<&'static str, Arc<dyn Any + Send + Sync>>>,
}

impl PlannedWork {
    /// Whether `item` is counted here for the first time (and now is).
    pub fn first(&self, item: &str) -> bool {
        self.counted
            .lock()
            .map(|mut s| s.insert(item.to_string()))
            .unwrap_or(true)
    }

    /// What `read` returns, read by the first preview that asks for `name` and shared
    /// with the later ones (each stale eval read the store's published parts anew).
    pub fn read_once<T: Any + Send + Sync>(&self, name: &'static str, read: impl FnOnce() -> T) -> Arc<T> {
        let Ok(mut cache) = self.read.lock() else {
            return Arc::new(read());
        };
        if let Some(done) = cache.get(name).and_then(|v| v.clone().downcast::<T>().ok()) {
            return done;
        }
        let value = Arc::new(read());
        cache.insert(name, value.clone());
        value
    }
}

/// A shared flag set by Ctrl-C; long steps poll it between units of work.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> CancelFlag {
        CancelFlag::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// `Err(Cancelled)` once cancellation was asked for: `ctx.cancel.check()?`.
    pub fn check(&self) -> Result<(), StepError> {
        if self.is_cancelled() {
            Err(StepError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// A published input of the running step.
#[derive(Debug, Clone)]
pub struct InputArtifact {
    pub role: String,
    pub id: String,
    pub key: Key,
    /// The artifact's payload folder (read-only).
    pub files: PathBuf,
    pub meta: ArtifactMeta,
}

pub struct StepContext<'a> {
    pub spec: &'a StepSpec,
    pub inputs: Vec<InputArtifact>,
    /// Write the step's output files here; they are published atomically on success.
    pub out: PathBuf,
    /// Scratch that survives an interrupted run of the same key (checkpoints).
    pub work: PathBuf,
    pub store: &'a Store,
    pub progress: &'a dyn StepProgress,
    pub cancel: &'a CancelFlag,
    /// Compute device requested by the user ("cpu", "cuda", "cuda:1").
    pub device: &'a str,
    /// External resolutions the lockfile pins (lock name -> resolved identity).
    pub locked: &'a BTreeMap<String, String>,
    pub(crate) pins: Mutex<BTreeMap<String, String>>,
    pub(crate) strict: bool,
    /// In a preview: the work earlier steps of the plan have counted (None in a run).
    pub planned: Option<&'a PlannedWork>,
    /// The numerics label its artifact will record (`process::numerics::combined`):
    /// what it reuses of another artifact must have been computed alike.
    pub numerics: String,
}

impl StepContext<'_> {
    pub fn input(&self, role: &str) -> Result<&InputArtifact, StepError> {
        self.inputs
            .iter()
            .find(|i| i.role == role)
            .ok_or_else(|| self.no_input(role))
    }

    /// The key of input `role`, published or not: from the recipe (a preview runs
    /// while some inputs are still to be built).
    pub fn input_key(&self, role: &str) -> Result<Key, StepError> {
        // What entered this step's key: under early cutoff a dataset's content, so
        // an eval part keyed on it survives a dataset rebuilt with the same output.
        self.spec
            .input(role)
            .map(|i| i.identity())
            .ok_or_else(|| self.no_input(role))
    }

    fn no_input(&self, role: &str) -> StepError {
        StepError::msg(format!(
            "step {} has no input `{role}` (a bug in the plan)",
            self.spec.id
        ))
    }

    /// The members of `kind` with their keys, published or not (from the recipe).
    pub fn member_keys<'s>(&'s self, kind: &'s str) -> impl Iterator<Item = (&'s str, Key)> + 's {
        self.spec
            .inputs
            .iter()
            .filter_map(move |i| Some((crate::store::spec::member_of(&i.role, kind)?, i.key)))
    }

    /// Inputs whose role starts with `prefix` (e.g. every `expert:` of a pool).
    /// The inputs that stand for members of `kind` (roles `KIND:NAME`), with the names.
    pub fn members<'s>(&'s self, kind: &'s str) -> impl Iterator<Item = (&'s str, &'s InputArtifact)> + 's {
        self.inputs
            .iter()
            .filter_map(move |i| Some((crate::store::spec::member_of(&i.role, kind)?, i)))
    }

    /// The input of member `name` of `kind` (role `KIND:NAME`).
    pub fn member(&self, kind: &str, name: &str) -> Result<&InputArtifact, StepError> {
        self.input(&crate::store::spec::member_role(kind, name))
    }

    /// The step's parameters as its kind's parameter struct. The manifest schema
    /// fills in every default before a key is computed, so the struct needs none of
    /// its own; a recipe that does not fit (written by another build) is an error
    /// naming the field.
    /// The step's parameters, with the values of unkeyed props (whose default the key
    /// took: the schema's `keyed=#false`) laid over them from its settings.
    pub fn params<T: serde::de::DeserializeOwned>(&self) -> Result<T, StepError> {
        let mut params = std::borrow::Cow::Borrowed(&self.spec.params);
        if self.spec.settings.as_object().is_some_and(|s| !s.is_empty()) {
            overlay_settings(params.to_mut(), &self.spec.settings);
        }
        T::deserialize(params.as_ref()).map_err(|e| {
            StepError::msg(format!(
                "{}: its parameters do not fit a `{}` step: {e}",
                self.spec.id, self.spec.kind
            ))
        })
    }

    pub fn param(&self, path: &str) -> Option<&serde_json::Value> {
        let mut v = &self.spec.params;
        for part in path.split('.') {
            v = v.get(part)?;
        }
        Some(v)
    }

    /// The resolution the lockfile pins for an external, if any: a step resolving a
    /// hub revision must use it, so reruns are reproducible.
    pub fn locked_pin(&self, name: &str) -> Option<&str> {
        self.locked.get(name).map(String::as_str)
    }

    /// Records what an external resolved to (written to the lockfile after the run).
    /// Under `run --locked`, a resolution that differs from the lockfile is an error.
    pub fn pin(&self, name: &str, resolved: &str) -> Result<(), StepError> {
        if self.strict {
            match self.locked.get(name) {
                Some(l) if l == resolved => {}
                Some(l) => {
                    return Err(StepError::msg(format!(
                        "--locked: {name} now resolves to {resolved}, the lockfile pins {l}"
                    )));
                }
                None => {
                    return Err(StepError::msg(format!(
                        "--locked: the lockfile has no resolution for {name} (run without --locked to record it)"
                    )));
                }
            }
        }
        self.pins
            .lock()
            .map_err(|_| StepError::msg("pin table poisoned"))?
            .insert(name.to_string(), resolved.to_string());
        Ok(())
    }

    pub(crate) fn take_pins(&self) -> BTreeMap<String, String> {
        self.pins.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// Step kinds by name: what each is ([`Kind`], which plans need) and, for the
/// kinds this build runs, its runner; and the evaluation methods.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: HashMap<&'static str, Kind>,
    runners: HashMap<&'static str, Arc<dyn StepRunner>>,
    methods: Vec<MethodInfo>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }
    /// Declares a kind: it can be planned (keys need its version); running one of its
    /// steps needs a runner too, or fails with a clear message.
    pub fn declare(&mut self, kind: Kind) {
        self.kinds.insert(kind.name, kind);
    }
    pub fn register(&mut self, r: Arc<dyn StepRunner>) {
        self.runners.insert(r.kind(), r);
    }
    pub fn with(mut self, r: impl StepRunner + 'static) -> Registry {
        self.register(Arc::new(r));
        self
    }
    /// The evaluation methods manifests may list.
    pub fn set_methods(&mut self, methods: Vec<MethodInfo>) {
        self.methods = methods;
    }
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn StepRunner>> {
        self.runners.get(kind)
    }
    pub fn kind(&self, kind: &str) -> Option<&Kind> {
        self.kinds.get(kind)
    }
}

impl crate::plan::Catalog for Registry {
    fn version(&self, kind: &str) -> Option<u32> {
        self.kinds.get(kind).map(|k| k.version)
    }
    fn order(&self, kind: &str) -> Option<u32> {
        self.kinds.get(kind).map(|k| k.order)
    }
    fn needed(&self, kind: &str) -> Option<Needed> {
        self.kinds.get(kind).and_then(|k| k.needed)
    }
    fn content_keyed(&self, kind: &str) -> Option<&'static [&'static str]> {
        self.kinds.get(kind).and_then(|k| k.content)
    }
    fn tables_file(&self, kind: &str) -> Option<&'static str> {
        self.kinds.get(kind).and_then(|k| k.tables)
    }
    fn methods(&self) -> Vec<MethodInfo> {
        self.methods.clone()
    }
    fn review(&self, kind: &str, name: &str, params: &serde_json::Value, paths: &LocalPaths) -> Vec<Review> {
        let mut found = self
            .kinds
            .get(kind)
            .map(|k| (k.review)(name, params, paths))
            .unwrap_or_default();
        found.extend(review_resources(params));
        found
    }
}

/// A `resources` memory or time that sbatch could not read either: said by `check`,
/// not by the head mid-run (it passed as given and failed at submission).
fn review_resources(params: &serde_json::Value) -> Vec<Review> {
    let r = &params["resources"];
    let unread = |field: &str, what: &str, readable: fn(&str) -> bool, help: &str| {
        let v = r[field].as_str().filter(|v| !readable(v))?;
        Some(Review {
            at: format!("resources.{field}"),
            code: "manifest::wrong-value",
            message: format!("{field}={v:?} is not a {what} sbatch reads"),
            label: format!("not a {what}"),
            help: help.into(),
            warning: false,
        })
    };
    [
        unread(
            "memory",
            "size",
            |v| super::slurm::fit::memory_mb(v).is_some(),
            "a number with an optional unit K, M (the default), G or T, e.g. 32G",
        ),
        unread(
            "time",
            "time limit",
            |v| super::slurm::fit::minutes(v).is_some(),
            "minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S or unlimited, e.g. 4:00:00",
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `settings` laid over `params` where `params` holds the same path: the unkeyed
/// props, which the key holds at their default. Settings that are no parameter
/// (`resources`) are left out.
pub fn overlay_settings(params: &mut serde_json::Value, settings: &serde_json::Value) {
    let (Some(p), Some(s)) = (params.as_object_mut(), settings.as_object()) else {
        return;
    };
    for (name, value) in s {
        match p.get_mut(name) {
            Some(slot) if slot.is_object() && value.is_object() => overlay_settings(slot, value),
            Some(slot) if !slot.is_object() && !value.is_object() => *slot = value.clone(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_says_what_to_do() {
        let full = "checkpoint x.tmp: No space left on device (os error 28)".to_string();
        let said = with_full_disk_hint(full.clone());
        assert!(
            said.starts_with(&full)
                && said.contains("a file system is full (the path above says which): free space there"),
            "{said}"
        );
        assert_eq!(with_full_disk_hint("bad data".into()), "bad data");
    }

    #[test]
    fn planned_work_reads_once_per_name_and_counts_once_per_item() {
        let planned = PlannedWork::default();
        let reads = std::cell::Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            vec![1u8, 2]
        };
        let a = planned.read_once("index", read);
        let b = planned.read_once("index", || -> Vec<u8> { unreachable!("read once") });
        assert_eq!((reads.get(), &*a), (1, &vec![1, 2]));
        assert!(Arc::ptr_eq(&a, &b), "the later previews share the first's");
        // Another name, another read.
        assert_eq!(*planned.read_once("other", || 7u32), 7);
        assert!(planned.first("part-1") && !planned.first("part-1") && planned.first("part-2"));
    }
}
