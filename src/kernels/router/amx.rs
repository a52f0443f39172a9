//! The int8 screen of the router (`kernels::router`) on Intel AMX tiles.
//!
//! `tdpbsud` multiplies a 16 x 64 tile of signed token bytes by a 16 x 64
//! tile of unsigned expert bytes in quad layout (16 quads x 16 experts x 4)
//! into a 16 x 16 tile of i32 sums: 16,384 multiply-adds per instruction,
//! against 64 for one AVX-512 `vpdpbusd`. The operands are the very bytes the
//! `vpdpbusd` screen (`avx512::dots`) reads, token quads signed and
//! experts offset by 128, so both produce the same integers and everything
//! downstream (bounds, candidates, rescoring) is unchanged.
//!
//! Rust has no stable AMX intrinsics, so the tile instructions are inline
//! assembly; the compiler never allocates tile registers, so the tiles set in
//! one block are still there in the next. Linux hands out the tile state
//! only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), once per process.

use std::arch::asm;
use std::arch::x86_64::__cpuid_count;

use super::shared::GROUP;

/// Token rows per tile (tiles have 16 rows).
pub const TILE_ROWS: usize = 16;
/// Input dimensions per tile (64 bytes a row).
pub const TILE_DIMS: usize = 64;

/// Whether this CPU has AMX-INT8 and the kernel granted this process the
/// tile state (asked once, on first use).
pub fn available() -> bool {
    static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GRANTED.get_or_init(|| {
        // CPUID leaf 7, sub-leaf 0, EDX bits 24 (AMX-TILE) and 25 (AMX-INT8).
        let max_leaf = std::arch::x86_64::__cpuid(0).eax;
        if max_leaf < 7 {
            return false;
        }
        let edx = __cpuid_count(7, 0).edx;
        if edx & (1 << 24) == 0 || edx & (1 << 25) == 0 {
            return false;
        }
        request_tile_state()
    })
}

/// Asks Linux for permission to use the AMX tile data state.
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Palette 1 with all eight tiles 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn full() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(TILE_DIMS as u16).to_le_bytes());
            c[48 + t] = TILE_ROWS as u8;
        }
        TileConfig(c)
    }
}

/// `acc[i, z] = sum_j x_q[i, j] * (w_q[z, j] + 128)` for all `t` token rows
/// and `groups * 16` experts, as `avx512::dots` computes it, two
/// token tiles by two expert groups at a time (four accumulator tiles, two
/// token and two expert tiles: all eight tile registers).
///
/// # Safety
/// [`available`] returned true; `t` is a multiple of 32 and `d` of 64;
/// `xq` is `[t, d]`, `packed` `[groups, d/4, 16, 4]` with `groups` even, and
/// `acc` `[t, stride]` with `stride >= groups * 16`.
pub unsafe fn dots(
    xq: &[i8],
    t: usize,
    d: usize,
    packed: &[u8],
    groups: usize,
    acc: &mut [i32],
    stride: usize,
) {
    assert!(t.is_multiple_of(2 * TILE_ROWS) && d.is_multiple_of(TILE_DIMS) && groups.is_multiple_of(2));
    assert!(xq.len() >= t * d && packed.len() >= groups * d * GROUP);
    assert!(stride >= groups * GROUP && acc.len() >= t * stride);
    let group_len = d * GROUP;
    // One B tile is 16 quads of one group: 16 x 64 contiguous bytes.
    let b_tile = TILE_DIMS / 4 * GROUP * 4;
    let cfg = TileConfig::full();
    // SAFETY: (every block) the tile registers are configured first and
    // released last; every tile load reads 16 rows of 64 bytes and every
    // store writes 16 rows of 16 i32 inside the buffers asserted above.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        for i in (0..t).step_by(2 * TILE_ROWS) {
            let a0 = xq.as_ptr().add(i * d);
            let a1 = a0.add(TILE_ROWS * d);
            for g in (0..groups).step_by(2) {
                let b0 = packed.as_ptr().add(g * group_len);
                let b1 = b0.add(group_len);
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
                for kc in 0..d / TILE_DIMS {
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa} * 1]",
                        "tileloadd tmm5, [{a1} + {sa} * 1]",
                        "tileloadd tmm6, [{b0} + {sb} * 1]",
                        "tileloadd tmm7, [{b1} + {sb} * 1]",
                        "tdpbsud tmm0, tmm4, tmm6",
                        "tdpbsud tmm1, tmm4, tmm7",
                        "tdpbsud tmm2, tmm5, tmm6",
                        "tdpbsud tmm3, tmm5, tmm7",
                        a0 = in(reg) a0.add(kc * TILE_DIMS),
                        a1 = in(reg) a1.add(kc * TILE_DIMS),
                        b0 = in(reg) b0.add(kc * b_tile),
                        b1 = in(reg) b1.add(kc * b_tile),
                        sa = in(reg) d,
                        sb = in(reg) GROUP * 4,
                        options(nostack, readonly)
                    );
                }
                let c = acc.as_mut_ptr().add(i * stride + g * GROUP);
                asm!(
                    "tilestored [{c0} + {s} * 1], tmm0",
                    "tilestored [{c1} + {s} * 1], tmm1",
                    "tilestored [{c2} + {s} * 1], tmm2",
                    "tilestored [{c3} + {s} * 1], tmm3",
                    c0 = in(reg) c,
                    c1 = in(reg) c.add(GROUP),
                    c2 = in(reg) c.add(TILE_ROWS * stride),
                    c3 = in(reg) c.add(TILE_ROWS * stride + GROUP),
                    s = in(reg) stride * 4,
                    options(nostack)
                );
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}
