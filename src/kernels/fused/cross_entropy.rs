//! Per-row cross-entropy `logsumexp(x) - x[label]` of logits `[N, V]`.
//!
//! The primitive-op version (log-softmax, gather, negate) makes six passes
//! over the `[N, V]` logits forward and about twenty backward, each with a
//! fresh 33 MB buffer at T5's 32k vocabulary and 256 target tokens. Fused:
//! forward reads each row twice (max, then the sum of exponentials) and
//! writes one number per row; backward writes `g (softmax(x) - onehot)` in
//! one pass (after recomputing each row's log-sum-exp, one more read).

use candle_core::{CpuStorage, CustomOp2, D, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{F32Data, cpu_f32, fast_exp, lane_sum, row_max, slice_of};

struct CrossEntropy;

/// `log Σ exp(row)`, max-shifted.
pub(crate) fn log_sum_exp(row: &[f32], scratch: &mut Vec<f32>) -> f32 {
    let m = row_max(row);
    if !m.is_finite() {
        return m;
    }
    scratch.clear();
    scratch.extend(row.iter().map(|&x| fast_exp::exp(x - m)));
    m + lane_sum(scratch).ln()
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let x = slice_of::<f32>(s1, l1, self.name())?;
        let labels = slice_of::<u32>(s2, l2, self.name())?;
        check_labels(labels, n, v)?;
        let mut out = vec![0f32; n];
        if v == 0 {
            // No classes: log Σ over nothing is -inf, as log_softmax would give.
            out.fill(f32::NEG_INFINITY);
            return Ok((CpuStorage::F32(out), Shape::from(n)));
        }
        out.par_iter_mut()
            .zip(x.par_chunks(v))
            .zip(labels.par_iter())
            .for_each_init(Vec::new, |scratch, ((o, row), &label)| {
                *o = log_sum_exp(row, scratch) - row[label as usize];
            });
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _nll: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = logits.dims2()?;
        let labels: Vec<u32> = labels.to_vec1()?;
        let grad: Vec<f32> = grad.to_vec1()?;
        let mut d = vec![0f32; n * v];
        if v == 0 {
            return Ok((Some(Tensor::from_vec(d, (n, v), logits.device())?), None));
        }
        let x = F32Data::of(logits, self.name())?;
        d.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .enumerate()
            .for_each_init(Vec::new, |scratch, (i, (out, row))| {
                let label = labels[i] as usize;
                // Recomputed, not `nll + x[label]`: that sum loses the
                // log-sum-exp when the label's logit is huge or -inf.
                let lse = log_sum_exp(row, scratch);
                let g = grad[i];
                for (o, &xj) in out.iter_mut().zip(row) {
                    *o = g * fast_exp::exp(xj - lse);
                }
                out[label] -= g;
            });
        Ok((Some(Tensor::from_vec(d, (n, v), logits.device())?), None))
    }
}

fn check_labels(labels: &[u32], n: usize, v: usize) -> candle_core::Result<()> {
    if labels.len() != n {
        candle_core::bail!("cross-entropy: {} labels for {n} rows", labels.len());
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, l)| **l as usize >= v) {
        candle_core::bail!("cross-entropy: label {l} of row {i} is outside the vocabulary of {v}");
    }
    Ok(())
}

/// Negative log-likelihood `[N]` of `labels` `[N]` (u32) under `logits` `[N, V]`
/// (f32 or f64). Fused on CPU f32, the primitive composition elsewhere.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    let labels = labels.to_dtype(DType::U32)?;
    if cpu_f32(logits) {
        logits
            .contiguous()?
            .apply_op2(&labels.contiguous()?, CrossEntropy)
    } else {
        composite(logits, &labels)
    }
}

/// The primitive-op composition: `-log_softmax(logits)[label]`.
pub fn composite(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    let n = logits.dim(0)?;
    let lp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    lp.gather(&labels.to_dtype(DType::U32)?.reshape((n, 1))?, 1)?
        .neg()?
        .reshape(n)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{draw, gradient_gap};
    use super::*;
    use crate::rng::SeededRng;
    use candle_core::{Device, Var};

    #[test]
    fn equals_log_softmax_and_gather_in_value_and_gradient() {
        let (n, v) = (7, 1000);
        let mut rng = SeededRng::new(3);
        let x0 = draw(&mut rng, &[n, v], 4.0);
        let labels = Tensor::new(&[0u32, 999, 5, 17, 500, 3, 998], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1f32, 0.5, 0.0, 2.0, -1.0, 1.0, 3.0], &Device::Cpu).unwrap();
        let x = Var::from_tensor(&x0).unwrap();
        let fused = cross_entropy(x.as_tensor(), &labels).unwrap();
        let reference = composite(x.as_tensor(), &labels).unwrap();
        let (a, b) = (
            fused.to_vec1::<f32>().unwrap(),
            reference.to_vec1::<f32>().unwrap(),
        );
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 2e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
        let diff = gradient_gap(&fused, &reference, &w, &[&x]);
        assert!(diff < 1e-6, "gradients differ by {diff}");
    }

    #[test]
    fn the_gradient_stays_exact_when_the_label_logit_is_extreme() {
        let x0 = Tensor::new(
            &[[0f32, 0.0, f32::MIN], [0.0, 1.0, f32::NEG_INFINITY]],
            &Device::Cpu,
        )
        .unwrap();
        let x = Var::from_tensor(&x0).unwrap();
        let labels = Tensor::new(&[2u32, 2], &Device::Cpu).unwrap();
        let g = cross_entropy(x.as_tensor(), &labels)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let e = 1.0 / (1.0 + std::f32::consts::E);
        let want = [[0.5, 0.5, -1.0], [e, 1.0 - e, -1.0]];
        for (row, want) in g.iter().zip(want) {
            for (a, b) in row.iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "{g:?}");
            }
        }
    }

    #[test]
    fn empty_inputs_give_empty_outputs() {
        let x = Tensor::zeros((0, 5), DType::F32, &Device::Cpu).unwrap();
        let labels = Tensor::zeros(0, DType::U32, &Device::Cpu).unwrap();
        assert_eq!(cross_entropy(&x, &labels).unwrap().dims(), [0]);
    }

    #[test]
    fn a_label_outside_the_vocabulary_is_an_error() {
        let x = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let labels = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
        let err = cross_entropy(&x, &labels).unwrap_err().to_string();
        assert!(
            err.contains("label 4 of row 1 is outside the vocabulary of 4"),
            "{err}"
        );
    }
}
