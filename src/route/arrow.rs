//! `arrow`: each expert's router embedding on a module is the top right-singular
//! vector of its `B·A` (the input direction its update amplifies most); scores are
//! `|u·v|/sqrt(d)/temperature` without standardising (`Scoring::Arrow`), then the
//! same top-k as PHATGOOSE.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use super::{Method, Pool};
use crate::model::{AdapterSet, LoraExpert, ModelError, Result, Scoring};

/// `goosepipe score`'s Arrow temperature: the manifest schema's default `routing arrow-temperature`.
pub const DEFAULT_TEMPERATURE: f64 = 10.0;

/// Power-iteration steps; B·A has rank <= r, so convergence is fast.
const ITERATIONS: usize = 200;

/// The top right-singular vector of `B·A`, by power iteration on (BA)ᵀ(BA) in f64.
/// Its sign is arbitrary, which is why Arrow scores absolute dot products.
pub fn arrow_vector(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    let d_in = a.dims()[1];
    // A deterministic start vector with no special direction.
    let init: Vec<f64> = (0..d_in)
        .map(|i| 1.0 + (i as f64 * 0.618_033_988_7).fract())
        .collect();
    let mut v = Tensor::from_vec(init, (d_in, 1), a.device())?;
    for _ in 0..ITERATIONS {
        let w = a.t()?.matmul(&b.t()?.matmul(&b.matmul(&a.matmul(&v)?)?)?)?;
        let norm = w.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        if norm == 0.0 {
            break;
        }
        v = (w / norm)?;
    }
    v.flatten_all()?.to_dtype(DType::F32)
}

/// The router embeddings per module: one row per expert that adapts it, in
/// expert-name order (`[N, d_in]` when every expert adapts every module).
pub fn embeddings(experts: &[LoraExpert]) -> Result<BTreeMap<String, Tensor>> {
    let sorted = crate::model::adapter::pool::sorted_by_name(experts)?;
    let mut emb = BTreeMap::new();
    for (module, members) in crate::model::adapter::pool::module_members(&sorted) {
        let rows = members
            .iter()
            .map(|&z| {
                let l = &sorted[z].modules[&module];
                Ok(arrow_vector(&l.a, &l.b)?)
            })
            .collect::<Result<Vec<_>>>()?;
        emb.insert(module, Tensor::stack(&rows, 0)?);
    }
    Ok(emb)
}

pub fn adapters(experts: &[LoraExpert], top_k: usize, temperature: f64) -> Result<AdapterSet> {
    AdapterSet::routed(
        experts,
        &embeddings(experts)?,
        Scoring::Arrow { temperature },
        top_k.min(experts.len()),
        DType::F32,
    )
}

pub struct Arrow;

impl Method for Arrow {
    fn name(&self) -> &'static str {
        "arrow"
    }
    fn routes_tokens(&self) -> bool {
        true
    }
    fn uses_temperature(&self) -> bool {
        true
    }
    fn adapters(&self, pool: &Pool) -> Result<AdapterSet> {
        let temperature = pool
            .arrow_temperature
            .ok_or_else(|| ModelError::Input("arrow: no temperature was given".into()))?;
        adapters(pool.experts, pool.top_k, temperature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn arrow_vector_is_the_top_right_singular_vector() {
        // B·A stretches e_2 by 3 and e_1 by 1.
        let a = Tensor::new(&[[0.0f32, 0.0, 3.0], [0.0, 1.0, 0.0]], &Device::Cpu).unwrap(); // [r=2, d_in=3]
        let b = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap(); // [d_out=2, r=2]
        let v = arrow_vector(&a, &b).unwrap().to_vec1::<f32>().unwrap();
        assert!(
            v[2].abs() > 0.999 && v[0].abs() < 1e-3 && v[1].abs() < 1e-3,
            "{v:?}"
        );
    }
}
