//! CPU fast path of [`super::routing::Router::route`] for f32 inputs.
//!
//! The generic path scores with candle ops (standardise, matmul, softmax,
//! copy to f64 rows): about ten passes over a `[tokens, N]` matrix and one
//! libm `exp` per score. Here each block of tokens is standardised, scored,
//! selected and normalised in one go, in parallel over token blocks.
//!
//! With many experts the scoring itself dominates (`N d` multiply-adds per
//! token and module, 47 % of the base model's FLOPs at d_model 256 and 166
//! experts). There the scores are first *screened* in int8 with AVX-512 VNNI
//! (four times the f32 multiply-add rate), each approximate score carrying a
//! rigorous error radius from the quantisation residuals (Cauchy-Schwarz).
//! Every expert whose score interval could reach the k-th best lower bound is
//! rescored exactly in f32, so the chosen experts and their weights are those
//! of exact scoring: an expert left out provably scores below k others. The
//! only approximate quantity is the softmax denominator's share from the
//! left-out experts, which enters the weights through the `1e-6` of the
//! renormalisation `p / (sum of kept p + 1e-6)` alone (relative effect on a
//! weight below `1e-6 * N/k * (e^radius - 1)`; the test holds the weights to
//! 2e-6 of the f64 reference).

use rayon::prelude::*;

use super::fused::fast_exp;
use super::routed_cpu::gemm_f32;
use super::routing::{LN_EPS, RENORM_EPS, Routing};
#[cfg(target_arch = "x86_64")]
use super::routing_avx512 as avx512;

/// Experts per int8 screening group: one AVX-512 register of i32 lanes.
pub(super) const GROUP: usize = 16;
/// Screening pays off from this many experts on.
const SCREEN_FROM: usize = 2 * GROUP;
/// Tokens per parallel task.
const BLOCK: usize = 64;

/// How a dot product `x·w` becomes a score (before the softmax scale).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScoreFn {
    /// `LN(u)·LN(v)`: inputs are standardised, the score is the dot product.
    Standardized,
    /// `|u·v|`: raw inputs, absolute dot product.
    Absolute,
}

/// One module's router, prepared for the CPU: row-major f32 embeddings and,
/// where the CPU has AVX-512 VNNI and there are enough experts, their int8
/// screening copy.
#[derive(Debug, Clone)]
pub struct CpuRouter {
    n: usize,
    d: usize,
    top_k: usize,
    score_fn: ScoreFn,
    /// Multiplies scores before the softmax: `1/sqrt(d)` (and `1/t` for arrow).
    logit_scale: f32,
    /// `[N, d]`, already standardised for [`ScoreFn::Standardized`].
    w: Vec<f32>,
    /// `|w_z|`, zero-padded to whole screening groups.
    w_norm_padded: Vec<f32>,
    screen: Option<Int8Screen>,
}

/// Int8 copy of the embeddings, packed for `vpdpbusd`: for each group of 16
/// experts and each quad of input dimensions, 16 x 4 bytes (expert-major).
#[derive(Debug, Clone)]
pub(super) struct Int8Screen {
    groups: usize,
    packed: Vec<i8>,
    /// Per (padded) expert: quantisation scale, sum of the int8 values, and
    /// the norm of the quantisation residual `w - scale * w_q`.
    pub(super) scale: Vec<f32>,
    pub(super) sum_q: Vec<i32>,
    pub(super) err_norm: Vec<f32>,
}

/// Whether this CPU can run the int8 screen.
fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") && has!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Sum with 16 partial sums (vectorises), reduced as a tree.
fn sum16(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let (chunks, rest) = x.as_chunks::<16>();
    for c in chunks {
        for i in 0..16 {
            acc[i] += f(c[i]);
        }
    }
    let b: [f32; 8] = std::array::from_fn(|i| acc[i] + acc[i + 8]);
    let c: [f32; 4] = std::array::from_fn(|i| b[i] + b[i + 4]);
    (c[0] + c[2]) + (c[1] + c[3]) + rest.iter().map(|&v| f(v)).sum::<f32>()
}

