//! Parity with Hugging Face transformers on tiny random checkpoints made by
//! scripts/make_t5_fixtures.py: encoder output, logits and loss, for the
//! T5.1.1 family (gated-GELU, untied head) and the original T5 family (ReLU,
//! tied head with d_model^-0.5 scaling).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use goosepipe::model::{Seq2SeqBatch, T5Model};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/t5")
        .join(name)
}

fn load_st(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    a.to_dtype(DType::F64)
        .unwrap()
        .sub(&b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn batch(inputs: &HashMap<String, Tensor>) -> Seq2SeqBatch {
    Seq2SeqBatch::from_hf(
        &inputs["input_ids"],
        &inputs["attention_mask"],
        &inputs["decoder_input_ids"],
        &inputs["labels"],
    )
    .unwrap()
}

fn check_family(name: &str, expect_tied: bool) {
    let dir = fixture(name);
    let model = T5Model::load(&dir, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(model.config.tie_word_embeddings, expect_tied);
    assert_eq!(model.config.scale_decoder_outputs, expect_tied);
    let inputs = load_st(dir.join("inputs.safetensors"));
    let reference = load_st(dir.join("reference.safetensors"));
    let b = batch(&inputs);

    let enc = model.encode(&b.input_ids, &b.attention_mask).unwrap();
    let d_enc = max_abs_diff(&enc, &reference["encoder_last_hidden_state"]);
    assert!(d_enc < 1e-4, "{name}: encoder output differs by {d_enc}");

    let logits = model
        .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
        .unwrap();
    let d_logits = max_abs_diff(&logits, &reference["logits"]);
    assert!(d_logits < 1e-4, "{name}: logits differ by {d_logits}");

    let loss = model.forward_loss(&b).unwrap().to_scalar::<f32>().unwrap() as f64;
    let ref_loss = reference["loss"].to_vec1::<f32>().unwrap()[0] as f64;
    assert!(
        (loss - ref_loss).abs() < 1e-4,
        "{name}: loss {loss} vs HF {ref_loss}"
    );
}

#[test]
fn v1_1_gated_gelu_untied_matches_transformers() {
    check_family("v1_1", false);
}

#[test]
fn original_relu_tied_scaled_matches_transformers() {
    check_family("orig", true);
}
