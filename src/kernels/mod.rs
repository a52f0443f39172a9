//! CPU kernels behind the model: fused f32 ops with hand-written backward
//! passes (`fused`), the frozen-weight matmul (`frozen_matmul`), the
//! per-token router's CPU path with its int8 screen (`router`) and the O(k)
//! routed LoRA (`routed_lora`). The x86 SIMD and AMX code lives in each
//! kernel's `avx512`/`amx` submodule, entered only through that kernel's
//! module after a runtime feature check, and every `unsafe` block says why
//! it is sound. Each kernel has a primitive-op fallback (other devices,
//! dtypes, CPUs) that its tests compare against. Uses `process` (threads)
//! and nothing above it.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod frozen_matmul;
pub mod fused;
pub mod routed_lora;
pub mod router;
