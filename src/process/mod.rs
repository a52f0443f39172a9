//! Process-wide tuning for tensor work: the allocator's settings (freed pages
//! are kept) and the thread counts, pinned once by `main` before any tensor
//! work starts. The lowest layer: anything may use it, it uses nothing of ours.

pub mod alloc;
pub mod contain;
pub mod numerics;
pub mod threads;
