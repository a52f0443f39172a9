//! `average-activation`: routed exactly like PHATGOOSE, with each expert's mean
//! input activation per module (computed over its own training inputs with its
//! LoRA active, by the `average-activation` step) in place of a trained gate.

use crate::model::{AdapterSet, GateVectors, LoraExpert, Result};

pub const NOTE: &str = "routed like phatgoose with each expert's mean input activations over its training inputs (decoder: last greedy decoding step)";

/// `vectors` are the `average-activation` steps' outputs, named like the experts.
pub fn adapters(experts: &[LoraExpert], vectors: &[GateVectors], top_k: usize) -> Result<AdapterSet> {
    super::phatgoose::adapters(experts, vectors, top_k)
}
