//! T5's RMSNorm `y = x · r · w`, `r = (mean(x²) + eps)^-1/2`, over the last
//! dimension, for a frozen weight `w`.
//!
//! The primitive-op version is six ops forward and, backward, a gradient for
//! every intermediate plus one for the weight (a full `[rows, d]` product and
//! a reduction) that a frozen base never reads. Fused backward, per row:
//! `dx = r (g∘w) - x r³ mean((g∘w)∘x)`.

use candle_core::{CpuStorage, CustomOp1, D, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{F32Data, cpu_f32, lane_dot, slice_of};

struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

/// `(mean(row²) + eps)^-1/2`.
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    1.0 / (lane_dot(row, row) / row.len() as f32 + eps).sqrt()
}

/// One row forward: `out = row · r · w`.
pub(crate) fn forward_row(out: &mut [f32], row: &[f32], w: &[f32], eps: f32) {
    let r = inv_rms(row, eps);
    for ((o, &xj), &wj) in out.iter_mut().zip(row).zip(w) {
        *o = xj * r * wj;
    }
}

/// One row backward: `out = r (g∘w) - x r³ mean((g∘w)∘x)`; `gw` is scratch of the
/// row's length.
pub(crate) fn backward_row(out: &mut [f32], row: &[f32], grow: &[f32], w: &[f32], eps: f32, gw: &mut [f32]) {
    for ((a, &gj), &wj) in gw.iter_mut().zip(grow).zip(w) {
        *a = gj * wj;
    }
    let r = inv_rms(row, eps);
    let c = r * r * r * lane_dot(gw, row) / row.len() as f32;
    for ((o, &a), &xj) in out.iter_mut().zip(gw.iter()).zip(row) {
        *o = r * a - xj * c;
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice_of::<f32>(s, l, self.name())?;
        let d = self.weight.len();
        if l.shape().dims().last() != Some(&d) {
            candle_core::bail!(
                "rms-norm: input {:?} does not end in the weight's size {d}",
                l.shape()
            );
        }
        let mut y = vec![0f32; x.len()];
        if d == 0 {
            return Ok((CpuStorage::F32(y), l.shape().clone()));
        }
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(out, row)| forward_row(out, row, &self.weight, self.eps));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let d = self.weight.len();
        let mut dx = vec![0f32; x.elem_count()];
        if d == 0 {
            return Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?));
        }
        let grad = grad.contiguous()?;
        let (xv, g) = (F32Data::of(x, self.name())?, F32Data::of(&grad, self.name())?);
        dx.par_chunks_mut(d)
            .zip(xv.par_chunks(d).zip(g.par_chunks(d)))
            .for_each_init(
                || vec![0f32; d],
                |gw, (out, (row, grow))| backward_row(out, row, grow, &self.weight, self.eps, gw),
            );
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// RMSNorm of `x` `[.., d]` by `weight` `[d]`. Fused when both are CPU f32 and
/// the weight is frozen (no gradient); the primitive composition otherwise.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if cpu_f32(x) && cpu_f32(weight) && !weight.track_op() && weight.rank() == 1 {
        let op = RmsNorm {
            weight: weight.to_vec1()?,
            eps: eps as f32,
        };
        x.contiguous()?.apply_op1(op)
    } else {
        composite(x, weight, eps)
    }
}

/// `x * rsqrt(mean(x²) + eps) * w`, computed in at least f32 like HF does, then
/// cast back to the input dtype before the weight.
pub fn composite(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let compute = match dtype {
        candle_core::DType::F64 => candle_core::DType::F64,
        _ => candle_core::DType::F32,
    };
    let xc = x.to_dtype(compute)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    let normed = xc.broadcast_mul(&inv)?.to_dtype(dtype)?;
    normed.broadcast_mul(weight)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{draw, gradient_gap, max_abs_diff};
    use super::*;
    use crate::rng::SeededRng;
    use candle_core::Var;

    #[test]
    fn equals_the_primitive_composition_in_value_and_input_gradient() {
        let d = 70;
        let mut rng = SeededRng::new(4);
        let x = Var::from_tensor(&draw(&mut rng, &[3, 3, d], 1.0)).unwrap();
        let w = draw(&mut rng, &[d], 1.0);
        let c = draw(&mut rng, &[3, 3, d], 1.0);
        let fused = rms_norm(x.as_tensor(), &w, 1e-6).unwrap();
        let reference = composite(x.as_tensor(), &w, 1e-6).unwrap();
        let diff = max_abs_diff(&fused, &reference);
        assert!(diff < 1e-5, "values differ by {diff}");
        let diff = gradient_gap(&fused, &reference, &c, &[&x]);
        assert!(diff < 1e-5, "gradients differ by {diff}");
    }
}
