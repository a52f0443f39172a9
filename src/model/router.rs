//! Per-token routing among N experts at one linear layer: score every expert
//! against the layer input, softmax over all N, keep the top k, renormalise.

use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};
pub use crate::kernels::router::Routing;
use crate::kernels::router::{CpuRouter, LN_EPS, RENORM_EPS, ScoreFn};
use crate::process::numerics::Vectors;

/// How a token activation `u` is scored against an expert embedding `v`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Scoring {
    /// PHATGOOSE and average activation: `LN(u)·LN(v)/sqrt(d)` with LN a
    /// LayerNorm without affine (eps 1e-5, biased variance).
    Standardized,
    /// Arrow: `|u·v| / sqrt(d) / temperature`, no normalisation.
    Arrow { temperature: f64 },
}

/// LayerNorm without affine over the last dimension, in f32 or f64.
pub fn standardize(x: &Tensor) -> Result<Tensor> {
    let x = match x.dtype() {
        DType::F64 => x.clone(),
        _ => x.to_dtype(DType::F32)?,
    };
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centered.broadcast_div(&(var + LN_EPS)?.sqrt()?)?)
}

/// The router of one module: N expert embeddings, prepared once.
#[derive(Debug, Clone)]
pub struct Router {
    /// `[d, N]`, standardised for `Scoring::Standardized`, f32 or f64.
    embeddings_t: Tensor,
    scoring: Scoring,
    top_k: usize,
    d: usize,
    n: usize,
    /// The same router for f32 inputs on the CPU (see `kernels::router`).
    cpu: Option<CpuRouter>,
}

impl Router {
    /// `embeddings`: `[N, d]`, row z is expert z's vector (experts sorted by name
    /// by the caller, so that index order breaks ties). The CPU path uses this build's
    /// vector kernels ([`Vectors::of_build`]).
    pub fn new(module: &str, embeddings: &Tensor, scoring: Scoring, top_k: usize) -> Result<Self> {
        Self::with_vectors(module, embeddings, scoring, top_k, Vectors::of_build())
    }

    /// [`Router::new`] with the CPU path's vector kernels chosen: [`Vectors::Avx512`]
    /// screens many experts in int8 where the CPU has AVX-512 VNNI, whatever the build
    /// (how the tests reach the screen in a default build).
    pub fn with_vectors(
        module: &str,
        embeddings: &Tensor,
        scoring: Scoring,
        top_k: usize,
        vectors: Vectors,
    ) -> Result<Self> {
        let (n, d) = embeddings.dims2().map_err(|_| {
            ModelError::adapter(
                module,
                format!("router embeddings must be [N, d], got {:?}", embeddings.dims()),
            )
        })?;
        if n == 0 {
            return Err(ModelError::adapter(module, "router has no experts"));
        }
        if d == 0 {
            return Err(ModelError::adapter(
                module,
                "router embeddings are empty (width 0)",
            ));
        }
        if top_k == 0 {
            return Err(ModelError::adapter(module, "top_k must be at least 1"));
        }
        if let Scoring::Arrow { temperature } = scoring
            && (temperature.is_nan() || temperature <= 0.0)
        {
            return Err(ModelError::adapter(module, "arrow temperature must be positive"));
        }
        let top_k = top_k.min(n);
        let e = match embeddings.dtype() {
            DType::F64 => embeddings.clone(),
            _ => embeddings.to_dtype(DType::F32)?,
        };
        let e = match scoring {
            Scoring::Standardized => standardize(&e)?,
            Scoring::Arrow { .. } => e,
        };
        let cpu = match (e.dtype(), e.device()) {
            (DType::F32, candle_core::Device::Cpu) => {
                let (score_fn, temperature) = match scoring {
                    Scoring::Standardized => (ScoreFn::Standardized, 1.0),
                    Scoring::Arrow { temperature } => (ScoreFn::Absolute, temperature),
                };
                let w = e.flatten_all()?.to_vec1::<f32>()?;
                let scale = 1.0 / (d as f64).sqrt() / temperature;
                Some(CpuRouter::new(w, (n, d), top_k, (score_fn, scale), vectors))
            }
            _ => None,
        };
        Ok(Router {
            embeddings_t: e.t()?.contiguous()?,
            cpu,
            scoring,
            top_k,
            d,
            n,
        })
    }

    pub fn num_experts(&self) -> usize {
        self.n
    }

    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// Softmax probabilities over all experts, `[n_tokens, N]`, from inputs `[n_tokens, d]`.
    pub fn probabilities(&self, u: &Tensor) -> Result<Tensor> {
        let u = u.to_dtype(self.embeddings_t.dtype())?;
        let scale = 1.0 / (self.d as f64).sqrt();
        let scores = match self.scoring {
            Scoring::Standardized => (standardize(&u)?.matmul(&self.embeddings_t)? * scale)?,
            Scoring::Arrow { temperature } => (u.matmul(&self.embeddings_t)?.abs()? * (scale / temperature))?,
        };
        Ok(candle_nn::ops::softmax(&scores, D::Minus1)?)
    }

    /// Top-k experts per token with renormalised weights
    /// `w = p / (sum of kept p + 1e-6)`. Ties go to the lower index.
    pub fn route(&self, u: &Tensor) -> Result<Routing> {
        if let Some(cpu) = &self.cpu
            && matches!(u.device(), candle_core::Device::Cpu)
            && u.dtype() == DType::F32
        {
            let (n_tok, d) = u.dims2()?;
            if d != self.d {
                return Err(ModelError::Input(format!(
                    "router input has width {d}, its experts {}",
                    self.d
                )));
            }
            let u = u.contiguous()?;
            return Ok(cpu.route(&crate::kernels::fused::F32Data::of(&u, "router")?, n_tok));
        }
        self.route_generic(u)
    }

    /// Whether f32 CPU routing screens scores in int8 first (AVX-512 VNNI and
    /// enough experts).
    pub fn screens(&self) -> bool {
        self.cpu.as_ref().is_some_and(CpuRouter::screens)
    }

    /// [`Router::route`] through candle ops, on any device and dtype: the
    /// reference the CPU path is tested against.
    pub fn route_generic(&self, u: &Tensor) -> Result<Routing> {
        let probs = self.probabilities(u)?.to_dtype(DType::F64)?;
        let rows: Vec<Vec<f64>> = probs.to_vec2()?;
        let k = self.top_k;
        let mut experts = Vec::with_capacity(rows.len() * k);
        let mut weights = Vec::with_capacity(rows.len() * k);
        let mut kept: Vec<u32> = Vec::with_capacity(k + 1);
        for p in &rows {
            // O(N*k) selection: insert each expert into the sorted kept list only
            // if it beats an entry strictly, so the lower index wins ties.
            kept.clear();
            for z in 0..self.n {
                let pz = p[z];
                let pos = kept
                    .iter()
                    .position(|&j| pz > p[j as usize])
                    .unwrap_or(kept.len());
                if pos < k {
                    kept.insert(pos, z as u32);
                    kept.truncate(k);
                }
            }
            let total: f64 = kept.iter().map(|&z| p[z as usize]).sum();
            for &z in &kept {
                experts.push(z);
                weights.push(p[z as usize] / (total + RENORM_EPS));
            }
        }
        Ok(Routing { k, experts, weights })
    }
}
