//! Plan layer: validated manifest -> DAG of steps with content keys, and what is stale.
//!
//! A step's key is a pure function of its ingredients (see [`key`]); the plan never
//! downloads, never trains, and reads local files only to hash them.

pub mod catalog;
pub mod dataset_sources;
pub mod integrity;
pub mod key;
pub mod listing;
pub mod lower;
pub mod outputs;
pub mod params;
pub mod render;
pub mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};

use crate::manifest::{Loc, Manifest, Origin, Value};
use crate::store::StepSpec;

pub use catalog::{Catalog, LocalPath, LocalPaths, MemberData, MethodInfo, Needed, Review};
pub use lower::{build, build_with, load, load_with};
pub use outputs::KnownOutputs;
pub use status::{Reason, State, Status};

#[derive(Debug, Clone)]
pub struct Step {
    pub spec: StepSpec,
    /// The manifest node this step comes from (for diagnostics and explain).
    pub loc: Option<Loc>,
    /// Where each param value came from.
    pub origins: BTreeMap<String, (Origin, Option<Loc>)>,
    /// Under early cutoff, the content-keyed steps (datasets) whose output this step's
    /// key depends on, directly or not, and that are not built yet: until they are,
    /// the key is provisional (see [`outputs`]). Empty for every other step.
    pub waits_for: Vec<String>,
    /// Under early cutoff, for a step whose readers key on its content (a dataset):
    /// the files of its artifact left out of that content. None otherwise.
    pub content_keyed: Option<&'static [&'static str]>,
    /// The file of its artifact that holds its results as a person reads them
    /// (`Catalog::tables_file`): pinned as the lockfile's `tables=`.
    pub tables_file: Option<&'static str>,
}

impl Step {
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// The keyed parameters as manifest values (what `explain` shows). Read back from
    /// the spec's JSON, not kept beside it: a plan of 10,000 experts would hold every
    /// parameter twice.
    pub fn params(&self) -> Value {
        Value::from_json(&self.spec.params).unwrap_or_else(|| Value::Map(Default::default()))
    }

    /// Its artifact `meta` as the lockfile pins it: key, digest, content (under early
    /// cutoff), numerics and results tables. What `run` writes, and what `--locked`
    /// and `plan` hold against the pin there.
    pub fn pinned_as(&self, meta: &crate::store::ArtifactMeta) -> crate::store::lockfile::LockedStep {
        crate::store::lockfile::LockedStep {
            key: self.spec.key,
            digest: Some(meta.digest.clone()),
            content: self.content_of(meta),
            numerics: meta.numerics.clone(),
            tables: self
                .tables_file
                .and_then(|file| meta.file_blake3(file))
                .map(str::to_string),
        }
    }

    /// Under early cutoff, for a step whose readers key on its content: that content
    /// in its artifact `meta` (what the lockfile pins as `content=`). None otherwise.
    pub fn content_of(&self, meta: &crate::store::ArtifactMeta) -> Option<String> {
        self.content_keyed
            .map(|leave_out| crate::store::artifact::content_digest(&meta.files, leave_out))
    }
}

/// Twins among a set of steps: each step whose key an earlier one of the set already
/// has, with that first step. Twins describe one artifact (steps whose ingredients are
/// all equal, such as a retrieval index per seed over one dataset), so a run builds it
/// once, with the first, and the others share it.
#[derive(Debug, Default)]
pub struct Twins {
    of: BTreeMap<usize, usize>,
}

impl Twins {
    /// The step that builds `i`'s artifact, when `i` is a twin.
    pub fn first_of(&self, i: usize) -> Option<usize> {
        self.of.get(&i).copied()
    }
    pub fn is_twin(&self, i: usize) -> bool {
        self.of.contains_key(&i)
    }
    /// The twins whose artifact `i` builds.
    pub fn built_by(&self, i: usize) -> Vec<usize> {
        self.of
            .iter()
            .filter(|&(_, &first)| first == i)
            .map(|(&t, _)| t)
            .collect()
    }
    /// Every twin with its first, in plan order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.of.iter().map(|(&t, &f)| (t, f))
    }
}

#[derive(Debug)]
pub struct Plan {
    pub manifest: Manifest,
    /// Steps in a topological order (inputs before consumers).
    pub steps: Vec<Step>,
    pub index: HashMap<String, usize>,
    /// Edges input -> consumer, over indices into `steps`.
    pub graph: DiGraph<usize, ()>,
    pub nodes: Vec<NodeIndex>,
    /// Things worth saying that do not stop the plan (an empty manifest, a model too
    /// large for this machine), rendered like manifest diagnostics.
    pub warnings: Vec<crate::manifest::ManifestError>,
}

impl Plan {
    /// Whether any step's key is provisional (see [`Step::waits_for`]).
    pub fn waits(&self) -> bool {
        self.steps.iter().any(|s| !s.waits_for.is_empty())
    }

