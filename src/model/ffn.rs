//! T5 feed-forward block: `wo(act(wi x))` or, gated, `wo(act(wi_0 x) * wi_1 x)`.

use candle_core::Tensor;

use super::adapter::{AdapterCtx, Linear};
use super::config::FeedForward;
use super::error::Result;

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
        FeedForward::GatedGelu => gelu_new(x)?,
        FeedForward::Silu | FeedForward::GatedSilu => x.silu()?,
    })
}

/// HF's `gelu_new`, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, written
/// as the identical `x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))`: candle's
/// fused `gelu` calls a scalar `tanh` per element and was 1.7x slower than
/// these exp-based primitive ops (which also carry the backward pass).
pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner = ((x.sqr()? * 0.044715)? + 1.0)?.mul(x)?;
    let sig = ((inner * (-2.0 * c))?.exp()? + 1.0)?.recip()?;
    Ok(x.mul(&sig)?)
}

impl Ffn {
    pub fn forward(&self, x: &Tensor, ctx: AdapterCtx<'_>) -> Result<Tensor> {
        match self {
            Ffn::Single { wi, wo, kind } => {
                let h = super::dropout::maybe(ctx.dropout, activate(&wi.forward(x, ctx)?, *kind)?)?;
                wo.forward(&h, ctx)
            }
            Ffn::Gated { wi_0, wi_1, wo, kind } => {
                let h = (activate(&wi_0.forward(x, ctx)?, *kind)? * wi_1.forward(x, ctx)?)?;
                let h = super::dropout::maybe(ctx.dropout, h)?;
                wo.forward(&h, ctx)
            }
        }
    }
}
