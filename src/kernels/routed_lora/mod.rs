//! CPU fast path of the routed mixture (inference only). The generic path in
//! `model::adapter` issues about six candle ops per used expert, which dominates
//! at 100+ experts. Here, with AVX-512 and a rank of 16 to 64, each expert's
//! down-projection reads its token rows in place and the up-projection adds
//! straight into the output rows (`avx512`); otherwise each expert's
//! tokens are gathered into a buffer for two gemm calls and scattered back.
//! Work stays O(k) per token either way. Used only for f32 CPU tensors that
//! carry no autograd graph.

use candle_core::{DType, Device, Tensor};

#[cfg(target_arch = "x86_64")]
mod avx512;

use super::fused::F32Data;
use super::fused::gemm::gemm_f32;

#[cfg(target_arch = "x86_64")]
use crate::process::numerics::Vectors;
use crate::process::threads::map_on_pool;
use candle_core::Result;

/// Whether the fast path applies to these tensors.
pub fn applicable(u: &Tensor, at: &Tensor) -> bool {
    matches!(u.device(), Device::Cpu) && u.dtype() == DType::F32 && at.dtype() == DType::F32 && !u.track_op()
}

/// Expert rows grouped by expert: `perm[offsets[z]..offsets[z+1]]` are the
/// token rows routed to expert z, `weights` the matching scaled weights.
pub struct Groups<'a> {
    pub perm: &'a [u32],
    pub weights: &'a [f64],
    pub offsets: &'a [usize],
}

/// `out[t] = sum over (t, z) pairs of w * u[t] At_z Bt_z`, `u` `[n, d_in]`,
/// `at` `[N, d_in, r]`, `bt` `[N, r, d_out]`.
pub fn routed_delta(u: &Tensor, at: &Tensor, bt: &Tensor, g: &Groups<'_>) -> Result<Tensor> {
    let u = u.contiguous()?;
    let (n, d_in) = u.dims2()?;
    let (n_exp, _, r) = at.dims3()?;
    let d_out = bt.dims3()?.2;
    let name = "routed-lora";
    let (us, ats, bts) = (
        F32Data::of(&u, name)?,
        F32Data::of(at, name)?,
        F32Data::of(bt, name)?,
    );
    let used: Vec<usize> = (0..n_exp).filter(|&z| g.offsets[z + 1] > g.offsets[z]).collect();
    let s = Stacks {
        u: &us,
        at: &ats,
        bt: &bts,
        d_in,
        r,
        d_out,
    };
    // The register kernels sum in another order than gemm: AVX-512 builds only
    // (process::numerics), so the default build's bits do not depend on the CPU.
    #[cfg(target_arch = "x86_64")]
    if Vectors::of_build() == Vectors::Avx512 && avx512::applies(r, d_out) {
        let prefetch = crate::kernels::routed_lora::avx512::Prefetch::for_this_cpu();
        return Tensor::from_vec(direct(&s, g, &used, prefetch), (n, d_out), &Device::Cpu);
    }
    Tensor::from_vec(grouped_gemm(&s, g, &used), (n, d_out), &Device::Cpu)
}

/// The token rows and the stacked expert matrices of one routed module, as
/// row-major f32: `u` `[n, d_in]`, `at` `[N, d_in, r]`, `bt` `[N, r, d_out]`.
struct Stacks<'a> {
    u: &'a [f32],
    at: &'a [f32],
    bt: &'a [f32],
    d_in: usize,
    r: usize,
    d_out: usize,
}

impl Stacks<'_> {
    fn tokens(&self) -> usize {
        self.u.len() / self.d_in
    }

    /// Expert z's `A^T`, `[d_in, r]`.
    fn a(&self, z: usize) -> &[f32] {
        let len = self.d_in * self.r;
        &self.at[z * len..(z + 1) * len]
    }

    /// Expert z's `B^T`, `[r, d_out]`.
    fn b(&self, z: usize) -> &[f32] {
        let len = self.r * self.d_out;
        &self.bt[z * len..(z + 1) * len]
    }
}

