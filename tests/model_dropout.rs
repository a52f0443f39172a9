//! Seeded training-time dropout: off by default, reproducible per seed,
//! unbiased, and transparent to gradients.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use goosepipe::model::adapter::trainable::new_trainable_lora;
use goosepipe::model::t5::dropout::Dropout;
use goosepipe::model::{Seq2SeqBatch, T5Config, T5Model};

#[test]
fn dropout_masks_are_unbiased_and_seeded() {
    let ones = Tensor::ones(100_000, DType::F32, &Device::Cpu).unwrap();
    let a = Dropout::new(0.25, 1).unwrap().apply(&ones).unwrap();
    let v: Vec<f32> = a.to_vec1().unwrap();
    let zeros = v.iter().filter(|&&x| x == 0.0).count() as f64 / v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    assert!((zeros - 0.25).abs() < 0.01, "dropped fraction {zeros}");
    assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
    let b: Vec<f32> = Dropout::new(0.25, 1)
        .unwrap()
        .apply(&ones)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(v, b, "same seed, same mask");
    assert!(Dropout::new(1.0, 1).is_err());
    assert!(Dropout::new(-0.1, 1).is_err());
}

#[test]
fn model_dropout_is_off_by_default_reproducible_and_keeps_gradients() {
    let cfg = T5Config::tiny_v1_1(32, 16, 2);
    let batch =
        Seq2SeqBatch::from_pairs(&cfg, &[vec![3, 4, 5, 6, 1]], &[vec![7, 8, 1]], &Device::Cpu).unwrap();
    let loss = |m: &T5Model| m.forward_loss(&batch).unwrap().to_scalar::<f32>().unwrap();
    let mut a = T5Model::init_random(&cfg, 3, &Device::Cpu, DType::F32).unwrap();
    let plain = loss(&a);
    assert_eq!(plain, loss(&a), "no dropout by default: deterministic");
    a.enable_dropout(0.1, 9).unwrap();
    let dropped = loss(&a);
    assert_ne!(plain, dropped);
    let mut b = T5Model::init_random(&cfg, 3, &Device::Cpu, DType::F32).unwrap();
    b.enable_dropout(0.1, 9).unwrap();
    assert_eq!(dropped, loss(&b), "same seed, same dropout masks");
    a.disable_dropout();
    assert_eq!(plain, loss(&a));

    let varmap = VarMap::new();
    b.set_adapters(new_trainable_lora(&cfg, 2, 1, |_| true, &varmap, &Device::Cpu, DType::F32).unwrap())
        .unwrap();
    let grads = b.forward_loss(&batch).unwrap().backward().unwrap();
    let with_grad = varmap
        .all_vars()
        .iter()
        .filter(|v| grads.get(v.as_tensor()).is_some())
        .count();
    assert_eq!(
        with_grad,
        varmap.all_vars().len(),
        "every LoRA variable gets a gradient under dropout"
    );
}
