//! Allocator tuning for tensor workloads. candle allocates a fresh buffer for
//! every op; with glibc's default dynamic mmap threshold, buffers of a few MB
//! are often mmapped and unmapped per op, and the page faults on first touch
//! cost more than the arithmetic (measured: a d256 T5 forward took 557 ms
//! instead of 121 ms). Keeping large blocks in the heap avoids that.

use std::sync::Once;

static TUNE: Once = Once::new();

/// Sets glibc's mmap threshold to its maximum (32 MiB on 64-bit; mallopt
/// rejects larger values) and the trim threshold to 1 GiB, once per process. Freed
/// tensor buffers are then reused instead of being returned to the OS and
/// faulted in again; resident memory stays near the peak working set. A no-op
/// on other C libraries. Called by every `T5Model` constructor.
pub fn tune_allocator_for_tensors() {
    TUNE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only adjusts allocator parameters; it is safe to call
        // at any time and takes the allocator's own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    });
}
