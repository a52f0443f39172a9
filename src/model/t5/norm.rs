//! T5 layer norm (RMSNorm without mean subtraction or bias). candle's fused
//! `ops::rms_norm` has no backward pass, so this is our own fused op with a
//! hand-written backward (`fused::rms_norm`), or its primitive-op composition
//! where the fused op does not apply.

use candle_core::Tensor;

use crate::model::error::Result;

/// `x * rsqrt(mean(x^2) + eps) * w`, computed in at least f32 like HF does,
/// then cast back to the input dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(crate::kernels::fused::rms_norm::rms_norm(x, weight, eps)?)
}
