//! AVX-512 kernels of the int8-screened router (`routing_cpu`): per-row
//! standardisation and quantisation, the `vpdpbusd` screen, and the exact f32
//! dot product that rescores candidates. The crate is built for baseline
//! x86-64, so these are written with intrinsics and called only after runtime
//! feature detection.

use std::arch::x86_64::*;

use super::routing::LN_EPS;
use super::routing_cpu::{GROUP, Int8Screen, RowTerms};

/// Standardises `x` in place when asked (LayerNorm without affine), then
/// quantises it to int8 with scale `max|x| / 127`, written as `q + 128` into
/// `out` for `vpdpbusd` (unsigned by signed). Returns the terms the error
/// radius needs. A non-finite row gets a NaN scale.
///
/// # Safety
/// AVX-512F/BW/VL; `x.len() == out.len()`, a multiple of 16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub unsafe fn prep_row(x: &mut [f32], standardize: bool, out: &mut [u8]) -> RowTerms {
    debug_assert!(x.len() == out.len() && x.len().is_multiple_of(16));
    let n = x.len();
    let p = x.as_mut_ptr();
    // SAFETY (every pointer below): offsets i < n step 16 stay inside `x` and `out`.
    unsafe {
        if standardize {
            let mut sum = _mm512_setzero_ps();
            for i in (0..n).step_by(16) {
                sum = _mm512_add_ps(sum, _mm512_loadu_ps(p.add(i)));
            }
            let mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / n as f32);
            let mut var = _mm512_setzero_ps();
            for i in (0..n).step_by(16) {
                let c = _mm512_sub_ps(_mm512_loadu_ps(p.add(i)), mean);
                var = _mm512_fmadd_ps(c, c, var);
            }
            let inv = _mm512_set1_ps(1.0 / (_mm512_reduce_add_ps(var) / n as f32 + LN_EPS as f32).sqrt());
            for i in (0..n).step_by(16) {
                let c = _mm512_sub_ps(_mm512_loadu_ps(p.add(i)), mean);
                _mm512_storeu_ps(p.add(i), _mm512_mul_ps(c, inv));
            }
        }
        // max |x|, and x * 0 summed: NaN when any element is NaN or infinite.
        let mut max = _mm512_setzero_ps();
        let mut poison = _mm512_setzero_ps();
        let zero = _mm512_setzero_ps();
        for i in (0..n).step_by(16) {
            let v = _mm512_loadu_ps(p.add(i));
            max = _mm512_max_ps(max, _mm512_abs_ps(v));
            poison = _mm512_fmadd_ps(v, zero, poison);
        }
        let max = _mm512_reduce_max_ps(max);
        if _mm512_reduce_add_ps(poison).is_nan() {
            out.fill(128);
            return RowTerms {
                scale: f32::NAN,
                q_norm: f32::NAN,
                err_norm: f32::NAN,
                norm: f32::NAN,
            };
        }
        let scale = if max == 0.0 { 1.0 } else { max / 127.0 };
        let inv = _mm512_set1_ps(1.0 / scale);
        let s = _mm512_set1_ps(scale);
        let bias = _mm512_set1_epi32(128);
        let (mut qq, mut ee, mut xx) = (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
        for i in (0..n).step_by(16) {
            let v = _mm512_loadu_ps(p.add(i));
            // Round to nearest even (the default MXCSR mode); |v / s| <= 127
            // up to rounding, and the saturating pack keeps it in range.
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
            let q = _mm512_max_epi32(
                _mm512_min_epi32(q, _mm512_set1_epi32(127)),
                _mm512_set1_epi32(-127),
            );
            let qf = _mm512_cvtepi32_ps(q);
            qq = _mm512_fmadd_ps(qf, qf, qq);
            let e = _mm512_fnmadd_ps(s, qf, v);
            ee = _mm512_fmadd_ps(e, e, ee);
            xx = _mm512_fmadd_ps(v, v, xx);
            let u = _mm512_add_epi32(q, bias); // 1..=255
            _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, _mm512_cvtepi32_epi8(u));
        }
        RowTerms {
            scale,
            q_norm: scale * _mm512_reduce_add_ps(qq).sqrt(),
            err_norm: _mm512_reduce_add_ps(ee).sqrt(),
            norm: _mm512_reduce_add_ps(xx).sqrt(),
        }
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

