//! Seeded random numbers. candle's CPU RNG cannot be seeded, so every random
//! initialisation in goosepipe draws from this ChaCha stream instead; the same
//! seed gives the same tensors on every machine and device.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use candle_core::Result;

pub struct SeededRng {
    rng: ChaCha8Rng,
}

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        SeededRng {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// One standard-normal draw (Box-Muller; the second value is discarded so
    /// that a stream position maps to exactly one number).
    pub fn standard_normal(&mut self) -> f64 {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1: f64 = 1.0 - self.rng.random::<f64>();
        let u2: f64 = self.rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// A tensor of N(0, std^2) draws.
    pub fn normal_tensor(
        &mut self,
        shape: &[usize],
        std: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f64> = (0..n).map(|_| self.standard_normal() * std).collect();
        Tensor::from_vec(data, shape, device)?.to_dtype(dtype)
    }
}
