//! T5 feed-forward block: `wo(act(wi x))` or, gated, `wo(act(wi_0 x) * wi_1 x)`.

use candle_core::Tensor;

use super::config::FeedForward;
use crate::model::adapter::{AdapterCtx, Linear};
use crate::model::error::Result;

#[derive(Debug, Clone)]
pub enum Ffn {
    Single {
        wi: Linear,
        wo: Linear,
        kind: FeedForward,
    },
    Gated {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
        kind: FeedForward,
    },
}

fn activate(x: &Tensor, kind: FeedForward) -> Result<Tensor> {
    Ok(match kind {
        FeedForward::Relu | FeedForward::GatedRelu => x.relu()?,
        FeedForward::Gelu => x.gelu_erf()?,
        FeedForward::GatedGelu => crate::kernels::fused::gated_gelu::gelu_new(x)?,
        FeedForward::Silu | FeedForward::GatedSilu => x.silu()?,
    })
}

impl Ffn {
    pub fn forward(&self, x: &Tensor, ctx: AdapterCtx<'_>) -> Result<Tensor> {
        match self {
            Ffn::Single { wi, wo, kind } => {
                let h = super::dropout::maybe(ctx.dropout, activate(&wi.forward(x, ctx)?, *kind)?)?;
                wo.forward(&h, ctx)
            }
            Ffn::Gated { wi_0, wi_1, wo, kind } => {
                let (a, b) = (wi_0.forward(x, ctx)?, wi_1.forward(x, ctx)?);
                let h = match kind {
                    FeedForward::GatedGelu => crate::kernels::fused::gated_gelu::gated_gelu(&a, &b)?,
                    _ => (activate(&a, *kind)? * b)?,
                };
                let h = super::dropout::maybe(ctx.dropout, h)?;
                wo.forward(&h, ctx)
            }
        }
    }
}
