//! AVX-512 kernels of the routed LoRA mixture (`kernels::routed_lora`): each expert's
//! down-projection `h = w u A_z` for the tokens routed to it, read in place
//! through the routing permutation, and the up-projection `out[t] += h B_z`
//! accumulated straight into the output rows.
//!
//! At 100+ experts each expert gets a handful of tokens per module call, so
//! two general gemm calls per expert (each packing its operands, with a
//! gathered copy of the token rows before and a scatter-add after) cost more
//! than the multiply-adds themselves. Here the rank-r intermediate of a token
//! lives in registers (r up to 64) and every output row is read and written
//! once per (token, expert) pair. The crate is built for baseline x86-64, so
//! these are written with intrinsics and called only after runtime feature
//! detection.

use std::arch::x86_64::*;

/// Largest rank the kernels keep in registers (four vectors per token).
pub const MAX_RANK: usize = 64;

/// Whether this CPU runs the kernels and they cover this shape: rank a
/// multiple of 16 up to [`MAX_RANK`], output width a multiple of 16.
pub fn applies(rank: usize, d_out: usize) -> bool {
    use std::arch::is_x86_feature_detected as has;
    rank > 0
        && rank.is_multiple_of(16)
        && rank <= MAX_RANK
        && d_out.is_multiple_of(16)
        && has!("avx512f")
        && has!("fma")
}

/// `h[i] = weights[i] * u[rows[i]] · a` for every token `i` routed to one
/// expert; `u` is `[n, d_in]`, `a` `[d_in, r]`, `h` `[rows.len(), r]`.
/// `next`, the `a` of the expert that comes next (or empty), is prefetched
/// into L2 meanwhile when `prefetch` is on (see [`Prefetch`]).
///
/// # Safety
/// AVX-512F and FMA; [`applies`] holds for `r`; every row index is below
/// `u.len() / d_in`; `a.len() == d_in * r`; `h.len() == rows.len() * r`;
/// `next` is empty or as long as `a`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,fma")]
pub unsafe fn lora_down(
    u: &[f32],
    d_in: usize,
    rows: &[u32],
    weights: &[f64],
    (a, next): (&[f32], &[f32]),
    r: usize,
    h: &mut [f32],
    prefetch: Prefetch,
) {
    assert!(a.len() == d_in * r && h.len() == rows.len() * r && weights.len() == rows.len());
    assert!(next.is_empty() || next.len() == a.len());
    assert!(rows.iter().all(|&t| (t as usize + 1) * d_in <= u.len()));
    let next = if prefetch.0 { next } else { &[] };
    // SAFETY: shapes asserted above; `applies` bounds r.
    unsafe {
        match r / 16 {
            1 => down::<1>(u, d_in, rows, weights, (a, next), h),
            2 => down::<2>(u, d_in, rows, weights, (a, next), h),
            3 => down::<3>(u, d_in, rows, weights, (a, next), h),
            _ => down::<4>(u, d_in, rows, weights, (a, next), h),
        }
    }
}

/// Whether the routed kernels prefetch the next expert's weights into L2
/// while they work on the current one.
///
/// At 100+ experts every module call streams every expert's A and B from
/// memory (hundreds of MB per forward) and the hardware prefetchers, which
/// stop at 4 KB page boundaries, leave the core waiting at each expert's
/// first rows: on the Intel Xeon (Emerald Rapids, 2026-12-01) the expert
/// weights of a 166-expert forward then streamed at about 6.5 GB/s against
/// 11-12 GB/s for a plain read loop, and with one expert of look-ahead at
/// about 8 GB/s. On the Zen5 machines an earlier software prefetch of the
/// next expert was slower, so it is on for Intel CPUs only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prefetch(pub bool);

impl Prefetch {
    /// On for Intel CPUs (see the type's note).
    pub fn for_this_cpu() -> Self {
        static INTEL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        Prefetch(*INTEL.get_or_init(|| {
            let id = __cpuid(0);
            let vendor = [id.ebx, id.edx, id.ecx].map(u32::to_le_bytes).concat();
            vendor == *b"GenuineIntel"
        }))
    }
}

/// A prefetch of the 64-byte line at `p` into L2 (and the levels above).
#[inline(always)]
unsafe fn prefetch_l2(p: *const f32) {
    // SAFETY: a prefetch never faults, and SSE is part of x86-64.
    unsafe { _mm_prefetch::<_MM_HINT_T1>(p as *const i8) };
}

