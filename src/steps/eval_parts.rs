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
//!
//! and is scored otherwise. Every part is written, whichever way it came, into the
//! artifact's `parts/` folder: its bytes are a function of its key, so an eval
//! publishes the same bytes however many of its parts it reused.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;

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
}

/// A published eval's parts as its metadata records them: path -> (size, blake3).
type Recorded = HashMap<String, (u64, String)>;

/// Where an eval's parts are looked up and written.
pub(super) struct Parts<'a> {
    ctx: &'a StepContext<'a>,
    /// Parts of published evals: part key -> the artifacts that hold it (sorted
    /// keys), read from the store once, at the first lookup that needs it.
    published: OnceCell<HashMap<String, Vec<Key>>>,
    /// Per holding artifact, the size and blake3 it recorded for each of its parts
    /// (None: its metadata is unreadable, and nothing of it is reused).
    recorded: RefCell<HashMap<Key, Option<Recorded>>>,
}

impl<'a> Parts<'a> {
    pub fn new(ctx: &'a StepContext<'a>) -> Parts<'a> {
        Parts {
            ctx,
            published: OnceCell::new(),
            recorded: RefCell::new(HashMap::new()),
        }
    }

    fn progress_file(&self, part: &str) -> PathBuf {
        self.ctx.work.join("eval-progress").join(format!("{part}.json"))
    }

    /// The finished result of part `part`, if this key's interrupted run saved it
    /// or a published eval holds it intact.
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
        let holders = self.published().get(part)?;
        holders.iter().find_map(|key| {
            let bytes = self.published_bytes(key, part)?;
            Some((parse(&bytes)?, Found::Reused(*key)))
        })
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

    fn published(&self) -> &HashMap<String, Vec<Key>> {
        self.published.get_or_init(|| {
            let mut index: HashMap<String, Vec<Key>> = HashMap::new();
            for key in self.ctx.store.keys() {
                if key == self.ctx.spec.key {
                    continue;
                }
                let Ok(dir) = std::fs::read_dir(self.ctx.store.files_dir(&key).join(EVAL_PARTS_DIR)) else {
                    continue;
                };
                for e in dir.flatten() {
                    if let Some(part) = e.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
                        index.entry(part.to_string()).or_default().push(key);
                    }
                }
            }
            index
        })
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
