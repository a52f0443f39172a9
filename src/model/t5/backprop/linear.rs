//! A frozen linear with an optional trainable LoRA, on slices:
//! `y = u Wᵀ + s (u Aᵀ) Bᵀ = u W'ᵀ` with `W' = W + s B A`, the merged weight
//! built once per pass (`d_in·r·d_out` multiply-adds, against `n·d_in·d_out` per
//! product). Forward: `y = u W'ᵀ` and the bottleneck `h = s u Aᵀ` that `dB`
//! reads. Backward: `du = g W'`, `gh = s g B`, `dA += ghᵀ u`, `dB += gᵀ h`:
//! four products per LoRA linear where the unmerged form needs six, none of
//! them for the frozen weight's own gradient.

use crate::kernels::fused::F32Data;
use crate::kernels::fused::gemm::{Mat, gemm, gemm_new};

/// Multiply-adds above which a product is split over the thread pool. Below it
/// the hand-off costs more than the second core gives (benches/README.md).
pub(super) const PARALLEL_MACS: usize = 1 << 23;

pub(super) fn parallel(m: usize, k: usize, n: usize) -> bool {
    m * k * n >= PARALLEL_MACS
}

/// A trainable LoRA's current weights: `a` `[r, d_in]`, `b` `[d_out, r]`, and
/// `W'ᵀ` (`[d_in, d_out]`) merged from them and the frozen weight.
pub(super) struct LoraView<'m> {
    pub a: F32Data<'m>,
    pub b: F32Data<'m>,
    pub rank: usize,
    pub merged_t: Vec<f32>,
    /// Which entry of the pass's gradient list is this LoRA's.
    pub slot: usize,
}

impl<'m> LoraView<'m> {
    pub fn new(
        wt: &[f32],
        (d_in, d_out): (usize, usize),
        a: F32Data<'m>,
        b: F32Data<'m>,
        rank: usize,
        slot: usize,
    ) -> Self {
        let mut merged_t = wt.to_vec();
        // W'ᵀ = Wᵀ + s Aᵀ Bᵀ.
        let (at, bt) = (Mat::new(&a, rank, d_in).t(), Mat::new(&b, d_out, rank).t());
        gemm(&mut merged_t, at, bt, 1.0 / rank as f32, true, false);
        LoraView {
            a,
            b,
            rank,
            merged_t,
            slot,
        }
    }

    fn scale(&self) -> f32 {
        1.0 / self.rank as f32
    }
}

/// One adapted linear of the model, read in place.
pub(super) struct LinearView<'m> {
    /// `Wᵀ`, `[d_in, d_out]`.
    pub wt: F32Data<'m>,
    pub d_in: usize,
    pub d_out: usize,
    pub lora: Option<LoraView<'m>>,
}

/// A LoRA's gradients, `[r, d_in]` and `[d_out, r]`.
pub(super) struct LoraGrad {
    pub da: Vec<f32>,
    pub db: Vec<f32>,
}

/// A linear's output and the LoRA bottleneck `h` `[n, r]` its backward reads
/// (empty without LoRA).
pub(super) struct LinearOut {
    pub y: Vec<f32>,
    pub h: Vec<f32>,
}

impl LinearView<'_> {
    /// The weight the products use, `[d_in, d_out]`: merged when there is a LoRA.
    fn weight_t(&self) -> Mat<'_> {
        let w: &[f32] = match &self.lora {
            Some(l) => &l.merged_t,
            None => &self.wt,
        };
        Mat::new(w, self.d_in, self.d_out)
    }

    /// `u` `[n, d_in]` -> `[n, d_out]`.
    pub fn forward(&self, u: &[f32], n: usize) -> LinearOut {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let um = Mat::new(u, n, d_in);
        let y = gemm_new(um, self.weight_t(), 1.0, parallel(n, d_in, d_out));
        let h = match &self.lora {
            Some(l) => gemm_new(
                um,
                Mat::new(&l.a, l.rank, d_in).t(),
                l.scale(),
                parallel(n, d_in, l.rank),
            ),
            None => Vec::new(),
        };
        LinearOut { y, h }
    }

    /// From the output's gradient `g` `[n, d_out]`: the input's gradient into `du`
    /// (added to it when `add`; not computed when `du` is None: nothing reads it),
    /// the LoRA's added to `grads[slot]`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        u: &[f32],
        out: &LinearOut,
        g: &[f32],
        n: usize,
        du: Option<&mut [f32]>,
        add: bool,
        grads: &mut [LoraGrad],
    ) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let gm = Mat::new(g, n, d_out);
        if let Some(du) = du {
            gemm(du, gm, self.weight_t().t(), 1.0, add, parallel(n, d_out, d_in));
        }
        let Some(l) = &self.lora else { return };
        let r = l.rank;
        // gh = s g B, [n, r]: the gradient at the LoRA bottleneck.
        let gh = gemm_new(gm, Mat::new(&l.b, d_out, r), l.scale(), parallel(n, d_out, r));
        let grad = &mut grads[l.slot];
        gemm(
            &mut grad.da,
            Mat::new(&gh, n, r).t(),
            Mat::new(u, n, d_in),
            1.0,
            true,
            parallel(r, n, d_in),
        );
        gemm(
            &mut grad.db,
            gm.t(),
            Mat::new(&out.h, n, r),
            1.0,
            true,
            parallel(d_out, n, r),
        );
    }
}
