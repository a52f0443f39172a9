//! The T5 block's sublayers (attention with its projections, the gated-GELU
//! feed-forward), each a forward that keeps what its backward reads and a
//! backward from the sublayer output's gradient. Linears that share an input
//! run as one group (`linear.rs`).

use super::attention::{self, Bias, Dims, Layout};
use super::linear::{GroupOut, LinearGroup, LoraGrad};
use crate::kernels::fused::gated_gelu::gelu_and_slope;

/// One attention of a block. Self-attention: `q` is the q, k, v group and
/// `kv` is None. Cross-attention: `q` alone, `kv` the k, v group over the
/// encoder output.
pub(super) struct AttentionView<'m> {
    pub q: LinearGroup<'m>,
    pub kv: Option<LinearGroup<'m>>,
    pub o: LinearGroup<'m>,
}

/// What an attention sublayer's backward reads.
pub(super) struct AttentionCache {
    q: GroupOut,
    kv: Option<GroupOut>,
    p: Vec<f32>,
    ctx: Vec<f32>,
    o: GroupOut,
}

impl AttentionView<'_> {
    /// Where q, k and v sit in the q group's and the kv group's outputs.
    fn layouts(&self, inner: usize) -> (Layout, Layout) {
        match &self.kv {
            None => {
                let l = Layout {
                    stride: 3 * inner,
                    q: 0,
                    k: inner,
                    v: 2 * inner,
                };
                (l, l)
            }
            Some(_) => (
                Layout {
                    stride: inner,
                    q: 0,
                    k: 0,
                    v: 0,
                },
                Layout {
                    stride: 2 * inner,
                    q: 0,
                    k: 0,
                    v: inner,
                },
            ),
        }
    }

    /// Attention of queries from `x` over keys and values from `enc` (None:
    /// self-attention over `x`); returns the sublayer output `[B·T, d_model]`.
    pub fn forward(
        &self,
        x: &[f32],
        enc: Option<&[f32]>,
        d: Dims,
        bias: &Bias,
    ) -> (AttentionCache, Vec<f32>) {
        let (nq, nk) = (d.batch * d.q_len, d.batch * d.k_len);
        let (lq, lkv) = self.layouts(d.inner());
        let q = self.q.forward(x, nq);
        let kv = match (&self.kv, enc) {
            (Some(group), Some(enc)) => Some(group.forward(enc, nk)),
            _ => None,
        };
        let kv_y = kv.as_ref().map_or(&q.y, |o| &o.y);
        let mut p = vec![0f32; d.batch * d.heads * d.q_len * d.k_len];
        let mut ctx = vec![0f32; nq * d.inner()];
        attention::forward(d, (&q.y, lq), (kv_y, lkv), bias, &mut p, &mut ctx);
        let mut o = self.o.forward(&ctx, nq);
        let out = std::mem::take(&mut o.y);
        (AttentionCache { q, kv, p, ctx, o }, out)
    }

    /// From the output's gradient `g`: the gradient of `x` written to `dx` (not
    /// computed when None), and for cross-attention that of `enc` added to `denc`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        c: &AttentionCache,
        x: &[f32],
        enc: Option<&[f32]>,
        d: Dims,
        g: &[f32],
        dx: Option<&mut [f32]>,
        denc: Option<&mut [f32]>,
        grads: &mut [LoraGrad],
    ) {
        let (nq, nk, inner) = (d.batch * d.q_len, d.batch * d.k_len, d.inner());
        let (lq, lkv) = self.layouts(inner);
        let dctx = self.o.input_grad(g, nq);
        self.o.lora_grads(&c.ctx, &c.o, g, nq, grads);
        let kv_y = c.kv.as_ref().map_or(&c.q.y, |o| &o.y);
        let mut dq = vec![0f32; nq * self.q.d_out()];
        let mut dkv = self.kv.as_ref().map(|group| vec![0f32; nk * group.d_out()]);
        attention::backward(
            d,
            (&c.q.y, lq),
            (kv_y, lkv),
            &c.p,
            &dctx,
            &mut dq,
            dkv.as_deref_mut(),
        );
        if let Some(dx) = dx {
            self.q.input_grad_into(&dq, nq, dx, false);
        }
        self.q.lora_grads(x, &c.q, &dq, nq, grads);
        if let (Some(group), Some(out), Some(dkv), Some(enc)) = (&self.kv, &c.kv, &dkv, enc) {
            if let Some(denc) = denc {
                group.input_grad_into(dkv, nk, denc, true);
            }
            group.lora_grads(enc, out, dkv, nk, grads);
        }
    }
}

/// The gated-GELU feed-forward `wo(gelu_new(wi_0 x) ∘ wi_1 x)`; `wi` is the
/// wi_0, wi_1 group.
pub(super) struct FeedForwardView<'m> {
    pub wi: LinearGroup<'m>,
    pub wo: LinearGroup<'m>,
}

pub(super) struct FeedForwardCache {
    ab: GroupOut,
    hid: Vec<f32>,
    wo: GroupOut,
}

impl FeedForwardView<'_> {
    pub fn forward(&self, x: &[f32], n: usize) -> (FeedForwardCache, Vec<f32>) {
        let ab = self.wi.forward(x, n);
        let ff = self.wi.d_out() / 2;
        let mut hid = Vec::with_capacity(n * ff);
        for row in ab.y.chunks(2 * ff) {
            let (a, b) = row.split_at(ff);
            hid.extend(a.iter().zip(b).map(|(&aj, &bj)| gelu_and_slope(aj).0 * bj));
        }
        let mut wo = self.wo.forward(&hid, n);
        let out = std::mem::take(&mut wo.y);
        (FeedForwardCache { ab, hid, wo }, out)
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
        let ff = self.wi.d_out() / 2;
        let dhid = self.wo.input_grad(g, n);
        self.wo.lora_grads(&c.hid, &c.wo, g, n, grads);
        let mut dab = vec![0f32; c.ab.y.len()];
        for ((drow, row), grow) in dab
            .chunks_mut(2 * ff)
            .zip(c.ab.y.chunks(2 * ff))
            .zip(dhid.chunks(ff))
        {
            let (da, db) = drow.split_at_mut(ff);
            let (a, b) = row.split_at(ff);
            for ((da, db), ((&g, &a), &b)) in da.iter_mut().zip(db.iter_mut()).zip(grow.iter().zip(a).zip(b))
            {
                let (gelu, slope) = gelu_and_slope(a);
                *da = g * b * slope;
                *db = g * gelu;
            }
        }
        self.wi.input_grad_into(&dab, n, dx, false);
        self.wi.lora_grads(x, &c.ab, &dab, n, grads);
    }
}
