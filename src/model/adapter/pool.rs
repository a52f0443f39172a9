//! Building adapter sets from expert files: a single LoRA, a gated LoRA, a
//! fixed mixture (merge, one-hot), or a routed pool. A pool is just the list
//! of loaded experts (no repacking on disk); experts are ordered by name so
//! that routing ties and stack indices never depend on listing order.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use crate::model::adapter::{AdapterSet, ExpertStack, LoraWeights, MixWeights, ModuleAdapter};
use crate::model::checkpoint::expert_file::{GateVectors, LoraExpert};
use crate::model::error::{ModelError, Result};
use crate::model::router::{Router, Scoring};

impl AdapterSet {
    /// Every module of `expert` gets its LoRA.
    pub fn from_lora(expert: &LoraExpert) -> Self {
        let mut set = AdapterSet::new();
        for (m, l) in &expert.modules {
            set.insert(m.clone(), ModuleAdapter::Lora(l.clone()));
        }
        set
    }

    /// Every module of `expert` gets its LoRA scaled by `sigmoid(v·u)`; the
    /// gate file must cover exactly the expert's modules.
    pub fn from_gated(expert: &LoraExpert, gates: &GateVectors) -> Result<Self> {
        let mut set = AdapterSet::new();
        for (m, l) in &expert.modules {
            let gate = gates.gates.get(m).ok_or_else(|| {
                ModelError::adapter(
                    m,
                    format!("gate file of `{}` has no gate for this module", gates.name),
                )
            })?;
            set.insert(
                m.clone(),
                ModuleAdapter::GatedLora {
                    lora: l.clone(),
                    gate: gate.clone(),
                },
            );
        }
        if let Some(extra) = gates.gates.keys().find(|k| !expert.modules.contains_key(*k)) {
            return Err(ModelError::adapter(
                extra,
                format!("expert `{}` has no LoRA for this gated module", expert.name),
            ));
        }
        Ok(set)
    }

    /// A fixed mixture `sum_z w_z * LoRA_z` on every module. `weights` index the
    /// experts in name order (see [`sorted_by_name`]); on a module that some experts
    /// do not adapt, those contribute nothing (their weights are not handed on).
    pub fn mixture(experts: &[LoraExpert], weights: MixWeights, dtype: DType) -> Result<Self> {
        let sorted = sorted_by_name(experts)?;
        let mut set = AdapterSet::new();
        for (module, members, stack) in stacks(&sorted, dtype)? {
            let pick = |w: &[f64]| {
                members
                    .iter()
                    .map(|&z| w.get(z).copied().unwrap_or(0.0))
                    .collect()
            };
            let weights = match &weights {
                MixWeights::Shared(w) => MixWeights::Shared(pick(w)),
                MixWeights::PerExample(rows) => {
                    MixWeights::PerExample(rows.iter().map(|w| pick(w)).collect())
                }
            };
            set.insert(module, ModuleAdapter::Mixture { stack, weights });
        }
        Ok(set)
    }

    /// PHATGOOSE: route among the experts with their gate vectors as router
    /// embeddings, standardised scoring, top-k.
    pub fn phatgoose(
        experts: &[LoraExpert],
        gates: &[GateVectors],
        top_k: usize,
        dtype: DType,
    ) -> Result<Self> {
        let by_name: BTreeMap<&str, &GateVectors> = gates.iter().map(|g| (g.name.as_str(), g)).collect();
        let sorted = sorted_by_name(experts)?;
        let mut embeddings = BTreeMap::new();
        for (module, members) in module_members(&sorted) {
            let mut rows = Vec::with_capacity(members.len());
            for e in members.iter().map(|&z| sorted[z]) {
                let g = by_name.get(e.name.as_str()).ok_or_else(|| {
                    ModelError::adapter(&module, format!("no gate file for expert `{}`", e.name))
                })?;
                let v = g.gates.get(&module).ok_or_else(|| {
                    ModelError::adapter(&module, format!("gates of `{}` lack this module", e.name))
                })?;
                rows.push(v.clone());
            }
            embeddings.insert(module, Tensor::stack(&rows, 0)?);
        }
        Self::routed(experts, &embeddings, Scoring::Standardized, top_k, dtype)
    }

