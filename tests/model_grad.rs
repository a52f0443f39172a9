//! Gradients of the training paths against central finite differences in f64
//! on a tiny model: LoRA A and B (expert training) and gate vectors (gate
//! training). The base model is frozen, so only the VarMap's variables move.
//! The finite-difference checks run in f64, where the model uses candle's
//! primitive ops; f32 on the CPU runs the fused kernels of `kernels::fused`,
//! whose gradients are checked against that f64 reference. That f32 check
//! runs on the device `GOOSEPIPE_TEST_DEVICE` names (the CPU by default), so
//! a CUDA build checks the GPU's training gradients the same way.

use crate::support;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use goosepipe::model::adapter::trainable::{lora_expert_from, new_trainable_gates, new_trainable_lora};
use goosepipe::model::{Seq2SeqBatch, T5Config, T5Model};
use goosepipe::rng::SeededRng;

fn tiny() -> (T5Config, T5Model, Seq2SeqBatch) {
    let mut cfg = T5Config::tiny_v1_1(24, 8, 2);
    cfg.num_heads = 2;
    cfg.d_kv = 4;
    cfg.d_ff = 12;
    let model = T5Model::init_random(&cfg, 7, &Device::Cpu, DType::F64).unwrap();
    let inputs = vec![vec![5, 6, 7, 8, 9, 1], vec![3, 4, 1]];
    let targets = vec![vec![10, 11, 12, 1], vec![13, 1]];
    let batch = Seq2SeqBatch::from_pairs(&cfg, &inputs, &targets, &Device::Cpu).unwrap();
    (cfg, model, batch)
}

fn loss(model: &T5Model, batch: &Seq2SeqBatch) -> (Tensor, f64) {
    let l = model.forward_loss(batch).unwrap();
    let v = l.to_scalar::<f64>().unwrap();
    (l, v)
}

