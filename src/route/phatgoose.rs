//! `phatgoose`: the experts' trained gate vectors are the router embeddings.
//! Per token and module: scores `LN(u)·LN(v_z)/sqrt(d)` over all experts,
//! softmax, top-k, renormalised over the kept k, weighted sum of those experts'
//! LoRA outputs (METHOD.md section 3; the formula is `Scoring::Standardized`).

use candle_core::DType;

use super::{Method, Pool};
use crate::model::{AdapterSet, GateVectors, LoraExpert, Result};

/// `gates` are matched to `experts` by name; `top_k` is capped at the pool size.
pub fn adapters(experts: &[LoraExpert], gates: &[GateVectors], top_k: usize) -> Result<AdapterSet> {
    AdapterSet::phatgoose(experts, gates, top_k.min(experts.len()), DType::F32)
}

pub struct Phatgoose;

impl Method for Phatgoose {
    fn name(&self) -> &'static str {
        "phatgoose"
    }
    fn uses_gates(&self) -> bool {
        true
    }
    fn routes_tokens(&self) -> bool {
        true
    }
    fn adapters(&self, pool: &Pool) -> Result<AdapterSet> {
        adapters(pool.experts, pool.gates, pool.top_k)
    }
}
