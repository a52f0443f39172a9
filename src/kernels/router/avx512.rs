//! AVX-512 kernels of the int8-screened router (`kernels::router`): per-row
//! standardisation and quantisation, the `vpdpbusd` screen, and the exact f32
//! dot product that rescores candidates. The crate is built for baseline
//! x86-64, so these are written with intrinsics and called only after runtime
//! feature detection.

use std::arch::x86_64::*;

use super::shared::{GROUP, Int8Screen, LN_EPS, RowTerms};

/// Writes `x` into `dst`, standardised when asked (LayerNorm without
/// affine), then quantises it to int8 with scale `max|x| / 127` into `out`
/// (the signed operand of `vpdpbusd`, broadcast from memory). Returns the
/// terms the error radius needs and the sum of the int8 values. A non-finite row gets a NaN scale.
///
/// Three passes: the sum; the centred squares and `max|x - mean|`; then the
/// standardised values written, quantised and their norms accumulated. The
/// reductions use four accumulators so that they are not latency-bound.
///
/// # Safety
/// AVX-512F/BW/VL; `x`, `dst` and `out` have one length, a multiple of 16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub unsafe fn prep_row(x: &[f32], dst: &mut [f32], standardize: bool, out: &mut [i8]) -> RowTerms {
    assert!(x.len() == out.len() && x.len() == dst.len() && x.len().is_multiple_of(16));
    let n = x.len();
    let p = x.as_ptr();
    let zero = _mm512_setzero_ps();
    // SAFETY: (every pointer below) offsets i < n step 16 stay inside `x`,
    // `dst` and `out`.
    let at = |i: usize| unsafe { _mm512_loadu_ps(p.add(i)) };
    let (shift, scale_by, max) = if standardize {
        let mut s = [zero; 4];
        fold4(n, |i, j| s[j] = _mm512_add_ps(s[j], at(i)));
        let mean = _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(s[0], s[1]),
            _mm512_add_ps(s[2], s[3]),
        )) / n as f32;
        let vmean = _mm512_set1_ps(mean);
        // Lanes 0-1: centred squares; 2-3: max |x - mean|.
        let mut q = [zero; 4];
        fold4(n, |i, j| {
            let c = _mm512_sub_ps(at(i), vmean);
            let h = j & 1;
            q[h] = _mm512_fmadd_ps(c, c, q[h]);
            q[2 + h] = _mm512_max_ps(q[2 + h], _mm512_abs_ps(c));
        });
        let var = _mm512_reduce_add_ps(_mm512_add_ps(q[0], q[1])) / n as f32;
        let inv = 1.0 / (var + LN_EPS as f32).sqrt();
        let maxc = _mm512_reduce_max_ps(_mm512_max_ps(q[2], q[3]));
        // A NaN or infinite element makes the mean or the variance non-finite.
        let max = if mean.is_finite() && var.is_finite() {
            maxc * inv
        } else {
            f32::NAN
        };
        (mean, inv, max)
    } else {
        // max |x|, and x * 0 summed: NaN when any element is NaN or infinite.
        let mut q = [zero; 4];
        fold4(n, |i, j| {
            let (v, h) = (at(i), j & 1);
            q[h] = _mm512_max_ps(q[h], _mm512_abs_ps(v));
            q[2 + h] = _mm512_fmadd_ps(v, zero, q[2 + h]);
        });
        let poison = _mm512_reduce_add_ps(_mm512_add_ps(q[2], q[3]));
        let max = _mm512_reduce_max_ps(_mm512_max_ps(q[0], q[1]));
        (0.0, 1.0, if poison.is_nan() { f32::NAN } else { max })
    };
    if max.is_nan() {
        out.fill(0);
        // The exact rescoring then gives NaN scores, which reach the weights.
        dst.fill(f32::NAN);
        return RowTerms {
            scale: f32::NAN,
            q_norm: f32::NAN,
            err_norm: f32::NAN,
            norm: f32::NAN,
            sum_q: 0,
        };
    }
    let scale = if max == 0.0 { 1.0 } else { max / 127.0 };
    let inv = _mm512_set1_ps(1.0 / scale);
    let s = _mm512_set1_ps(scale);
    let (vshift, vscale) = (_mm512_set1_ps(shift), _mm512_set1_ps(scale_by));
    let mut qsum = _mm512_setzero_si512();
    // Two sets of (|q|^2, |x - s q|^2, |x|^2) accumulators.
    let mut acc = [zero; 6];
    for (step, i) in (0..n).step_by(16).enumerate() {
        // SAFETY: i + 16 <= n.
        let v = unsafe {
            let v = if standardize {
                _mm512_mul_ps(_mm512_sub_ps(at(i), vshift), vscale)
            } else {
                at(i)
            };
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), v);
            v
        };
        // Round to nearest even (the default MXCSR mode); |v / s| <= 127
        // up to rounding, and the clamp keeps it in range.
        let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
        let q = _mm512_max_epi32(
            _mm512_min_epi32(q, _mm512_set1_epi32(127)),
            _mm512_set1_epi32(-127),
        );
        let qf = _mm512_cvtepi32_ps(q);
        let e = _mm512_fnmadd_ps(s, qf, v);
        let h = 3 * (step & 1);
        acc[h] = _mm512_fmadd_ps(qf, qf, acc[h]);
        acc[h + 1] = _mm512_fmadd_ps(e, e, acc[h + 1]);
        acc[h + 2] = _mm512_fmadd_ps(v, v, acc[h + 2]);
        qsum = _mm512_add_epi32(qsum, q);
        // SAFETY: 16 bytes at i < n inside `out`.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, _mm512_cvtepi32_epi8(q)) };
    }
    let total = |j: usize| _mm512_reduce_add_ps(_mm512_add_ps(acc[j], acc[j + 3]));
    RowTerms {
        scale,
        q_norm: scale * total(0).sqrt(),
        err_norm: total(1).sqrt(),
        norm: total(2).sqrt(),
        sum_q: _mm512_reduce_add_epi32(qsum),
    }
}

