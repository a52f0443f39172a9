//! What the fused-op tests share: random inputs, and the comparison of a fused
//! op with its composite in value and gradient.

use candle_core::{Device, Tensor, Var};

use crate::rng::SeededRng;

/// Normal samples times `scale`, shaped `dims`.
pub fn draw(rng: &mut SeededRng, dims: &[usize], scale: f32) -> Tensor {
    let n = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.standard_normal() as f32 * scale).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// Largest absolute elementwise difference.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest difference, over `vars`, between the gradients of `Σ c∘fused` and
/// `Σ c∘reference`.
pub fn gradient_gap(fused: &Tensor, reference: &Tensor, c: &Tensor, vars: &[&Var]) -> f32 {
    let gf = (fused * c).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = (reference * c).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter()
        .map(|v| max_abs_diff(gf.get(v.as_tensor()).unwrap(), gr.get(v.as_tensor()).unwrap()))
        .fold(0.0, f32::max)
}
