//! The (method, task) results an eval is made of: its *parts*. Each part has a key
//! of its own, over exactly what its scores and routing depend on (the base, the
//! pool members and whatever else the method reads, the task's data and settings),
//! so that an eval whose own key changed (a method or a task added, a routing
//! setting moved) scores only the parts that changed and takes the others from an
//! earlier eval in the store. A part is found, in this order:
//!
//! 1. in this eval's work folder, saved there by an interrupted run of the same key
//!    (resume);
//! 2. in a published eval artifact's `parts/` folder, checked against the size and
//!    blake3 that artifact recorded (reuse);
//! 3. in the work folder of another eval (one running beside this one, in this run
//!    or on another node of a cluster, or interrupted), saved there as in 1: evals
//!    of two pools on the same tasks score the base and the experts they share once
//!    between them when they run side by side;
//!
//! and is scored otherwise. Every part is written, whichever way it came, into the
//! artifact's `parts/` folder: its bytes are a function of its key, so an eval
//! publishes the same bytes however many of its parts it reused.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use crate::artifact_files::EVAL_PARTS_DIR;
use crate::exec::{StepContext, StepError};
use crate::model::adapter::ModuleRouting;
use crate::store::{Key, Store};

/// Part keys are blake3 over length-delimited ingredients, the first of which is
/// this tag. It stands for how a part is scored and what it holds, in place of the
/// eval step's version (a change to the tables the eval writes from its parts leaves
/// them reusable): bump it with any change to a (method, task) result's scores or
/// routing record, to its file, or to what goes into its key.
/// v2: a part holds each example's prediction (the chosen choice, or the generated
/// text) beside its score.
const PART_FORMAT: &str = "goosepipe-eval-part-v2";

/// One finished (method, task) result.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Finished {
    pub method: String,
    pub task: String,
    /// Per example, in example order.
    pub scores: Vec<f64>,
    /// Per example, in example order: the answer choice picked (rank
    /// classification) or the text generated.
    pub predictions: Vec<String>,
    pub routing: Option<std::collections::BTreeMap<String, ModuleRouting>>,
}

impl Finished {
    /// Whether a loaded record is the result asked for: a score per example, each in
    /// [0, 1] (anything else, say a file cut short or edited, is scored again).
    fn fits(&self, method: &str, task: &str, examples: usize) -> bool {
        self.method == method
            && self.task == task
            && self.scores.len() == examples
            && self.predictions.len() == examples
            && self.scores.iter().all(|s| (0.0..=1.0).contains(s))
    }

    /// The part's canonical bytes (scores and routing sums are f64 written with
    /// round-trip precision, so a part reloads bit for bit).
    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("json")
    }
}

/// A part key under construction: named, length-delimited ingredients.
pub(super) struct PartKey(blake3::Hasher);

impl PartKey {
    pub fn new() -> PartKey {
        let mut k = PartKey(blake3::Hasher::new());
        k.add("format", PART_FORMAT.as_bytes());
        k
    }

    /// One ingredient; the name keeps two lists of ingredients from colliding when
    /// one leaves out what the other has.
    pub fn add(&mut self, name: &str, value: &[u8]) -> &mut PartKey {
        for bytes in [name.as_bytes(), value] {
            self.0.update(&(bytes.len() as u64).to_le_bytes());
            self.0.update(bytes);
        }
        self
    }

    pub fn add_str(&mut self, name: &str, value: &str) -> &mut PartKey {
        self.add(name, value.as_bytes())
    }

    pub fn add_u64(&mut self, name: &str, value: u64) -> &mut PartKey {
        self.add(name, &value.to_le_bytes())
    }

    /// An input artifact's key, under its role.
    pub fn add_key(&mut self, role: &str, key: &Key) -> &mut PartKey {
        self.add(role, &key.0)
    }

    /// The key, as the part's file name (32 hex digits).
    pub fn finish(&self) -> String {
        self.0.finalize().to_hex()[..32].to_string()
    }
}

/// How a part was found without scoring it.
pub(super) enum Found {
    /// From this key's interrupted run.
    Resumed,
    /// From the published eval artifact at this key.
    Reused(Key),
    /// From the saved progress of the eval of this key, running or interrupted.
    Shared(Key),
}

/// The folder of an eval's work folder where it saves its parts as it goes.
const PROGRESS_DIR: &str = "eval-progress";

