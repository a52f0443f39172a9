//! `merged`: one module made from the whole pool, `W + mean_i(B_i A_i)/r` (the
//! outer-product average; the paper's merging code is not public).

use candle_core::DType;

use super::best_individual::ExpertScores;
use super::{Method, Pool};
use crate::model::{AdapterSet, LoraExpert, MixWeights, Result};

pub const NOTE: &str =
    "W + mean_i(B_i A_i)/r (outer-product average; the paper's merging code is not public)";

/// The uniform mixture of every expert's LoRA on every module.
pub fn adapters(experts: &[LoraExpert]) -> Result<AdapterSet> {
    let n = experts.len().max(1);
    AdapterSet::mixture(
        experts,
        MixWeights::Shared(vec![1.0 / n as f64; experts.len()]),
        DType::F32,
    )
}

pub struct Merged;

impl Method for Merged {
    fn name(&self) -> &'static str {
        "merged"
    }
    fn note(&self, _singles: &ExpertScores) -> Option<String> {
        Some(NOTE.into())
    }
    fn adapters(&self, pool: &Pool) -> Result<AdapterSet> {
        adapters(pool.experts)
    }
}
