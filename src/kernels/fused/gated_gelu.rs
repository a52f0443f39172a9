//! The gated-GELU FFN's hidden `gelu_new(a) ∘ b` (T5.1.1: `a = wi_0 x`,
//! `b = wi_1 x`), with `gelu_new(a) = a σ(k (a + 0.044715 a³))`,
//! `k = 2 sqrt(2/π)` (HF's tanh form, rewritten with the sigmoid).
//!
//! The primitive-op version is nine ops forward over `[tokens, d_ff]` and a
//! gradient, zero-filled accumulator and add for each backward. Fused:
//! forward one pass; backward one pass writing both
//! `da = g b gelu'(a)` and `db = g gelu(a)`.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{F32Data, cpu_f32, fast_exp, slice_of};

const K: f32 = 1.595_769_2; // 2 sqrt(2/π)
const C: f32 = 0.044_715;

/// `(gelu_new(a), d gelu_new / da)`.
#[inline(always)]
pub(crate) fn gelu_and_slope(a: f32) -> (f32, f32) {
    let a2 = a * a;
    let u = K * a * (1.0 + C * a2);
    let s = 1.0 / (1.0 + fast_exp::exp(-u));
    let du = K * (1.0 + 3.0 * C * a2);
    (a * s, s + a * s * (1.0 - s) * du)
}

/// Rows per parallel task: long enough that rayon's split costs nothing.
const CHUNK: usize = 16 * 1024;

struct GatedGelu;

impl CustomOp2 for GatedGelu {
    fn name(&self) -> &'static str {
        "gated-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("gated-gelu: shapes {:?} and {:?} differ", l1.shape(), l2.shape());
        }
        let a = slice_of::<f32>(s1, l1, self.name())?;
        let b = slice_of::<f32>(s2, l2, self.name())?;
        let mut h = vec![0f32; a.len()];
        h.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(out, (a, b))| {
                for ((o, &aj), &bj) in out.iter_mut().zip(a).zip(b) {
                    *o = gelu_and_slope(aj).0 * bj;
                }
            });
        Ok((CpuStorage::F32(h), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _h: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let n = a.elem_count();
        let (mut da, mut db) = (vec![0f32; n], vec![0f32; n]);
        let grad = grad.contiguous()?;
        let name = self.name();
        let (av, bv, g) = (
            F32Data::of(a, name)?,
            F32Data::of(b, name)?,
            F32Data::of(&grad, name)?,
        );
        da.par_chunks_mut(CHUNK)
            .zip(db.par_chunks_mut(CHUNK))
            .zip(
                av.par_chunks(CHUNK)
                    .zip(bv.par_chunks(CHUNK))
                    .zip(g.par_chunks(CHUNK)),
            )
            .for_each(|((da, db), ((a, b), g))| {
                for i in 0..a.len() {
                    let (gelu, slope) = gelu_and_slope(a[i]);
                    da[i] = g[i] * b[i] * slope;
                    db[i] = g[i] * gelu;
                }
            });
        let da = a
            .track_op()
            .then(|| Tensor::from_vec(da, a.shape(), a.device()))
            .transpose()?;
        let db = b
            .track_op()
            .then(|| Tensor::from_vec(db, b.shape(), b.device()))
            .transpose()?;
        Ok((da, db))
    }
}

/// `gelu_new(a) ∘ b` for same-shaped `a` and `b`. Fused on CPU f32; the
/// primitive composition otherwise.
pub fn gated_gelu(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if cpu_f32(a) && cpu_f32(b) && a.shape() == b.shape() {
        a.contiguous()?.apply_op2(&b.contiguous()?, GatedGelu)
    } else {
        composite(a, b)
    }
}

/// HF's `gelu_new` times the gate, in primitive ops.
pub fn composite(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    gelu_new(a)?.mul(b)
}

/// HF's `gelu_new`, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, written
/// as the identical `x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))`: candle's
/// fused `gelu` calls a scalar `tanh` per element, slower than these exp-based
/// primitive ops (which also carry the backward pass; benches/README.md).
pub fn gelu_new(x: &Tensor) -> candle_core::Result<Tensor> {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner = ((x.sqr()? * 0.044715)? + 1.0)?.mul(x)?;
    let sig = ((inner * (-2.0 * c))?.exp()? + 1.0)?.recip()?;
    x.mul(&sig)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{draw, gradient_gap, max_abs_diff};
    use super::*;
    use crate::rng::SeededRng;
    use candle_core::Var;

    #[test]
    fn equals_the_primitive_composition_in_value_and_both_gradients() {
        let mut rng = SeededRng::new(8);
        let dims = [3, 40_000];
        let a = Var::from_tensor(&draw(&mut rng, &dims, 3.0)).unwrap();
        let b = Var::from_tensor(&draw(&mut rng, &dims, 1.0)).unwrap();
        let c = draw(&mut rng, &dims, 1.0);
        let fused = gated_gelu(a.as_tensor(), b.as_tensor()).unwrap();
        let reference = composite(a.as_tensor(), b.as_tensor()).unwrap();
        assert!(max_abs_diff(&fused, &reference) < 1e-5);
        let d = gradient_gap(&fused, &reference, &c, &[&a, &b]);
        assert!(d < 1e-5, "gradients differ by {d}");
    }
}
