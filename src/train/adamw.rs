//! AdamW (decoupled weight decay, Loshchilov & Hutter) with global grad-norm clipping,
//! written out so its state (moments, step) can be checkpointed and a run resumed
//! bit for bit; candle-nn's AdamW keeps its moments private.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Tensor, Var, backprop::GradStore};

use crate::model::Result;

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken so far.
    pub t: usize,
    /// First and second moments by variable name.
    pub m: HashMap<String, Tensor>,
    pub v: HashMap<String, Tensor>,
}

impl AdamW {
    pub fn new(eps: f64, weight_decay: f64) -> AdamW {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps,
            weight_decay,
            t: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    /// Applies one update with learning rate `lr` to `vars` from accumulated `grads`
    /// (by name). Variables without a gradient are left alone.
    pub fn step(&mut self, vars: &[(String, Var)], grads: &BTreeMap<String, Tensor>, lr: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (name, var) in vars {
            let Some(g) = grads.get(name) else { continue };
            let m = match self.m.get(name) {
                Some(m) => ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?,
                None => (g * (1.0 - self.beta1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
                None => (g.sqr()? * (1.0 - self.beta2))?,
            };
            let m_hat = (&m / bc1)?;
            let v_hat = (&v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            let theta = var.as_tensor();
            let decayed = if self.weight_decay > 0.0 {
                (theta * (1.0 - lr * self.weight_decay))?
            } else {
                theta.clone()
            };
            var.set(&(decayed - (update * lr)?)?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }
}

/// Collects the gradients of `vars` from a backward pass, by name.
pub fn grads_of(vars: &[(String, Var)], store: &GradStore) -> BTreeMap<String, Tensor> {
    vars.iter()
        .filter_map(|(n, v)| store.get(v.as_tensor()).map(|g| (n.clone(), g.clone())))
        .collect()
}

/// Adds `more` into `acc` (gradient accumulation).
pub fn accumulate(acc: &mut BTreeMap<String, Tensor>, more: BTreeMap<String, Tensor>) -> Result<()> {
    for (k, g) in more {
        let next = match acc.remove(&k) {
            Some(a) => (a + g)?,
            None => g,
        };
        acc.insert(k, next);
    }
    Ok(())
}

/// Rescales gradients so their global L2 norm (summed in name order, so the result is
/// the same on every run) is at most `max_norm` (0 disables);
/// returns the norm before clipping.
pub fn clip_global_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    // Summed on the host in f64, in a fixed order: the norm is logged in
    // metrics.jsonl and decides clipping, so it must not depend on how a device
    // reduction happens to be split.
    let flat: Vec<Tensor> = grads
        .values()
        .map(|g| g.flatten_all()?.to_dtype(candle_core::DType::F32))
        .collect::<candle_core::Result<_>>()?;
    let one_copy = flat.first().is_some_and(|g| !g.device().is_cpu());
    let sq = sum_of_squares(&flat, one_copy)?;
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.values_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

/// The sum of squares of flat f32 tensors, in f64, tensor by tensor in order. With
/// `one_copy` the tensors go to the host as one: on an accelerator every copy waits for
/// the device, and a LoRA has many small gradients (144 for the larger study's). The
/// two ways give the same bits.
fn sum_of_squares(flat: &[Tensor], one_copy: bool) -> Result<f64> {
    let square_sum = |v: &[f32]| v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
    let mut sq = 0f64;
    if one_copy && !flat.is_empty() {
        let all = Tensor::cat(flat, 0)?.to_vec1::<f32>()?;
        let mut at = 0;
        for g in flat {
            sq += square_sum(&all[at..at + g.elem_count()]);
            at += g.elem_count();
        }
    } else {
        for g in flat {
            sq += square_sum(&g.to_vec1::<f32>()?);
        }
    }
    Ok(sq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_matches_a_hand_computed_step() {
        let var = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap()).unwrap();
        let vars = vec![("w".to_string(), var.clone())];
        let mut opt = AdamW::new(1e-8, 0.1);
        let g = BTreeMap::from([(
            "w".to_string(),
            Tensor::new(&[0.5f64, -1.0], &Device::Cpu).unwrap(),
        )]);
        opt.step(&vars, &g, 0.01).unwrap();
        // First step: m_hat = g, v_hat = g^2, update = sign(g) (up to eps).
        let w = var.as_tensor().to_vec1::<f64>().unwrap();
        let expect = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        assert!(
            (w[0] - expect[0]).abs() < 1e-9 && (w[1] - expect[1]).abs() < 1e-9,
            "{w:?}"
        );
    }

    #[test]
    fn one_copy_to_the_host_sums_to_the_same_bits() {
        let mut rng = crate::rng::SeededRng::new(7);
        let flat: Vec<Tensor> = [3usize, 1000, 17, 65_537]
            .iter()
            .map(|&n| {
                let v: Vec<f32> = (0..n).map(|_| rng.standard_normal() as f32 * 1e-3).collect();
                Tensor::new(v.as_slice(), &Device::Cpu).unwrap()
            })
            .collect();
        let each = sum_of_squares(&flat, false).unwrap();
        let once = sum_of_squares(&flat, true).unwrap();
        assert_eq!(each.to_bits(), once.to_bits());
        assert!(each > 0.0);
    }

    #[test]
    fn clipping_caps_the_global_norm() {
        let mut g = BTreeMap::from([
            ("a".to_string(), Tensor::new(&[3.0f32], &Device::Cpu).unwrap()),
            ("b".to_string(), Tensor::new(&[4.0f32], &Device::Cpu).unwrap()),
        ]);
        let n = clip_global_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let a = g["a"].to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-5);
    }
}
