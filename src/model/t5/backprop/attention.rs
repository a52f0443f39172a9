//! The attention core on slices, every head read in place from the
//! projections (no split or merge of heads; q, k and v may sit side by side in
//! one `[tokens, 3·inner]` output): `P = softmax(Q Kᵀ + bias)`, `ctx = P V`, and
//! its backward `dP = dctx Vᵀ`, `dS = P ∘ (dP - Σ P∘dP)`, `dQ = dS K`,
//! `dK = dSᵀ Q`, `dV = Pᵀ dctx`. Examples of a batch are independent, so they
//! are the unit of parallel work when a batch is large enough to pay for the
//! hand-off.

use rayon::prelude::*;

use crate::kernels::fused::gemm::{Mat, gemm, gemm_strided};
use crate::kernels::fused::softmax::{backward_row, softmax_in_place};

/// Batch, heads, head width, query and key lengths.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub d_kv: usize,
    pub q_len: usize,
    pub k_len: usize,
}

impl Dims {
    pub fn inner(&self) -> usize {
        self.heads * self.d_kv
    }

    /// Worth splitting over examples (the work of a batch, in multiply-adds).
    fn parallel(&self) -> bool {
        super::spare_threads()
            && self.batch > 1
            && self.batch * self.heads * self.q_len * self.k_len * self.d_kv >= super::linear::PARALLEL_MACS
    }
}

/// The additive bias of the scores (relative positions and masks), rows of
/// `k_len` addressed by strides: the row of (example, head, query) starts at
/// `b·batch + h·head + i·row`; a stride of 0 broadcasts.
pub(super) struct Bias {
    pub data: Vec<f32>,
    pub batch: usize,
    pub head: usize,
    pub row: usize,
}

impl Bias {
    fn row(&self, b: usize, h: usize, i: usize, k_len: usize) -> &[f32] {
        &self.data[b * self.batch + h * self.head + i * self.row..][..k_len]
    }
}

/// Where q, k and v (or their gradients) sit in a projection's output: the
/// row stride and each one's first column.
#[derive(Clone, Copy)]
pub(super) struct Layout {
    pub stride: usize,
    pub q: usize,
    pub k: usize,
    pub v: usize,
}

/// One head's `[rows, d_kv]` block of example `b`, starting at column `col`.
fn head<'a>(data: &'a [f32], stride: usize, rows: usize, b: usize, col: usize, d_kv: usize) -> Mat<'a> {
    Mat::strided(&data[b * rows * stride + col..], rows, d_kv, stride)
}

/// Forward: queries from `q` (laid out by `lq`), keys and values from `kv` (by
/// `lkv`); writes the probabilities `p` `[B, H, T, S]` and `ctx` `[B·T, inner]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    d: Dims,
    (q, lq): (&[f32], Layout),
    (kv, lkv): (&[f32], Layout),
    bias: &Bias,
    p: &mut [f32],
    ctx: &mut [f32],
) {
    let (t, s, dk, inner) = (d.q_len, d.k_len, d.d_kv, d.inner());
    let one = |b: usize, p_b: &mut [f32], ctx_b: &mut [f32]| {
        for h in 0..d.heads {
            let p_bh = &mut p_b[h * t * s..][..t * s];
            let qm = head(q, lq.stride, t, b, lq.q + h * dk, dk);
            let km = head(kv, lkv.stride, s, b, lkv.k + h * dk, dk);
            let vm = head(kv, lkv.stride, s, b, lkv.v + h * dk, dk);
            gemm(p_bh, qm, km.t(), 1.0, false, false);
            for (i, row) in p_bh.chunks_mut(s).enumerate() {
                for (x, &c) in row.iter_mut().zip(bias.row(b, h, i, s)) {
                    *x += c;
                }
                softmax_in_place(row);
            }
            gemm_strided(
                &mut ctx_b[h * dk..],
                inner,
                Mat::new(p_bh, t, s),
                vm,
                1.0,
                false,
                false,
            );
        }
    };
    let (p_len, ctx_len) = (d.heads * t * s, t * inner);
    if d.parallel() {
        p.par_chunks_mut(p_len)
            .zip(ctx.par_chunks_mut(ctx_len))
            .enumerate()
            .for_each(|(b, (p_b, ctx_b))| one(b, p_b, ctx_b));
    } else {
        for (b, (p_b, ctx_b)) in p.chunks_mut(p_len).zip(ctx.chunks_mut(ctx_len)).enumerate() {
            one(b, p_b, ctx_b);
        }
    }
}