/// [`routed_delta`] with two gemm calls per used expert on a gathered copy
/// of its token rows, then a scatter-add: for shapes the AVX-512 kernels do
/// not cover, and their reference in tests.
fn grouped_gemm(s: &Stacks<'_>, g: &Groups<'_>, used: &[usize]) -> Vec<f32> {
    let (d_in, r, d_out) = (s.d_in, s.r, s.d_out);
    let parts = map_on_pool(used.to_vec(), |z| {
        let (lo, hi) = (g.offsets[z], g.offsets[z + 1]);
        let m = hi - lo;
        let mut x = vec![0f32; m * d_in];
        for (i, &t) in g.perm[lo..hi].iter().enumerate() {
            let t = t as usize;
            x[i * d_in..(i + 1) * d_in].copy_from_slice(&s.u[t * d_in..(t + 1) * d_in]);
        }
        let mut h = vec![0f32; m * r];
        gemm_f32(&mut h, &x, s.a(z), (m, r, d_in), false);
        for (i, &w) in g.weights[lo..hi].iter().enumerate() {
            for v in &mut h[i * r..(i + 1) * r] {
                *v *= w as f32;
            }
        }
        let mut y = vec![0f32; m * d_out];
        gemm_f32(&mut y, &h, s.b(z), (m, d_out, r), false);
        (z, y)
    });
    let mut out = vec![0f32; s.tokens() * d_out];
    for (z, y) in parts {
        for (i, &t) in g.perm[g.offsets[z]..g.offsets[z + 1]].iter().enumerate() {
            let t = t as usize;
            for (o, v) in out[t * d_out..(t + 1) * d_out]
                .iter_mut()
                .zip(&y[i * d_out..(i + 1) * d_out])
            {
                *o += v;
            }
        }
    }
    out
}

/// [`routed_delta`] through the AVX-512 kernels (`avx512`): every
/// expert's down-projection for its tokens in parallel into one `[picks, r]`
/// buffer, then the up-projections accumulated into the output, in parallel
/// over column ranges (each thread owns whole columns, so no two write the
/// same float). `prefetch`: whether the next expert's weights are prefetched
/// meanwhile (no effect on the result).
#[cfg(target_arch = "x86_64")]
fn direct(
    s: &Stacks<'_>,
    g: &Groups<'_>,
    used: &[usize],
    prefetch: crate::kernels::routed_lora::avx512::Prefetch,
) -> Vec<f32> {
    use avx512::{lora_down, lora_up};
    let (r, d_out) = (s.r, s.d_out);
    let total = g.perm.len();
    let mut h = vec![0f32; total * r];
    // One disjoint slice of `h` per used expert.
    let mut slices = Vec::with_capacity(used.len());
    let mut rest = &mut h[..];
    let mut at = 0;
    for &z in used {
        let (lo, hi) = (g.offsets[z], g.offsets[z + 1]);
        let (_, tail) = rest.split_at_mut((lo - at) * r);
        let (mine, tail) = tail.split_at_mut((hi - lo) * r);
        slices.push((z, mine));
        rest = tail;
        at = hi;
    }
    // The expert used after each used expert, whose weights are prefetched.
    let next_of = |i: usize| used.get(i + 1).copied();
    let slices: Vec<_> = slices.into_iter().enumerate().collect();
    map_on_pool(slices, |(i, (z, hz))| {
        let (lo, hi) = (g.offsets[z], g.offsets[z + 1]);
        let next = next_of(i).map_or(&[][..], |n| s.a(n));
        // SAFETY: `applies` held (AVX-512F, FMA, r); row indices come from
        // the routing of these tokens; the slices have the sizes asserted
        // inside.
        unsafe {
            lora_down(
                s.u,
                s.d_in,
                &g.perm[lo..hi],
                &g.weights[lo..hi],
                (s.a(z), next),
                r,
                hz,
                prefetch,
            )
        };
    });
    let mut out = vec![0f32; s.tokens() * d_out];
    let vectors = d_out / 16;
    let tasks = rayon::current_num_threads().min(vectors).max(1);
    let ptr = OutPtr(out.as_mut_ptr());
    map_on_pool((0..tasks).collect(), |task| {
        let cols = (vectors * task / tasks * 16)..(vectors * (task + 1) / tasks * 16);
        let ptr = &ptr;
        for (i, &z) in used.iter().enumerate() {
            let (lo, hi) = (g.offsets[z], g.offsets[z + 1]);
            let next = next_of(i).map_or(&[][..], |n| s.b(n));
            // SAFETY: as above; `out` has n rows of d_out floats, every
            // routed row is below n, and the tasks' column ranges are disjoint.
            unsafe {
                lora_up(
                    &h[lo * r..hi * r],
                    r,
                    &g.perm[lo..hi],
                    (s.b(z), next),
                    d_out,
                    cols.clone(),
                    ptr.0,
                    prefetch,
                )
            };
        }
    });
    out
}