    pub fn get(&self, id: &str) -> Option<&Step> {
        self.index.get(id).map(|&i| &self.steps[i])
    }

    /// Indices of the steps that `i` reads.
    pub fn inputs_of(&self, i: usize) -> Vec<usize> {
        self.steps[i]
            .spec
            .inputs
            .iter()
            .filter_map(|inp| self.index.get(&inp.id).copied())
            .collect()
    }

    /// Indices of the steps that read `i`.
    pub fn consumers_of(&self, i: usize) -> Vec<usize> {
        self.graph
            .neighbors_directed(self.nodes[i], petgraph::Direction::Outgoing)
            .map(|n| self.graph[n])
            .collect()
    }

    /// Every step with the key of one of `failed` (ids; twins share its fate) and
    /// every step that reads, directly or not, what one of those would have built.
    pub fn downstream_of<'a>(&self, failed: impl IntoIterator<Item = &'a str>) -> BTreeSet<usize> {
        let keys: BTreeSet<crate::store::Key> = failed
            .into_iter()
            .filter_map(|id| self.get(id))
            .map(|s| s.spec.key)
            .collect();
        let mut seen: BTreeSet<usize> = (0..self.steps.len())
            .filter(|&i| keys.contains(&self.steps[i].spec.key))
            .collect();
        let mut stack: Vec<usize> = seen.iter().copied().collect();
        while let Some(i) = stack.pop() {
            for c in self.consumers_of(i) {
                if seen.insert(c) {
                    stack.push(c);
                }
            }
        }
        seen
    }

    /// The twins among `among` (step indices in plan order).
    pub fn twins(&self, among: impl IntoIterator<Item = usize>) -> Twins {
        let mut first: HashMap<crate::store::Key, usize> = HashMap::new();
        let mut of = BTreeMap::new();
        for i in among {
            let f = *first.entry(self.steps[i].spec.key).or_insert(i);
            if f != i {
                of.insert(i, f);
            }
        }
        Twins { of }
    }

    /// Looks a step up by id (`expert:x`) or, when unambiguous, by bare name (`x`).
    pub fn resolve(&self, what: &str) -> Result<usize, String> {
        if let Some(&i) = self.index.get(what) {
            return Ok(i);
        }
        let hits: Vec<usize> = (0..self.steps.len())
            .filter(|&i| self.steps[i].spec.name == what)
            .collect();
        match hits.as_slice() {
            [i] => Ok(*i),
            [] => {
                // Names are compared within the kind asked for: every id of a kind
                // shares its `kind:` prefix, which would make `expert:nope` look like
                // any expert.
                let near = |name: &str, kind: Option<&str>| {
                    let names = self
                        .steps
                        .iter()
                        .filter(|s| kind.is_none_or(|k| s.spec.kind == k))
                        .map(|s| s.spec.name.as_str());
                    crate::manifest::diag::did_you_mean(name, names)
                };
                use crate::store::spec::{member_of, step_id};
                let of_kind = self
                    .steps
                    .iter()
                    .find_map(|s| Some((s.spec.kind.as_str(), member_of(what, &s.spec.kind)?)));
                let hint = match of_kind {
                    Some((kind, name)) => near(name, Some(kind)).map(|n| step_id(kind, n)),
                    // A misspelt kind (`exprt:a`): the whole ids are compared.
                    None if what.contains(':') => {
                        crate::manifest::diag::did_you_mean(what, self.steps.iter().map(|s| s.id()))
                            .map(str::to_string)
                    }
                    // A kind alone (`eval`): its steps' ids.
                    None if self.steps.iter().any(|s| s.spec.kind == what) => {
                        let ids: Vec<String> = self
                            .steps
                            .iter()
                            .filter(|s| s.spec.kind == what)
                            .map(|s| s.id().to_string())
                            .collect();
                        Some(match ids.as_slice() {
                            [one] => one.clone(),
                            many => format!("one of {}", listing::first_few(many, 3)),
                        })
                    }
                    // A bare name several steps share is suggested as their ids (the
                    // name alone would be refused as ambiguous).
                    None => near(what, None).map(|n| {
                        let ids: Vec<&str> = self
                            .steps
                            .iter()
                            .filter(|s| s.spec.name == n)
                            .map(|s| s.id())
                            .collect();
                        match ids.as_slice() {
                            [_] => n.to_string(),
                            many => format!("one of {}", many.join(", ")),
                        }
                    }),
                }
                .map(|d| format!("; did you mean {d}?"))
                .unwrap_or_default();
                Err(format!("no step named {what:?} in this plan{hint}"))
            }
            many => Err(format!(
                "{what:?} is ambiguous: {}; use the full id",
                many.iter()
                    .map(|&i| self.steps[i].id())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}
