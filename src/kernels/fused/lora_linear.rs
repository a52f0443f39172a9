//! A frozen linear with one trainable LoRA, `y = u Wᵀ + s (u Aᵀ) Bᵀ`, as one op.
//!
//! In primitive ops this is a frozen product, two LoRA products, a scale and an
//! add forward; backward, candle adds a zero-filled accumulator and an add for
//! the output of each branch and for `u`, which both branches read, and
//! transposes the LoRA gradients. Fused, the LoRA product accumulates into the
//! frozen product's output (gemm with `dst +=`), and backward writes
//! `du = g W + s (g B) A` the same way, `dA = s (g B)ᵀ u` and `dB = s gᵀ (u Aᵀ)`,
//! each only for the operands that need a gradient.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::gemm::{Mat, gemm};
use super::{F32Data, cpu_f32, slice_of};

/// `wt` is `Wᵀ` (`[d_in, d_out]`, the layout `Linear` keeps); operands are
/// `u` `[n, d_in]`, `A` `[r, d_in]`, `B` `[d_out, r]`.
struct LoraLinear {
    wt: Tensor,
    scale: f32,
}

impl LoraLinear {
    fn dims(&self, u: &Shape, a: &Shape, b: &Shape) -> candle_core::Result<(usize, usize, usize, usize)> {
        let (n, d_in) = u.dims2()?;
        let (r, a_in) = a.dims2()?;
        let (d_out, b_r) = b.dims2()?;
        let (w_in, w_out) = self.wt.dims2()?;
        if a_in != d_in || w_in != d_in || b_r != r || w_out != d_out {
            candle_core::bail!(
                "lora-linear: shapes u {u:?}, A {a:?}, B {b:?}, Wᵀ {:?} do not fit",
                self.wt.shape()
            );
        }
        Ok((n, d_in, r, d_out))
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        su: &CpuStorage,
        lu: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d_in, r, d_out) = self.dims(lu.shape(), la.shape(), lb.shape())?;
        let (u, a, b) = (
            slice_of::<f32>(su, lu, self.name())?,
            slice_of::<f32>(sa, la, self.name())?,
            slice_of::<f32>(sb, lb, self.name())?,
        );
        let mut h = vec![0f32; n * r];
        gemm(
            &mut h,
            Mat::new(u, n, d_in),
            Mat::new(a, r, d_in).t(),
            self.scale,
            false,
            true,
        );
        let mut y = vec![0f32; n * d_out];
        let wt = F32Data::of(&self.wt, self.name())?;
        gemm(
            &mut y,
            Mat::new(u, n, d_in),
            Mat::new(&wt, d_in, d_out),
            1.0,
            false,
            true,
        );
        gemm(
            &mut y,
            Mat::new(&h, n, r),
            Mat::new(b, d_out, r).t(),
            1.0,
            true,
            true,
        );
        Ok((CpuStorage::F32(y), Shape::from((n, d_out))))
    }

    fn bwd(
        &self,
        u: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, d_in, r, d_out) = self.dims(u.shape(), a.shape(), b.shape())?;
        let dev = u.device();
        let name = self.name();
        let grad = grad.contiguous()?;
        let (uv, av, bv) = (
            F32Data::of(u, name)?,
            F32Data::of(a, name)?,
            F32Data::of(b, name)?,
        );
        let g = F32Data::of(&grad, name)?;
        let (um, am, bm, gm) = (
            Mat::new(&uv, n, d_in),
            Mat::new(&av, r, d_in),
            Mat::new(&bv, d_out, r),
            Mat::new(&g, n, d_out),
        );
        // gh = s g B, [n, r]: the gradient at the LoRA bottleneck.
        let mut gh = vec![0f32; n * r];
        gemm(&mut gh, gm, bm, self.scale, false, true);
        let ghm = Mat::new(&gh, n, r);
        let du = if u.track_op() {
            let mut du = vec![0f32; n * d_in];
            let wt = F32Data::of(&self.wt, name)?;
            gemm(&mut du, gm, Mat::new(&wt, d_in, d_out).t(), 1.0, false, true);
            gemm(&mut du, ghm, am, 1.0, true, true);
            Some(Tensor::from_vec(du, (n, d_in), dev)?)
        } else {
            None
        };
        let da = if a.track_op() {
            let mut da = vec![0f32; r * d_in];
            gemm(&mut da, ghm.t(), um, 1.0, false, true);
            Some(Tensor::from_vec(da, (r, d_in), dev)?)
        } else {
            None
        };
        let db = if b.track_op() {
            let mut h = vec![0f32; n * r];
            gemm(&mut h, um, am.t(), self.scale, false, true);
            let mut db = vec![0f32; d_out * r];
            gemm(&mut db, gm.t(), Mat::new(&h, n, r), 1.0, false, true);
            Some(Tensor::from_vec(db, (d_out, r), dev)?)
        } else {
            None
        };
        Ok((du, da, db))
    }
}

/// `u Wᵀ + scale (u Aᵀ) Bᵀ` for `u` `[n, d_in]`, a frozen `wt = Wᵀ`
/// `[d_in, d_out]`, `a` `[r, d_in]` and `b` `[d_out, r]`. Fused when all are
/// CPU f32 and `wt` is frozen; `None` otherwise (the caller composes it).
pub fn lora_linear(
    u: &Tensor,
    wt: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> candle_core::Result<Option<Tensor>> {
    let fits = [u, wt, a, b].iter().all(|t| cpu_f32(t) && t.rank() == 2) && !wt.track_op();
    if !fits {
        return Ok(None);
    }
    let op = LoraLinear {
        wt: wt.contiguous()?,
        scale: scale as f32,
    };
    Ok(Some(u.contiguous()?.apply_op3(
        &a.contiguous()?,
        &b.contiguous()?,
        op,
    )?))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{draw, gradient_gap, max_abs_diff};
    use super::*;
    use crate::rng::SeededRng;
    use candle_core::Var;

    #[test]
    fn equals_frozen_product_plus_lora_in_value_and_every_gradient() {
        let (n, d_in, r, d_out) = (37, 24, 4, 19);
        let mut rng = SeededRng::new(9);
        let (wt, c) = (
            draw(&mut rng, &[d_in, d_out], 1.0),
            draw(&mut rng, &[n, d_out], 1.0),
        );
        let u = Var::from_tensor(&draw(&mut rng, &[n, d_in], 1.0)).unwrap();
        let a = Var::from_tensor(&draw(&mut rng, &[r, d_in], 1.0)).unwrap();
        let b = Var::from_tensor(&draw(&mut rng, &[d_out, r], 1.0)).unwrap();
        let fused = lora_linear(&u, &wt, &a, &b, 0.25)
            .unwrap()
            .expect("fused on CPU f32");
        let lora = (u.matmul(&a.t().unwrap()).unwrap() * 0.25).unwrap();
        let reference = (u.matmul(&wt).unwrap() + lora.matmul(&b.t().unwrap()).unwrap()).unwrap();
        assert!(max_abs_diff(&fused, &reference) < 1e-4);
        let d = gradient_gap(&fused, &reference, &c, &[&u, &a, &b]);
        assert!(d < 1e-4, "gradients differ by {d}");
        let grads = fused.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&wt).is_none(), "no gradient for the frozen weight");
    }
}
