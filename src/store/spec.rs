//! The frozen description of one step: everything its key was computed from, plus
//! how to run it. The plan writes it into the store before the step runs, so a worker
//! (`goosepipe exec --key`) needs only the store, never the manifest.

use serde::{Deserialize, Serialize};

use super::key::Key;

/// A step's id: `KIND:NAME`, unique within a plan (`expert:sort`, `dataset:sort-test`).
pub fn step_id(kind: &str, name: &str) -> String {
    format!("{kind}:{name}")
}

/// The role of an input that stands for one member of a set: `KIND:NAME` (a pool's
/// `expert:sort` and `gate:sort`, an eval's `average-activation:sort`, a multitask
/// step's `data:sort`). Built and read only through this function and [`member_of`].
pub fn member_role(kind: &str, name: &str) -> String {
    format!("{kind}:{name}")
}

/// The member a role names for `kind`: `member_of("expert:sort", "expert")` is `sort`.
pub fn member_of<'a>(role: &'a str, kind: &str) -> Option<&'a str> {
    role.strip_prefix(kind)?.strip_prefix(':')
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecInput {
    /// What the input is to this step ("model", "data", "expert:ag_news", ...).
    pub role: String,
    /// The producing step's id ("dataset:ag_news").
    pub id: String,
    pub key: Key,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum External {
    /// A local file or folder, identified by the blake3 of its content.
    Path {
        role: String,
        /// Absolute path, for the step to read.
        path: String,
        /// The path as the lockfile names it: relative to the project when inside it.
        display: String,
        blake3: String,
    },
    /// A hub repository at a revision; the lockfile pins what the revision resolved to.
    Hub {
        role: String,
        repo_type: String,
        repo: String,
        revision: String,
    },
}

impl External {
    pub fn role(&self) -> &str {
        match self {
            External::Path { role, .. } | External::Hub { role, .. } => role,
        }
    }

    /// The identity that enters the key: content for paths, repo + revision for hubs.
    pub fn identity(&self) -> String {
        match self {
            External::Path { blake3, .. } => format!("blake3:{blake3}"),
            External::Hub {
                repo_type,
                repo,
                revision,
                ..
            } => format!("hub:{repo_type}:{repo}@{revision}"),
        }
    }

    /// The name this external has in the lockfile.
    pub fn lock_name(&self) -> String {
        match self {
            External::Path { display, .. } => format!("path:{display}"),
            External::Hub {
                repo_type,
                repo,
                revision,
                ..
            } => format!("hub:{repo_type}:{repo}@{revision}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub key: Key,
    /// "kind:name", unique within a plan.
    pub id: String,
    pub kind: String,
    pub name: String,
    /// The implementation version of the step kind (part of the key).
    pub version: u32,
    /// Canonical keyed parameters.
    pub params: serde_json::Value,
    /// Settings that change how the step runs but not what it produces (resources).
    pub settings: serde_json::Value,
    pub inputs: Vec<SpecInput>,
    pub externals: Vec<External>,
}

impl StepSpec {
    pub fn input(&self, role: &str) -> Option<&SpecInput> {
        self.inputs.iter().find(|i| i.role == role)
    }
}