/// [`lora_down`] for rank `16 RC`: four tokens at a time share each load of
/// a row of `a`, with `4 RC` independent accumulators; the first pass over
/// `a` also prefetches `next`, one line per vector of `a` it loads.
#[target_feature(enable = "avx512f,fma")]
unsafe fn down<const RC: usize>(
    u: &[f32],
    d_in: usize,
    rows: &[u32],
    weights: &[f64],
    (a, next): (&[f32], &[f32]),
    h: &mut [f32],
) {
    let r = RC * 16;
    let mut i = 0;
    while i < rows.len() {
        let ahead = i == 0 && !next.is_empty();
        let tb = (rows.len() - i).min(4);
        let mut acc = [[_mm512_setzero_ps(); RC]; 4];
        let x: [*const f32; 4] = std::array::from_fn(|j| {
            let t = rows[i + j.min(tb - 1)] as usize;
            u[t * d_in..].as_ptr()
        });
        // SAFETY: `x[j] + k` stays inside token row j (k < d_in) and
        // `a + k r + 16 c` inside row k of `a` (c < RC).
        unsafe {
            for k in 0..d_in {
                if ahead {
                    for c in 0..RC {
                        prefetch_l2(next.as_ptr().add(k * r + 16 * c));
                    }
                }
                let mut arow = [_mm512_setzero_ps(); RC];
                for (c, v) in arow.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(a.as_ptr().add(k * r + 16 * c));
                }
                // Rows past `tb` repeat the last token; their sums are dropped.
                for (j, acc_j) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*x[j].add(k));
                    for c in 0..RC {
                        acc_j[c] = _mm512_fmadd_ps(xv, arow[c], acc_j[c]);
                    }
                }
            }
            for (j, acc_j) in acc.iter().enumerate().take(tb) {
                let w = _mm512_set1_ps(weights[i + j] as f32);
                for (c, v) in acc_j.iter().enumerate() {
                    _mm512_storeu_ps(h.as_mut_ptr().add((i + j) * r + 16 * c), _mm512_mul_ps(*v, w));
                }
            }
        }
        i += tb;
    }
}

/// `out[rows[i], cols] += h[i] · b[:, cols]` for every token `i` routed to
/// one expert; `h` is `[rows.len(), r]`, `b` `[r, d_out]`, `out` rows of
/// `d_out` floats; `cols` a range of whole 16-float vectors. `next`, the `b`
/// of the expert that comes next (or empty), has the same columns
/// prefetched into L2 meanwhile when `prefetch` is on.
///
/// # Safety
/// AVX-512F and FMA; `h.len() == rows.len() * r`, `b.len() == r * d_out`,
/// `next` empty or as long as `b`, `cols` inside `0..d_out` with 16-aligned
/// ends; `out` points to `n` rows of `d_out` floats with every row index
/// below `n`, and no other thread writes these columns of those rows
/// meanwhile.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,fma")]
pub unsafe fn lora_up(
    h: &[f32],
    r: usize,
    rows: &[u32],
    (b, next): (&[f32], &[f32]),
    d_out: usize,
    cols: std::ops::Range<usize>,
    out: *mut f32,
    prefetch: Prefetch,
) {
    debug_assert!(h.len() == rows.len() * r && b.len() == r * d_out);
    debug_assert!(next.is_empty() || next.len() == b.len());
    let ahead = prefetch.0 && !next.is_empty();
    debug_assert!(cols.start.is_multiple_of(16) && cols.end.is_multiple_of(16) && cols.end <= d_out);
    let mut c0 = cols.start;
    // Blocks of 64 columns (four vectors per token), two tokens at a time
    // sharing every load of `b`; then single vectors.
    // SAFETY: (all loops) offsets stay inside `h`, `b` and the rows of `out`
    // per the contract above.
    unsafe {
        while c0 + 64 <= cols.end {
            let mut i = 0;
            while i < rows.len() {
                let two = i + 1 < rows.len();
                let o0 = out.add(rows[i] as usize * d_out + c0);
                let o1 = if two {
                    out.add(rows[i + 1] as usize * d_out + c0)
                } else {
                    o0
                };
                let mut a0: [__m512; 4] = std::array::from_fn(|q| _mm512_loadu_ps(o0.add(16 * q)));
                let mut a1 = [_mm512_setzero_ps(); 4];
                for c in 0..r {
                    if ahead && i == 0 {
                        for q in 0..4 {
                            prefetch_l2(next.as_ptr().add(c * d_out + c0 + 16 * q));
                        }
                    }
                    let h0 = _mm512_set1_ps(h[i * r + c]);
                    let h1 = _mm512_set1_ps(if two { h[(i + 1) * r + c] } else { 0.0 });
                    for (q, (s0, s1)) in a0.iter_mut().zip(a1.iter_mut()).enumerate() {
                        let bv = _mm512_loadu_ps(b.as_ptr().add(c * d_out + c0 + 16 * q));
                        *s0 = _mm512_fmadd_ps(h0, bv, *s0);
                        *s1 = _mm512_fmadd_ps(h1, bv, *s1);
                    }
                }
                for (q, v) in a0.iter().enumerate() {
                    _mm512_storeu_ps(o0.add(16 * q), *v);
                }
                if two {
                    // Added after the first row is stored: both may be the
                    // same token only if an expert were chosen twice for it,
                    // which top-k never does, but the order keeps it right.
                    for (q, v) in a1.iter().enumerate() {
                        _mm512_storeu_ps(o1.add(16 * q), _mm512_add_ps(_mm512_loadu_ps(o1.add(16 * q)), *v));
                    }
                }
                i += 2;
            }
            c0 += 64;
        }
        while c0 < cols.end {
            for (i, &t) in rows.iter().enumerate() {
                let o = out.add(t as usize * d_out + c0);
                let mut acc = _mm512_loadu_ps(o);
                for c in 0..r {
                    if ahead && i == 0 {
                        prefetch_l2(next.as_ptr().add(c * d_out + c0));
                    }
                    acc = _mm512_fmadd_ps(
                        _mm512_set1_ps(h[i * r + c]),
                        _mm512_loadu_ps(b.as_ptr().add(c * d_out + c0)),
                        acc,
                    );
                }
                _mm512_storeu_ps(o, acc);
            }
            c0 += 16;
        }
    }
}
