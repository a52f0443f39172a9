//! `base`: the frozen model with no expert, the floor every method must beat.

use super::{Method, Pool};
use crate::model::{AdapterSet, Result};

pub fn adapters() -> AdapterSet {
    AdapterSet::new()
}

pub struct Base;

impl Method for Base {
    fn name(&self) -> &'static str {
        "base"
    }
    fn reads_experts(&self) -> bool {
        false
    }
    fn adapters(&self, _pool: &Pool) -> Result<AdapterSet> {
        Ok(adapters())
    }
}