/// `acc[i, z] = sum_j xu8[i, j] * w_q[z, j]` for all `t` rows and padded experts.
///
/// # Safety
/// AVX-512F/BW/VNNI; `xu8` is `[t, d]`, `packed` `[groups, d/4, 16, 4]`,
/// `acc` `[t, groups * 16]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dots(xu8: &[u8], t: usize, d: usize, packed: &[i8], groups: usize, acc: &mut [i32]) {
    let quads = d / 4;
    assert!(xu8.len() >= t * d && packed.len() >= groups * quads * GROUP * 4);
    assert!(acc.len() >= t * groups * GROUP);
    let mut i = 0;
    let stride = groups * GROUP;
    // SAFETY (both loops): bounds asserted above.
    while i + 4 <= t {
        unsafe {
            block::<4>(
                xu8.as_ptr().add(i * d),
                d,
                packed.as_ptr(),
                groups,
                acc.as_mut_ptr().add(i * stride),
            )
        };
        i += 4;
    }
    while i < t {
        unsafe {
            block::<1>(
                xu8.as_ptr().add(i * d),
                d,
                packed.as_ptr(),
                groups,
                acc.as_mut_ptr().add(i * stride),
            )
        };
        i += 1;
    }
}

/// `TB` token rows against every group: each packed register is loaded once
/// and used for all `TB` rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block<const TB: usize>(x: *const u8, d: usize, packed: *const i8, groups: usize, out: *mut i32) {
    let quads = d / 4;
    let stride = groups * GROUP;
    for g in 0..groups {
        let mut acc = [_mm512_setzero_si512(); TB];
        // SAFETY: offsets stay inside the buffers `dots` checked.
        unsafe {
            let wg = packed.add(g * quads * GROUP * 4);
            for q in 0..quads {
                let w = _mm512_loadu_si512(wg.add(q * GROUP * 4) as *const __m512i);
                for (j, a) in acc.iter_mut().enumerate() {
                    let xq = (x.add(j * d + q * 4) as *const i32).read_unaligned();
                    *a = _mm512_dpbusd_epi32(*a, _mm512_set1_epi32(xq), w);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                _mm512_storeu_si512(out.add(j * stride + g * GROUP) as *mut __m512i, *a);
            }
        }
    }
}

/// One token's approximate dot products and score bounds for every padded
/// expert: `a = s_x s_z (acc - 128 sum q_z)`, radius `ra |e_z| + rb |w_z| +
/// 1e-6`, score interval `[lo, hi]` (of `|a|` for arrow, floored at 0).
///
/// # Safety
/// AVX-512F/DQ; every slice has the padded expert count (a multiple of 16).
#[target_feature(enable = "avx512f,avx512dq,fma")]
pub unsafe fn bounds(
    acc: &[i32],
    sc: &Int8Screen,
    w_norm: &[f32],
    (row_scale, ra, rb): (f32, f32, f32),
    abs: bool,
    (approx, lo, hi): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let n = acc.len();
    assert!(sc.sum_q.len() == n && sc.scale.len() == n && sc.err_norm.len() == n && w_norm.len() == n);
    assert!(approx.len() == n && lo.len() == n && hi.len() == n && n.is_multiple_of(16));
    let (rs, ra, rb) = (_mm512_set1_ps(row_scale), _mm512_set1_ps(ra), _mm512_set1_ps(rb));
    let (eps, zero, c128) = (_mm512_set1_ps(1e-6), _mm512_setzero_ps(), _mm512_set1_epi32(128));
    // SAFETY: i + 16 <= n for every slice, asserted above.
    unsafe {
        for i in (0..n).step_by(16) {
            let raw = _mm512_sub_epi32(
                _mm512_loadu_si512(acc.as_ptr().add(i) as *const __m512i),
                _mm512_mullo_epi32(
                    c128,
                    _mm512_loadu_si512(sc.sum_q.as_ptr().add(i) as *const __m512i),
                ),
            );
            let a = _mm512_mul_ps(
                _mm512_mul_ps(rs, _mm512_loadu_ps(sc.scale.as_ptr().add(i))),
                _mm512_cvtepi32_ps(raw),
            );
            let rad = _mm512_fmadd_ps(
                ra,
                _mm512_loadu_ps(sc.err_norm.as_ptr().add(i)),
                _mm512_fmadd_ps(rb, _mm512_loadu_ps(w_norm.as_ptr().add(i)), eps),
            );
            let c = if abs { _mm512_abs_ps(a) } else { a };
            let l = _mm512_sub_ps(c, rad);
            _mm512_storeu_ps(approx.as_mut_ptr().add(i), a);
            _mm512_storeu_ps(
                lo.as_mut_ptr().add(i),
                if abs { _mm512_max_ps(l, zero) } else { l },
            );
            _mm512_storeu_ps(hi.as_mut_ptr().add(i), _mm512_add_ps(c, rad));
        }
    }
}
