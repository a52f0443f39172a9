//! Row-wise parts of the pass: T5's RMSNorm forward and backward, and the
//! masked mean cross-entropy with its gradient, on the fused kernels' row
//! functions (the same arithmetic as the fused ops).

use rayon::prelude::*;

use crate::kernels::fused::cross_entropy::log_sum_exp;
use crate::kernels::fused::fast_exp;
use crate::kernels::fused::rms_norm::{backward_row, forward_row};

/// Elements above which a row-wise pass is split over the thread pool.
const PARALLEL_ELEMENTS: usize = 1 << 20;

/// `x · rsqrt(mean(x²) + eps) · w` per row of `x` `[n, d]`.
pub(super) fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut y = vec![0f32; x.len()];
    for (out, row) in y.chunks_mut(d).zip(x.chunks(d)) {
        forward_row(out, row, w, eps);
    }
    y
}

/// Adds the gradient of [`rms_norm`] at `x` for the output gradient `g` to `dx`.
pub(super) fn rms_norm_backward_add(x: &[f32], g: &[f32], w: &[f32], eps: f32, dx: &mut [f32]) {
    let d = w.len();
    let (mut gw, mut row_dx) = (vec![0f32; d], vec![0f32; d]);
    for ((acc, row), grow) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
        backward_row(&mut row_dx, row, grow, w, eps, &mut gw);
        for (a, &r) in acc.iter_mut().zip(&row_dx) {
            *a += r;
        }
    }
}

/// The summed negative log-likelihood of `labels` over the rows whose `mask` is
/// set, from `logits` `[n, v]`, which are overwritten with the gradient of
/// `scale ·` that sum over `count` (the mean when `count` is the number of set
/// rows; a part of a batch passes the whole batch's count), zero on masked-out rows.
pub(super) fn masked_cross_entropy_sum(
    logits: &mut [f32],
    v: usize,
    labels: &[u32],
    mask: &[f32],
    count: f64,
    scale: f64,
) -> f64 {
    let per_token = (scale / count) as f32;
    let one = |scratch: &mut Vec<f32>, (row, (&label, &m)): (&mut [f32], (&u32, &f32))| -> f64 {
        if m == 0.0 {
            row.fill(0.0);
            return 0.0;
        }
        let lse = log_sum_exp(row, scratch);
        let nll = (lse - row[label as usize]) as f64;
        let g = per_token * m;
        for x in row.iter_mut() {
            *x = g * fast_exp::exp(*x - lse);
        }
        row[label as usize] -= g;
        nll * m as f64
    };
    // Per-row terms first, summed in row order: the loss must not depend on
    // how the rows were split over threads (it is recorded in the artifact).
    let terms: Vec<f64> = if logits.len() >= PARALLEL_ELEMENTS && super::spare_threads() {
        logits
            .par_chunks_mut(v)
            .zip(labels.par_iter().zip(mask.par_iter()))
            .map_init(Vec::new, one)
            .collect()
    } else {
        let mut scratch = Vec::new();
        let rows = labels.iter().zip(mask);
        logits
            .chunks_mut(v)
            .zip(rows)
            .map(|item| one(&mut scratch, item))
            .collect()
    };
    terms.iter().sum::<f64>()
}
