//! Dropout for training, driven by our seeded RNG (candle's CPU RNG cannot be
//! seeded). Off unless enabled; placed where HF T5 applies `dropout_rate`.

use std::sync::Mutex;

use candle_core::Tensor;

use crate::model::error::{ModelError, Result};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct Dropout {
    rate: f64,
    /// The mask stream; None while dropout is off (validation, evaluation).
    rng: Mutex<Option<ChaCha8Rng>>,
}

impl Dropout {
    /// `rate` in `[0, 1)`; masks are drawn from a ChaCha stream seeded by `seed`.
    pub fn new(rate: f64, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&rate) {
            return Err(ModelError::Input(format!("dropout rate {rate} is not in [0, 1)")));
        }
        Ok(Dropout {
            rate,
            rng: Mutex::new(Some(ChaCha8Rng::seed_from_u64(seed))),
        })
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Restarts the mask stream from `seed` (Some), or turns dropout off (None). A
    /// trainer reseeds at every micro-step from (its seed, the micro-step), so the masks
    /// are a pure function of the step and a resumed run draws the same ones.
    pub fn reseed(&self, seed: Option<u64>) -> Result<()> {
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| ModelError::Input("dropout RNG lock poisoned".into()))?;
        *rng = seed.map(ChaCha8Rng::seed_from_u64);
        Ok(())
    }

    /// Zeroes each element with probability `rate` and scales the rest by
    /// `1 / (1 - rate)`. The mask is a constant, so gradients flow through.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if self.rate == 0.0 {
            return Ok(x.clone());
        }
        let n = x.elem_count();
        let keep = 1.0 - self.rate;
        let scale = (1.0 / keep) as f32;
        // An element is kept when a uniform u32 falls below keep * 2^32.
        let threshold = (keep * 4294967296.0).min(u32::MAX as f64) as u32;
        let mask: Vec<f32> = {
            let mut rng = self
                .rng
                .lock()
                .map_err(|_| ModelError::Input("dropout RNG lock poisoned".into()))?;
            let Some(rng) = rng.as_mut() else {
                return Ok(x.clone());
            };
            (0..n)
                .map(|_| if rng.next_u32() < threshold { scale } else { 0.0 })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.dims(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }
}

/// Applies `dropout` if present.
pub fn maybe(dropout: Option<&Dropout>, x: Tensor) -> Result<Tensor> {
    match dropout {
        Some(d) => d.apply(&x),
        None => Ok(x),
    }
}
