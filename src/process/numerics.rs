//! What sets the last bits of a floating-point result: the device and, on a CPU, the
//! widest vector kernels the matrix products dispatch to at run time (gemm takes
//! AVX-512 where the CPU has it, else FMA; this crate's own AVX-512 kernels follow the
//! same line). Every artifact records a label: the same inputs give the same bytes on
//! two CPUs of one label; on others, results agree to rounding only, so an artifact's
//! digest differs while its tables may not.
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

/// `cpu x86_64 avx512f`, `cpu x86_64 fma`, `cpu x86_64`, `cpu aarch64`, ...; `cuda`
/// for a GPU device (`cuda`, `cuda:N`).
pub fn numerics(device: &str) -> String {
    if device.starts_with("cuda") {
        return "cuda".to_string();
    }
    let arch = std::env::consts::ARCH;
    match vector_level() {
        Some(level) => format!("cpu {arch} {level}"),
        None => format!("cpu {arch}"),
    }
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

/// The vector extension gemm's f32 kernels pick on this CPU, where there is a choice.
fn vector_level() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") {
            return Some("avx512f");
        }
        if has!("fma") {
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
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            cpu.ends_with("avx512f"),
            std::arch::is_x86_feature_detected!("avx512f"),
            "{cpu}"
        );
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
