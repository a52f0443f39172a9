//! `multitask`: one LoRA trained on the union of the pool's datasets (the
//! `multitask` step). The paper's upper reference, not a post-hoc method.

use candle_core::DType;

use super::best_individual::ExpertScores;
use super::{Method, Pool};
use crate::artifact_files::EXPERT_FILE;
use crate::model::{AdapterSet, LoraExpert, ModelError, Result};

pub const NOTE: &str =
    "one LoRA trained on the union of the pool's datasets: needs all data at once (not post-hoc)";

pub fn adapters(multitask: &LoraExpert) -> AdapterSet {
    AdapterSet::from_lora(multitask)
}

pub struct Multitask;

impl Method for Multitask {
    fn name(&self) -> &'static str {
        "multitask"
    }
    fn reads_experts(&self) -> bool {
        false
    }
    fn needs(&self) -> &'static [&'static str] {
        &["multitask"]
    }
    fn note(&self, _singles: &ExpertScores) -> Option<String> {
        Some(NOTE.into())
    }
    /// The `multitask` step's LoRA.
    fn adapters(&self, pool: &Pool) -> Result<AdapterSet> {
        let [dir] = pool.needed("multitask")? else {
            return Err(ModelError::Input("multitask: expected one pooled LoRA".into()));
        };
        let lora = LoraExpert::load(&dir.join(EXPERT_FILE), pool.config, pool.device, DType::F32)?;
        Ok(adapters(&lora))
    }
}
