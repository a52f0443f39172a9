//! What the engine knows of a step kind: declared beside its runner (one const
//! in the kind's file under `steps/`), so that the planner and the executors
//! learn names, versions, order and resources from it and hard-code none.

use serde_json::Value as Json;

use crate::plan::{LocalPaths, Needed, Review};

/// A step kind's declaration.
#[derive(Clone, Copy)]
pub struct Kind {
    /// The kind's name in keys, plans and recipes ("expert", "gate", ...).
    pub name: &'static str,
    /// Bumped whenever the step's output for the same inputs would change. Part of
    /// every key of this kind.
    pub version: u32,
    /// Where its steps sit when a plan is read top to bottom (lower first).
    pub order: u32,
    /// What its Slurm jobs ask for unless the manifest's `resources` block says
    /// otherwise.
    pub resources: JobResources,
    /// How an eval lowers this kind when one of its methods needs it.
    pub needed: Option<Needed>,
    /// Checks of a step's parameters and local paths that only this kind can make
    /// (step name, params, paths).
    pub review: fn(&str, &Json, &LocalPaths) -> Vec<Review>,
    /// Under early cutoff (`pipeline ... early-cutoff=#true`), the steps that read this
    /// kind's artifact are keyed by its content, the files of it but these (provenance
    /// no reader opens). None: keyed by its key, always.
    pub content: Option<&'static [&'static str]>,
    /// The file of its artifact that holds its results as a person reads them (rounded
    /// tables): the lockfile pins its blake3 as `tables=`, which a machine of other
    /// numerics can reproduce where the artifact's last bits differ.
    pub tables: Option<&'static str>,
    /// Its bytes follow from its inputs and parameters with no floating-point
    /// arithmetic whose last bits the machine sets (data, token ids, a member list): its
    /// artifact's numerics label is its inputs' (`process::numerics::combined`).
    pub exact: bool,
}

impl Kind {
    /// A kind with fixed resources, needed by no method, with nothing to review.
    pub const fn new(name: &'static str, version: u32, order: u32, resources: JobDefaults) -> Kind {
        Kind {
            name,
            version,
            order,
            resources: JobResources::Fixed(resources),
            needed: None,
            review: no_review,
            content: None,
            tables: None,
            exact: false,
        }
    }

    /// This kind, declared exact (see [`Kind::exact`]).
    pub const fn exact(self) -> Kind {
        Kind { exact: true, ..self }
    }

    /// This kind with its results tables in `file` (see [`Kind::tables`]).
    pub const fn with_tables(self, file: &'static str) -> Kind {
        Kind {
            tables: Some(file),
            ..self
        }
    }

    /// The Slurm defaults of a step of this kind with these canonical parameters.
    pub fn job_defaults(&self, params: &Json) -> JobDefaults {
        match self.resources {
            JobResources::Fixed(r) => r,
            JobResources::ByParams(f) => f(params),
        }
    }
}

/// A kind's Slurm defaults: the same for every step, or chosen by its parameters
/// (a model step only computes when it pretrains).
#[derive(Debug, Clone, Copy)]
pub enum JobResources {
    Fixed(JobDefaults),
    ByParams(fn(&Json) -> JobDefaults),
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kind")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("order", &self.order)
            .field("resources", &self.resources)
            .field("needed", &self.needed)
            .finish_non_exhaustive()
    }
}

fn no_review(_: &str, _: &Json, _: &LocalPaths) -> Vec<Review> {
    vec![]
}

/// What a job of a kind asks of Slurm unless the manifest says otherwise. The GPUs
/// are only asked for when the run computes on a GPU: on a CPU run a GPU request
/// would only make jobs wait for hardware they do not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobDefaults {
    pub gpus: u64,
    pub cpus: u64,
    /// As sbatch spells it ("16G").
    pub memory: &'static str,
    /// As sbatch spells it ("4:00:00").
    pub time: &'static str,
}

impl JobDefaults {
    /// For a kind that declares nothing (test doubles): one CPU, 4 GB, two hours.
    pub const OTHER: JobDefaults = JobDefaults {
        gpus: 0,
        cpus: 1,
        memory: "4G",
        time: "2:00:00",
    };

    pub const fn new(gpus: u64, cpus: u64, memory: &'static str, time: &'static str) -> JobDefaults {
        JobDefaults {
            gpus,
            cpus,
            memory,
            time,
        }
    }
}
