//! Fused CPU kernels, each with a hand-written backward pass, for the
//! elementwise and row-wise parts of a T5 training step.
//!
//! Written with candle's primitive ops, the loss's log-softmax over a 32k
//! vocabulary, every RMSNorm, every attention softmax and every gated-GELU are
//! chains of five to ten ops, each a full pass over its tensor with a fresh
//! buffer; candle's backward then adds, per op, the gradient, a zero-filled
//! accumulator and an add (and computes gradients for frozen operands such as
//! norm weights and attention biases that nothing reads). PyTorch runs these
//! as one fused kernel each. Here each is one custom op whose forward is one
//! or two passes and whose backward is one pass and returns gradients only for
//! operands that need them.
//!
//! Every op runs on CPU f32 tensors; on other devices and dtypes, or when a
//! frozen operand does need a gradient, the caller falls back to the
//! primitive-op composition (`composite` functions), which is also the
//! reference the tests compare against. Rows are processed in parallel, each
//! row by one thread in a fixed order, so results do not depend on the thread
//! count.

pub mod cross_entropy;
pub mod fast_exp;
pub mod gated_gelu;
pub mod gemm;
pub mod lora_linear;
pub mod rms_norm;
pub mod softmax;
#[cfg(test)]
pub(crate) mod test_support;

use std::ops::{Deref, Range};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Storage, StorageRef, Tensor, WithDType};

/// The contiguous data of a custom op's operand, of element type `T`.
fn slice_of<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [T]> {
    let Ok(v) = s.as_slice::<T>() else {
        candle_core::bail!("{op}: expected {:?} data, got {:?}", T::DTYPE, s.dtype())
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => candle_core::bail!("{op}: operand is not contiguous"),
    }
}

/// The f32 data of a contiguous CPU tensor, read in place (the tensor's storage
/// stays read-locked while the view lives): how backward passes and the
/// routed CPU paths read their tensors.
pub(crate) struct F32Data<'a> {
    storage: StorageRef<'a>,
    range: Range<usize>,
}

impl<'a> F32Data<'a> {
    pub(crate) fn of(t: &'a Tensor, op: &str) -> candle_core::Result<Self> {
        let (storage, layout) = t.storage_and_layout();
        if !matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))) {
            candle_core::bail!(
                "{op}: expected an f32 CPU tensor, got {:?} on {:?}",
                t.dtype(),
                t.device()
            )
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{op}: tensor is not contiguous")
        };
        Ok(F32Data {
            storage,
            range: start..end,
        })
    }
}

impl Deref for F32Data<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.clone()],
            // `of` accepted only f32 CPU storage, and the read lock keeps it so.
            _ => unreachable!("F32Data holds f32 CPU storage"),
        }
    }
}

/// Whether the fused kernels apply to `t`: an f32 tensor on the CPU.
fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Sum with 16 independent accumulators: vectorises, and rounds better than
/// one running sum over a 32k-wide row.
fn lane_sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for k in 0..16 {
            acc[k] += c[k];
        }
    }
    for (k, &x) in chunks.remainder().iter().enumerate() {
        acc[k] += x;
    }
    acc.iter().sum()
}

/// `Σ a·b` with 16 independent accumulators (see `lane_sum`).
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..16 {
            acc[k] += x[k] * y[k];
        }
    }
    for (k, (&x, &y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[k] += x * y;
    }
    acc.iter().sum()
}

/// Largest element of a non-empty row (NaN-propagating like candle's max).
fn row_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = xs.chunks_exact(16);
    let mut nan = false;
    for c in &mut chunks {
        for k in 0..16 {
            nan |= c[k].is_nan();
            acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
        }
    }
    for (k, &x) in chunks.remainder().iter().enumerate() {
        nan |= x.is_nan();
        acc[k] = if x > acc[k] { x } else { acc[k] };
    }
    if nan {
        f32::NAN
    } else {
        acc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
    }
}
