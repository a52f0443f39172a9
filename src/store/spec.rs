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
    /// The artifact this step reads.
    pub key: Key,
    /// Under `pipeline ... early-cutoff=#true`, the content digest of what the input
    /// produced (see [`crate::plan::outputs`]; which kinds: `Catalog::content_keyed`): it enters this step's key in
    /// place of `key`, so an input rebuilt with the same output leaves this step's key
    /// as it was. `None` (every other input) keys on `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// The `digest` of an input whose output is not known yet (its producer has not been
/// built, and no lockfile pins it). A key computed from it is provisional: the plan
/// marks its step as waiting, and a run builds the producer and plans again before
/// building anything that carries one.
pub const PENDING_DIGEST: &str = "pending:";

impl SpecInput {
    /// What enters the consumer's key for this input: its output's content digest
    /// under early cutoff, else its key. The same bytes in `Key` form, for part keys
    /// and reasons that compare inputs.
    pub fn identity(&self) -> Key {
        match &self.digest {
            None => self.key,
            Some(d) => {
                let mut h = blake3::Hasher::new();
                h.update(b"goosepipe-content-v1\0");
                h.update(d.as_bytes());
                h.finalize().into()
            }
        }
    }

    /// Whether this input's output is still unknown (see [`PENDING_DIGEST`]).
    pub fn pending(&self) -> bool {
        self.digest
            .as_deref()
            .is_some_and(|d| d.starts_with(PENDING_DIGEST))
    }
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
        /// For a folder, the files its blake3 covers, each with its own (see
        /// `hashing::Hashed`): not in the key, which `blake3` already settles; kept so
        /// that `plan` can name the files that changed since this recipe.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        files: Option<std::collections::BTreeMap<String, String>>,
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
