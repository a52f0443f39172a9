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
use std::rc::Rc;

use crate::artifact_files::EVAL_PARTS_DIR;
use crate::exec::{StepContext, StepError};
use crate::model::adapter::ModuleRouting;
use crate::store::Key;

/// Part keys are blake3 over length-delimited ingredients, the first of which is
/// this tag. It stands for how a part is scored and what it holds, in place of the
/// eval step's version (a change to the tables the eval writes from its parts leaves
/// them reusable): bump it with any change to a (method, task) result's scores or
/// routing record, to its file, or to what goes into its key.
const PART_FORMAT: &str = "goosepipe-eval-part-v1";

/// One finished (method, task) result.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Finished {
    pub method: String,
    pub task: String,
    /// Per example, in example order.
    pub scores: Vec<f64>,
    pub routing: Option<std::collections::BTreeMap<String, ModuleRouting>>,
}

impl Finished {
    /// Whether a loaded record is the result asked for: a score per example, each in
    /// [0, 1] (anything else, say a file cut short or edited, is scored again).
    fn fits(&self, method: &str, task: &str, examples: usize) -> bool {
        self.method == method
            && self.task == task
            && self.scores.len() == examples
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

/// Where an eval whose work folder is `work` saves part `part` as it goes.
fn progress_file(work: &std::path::Path, part: &str) -> PathBuf {
    work.join("eval-progress").join(format!("{part}.json"))
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
    pub fn preview(&self) -> String {
        let total = self.total;
        let to_score = total - self.resumed - self.reused - self.shared;
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

/// The parts of the published evals, and the work folders there were when it was read.
struct PublishedIndex {
    /// Part key -> the artifacts that hold it (sorted keys).
    parts: HashMap<String, Vec<Key>>,
    working: Vec<Key>,
}

/// Where an eval's parts are looked up and written.
pub(super) struct Parts<'a> {
    ctx: &'a StepContext<'a>,
    /// Parts of published evals, read from the store at the first lookup that needs
    /// it, and again when steps have started or finished since.
    published: RefCell<Option<Rc<PublishedIndex>>>,
    /// Per holding artifact, the size and blake3 it recorded for each of its parts
    /// (None: its metadata is unreadable, and nothing of it is reused).
    recorded: RefCell<HashMap<Key, Option<Recorded>>>,
}

impl<'a> Parts<'a> {
    pub fn new(ctx: &'a StepContext<'a>) -> Parts<'a> {
        Parts {
            ctx,
            published: RefCell::new(None),
            recorded: RefCell::new(HashMap::new()),
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
        if let Some(f) = std::fs::read(self.progress_file(part))
            .ok()
            .and_then(|b| parse(&b))
        {
            return Some((f, Found::Resumed));
        }
        let from_published = || {
            let index = self.published();
            let holders = index.parts.get(part)?;
            holders.iter().find_map(|key| {
                let bytes = self.published_bytes(key, part)?;
                Some((parse(&bytes)?, Found::Reused(*key)))
            })
        };
        if let Some(found) = from_published() {
            return Some(found);
        }
        // Looked up afresh each time: another eval saves parts as it goes. Its files
        // are written whole (renamed in) and carry no recorded digest, as this
        // eval's own saved progress does not.
        let store = self.ctx.store;
        let working = store.work_keys();
        let shared = working.iter().filter(|k| **k != self.ctx.spec.key).find_map(|k| {
            let bytes = std::fs::read(progress_file(&store.work_dir(k), part)).ok()?;
            Some((parse(&bytes)?, Found::Shared(*k)))
        });
        if shared.is_some() {
            return shared;
        }
        // Steps started or finished since the index was read (an eval beside this
        // one may have published, taking its saved parts out of its work folder):
        // read it again.
        if self.published().working != working {
            self.published.borrow_mut().take();
            return from_published();
        }
        None
    }

    /// Part `part` of the published artifact `key`, if its bytes are those the
    /// artifact recorded (a damaged or edited part is never reused).
    fn published_bytes(&self, key: &Key, part: &str) -> Option<Vec<u8>> {
        let rel = format!("{EVAL_PARTS_DIR}/{part}.json");
        let (size, hash) = {
            let mut recorded = self.recorded.borrow_mut();
            let files = recorded.entry(*key).or_insert_with(|| {
                // Read once per artifact: an eval with a large pool looks up
                // thousands of parts, each artifact holding as many.
                self.ctx.store.meta(key).map(|m| {
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

    fn published(&self) -> Rc<PublishedIndex> {
        let mut slot = self.published.borrow_mut();
        if let Some(index) = slot.as_ref() {
            return index.clone();
        }
        // The work folders first: a step that publishes after this listing is
        // seen as gone from it at a later lookup, which reads the index again.
        let working = self.ctx.store.work_keys();
        let mut parts: HashMap<String, Vec<Key>> = HashMap::new();
        for key in self.ctx.store.keys() {
            if key == self.ctx.spec.key {
                continue;
            }
            let Ok(dir) = std::fs::read_dir(self.ctx.store.files_dir(&key).join(EVAL_PARTS_DIR)) else {
                continue;
            };
            for e in dir.flatten() {
                if let Some(part) = e.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
                    parts.entry(part.to_string()).or_default().push(key);
                }
            }
        }
        slot.insert(Rc::new(PublishedIndex { parts, working })).clone()
    }

    /// Saves a part just scored in the work folder, where a run of this key that is
    /// interrupted later finds it.
    pub fn save_progress(&self, part: &str, bytes: &[u8]) -> Result<(), StepError> {
        let file = self.progress_file(part);
        std::fs::create_dir_all(file.parent().expect("in the work folder"))?;
        crate::store::fsutil::write_atomic(&file, bytes)?;
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
            routing: None,
        };
        let progress = progress_file(&store.work_dir(&other.key), "p");
        std::fs::create_dir_all(progress.parent().unwrap()).unwrap();
        std::fs::write(&progress, part.bytes()).unwrap();

        let (cancel, locked) = (CancelFlag::new(), BTreeMap::new());
        let ctx = StepContext {
            spec: &own,
            inputs: vec![],
            out: d.path().join("out"),
            work: store.work_dir(&own.key),
            store: &store,
            progress: &Silent,
            cancel: &cancel,
            device: "cpu",
            locked: &locked,
            pins: Mutex::new(BTreeMap::new()),
            strict: false,
        };
        let parts = Parts::new(&ctx);
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
        store.publish(staging, &other, BTreeMap::new(), 0.0).unwrap();
        std::fs::remove_dir_all(store.work_dir(&other.key)).unwrap();
        let reused = parts.find("p", "merged", "sort", 2).map(|(_, how)| how);
        assert!(
            matches!(reused, Some(Found::Reused(k)) if k == other.key),
            "taken from the artifact published since the index was first read"
        );
    }
}