/// Beside the saved parts: `PART.claim`, a part the eval is scoring now.
const CLAIM_SUFFIX: &str = ".claim";

/// Where an eval whose work folder is `work` saves part `part` as it goes.
fn progress_file(work: &std::path::Path, part: &str) -> PathBuf {
    work.join(PROGRESS_DIR).join(format!("{part}.json"))
}

/// A part's bytes as its progress file holds them: their blake3, a line, the bytes.
fn with_digest(bytes: &[u8]) -> Vec<u8> {
    let mut saved = format!("{}\n", blake3::hash(bytes).to_hex()).into_bytes();
    saved.extend_from_slice(bytes);
    saved
}

/// A saved part's bytes, if the file holds them whole: its first line is their
/// blake3 (a file of an older layout, or damaged, is not used).
fn read_progress(file: &std::path::Path) -> Option<Vec<u8>> {
    let saved = std::fs::read(file).ok()?;
    let at = saved.iter().position(|b| *b == b'\n')?;
    let (hash, bytes) = (&saved[..at], &saved[at + 1..]);
    (blake3::hash(bytes).to_hex().as_bytes() == hash).then(|| bytes.to_vec())
}

/// How many of an eval's parts were found without scoring, and where: the run's log
/// lines and `plan`'s preview.
#[derive(Default)]
pub(super) struct Tally {
    /// Every part looked at.
    pub total: usize,
    resumed: usize,
    reused: usize,
    reused_from: BTreeSet<Key>,
    shared: usize,
    shared_from: BTreeSet<Key>,
    /// (A preview's.) Parts another eval of the plan, earlier in it, counts to score.
    planned: usize,
}

impl Tally {
    /// One part: found (and how), or None when it is (to be) scored.
    pub fn count(&mut self, found: Option<&Found>) {
        self.total += 1;
        match found {
            None => {}
            Some(Found::Resumed) => self.resumed += 1,
            Some(Found::Reused(k)) => {
                self.reused += 1;
                self.reused_from.insert(*k);
            }
            Some(Found::Shared(k)) => {
                self.shared += 1;
                self.shared_from.insert(*k);
            }
        }
    }

    /// (A preview's.) One part to score that an eval earlier in the plan scores.
    pub fn count_planned(&mut self) {
        self.total += 1;
        self.planned += 1;
    }

    /// The run's account of what it did not score, a line per source.
    pub fn log_lines(&self) -> Vec<String> {
        let keys = |set: &BTreeSet<Key>| set.iter().map(Key::short).collect::<Vec<_>>().join(", ");
        let mut lines = vec![];
        if self.resumed > 0 {
            lines.push(format!(
                "resumed: {} (method, task) result(s) were kept from the interrupted run",
                self.resumed
            ));
        }
        if self.reused > 0 {
            lines.push(format!(
                "reused: {} (method, task) result(s) unchanged since an earlier eval ({} {})",
                self.reused,
                if self.reused_from.len() == 1 {
                    "artifact"
                } else {
                    "artifacts"
                },
                keys(&self.reused_from)
            ));
        }
        if self.shared > 0 {
            lines.push(format!(
                "shared: {} (method, task) result(s) saved by another eval as it ran ({})",
                self.shared,
                keys(&self.shared_from)
            ));
        }
        lines
    }

    /// `plan`'s account, before the run: "6 of 9 (method, task) results to score,
    /// 3 reused from earlier evals".
    pub fn preview(&self) -> crate::plan::status::Preview {
        let total = self.total;
        let to_score = total - self.resumed - self.reused - self.shared - self.planned;
        let counts = [
            ("results", total),
            ("to_score", to_score),
            ("reused", self.reused),
            ("shared", self.shared),
            ("resumed", self.resumed),
            ("planned", self.planned),
        ]
        .map(|(k, v)| (k, v as u64))
        .into();
        crate::plan::status::Preview {
            text: self.preview_text(to_score),
            counts,
            refused: false,
        }
    }

