//! Frozen linears with optional trainable LoRAs, on slices, grouped by input:
//! the linears that read the same input (self-attention's q, k and v;
//! cross-attention's k and v; the feed-forward's wi_0 and wi_1) run as one
//! product over their concatenated weights, `[y_1 | y_2 | ...] = u [W'_1ᵀ | W'_2ᵀ | ...]`,
//! so the input is packed once and the product is several times wider (at the
//! quickstart's size a single projection is only 128 columns).
//!
//! Each LoRA is merged into its weight, `W' = W + s B A` with `s = 1/r`, once per
//! pass (`d_in·r·d_out` multiply-adds, against `n·d_in·d_out` per product):
//! `y = u Wᵀ + s (u Aᵀ) Bᵀ = u W'ᵀ`. Forward also keeps the bottlenecks
//! `h = s u Aᵀ` (one product for the group, `[n, Σr]`) that `dB` reads.
//! Backward: `du = g [W'_1; W'_2; ...]` in one product, then per LoRA
//! `gh = s g B`, `dA += ghᵀ u`, `dB += gᵀ h`. No product for a frozen weight's
//! own gradient.

use crate::kernels::fused::F32Data;
use crate::kernels::fused::gemm::{Mat, gemm, gemm_new, gemm_strided};

/// Multiply-adds above which a product is split over the thread pool. Below it
/// the hand-off costs more than the second core gives (benches/README.md).
pub(super) const PARALLEL_MACS: usize = 1 << 23;

/// Whether a product of `m·k·n` multiply-adds inside a part is split over the
/// pool: only when it is large and the pool has threads the parts leave idle.
pub(super) fn parallel(m: usize, k: usize, n: usize) -> bool {
    super::spare_threads() && m * k * n >= PARALLEL_MACS
}

/// A trainable LoRA's current weights: `a` `[r, d_in]`, `b` `[d_out, r]`.
pub(super) struct LoraView<'m> {
    pub a: F32Data<'m>,
    pub b: F32Data<'m>,
    pub rank: usize,
    /// Which entry of the pass's gradient list is this LoRA's.
    pub slot: usize,
}

impl LoraView<'_> {
    fn scale(&self) -> f32 {
        1.0 / self.rank as f32
    }
}

/// One linear of a group: its frozen `Wᵀ` (`[d_in, d_out]`) and LoRA.
pub(super) struct Member<'m> {
    pub wt: F32Data<'m>,
    pub d_out: usize,
    pub lora: Option<LoraView<'m>>,
}

/// Where a member's columns and bottleneck sit in the group's outputs.
struct Placed<'m> {
    member: Member<'m>,
    /// First output column.
    col: usize,
    /// First bottleneck column.
    h_col: usize,
}

/// Linears that read the same input, as one product.
pub(super) struct LinearGroup<'m> {
    d_in: usize,
    members: Vec<Placed<'m>>,
    /// `[W'_1ᵀ | W'_2ᵀ | ...]`, `[d_in, d_out]`.
    weight_t: Vec<f32>,
    /// `[s_1 A_1ᵀ | s_2 A_2ᵀ | ...]`, `[d_in, h_cols]` (empty without LoRAs).
    down_t: Vec<f32>,
    d_out: usize,
    h_cols: usize,
}

/// A LoRA's gradients, `[r, d_in]` and `[d_out, r]`.
pub(super) struct LoraGrad {
    pub da: Vec<f32>,
    pub db: Vec<f32>,
}

/// A group's output `[n, d_out]` and the bottlenecks `[n, Σr]` its backward reads.
pub(super) struct GroupOut {
    pub y: Vec<f32>,
    h: Vec<f32>,
}

