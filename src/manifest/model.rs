//! The validated manifest: every node checked against the schema, defaults filled in,
//! references resolved, every value still pointing at its source text.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use super::source::{Loc, Sources};
use super::value::Value;

/// Where a value came from; `explain` shows it so users see why a value is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Written on the node itself.
    Explicit,
    /// Inherited from the manifest's `defaults` node.
    Defaults,
    /// The schema's default.
    Schema,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub value: Value,
    pub loc: Option<Loc>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub enum Child {
    Group(Block),
    List(Vec<Field>),
    Records(Vec<Block>),
}

/// One node (or group, or record) after validation.
#[derive(Debug, Clone)]
pub struct Block {
    /// Name of the node kind or child.
    pub name: String,
    pub loc: Loc,
    pub arg: Option<Field>,
    /// Shared, copy-on-write: every node that leaves a group unwritten holds the same
    /// filled-in group (10,000 experts would otherwise copy every default 10,000 times).
    pub props: Arc<BTreeMap<String, Field>>,
    pub children: Arc<BTreeMap<String, Child>>,
}

impl Block {
    pub fn get(&self, prop: &str) -> Option<&Value> {
        self.props.get(prop).map(|f| &f.value)
    }
    pub fn str(&self, prop: &str) -> Option<&str> {
        self.get(prop).and_then(Value::as_str)
    }
    pub fn group(&self, name: &str) -> Option<&Block> {
        match self.children.get(name) {
            Some(Child::Group(b)) => Some(b),
            _ => None,
        }
    }
    pub fn list(&self, name: &str) -> &[Field] {
        match self.children.get(name) {
            Some(Child::List(l)) => l,
            _ => &[],
        }
    }
    pub fn records(&self, name: &str) -> &[Block] {
        match self.children.get(name) {
            Some(Child::Records(r)) => r,
            _ => &[],
        }
    }
}

/// A named top-level node: model, dataset, expert, pool or eval.
#[derive(Debug, Clone)]
pub struct Entity {
    pub kind: String,
    pub name: String,
    pub name_loc: Loc,
    /// The whole node, children included (which node an error lies in).
    pub loc: Loc,
    pub block: Block,
}

#[derive(Debug)]
pub struct Manifest {
    /// The manifest file given on the command line (absolute).
    pub path: PathBuf,
    /// That path as the user spelled it, for messages.
    pub display: String,
    /// The project folder: includes and paths must stay inside it.
    pub root: PathBuf,
    pub sources: Sources,
    pub pipeline: Option<String>,
    /// `pipeline ... allow-outside-paths=#true`: local paths may leave the project.
    pub allow_outside_paths: bool,
    /// `pipeline ... early-cutoff=#true`: steps that read a dataset are keyed by the
    /// dataset's output, not by how it was made (see `plan::outputs`).
    pub early_cutoff: bool,
    /// `pipeline ... jobs=N`: steps `run` builds at once when `-j` is not given.
    pub jobs: Option<usize>,
    pub entities: Vec<Entity>,
    /// Every group of the `defaults` node, filled with schema defaults: what a step
    /// that belongs to no node (e.g. the multitask baseline) is configured with.
    pub default_groups: BTreeMap<String, Block>,
    /// (kind, name) -> position in `entities`.
    pub index: HashMap<(String, String), usize>,
    /// The `pipeline` and `defaults` nodes, whose settings every step reads.
    pub settings_locs: Vec<Loc>,
}

impl Manifest {
    pub fn entity(&self, kind: &str, name: &str) -> Option<&Entity> {
        self.index
            .get(&(kind.to_string(), name.to_string()))
            .map(|&i| &self.entities[i])
    }

    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Entity> + 'a {
        self.entities.iter().filter(move |e| e.kind == kind)
    }
}
