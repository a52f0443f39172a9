//! CPU fast path of [`crate::model::router::Router::route`] for f32 inputs.
//!
//! The generic path scores with candle ops (standardise, matmul, softmax,
//! copy to f64 rows): about ten passes over a `[tokens, N]` matrix and one
//! libm `exp` per score. Here each block of tokens is standardised, scored,
//! selected and normalised in one go, in parallel over token blocks.
//!
//! With many experts the scoring itself dominates (`N d` multiply-adds per
//! token and module, comparable to the base model's own FLOPs at the routing
//! benchmark's 166 experts; benches/README.md). There the scores are first *screened* in int8, with AMX tiles
//! where the CPU has AMX-INT8 (`amx`) and with AVX-512 VNNI
//! otherwise (four times the f32 multiply-add rate; both give the same
//! integers), each approximate score carrying a rigorous error radius from
//! the quantisation residuals (Cauchy-Schwarz). Candidates are the experts
//! whose upper bound reaches the k-th best lower bound. They are rescored
//! exactly in f32 in descending order of approximate score: the first k
//! always, and each later one only if its upper bound reaches the k-th best
//! exact score found so far, a lower bound on the true k-th best (about half
//! as many dot products as rescoring every candidate). The chosen experts and
//! their weights are therefore those of exact scoring: an expert left out
//! provably scores below k others. The only approximate quantity is the
//! softmax denominator's share from the experts not rescored, which enters
//! the weights through the `1e-6` of the renormalisation
//! `p / (sum of kept p + 1e-6)` alone (relative effect on a weight below
//! `1e-6 * N/k * (e^radius - 1)`; the test holds the weights to 2e-6 of the
//! f64 reference).
//!
//! Per token the screened path is one pass over the experts' int8 scores
//! (bounds and a lane-wise top-k network of vector selects, whose k-th best
//! is read off in registers), one compare and compress for the candidates, a
//! short insertion sort of them, and vectorised `exp` passes for the
//! denominator and for swapping the rescored experts' exact terms in;
//! buffers are reused per thread, and a one-thread pool runs the blocks on
//! the calling thread instead of handing them to its worker.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod shared;

use shared::{GROUP, Int8Screen, RowTerms};
pub use shared::{LN_EPS, RENORM_EPS, Routing};

use super::fused::fast_exp;
use super::fused::gemm::gemm_f32;
use crate::process::numerics::{Vectors, avx512_vnni};
use crate::process::threads::map_on_pool;

/// The screened path keeps at most this many experts per token.
#[cfg(target_arch = "x86_64")]
const MAX_SCREEN_K: usize = avx512::MAX_SCREEN_K;
#[cfg(not(target_arch = "x86_64"))]
const MAX_SCREEN_K: usize = 0;
/// Screening pays off from this many experts on.
const SCREEN_FROM: usize = 2 * GROUP;
/// Kept experts whose softmax terms `write_weights` holds on the stack.
const MAX_KEPT_TERMS: usize = 16;
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
    screen: Option<Int8Screen>,
}

