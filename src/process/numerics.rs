//! What sets the last bits of a floating-point result: the device and, on a CPU, the
//! widest vector kernels the matrix products dispatch to at run time. gemm's FMA kernels
//! run on every x86-64 CPU with FMA; its AVX-512 kernels, and this crate's own AVX-512
//! routing kernels, only in a build with the `avx512` feature on a CPU that has them
//! ([`Vectors`]). So by default an AVX-512 machine computes what an AVX2 + FMA one does,
//! bit for bit, and a lockfile pinned on either reproduces on both, with one more
//! condition: gemm sums a product's inner dimension in blocks whose length its cache
//! model derives from the L1 cache (at least 512; 1024 for the FMA kernels on a 48 KiB
//! 12-way L1 such as Zen 5's, 512 on a 32 KiB 8-way one), so products with more than
//! 512 terms give other last bits on CPUs of other blocks. The label names a block (kc)
//! other than 512 (`cpu x86_64 fma kc1024`). Every artifact
//! records a label: the same inputs give the same bytes on two CPUs of one label; on
//! others, results agree to rounding only, so an artifact's digest differs while its
//! tables may not (a near-tie in an evaluation can flip).
//!
//! An artifact's label covers what it was built from, not only the machine that built
//! it: a step whose inputs carry other labels than its own is `mixed`, and a kind whose
//! bytes involve no such arithmetic (data, token ids, a member list) is `exact` unless
//! its inputs say otherwise.

/// The label of a kind whose bytes do not depend on the machine's arithmetic.
pub const EXACT: &str = "exact";
/// The label of an artifact built before labels were recorded.
pub const UNRECORDED: &str = "unrecorded";
const MIXED: &str = "mixed: ";

/// `cpu x86_64 avx512f vnni`, `cpu x86_64 avx512f`, `cpu x86_64 fma`, `cpu x86_64 fma kc1024`, `cpu x86_64`,
/// `cpu aarch64`, ...; `cuda` for a GPU device (`cuda`, `cuda:N`).
pub fn numerics(device: &str) -> String {
    if device.starts_with("cuda") {
        return "cuda".to_string();
    }
    let arch = std::env::consts::ARCH;
    match vector_level() {
        Some(level) => match k_block(level) {
            512 => format!("cpu {arch} {level}"),
            kc => format!("cpu {arch} {level} kc{kc}"),
        },
        None => format!("cpu {arch}"),
    }
}

/// The longest run of a product's inner dimension that gemm's f32 kernels of this
/// vector level sum in one block on this CPU, as its cache model derives it (the
/// very function gemm calls, so the label cannot disagree with it): a longer inner
/// dimension is summed block by block, and the blocks' boundaries set the last bits.
fn k_block(level: &str) -> usize {
    // gemm-f32 0.19's register tiles: 2 vectors of 8 by 6 for FMA, 4 of 16 by 6 for
    // AVX-512. The block is the same for every product longer than it.
    let mr = if level.starts_with("avx512f") { 64 } else { 16 };
    const LONG: usize = 1 << 16;
    gemm_common::cache::kernel_params(LONG, LONG, LONG, mr, 6, std::mem::size_of::<f32>()).kc
}

/// The label of an artifact: its own arithmetic (`None` for an exact kind) with the
/// labels of its inputs (`None`: an input built before labels were recorded).
pub fn combined<'a>(own: Option<&'a str>, inputs: impl IntoIterator<Item = Option<&'a str>>) -> String {
    let mut parts: Vec<&str> = vec![];
    for label in own
        .into_iter()
        .chain(inputs.into_iter().map(|l| l.unwrap_or(UNRECORDED)))
    {
        let label = label.strip_prefix(MIXED).unwrap_or(label);
        for part in label.split("; ") {
            if part != EXACT && !parts.contains(&part) {
                parts.push(part);
            }
        }
    }
    parts.sort_unstable();
    match parts.as_slice() {
        [] => EXACT.to_string(),
        [one] => one.to_string(),
        many => format!("{MIXED}{}", many.join("; ")),
    }
}

/// Whether two artifacts of this label must have the same bytes: one CPU vector level
/// throughout, or no arithmetic that depends on it. Not a GPU (another card or
/// library version changes the bits, as can its atomics), not a mixture, not an
/// unrecorded build.
pub fn reproducible(label: &str) -> bool {
    label == EXACT || label.starts_with("cpu ") && !label.contains("; ")
}

