//! T5 multi-head attention: no 1/sqrt(d_kv) scaling (folded into the weights
//! by T5's initialisation), an additive bias that carries the relative
//! positions and masks, and a softmax in at least f32.

use candle_core::{DType, Tensor};

use crate::kernels::fused::softmax::biased_softmax;
use crate::model::adapter::{AdapterCtx, Linear};
use crate::model::error::Result;

#[derive(Debug, Clone)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub heads: usize,
    pub d_kv: usize,
}

impl Attention {
    /// `[B, T, H*dk]` -> `[B, H, T, dk]`, contiguous for the batched matmuls.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        Ok(x.reshape((b, t, self.heads, self.d_kv))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Keys and values `[B, H, S, dk]` of `kv_input` `[B, S, d_model]`.
    pub fn key_values(&self, kv_input: &Tensor, ctx: AdapterCtx<'_>) -> Result<(Tensor, Tensor)> {
        let k = self.split_heads(&self.k.forward(kv_input, ctx)?)?;
        let v = self.split_heads(&self.v.forward(kv_input, ctx)?)?;
        Ok((k, v))
    }

    /// Attention of queries from `x` `[B, T, d_model]` over the given keys and
    /// values; `bias` broadcasts to `[B, H, T, S]`.
    pub fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        ctx: AdapterCtx<'_>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let q = self.split_heads(&self.q.forward(x, ctx)?)?;
        let scores = q.matmul(&k.t()?.contiguous()?)?;
        let dtype = scores.dtype();
        let compute = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let probs = biased_softmax(&scores.to_dtype(compute)?, &bias.to_dtype(compute)?)?.to_dtype(dtype)?;
        let probs = super::dropout::maybe(ctx.dropout, probs)?;
        let ctx_vec = probs.matmul(v)?; // [B, H, T, dk]
        let merged = ctx_vec.transpose(1, 2)?.reshape((b, t, self.heads * self.d_kv))?;
        self.o.forward(&merged, ctx)
    }
}