/// Compares analytic gradients with central differences on a few entries of
/// each named variable; returns the largest relative error seen.
fn check(model: &T5Model, batch: &Seq2SeqBatch, varmap: &VarMap, names: &[String]) -> f64 {
    let (l, _) = loss(model, batch);
    let grads = l.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut worst = 0f64;
    // Parallel reductions make the loss reproducible only to ~1e-15 relative,
    // so h balances that noise against the O(h^2) truncation error.
    let h = 1e-5;
    for name in names {
        let var: &Var = data.get(name).unwrap_or_else(|| panic!("no var {name}"));
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient reached {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let orig = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let shape = var.as_tensor().dims().to_vec();
        let n = orig.len();
        for idx in [0, n / 2, n - 1] {
            let eval = |delta: f64| {
                let mut p = orig.clone();
                p[idx] += delta;
                var.set(&Tensor::from_vec(p, shape.as_slice(), &Device::Cpu).unwrap())
                    .unwrap();
                loss(model, batch).1
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h);
            var.set(&Tensor::from_vec(orig.clone(), shape.as_slice(), &Device::Cpu).unwrap())
                .unwrap();
            let rel = (fd - g[idx]).abs() / (fd.abs().max(g[idx].abs()).max(1e-3));
            assert!(
                rel < 1e-4,
                "{name}[{idx}]: analytic {} vs finite difference {fd}",
                g[idx]
            );
            worst = worst.max(rel);
        }
    }
    worst
}

fn randomize(varmap: &VarMap, seed: u64, std: f64) {
    let mut rng = SeededRng::new(seed);
    let data = varmap.data().lock().unwrap();
    // In name order, so that the same seed gives the same values in every dtype.
    let mut vars: Vec<_> = data.iter().collect();
    vars.sort_by(|a, b| a.0.cmp(b.0));
    for (_, var) in vars {
        let dims = var.as_tensor().dims().to_vec();
        var.set(&rng.normal_tensor(&dims, std, var.dtype(), var.device()).unwrap())
            .unwrap();
    }
}

const SAMPLED: [&str; 5] = [
    "encoder.block.0.layer.0.SelfAttention.q",
    "encoder.block.1.layer.1.DenseReluDense.wo",
    "decoder.block.0.layer.0.SelfAttention.k",
    "decoder.block.1.layer.1.EncDecAttention.v",
    "decoder.block.1.layer.2.DenseReluDense.wi_1",
];

#[test]
fn lora_a_and_b_gradients_match_finite_differences() {
    let (cfg, mut model, batch) = tiny();
    let varmap = VarMap::new();
    let set = new_trainable_lora(&cfg, 2, 3, |_| true, &varmap, &Device::Cpu, DType::F64).unwrap();
    assert_eq!(set.len(), 2 * 7 + 2 * 11);
    model.set_adapters(set).unwrap();
    // B starts at zero (so dL/dA = 0); move everything off zero to test both.
    randomize(&varmap, 11, 0.5);
    let names: Vec<String> = SAMPLED
        .iter()
        .flat_map(|m| [format!("{m}.lora_A"), format!("{m}.lora_B")])
        .collect();
    let worst = check(&model, &batch, &varmap, &names);
    eprintln!("LoRA worst relative error {worst:e}");
}

#[test]
fn gate_gradients_match_finite_differences() {
    let (cfg, mut model, batch) = tiny();
    let lora_vars = VarMap::new();
    let lora = new_trainable_lora(&cfg, 2, 5, |_| true, &lora_vars, &Device::Cpu, DType::F64).unwrap();
    randomize(&lora_vars, 12, 0.5);
    let expert = lora_expert_from(&lora, "e", None).unwrap();
    let gate_vars = VarMap::new();
    let set = new_trainable_gates(&expert, &gate_vars, &Device::Cpu, DType::F64).unwrap();
    model.set_adapters(set).unwrap();
    randomize(&gate_vars, 13, 0.7);
    let names: Vec<String> = SAMPLED.iter().map(|m| format!("{m}.gate")).collect();
    let worst = check(&model, &batch, &gate_vars, &names);
    eprintln!("gate worst relative error {worst:e}");
    // Only the gates are trainable: the expert's LoRA tensors are detached.
    let l = model.forward_loss(&batch).unwrap();
    let grads = l.backward().unwrap();
    for var in lora_vars.all_vars() {
        assert!(grads.get(var.as_tensor()).is_none(), "frozen LoRA got a gradient");
    }
}

/// Every trainable variable's gradient `[name -> values]` in f64, for a model
/// of `dtype` with LoRA (`gates == false`) or gate (`gates == true`) training.
fn gradients_in(dev: &Device, dtype: DType, gates: bool) -> (f64, Vec<(String, Vec<f64>)>) {
    // Widths that are not multiples of 16 exercise the kernels' remainder paths.
    let mut cfg = T5Config::tiny_v1_1(50, 40, 2);
    cfg.num_heads = 4;
    cfg.d_kv = 10;
    cfg.d_ff = 72;
    let mut model = T5Model::init_random(&cfg, 7, dev, dtype).unwrap();
    let inputs = vec![vec![5, 6, 7, 8, 9, 20, 30, 40, 1], vec![3, 4, 1]];
    let targets = vec![vec![10, 11, 12, 44, 1], vec![13, 1]];
    let batch = Seq2SeqBatch::from_pairs(&cfg, &inputs, &targets, dev).unwrap();
    let lora_vars = VarMap::new();
    let lora = new_trainable_lora(&cfg, 4, 3, |_| true, &lora_vars, dev, dtype).unwrap();
    randomize(&lora_vars, 21, 0.3);
    let trained = if gates {
        let expert = lora_expert_from(&lora, "e", None).unwrap();
        let gate_vars = VarMap::new();
        model
            .set_adapters(new_trainable_gates(&expert, &gate_vars, dev, dtype).unwrap())
            .unwrap();
        randomize(&gate_vars, 22, 0.7);
        gate_vars
    } else {
        model.set_adapters(lora).unwrap();
        lora_vars
    };
    let l = model.forward_loss(&batch).unwrap();
    let grads = l.backward().unwrap();
    let value = l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let data = trained.data().lock().unwrap();
    let mut out: Vec<(String, Vec<f64>)> = data
        .iter()
        .map(|(name, var)| {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient reached {name}"));
            (
                name.clone(),
                g.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    (value, out)
}

#[test]
fn f32_gradients_equal_the_f64_reference() {
    let dev = support::test_device();
    for gates in [false, true] {
        let (l64, g64) = gradients_in(&Device::Cpu, DType::F64, gates);
        let (l32, g32) = gradients_in(&dev, DType::F32, gates);
        assert!((l64 - l32).abs() < 1e-5 * l64.abs(), "loss {l32} vs {l64}");
        assert_eq!(g64.len(), g32.len());
        for ((name, a), (_, b)) in g64.iter().zip(&g32) {
            let norm = a.iter().map(|x| x * x).sum::<f64>().sqrt();
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f64>()
                .sqrt();
            assert!(norm > 0.0, "{name}: zero gradient");
            assert!(
                diff < 1e-4 * norm,
                "{name}: f32 gradient off by {:e} relative",
                diff / norm
            );
        }
    }
}
