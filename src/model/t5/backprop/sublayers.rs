//! The T5 block's sublayers (attention with its four projections, the
//! gated-GELU feed-forward), each a forward that keeps what its backward reads
//! and a backward from the sublayer output's gradient.

use super::attention::{self, Bias, Dims};
use super::linear::{LinearOut, LinearView, LoraGrad};
use crate::kernels::fused::gated_gelu::gelu_and_slope;

/// One attention of a block: projections and shape.
pub(super) struct AttentionView<'m> {
    pub q: LinearView<'m>,
    pub k: LinearView<'m>,
    pub v: LinearView<'m>,
    pub o: LinearView<'m>,
}

/// What an attention sublayer's backward reads.
pub(super) struct AttentionCache {
    q: LinearOut,
    k: LinearOut,
    v: LinearOut,
    p: Vec<f32>,
    ctx: Vec<f32>,
    o: LinearOut,
}

impl AttentionView<'_> {
    /// Attention of queries from `x` over keys and values from `kv` (`x` itself
    /// for self-attention); returns the sublayer output `[B·T, d_model]`.
    pub fn forward(&self, x: &[f32], kv: &[f32], d: Dims, bias: &Bias) -> (AttentionCache, Vec<f32>) {
        let (nq, nk) = (d.batch * d.q_len, d.batch * d.k_len);
        let q = self.q.forward(x, nq);
        let k = self.k.forward(kv, nk);
        let v = self.v.forward(kv, nk);
        let mut p = vec![0f32; d.batch * d.heads * d.q_len * d.k_len];
        let mut ctx = vec![0f32; nq * d.heads * d.d_kv];
        attention::forward(d, &q.y, &k.y, &v.y, bias, &mut p, &mut ctx);
        let mut o = self.o.forward(&ctx, nq);
        let out = std::mem::take(&mut o.y);
        (AttentionCache { q, k, v, p, ctx, o }, out)
    }

    /// From the output's gradient `g`: the gradient of `x` written to `dx` (not
    /// computed when None), and that of `kv` added to `dkv` (None: self-attention,
    /// `kv` is `x`, and its gradient joins `dx`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        c: &AttentionCache,
        x: &[f32],
        kv: &[f32],
        d: Dims,
        g: &[f32],
        mut dx: Option<&mut [f32]>,
        dkv: Option<&mut [f32]>,
        grads: &mut [LoraGrad],
    ) {
        let (nq, nk, inner) = (d.batch * d.q_len, d.batch * d.k_len, d.heads * d.d_kv);
        let mut dctx = vec![0f32; nq * inner];
        self.o
            .backward(&c.ctx, &c.o, g, nq, Some(&mut dctx), false, grads);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; nq * inner],
            vec![0f32; nk * inner],
            vec![0f32; nk * inner],
        );
        attention::backward(
            d,
            (&c.q.y, &c.k.y, &c.v.y),
            &c.p,
            &dctx,
            &mut dq,
            &mut dk,
            &mut dv,
        );
        self.q.backward(x, &c.q, &dq, nq, dx.as_deref_mut(), false, grads);
        let mut dkv = match dkv {
            Some(dkv) => Some(dkv),
            None => dx,
        };
        self.k
            .backward(kv, &c.k, &dk, nk, dkv.as_deref_mut(), true, grads);
        self.v.backward(kv, &c.v, &dv, nk, dkv, true, grads);
    }
}

/// The gated-GELU feed-forward `wo(gelu_new(wi_0 x) ∘ wi_1 x)`.
pub(super) struct FeedForwardView<'m> {
    pub wi_0: LinearView<'m>,
    pub wi_1: LinearView<'m>,
    pub wo: LinearView<'m>,
}

pub(super) struct FeedForwardCache {
    a: LinearOut,
    b: LinearOut,
    hid: Vec<f32>,
    wo: LinearOut,
}

impl FeedForwardView<'_> {
    pub fn forward(&self, x: &[f32], n: usize) -> (FeedForwardCache, Vec<f32>) {
        let a = self.wi_0.forward(x, n);
        let b = self.wi_1.forward(x, n);
        let hid: Vec<f32> =
            a.y.iter()
                .zip(&b.y)
                .map(|(&aj, &bj)| gelu_and_slope(aj).0 * bj)
                .collect();
        let mut wo = self.wo.forward(&hid, n);
        let out = std::mem::take(&mut wo.y);
        (FeedForwardCache { a, b, hid, wo }, out)
    }

    /// The gradient of `x` written to `dx`.
    pub fn backward(
        &self,
        c: &FeedForwardCache,
        x: &[f32],
        n: usize,
        g: &[f32],
        dx: &mut [f32],
        grads: &mut [LoraGrad],
    ) {
        let mut dhid = vec![0f32; c.hid.len()];
        self.wo
            .backward(&c.hid, &c.wo, g, n, Some(&mut dhid), false, grads);
        let (mut da, mut db) = (vec![0f32; dhid.len()], vec![0f32; dhid.len()]);
        let grads_in = da.iter_mut().zip(db.iter_mut());
        for ((da, db), ((&g, &a), &b)) in grads_in.zip(dhid.iter().zip(&c.a.y).zip(&c.b.y)) {
            let (gelu, slope) = gelu_and_slope(a);
            *da = g * b * slope;
            *db = g * gelu;
        }
        self.wi_0.backward(x, &c.a, &da, n, Some(dx), false, grads);
        self.wi_1.backward(x, &c.b, &db, n, Some(dx), true, grads);
    }
}
