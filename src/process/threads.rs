//! Thread settings for candle's CPU backend, fixed once at start-up.
//!
//! - candle asks for its thread count on every matmul. Unless `RAYON_NUM_THREADS`
//!   is set, that call counts physical cores by parsing /proc/cpuinfo again
//!   (num_cpus), a measurable share of a small training step.
//! - candle runs its elementwise ops on a second pool (`candle-bp-*` threads)
//!   whose idle workers spin after each op, next to the rayon pool that runs
//!   gemm: on 2 cores that spin took CPU time from gemm, so the elementwise ops
//!   run on the calling thread (`CANDLE_NUM_THREADS=1`; measurements in
//!   benches/README.md, "Allocator and threads"). The heavy row-wise work
//!   (norms, softmaxes, the loss, activations) is in `kernels::fused`, which runs
//!   on the same rayon pool as gemm, so what is left on the caller is light.

/// Sets `CANDLE_NUM_THREADS` to 1 unless it is set, and `RAYON_NUM_THREADS` to
/// the number candle would compute itself (physical cores) when neither it nor
/// candle's own `CANDLE_CPU_MASK` is set and the CPUs are uniform (on
/// heterogeneous CPUs candle picks the fast cores and caches that answer, so
/// there is nothing to fix). The rayon pool that runs candle's gemm reads the
/// same variable, so both agree.
///
/// # Safety
/// Writes the process environment: call it before any other thread starts
/// (first thing in `main`).
pub unsafe fn pin_thread_count() {
    let set = |k: &str| std::env::var_os(k).is_some();
    if !set("CANDLE_NUM_THREADS") {
        // SAFETY: the caller guarantees no other thread is running.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    if set("RAYON_NUM_THREADS") || set("CANDLE_CPU_MASK") || heterogeneous() {
        return;
    }
    let n = num_cpus::get_physical().max(1);
    // SAFETY: as above.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
}

/// Whether the CPUs' `cpu_capacity` differ by more than 10 % (candle's test for
/// big.LITTLE-style CPUs, where it uses the fast cores).
fn heterogeneous() -> bool {
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu") else {
        return false;
    };
    let caps: Vec<u64> = dir
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("cpu"))
                .is_some_and(|i| i.parse::<usize>().is_ok())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("cpu_capacity")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    match (caps.iter().min(), caps.iter().max()) {
        (Some(&min), Some(&max)) => max > 0 && min * 10 < max * 9,
        _ => false,
    }
}

/// `items` mapped by `f`, in order, on the rayon pool, or on the calling
/// thread when the pool has one thread: handing work to a one-thread pool
/// parks the caller and wakes the worker (two futex calls, about 35 us per
/// call measured on the routed paths, which run 144 times per forward).
pub fn map_on_pool<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    if rayon::current_num_threads() == 1 {
        items.into_iter().map(f).collect()
    } else {
        items.into_par_iter().map(f).collect()
    }
}