impl<'m> LinearGroup<'m> {
    pub fn new(d_in: usize, members: Vec<Member<'m>>) -> Self {
        let d_out: usize = members.iter().map(|m| m.d_out).sum();
        let h_cols: usize = members
            .iter()
            .filter_map(|m| m.lora.as_ref())
            .map(|l| l.rank)
            .sum();
        let mut weight_t = vec![0f32; d_in * d_out];
        let mut down_t = vec![0f32; d_in * h_cols];
        let (mut col, mut h_col) = (0, 0);
        let mut placed = Vec::with_capacity(members.len());
        for m in members {
            let rank = m.lora.as_ref().map_or(0, |l| l.rank);
            for (dst, src) in weight_t.chunks_mut(d_out).zip(m.wt.chunks(m.d_out)) {
                dst[col..col + m.d_out].copy_from_slice(src);
            }
            if let Some(l) = &m.lora {
                let r = l.rank;
                let (at, bt) = (Mat::new(&l.a, r, d_in).t(), Mat::new(&l.b, m.d_out, r).t());
                // W'ᵀ = Wᵀ + s Aᵀ Bᵀ, in place in the member's columns.
                gemm_strided(&mut weight_t[col..], d_out, at, bt, l.scale(), true, false);
                for (i, row) in down_t.chunks_mut(h_cols).enumerate() {
                    for (j, x) in row[h_col..h_col + r].iter_mut().enumerate() {
                        *x = l.a[j * d_in + i] * l.scale();
                    }
                }
            }
            let width = m.d_out;
            placed.push(Placed {
                member: m,
                col,
                h_col,
            });
            col += width;
            h_col += rank;
        }
        LinearGroup {
            d_in,
            members: placed,
            weight_t,
            down_t,
            d_out,
            h_cols,
        }
    }

    /// Output columns of the whole group.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// `u` `[n, d_in]` -> `[n, d_out]`, the members' outputs side by side.
    pub fn forward(&self, u: &[f32], n: usize) -> GroupOut {
        let (d_in, d_out, hc) = (self.d_in, self.d_out, self.h_cols);
        let um = Mat::new(u, n, d_in);
        let y = gemm_new(
            um,
            Mat::new(&self.weight_t, d_in, d_out),
            1.0,
            parallel(n, d_in, d_out),
        );
        let h = if hc > 0 {
            gemm_new(um, Mat::new(&self.down_t, d_in, hc), 1.0, parallel(n, d_in, hc))
        } else {
            Vec::new()
        };
        GroupOut { y, h }
    }

    /// The input's gradient `g [W'_1; W'_2; ...]` `[n, d_in]` for the output's
    /// gradient `g` `[n, d_out]` (the members' side by side), in a new buffer.
    pub fn input_grad(&self, g: &[f32], n: usize) -> Vec<f32> {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let w = Mat::new(&self.weight_t, d_in, d_out).t();
        gemm_new(Mat::new(g, n, d_out), w, 1.0, parallel(n, d_out, d_in))
    }

    /// [`Self::input_grad`] written to `du`, or added to it when `add`.
    pub fn input_grad_into(&self, g: &[f32], n: usize, du: &mut [f32], add: bool) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let w = Mat::new(&self.weight_t, d_in, d_out).t();
        gemm(du, Mat::new(g, n, d_out), w, 1.0, add, parallel(n, d_out, d_in));
    }

    /// Adds each LoRA's gradients for the output's gradient `g` to `grads[slot]`;
    /// `u` is the group's input.
    pub fn lora_grads(&self, u: &[f32], out: &GroupOut, g: &[f32], n: usize, grads: &mut [LoraGrad]) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        for p in &self.members {
            let Some(l) = &p.member.lora else { continue };
            let (r, m_out) = (l.rank, p.member.d_out);
            let gm = Mat::strided(&g[p.col..], n, m_out, d_out);
            let hm = Mat::strided(&out.h[p.h_col..], n, r, self.h_cols);
            // gh = s g B, [n, r]: the gradient at the LoRA bottleneck.
            let gh = gemm_new(gm, Mat::new(&l.b, m_out, r), l.scale(), parallel(n, m_out, r));
            let grad = &mut grads[l.slot];
            gemm(
                &mut grad.da,
                Mat::new(&gh, n, r).t(),
                Mat::new(u, n, d_in),
                1.0,
                true,
                parallel(r, n, d_in),
            );
            gemm(&mut grad.db, gm.t(), hm, 1.0, true, parallel(m_out, n, r));
        }
    }
}
