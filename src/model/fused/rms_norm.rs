//! T5's RMSNorm `y = x · r · w`, `r = (mean(x²) + eps)^-1/2`, over the last
//! dimension, for a frozen weight `w`.
//!
//! The primitive-op version is six ops forward and, backward, a gradient for
//! every intermediate plus one for the weight (a full `[rows, d]` product and
//! a reduction) that a frozen base never reads. Fused backward, per row:
//! `dx = r (g∘w) - x r³ mean((g∘w)∘x)`.

use candle_core::{CpuStorage, CustomOp1, D, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, f32_slice, lane_dot, with_f32};

struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    fn inv_rms(&self, row: &[f32]) -> f32 {
        1.0 / (lane_dot(row, row) / row.len() as f32 + self.eps).sqrt()
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
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
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(out, row)| {
            let r = self.inv_rms(row);
            for ((o, &xj), &wj) in out.iter_mut().zip(row).zip(&self.weight) {
                *o = xj * r * wj;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let d = self.weight.len();
        let mut dx = vec![0f32; x.elem_count()];
        if d == 0 {
            return Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?));
        }
        with_f32(x, self.name(), |x| {
            with_f32(grad, self.name(), |g| {
                dx.par_chunks_mut(d)
                    .zip(x.par_chunks(d).zip(g.par_chunks(d)))
                    .for_each_init(
                        || vec![0f32; d],
                        |gw, (out, (row, grow))| {
                            for ((a, &gj), &wj) in gw.iter_mut().zip(grow).zip(&self.weight) {
                                *a = gj * wj;
                            }
                            let r = self.inv_rms(row);
                            let c = r * r * r * lane_dot(gw, row) / d as f32;
                            for ((o, &a), &xj) in out.iter_mut().zip(gw.iter()).zip(row) {
                                *o = r * a - xj * c;
                            }
                        },
                    );
                Ok(())
            })
        })?;
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
    use super::*;
    use crate::model::rng::SeededRng;
    use candle_core::{Device, Var};

    #[test]
    fn equals_the_primitive_composition_in_value_and_input_gradient() {
        let (rows, d) = (9, 70);
        let mut rng = SeededRng::new(4);
        let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.standard_normal() as f32).collect() };
        let x0 = Tensor::from_vec(draw(rows * d), (3, 3, d), &Device::Cpu).unwrap();
        let w = Tensor::from_vec(draw(d), d, &Device::Cpu).unwrap();
        let c = Tensor::from_vec(draw(rows * d), (3, 3, d), &Device::Cpu).unwrap();
        let x = Var::from_tensor(&x0).unwrap();
        let fused = rms_norm(x.as_tensor(), &w, 1e-6).unwrap();
        let reference = composite(x.as_tensor(), &w, 1e-6).unwrap();
        let diff = (&fused - &reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "values differ by {diff}");
        let gf = (fused * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (reference * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let (gf, gr) = (gf.get(x.as_tensor()).unwrap(), gr.get(x.as_tensor()).unwrap());
        let diff = (gf - gr)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "gradients differ by {diff}");
    }
}