/// LayerNorm without affine of one row, in place.
fn standardize_row(x: &mut [f32]) {
    let n = x.len() as f32;
    let mean = sum16(x, |v| v) / n;
    let var = sum16(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + LN_EPS as f32).sqrt();
    for v in x.iter_mut() {
        *v = (*v - mean) * inv;
    }
}

/// Symmetric int8 quantisation of an expert embedding into `out` (rest zero):
/// returns the scale `s` with `x ≈ s * q` and the residual norm `|x - s q|`.
fn quantize(x: &[f32], out: &mut [i8]) -> (f32, f32) {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    out.fill(0);
    if max == 0.0 {
        return (1.0, 0.0);
    }
    let s = max / 127.0;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v / s).round().clamp(-127.0, 127.0) as i8;
    }
    let err = x
        .iter()
        .zip(out.iter())
        .map(|(&v, &q)| (v as f64 - s as f64 * q as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    (s, err as f32)
}

/// `sum exp(min(score(a) * c - m, 0))` over approximate dot products, with the
/// vectorising exp of `fused::fast_exp` (a few ulp). It only feeds the part of
/// the softmax denominator that reaches the weights through the 1e-6
/// renormalisation term.
#[inline(always)]
fn sum_exp(a: &[f32], score: impl Fn(f32) -> f32, c: f32, m: f32) -> f64 {
    sum16(a, |v| fast_exp::exp((score(v) * c - m).min(0.0))) as f64
}

impl CpuRouter {
    /// `w`: `[N, d]` row-major embeddings, already standardised for
    /// [`ScoreFn::Standardized`]; `logit_scale` multiplies scores before the softmax.
    pub fn new(w: Vec<f32>, n: usize, d: usize, top_k: usize, score_fn: ScoreFn, logit_scale: f64) -> Self {
        let mut w_norm_padded: Vec<f32> = w.chunks_exact(d).map(|r| sum16(r, |v| v * v).sqrt()).collect();
        w_norm_padded.resize(n.div_ceil(GROUP) * GROUP, 0.0);
        // The AVX-512 row kernels work on whole vectors of 16 floats.
        let screen =
            (n >= SCREEN_FROM && d.is_multiple_of(16) && vnni_available()).then(|| Int8Screen::new(&w, n, d));
        CpuRouter {
            n,
            d,
            top_k,
            score_fn,
            logit_scale: logit_scale as f32,
            w,
            w_norm_padded,
            screen,
        }
    }

    /// Whether scores are screened in int8 before exact rescoring.
    pub fn screens(&self) -> bool {
        self.screen.is_some()
    }

    /// Routes `n_tok` tokens given row-major `[n_tok, d]` inputs.
    pub fn route(&self, u: &[f32], n_tok: usize) -> Routing {
        debug_assert_eq!(u.len(), n_tok * self.d);
        let parts: Vec<(Vec<u32>, Vec<f64>)> = u
            .par_chunks(BLOCK * self.d)
            .map(|rows| {
                let mut out = (
                    Vec::with_capacity(BLOCK * self.top_k),
                    Vec::with_capacity(BLOCK * self.top_k),
                );
                match &self.screen {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: a screen exists only where vnni_available() held.
                    Some(screen) => unsafe { self.route_screened(screen, rows, &mut out) },
                    _ => self.route_exact(rows, &mut out),
                }
                out
            })
            .collect();
        let mut experts = Vec::with_capacity(n_tok * self.top_k);
        let mut weights = Vec::with_capacity(n_tok * self.top_k);
        for (e, w) in parts {
            experts.extend(e);
            weights.extend(w);
        }
        Routing {
            k: self.top_k,
            experts,
            weights,
        }
    }

    /// Exact f32 scores for every expert (one gemm per block), then selection.
    fn route_exact(&self, rows: &[f32], out: &mut (Vec<u32>, Vec<f64>)) {
        let (d, n) = (self.d, self.n);
        let t = rows.len() / d;
        let mut x = rows.to_vec();
        if self.score_fn == ScoreFn::Standardized {
            x.chunks_exact_mut(d).for_each(standardize_row);
        }
        let mut dots = vec![0f32; t * n];
        gemm_f32(&mut dots, &x, &self.w, (t, n, d), true);
        let (mut picks, mut scores) = (Picks::default(), Vec::with_capacity(n));
        for a in dots.chunks_exact(n) {
            scores.clear();
            scores.extend(a.iter().map(|&v| self.score(v)));
            self.select(a, &scores, None, &mut picks, |z| a[z], out);
        }
    }

    /// Int8 screen, then exact rescoring of the candidates.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
    unsafe fn route_screened(&self, sc: &Int8Screen, rows: &[f32], out: &mut (Vec<u32>, Vec<f64>)) {
        let (d, n) = (self.d, self.n);
        let t = rows.len() / d;
        let mut x = rows.to_vec();
        let mut xu8 = vec![0u8; t * d];
        let mut terms = Vec::with_capacity(t);
        for (row, q) in x.chunks_exact_mut(d).zip(xu8.chunks_exact_mut(d)) {
            // SAFETY: AVX-512 is enabled here; d is a multiple of 16.
            terms.push(unsafe { avx512::prep_row(row, self.score_fn == ScoreFn::Standardized, q) });
        }
        let padded = sc.groups * GROUP;
        let mut acc = vec![0i32; t * padded];
        // SAFETY: buffer sizes match the layout `dots` documents.
        unsafe { avx512::dots(&xu8, t, d, &sc.packed, sc.groups, &mut acc) };
        let mut picks = Picks::default();
        // Approximate dot products and score bounds of one token, padded to
        // whole groups for the kernel; selection reads the first n.
        let (mut approx, mut lo, mut hi) = (vec![0f32; padded], vec![0f32; padded], vec![0f32; padded]);
        let slack = d as f32 * 1.2e-7 + 1e-6;
        for i in 0..t {
            let xi = &x[i * d..(i + 1) * d];
            let r = terms[i];
            // |x·w - a| <= |s_x q_x| |e_w| + |e_x| |w|, widened by 0.1 % for
            // rounding of the norms and by d 2^-23 |x| |w| for the f32
            // rounding of the exact dot product.
            let (ra, rb) = (r.q_norm * 1.001, r.err_norm * 1.001 + slack * r.norm);
            // SAFETY: AVX-512 is enabled here; every slice is `padded` long.
            unsafe {
                avx512::bounds(
                    &acc[i * padded..(i + 1) * padded],
                    sc,
                    &self.w_norm_padded,
                    (r.scale, ra, rb),
                    self.score_fn == ScoreFn::Absolute,
                    (&mut approx, &mut lo, &mut hi),
                )
            };
            self.select(
                &approx[..n],
                &lo[..n],
                Some(&hi[..n]),
                &mut picks,
                |z| {
                    // SAFETY: AVX-512F is enabled here; equal lengths, multiple of 16.
                    unsafe { avx512::dot(xi, &self.w[z * d..(z + 1) * d]) }
                },
                out,
            );
        }
    }

    #[inline(always)]
    fn score(&self, dot: f32) -> f32 {
        match self.score_fn {
            ScoreFn::Standardized => dot,
            ScoreFn::Absolute => dot.abs(),
        }
    }

    /// Chooses the top-k of one token (ties to the lower index) and writes
    /// their renormalised weights. `approx` are the dot products, exact when
    /// `hi` is `None`; `lo` (and `hi`) bound the scores. Every expert whose
    /// upper bound reaches the k-th best lower bound is rescored exactly.
    #[inline(always)]
    fn select(
        &self,
        approx: &[f32],
        lo: &[f32],
        hi: Option<&[f32]>,
        s: &mut Picks,
        rescore: impl Fn(usize) -> f32,
        (experts, weights): &mut (Vec<u32>, Vec<f64>),
    ) {
        let k = self.top_k;
        // k-th best lower bound. A NaN never enters, so NaN inputs make every
        // expert a candidate and the NaN reaches the weights, as on the
        // generic path.
        let threshold = kth_largest(lo, k, &mut s.lanes, &mut s.best);
        let everyone = threshold == f32::NEG_INFINITY;
        let upper = hi.unwrap_or(lo);
        s.kept.clear();
        s.cands.clear();
        let mut consider = |z: usize, h: f32| {
            let sc = match hi {
                Some(_) => self.score(rescore(z)),
                None => h,
            };
            s.cands.push((z, sc));
            // Index order and strict > keep the lower index on ties.
            let pos = s.kept.iter().position(|&(_, o)| sc > o).unwrap_or(s.kept.len());
            if pos < k {
                s.kept.insert(pos, (z as u32, sc));
                s.kept.truncate(k);
            }
        };
        let (chunks, rest) = upper.as_chunks::<16>();
        for (ci, c) in chunks.iter().enumerate() {
            // Bit j: expert ci*16+j reaches the threshold (a compare and a
            // mask move per chunk), then the set bits in index order.
            let mut bits = if everyone {
                u16::MAX
            } else {
                (0..16).fold(0u16, |b, j| b | (((c[j] >= threshold) as u16) << j))
            };
            while bits != 0 {
                let j = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                consider(ci * 16 + j, c[j]);
            }
        }
        for (j, &h) in rest.iter().enumerate() {
            if everyone || h >= threshold {
                consider(chunks.len() * 16 + j, h);
            }
        }
        // Softmax over all experts: approximate scores for everyone, then the
        // candidates' exact terms swapped in. The exps are `fast_exp`'s (a few
        // ulp, well inside the weights' 2e-6 tolerance against f64); libm's
        // f64 exp here cost a sixth of the router.
        let c = self.logit_scale;
        let m = s.kept[0].1 * c;
        // Exponents are capped at 0: an exact score never exceeds the best
        // (m); only a candidate's approximate score can (by its radius), and
        // that capped term is added in `sum_exp` and taken out again below,
        // so a large radius never gives inf - inf.
        let e = |sc: f32| fast_exp::exp((sc * c - m).min(0.0)) as f64;
        let mut z_sum = sum_exp(approx, |v| self.score(v), c, m);
        if hi.is_some() {
            for &(z, sc) in &s.cands {
                z_sum += e(sc) - e(self.score(approx[z]));
            }
        }
        let total: f64 = s.kept.iter().map(|&(_, sc)| e(sc) / z_sum).sum();
        for &(z, sc) in &s.kept {
            experts.push(z);
            weights.push(e(sc) / z_sum / (total + RENORM_EPS));
        }
    }
}

/// Inserts `v` into the descending list `best` if it beats the last entry
/// (strictly: NaN never enters).
#[inline(always)]
fn push_best(best: &mut [f32], v: f32) {
    let k = best.len();
    if v.is_nan() || v <= best[k - 1] {
        return;
    }
    let mut i = k - 1;
    while i > 0 && v > best[i - 1] {
        best[i] = best[i - 1];
        i -= 1;
    }
    best[i] = v;
}

/// The k-th largest value of `xs` counting repeats, NaN ignored; -inf when
/// fewer than k values are not NaN. Each of 16 lanes keeps its own top k with
/// a compare-exchange network (vector selects, no scalar chain over the row),
/// and the global k-th largest is then among those 16 k values.
#[inline(always)]
fn kth_largest(xs: &[f32], k: usize, lanes: &mut Vec<[f32; 16]>, best: &mut Vec<f32>) -> f32 {
    lanes.clear();
    lanes.resize(k, [f32::NEG_INFINITY; 16]);
    let (chunks, rest) = xs.as_chunks::<16>();
    for c in chunks {
        let mut v: [f32; 16] = std::array::from_fn(|j| if c[j].is_nan() { f32::NEG_INFINITY } else { c[j] });
        for t in lanes.iter_mut() {
            for j in 0..16 {
                let (hi, lo) = if v[j] > t[j] { (v[j], t[j]) } else { (t[j], v[j]) };
                t[j] = hi;
                v[j] = lo;
            }
        }
    }
    best.clear();
    best.resize(k, f32::NEG_INFINITY);
    // Lane maxima first; deeper levels are lane-wise smaller, so only the
    // lanes that beat the current k-th best are looked at.
    for (level, t) in lanes.iter().enumerate() {
        let bar = best[k - 1];
        let mut bits = if level == 0 {
            u16::MAX
        } else {
            (0..16).fold(0u16, |b, j| b | (((t[j] > bar) as u16) << j))
        };
        while bits != 0 {
            let j = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            push_best(best, t[j]);
        }
    }
    rest.iter().for_each(|&v| push_best(best, v));
    best[k - 1]
}

/// Per-token terms of a row's quantisation: scale `s`, `|s q|`, `|x - s q|`, `|x|`.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowTerms {
    pub scale: f32,
    pub q_norm: f32,
    pub err_norm: f32,
    pub norm: f32,
}