    fn preview_text(&self, to_score: usize) -> String {
        let total = self.total;
        let results = if total == 1 { "result" } else { "results" };
        let mut found = vec![];
        if self.reused > 0 {
            found.push(format!("{} reused from earlier evals", self.reused));
        }
        if self.shared > 0 {
            found.push(format!("{} saved by other evals as they ran", self.shared));
        }
        if self.resumed > 0 {
            found.push(format!("{} kept from an interrupted run", self.resumed));
        }
        if self.planned > 0 {
            found.push(format!("{} scored by another eval of this plan", self.planned));
        }
        match to_score {
            _ if found.is_empty() => format!("{total} (method, task) {results} to score"),
            0 => format!(
                "nothing to score: {total} (method, task) {results}, {}",
                found.join(", ")
            ),
            n => format!(
                "{n} of {total} (method, task) {results} to score, {}",
                found.join(", ")
            ),
        }
    }
}

/// A published eval's parts as its metadata records them: path -> (size, blake3).
type Recorded = HashMap<String, (u64, String)>;

/// What the other evals' work folders hold: parts saved and parts being scored.
#[derive(Default)]
struct Others {
    /// Part key -> the evals that saved it (in key order).
    saved: HashMap<String, Vec<Key>>,
    /// Part key -> the evals that marked it (in key order).
    claimed: HashMap<String, Vec<Key>>,
    /// Every key with a work folder (sorted), as listed.
    working: Vec<Key>,
}

/// The parts of the published evals, and the work folders there were when it was read.
#[derive(Clone)]
struct PublishedIndex {
    /// Part key -> the artifacts that hold it (sorted keys).
    parts: HashMap<String, Vec<Key>>,
    /// Sorted.
    working: Vec<Key>,
}

/// Where an eval's parts are looked up and written.
pub(super) struct Parts<'a> {
    ctx: &'a StepContext<'a>,
    /// Whether other evals' saved progress is read again at each lookup that misses
    /// (a run: they save parts as it goes) or once (a preview: one moment).
    live: bool,
    /// Parts of published evals, read from the store at the first lookup that needs
    /// it; the evals that publish later are added as they leave `work/`.
    /// Shared by the previews of one plan (read once for all of them).
    published: RefCell<Option<Arc<PublishedIndex>>>,
    /// What other evals' work folders hold.
    others: RefCell<Option<Others>>,
    /// Per holding artifact, the size and blake3 it recorded for each of its parts
    /// (None: its metadata is unreadable, and nothing of it is reused).
    recorded: RefCell<HashMap<Key, Option<Recorded>>>,
}

