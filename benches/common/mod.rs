//! The routed-forward benchmark setup shared by `model_forward` (criterion)
//! and `routed_ratio` (paired runs): a T5.1.1-style model at d_model 256,
//! a batch of 8 x 128 input and 8 x 32 target tokens, and random rank-16
//! LoRA experts with gate vectors on all 72 adapted linears. Everything is
//! built on the device `GOOSEPIPE_BENCH_DEVICE` names (`cpu`, `cuda`,
//! `cuda:N`; the CPU when unset).

use std::collections::BTreeMap;

use candle_core::{DType, Device};
use goosepipe::model::{
    AdapterSet, GateVectors, LoraExpert, LoraWeights, Seq2SeqBatch, T5Config, T5Model, adapted_linears,
};
use goosepipe::rng::SeededRng;

pub const BATCH: usize = 8;
pub const SRC_LEN: usize = 128;
pub const TGT_LEN: usize = 32;
pub const RANK: usize = 16;

pub fn config() -> T5Config {
    let mut cfg = T5Config::tiny_v1_1(1024, 256, 4);
    cfg.num_heads = 4;
    cfg.d_kv = 64;
    // T5-XL's d_ff / d_model ratio (5120 / 2048).
    cfg.d_ff = 640;
    cfg
}

/// The device to benchmark on (`GOOSEPIPE_BENCH_DEVICE`); exits with the
/// reason when it cannot be used.
pub fn device() -> Device {
    let spec = std::env::var("GOOSEPIPE_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    goosepipe::model::device::parse_device(&spec).unwrap_or_else(|e| {
        eprintln!("GOOSEPIPE_BENCH_DEVICE={spec}: {e}");
        std::process::exit(2)
    })
}

/// Waits for the device's queued work (a no-op on the CPU), so a timing
/// covers the computation and not just its launch.
pub fn sync(dev: &Device) {
    dev.synchronize().unwrap();
}

pub fn batch(cfg: &T5Config, dev: &Device) -> Seq2SeqBatch {
    let mut rng = SeededRng::new(5);
    let mut tok = |n: usize| -> Vec<u32> { (0..n).map(|_| 2 + (rng.uniform() * 1000.0) as u32).collect() };
    let inputs: Vec<Vec<u32>> = (0..BATCH).map(|_| tok(SRC_LEN)).collect();
    let targets: Vec<Vec<u32>> = (0..BATCH).map(|_| tok(TGT_LEN)).collect();
    Seq2SeqBatch::from_pairs(cfg, &inputs, &targets, dev).unwrap()
}

pub fn random_expert(cfg: &T5Config, name: &str, seed: u64, dev: &Device) -> (LoraExpert, GateVectors) {
    let mut rng = SeededRng::new(seed);
    let mut modules = BTreeMap::new();
    let mut gates = BTreeMap::new();
    for s in adapted_linears(cfg) {
        let a = rng.normal_tensor(&[RANK, s.d_in], 0.01, DType::F32, dev).unwrap();
        let b = rng
            .normal_tensor(&[s.d_out, RANK], 0.01, DType::F32, dev)
            .unwrap();
        gates.insert(
            s.name.clone(),
            rng.normal_tensor(&[s.d_in], 1.0, DType::F32, dev).unwrap(),
        );
        modules.insert(
            s.name.clone(),
            LoraWeights::new(&s.name, a, b, s.d_in, s.d_out).unwrap(),
        );
    }
    (
        LoraExpert {
            name: name.into(),
            rank: RANK,
            base_model: None,
            modules,
        },
        GateVectors {
            name: name.into(),
            base_model: None,
            gates,
        },
    )
}

/// PHATGOOSE top-2 routing among `n` random experts on `model`.
pub fn route_among(model: &mut T5Model, cfg: &T5Config, n: usize) {
    let dev = model.device().clone();
    let (experts, gates): (Vec<_>, Vec<_>) = (0..n)
        .map(|i| random_expert(cfg, &format!("e{i:03}"), 100 + i as u64, &dev))
        .unzip();
    model
        .set_adapters(AdapterSet::phatgoose(&experts, &gates, 2, DType::F32).unwrap())
        .unwrap();
}
