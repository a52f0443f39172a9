//! Which device a step or command computes on, from its name.

use candle_core::Device;

use super::error::{ModelError, Result};

/// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    let cuda = |n: usize| {
        Device::new_cuda(n).map_err(|e| {
            // candle attaches a backtrace to driver errors; the cause is enough here.
            let cause = super::error::without_backtrace(e);
            let hint = if cfg!(feature = "cuda") {
                "is a GPU visible and the NVIDIA driver loaded?"
            } else {
                "this build has no CUDA support: rebuild with `--features cuda`"
            };
            ModelError::Input(format!("cannot use device `{s}`: {cause} ({hint})"))
        })
    };
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => Err(ModelError::Input(format!(
                "unknown device `{s}` (expected cpu, cuda or cuda:N)"
            ))),
        },
    }
}
