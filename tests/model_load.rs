//! The model-folder loader: single safetensors (covered by model_parity),
//! sharded safetensors with an index, PyTorch pickle, and clear errors.

use crate::support;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use goosepipe::model::{ModelError, Seq2SeqBatch, T5Model};
use support::{load_safetensors, max_abs_diff, t5_fixture as fixture};

/// Max |logits - reference logits| of `model` on the fixture inputs of `family`.
fn logits_error(model: &T5Model, family: &str) -> f64 {
    let st = load_safetensors(fixture(family).join("inputs.safetensors"));
    let reference = load_safetensors(fixture(family).join("reference.safetensors"));
    let b = Seq2SeqBatch::from_hf(
        &st["input_ids"],
        &st["attention_mask"],
        &st["decoder_input_ids"],
        &st["labels"],
    )
    .unwrap();
    let logits = model
        .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
        .unwrap();
    max_abs_diff(&logits, &reference["logits"])
}

#[test]
fn pytorch_pickle_checkpoint_loads_and_matches_transformers() {
    let model = T5Model::load(&fixture("orig_bin"), &Device::Cpu, DType::F32).unwrap();
    assert!(model.config.tie_word_embeddings && model.config.scale_decoder_outputs);
    let d = logits_error(&model, "orig");
    assert!(d < 1e-4, "pickle-loaded logits differ by {d}");
}

#[test]
fn sharded_safetensors_with_index_load_and_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("v1_1");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let all = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let (mut enc, mut rest): (HashMap<String, Tensor>, HashMap<String, Tensor>) =
        (HashMap::new(), HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (k, v) in all {
        let shard = if k.starts_with("encoder.") {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        weight_map.insert(k.clone(), shard.into());
        if k.starts_with("encoder.") {
            enc.insert(k, v)
        } else {
            rest.insert(k, v)
        };
    }
    candle_core::safetensors::save(&enc, tmp.path().join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&rest, tmp.path().join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(tmp.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let model = T5Model::load(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    assert!(!model.config.tie_word_embeddings);
    let d = logits_error(&model, "v1_1");
    assert!(d < 1e-4, "sharded logits differ by {d}");

    // An index that points outside the folder is refused.
    let bad = serde_json::json!({ "weight_map": { "shared.weight": "../model.safetensors" } });
    std::fs::write(tmp.path().join("model.safetensors.index.json"), bad.to_string()).unwrap();
    let err = T5Model::load(tmp.path(), &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("outside"), "{err}");

    // So is one whose shards are not safetensors files (a local model folder's key
    // covers its `*.safetensors`: a shard by another name would change no key).
    let bad = serde_json::json!({ "weight_map": { "shared.weight": "weights-1.bin" } });
    std::fs::write(tmp.path().join("model.safetensors.index.json"), bad.to_string()).unwrap();
    let err = T5Model::load(tmp.path(), &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("names `weights-1.bin`, not a .safetensors file"),
        "{err}"
    );
}

#[test]
fn folders_without_weights_or_config_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = T5Model::load(tmp.path(), &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::copy(
        fixture("v1_1").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let err = T5Model::load(tmp.path(), &Device::Cpu, DType::F32).err().unwrap();
    assert!(matches!(err, ModelError::NoWeights { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"));
    // Weights that are a link to a device: said as that (it was "no weights found").
    std::os::unix::fs::symlink("/dev/zero", tmp.path().join("model.safetensors")).unwrap();
    let err = T5Model::load(tmp.path(), &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("it is a character device, not a regular file"),
        "{err}"
    );
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), b"garbage").unwrap();
    let err = T5Model::load(tmp.path(), &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn bf16_models_run_with_f32_norms_and_softmax() {
    let model = T5Model::load(&fixture("v1_1"), &Device::Cpu, DType::BF16).unwrap();
    assert_eq!(model.dtype(), DType::BF16);
    let st =
        candle_core::safetensors::load(fixture("v1_1").join("inputs.safetensors"), &Device::Cpu).unwrap();
    let reference =
        candle_core::safetensors::load(fixture("v1_1").join("reference.safetensors"), &Device::Cpu).unwrap();
    let b = Seq2SeqBatch::from_hf(
        &st["input_ids"],
        &st["attention_mask"],
        &st["decoder_input_ids"],
        &st["labels"],
    )
    .unwrap();
    let logits = model
        .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let r = &reference["logits"];
    let err = max_abs_diff(&logits, r);
    let scale = r.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!(err / scale < 0.05, "bf16 logits off by {err} at scale {scale}");
    let loss = model
        .forward_loss(&b)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let ref_loss = reference["loss"].to_vec1::<f32>().unwrap()[0];
    assert!(
        (loss - ref_loss).abs() / ref_loss < 0.02,
        "bf16 loss {loss} vs {ref_loss}"
    );
}

/// A local checkpoint (`model path=`) is only pointed at by its step, and every step
/// after it reads it: a folder whose weights are damaged fails as the model step,
/// naming the file, and an intact one is pointed at as before.
#[test]
fn a_local_model_step_refuses_a_folder_with_damaged_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("base");
    std::fs::create_dir(&folder).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("v1_1").join(f), folder.join(f)).unwrap();
    }
    let manifest = tmp.path().join("m.kdl");
    std::fs::write(&manifest, "model \"t\" path=\"base\"\n").unwrap();
    let (code, out) = support::run_product(&manifest, &tmp.path().join("store"));
    assert_eq!(code, 0, "{out}");

    // A config.json that disagrees with the weights (another d_model): refused by the
    // model step from the headers, not published for the first expert to fail on.
    let config_file = folder.join("config.json");
    let config = std::fs::read_to_string(&config_file).unwrap();
    let mut c: serde_json::Value = serde_json::from_str(&config).unwrap();
    c["d_model"] = serde_json::json!(c["d_model"].as_u64().unwrap() * 2);
    std::fs::write(&config_file, c.to_string()).unwrap();
    let (code, out) = support::run_product(&manifest, &tmp.path().join("store"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("model:t: ") && out.contains("has shape") && out.contains("(in the folder path= names)"),
        "{out}"
    );
    // Fewer layers than the weights hold: the rest were left unread, the model
    // loaded as another one.
    let mut c: serde_json::Value = serde_json::from_str(&config).unwrap();
    let layers = c["num_layers"].as_u64().unwrap();
    assert!(layers >= 2, "the fixture has layers to drop");
    c["num_layers"] = serde_json::json!(layers - 1);
    std::fs::write(&config_file, c.to_string()).unwrap();
    let (code, out) = support::run_product(&manifest, &tmp.path().join("store"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "is of encoder layer {}, and config.json says num_layers={}: the config and the weights are of different models",
            layers - 1,
            layers - 1
        )),
        "{out}"
    );
    std::fs::write(&config_file, &config).unwrap();

    // Cut short: the header promises more bytes than the file has.
    let weights = folder.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let (code, out) = support::run_product(&manifest, &tmp.path().join("store"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("model:t: ")
            && out.contains("model.safetensors: not a valid safetensors file")
            && out.contains("(in the folder path= names)"),
        "{out}"
    );
}