/// The output buffer shared by the column tasks of [`direct`], which write
/// disjoint columns.
#[cfg(target_arch = "x86_64")]
struct OutPtr(*mut f32);
// SAFETY: only used by tasks that write disjoint columns (see `direct`).
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for OutPtr {}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    /// The AVX-512 kernels against the gemm path, over ranks 16-64, output
    /// widths with and without a 64-column tail, and experts with 0 to 7
    /// tokens (odd counts leave a token without a pair, counts off 4 a
    /// partial tile).
    #[test]
    fn direct_kernels_equal_grouped_gemm() {
        if !avx512::applies(16, 16) {
            return;
        }
        let mut rng = SeededRng::new(3);
        let mut draw = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform() as f32 - 0.5).collect() };
        for (r, d_in, d_out) in [(16, 64, 80), (32, 48, 256), (48, 32, 16), (64, 96, 144)] {
            let (n, n_exp) = (23, 9);
            let (us, ats, bts) = (draw(n * d_in), draw(n_exp * d_in * r), draw(n_exp * r * d_out));
            // Expert z gets tokens t with t % 8 < z % 8 (up to 7 each; expert 0 none).
            let mut offsets = vec![0usize];
            let (mut perm, mut weights) = (Vec::new(), Vec::new());
            for z in 0..n_exp {
                for t in (0..n).filter(|t| t % 8 < z % 8) {
                    perm.push(t as u32);
                    weights.push(0.1 + 0.01 * (t + z) as f64);
                }
                offsets.push(perm.len());
            }
            let g = Groups {
                perm: &perm,
                weights: &weights,
                offsets: &offsets,
            };
            let used: Vec<usize> = (0..n_exp).filter(|&z| offsets[z + 1] > offsets[z]).collect();
            let s = Stacks {
                u: &us,
                at: &ats,
                bt: &bts,
                d_in,
                r,
                d_out,
            };
            use crate::kernels::routed_lora::avx512::Prefetch;
            let (want, got) = (
                grouped_gemm(&s, &g, &used),
                direct(&s, &g, &used, Prefetch(false)),
            );
            // Prefetching the next expert changes nothing but timing.
            assert_eq!(got, direct(&s, &g, &used, Prefetch(true)));
            let worst = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "rank {r}, {d_in} -> {d_out}: off by {worst}");
            assert!(
                want.iter().any(|&v| v.abs() > 1e-2),
                "the case computes something"
            );
        }
    }

    /// The default build takes the gemm path whatever the CPU, so its bits are the
    /// same on AVX-512 and FMA machines (`process::numerics`); an `avx512` build on
    /// such a CPU takes the register kernels.
    #[test]
    fn routed_delta_takes_the_builds_kernels() {
        let mut rng = SeededRng::new(5);
        let (n, n_exp, d_in, r, d_out) = (9, 3, 32, 16, 48);
        let mut draw = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform() as f32 - 0.5).collect() };
        let (us, ats, bts) = (draw(n * d_in), draw(n_exp * d_in * r), draw(n_exp * r * d_out));
        // Token t goes to experts t % 3 and (t + 1) % 3.
        let (mut perm, mut weights, mut offsets) = (vec![], vec![], vec![0usize]);
        for z in 0..n_exp {
            for t in (0..n).filter(|t| t % 3 == z || (t + 1) % 3 == z) {
                perm.push(t as u32);
                weights.push(0.25 + 0.05 * t as f64);
            }
            offsets.push(perm.len());
        }
        let g = Groups {
            perm: &perm,
            weights: &weights,
            offsets: &offsets,
        };
        let dev = Device::Cpu;
        let got = routed_delta(
            &Tensor::from_vec(us.clone(), (n, d_in), &dev).unwrap(),
            &Tensor::from_vec(ats.clone(), (n_exp, d_in, r), &dev).unwrap(),
            &Tensor::from_vec(bts.clone(), (n_exp, r, d_out), &dev).unwrap(),
            &g,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        let s = Stacks {
            u: &us,
            at: &ats,
            bt: &bts,
            d_in,
            r,
            d_out,
        };
        let used: Vec<usize> = (0..n_exp).collect();
        // The two paths differ in their last bits here, so the test tells them apart.
        if avx512::applies(r, d_out) {
            assert_ne!(
                direct(&s, &g, &used, avx512::Prefetch(false)),
                grouped_gemm(&s, &g, &used)
            );
        }
        let want = if Vectors::of_build() == Vectors::Avx512 && avx512::applies(r, d_out) {
            direct(&s, &g, &used, avx512::Prefetch(false))
        } else {
            grouped_gemm(&s, &g, &used)
        };
        assert_eq!(got, want, "bit for bit the path this build takes");
    }
}
