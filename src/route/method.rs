//! What an evaluation method is: one implementation of [`Method`] per file of this
//! folder, listed once in [`super::METHODS`]. The planner (which steps a method
//! needs), the eval step (how it scores) and `goosepipe score` all read that list.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Device;

use super::best_individual::ExpertScores;
use crate::model::{AdapterSet, GateVectors, LoraExpert, ModelError, Result, T5Config};

/// What a method builds its adapters from: the pool as the eval loaded it.
pub struct Pool<'a> {
    /// The members' experts and trained gates, in name order (each empty for a
    /// method that does not read it: [`Method::reads_experts`], [`Method::uses_gates`]).
    pub experts: &'a [LoraExpert],
    pub gates: &'a [GateVectors],
    /// The artifact folders of the steps the method needs, by kind: one per member
    /// (in name order) for a per-member kind, one for a pooled kind.
    pub needed: &'a BTreeMap<String, Vec<PathBuf>>,
    /// What needed artifacts are loaded for.
    pub config: &'a T5Config,
    pub device: &'a Device,
    /// Experts kept per token (capped at the pool size by the method).
    pub top_k: usize,
    /// Arrow's softmax temperature: given only to a method that says it reads it
    /// ([`Method::uses_temperature`]), so that it alone is keyed by it.
    pub arrow_temperature: Option<f64>,
}

impl<'a> Pool<'a> {
    /// This pool as `method` may see it: the experts, gates and Arrow temperature
    /// only where it says it reads them ([`Method::reads_experts`],
    /// [`Method::uses_gates`], [`Method::uses_temperature`]), so that what an eval
    /// keys a method's results by is all that method can read.
    pub fn given_to(&self, method: &dyn Method) -> Pool<'a> {
        Pool {
            experts: if method.reads_experts() { self.experts } else { &[] },
            gates: if method.uses_gates() { self.gates } else { &[] },
            arrow_temperature: self.arrow_temperature.filter(|_| method.uses_temperature()),
            ..*self
        }
    }

    /// The folders of needed kind `kind`.
    pub fn needed(&self, kind: &str) -> Result<&[PathBuf]> {
        self.needed
            .get(kind)
            .map(Vec::as_slice)
            .ok_or_else(|| ModelError::Input(format!("the `{kind}` artifacts were not given to the method")))
    }
}

/// How a method's scores come about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// The model runs with the method's [`Method::adapters`] on every input.
    Adapters,
    /// Every example goes to one expert, picked from its text ([`super::retrieval`]).
    PerExample,
    /// One single expert's scores stand for the method's ([`Method::pick`]); every
    /// `expert:NAME` of the pool is scored for it.
    FromSingles,
}

pub trait Method: Sync {
    /// The manifest's spelling ("phatgoose").
    fn name(&self) -> &'static str;
    /// How its scores come about.
    fn scoring(&self) -> Scoring {
        Scoring::Adapters
    }
    /// Step kinds the eval must have built for it (lowered by the planner as each
    /// kind declares), whose outputs reach [`Method::adapters`] through the [`Pool`].
    fn needs(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether it reads the pool's experts ([`Pool::experts`] is empty for a method
    /// that says not, as the base model and the multitask LoRA): its results are then
    /// reused by evals of other pools over the same tasks.
    fn reads_experts(&self) -> bool {
        true
    }
    /// Whether it reads the pool's trained gates ([`Pool::gates`] is empty for a
    /// method that does not say so): an eval then rescores it when a gate changes,
    /// and reuses the others' results.
    fn uses_gates(&self) -> bool {
        false
    }
    /// Whether it reads [`Pool::arrow_temperature`].
    fn uses_temperature(&self) -> bool {
        false
    }
    /// Whether it picks experts per token and module, so that its choices are logged
    /// for the routing analysis. The routing setting top-k is part of its results'
    /// keys only when it does.
    fn routes_tokens(&self) -> bool {
        false
    }
    /// The note the results table prints beside its column (how it was built, or that
    /// it is not zero-shot); `singles` are the single experts' scores.
    fn note(&self, _singles: &ExpertScores) -> Option<String> {
        None
    }
    /// What the model runs with ([`Scoring::Adapters`]).
    fn adapters(&self, _pool: &Pool) -> Result<AdapterSet> {
        Err(ModelError::Input(format!(
            "method `{}` does not run with adapters",
            self.name()
        )))
    }
    /// The expert whose score on `task` stands for the method's
    /// ([`Scoring::FromSingles`]).
    fn pick<'a>(&self, _singles: &'a ExpertScores, _task: &str) -> Option<&'a str> {
        None
    }
}

/// A method as a manifest names it: one of `list`, or `expert:NAME`.
#[derive(Clone, Copy)]
pub enum Chosen<'a> {
    Listed(&'static dyn Method),
    /// One expert of the pool on every module, for every input.
    Expert(&'a str),
}

impl Chosen<'_> {
    pub fn routes_tokens(&self) -> bool {
        matches!(self, Chosen::Listed(m) if m.routes_tokens())
    }
}

/// `name` as a manifest writes it, among `list` (`route::METHODS` in the product),
/// or None for an unknown method.
pub fn parse<'a>(list: &[&'static dyn Method], name: &'a str) -> Option<Chosen<'a>> {
    if let Some(expert) = name.strip_prefix("expert:") {
        return (!expert.is_empty()).then_some(Chosen::Expert(expert));
    }
    find(list, name).map(Chosen::Listed)
}

/// The method of that name in `list`.
pub fn find(list: &[&'static dyn Method], name: &str) -> Option<&'static dyn Method> {
    list.iter().copied().find(|m| m.name() == name)
}
