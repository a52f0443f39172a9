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
    /// experts in name order (see [`sorted_by_name`]).
    pub fn mixture(experts: &[LoraExpert], weights: MixWeights, dtype: DType) -> Result<Self> {
        let sorted = sorted_by_name(experts)?;
        let mut set = AdapterSet::new();
        for (module, stack) in stacks(&sorted, dtype)? {
            set.insert(
                module,
                ModuleAdapter::Mixture {
                    stack,
                    weights: weights.clone(),
                },
            );
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
        for module in sorted[0].modules.keys() {
            let mut rows = Vec::with_capacity(sorted.len());
            for e in &sorted {
                let g = by_name.get(e.name.as_str()).ok_or_else(|| {
                    ModelError::adapter(module, format!("no gate file for expert `{}`", e.name))
                })?;
                let v = g.gates.get(module).ok_or_else(|| {
                    ModelError::adapter(module, format!("gates of `{}` lack this module", e.name))
                })?;
                rows.push(v.clone());
            }
            embeddings.insert(module.clone(), Tensor::stack(&rows, 0)?);
        }
        Self::routed(experts, &embeddings, Scoring::Standardized, top_k, dtype)
    }

    /// A routed pool with arbitrary router embeddings: `embeddings[module]` is
    /// `[N, d_in]`, row z for the z-th expert in name order. This is how other
    /// routers (average activation, Arrow) plug in.
    pub fn routed(
        experts: &[LoraExpert],
        embeddings: &BTreeMap<String, Tensor>,
        scoring: Scoring,
        top_k: usize,
        dtype: DType,
    ) -> Result<Self> {
        let sorted = sorted_by_name(experts)?;
        let mut set = AdapterSet::new();
        for (module, stack) in stacks(&sorted, dtype)? {
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

/// Per module, the stack of all experts' LoRAs. Every expert must adapt the
/// same modules with the same rank.
fn stacks(sorted: &[&LoraExpert], dtype: DType) -> Result<Vec<(String, ExpertStack)>> {
    let first = sorted[0];
    for e in sorted {
        if e.modules.len() != first.modules.len() || e.modules.keys().any(|k| !first.modules.contains_key(k))
        {
            return Err(ModelError::Input(format!(
                "experts `{}` and `{}` adapt different modules",
                first.name, e.name
            )));
        }
    }
    let names: Vec<String> = sorted.iter().map(|e| e.name.clone()).collect();
    let mut out = Vec::with_capacity(first.modules.len());
    for module in first.modules.keys() {
        let loras: Vec<LoraWeights> = sorted.iter().map(|e| e.modules[module].clone()).collect();
        out.push((
            module.clone(),
            ExpertStack::new(module, names.clone(), &loras, dtype)?,
        ));
    }
    Ok(out)
}
