//! T5 layer norm (RMSNorm without mean subtraction or bias), written with
//! primitive ops because candle's fused `ops::rms_norm` has no backward pass.

use candle_core::{D, DType, Tensor};

use super::error::Result;

/// `x * rsqrt(mean(x^2) + eps) * w`, computed in at least f32 like HF does,
/// then cast back to the input dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let compute = match dtype {
        DType::F64 => DType::F64,
        _ => DType::F32,
    };
    let xc = x.to_dtype(compute)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    let normed = xc.broadcast_mul(&inv)?.to_dtype(dtype)?;
    Ok(normed.broadcast_mul(weight)?)
}