/// Which vector kernels the CPU arithmetic may dispatch to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vectors {
    /// What every x86-64 CPU with FMA computes alike (gemm's FMA kernels, this crate's
    /// portable paths): the default build, whatever the CPU.
    Portable,
    /// AVX-512 where the CPU has it: gemm's x86-v4 kernels, the int8 routing screen,
    /// the routed LoRA's register kernels. Other last bits than [`Vectors::Portable`].
    Avx512,
}

impl Vectors {
    /// This build's on this CPU: AVX-512 only with the `avx512` feature and a CPU
    /// that has AVX-512F.
    pub fn of_build() -> Vectors {
        #[cfg(all(feature = "avx512", target_arch = "x86_64"))]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Vectors::Avx512;
        }
        Vectors::Portable
    }
}

/// What `goosepipe --version` adds: the numerics this build computes on this CPU and
/// the build features that change them, so that a lockfile's labels can be read
/// against the binary at hand.
pub fn build_summary() -> String {
    let on = |yes: bool| if yes { "on" } else { "off" };
    format!(
        "numerics on this CPU: {}\nbuild features: avx512 {}, cuda {}",
        numerics("cpu"),
        on(cfg!(feature = "avx512")),
        on(cfg!(feature = "cuda"))
    )
}

/// Whether this CPU runs the AVX-512 VNNI kernels of the router's int8 screen (which
/// an `avx512` build dispatches to; `kernels::router`).
pub fn avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f")
            && has!("avx512bw")
            && has!("avx512vl")
            && has!("avx512dq")
            && has!("avx512vnni")
            && has!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The vector extension gemm's f32 kernels pick on this CPU, where there is a choice.
fn vector_level() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        // The int8 routing screen runs only with VNNI, and its weights differ from
        // exact scoring's in the last bits: a CPU without it is other numerics.
        if Vectors::of_build() == Vectors::Avx512 {
            return Some(if avx512_vnni() { "avx512f vnni" } else { "avx512f" });
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return Some("fma");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_device_and_the_vector_level() {
        assert_eq!(numerics("cuda:1"), "cuda");
        let cpu = numerics("cpu");
        assert!(
            cpu.starts_with(&format!("cpu {}", std::env::consts::ARCH)),
            "{cpu}"
        );
        // AVX-512 only where the build asks for it: the default build labels an
        // AVX-512 CPU as it does an FMA one, for it computes the same bits.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            cpu.contains(" avx512f"),
            cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f"),
            "{cpu}"
        );
        #[cfg(all(target_arch = "x86_64", not(feature = "avx512")))]
        assert_eq!(
            cpu.contains(" fma"),
            std::arch::is_x86_feature_detected!("fma"),
            "{cpu}"
        );
        // An AVX-512 build says whether the int8 screen runs here.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            cpu.contains(" avx512f vnni"),
            cfg!(feature = "avx512") && avx512_vnni(),
            "{cpu}"
        );
        // The k-block is named where it is not 512, and agrees with gemm's cache model.
        #[cfg(target_arch = "x86_64")]
        if let Some(level) = vector_level() {
            let kc = k_block(level);
            assert!(kc >= 512, "{kc}");
            assert_eq!(cpu.ends_with(&format!(" kc{kc}")), kc != 512, "{cpu}");
        }
    }

    #[test]
    fn a_label_covers_the_inputs() {
        let fma = Some("cpu x86_64 fma");
        let avx = Some("cpu x86_64 avx512f");
        assert_eq!(combined(None, [Some(EXACT), Some(EXACT)]), EXACT);
        assert_eq!(combined(None, [fma, Some(EXACT)]), "cpu x86_64 fma");
        assert_eq!(combined(fma, [fma, Some(EXACT)]), "cpu x86_64 fma");
        let mixed = combined(fma, [avx]);
        assert_eq!(mixed, "mixed: cpu x86_64 avx512f; cpu x86_64 fma");
        assert_eq!(
            combined(fma, [Some(mixed.as_str()), fma]),
            mixed,
            "a mixture stays one"
        );
        assert_eq!(combined(fma, [None]), "mixed: cpu x86_64 fma; unrecorded");
        assert!(reproducible("cpu x86_64 fma") && reproducible(EXACT));
        assert!(!reproducible(&mixed) && !reproducible("cuda") && !reproducible(UNRECORDED));
    }
}