impl<'a> Parts<'a> {
    /// The parts of a running eval: what other evals save is looked for as it goes.
    pub fn new(ctx: &'a StepContext<'a>) -> Parts<'a> {
        Parts {
            ctx,
            live: true,
            published: RefCell::new(None),
            others: RefCell::new(None),
            recorded: RefCell::new(HashMap::new()),
        }
    }

    /// The parts as the store holds them now, for a preview.
    pub fn snapshot(ctx: &'a StepContext<'a>) -> Parts<'a> {
        Parts {
            live: false,
            ..Parts::new(ctx)
        }
    }

    fn progress_file(&self, part: &str) -> PathBuf {
        progress_file(&self.ctx.work, part)
    }

    /// The finished result of part `part`, if this key's interrupted run saved it,
    /// a published eval holds it intact, or another eval saved it.
    pub fn find(&self, part: &str, method: &str, task: &str, examples: usize) -> Option<(Finished, Found)> {
        let parse = |bytes: &[u8]| {
            serde_json::from_slice::<Finished>(bytes)
                .ok()
                .filter(|f| f.fits(method, task, examples))
        };
        if let Some(f) = read_progress(&self.progress_file(part)).and_then(|b| parse(&b)) {
            return Some((f, Found::Resumed));
        }
        let from_published = || {
            self.ensure_published();
            let index = self.published.borrow();
            let holders = index.as_ref()?.parts.get(part)?.clone();
            drop(index);
            holders
                .iter()
                .filter(|k| **k != self.ctx.spec.key)
                .find_map(|key| {
                    let bytes = self.published_bytes(key, part)?;
                    Some((parse(&bytes)?, Found::Reused(*key)))
                })
        };
        if let Some(found) = from_published() {
            return Some(found);
        }
        if self.live || self.others.borrow().is_none() {
            *self.others.borrow_mut() = Some(self.read_others());
        }
        let savers = self
            .others
            .borrow()
            .as_ref()
            .and_then(|o| o.saved.get(part).cloned())
            .unwrap_or_default();
        let shared = savers.into_iter().find_map(|key| {
            let bytes = read_progress(&progress_file(&self.ctx.store.work_dir(&key), part))?;
            Some((parse(&bytes)?, Found::Shared(key)))
        });
        if shared.is_some() {
            return shared;
        }
        // An eval beside this one may have published since the index was read,
        // taking its saved parts out of its work folder: add it, and look again.
        let working = self.others.borrow().as_ref().map(|o| o.working.clone());
        if self.live
            && let Some(now) = working
            && self.add_published_since(now)
        {
            return from_published();
        }
        None
    }

    /// What the other evals' work folders hold, from one listing of `work/`.
    fn read_others(&self) -> Others {
        let store = self.ctx.store;
        let mut others = Others {
            working: store.work_keys(),
            ..Others::default()
        };
        for &key in &others.working {
            if key == self.ctx.spec.key {
                continue;
            }
            let Ok(dir) = std::fs::read_dir(store.work_dir(&key).join(PROGRESS_DIR)) else {
                continue;
            };
            for e in dir.flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                if let Some(part) = name.strip_suffix(".json") {
                    others.saved.entry(part.to_string()).or_default().push(key);
                } else if let Some(part) = name.strip_suffix(CLAIM_SUFFIX) {
                    others.claimed.entry(part.to_string()).or_default().push(key);
                }
            }
        }
        others
    }

    /// Whether another eval that is running now (it holds its key's lock: a mark an
    /// interrupted eval left counts for nothing) has marked part `part` as being
    /// scored and not saved it, as of the last lookup that missed; `before`: only an
    /// eval whose key sorts before this one's.
    fn claimed_by_running(&self, part: &str, before: bool) -> bool {
        let others = self.others.borrow();
        let Some(o) = others.as_ref() else {
            return false;
        };
        if o.saved.contains_key(part) {
            return false;
        }
        o.claimed.get(part).is_some_and(|keys| {
            keys.iter()
                .any(|k| (!before || *k < self.ctx.spec.key) && self.ctx.store.is_building(k))
        })
    }

    /// Whether a running eval is scoring part `part` now: this one then scores it
    /// last, by when the other may have saved it.
    pub fn claimed_elsewhere(&self, part: &str) -> bool {
        self.claimed_by_running(part, false)
    }

    /// Marks part `part` as being scored by this eval (in its work folder). False
    /// when a running eval whose key sorts first marked it at the same moment: that
    /// one scores it, and this one leaves it to the end.
    pub fn claim(&self, part: &str) -> Result<bool, StepError> {
        let dir = self.ctx.work.join(PROGRESS_DIR);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{part}{CLAIM_SUFFIX}")), b"")?;
        crate::faults::point("eval.part-claimed");
        *self.others.borrow_mut() = Some(self.read_others());
        Ok(!self.claimed_by_running(part, true))
    }

    /// Part `part` of the published artifact `key`, if its bytes are those the
    /// artifact recorded (a damaged or edited part is never reused) and were computed
    /// with the numerics this eval's own are (a store shared by machines of other CPU
    /// vector levels: reused, their last bits would make this eval's digest one that
    /// a build here does not reproduce; an artifact that records none is taken as
    /// before).
    fn published_bytes(&self, key: &Key, part: &str) -> Option<Vec<u8>> {
        let rel = format!("{EVAL_PARTS_DIR}/{part}.json");
        let (size, hash) = {
            let mut recorded = self.recorded.borrow_mut();
            let files = recorded.entry(*key).or_insert_with(|| {
                // Read once per artifact: an eval with a large pool looks up
                // thousands of parts, each artifact holding as many.
                let alike = |m: &crate::store::ArtifactMeta| {
                    m.numerics.as_deref().is_none_or(|n| n == self.ctx.numerics)
                };
                self.ctx.store.meta(key).filter(alike).map(|m| {
                    m.files
                        .into_iter()
                        .filter(|f| f.path.starts_with(EVAL_PARTS_DIR))
                        .map(|f| (f.path, (f.size, f.blake3)))
                        .collect()
                })
            });
            files.as_ref()?.get(&rel)?.clone()
        };
        let bytes = std::fs::read(self.ctx.store.files_dir(key).join(&rel)).ok()?;
        (bytes.len() as u64 == size && blake3::hash(&bytes).to_hex().as_str() == hash).then_some(bytes)
    }

    /// Reads the published evals' parts, once.
    fn ensure_published(&self) {
        if self.published.borrow().is_some() {
            return;
        }
        let store = self.ctx.store;
        let read = || {
            // The work folders first: a step that publishes after this listing is
            // seen as gone from it at a later lookup, and its parts are added then.
            let working = store.work_keys();
            let mut parts: HashMap<String, Vec<Key>> = HashMap::new();
            for key in store.keys() {
                index_artifact(store, &mut parts, key);
            }
            PublishedIndex { parts, working }
        };
        let index = match self.ctx.planned {
            // A preview: the store is as every other preview of the plan sees it.
            Some(planned) if !self.live => planned.read_once("eval-parts.published", read),
            _ => Arc::new(read()),
        };
        *self.published.borrow_mut() = Some(index);
    }

    /// Indexes the steps that have left `work/` since the last listing (`now`: the
    /// keys with a work folder now, sorted) and are published; whether there were any.
    fn add_published_since(&self, now: Vec<Key>) -> bool {
        self.ensure_published();
        let mut slot = self.published.borrow_mut();
        let index = slot.as_mut().expect("read above");
        let left: Vec<Key> = index
            .working
            .iter()
            .filter(|k| now.binary_search(k).is_err() && self.ctx.store.object_dir(k).is_dir())
            .copied()
            .collect();
        let index = Arc::make_mut(index);
        for key in &left {
            index_artifact(self.ctx.store, &mut index.parts, *key);
        }
        index.working = now;
        !left.is_empty()
    }

    /// Saves a part just scored in the work folder, where a run of this key that is
    /// interrupted later finds it, and other evals that need it. The file starts with
    /// the blake3 of the part's bytes, so a damaged one is scored again, never
    /// published.
    pub fn save_progress(&self, part: &str, bytes: &[u8]) -> Result<(), StepError> {
        let file = self.progress_file(part);
        std::fs::create_dir_all(file.parent().expect("in the work folder"))?;
        crate::store::fsutil::write_atomic(&file, &with_digest(bytes))?;
        crate::faults::point("eval.task-saved");
        Ok(())
    }

    /// Writes a part's bytes, scored or found, into the artifact.
    pub fn publish(&self, part: &str, bytes: &[u8]) -> Result<(), StepError> {
        let dir = self.ctx.out.join(EVAL_PARTS_DIR);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{part}.json")), bytes)?;
        Ok(())
    }
}

