//! The model's tensors read in place as f32 slices, and the test of whether
//! the hand-written pass applies: CPU f32, the gated-GELU feed-forward, only
//! plain LoRA adapters, no dropout, no routing log or activation tap.

use candle_core::{DType, Tensor};

use super::linear::{LinearGroup, LoraView, Member};
use super::sublayers::{AttentionView, FeedForwardView};
use crate::kernels::fused::F32Data;
use crate::model::adapter::{AdapterSet, Linear, ModuleAdapter};
use crate::model::t5::attention::Attention;
use crate::model::t5::config::FeedForward;
use crate::model::t5::ffn::Ffn;
use crate::model::t5::{Stack, T5Model};

/// A trainable LoRA the pass computes gradients for: its module and shape.
pub(super) struct Slot {
    pub module: String,
    pub rank: usize,
    pub d_in: usize,
    pub d_out: usize,
}

pub(super) struct BlockView<'m> {
    pub self_attn: AttentionView<'m>,
    pub self_norm: F32Data<'m>,
    pub cross: Option<(AttentionView<'m>, F32Data<'m>)>,
    pub ffn: FeedForwardView<'m>,
    pub ffn_norm: F32Data<'m>,
}

pub(super) struct StackView<'m> {
    pub blocks: Vec<BlockView<'m>>,
    pub final_norm: F32Data<'m>,
}

pub(super) struct ModelView<'m> {
    pub shared: F32Data<'m>,
    pub head_t: F32Data<'m>,
    pub encoder: StackView<'m>,
    pub decoder: StackView<'m>,
    pub slots: Vec<Slot>,
}

/// Reads `t` in place when it is a contiguous CPU f32 tensor.
fn data(t: &Tensor) -> Option<F32Data<'_>> {
    F32Data::of(t, "lora-pass").ok()
}

struct Builder<'m> {
    adapters: &'m AdapterSet,
    slots: Vec<Slot>,
}

impl<'m> Builder<'m> {
    fn member(&mut self, lin: &'m Linear) -> Option<Member<'m>> {
        let (d_in, d_out) = (lin.d_in(), lin.d_out());
        let lora = match self.adapters.get(&lin.name) {
            None => None,
            Some(ModuleAdapter::Lora(l)) => {
                self.slots.push(Slot {
                    module: lin.name.clone(),
                    rank: l.rank(),
                    d_in,
                    d_out,
                });
                Some(LoraView {
                    a: data(&l.a)?,
                    b: data(&l.b)?,
                    rank: l.rank(),
                    slot: self.slots.len() - 1,
                })
            }
            Some(_) => return None,
        };
        Some(Member {
            wt: data(lin.wt())?,
            d_out,
            lora,
        })
    }

    /// The linears, which all read the same input, as one group.
    fn group(&mut self, lins: &[&'m Linear]) -> Option<LinearGroup<'m>> {
        let d_in = lins.first()?.d_in();
        if lins.iter().any(|l| l.d_in() != d_in) {
            return None;
        }
        let members = lins.iter().map(|l| self.member(l)).collect::<Option<Vec<_>>>()?;
        Some(LinearGroup::new(d_in, members))
    }

    fn attention(&mut self, a: &'m Attention, cross: bool) -> Option<AttentionView<'m>> {
        let (q, kv) = if cross {
            (self.group(&[&a.q])?, Some(self.group(&[&a.k, &a.v])?))
        } else {
            (self.group(&[&a.q, &a.k, &a.v])?, None)
        };
        Some(AttentionView {
            q,
            kv,
            o: self.group(&[&a.o])?,
        })
    }

    fn stack(&mut self, s: &'m Stack) -> Option<StackView<'m>> {
        let mut blocks = Vec::with_capacity(s.blocks.len());
        for b in &s.blocks {
            let Ffn::Gated {
                wi_0,
                wi_1,
                wo,
                kind: FeedForward::GatedGelu,
            } = &b.ffn
            else {
                return None;
            };
            let cross = match &b.cross {
                Some((attn, norm)) => Some((self.attention(attn, true)?, data(norm)?)),
                None => None,
            };
            blocks.push(BlockView {
                self_attn: self.attention(&b.self_attn, false)?,
                self_norm: data(&b.self_norm)?,
                cross,
                ffn: FeedForwardView {
                    wi: self.group(&[wi_0, wi_1])?,
                    wo: self.group(&[wo])?,
                },
                ffn_norm: data(&b.ffn_norm)?,
            });
        }
        Some(StackView {
            blocks,
            final_norm: data(&s.final_norm)?,
        })
    }
}

impl<'m> ModelView<'m> {
    /// The model read in place, or None where the pass does not apply (the
    /// caller then runs candle's autograd, which covers every case).
    pub fn of(model: &'m T5Model) -> Option<Self> {
        let applies = model.device.is_cpu()
            && model.dtype == DType::F32
            && model.dropout.as_ref().is_none_or(|d| d.rate() == 0.0)
            && model.routing_log.is_none()
            && model.tap.is_none()
            && model.encoder.rel_bias.is_some()
            && model.decoder.rel_bias.is_some()
            && !model.adapters.is_empty();
        if !applies {
            return None;
        }
        let mut b = Builder {
            adapters: &model.adapters,
            slots: Vec::new(),
        };
        let (encoder, decoder) = (b.stack(&model.encoder)?, b.stack(&model.decoder)?);
        let (shared, head_t) = (data(&model.shared)?, data(&model.head_t)?);
        // Every attached adapter must be one the pass saw (all of them are LoRA on
        // some linear of the model: set_adapters checks the names).
        if b.slots.len() != model.adapters.len() {
            return None;
        }
        Some(ModelView {
            shared,
            head_t,
            encoder,
            decoder,
            slots: b.slots,
        })
    }
}