/// Whether the int8 screen of width `d` can run on AMX tiles here.
fn amx_usable(d: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        d.is_multiple_of(amx::TILE_DIMS) && amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = d;
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
    /// `vectors`: the int8 screen runs only for [`Vectors::Avx512`] (its weights
    /// agree with exact scoring to rounding, not to the bit).
    pub fn new(
        w: Vec<f32>,
        (n, d): (usize, usize),
        top_k: usize,
        (score_fn, logit_scale): (ScoreFn, f64),
        vectors: Vectors,
    ) -> Self {
        // The AVX-512 row kernels work on whole vectors of 16 floats.
        let screen = (vectors == Vectors::Avx512
            && n >= SCREEN_FROM
            && d.is_multiple_of(16)
            && top_k <= MAX_SCREEN_K
            && avx512_vnni())
        .then(|| Int8Screen::new(&w, n, d, true));
        CpuRouter {
            n,
            d,
            top_k,
            score_fn,
            logit_scale: logit_scale as f32,
            w,
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
        let block = |rows: &[f32]| {
            let mut out = (
                Vec::with_capacity(BLOCK * self.top_k),
                Vec::with_capacity(BLOCK * self.top_k),
            );
            match &self.screen {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: a screen exists only where avx512_vnni() held.
                Some(screen) => unsafe { self.route_screened(screen, rows, &mut out) },
                _ => self.route_exact(rows, &mut out),
            }
            out
        };
        let parts = map_on_pool(u.chunks(BLOCK * self.d).collect(), block);
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
            self.select(a, &scores, &mut picks, out);
        }
    }

    /// Int8 screen, then exact rescoring of the candidates.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")]
    unsafe fn route_screened(&self, sc: &Int8Screen, rows: &[f32], out: &mut (Vec<u32>, Vec<f64>)) {
        SCRATCH.with_borrow_mut(|s| {
            // SAFETY: AVX-512 is enabled here (the caller's contract).
            unsafe { self.route_screened_in(sc, rows, s, out) }
        })
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")]
    unsafe fn route_screened_in(
        &self,
        sc: &Int8Screen,
        rows: &[f32],
        s: &mut Scratch,
        out: &mut (Vec<u32>, Vec<f64>),
    ) {
        let d = self.d;
        let t = rows.len() / d;
        let padded = sc.groups * GROUP;
        // Rows of the int8 sums: whole group pairs (AMX works on pairs; the
        // extra group of an odd count is all zeros), and the token rows
        // padded to whole tile pairs for AMX (the padding rows' sums are
        // never read).
        let stride = sc.groups.next_multiple_of(2) * GROUP;
        let t_rows = if sc.amx {
            t.next_multiple_of(2 * amx::TILE_ROWS)
        } else {
            t
        };
        // Every element of these is written below before it is read, so the
        // buffers are only resized, not cleared, between blocks.
        s.x.resize(t * d, 0.0);
        s.xq.resize(t_rows * d, 0);
        s.acc.resize(t_rows * stride, 0);
        s.approx.resize(padded, 0.0);
        s.hi.resize(padded, 0.0);
        s.terms.clear();
        for ((src, row), q) in rows
            .chunks_exact(d)
            .zip(s.x.chunks_exact_mut(d))
            .zip(s.xq.chunks_exact_mut(d))
        {
            // SAFETY: AVX-512 is enabled here; d is a multiple of 16.
            s.terms
                .push(unsafe { avx512::prep_row(src, row, self.score_fn == ScoreFn::Standardized, q) });
        }
        let (xq, acc) = (&s.xq[..t_rows * d], &mut s.acc[..t_rows * stride]);
        if sc.amx {
            // SAFETY: `amx` is set only where `amx::available()` held and d
            // is a multiple of 64; rows, groups and stride are padded above.
            unsafe { amx::dots(xq, t_rows, d, &sc.packed, stride / GROUP, acc, stride) };
        } else {
            // SAFETY: buffer sizes match the layout `dots` documents.
            unsafe { avx512::dots(xq, t, d, &sc.packed, sc.groups, acc, stride) };
        }
        let slack = d as f32 * 1.2e-7 + 1e-6;
        for i in 0..t {
            let r = s.terms[i];
            // |x·w - a| <= |s_x q_x| |e_w| + |e_x| |w|, widened by 0.1 % for
            // rounding of the norms and by d 2^-23 |x| |w| for the f32
            // rounding of the exact dot product.
            let radius = (r.q_norm * 1.001, r.err_norm * 1.001 + slack * r.norm);
            let screen = (&s.acc[i * stride..i * stride + padded], radius, r.scale, r.sum_q);
            let bufs = (&mut s.approx[..padded], &mut s.hi[..padded]);
            // SAFETY: AVX-512 is enabled here; every slice is `padded` long.
            let threshold = unsafe { self.screen_token(sc, screen, bufs) };
            let xi = &s.x[i * d..(i + 1) * d];
            // SAFETY: AVX-512 is enabled here.
            unsafe {
                self.select_screened(
                    xi,
                    &s.approx[..padded],
                    &s.hi[..padded],
                    threshold,
                    &mut s.picks,
                    out,
                )
            };
        }
    }

    /// Runs [`avx512::screen_token`] with the top-k network sized for this
    /// router's k and returns the k-th best lower bound (-inf when fewer
    /// than k bounds are not NaN).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma")]
    unsafe fn screen_token(
        &self,
        sc: &Int8Screen,
        (acc, radius, scale, sum_q): (&[i32], (f32, f32), f32, i32),
        bufs: (&mut [f32], &mut [f32]),
    ) -> f32 {
        let abs = self.score_fn == ScoreFn::Absolute;
        macro_rules! run {
            ($k:literal) => {{
                let mut lanes = [[f32::NEG_INFINITY; 16]; $k];
                // SAFETY: AVX-512 is enabled here; the buffers are padded.
                unsafe {
                    avx512::screen_token::<$k>(
                        acc,
                        sc,
                        (scale, radius.0, radius.1, sum_q),
                        abs,
                        self.n,
                        bufs,
                        &mut lanes,
                    )
                };
                // SAFETY: AVX-512F is enabled here; top_k <= $k.
                unsafe { avx512::kth_of_levels(&lanes, self.top_k) }
            }};
        }
        match self.top_k {
            1 => run!(1),
            2 => run!(2),
            3 => run!(3),
            4 => run!(4),
            _ => run!(8),
        }
    }

    /// Top-k of one screened token. Candidates are the experts whose upper
    /// bound reaches the k-th best lower bound. They are rescored exactly in
    /// descending order of approximate score: the first k always, each later
    /// one only if its upper bound reaches the k-th best exact score so far
    /// (a lower bound on the true k-th best), so that only candidates that
    /// could still place are rescored.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma")]
    unsafe fn select_screened(
        &self,
        xi: &[f32],
        approx: &[f32],
        hi: &[f32],
        threshold: f32,
        s: &mut Picks,
        out: &mut (Vec<u32>, Vec<f64>),
    ) {
        let (k, d, n) = (self.top_k, self.d, self.n);
        s.ids.clear();
        if threshold == f32::NEG_INFINITY {
            // Fewer than k usable bounds (NaN inputs): everyone is a candidate,
            // and the NaN reaches the weights, as on the generic path.
            s.ids.extend(0..n as u32);
        } else {
            // SAFETY: AVX-512F is enabled here; `hi` is padded (-inf padding).
            unsafe { avx512::indices_at_least(hi, threshold, &mut s.ids) };
        }
        // Candidates by descending approximate score, ties (and NaN) in index
        // order: an insertion sort, as there are a handful.
        s.order.clear();
        for &z in &s.ids {
            let a = self.score(approx[z as usize]);
            let mut at = s.order.len();
            while at > 0 && a > s.order[at - 1].1 {
                at -= 1;
            }
            s.order.insert(at, (z, a));
        }
        s.kept.clear();
        s.exact.clear();
        s.approx.clear();
        for (i, &(z, a)) in s.order.iter().enumerate() {
            // k exact scores at least this high exist: a bound below it
            // cannot place (nor tie, so index order is not at stake), and
            // neither can anything against a NaN score.
            if i >= k {
                let could_place = hi[z as usize] >= s.kept[k - 1].1;
                if !could_place {
                    continue;
                }
            }
            // SAFETY: AVX-512F is enabled here; equal lengths, multiple of 16.
            let sc = self.score(unsafe { avx512::dot(xi, &self.w[z as usize * d..(z as usize + 1) * d]) });
            s.exact.push(sc);
            s.approx.push(a);
            insert_best(&mut s.kept, (z, sc), k);
        }
        // Softmax over all experts: approximate scores for everyone, then the
        // rescored experts' exact terms swapped in.
        let c = self.logit_scale;
        let m = s.kept[0].1 * c;
        let abs = self.score_fn == ScoreFn::Absolute;
        // SAFETY: AVX-512 is enabled here; `approx` is padded, the rescored
        // lists have one length.
        let z_sum = unsafe {
            avx512::sum_exp(approx, n, abs, c, m) as f64
                + avx512::exp_swap_sum(&s.exact, &s.approx, c, m) as f64
        };
        self.write_weights(&s.kept, z_sum, m, out);
    }

    /// Appends the kept experts and their renormalised weights
    /// `p / (sum of kept p + 1e-6)`, `p = e^(score c - m) / z_sum`.
    #[inline(always)]
    fn write_weights(
        &self,
        kept: &[(u32, f32)],
        z_sum: f64,
        m: f32,
        (experts, weights): &mut (Vec<u32>, Vec<f64>),
    ) {
        // Each kept expert's term once (k is small; the heap only past 16).
        let (mut stack, mut heap) = ([0f64; MAX_KEPT_TERMS], Vec::new());
        let terms: &mut [f64] = if kept.len() <= MAX_KEPT_TERMS {
            &mut stack[..kept.len()]
        } else {
            heap.resize(kept.len(), 0.0);
            &mut heap
        };
        for (t, &(_, sc)) in terms.iter_mut().zip(kept) {
            *t = self.softmax_term(sc, m);
        }
        let total: f64 = terms.iter().map(|&t| t / z_sum).sum();
        for (&(z, _), &t) in kept.iter().zip(terms.iter()) {
            experts.push(z);
            weights.push(t / z_sum / (total + RENORM_EPS));
        }
    }

    /// One softmax numerator `e^(score c - m)`, exponent capped at 0 (see
    /// [`CpuRouter::select`]).
    #[inline(always)]
    fn softmax_term(&self, sc: f32, m: f32) -> f64 {
        fast_exp::exp((sc * self.logit_scale - m).min(0.0)) as f64
    }

    #[inline(always)]
    fn score(&self, dot: f32) -> f32 {
        match self.score_fn {
            ScoreFn::Standardized => dot,
            ScoreFn::Absolute => dot.abs(),
        }
    }

    /// Chooses the top-k of one token from its exact dot products (ties to
    /// the lower index) and writes their renormalised weights.
    #[inline(always)]
    fn select(&self, dots: &[f32], scores: &[f32], s: &mut Picks, out: &mut (Vec<u32>, Vec<f64>)) {
        let k = self.top_k;
        // k-th best score. A NaN never enters, so NaN inputs make every
        // expert a candidate and the NaN reaches the weights, as on the
        // generic path.
        let threshold = kth_largest(scores, k, &mut s.lanes, &mut s.best);
        let everyone = threshold == f32::NEG_INFINITY;
        s.kept.clear();
        let (chunks, rest) = scores.as_chunks::<16>();
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
                insert_best(&mut s.kept, ((ci * 16 + j) as u32, c[j]), k);
            }
        }
        for (j, &sc) in rest.iter().enumerate() {
            if everyone || sc >= threshold {
                insert_best(&mut s.kept, ((chunks.len() * 16 + j) as u32, sc), k);
            }
        }
        // Softmax over all experts. The exps are `fast_exp`'s (a few ulp,
        // well inside the weights' 2e-6 tolerance against f64); libm's f64
        // exp here cost a sixth of the router. Exponents are capped at 0 (an
        // exact score never exceeds the best, m; on the screened path an
        // approximate one can, by its radius, and the cap keeps that finite).
        let c = self.logit_scale;
        let m = s.kept[0].1 * c;
        let z_sum = sum_exp(dots, |v| self.score(v), c, m);
        self.write_weights(&s.kept, z_sum, m, out);
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

/// Inserts the scored expert `(z, score)` into `kept`, at most `k` long and
/// ordered best first, ties to the lower index. A NaN score beats nothing,
/// so it is kept only while there is room (and then the NaN reaches the
/// weights).
#[inline(always)]
fn insert_best(kept: &mut Vec<(u32, f32)>, (z, sc): (u32, f32), k: usize) {
    let pos = kept
        .iter()
        .position(|&(oz, o)| sc > o || (sc == o && z < oz))
        .unwrap_or(kept.len());
    if pos < k {
        kept.insert(pos, (z, sc));
        kept.truncate(k);
    }
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
    kth_of_lanes(lanes, k, best);
    rest.iter().for_each(|&v| push_best(best, v));
    best[k - 1]
}

/// The k-th largest of lane-wise sorted levels (`lanes[level][lane]`,
/// descending by level), left in `best` with the k largest; -inf when fewer
/// than k are finite or above -inf.
#[inline(always)]
fn kth_of_lanes(lanes: &[[f32; 16]], k: usize, best: &mut Vec<f32>) -> f32 {
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
    best[k - 1]
}

/// Buffers of the screened path, kept per thread across blocks and calls.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    xq: Vec<i8>,
    acc: Vec<i32>,
    approx: Vec<f32>,
    hi: Vec<f32>,
    terms: Vec<RowTerms>,
    picks: Picks,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Selection buffers reused across the tokens of a block.
#[derive(Default)]
struct Picks {
    lanes: Vec<[f32; 16]>,
    best: Vec<f32>,
    /// Screened path: candidate experts in index order, the same by
    /// descending approximate score, and the exact and approximate scores of
    /// every expert rescored.
    ids: Vec<u32>,
    order: Vec<(u32, f32)>,
    exact: Vec<f32>,
    approx: Vec<f32>,
    kept: Vec<(u32, f32)>,
}

impl Int8Screen {
    /// The screen of `n` experts of width `d`, on AMX tiles when `amx` and the
    /// CPU has them (and `d` suits them).
    fn new(w: &[f32], n: usize, d: usize, amx: bool) -> Self {
        let groups = n.div_ceil(GROUP);
        let quads = d / 4;
        let padded = groups * GROUP;
        // 128 is q = 0: padding experts score exactly 0 (and are masked).
        let mut packed = vec![128u8; groups.next_multiple_of(2) * quads * GROUP * 4];
        let mut scale = vec![1f32; padded];
        let mut err_norm = vec![0f32; padded];
        let mut w_norm = vec![0f32; padded];
        let mut q = vec![0i8; d];
        for z in 0..n {
            let wz = &w[z * d..(z + 1) * d];
            (scale[z], err_norm[z]) = quantize(wz, &mut q);
            w_norm[z] = sum16(wz, |v| v * v).sqrt();
            let (g, lane) = (z / GROUP, z % GROUP);
            for qd in 0..quads {
                let at = ((g * quads + qd) * GROUP + lane) * 4;
                for (o, &v) in packed[at..at + 4].iter_mut().zip(&q[qd * 4..qd * 4 + 4]) {
                    // |v| <= 127, so v + 128 is 1..=255.
                    *o = (v as i16 + 128) as u8;
                }
            }
        }
        Int8Screen {
            groups,
            packed,
            amx: amx && amx_usable(d),
            scale,
            err_norm,
            w_norm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    fn draw(rng: &mut SeededRng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.standard_normal() as f32).collect()
    }

    /// The AMX screen gives the very integers of the VNNI screen, so routing
    /// through either is bit-identical: odd and even group counts (the AMX
    /// path pads odd ones), token counts off the 64-token block and the
    /// 32-row tile pair, and inputs with outlier dimensions.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_and_vnni_screens_route_identically() {
        if !(avx512_vnni() && amx_usable(256)) {
            eprintln!("skipped: this CPU has no AMX-INT8 (or no VNNI) to compare");
            return;
        }
        let mut rng = SeededRng::new(11);
        for (n, d, k, t) in [
            (166, 256, 2, 150),
            (40, 256, 1, 70),
            (64, 320, 3, 33),
            (33, 192, 2, 5),
        ] {
            let mut w = draw(&mut rng, n * d);
            w.chunks_exact_mut(d).for_each(standardize_row);
            let mut u = draw(&mut rng, t * d);
            for row in u.chunks_exact_mut(d) {
                row[5] *= 40.0;
            }
            let scores = (ScoreFn::Standardized, 1.0 / (d as f64).sqrt());
            let amx = CpuRouter::new(w.clone(), (n, d), k, scores, Vectors::Avx512);
            let mut vnni = amx.clone();
            vnni.screen = Some(Int8Screen::new(&w, n, d, false));
            assert!(
                amx.screen.as_ref().is_some_and(|s| s.amx),
                "{n} experts of width {d}: AMX screen"
            );
            assert!(!vnni.screen.as_ref().is_some_and(|s| s.amx));
            let (a, b) = (amx.route(&u, t), vnni.route(&u, t));
            assert_eq!(a.experts, b.experts, "{n} experts, {t} tokens");
            assert_eq!(a.weights, b.weights, "{n} experts, {t} tokens");
        }
    }

    /// The vector k-th best of lane-wise sorted levels equals the scalar one,
    /// with repeated values, -inf padding and every k up to the level count.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn kth_of_levels_equals_the_scalar_selection() {
        if !avx512_vnni() {
            return;
        }
        fn check<const K: usize>(rng: &mut SeededRng) {
            for _ in 0..200 {
                let mut lanes = [[f32::NEG_INFINITY; 16]; K];
                // Filled lane by lane (a column of the levels at a time).
                #[allow(clippy::needless_range_loop)]
                for lane in 0..16 {
                    // Lane-wise descending, a few lanes short of K values,
                    // values on a coarse grid so that repeats are common.
                    let filled = (rng.uniform() * (K + 1) as f64) as usize;
                    let mut vals: Vec<f32> = (0..filled.min(K))
                        .map(|_| (rng.uniform() * 6.0).floor() as f32 - 3.0)
                        .collect();
                    vals.sort_by(|a, b| b.total_cmp(a));
                    for (level, v) in vals.into_iter().enumerate() {
                        lanes[level][lane] = v;
                    }
                }
                for k in 1..=K {
                    let mut best = Vec::new();
                    let want = kth_of_lanes(&lanes, k, &mut best);
                    // SAFETY: AVX-512F is present (checked above); k <= K.
                    let got = unsafe { avx512::kth_of_levels(&lanes, k) };
                    assert_eq!(got, want, "K {K}, k {k}, lanes {lanes:?}");
                }
            }
        }
        let mut rng = SeededRng::new(4);
        check::<1>(&mut rng);
        check::<2>(&mut rng);
        check::<4>(&mut rng);
        check::<8>(&mut rng);
    }

    /// What swapping exact for approximate terms adds to the denominator,
    /// against f64 sums of libm exps, for list lengths around the 16-lane
    /// chunks (including none).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_swap_sum_matches_libm() {
        if !avx512_vnni() {
            return;
        }
        let mut rng = SeededRng::new(8);
        for len in [0, 1, 5, 16, 17, 40] {
            let exact: Vec<f32> = (0..len).map(|_| rng.uniform() as f32 * 20.0 - 10.0).collect();
            let approx: Vec<f32> = exact.iter().map(|&e| e + rng.uniform() as f32 - 0.5).collect();
            let (c, m) = (0.7f32, 6.0f32);
            let term = |x: f32| ((x as f64 * c as f64 - m as f64).min(0.0)).exp();
            let want: f64 = exact.iter().zip(&approx).map(|(&e, &a)| term(e) - term(a)).sum();
            // SAFETY: AVX-512 is present (checked above); equal lengths.
            let got = unsafe { avx512::exp_swap_sum(&exact, &approx, c, m) } as f64;
            assert!(
                (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                "len {len}: {got} vs {want}"
            );
        }
    }

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
