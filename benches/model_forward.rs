//! Forward and forward+backward of a small T5 with LoRA on every linear, and
//! routed forward with 2..166 experts at top-2, and the router alone. Sample sizes are small so the
//! whole run takes a few minutes on 2 cores. Numbers: benches/README.md.

use std::collections::BTreeMap;
use std::hint::black_box;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use criterion::{Criterion, criterion_group};
use goosepipe::model::rng::SeededRng;
use goosepipe::model::trainable::new_trainable_lora;
use goosepipe::model::{
    AdapterSet, GateVectors, LoraExpert, LoraWeights, Router, Scoring, Seq2SeqBatch, T5Config, T5Model,
    adapted_linears,
};

const BATCH: usize = 8;
const SRC_LEN: usize = 128;
const TGT_LEN: usize = 32;
const RANK: usize = 16;

fn config() -> T5Config {
    let mut cfg = T5Config::tiny_v1_1(1024, 256, 4);
    cfg.num_heads = 4;
    cfg.d_kv = 64;
    // T5-XL's d_ff / d_model ratio (5120 / 2048).
    cfg.d_ff = 640;
    cfg
}

fn batch(cfg: &T5Config) -> Seq2SeqBatch {
    let mut rng = SeededRng::new(5);
    let mut tok = |n: usize| -> Vec<u32> { (0..n).map(|_| 2 + (rng.uniform() * 1000.0) as u32).collect() };
    let inputs: Vec<Vec<u32>> = (0..BATCH).map(|_| tok(SRC_LEN)).collect();
    let targets: Vec<Vec<u32>> = (0..BATCH).map(|_| tok(TGT_LEN)).collect();
    Seq2SeqBatch::from_pairs(cfg, &inputs, &targets, &Device::Cpu).unwrap()
}

fn random_expert(cfg: &T5Config, name: &str, seed: u64) -> (LoraExpert, GateVectors) {
    let mut rng = SeededRng::new(seed);
    let mut modules = BTreeMap::new();
    let mut gates = BTreeMap::new();
    for s in adapted_linears(cfg) {
        let a = rng
            .normal_tensor(&[RANK, s.d_in], 0.01, DType::F32, &Device::Cpu)
            .unwrap();
        let b = rng
            .normal_tensor(&[s.d_out, RANK], 0.01, DType::F32, &Device::Cpu)
            .unwrap();
        gates.insert(
            s.name.clone(),
            rng.normal_tensor(&[s.d_in], 1.0, DType::F32, &Device::Cpu)
                .unwrap(),
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

fn bench_lora(c: &mut Criterion) {
    let cfg = config();
    let b = batch(&cfg);
    let mut model = T5Model::init_random(&cfg, 1, &Device::Cpu, DType::F32).unwrap();
    let mut g = c.benchmark_group("t5_d256_4x4_b8x128_base");
    g.sample_size(10);
    g.bench_function("forward", |bench| {
        bench.iter(|| black_box(model.forward_loss(&b).unwrap()))
    });
    g.finish();
    let varmap = VarMap::new();
    let set = new_trainable_lora(&cfg, RANK, 2, |_| true, &varmap, &Device::Cpu, DType::F32).unwrap();
    model.set_adapters(set).unwrap();
    let mut g = c.benchmark_group("t5_d256_4x4_b8x128_lora_r16");
    g.sample_size(10);
    g.bench_function("forward", |bench| {
        bench.iter(|| black_box(model.forward_loss(&b).unwrap()))
    });
    g.bench_function("forward_backward", |bench| {
        bench.iter(|| {
            let loss = model.forward_loss(&b).unwrap();
            black_box(loss.backward().unwrap())
        })
    });
    g.finish();
}

fn bench_routed(c: &mut Criterion) {
    let cfg = config();
    let b = batch(&cfg);
    let mut model = T5Model::init_random(&cfg, 1, &Device::Cpu, DType::F32).unwrap();
    let mut g = c.benchmark_group("t5_d256_4x4_b8x128_routed_top2");
    g.sample_size(10);
    for n in [2usize, 8, 36, 166] {
        let (experts, gates): (Vec<_>, Vec<_>) = (0..n)
            .map(|i| random_expert(&cfg, &format!("e{i:03}"), 100 + i as u64))
            .unzip();
        model
            .set_adapters(AdapterSet::phatgoose(&experts, &gates, 2, DType::F32).unwrap())
            .unwrap();
        drop(experts);
        g.bench_function(format!("forward_{n}_experts"), |bench| {
            bench.iter(|| {
                black_box(
                    model
                        .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
                        .unwrap(),
                )
            })
        });
    }
    g.finish();
}

/// The router alone (scores, top-2, weights) for one module's 1024 tokens
/// at d 256: where the routed forward's N-dependent cost starts.
fn bench_router(c: &mut Criterion) {
    let mut rng = SeededRng::new(9);
    let u = rng
        .normal_tensor(&[BATCH * SRC_LEN, 256], 1.0, DType::F32, &Device::Cpu)
        .unwrap();
    let mut g = c.benchmark_group("router_d256_1024_tokens_top2");
    for n in [2usize, 166] {
        let gates = rng
            .normal_tensor(&[n, 256], 1.0, DType::F32, &Device::Cpu)
            .unwrap();
        let router = Router::new("bench", &gates, Scoring::Standardized, 2).unwrap();
        g.bench_function(format!("route_{n}_experts"), |bench| {
            bench.iter(|| black_box(router.route(&u).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_lora, bench_routed, bench_router);
fn main() {
    // SAFETY: first thing in main, before any thread exists.
    unsafe { goosepipe::model::threads::pin_thread_count() };
    benches();
    Criterion::default().configure_from_args().final_summary();
}
