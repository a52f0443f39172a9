//! Attention's `softmax(scores + bias)` over the last dimension, for a bias
//! that needs no gradient (relative positions and masks).
//!
//! The primitive-op version is an add and five softmax ops forward (max,
//! subtract, exp, sum, divide), and backward a gradient for each plus one for
//! the bias that nothing reads. Fused: forward one pass per row into the
//! output; backward `ds = p ∘ (g - Σ p∘g)` from the saved probabilities.

use candle_core::{CpuStorage, CustomOp1, D, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{F32Data, cpu_f32, fast_exp, lane_dot, lane_sum, row_max, slice_of};

/// One row: `out = softmax(row + brow)`.
fn forward_row(out: &mut [f32], row: &[f32], brow: &[f32]) {
    for ((o, &xj), &bj) in out.iter_mut().zip(row).zip(brow) {
        *o = xj + bj;
    }
    softmax_in_place(out);
}

/// `x = softmax(x)`, max-shifted.
pub(crate) fn softmax_in_place(x: &mut [f32]) {
    let m = row_max(x);
    for o in x.iter_mut() {
        *o = fast_exp::exp(*o - m);
    }
    let inv = 1.0 / lane_sum(x);
    for o in x.iter_mut() {
        *o *= inv;
    }
}

/// One row backward from the saved probabilities: `out = p ∘ (g - Σ p∘g)`.
pub(crate) fn backward_row(out: &mut [f32], prow: &[f32], grow: &[f32]) {
    let dot = lane_dot(prow, grow);
    for ((o, &pj), &gj) in out.iter_mut().zip(prow).zip(grow) {
        *o = pj * (gj - dot);
    }
}

/// `bias` is broadcast to the scores' shape; rows are addressed through its
/// strides, so a `[1, H, T, S]` position bias or a `[B, 1, 1, S]` mask is never
/// materialised at `[B, H, T, S]`.
struct BiasedSoftmax {
    bias: Tensor,
}

impl CustomOp1 for BiasedSoftmax {
    fn name(&self) -> &'static str {
        "biased-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice_of::<f32>(s, l, self.name())?;
        let shape = l.shape().clone();
        let dims = shape.dims();
        let Some(&n) = dims.last() else {
            candle_core::bail!("biased-softmax: scalar input")
        };
        let bias = self.bias.broadcast_as(shape.clone())?;
        let (bs, bl) = bias.storage_and_layout();
        let candle_core::Storage::Cpu(bs) = &*bs else {
            candle_core::bail!("biased-softmax: bias is not on the CPU")
        };
        let candle_core::CpuStorage::F32(b) = bs else {
            candle_core::bail!("biased-softmax: bias is not f32")
        };
        let strides = bl.stride();
        if n > 1 && strides[dims.len() - 1] != 1 {
            candle_core::bail!("biased-softmax: bias rows are not contiguous");
        }
        let start = bl.start_offset();
        // Offset of row `i` (all dims but the last, row-major) in the bias.
        let row_offset = |mut i: usize| -> usize {
            let mut off = start;
            for k in (0..dims.len() - 1).rev() {
                off += (i % dims[k]) * strides[k];
                i /= dims[k];
            }
            off
        };
        let mut y = vec![0f32; x.len()];
        if n > 0 {
            y.par_chunks_mut(n)
                .zip(x.par_chunks(n))
                .enumerate()
                .for_each(|(i, (out, row))| {
                    forward_row(out, row, &b[row_offset(i)..][..n]);
                });
        }
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, _x: &Tensor, p: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let n = p.dim(D::Minus1)?;
        let mut ds = vec![0f32; p.elem_count()];
        if n > 0 {
            let grad = grad.contiguous()?;
            let (pv, g) = (F32Data::of(p, self.name())?, F32Data::of(&grad, self.name())?);
            ds.par_chunks_mut(n)
                .zip(pv.par_chunks(n).zip(g.par_chunks(n)))
                .for_each(|(out, (prow, grow))| backward_row(out, prow, grow));
        }
        Ok(Some(Tensor::from_vec(ds, p.shape(), p.device())?))
    }
}

/// `softmax(scores + bias)` over the last dimension; `bias` broadcasts to the
/// scores' shape. Fused for CPU f32 with a frozen bias; the primitive
/// composition otherwise.
pub fn biased_softmax(scores: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    // The kernel reads bias rows in place: the bias must broadcast to the
    // scores' shape (not the other way) and be contiguous along the last dim.
    let rows_readable = bias.broadcast_as(scores.shape()).is_ok_and(|b| {
        let n = scores.dims().last().copied().unwrap_or(0);
        n <= 1 || b.stride().last() == Some(&1)
    });
    if cpu_f32(scores) && cpu_f32(bias) && !bias.track_op() && rows_readable {
        scores
            .contiguous()?
            .apply_op1(BiasedSoftmax { bias: bias.clone() })
    } else {
        composite(scores, bias)
    }
}

/// `ops::softmax(scores + bias)` (not `softmax_last_dim`, which has no backward).
pub fn composite(scores: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::softmax(&scores.broadcast_add(bias)?, D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{draw, gradient_gap, max_abs_diff};
    use super::*;
    use crate::rng::SeededRng;
    use candle_core::{Device, Var};

    #[test]
    fn equals_the_primitive_composition_for_every_bias_broadcast() {
        let mut rng = SeededRng::new(6);
        let dims = [2, 3, 5, 19];
        let mut mask = vec![0f32; 2 * 19];
        mask[3] = -1e9;
        mask[19 + 18] = f32::MIN;
        let biases = [
            draw(&mut rng, &[1, 3, 5, 19], 3.0),
            Tensor::from_vec(mask, (2, 1, 1, 19), &Device::Cpu).unwrap(),
            draw(&mut rng, &dims, 3.0),
            draw(&mut rng, &[5, 19], 3.0),
            // Broadcast along the last dimension, and a transposed view: the
            // composition handles these.
            draw(&mut rng, &[2, 3, 5, 1], 3.0),
            draw(&mut rng, &[19, 5], 3.0).t().unwrap(),
        ];
        for bias in &biases {
            let x = Var::from_tensor(&draw(&mut rng, &dims, 3.0)).unwrap();
            let c = draw(&mut rng, &dims, 3.0);
            let fused = biased_softmax(x.as_tensor(), bias).unwrap();
            let reference = composite(x.as_tensor(), bias).unwrap();
            let diff = max_abs_diff(&fused, &reference);
            assert!(diff < 1e-6, "values differ by {diff} for bias {:?}", bias.dims());
            let diff = gradient_gap(&fused, &reference, &c, &[&x]);
            assert!(
                diff < 1e-5,
                "gradients differ by {diff} for bias {:?}",
                bias.dims()
            );
        }
    }
}