/// Calls `f(offset, slot)` for every vector of a row of `n` floats, four
/// consecutive vectors in slots 0-3 (independent accumulators), the tail in
/// slot 0.
#[inline(always)]
fn fold4(n: usize, mut f: impl FnMut(usize, usize)) {
    let whole = n / 64 * 64;
    let mut i = 0;
    while i < whole {
        for j in 0..4 {
            f(i + 16 * j, j);
        }
        i += 64;
    }
    while i < n {
        f(i, 0);
        i += 16;
    }
}

/// `a · b` in f32 with four accumulators.
///
/// # Safety
/// AVX-512F and FMA; `a.len() == b.len()`, a multiple of 16.
#[target_feature(enable = "avx512f,fma")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert!(a.len() == b.len() && a.len().is_multiple_of(16));
    let n = a.len();
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 16 floats below n.
    unsafe {
        while i + 64 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                let x = _mm512_loadu_ps(a.as_ptr().add(i + 16 * j));
                let y = _mm512_loadu_ps(b.as_ptr().add(i + 16 * j));
                *s = _mm512_fmadd_ps(x, y, *s);
            }
            i += 64;
        }
        while i < n {
            let x = _mm512_loadu_ps(a.as_ptr().add(i));
            let y = _mm512_loadu_ps(b.as_ptr().add(i));
            acc[0] = _mm512_fmadd_ps(x, y, acc[0]);
            i += 16;
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(acc[0], acc[1]),
        _mm512_add_ps(acc[2], acc[3]),
    ))
}

/// `acc[i, z] = sum_j (w_q[z, j] + 128) * x_q[i, j]` for all `t` rows and
/// padded experts (the expert side is stored offset to unsigned, so that the
/// token side can be the signed operand that `vpdpbusd` broadcasts straight
/// from memory: one micro-fused instruction per multiply-add group instead of
/// a broadcast and a multiply-add).
///
/// # Safety
/// AVX-512F/BW/VNNI; `xq` is `[t, d]`, `packed` `[groups, d/4, 16, 4]`,
/// `acc` `[t, stride]` with `stride >= groups * 16`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dots(
    xq: &[i8],
    t: usize,
    d: usize,
    packed: &[u8],
    groups: usize,
    acc: &mut [i32],
    stride: usize,
) {
    let quads = d / 4;
    assert!(xq.len() >= t * d && packed.len() >= groups * quads * GROUP * 4);
    assert!(stride >= groups * GROUP && acc.len() >= t * stride);
    let group_len = quads * GROUP * 4;
    // Pairs of groups outermost: their packed weights (2 d x 16 bytes) stay
    // in L1 while every token of the block passes over them. Token-outer
    // order streamed all N d bytes from L2 for every four tokens and ran at
    // half the vpdpbusd rate.
    let mut g = 0;
    while g < groups {
        let two = g + 2 <= groups;
        let w = packed[g * group_len..].as_ptr();
        let mut i = 0;
        // SAFETY: (both loops) bounds asserted above; `two` only when a
        // second group follows.
        unsafe {
            let (x, out) = (xq.as_ptr(), acc.as_mut_ptr().add(g * GROUP));
            while i + 8 <= t {
                tile::<8>(x.add(i * d), d, w, group_len, two, out.add(i * stride), stride);
                i += 8;
            }
            while i + 4 <= t {
                tile::<4>(x.add(i * d), d, w, group_len, two, out.add(i * stride), stride);
                i += 4;
            }
            while i < t {
                tile::<1>(x.add(i * d), d, w, group_len, two, out.add(i * stride), stride);
                i += 1;
            }
        }
        g += if two { 2 } else { 1 };
    }
}

