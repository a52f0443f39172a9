//! What sets the last bits of a floating-point result on this machine: the device and,
//! on a CPU, the widest vector kernels the matrix products dispatch to at run time
//! (gemm takes AVX-512 where the CPU has it, else FMA; this crate's own AVX-512
//! kernels follow the same line). The same inputs give the same bytes on two machines
//! that print the same string; on machines that print different ones, results agree to
//! rounding only, so an artifact's digest differs while its tables may not.

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
}
