//! The attention core on slices, every head read in place from the
//! `[tokens, heads·d_kv]` projections (no split or merge of heads):
//! `P = softmax(Q Kᵀ + bias)`, `ctx = P V`, and its backward
//! `dP = dctx Vᵀ`, `dS = P ∘ (dP - Σ P∘dP)`, `dQ = dS K`, `dK = dSᵀ Q`,
//! `dV = Pᵀ dctx`. Examples of a batch are independent, so they are the unit of
//! parallel work when a batch is large enough to pay for the hand-off.

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
    fn inner(&self) -> usize {
        self.heads * self.d_kv
    }

    /// Worth splitting over examples (the work of a batch, in multiply-adds).
    fn parallel(&self) -> bool {
        rayon::current_num_threads() > 1
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

/// Forward: `q` `[B·T, inner]`, `k`, `v` `[B·S, inner]`; writes the
/// probabilities `p` `[B, H, T, S]` and `ctx` `[B·T, inner]`.
pub(super) fn forward(d: Dims, q: &[f32], k: &[f32], v: &[f32], bias: &Bias, p: &mut [f32], ctx: &mut [f32]) {
    let (t, s, dk, inner) = (d.q_len, d.k_len, d.d_kv, d.inner());
    let one = |b: usize, p_b: &mut [f32], ctx_b: &mut [f32]| {
        let (q_b, k_b, v_b) = (&q[b * t * inner..], &k[b * s * inner..], &v[b * s * inner..]);
        for h in 0..d.heads {
            let p_bh = &mut p_b[h * t * s..][..t * s];
            let (qm, km, vm) = (
                Mat::strided(&q_b[h * dk..], t, dk, inner),
                Mat::strided(&k_b[h * dk..], s, dk, inner),
                Mat::strided(&v_b[h * dk..], s, dk, inner),
            );
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

/// Backward from `dctx` `[B·T, inner]`: writes `dq` `[B·T, inner]`, `dk` and
/// `dv` `[B·S, inner]`.
pub(super) fn backward(
    d: Dims,
    (q, k, v): (&[f32], &[f32], &[f32]),
    p: &[f32],
    dctx: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (t, s, dkv, inner) = (d.q_len, d.k_len, d.d_kv, d.inner());
    let one = |b: usize, dq_b: &mut [f32], dk_b: &mut [f32], dv_b: &mut [f32]| {
        let (q_b, k_b, v_b) = (&q[b * t * inner..], &k[b * s * inner..], &v[b * s * inner..]);
        let dctx_b = &dctx[b * t * inner..];
        let (mut dp, mut ds) = (vec![0f32; t * s], vec![0f32; t * s]);
        for h in 0..d.heads {
            let p_bh = &p[(b * d.heads + h) * t * s..][..t * s];
            let (qm, km, vm, gm) = (
                Mat::strided(&q_b[h * dkv..], t, dkv, inner),
                Mat::strided(&k_b[h * dkv..], s, dkv, inner),
                Mat::strided(&v_b[h * dkv..], s, dkv, inner),
                Mat::strided(&dctx_b[h * dkv..], t, dkv, inner),
            );
            let pm = Mat::new(p_bh, t, s);
            gemm(&mut dp, gm, vm.t(), 1.0, false, false);
            for ((out, prow), grow) in ds.chunks_mut(s).zip(p_bh.chunks(s)).zip(dp.chunks(s)) {
                backward_row(out, prow, grow);
            }
            let dsm = Mat::new(&ds, t, s);
            gemm_strided(&mut dv_b[h * dkv..], inner, pm.t(), gm, 1.0, false, false);
            gemm_strided(&mut dq_b[h * dkv..], inner, dsm, km, 1.0, false, false);
            gemm_strided(&mut dk_b[h * dkv..], inner, dsm.t(), qm, 1.0, false, false);
        }
    };
    let (q_len, k_len) = (t * inner, s * inner);
    if d.parallel() {
        dq.par_chunks_mut(q_len)
            .zip(dk.par_chunks_mut(k_len).zip(dv.par_chunks_mut(k_len)))
            .enumerate()
            .for_each(|(b, (dq_b, (dk_b, dv_b)))| one(b, dq_b, dk_b, dv_b));
    } else {
        let chunks = dq
            .chunks_mut(q_len)
            .zip(dk.chunks_mut(k_len).zip(dv.chunks_mut(k_len)));
        for (b, (dq_b, (dk_b, dv_b))) in chunks.enumerate() {
            one(b, dq_b, dk_b, dv_b);
        }
    }
}
