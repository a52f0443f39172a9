//! Trainable adapters as candle `Var`s in a `VarMap`, for the training code:
//! a fresh LoRA expert (A ~ N(0, 0.01^2) from our seeded RNG, B = 0) or gate
//! vectors (zeros) for a frozen expert. The base model is never a Var, so
//! gradients flow only into these.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::model::adapter::{AdapterSet, LoraWeights, ModuleAdapter};
use crate::model::checkpoint::expert_file::{GateVectors, LoraExpert};
use crate::model::error::{ModelError, Result};
use crate::model::t5::config::T5Config;
use crate::model::t5::names::adapted_linears;
use crate::rng::SeededRng;

/// PHATGOOSE's LoRA init scale for A.
pub const LORA_A_STD: f64 = 0.01;

fn insert_var(varmap: &VarMap, name: String, t: Tensor) -> Result<Tensor> {
    let var = Var::from_tensor(&t)?;
    let tensor = var.as_tensor().clone();
    let mut data = varmap
        .data()
        .lock()
        .map_err(|_| ModelError::Input("VarMap lock poisoned".into()))?;
    if data.contains_key(&name) {
        return Err(ModelError::Input(format!(
            "VarMap already has a variable `{name}`"
        )));
    }
    data.insert(name, var);
    Ok(tensor)
}

/// The variable names of `module`'s trainable LoRA, `[A, B]`: what the trainer
/// keys gradients and checkpoints by.
pub fn lora_var_names(module: &str) -> [String; 2] {
    [format!("{module}.lora_A"), format!("{module}.lora_B")]
}

/// A new trainable LoRA on every adapted linear whose name passes `filter`.
/// Variables are named `<module>.lora_A` / `<module>.lora_B`, as in expert files.
pub fn new_trainable_lora(
    cfg: &T5Config,
    rank: usize,
    seed: u64,
    filter: impl Fn(&str) -> bool,
    varmap: &VarMap,
    device: &Device,
    dtype: DType,
) -> Result<AdapterSet> {
    if rank == 0 {
        return Err(ModelError::Input("LoRA rank must be at least 1".into()));
    }
    let mut rng = SeededRng::new(seed);
    let mut set = AdapterSet::new();
    for site in adapted_linears(cfg) {
        if !filter(&site.name) {
            continue;
        }
        let a = rng.normal_tensor(&[rank, site.d_in], LORA_A_STD, dtype, device)?;
        let b = Tensor::zeros((site.d_out, rank), dtype, device)?;
        let [a_name, b_name] = lora_var_names(&site.name);
        let a = insert_var(varmap, a_name, a)?;
        let b = insert_var(varmap, b_name, b)?;
        let l = LoraWeights::new(&site.name, a, b, site.d_in, site.d_out)?;
        set.insert(site.name, ModuleAdapter::Lora(l));
    }
    if set.is_empty() {
        return Err(ModelError::Input(
            "the LoRA module filter matched no linear layer".into(),
        ));
    }
    Ok(set)
}

/// Trainable gate vectors (zeros, so sigmoid = 0.5 at the start) on every
/// module of the frozen `expert`. Variables are named `<module>.gate`.
pub fn new_trainable_gates(
    expert: &LoraExpert,
    varmap: &VarMap,
    device: &Device,
    dtype: DType,
) -> Result<AdapterSet> {
    let mut set = AdapterSet::new();
    for (m, l) in &expert.modules {
        let d_in = l.a.dims()[1];
        let gate = insert_var(varmap, format!("{m}.gate"), Tensor::zeros(d_in, dtype, device)?)?;
        let frozen = LoraWeights {
            a: l.a.detach(),
            b: l.b.detach(),
        };
        set.insert(m.clone(), ModuleAdapter::GatedLora { lora: frozen, gate });
    }
    Ok(set)
}

/// Snapshot of trained LoRA variables as an expert (detached copies).
pub fn lora_expert_from(set: &AdapterSet, name: &str, base_model: Option<String>) -> Result<LoraExpert> {
    let mut modules = BTreeMap::new();
    let mut rank = 0;
    for (m, a) in &set.modules {
        if let ModuleAdapter::Lora(l) = a {
            rank = l.rank();
            modules.insert(
                m.clone(),
                LoraWeights {
                    a: l.a.detach().copy()?,
                    b: l.b.detach().copy()?,
                },
            );
        }
    }
    if modules.is_empty() {
        return Err(ModelError::Input(
            "the adapter set holds no plain LoRA modules".into(),
        ));
    }
    Ok(LoraExpert {
        name: name.to_owned(),
        rank,
        base_model,
        modules,
    })
}

/// Snapshot of trained gate variables.
pub fn gates_from(set: &AdapterSet, name: &str, base_model: Option<String>) -> Result<GateVectors> {
    let mut gates = BTreeMap::new();
    for (m, a) in &set.modules {
        if let ModuleAdapter::GatedLora { gate, .. } = a {
            gates.insert(m.clone(), gate.detach().copy()?);
        }
    }
    if gates.is_empty() {
        return Err(ModelError::Input("the adapter set holds no gated modules".into()));
    }
    Ok(GateVectors {
        name: name.to_owned(),
        base_model,
        gates,
    })
}
