//! Forward and forward+backward of a small T5 with LoRA on every linear, and
//! routed forward with 2..166 experts at top-2, and the router alone. Sample sizes are small so the
//! whole run takes a few minutes on 2 cores. On the device `GOOSEPIPE_BENCH_DEVICE`
//! names (the CPU when unset). Numbers: benches/README.md.

use std::hint::black_box;

use candle_core::DType;
use candle_nn::VarMap;
use common::{BATCH, RANK, SRC_LEN, batch, config, device, route_among, sync};
use criterion::{Criterion, criterion_group};
use goosepipe::model::adapter::trainable::new_trainable_lora;
use goosepipe::model::{Router, Scoring, T5Model};
use goosepipe::rng::SeededRng;

mod common;

/// The allocator the goosepipe binary runs with (its `main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_lora(c: &mut Criterion) {
    let dev = device();
    let cfg = config();
    let b = batch(&cfg, &dev);
    let mut model = T5Model::init_random(&cfg, 1, &dev, DType::F32).unwrap();
    let mut g = c.benchmark_group("t5_d256_4x4_b8x128_base");
    g.sample_size(10);
    g.bench_function("forward", |bench| {
        bench.iter(|| {
            let loss = black_box(model.forward_loss(&b).unwrap());
            sync(&dev);
            loss
        })
    });
    g.finish();
    let varmap = VarMap::new();
    let set = new_trainable_lora(&cfg, RANK, 2, |_| true, &varmap, &dev, DType::F32).unwrap();
    model.set_adapters(set).unwrap();
    let mut g = c.benchmark_group("t5_d256_4x4_b8x128_lora_r16");
    g.sample_size(10);
    g.bench_function("forward", |bench| {
        bench.iter(|| {
            let loss = black_box(model.forward_loss(&b).unwrap());
            sync(&dev);
            loss
        })
    });
    g.bench_function("forward_backward", |bench| {
        bench.iter(|| {
            let loss = model.forward_loss(&b).unwrap();
            let grads = black_box(loss.backward().unwrap());
            sync(&dev);
            grads
        })
    });
    g.finish();
}

fn bench_routed(c: &mut Criterion) {
    let dev = device();
    let cfg = config();
    let b = batch(&cfg, &dev);
    let mut model = T5Model::init_random(&cfg, 1, &dev, DType::F32).unwrap();
    let mut g = c.benchmark_group("t5_d256_4x4_b8x128_routed_top2");
    g.sample_size(10);
    for n in [2usize, 8, 36, 166] {
        route_among(&mut model, &cfg, n);
        g.bench_function(format!("forward_{n}_experts"), |bench| {
            bench.iter(|| {
                let y = black_box(
                    model
                        .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
                        .unwrap(),
                );
                sync(&dev);
                y
            })
        });
    }
    g.finish();
}

/// The router alone (scores, top-2, weights) for one module's 1024 tokens
/// at d 256: where the routed forward's N-dependent cost starts.
fn bench_router(c: &mut Criterion) {
    let dev = device();
    let mut rng = SeededRng::new(9);
    let u = rng
        .normal_tensor(&[BATCH * SRC_LEN, 256], 1.0, DType::F32, &dev)
        .unwrap();
    let mut g = c.benchmark_group("router_d256_1024_tokens_top2");
    for n in [2usize, 166] {
        let gates = rng.normal_tensor(&[n, 256], 1.0, DType::F32, &dev).unwrap();
        let router = Router::new("bench", &gates, Scoring::Standardized, 2).unwrap();
        g.bench_function(format!("route_{n}_experts"), |bench| {
            bench.iter(|| {
                let r = black_box(router.route(&u).unwrap());
                sync(&dev);
                r
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_lora, bench_routed, bench_router);
fn main() {
    // SAFETY: first thing in main, before any thread exists.
    unsafe { goosepipe::process::threads::pin_thread_count() };
    benches();
    Criterion::default().configure_from_args().final_summary();
}
