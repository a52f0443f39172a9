//! What the planner learns from whoever can run steps (the steps layer in the
//! product, test doubles in engine tests): each step kind's implementation version
//! and place in the pipeline, the evaluation methods and the steps each needs, and
//! checks of parameter values that take ML knowledge. The planner itself knows no
//! model, method or dataset format.

/// Step kinds and evaluation methods, as the planner needs to know them.
pub trait Catalog {
    /// The implementation version of a kind: part of every key of that kind, so a
    /// change of semantics invalidates exactly that kind. None: not a kind of this build.
    fn version(&self, kind: &str) -> Option<u32>;
    /// Where a kind's steps sit when a plan is read top to bottom (lower first).
    fn order(&self, _kind: &str) -> Option<u32> {
        None
    }
    /// How an eval lowers a kind that one of its methods needs.
    fn needed(&self, _kind: &str) -> Option<Needed> {
        None
    }
    /// Under early cutoff, whether the steps that read a kind's artifact are keyed by
    /// its content, and the files of it left out of that content (provenance no reader
    /// opens). None: by its key.
    fn content_keyed(&self, _kind: &str) -> Option<&'static [&'static str]> {
        None
    }
    /// The file of a kind's artifact that holds its results as a person reads them
    /// (pinned as `tables=` in the lockfile). None: it has none.
    fn tables_file(&self, _kind: &str) -> Option<&'static str> {
        None
    }
    /// The evaluation methods a manifest may list, in the order help texts name them.
    fn methods(&self) -> Vec<MethodInfo> {
        vec![]
    }
    /// What is wrong (or worth a warning) with the canonical parameters of step
    /// `name` (a model or dataset node's), and of the local files it reads, as only its
    /// kind can tell (a synthetic letters spec, a model too large to train, a BIG-bench
    /// parent task named by its file).
    fn review(
        &self,
        _kind: &str,
        _name: &str,
        _params: &serde_json::Value,
        _paths: &LocalPaths,
    ) -> Vec<Review> {
        vec![]
    }
}

/// The local files and folders a step reads, by the setting that names them (`path`,
/// `bigbench`): what a review may open to judge them.
pub type LocalPaths = std::collections::BTreeMap<String, LocalPath>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPath {
    pub abs: std::path::PathBuf,
    /// As the lockfile names it: relative to the project folder when inside it.
    pub display: String,
}

/// An evaluation method as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// The manifest's spelling.
    pub name: &'static str,
    /// Step kinds the eval must have built for it (lowered as their [`Needed`] says).
    pub needs: &'static [&'static str],
    /// Whether it routes each token to the top-k experts (the `routing top-k=`
    /// setting is read only by such methods).
    pub routes_tokens: bool,
}

/// How an eval lowers a step kind that one of its methods needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needed {
    /// One step per pool member, named after it; the eval reads it as `KIND:MEMBER`.
    PerMember {
        /// Eval `routing` settings copied into the step's parameters: (parameter, setting).
        settings: &'static [(&'static str, &'static str)],
        /// What it reads of the member's dataset, as its `data` input.
        data: MemberData,
        /// Whether it reads the member's expert (as `expert`) and the pool's model (as `model`).
        expert: bool,
        model: bool,
        /// A routing setting naming a model to embed with, resolved (and hashed) once per
        /// eval as an external of the eval and of every such step, unless it holds the
        /// second value, which names the pool's own model (read as `model` instead).
        embedder: Option<(&'static str, &'static str)>,
    },
    /// One step per pool, trained on the union of the members' tokenized datasets
    /// (`data:DATASET`) with the manifest's default `lora` and `train` groups and the
    /// pool's model; the eval reads it as `KIND`.
    Pooled,
}

/// Which form of a member's dataset a needed step reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberData {
    /// The `tokenize` step of the dataset for the pool's model.
    Tokens,
    /// The `dataset` step itself (its examples).
    Examples,
}

/// A finding about one parameter of a step, placed by the planner at the manifest
/// field it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// The parameter's path, as in the step's parameters ("synthetic.letters", "init").
    pub at: String,
    /// A diagnostic code ("manifest::wrong-value", "plan::model-too-large").
    pub code: &'static str,
    pub message: String,
    pub label: String,
    pub help: String,
    /// A warning does not stop the plan.
    pub warning: bool,
}
