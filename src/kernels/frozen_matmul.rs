//! `x · Wᵀ` for a frozen weight, with a backward pass to `x` only.
//!
//! candle's matmul backward always computes the gradient of both operands, so
//! with a frozen base every training step also computed `xᵀ · grad` for every
//! base weight (as many FLOPs as the forward pass) plus a zero-filled
//! accumulator of each weight's size, and threw them away. This op is a matmul
//! whose backward returns only `grad · W`. PyTorch skips those gradients for
//! `requires_grad=False` weights; this is how we do the same in candle.
//!
//! CPU only: on other devices (or when `x` does not need a gradient) the plain
//! matmul runs, which gives the same values.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};

/// `wt` is `Wᵀ`, `[d_in, d_out]`, the layout `Linear` keeps.
struct FrozenMatmul {
    wt: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = layout.shape().dims2()?;
        let (k_w, n) = self.wt.dims2()?;
        if k != k_w {
            candle_core::bail!("frozen-matmul: input has {k} columns, the weight {k_w} rows");
        }
        let (w, w_layout) = self.wt.storage_and_layout();
        let Storage::Cpu(w) = &*w else {
            candle_core::bail!("frozen-matmul: the weight is not on the CPU");
        };
        let y = x.matmul(w, (1, m, n, k), layout, w_layout)?;
        Ok((y, Shape::from((m, n))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.wt.t()?)?))
    }
}

/// `x · wt` for a 2-D `x` (`[n, d_in]`) and a frozen `wt` (`[d_in, d_out]`):
/// gradients reach `x`, never `wt`.
pub fn frozen_matmul(x: &Tensor, wt: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.track_op() && x.rank() == 2 {
        x.apply_op1(FrozenMatmul { wt: wt.clone() })
    } else {
        x.matmul(wt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn same_values_and_input_gradient_as_matmul_and_no_weight_gradient() {
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[[1f32, -2.0, 0.5], [0.25, 3.0, -1.0]], &dev).unwrap();
        let wt = Tensor::new(&[[0.5f32, 1.0], [-1.0, 2.0], [0.0, 0.75]], &dev).unwrap();
        let x = Var::from_tensor(&x0).unwrap();
        let y = frozen_matmul(x.as_tensor(), &wt).unwrap();
        let reference = x0.matmul(&wt).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), reference.to_vec2::<f32>().unwrap());
        // loss = sum(y * c): dloss/dx = c · Wᵀᵀ = c · W.
        let c = Tensor::new(&[[1f32, 2.0], [-1.0, 0.5]], &dev).unwrap();
        let grads = (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let expected = c.matmul(&wt.t().unwrap()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(gx, expected);
        assert!(grads.get(&wt).is_none(), "no gradient for the frozen weight");
    }
}
