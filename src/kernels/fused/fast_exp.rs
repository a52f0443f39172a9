//! `exp` for f32 in plain arithmetic, so that loops over it vectorise (the
//! libm `expf` is a call per element). Cody-Waite range reduction
//! `x = n ln2 + r`, `|r| <= ln2/2`, a degree-7 Taylor polynomial for `e^r`
//! (truncation error below 2e-8 relative), and `2^n` built in the exponent
//! bits. Accurate to a few ulp over the whole f32 range; 0 below the smallest
//! normal result, +inf above the largest, NaN for NaN.

pub(crate) const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that `n * LN2_HI` is exact for |n| < 2^9.
pub(crate) const LN2_HI: f32 = 0.693_145_75;
pub(crate) const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5 * 2^23: adding it rounds a float of magnitude < 2^22 to an integer,
/// which then sits in the low mantissa bits.
pub(crate) const ROUND: f32 = 12_582_912.0;
/// Below this e^x is subnormal (2^-126 = e^-87.34): flushed to 0.
pub(crate) const MIN_X: f32 = -87.33;
/// Above this e^x overflows f32.
const MAX_X: f32 = 88.72;

/// `1/j!` for j = 0..=7, the Taylor coefficients of `e^r`.
pub(crate) const TAYLOR: [f32; 8] = [
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
];

#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(MIN_X, MAX_X);
    let t = xc * LOG2_E + ROUND;
    let n = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let nf = t - ROUND;
    let r = (xc - nf * LN2_HI) - nf * LN2_LO;
    let p = TAYLOR.iter().rev().fold(0.0, |acc, &c| acc * r + c);
    // 2^n in two normal halves: n reaches 128 just below MAX_X, where 2^n
    // alone is not a finite f32 but p 2^n still is.
    let half = n >> 1;
    let s1 = f32::from_bits(((half + 127) as u32) << 23);
    let s2 = f32::from_bits(((n - half + 127) as u32) << 23);
    let y = p * s1 * s2;
    if x < MIN_X {
        0.0
    } else if x > MAX_X {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_libm_to_a_few_ulp_over_the_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.5 {
            let got = super::exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0173;
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "worst relative error {worst}");
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(-1e4), 0.0);
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp(1e4), f32::INFINITY);
        assert!(super::exp(f32::NAN).is_nan());
    }
}
