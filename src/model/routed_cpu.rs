//! CPU fast path of the routed mixture (inference only). The generic path in
//! `adapter.rs` issues about six candle ops per used expert, which dominates
//! at 100+ experts; this one gathers each expert's tokens into a buffer and
//! calls gemm directly, with experts processed in parallel. Work stays O(k)
//! per token. Used only for f32 CPU tensors that carry no autograd graph.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::fused::F32Data;
use super::fused::gemm::{Mat, gemm};

use super::error::Result;

/// `dst[m, n] = lhs[m, k] · rhs`, row-major f32, on the calling thread;
/// `rhs` is `[k, n]`, or `[n, k]` read transposed when `rhs_transposed`.
pub(super) fn gemm_f32(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    (m, n, k): (usize, usize, usize),
    rhs_transposed: bool,
) {
    let rhs = if rhs_transposed {
        Mat::new(rhs, n, k).t()
    } else {
        Mat::new(rhs, k, n)
    };
    gemm(dst, Mat::new(lhs, m, k), rhs, 1.0, false, false);
}

/// Whether the fast path applies to these tensors.
pub fn applicable(u: &Tensor, at: &Tensor) -> bool {
    matches!(u.device(), Device::Cpu) && u.dtype() == DType::F32 && at.dtype() == DType::F32 && !u.track_op()
}

/// Expert rows grouped by expert: `perm[offsets[z]..offsets[z+1]]` are the
/// token rows routed to expert z, `weights` the matching scaled weights.
pub struct Groups<'a> {
    pub perm: &'a [u32],
    pub weights: &'a [f64],
    pub offsets: &'a [usize],
}

/// `out[t] = sum over (t, z) pairs of w * u[t] At_z Bt_z`, `u` `[n, d_in]`,
/// `at` `[N, d_in, r]`, `bt` `[N, r, d_out]`.
pub fn routed_delta(u: &Tensor, at: &Tensor, bt: &Tensor, g: &Groups<'_>) -> Result<Tensor> {
    let u = u.contiguous()?;
    let (n, d_in) = u.dims2()?;
    let (n_exp, _, r) = at.dims3()?;
    let d_out = bt.dims3()?.2;
    let name = "routed-lora";
    let (us, ats, bts) = (
        F32Data::of(&u, name)?,
        F32Data::of(at, name)?,
        F32Data::of(bt, name)?,
    );
    let used: Vec<usize> = (0..n_exp).filter(|&z| g.offsets[z + 1] > g.offsets[z]).collect();
    let parts: Vec<(usize, Vec<f32>)> = used
        .par_iter()
        .map(|&z| {
            let (lo, hi) = (g.offsets[z], g.offsets[z + 1]);
            let m = hi - lo;
            let mut x = vec![0f32; m * d_in];
            for (i, &t) in g.perm[lo..hi].iter().enumerate() {
                let t = t as usize;
                x[i * d_in..(i + 1) * d_in].copy_from_slice(&us[t * d_in..(t + 1) * d_in]);
            }
            let a = &ats[z * d_in * r..(z + 1) * d_in * r];
            let b = &bts[z * r * d_out..(z + 1) * r * d_out];
            let mut h = vec![0f32; m * r];
            gemm_f32(&mut h, &x, a, (m, r, d_in), false);
            for (i, &w) in g.weights[lo..hi].iter().enumerate() {
                for v in &mut h[i * r..(i + 1) * r] {
                    *v *= w as f32;
                }
            }
            let mut y = vec![0f32; m * d_out];
            gemm_f32(&mut y, &h, b, (m, d_out, r), false);
            (z, y)
        })
        .collect();
    let mut out = vec![0f32; n * d_out];
    for (z, y) in parts {
        for (i, &t) in g.perm[g.offsets[z]..g.offsets[z + 1]].iter().enumerate() {
            let t = t as usize;
            for (o, v) in out[t * d_out..(t + 1) * d_out]
                .iter_mut()
                .zip(&y[i * d_out..(i + 1) * d_out])
            {
                *o += v;
            }
        }
    }
    Ok(Tensor::from_vec(out, (n, d_out), &Device::Cpu)?)
}
