//! `retrieval`: one expert per example. The example's retrieval text is embedded
//! (sentence embedder, unit rows) and the expert whose library (its training
//! examples, embedded by the `retrieval-index` step) holds the highest cosine
//! gets the whole example, on every module.

use candle_core::{D, DType, Tensor};

use super::best_individual::ExpertScores;
use super::{Method, Scoring};
use crate::model::{ModelError, Result};

/// The routing record's one row for retrieval: the same expert on every module,
/// counted once per example.
pub const ROUTING_ROW: &str = "all modules (per example)";

/// `routing embedder="base-encoder"`: retrieval embeds with the pool's base model's
/// own encoder (mean-pooled), instead of a sentence embedder.
pub const BASE_ENCODER: &str = "base-encoder";

pub const NOTE: &str =
    "one expert per example: the highest cosine to its training examples (embedded by the routing embedder)";

/// For every query row (unit length), the index of the library with the highest
/// cosine between the query and any of its rows; ties go to the lower index
/// (libraries are in expert-name order). Empty libraries never win.
pub fn pick_experts(queries: &Tensor, libraries: &[Tensor]) -> Result<Vec<usize>> {
    if libraries.is_empty() {
        return Err(ModelError::Input(
            "retrieval needs at least one expert library".into(),
        ));
    }
    let n = queries.dims()[0];
    let mut best: Vec<(usize, f32)> = vec![(0, f32::NEG_INFINITY); n];
    for (z, lib) in libraries.iter().enumerate() {
        if lib.dims()[0] == 0 {
            continue;
        }
        let sims = queries
            .matmul(&lib.t()?)?
            .max(D::Minus1)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        for (b, s) in best.iter_mut().zip(sims) {
            if s > b.1 {
                *b = (z, s);
            }
        }
    }
    Ok(best.into_iter().map(|(z, _)| z).collect())
}

pub struct Retrieval;

impl Method for Retrieval {
    fn name(&self) -> &'static str {
        "retrieval"
    }
    fn scoring(&self) -> Scoring {
        Scoring::PerExample
    }
    fn needs(&self) -> &'static [&'static str] {
        &["retrieval-index"]
    }
    fn note(&self, _singles: &ExpertScores) -> Option<String> {
        Some(NOTE.into())
    }
}
