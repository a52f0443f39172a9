//! Gradients of the training paths against central finite differences in f64
//! on a tiny model: LoRA A and B (expert training) and gate vectors (gate
//! training). The base model is frozen, so only the VarMap's variables move.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use goosepipe::model::rng::SeededRng;
use goosepipe::model::trainable::{lora_expert_from, new_trainable_gates, new_trainable_lora};
use goosepipe::model::{Seq2SeqBatch, T5Config, T5Model};

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
    for var in varmap.data().lock().unwrap().values() {
        let dims = var.as_tensor().dims().to_vec();
        var.set(&rng.normal_tensor(&dims, std, DType::F64, &Device::Cpu).unwrap())
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
