//! `multitask`: one LoRA trained on the union of the pool's datasets (the
//! `multitask` step). The paper's upper reference, not a post-hoc method.

use crate::model::{AdapterSet, LoraExpert};

pub const NOTE: &str =
    "one LoRA trained on the union of the pool's datasets: needs all data at once (not post-hoc)";

pub fn adapters(multitask: &LoraExpert) -> AdapterSet {
    AdapterSet::from_lora(multitask)
}