/// `TB` token rows against one group, or two consecutive groups when `two`:
/// each packed register is loaded once for all `TB` rows and each broadcast
/// token quad used for both groups, so there are `2 TB` independent
/// accumulator chains to hide `vpdpbusd`'s latency.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const TB: usize>(
    x: *const i8,
    d: usize,
    w: *const u8,
    group_len: usize,
    two: bool,
    out: *mut i32,
    stride: usize,
) {
    let quads = d / 4;
    let (mut acc0, mut acc1) = ([_mm512_setzero_si512(); TB], [_mm512_setzero_si512(); TB]);
    // SAFETY: offsets stay inside the buffers `dots` checked.
    unsafe {
        if two {
            for q in 0..quads {
                let a = _mm512_loadu_si512(w.add(q * GROUP * 4) as *const __m512i);
                let b = _mm512_loadu_si512(w.add(group_len + q * GROUP * 4) as *const __m512i);
                for (j, (s0, s1)) in acc0.iter_mut().zip(acc1.iter_mut()).enumerate() {
                    let xq = _mm512_set1_epi32((x.add(j * d + q * 4) as *const i32).read_unaligned());
                    *s0 = _mm512_dpbusd_epi32(*s0, a, xq);
                    *s1 = _mm512_dpbusd_epi32(*s1, b, xq);
                }
            }
        } else {
            for q in 0..quads {
                let a = _mm512_loadu_si512(w.add(q * GROUP * 4) as *const __m512i);
                for (j, s0) in acc0.iter_mut().enumerate() {
                    let xq = _mm512_set1_epi32((x.add(j * d + q * 4) as *const i32).read_unaligned());
                    *s0 = _mm512_dpbusd_epi32(*s0, a, xq);
                }
            }
        }
        for j in 0..TB {
            _mm512_storeu_si512(out.add(j * stride) as *mut __m512i, acc0[j]);
            if two {
                _mm512_storeu_si512(out.add(j * stride + GROUP) as *mut __m512i, acc1[j]);
            }
        }
    }
}

/// Most experts a token keeps on the screened path: the lane-wise top-k
/// network holds one register per kept expert.
pub const MAX_SCREEN_K: usize = 8;

