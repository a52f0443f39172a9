//! Training-step benchmarks (targets from the training issue): one full optimizer step
//! of expert (LoRA) training — forward, backward, gradient collection, global-norm
//! clipping, AdamW update — at two sizes:
//! - the quickstart model (d_model 128, d_ff 256, 2+2 layers, 4 heads, rank 16,
//!   32 sequences of 32 input / 16 target tokens: pipelines/quickstart.kdl's settings);
//! - T5-small size (T5.1.1-small's shape: d_model 512, d_ff 1024, 8+8 layers, 6 heads of
//!   64, vocab 32128; rank 16, 8 sequences of 128 input / 32 target tokens).
//!
//! Steps per second = 1 / the reported time. benches/README.md records the numbers and
//! the PyTorch + peft comparison (scripts/bench_torch_train_step.py).
//!
//! Runs on the device `GOOSEPIPE_BENCH_DEVICE` names (the CPU when unset; `cuda:0` with
//! a `--features cuda` build, every timed step waiting for the device). The hand-written
//! backward pass is CPU-only, so on a GPU only the autograd step is measured: it is what
//! the trainer runs there.

use std::hint::black_box;

use candle_core::{DType, Device, Var};
use candle_nn::VarMap;
use criterion::{Criterion, criterion_group};
use goosepipe::model::adapter::trainable::new_trainable_lora;
use goosepipe::model::{Seq2SeqBatch, T5Config, T5Model};
use goosepipe::rng::SeededRng;
use goosepipe::train::adamw::{AdamW, clip_global_norm, grads_of};

// For its device choice and wait; the routed-forward setup in it is not used here.
#[allow(dead_code)]
mod common;

/// The allocator the goosepipe binary runs with (its `main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Size {
    name: &'static str,
    cfg: T5Config,
    batch: usize,
    src: usize,
    tgt: usize,
}

fn sizes() -> Vec<Size> {
    let mut quick = T5Config::tiny_v1_1(512, 128, 2);
    quick.num_heads = 4;
    quick.d_kv = 32;
    quick.d_ff = 256;
    let mut small = T5Config::tiny_v1_1(32128, 512, 8);
    small.num_heads = 6;
    small.d_kv = 64;
    small.d_ff = 1024;
    vec![
        Size {
            name: "quickstart_d128_2x2_b32x32",
            cfg: quick,
            batch: 32,
            src: 32,
            tgt: 16,
        },
        Size {
            name: "t5small_d512_8x8_b8x128",
            cfg: small,
            batch: 8,
            src: 128,
            tgt: 32,
        },
    ]
}

fn batch(s: &Size, dev: &Device) -> Seq2SeqBatch {
    let mut rng = SeededRng::new(5);
    let vocab = s.cfg.vocab_size as f64 - 3.0;
    let mut tok = |n: usize| -> Vec<u32> { (0..n).map(|_| 2 + (rng.uniform() * vocab) as u32).collect() };
    let inputs: Vec<Vec<u32>> = (0..s.batch).map(|_| tok(s.src)).collect();
    let targets: Vec<Vec<u32>> = (0..s.batch).map(|_| tok(s.tgt)).collect();
    Seq2SeqBatch::from_pairs(&s.cfg, &inputs, &targets, dev).unwrap()
}

/// A model with a fresh rank-16 LoRA on every linear, its variables by name.
fn setup(s: &Size, dev: &Device) -> (T5Model, Vec<(String, Var)>) {
    let mut model = T5Model::init_random(&s.cfg, 1, dev, DType::F32).unwrap();
    let varmap = VarMap::new();
    let set = new_trainable_lora(&s.cfg, 16, 2, |_| true, &varmap, dev, DType::F32).unwrap();
    model.set_adapters(set).unwrap();
    let mut vars: Vec<(String, Var)> = varmap.data().lock().unwrap().clone().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    (model, vars)
}

fn train_step(c: &mut Criterion) {
    let dev = common::device();
    for s in sizes() {
        let mut g = c.benchmark_group(s.name);
        g.sample_size(10);
        // What the trainer runs on the CPU: the hand-written backward pass
        // (src/model/t5/backprop), which applies to CPU models only.
        if dev.is_cpu() {
            g.bench_function("lora_r16_optimizer_step", |bench| {
                // Set up inside the closure so that a filtered-out size costs nothing.
                let b = batch(&s, &dev);
                let (model, vars) = setup(&s, &dev);
                let mut opt = AdamW::new(1e-8, 0.0);
                bench.iter(|| {
                    let pass = model
                        .lora_loss_and_grads(&b, 1.0)
                        .unwrap()
                        .expect("the pass applies");
                    let mut grads = pass.grads;
                    clip_global_norm(&mut grads, 1.0).unwrap();
                    opt.step(&vars, &grads, 5e-3).unwrap();
                    black_box(pass.loss)
                })
            });
        }
        // candle's autograd over the fused ops: what dropout > 0, gate training and
        // every step on a GPU run.
        g.bench_function("lora_r16_optimizer_step_autograd", |bench| {
            let b = batch(&s, &dev);
            let (model, vars) = setup(&s, &dev);
            let mut opt = AdamW::new(1e-8, 0.0);
            bench.iter(|| {
                let loss = model.forward_loss(&b).unwrap();
                let store = loss.backward().unwrap();
                let mut grads = grads_of(&vars, &store);
                clip_global_norm(&mut grads, 1.0).unwrap();
                opt.step(&vars, &grads, 5e-3).unwrap();
                // The step is done when the device has run it, not when it is queued.
                common::sync(&dev);
                black_box(loss)
            })
        });
        g.finish();
    }
}

criterion_group!(benches, train_step);
fn main() {
    // SAFETY: first thing in main, before any thread exists.
    unsafe { goosepipe::process::threads::pin_thread_count() };
    benches();
    Criterion::default().configure_from_args().final_summary();
}
