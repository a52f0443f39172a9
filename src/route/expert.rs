//! `expert:NAME`: one expert of the pool on every module, for every input.

use crate::model::{AdapterSet, LoraExpert, ModelError, Result};

pub fn adapters(experts: &[LoraExpert], name: &str) -> Result<AdapterSet> {
    experts
        .iter()
        .find(|x| x.name == name)
        .map(AdapterSet::from_lora)
        .ok_or_else(|| ModelError::Input(format!("expert:{name}: `{name}` is not in the pool")))
}