    /// A routed pool with arbitrary router embeddings: `embeddings[module]` has one
    /// row per expert that adapts the module, in name order (on a module every expert
    /// adapts: row z for the z-th expert). This is how other routers (average
    /// activation, Arrow) plug in. Each module routes among the experts that adapt it.
    pub fn routed(
        experts: &[LoraExpert],
        embeddings: &BTreeMap<String, Tensor>,
        scoring: Scoring,
        top_k: usize,
        dtype: DType,
    ) -> Result<Self> {
        let sorted = sorted_by_name(experts)?;
        let mut set = AdapterSet::new();
        for (module, _, stack) in stacks(&sorted, dtype)? {
            let emb = embeddings
                .get(&module)
                .ok_or_else(|| ModelError::adapter(&module, "no router embeddings for this module"))?;
            if emb.dims().first() != Some(&stack.len()) {
                return Err(ModelError::adapter(
                    &module,
                    format!(
                        "router embeddings have shape {:?} for {} experts",
                        emb.dims(),
                        stack.len()
                    ),
                ));
            }
            let router = Router::new(&module, emb, scoring, top_k)?;
            set.insert(module, ModuleAdapter::Routed { stack, router });
        }
        Ok(set)
    }
}

/// The experts sorted by name; duplicate names are an error because routing
/// and mixture weights refer to experts by their sorted position.
pub fn sorted_by_name(experts: &[LoraExpert]) -> Result<Vec<&LoraExpert>> {
    if experts.is_empty() {
        return Err(ModelError::Input("the pool has no experts".into()));
    }
    let mut sorted: Vec<&LoraExpert> = experts.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = sorted.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(ModelError::Input(format!(
            "two experts are named `{}`",
            w[0].name
        )));
    }
    Ok(sorted)
}

/// Per adapted module (the union over the experts), the positions in `sorted` of the
/// experts that adapt it. Imported adapters may cover a subset of the modules.
pub fn module_members(sorted: &[&LoraExpert]) -> BTreeMap<String, Vec<usize>> {
    let mut members: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (z, e) in sorted.iter().enumerate() {
        for m in e.modules.keys() {
            members.entry(m.clone()).or_default().push(z);
        }
    }
    members
}

/// Per module, the stack of the LoRAs of the experts that adapt it, with their
/// positions in `sorted`. Experts of different ranks are padded to the largest with
/// zero rows of A and columns of B, and B rescaled by `R / r` so the stack's `1 / R`
/// gives each expert exactly its own `1 / r`.
fn stacks(sorted: &[&LoraExpert], dtype: DType) -> Result<Vec<(String, Vec<usize>, ExpertStack)>> {
    let mut out = vec![];
    for (module, members) in module_members(sorted) {
        let loras: Vec<&LoraWeights> = members.iter().map(|&z| &sorted[z].modules[&module]).collect();
        let rank = loras.iter().map(|l| l.rank()).max().unwrap_or(0);
        let loras = loras
            .into_iter()
            .map(|l| pad_rank(&module, l, rank))
            .collect::<Result<Vec<_>>>()?;
        let names = members.iter().map(|&z| sorted[z].name.clone()).collect();
        let stack = ExpertStack::new(&module, names, &loras, dtype)?;
        out.push((module, members, stack));
    }
    Ok(out)
}

fn pad_rank(module: &str, l: &LoraWeights, rank: usize) -> Result<LoraWeights> {
    let r = l.rank();
    if r == rank {
        return Ok(l.clone());
    }
    let (d_in, d_out) = (l.a.dims()[1], l.b.dims()[0]);
    let zeros_a = Tensor::zeros((rank - r, d_in), l.a.dtype(), l.a.device())?;
    let zeros_b = Tensor::zeros((d_out, rank - r), l.b.dtype(), l.b.device())?;
    let a = Tensor::cat(&[&l.a, &zeros_a], 0)?;
    let b = Tensor::cat(&[&(&l.b * (rank as f64 / r as f64))?, &zeros_b], 1)?;
    LoraWeights::new(module, a, b, d_in, d_out)
}