/// Backward from `dctx` `[B·T, inner]`: writes `dq` into `dq_out` (laid out by
/// `lq`), `dk` and `dv` into `dkv_out` (by `lkv`), or into `dq_out` too when
/// that is None (self-attention: q, k and v of the same rows side by side).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    d: Dims,
    (q, lq): (&[f32], Layout),
    (kv, lkv): (&[f32], Layout),
    p: &[f32],
    dctx: &[f32],
    dq_out: &mut [f32],
    dkv_out: Option<&mut [f32]>,
) {
    let (t, s, dkv, inner) = (d.q_len, d.k_len, d.d_kv, d.inner());
    let one = |b: usize, dq_b: &mut [f32], mut dkv_b: Option<&mut [f32]>| {
        let (mut dp, mut ds) = (vec![0f32; t * s], vec![0f32; t * s]);
        for h in 0..d.heads {
            let p_bh = &p[(b * d.heads + h) * t * s..][..t * s];
            let qm = head(q, lq.stride, t, b, lq.q + h * dkv, dkv);
            let km = head(kv, lkv.stride, s, b, lkv.k + h * dkv, dkv);
            let vm = head(kv, lkv.stride, s, b, lkv.v + h * dkv, dkv);
            let gm = head(dctx, inner, t, b, h * dkv, dkv);
            let pm = Mat::new(p_bh, t, s);
            gemm(&mut dp, gm, vm.t(), 1.0, false, false);
            for ((out, prow), grow) in ds.chunks_mut(s).zip(p_bh.chunks(s)).zip(dp.chunks(s)) {
                backward_row(out, prow, grow);
            }
            let dsm = Mat::new(&ds, t, s);
            gemm_strided(&mut dq_b[lq.q + h * dkv..], lq.stride, dsm, km, 1.0, false, false);
            let target = match dkv_b.as_deref_mut() {
                Some(x) => x,
                None => &mut *dq_b,
            };
            gemm_strided(
                &mut target[lkv.v + h * dkv..],
                lkv.stride,
                pm.t(),
                gm,
                1.0,
                false,
                false,
            );
            gemm_strided(
                &mut target[lkv.k + h * dkv..],
                lkv.stride,
                dsm.t(),
                qm,
                1.0,
                false,
                false,
            );
        }
    };
    let (q_len, k_len) = (t * lq.stride, s * lkv.stride);
    match (dkv_out, d.parallel()) {
        (Some(dkv_out), true) => dq_out
            .par_chunks_mut(q_len)
            .zip(dkv_out.par_chunks_mut(k_len))
            .enumerate()
            .for_each(|(b, (dq_b, dkv_b))| one(b, dq_b, Some(dkv_b))),
        (Some(dkv_out), false) => {
            for (b, (dq_b, dkv_b)) in dq_out
                .chunks_mut(q_len)
                .zip(dkv_out.chunks_mut(k_len))
                .enumerate()
            {
                one(b, dq_b, Some(dkv_b));
            }
        }
        (None, true) => dq_out
            .par_chunks_mut(q_len)
            .enumerate()
            .for_each(|(b, dq_b)| one(b, dq_b, None)),
        (None, false) => {
            for (b, dq_b) in dq_out.chunks_mut(q_len).enumerate() {
                one(b, dq_b, None);
            }
        }
    }
}
