//! `base`: the frozen model with no expert, the floor every method must beat.

use crate::model::AdapterSet;

pub fn adapters() -> AdapterSet {
    AdapterSet::new()
}
