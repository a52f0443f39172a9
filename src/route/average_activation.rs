//! `average-activation`: routed exactly like PHATGOOSE, with each expert's mean
//! input activation per module (computed over its own training inputs with its
//! LoRA active, by the `average-activation` step) in place of a trained gate.

use candle_core::DType;

use super::best_individual::ExpertScores;
use super::{Method, Pool};
use crate::artifact_files::EMBEDDINGS_FILE;
use crate::model::{AdapterSet, GateVectors, LoraExpert, Result};

pub const NOTE: &str = "routed like phatgoose with each expert's mean input activations over its training inputs (decoder: last greedy decoding step)";

/// `vectors` are the `average-activation` steps' outputs, named like the experts.
pub fn adapters(experts: &[LoraExpert], vectors: &[GateVectors], top_k: usize) -> Result<AdapterSet> {
    super::phatgoose::adapters(experts, vectors, top_k)
}

pub struct AverageActivation;

impl Method for AverageActivation {
    fn name(&self) -> &'static str {
        "average-activation"
    }
    fn needs(&self) -> &'static [&'static str] {
        &["average-activation"]
    }
    fn routes_tokens(&self) -> bool {
        true
    }
    fn note(&self, _singles: &ExpertScores) -> Option<String> {
        Some(NOTE.into())
    }
    /// The `average-activation` steps' vectors, in the gate layout, named like the experts.
    fn adapters(&self, pool: &Pool) -> Result<AdapterSet> {
        let vectors = pool
            .needed("average-activation")?
            .iter()
            .zip(pool.experts)
            .map(|(dir, e)| {
                let mut v =
                    GateVectors::load(&dir.join(EMBEDDINGS_FILE), pool.config, pool.device, DType::F32)?;
                v.name = e.name.clone();
                Ok(v)
            })
            .collect::<Result<Vec<_>>>()?;
        adapters(pool.experts, &vectors, pool.top_k)
    }
}