/// Selection buffers reused across the tokens of a block.
#[derive(Default)]
struct Picks {
    lanes: Vec<[f32; 16]>,
    best: Vec<f32>,
    cands: Vec<(usize, f32)>,
    kept: Vec<(u32, f32)>,
}

impl Int8Screen {
    fn new(w: &[f32], n: usize, d: usize) -> Self {
        let groups = n.div_ceil(GROUP);
        let quads = d / 4;
        let padded = groups * GROUP;
        let mut packed = vec![0i8; groups * quads * GROUP * 4];
        let mut scale = vec![1f32; padded];
        let mut sum_q = vec![0i32; padded];
        let mut err_norm = vec![0f32; padded];
        let mut q = vec![0i8; d];
        for z in 0..n {
            (scale[z], err_norm[z]) = quantize(&w[z * d..(z + 1) * d], &mut q);
            sum_q[z] = q.iter().map(|&v| v as i32).sum();
            let (g, lane) = (z / GROUP, z % GROUP);
            for qd in 0..quads {
                let at = ((g * quads + qd) * GROUP + lane) * 4;
                packed[at..at + 4].copy_from_slice(&q[qd * 4..qd * 4 + 4]);
            }
        }
        Int8Screen {
            groups,
            packed,
            scale,
            sum_q,
            err_norm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_sum_matches_libm() {
        let xs: Vec<f32> = (0..200).map(|i| -60.0 + i as f32 * 0.37).collect();
        let want: f64 = xs.iter().map(|&v| (v as f64 - 14.0).exp()).sum();
        let got = sum_exp(&xs, |v| v, 1.0, 14.0);
        assert!((got / want - 1.0).abs() < 1e-6, "{got} vs {want}");
        // Above the best score (only an approximate score can be) the term is
        // capped at 1 instead of overflowing.
        assert_eq!(sum_exp(&[1e3, 0.0], |v| v, 1.0, 0.0), 2.0);
    }

    #[test]
    fn expert_quantisation_residual_is_what_the_radius_assumes() {
        let x: Vec<f32> = (0..36).map(|i| ((i * 7919) % 101) as f32 / 13.0 - 3.0).collect();
        let mut q = vec![0i8; 36];
        let (s, e) = quantize(&x, &mut q);
        // Each element is off by at most half a step.
        assert!(e <= 0.5 * s * (x.len() as f32).sqrt() + 1e-6);
        let direct: f32 = x
            .iter()
            .zip(&q)
            .map(|(&v, &q)| (v - s * q as f32).powi(2))
            .sum::<f32>()
            .sqrt();
        assert!((e - direct).abs() < 1e-5);
        assert_eq!(q.iter().map(|v| v.unsigned_abs()).max(), Some(127));
    }
}