/// Adds the parts of published artifact `key` (if it holds any) to `parts` (an eval
/// never takes its own: it looks past its key).
fn index_artifact(store: &Store, parts: &mut HashMap<String, Vec<Key>>, key: Key) {
    let Ok(dir) = std::fs::read_dir(store.files_dir(&key).join(EVAL_PARTS_DIR)) else {
        return;
    };
    for e in dir.flatten() {
        if let Some(part) = e.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
            let holders = parts.entry(part.to_string()).or_default();
            if let Err(at) = holders.binary_search(&key) {
                holders.insert(at, key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::exec::{CancelFlag, Silent};
    use crate::store::{StepSpec, Store};

    fn spec(key: u8) -> StepSpec {
        StepSpec {
            key: Key([key; 32]),
            id: format!("eval:e{key}"),
            kind: "eval".into(),
            name: format!("e{key}"),
            version: 1,
            params: serde_json::json!({}),
            settings: serde_json::json!({}),
            inputs: vec![],
            externals: vec![],
        }
    }

    fn context<'a>(
        spec: &'a StepSpec,
        store: &'a Store,
        cancel: &'a CancelFlag,
        locked: &'a BTreeMap<String, String>,
    ) -> StepContext<'a> {
        StepContext {
            spec,
            inputs: vec![],
            out: store.root.join("out"),
            work: store.work_dir(&spec.key),
            store,
            progress: &Silent,
            cancel,
            device: "cpu",
            locked,
            pins: Mutex::new(BTreeMap::new()),
            strict: false,
            planned: None,
            numerics: "cpu".into(),
        }
    }

    /// Two running evals mark the same part at once: the one whose key sorts first
    /// scores it, the other leaves it to the end; a mark whose eval is not running
    /// (it holds no lock of its key) counts for nothing.
    #[test]
    fn of_two_evals_marking_a_part_at_once_the_first_key_scores_it() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let (first, second) = (spec(1), spec(2));
        let (cancel, locked) = (CancelFlag::new(), BTreeMap::new());
        let (a, b) = (
            context(&first, &store, &cancel, &locked),
            context(&second, &store, &cancel, &locked),
        );
        let (pa, pb) = (Parts::new(&a), Parts::new(&b));
        // Neither runs: marks are not heeded.
        assert!(pa.claim("p").unwrap());
        assert!(pb.claim("p").unwrap());
        assert!(pb.find("p", "m", "t", 1).is_none() && !pb.claimed_elsewhere("p"));
        let _running = (store.lock(&first.key).unwrap(), store.lock(&second.key).unwrap());
        assert!(pa.claim("p").unwrap(), "the first key scores it");
        assert!(!pb.claim("p").unwrap(), "the second waits");
        assert!(pb.find("p", "m", "t", 1).is_none() && pb.claimed_elsewhere("p"));
        // Once saved, the part is found, not waited for.
        pa.save_progress(
            "p",
            &Finished {
                method: "m".into(),
                task: "t".into(),
                scores: vec![1.0],
                predictions: vec!["a".into()],
                routing: None,
            }
            .bytes(),
        )
        .unwrap();
        assert!(matches!(pb.find("p", "m", "t", 1), Some((_, Found::Shared(k))) if k == first.key));
    }

    /// An eval beside this one saves a part, then publishes (its work folder goes):
    /// this eval takes the part from its work folder, then from its artifact, though
    /// the artifact was published after this eval first read the store's parts.
    #[test]
    fn a_part_is_found_while_another_eval_runs_and_after_it_publishes() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let (own, other) = (spec(1), spec(2));
        let part = Finished {
            method: "merged".into(),
            task: "sort".into(),
            scores: vec![1.0, 0.0],
            predictions: vec!["a b".into(), "b".into()],
            routing: None,
        };
        let (cancel, locked) = (CancelFlag::new(), BTreeMap::new());
        let ctx = context(&own, &store, &cancel, &locked);
        let parts = Parts::new(&ctx);
        let progress = progress_file(&store.work_dir(&other.key), "p");
        std::fs::create_dir_all(progress.parent().unwrap()).unwrap();
        // Damaged, still a record that fits (a score changed), under the digest of
        // the bytes it had: not taken.
        let bytes = part.bytes();
        let edited = String::from_utf8(bytes.clone())
            .unwrap()
            .replacen("1.0", "0.0", 1);
        let mut damaged = with_digest(&bytes);
        damaged.truncate(damaged.len() - bytes.len());
        damaged.extend_from_slice(edited.as_bytes());
        std::fs::write(&progress, damaged).unwrap();
        assert!(parts.find("p", "merged", "sort", 2).is_none());
        // An intact copy in a third eval's folder is taken instead.
        let third = progress_file(&store.work_dir(&spec(3).key), "p");
        std::fs::create_dir_all(third.parent().unwrap()).unwrap();
        std::fs::write(&third, with_digest(&bytes)).unwrap();
        let found = parts.find("p", "merged", "sort", 2).map(|(_, how)| how);
        assert!(matches!(found, Some(Found::Shared(k)) if k == spec(3).key));
        std::fs::remove_dir_all(store.work_dir(&spec(3).key)).unwrap();
        // Saved whole since: the same lookup, asked again, finds it.
        std::fs::write(&progress, with_digest(&part.bytes())).unwrap();
        assert!(parts.find("q", "merged", "sort", 2).is_none(), "no such part");
        let shared = parts
            .find("p", "merged", "sort", 2)
            .map(|(f, how)| (f.scores, how));
        assert!(
            matches!(shared, Some((ref s, Found::Shared(k))) if *s == part.scores && k == other.key),
            "taken from the other eval's work folder"
        );
        // A record of another shape (here: another example count) is not the part.
        assert!(parts.find("p", "merged", "sort", 3).is_none());

        let staging = store.begin(&other.key).unwrap();
        std::fs::create_dir_all(staging.files.join(EVAL_PARTS_DIR)).unwrap();
        std::fs::write(staging.files.join(EVAL_PARTS_DIR).join("p.json"), part.bytes()).unwrap();
        store
            .publish(staging, &other, BTreeMap::new(), None, 0.0)
            .unwrap();
        std::fs::remove_dir_all(store.work_dir(&other.key)).unwrap();
        let reused = parts.find("p", "merged", "sort", 2).map(|(_, how)| how);
        assert!(
            matches!(reused, Some(Found::Reused(k)) if k == other.key),
            "taken from the artifact published since the index was first read"
        );
    }
}
