//! Parity with Hugging Face transformers on tiny random checkpoints made by
//! scripts/make_t5_fixtures.py: encoder output, logits and loss, for the
//! T5.1.1 family (gated-GELU, untied head) and the original T5 family (ReLU,
//! tied head with d_model^-0.5 scaling); and the adapters (LoRA, gated LoRA,
//! PHATGOOSE routing, a uniform merge) against torch forward hooks. On the
//! device `GOOSEPIPE_TEST_DEVICE` names (the CPU by default), so a CUDA build
//! checks the GPU against the same references (scripts/gpu-check.sh).

use crate::support;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use goosepipe::model::{Seq2SeqBatch, T5Model};
use support::{fixture_pool, load_safetensors as load_st, max_abs_diff, t5_fixture as fixture, test_device};

fn batch(inputs: &HashMap<String, Tensor>, dev: &Device) -> Seq2SeqBatch {
    let on = |k: &str| inputs[k].to_device(dev).unwrap();
    Seq2SeqBatch::from_hf(
        &on("input_ids"),
        &on("attention_mask"),
        &on("decoder_input_ids"),
        &on("labels"),
    )
    .unwrap()
}

fn check_family(name: &str, expect_tied: bool) {
    let dir = fixture(name);
    let dev = test_device();
    let model = T5Model::load(&dir, &dev, DType::F32).unwrap();
    assert_eq!(model.config.tie_word_embeddings, expect_tied);
    assert_eq!(model.config.scale_decoder_outputs, expect_tied);
    let inputs = load_st(dir.join("inputs.safetensors"));
    let reference = load_st(dir.join("reference.safetensors"));
    let b = batch(&inputs, &dev);

    let enc = model.encode(&b.input_ids, &b.attention_mask).unwrap();
    let d_enc = max_abs_diff(&enc, &reference["encoder_last_hidden_state"]);
    assert!(d_enc < 1e-4, "{name}: encoder output differs by {d_enc}");

    let logits = model
        .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
        .unwrap();
    let d_logits = max_abs_diff(&logits, &reference["logits"]);
    assert!(d_logits < 1e-4, "{name}: logits differ by {d_logits}");

    let loss = model.forward_loss(&b).unwrap().to_vec0::<f32>().unwrap() as f64;
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

/// The v1_1 fixture with adapters attached by `attach`, compared with the
/// reference logits `key` computed in torch with forward hooks.
fn check_adapter(
    key: &str,
    attach: impl FnOnce(&mut T5Model, &[goosepipe::model::LoraExpert], &[goosepipe::model::GateVectors]),
) {
    let dir = fixture("v1_1");
    let dev = test_device();
    let mut model = T5Model::load(&dir, &dev, DType::F32).unwrap();
    // Deliberately unsorted, and in another order than the experts.
    let (experts, gates) = fixture_pool(
        &dir,
        &["expert_c", "expert_a", "expert_b"],
        &["expert_b", "expert_c", "expert_a"],
        &model.config,
        &dev,
    );
    assert_eq!(experts[1].name, "expert_a");
    assert_eq!(experts[1].rank, 4);
    assert_eq!(experts[1].modules.len(), 36);
    attach(&mut model, &experts, &gates);
    let inputs = load_st(dir.join("inputs.safetensors"));
    let reference = load_st(dir.join("reference.safetensors"));
    let b = batch(&inputs, &dev);
    let logits = model
        .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
        .unwrap();
    let d = max_abs_diff(&logits, &reference[key]);
    // The adapters must change the output, or the comparison proves nothing.
    let moved = max_abs_diff(&reference[key], &reference["logits"]);
    assert!(moved > 1e-2, "{key}: adapters barely change the logits ({moved})");
    assert!(d < 1e-4, "{key}: logits differ from transformers by {d}");
}

#[test]
fn lora_on_every_linear_matches_torch_hooks() {
    check_adapter("lora_logits", |m, experts, _| {
        m.set_adapters(goosepipe::model::AdapterSet::from_lora(&experts[1]))
            .unwrap();
    });
}

#[test]
fn gated_lora_matches_torch_hooks() {
    check_adapter("gated_logits", |m, experts, gates| {
        let g = gates.iter().find(|g| g.name == "expert_a").unwrap();
        m.set_adapters(goosepipe::model::AdapterSet::from_gated(&experts[1], g).unwrap())
            .unwrap();
    });
}

#[test]
fn phatgoose_top2_routing_matches_torch_hooks() {
    check_adapter("routed_logits", |m, experts, gates| {
        let set = goosepipe::model::AdapterSet::phatgoose(experts, gates, 2, DType::F32).unwrap();
        m.set_adapters(set).unwrap();
        m.start_routing_log(false);
    });
}

#[test]
fn uniform_merge_matches_torch_hooks() {
    check_adapter("merged_logits", |m, experts, _| {
        let w = goosepipe::model::MixWeights::Shared(vec![1.0 / 3.0; 3]);
        let set = goosepipe::model::AdapterSet::mixture(experts, w, DType::F32).unwrap();
        m.set_adapters(set).unwrap();
    });
}
