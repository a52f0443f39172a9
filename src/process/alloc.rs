//! Allocator tuning for tensor workloads. candle allocates a fresh buffer for
//! every op and frees it soon after, so the same few sizes are allocated and
//! freed thousands of times per training step. If freed pages go back to the OS,
//! every reuse faults them in again and the kernel zeroes them, which cost more
//! than the arithmetic (glibc malloc with its dynamic mmap threshold; mimalloc,
//! our global allocator, which purges freed pages after 10 ms by default; the
//! measurements are in benches/README.md, "Allocator and threads").
//!
//! Both are told to keep freed memory; resident memory then stays near the peak
//! working set, which a training or evaluation step reaches every batch anyway.

use std::sync::Once;

static TUNE: Once = Once::new();

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_t` in the bundled
/// mimalloc.h of v2 and v3; libmimalloc-sys does not name it): milliseconds before
/// freed pages are purged, -1 for never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Once per process: mimalloc never purges freed pages, and glibc's mmap
/// threshold goes to its maximum (32 MiB on 64-bit; mallopt rejects larger
/// values) with a 1 GiB trim threshold, for C code that uses malloc. Called by
/// every `T5Model` constructor and the sentence embedder.
pub fn tune_allocator_for_tensors() {
    TUNE.call_once(|| {
        // SAFETY: mi_option_set only stores an option value (an atomic write).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only adjusts allocator parameters; it is safe to call
        // at any time and takes the allocator's own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    });
}

/// Transparent huge pages off for this process, for commands that only plan: their
/// heap is millions of small objects, each touched once, and with THP on the kernel
/// zeroes 2 MB at every first touch of a region. On the 2-vCPU VMs this was half of
/// `goosepipe plan`'s time for 10,000 experts, and its variance (1.3-1.6 s, ±20-27 %,
/// against 0.98-1.02 s, ±0.5 %, without: benches/README.md). Tensor work keeps them
/// (`run`, `exec`, `score`, `export`): large buffers gain from huge pages.
pub fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes integer arguments and reads or writes
    // no memory of ours; it only sets a flag of this process (and its children).
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// A field of /proc/meminfo (`MemTotal:`, ...) in bytes; None where the system does
/// not say.
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// This machine's memory, in bytes.
pub fn memory_total() -> Option<u64> {
    meminfo("MemTotal:")
}

/// The most memory this process can have, in bytes, and what sets it: the machine's
/// memory, a cgroup's `memory.max` (a container, a Slurm job) or the address-space
/// limit (`ulimit -v`), whichever is least. Past it an allocation aborts the process
/// (or the kernel kills it), so work that can say its size up front is refused below it.
pub fn memory_limit() -> Option<(u64, &'static str)> {
    let mut limits: Vec<(u64, &'static str)> = vec![];
    if let Some(total) = memory_total() {
        limits.push((total, "this machine's memory"));
    }
    if let Some(cgroup) = cgroup_memory_max() {
        limits.push((cgroup, "its cgroup's memory.max"));
    }
    #[cfg(target_os = "linux")]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0 && lim.rlim_cur != libc::RLIM_INFINITY {
            limits.push((lim.rlim_cur, "its address-space limit (ulimit -v)"));
        }
    }
    limits.into_iter().min_by_key(|(bytes, _)| *bytes)
}

/// The memory limit of this process's cgroup, where one is set: v2's `memory.max`, or
/// v1's `memory.limit_in_bytes` (a huge number when unset, which the minimum ignores).
fn cgroup_memory_max() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |file: std::path::PathBuf| std::fs::read_to_string(file).ok()?.trim().parse::<u64>().ok();
    let under = |root: &str, group: &str, file: &str| {
        std::path::Path::new(root)
            .join(group.trim_start_matches('/'))
            .join(file)
    };
    own.lines().find_map(|l| {
        if let Some(group) = l.strip_prefix("0::") {
            read(under("/sys/fs/cgroup", group, "memory.max"))
        } else {
            // v1: "N:CONTROLLERS:/path", the memory controller's line.
            let (_, rest) = l.split_once(':')?;
            let group = rest.strip_prefix("memory:")?;
            read(under("/sys/fs/cgroup/memory", group, "memory.limit_in_bytes"))
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn mimalloc_keeps_freed_pages() {
        super::tune_allocator_for_tensors();
        // SAFETY: reading an option value.
        let v = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(v, -1);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn planning_commands_turn_huge_pages_off() {
        super::without_huge_pages();
        // SAFETY: PR_GET_THP_DISABLE only returns the flag.
        let off = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(off, 1);
    }
}