/// One token's screen in one pass over its padded experts: the approximate
/// dot products `a = s_x s_z (acc - 128 sum q_x)`, the upper score bounds
/// `hi` (score `a`, or `|a|` for arrow, plus the radius `ra |e_z| + rb |w_z| +
/// 1e-6`; -inf on padding), and in `lanes[level][lane]` each lane's `K`
/// largest lower bounds (descending by level; -inf where fewer, and a NaN
/// bound never enters), from a compare-exchange network of vector selects.
///
/// # Safety
/// AVX-512F/DQ and FMA; `acc`, `approx`, `hi`, the screen's per-expert
/// vectors have the padded expert count (a multiple of 16, at
/// most 15 above `n`).
#[target_feature(enable = "avx512f,avx512dq,fma")]
pub unsafe fn screen_token<const K: usize>(
    acc: &[i32],
    sc: &Int8Screen,
    (row_scale, ra, rb, row_sum_q): (f32, f32, f32, i32),
    abs: bool,
    n: usize,
    (approx, hi): (&mut [f32], &mut [f32]),
    lanes: &mut [[f32; 16]; K],
) {
    let padded = acc.len();
    assert!(sc.scale.len() == padded && sc.err_norm.len() == padded && sc.w_norm.len() == padded);
    assert!(approx.len() == padded && hi.len() == padded);
    assert!(padded.is_multiple_of(16) && n <= padded && padded - n < 16);
    let (rs, ra, rb) = (_mm512_set1_ps(row_scale), _mm512_set1_ps(ra), _mm512_set1_ps(rb));
    let (eps, zero) = (_mm512_set1_ps(1e-6), _mm512_setzero_ps());
    // The offset's share: 128 times the token's int8 sum (at most 127 d).
    let offset = _mm512_set1_epi32(row_sum_q.wrapping_mul(128));
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut top = [ninf; K];
    // SAFETY: i + 16 <= padded for every slice, asserted above.
    unsafe {
        for i in (0..padded).step_by(16) {
            let raw = _mm512_sub_epi32(_mm512_loadu_si512(acc.as_ptr().add(i) as *const __m512i), offset);
            let a = _mm512_mul_ps(
                _mm512_mul_ps(rs, _mm512_loadu_ps(sc.scale.as_ptr().add(i))),
                _mm512_cvtepi32_ps(raw),
            );
            let rad = _mm512_fmadd_ps(
                ra,
                _mm512_loadu_ps(sc.err_norm.as_ptr().add(i)),
                _mm512_fmadd_ps(rb, _mm512_loadu_ps(sc.w_norm.as_ptr().add(i)), eps),
            );
            let c = if abs { _mm512_abs_ps(a) } else { a };
            let l = _mm512_sub_ps(c, rad);
            let mut lo = if abs { _mm512_max_ps(l, zero) } else { l };
            // Padding lanes (experts n..padded) never compete.
            let real: __mmask16 = if i + 16 <= n {
                0xffff
            } else {
                (1u16 << (n - i)) - 1
            };
            lo = _mm512_mask_blend_ps(real, ninf, lo);
            _mm512_storeu_ps(approx.as_mut_ptr().add(i), a);
            _mm512_storeu_ps(
                hi.as_mut_ptr().add(i),
                _mm512_mask_blend_ps(real, ninf, _mm512_add_ps(c, rad)),
            );
            for t in top.iter_mut() {
                // Ordered compare: false for NaN, which therefore never enters.
                let up = _mm512_cmp_ps_mask(lo, *t, _CMP_GT_OQ);
                let kept = _mm512_mask_blend_ps(up, *t, lo);
                lo = _mm512_mask_blend_ps(up, lo, *t);
                *t = kept;
            }
        }
        for (dst, t) in lanes.iter_mut().zip(&top) {
            _mm512_storeu_ps(dst.as_mut_ptr(), *t);
        }
    }
}

/// Appends to `out` the indices `i` with `xs[i] >= bar`, in index order.
///
/// # Safety
/// AVX-512F; `xs.len()` is a multiple of 16.
#[target_feature(enable = "avx512f")]
pub unsafe fn indices_at_least(xs: &[f32], bar: f32, out: &mut Vec<u32>) {
    assert!(xs.len().is_multiple_of(16));
    // Room for a whole vector past the last index written.
    out.reserve(xs.len() + 16);
    let b = _mm512_set1_ps(bar);
    let step = _mm512_set1_epi32(16);
    let mut idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let mut len = out.len();
    // SAFETY: loads stay inside `xs`; each step stores 16 lanes at `len`,
    // inside the reserved capacity, of which `len` keeps only the selected.
    // (Compressing in a register and storing the whole vector: the
    // compress-to-memory form is microcoded and slow on AMD cores.)
    unsafe {
        for i in (0..xs.len()).step_by(16) {
            let m = _mm512_cmp_ps_mask(_mm512_loadu_ps(xs.as_ptr().add(i)), b, _CMP_GE_OQ);
            _mm512_storeu_si512(
                out.as_mut_ptr().add(len) as *mut __m512i,
                _mm512_maskz_compress_epi32(m, idx),
            );
            len += m.count_ones() as usize;
            idx = _mm512_add_epi32(idx, step);
        }
        out.set_len(len);
    }
}

/// `sum over z < n of exp(min(score(a_z) * c - m, 0))`, score `a` or `|a|`,
/// with [`exp_nonpositive`].
///
/// # Safety
/// AVX-512F/DQ and FMA; `a.len()` is a multiple of 16 and at least `n`.
#[target_feature(enable = "avx512f,avx512dq,fma")]
pub unsafe fn sum_exp(a: &[f32], n: usize, abs: bool, c: f32, m: f32) -> f32 {
    assert!(a.len().is_multiple_of(16) && n <= a.len());
    let (vc, vm) = (_mm512_set1_ps(c), _mm512_set1_ps(m));
    let mut sum = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let real = lanes_below(n - i);
        // SAFETY: i + 16 <= a.len().
        let v = unsafe { _mm512_loadu_ps(a.as_ptr().add(i)) };
        let s = if abs { _mm512_abs_ps(v) } else { v };
        sum = _mm512_mask_add_ps(sum, real, sum, exp_nonpositive(_mm512_fmsub_ps(s, vc, vm)));
        i += 16;
    }
    _mm512_reduce_add_ps(sum)
}

