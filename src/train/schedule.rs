//! Learning-rate schedule: linear warmup over a fraction of the steps, then constant
//! (the paper's) or linear decay to zero.

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    LinearDecay,
}

/// The learning rate for optimizer step `step` (0-based) of `total`.
pub fn lr_at(base: f64, step: usize, total: usize, warmup_frac: f64, schedule: Schedule) -> f64 {
    let warmup = (warmup_frac * total as f64).ceil() as usize;
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    match schedule {
        Schedule::Constant => base,
        Schedule::LinearDecay => {
            let left = total.saturating_sub(step) as f64;
            let span = total.saturating_sub(warmup).max(1) as f64;
            base * (left / span)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_constant_or_decay() {
        // 6% of 100 steps: 6 warmup steps.
        assert!((lr_at(1.0, 0, 100, 0.06, Schedule::Constant) - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(lr_at(1.0, 5, 100, 0.06, Schedule::Constant), 1.0);
        assert_eq!(lr_at(1.0, 99, 100, 0.06, Schedule::Constant), 1.0);
        assert_eq!(lr_at(1.0, 6, 100, 0.06, Schedule::LinearDecay), 1.0);
        assert!((lr_at(1.0, 53, 100, 0.06, Schedule::LinearDecay) - 0.5).abs() < 1e-12);
        assert_eq!(lr_at(2.0, 0, 10, 0.0, Schedule::Constant), 2.0);
    }
}