/// `sum over i of exp(min(exact_i c - m, 0)) - exp(min(approx_i c - m, 0))`:
/// what swapping the rescored experts' exact scores for their approximate
/// ones changes in [`sum_exp`]'s total.
///
/// # Safety
/// AVX-512F/DQ and FMA; `exact` and `approx` have one length.
#[target_feature(enable = "avx512f,avx512dq,fma")]
pub unsafe fn exp_swap_sum(exact: &[f32], approx: &[f32], c: f32, m: f32) -> f32 {
    assert_eq!(exact.len(), approx.len());
    let (vc, vm) = (_mm512_set1_ps(c), _mm512_set1_ps(m));
    let mut sum = _mm512_setzero_ps();
    for (e, a) in exact.chunks(16).zip(approx.chunks(16)) {
        let real = lanes_below(e.len());
        // SAFETY: masked loads read only the `e.len()` lanes that exist.
        let (ve, va) = unsafe {
            (
                _mm512_maskz_loadu_ps(real, e.as_ptr()),
                _mm512_maskz_loadu_ps(real, a.as_ptr()),
            )
        };
        let d = _mm512_sub_ps(
            exp_nonpositive(_mm512_fmsub_ps(ve, vc, vm)),
            exp_nonpositive(_mm512_fmsub_ps(va, vc, vm)),
        );
        sum = _mm512_mask_add_ps(sum, real, sum, d);
    }
    _mm512_reduce_add_ps(sum)
}

/// The first `len` of 16 lanes (all for `len >= 16`).
#[inline(always)]
fn lanes_below(len: usize) -> __mmask16 {
    if len >= 16 { 0xffff } else { (1u16 << len) - 1 }
}

/// `exp(min(x, 0))` per lane with `fused::fast_exp`'s reduction and
/// polynomial in vector form (inputs are at most 0, so `2^n` is one normal
/// factor; below `MIN_X` a lane is 0). `min(NaN, 0)` is 0 here as in
/// `f32::min`, so a NaN lane gives 1.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,fma")]
fn exp_nonpositive(x: __m512) -> __m512 {
    use crate::kernels::fused::fast_exp::{LN2_HI, LN2_LO, LOG2_E, MIN_X, ROUND, TAYLOR};
    let (round, min_x) = (_mm512_set1_ps(ROUND), _mm512_set1_ps(MIN_X));
    let x = _mm512_min_ps(x, _mm512_setzero_ps());
    let xc = _mm512_max_ps(x, min_x);
    let t = _mm512_fmadd_ps(xc, _mm512_set1_ps(LOG2_E), round);
    let e = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(ROUND.to_bits() as i32));
    let nf = _mm512_sub_ps(t, round);
    let r = _mm512_fnmadd_ps(
        nf,
        _mm512_set1_ps(LN2_LO),
        _mm512_fnmadd_ps(nf, _mm512_set1_ps(LN2_HI), xc),
    );
    let mut p = _mm512_set1_ps(TAYLOR[7]);
    for &coef in TAYLOR[..7].iter().rev() {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coef));
    }
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
        e,
        _mm512_set1_epi32(127),
    )));
    let live = _mm512_cmp_ps_mask(x, min_x, _CMP_GE_OQ);
    _mm512_maskz_mul_ps(live, p, scale)
}

/// The k-th largest value over lane-wise sorted levels (`lanes[level][lane]`,
/// descending by level, as [`screen_token`] leaves them), counting repeats;
/// -inf when fewer than k are above -inf. The maximum is taken k times, each
/// time popping the lane it came from (the lowest such lane) one level up.
///
/// # Safety
/// AVX-512F; `1 <= k <= K`.
#[target_feature(enable = "avx512f")]
pub unsafe fn kth_of_levels<const K: usize>(lanes: &[[f32; 16]; K], k: usize) -> f32 {
    assert!((1..=K).contains(&k));
    // SAFETY: each level is 16 floats.
    let mut v: [__m512; K] = std::array::from_fn(|l| unsafe { _mm512_loadu_ps(lanes[l].as_ptr()) });
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    for j in 0..k {
        let m = _mm512_reduce_max_ps(v[0]);
        if j + 1 == k || m == f32::NEG_INFINITY {
            return m;
        }
        let eq = _mm512_cmp_ps_mask(v[0], _mm512_set1_ps(m), _CMP_EQ_OQ);
        let lane = eq & eq.wrapping_neg();
        for l in 0..K - 1 {
            v[l] = _mm512_mask_blend_ps(lane, v[l], v[l + 1]);
        }
        v[K - 1] = _mm512_mask_blend_ps(lane, v[K - 1], ninf);
    }
    f32::NEG_INFINITY
}
