//! Adapter plumbing: routing records, tie-breaking, Arrow scoring, O(k)
//! routed compute, per-example mixtures, expert-file validation, seeded init.

use crate::support;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use goosepipe::model::router::{Router, Scoring};
use goosepipe::model::{
    AdapterSet, GateVectors, LoraExpert, LoraWeights, MixWeights, ModelError, Seq2SeqBatch, T5Config,
    T5Model, T5Weights,
};
use goosepipe::process::numerics::Vectors;
use support::{fixture_pool, max_abs_diff as max_diff, t5_fixture as fixture};

fn v1_1() -> (T5Model, Vec<LoraExpert>, Vec<GateVectors>) {
    let dir = fixture("v1_1");
    let model = T5Model::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let names = ["expert_a", "expert_b", "expert_c"];
    let (experts, gates) = fixture_pool(&dir, &names, &names, &model.config, &Device::Cpu);
    (model, experts, gates)
}

fn small_batch(cfg: &T5Config) -> Seq2SeqBatch {
    let inputs = vec![vec![5, 6, 7, 8, 9, 10, 1], vec![11, 12, 1]];
    let targets = vec![vec![20, 21, 22, 1], vec![23, 1]];
    Seq2SeqBatch::from_pairs(cfg, &inputs, &targets, &Device::Cpu).unwrap()
}

#[test]
fn routing_log_counts_every_token_k_times() {
    let (mut model, experts, gates) = v1_1();
    model
        .set_adapters(AdapterSet::phatgoose(&experts, &gates, 2, DType::F32).unwrap())
        .unwrap();
    model.start_routing_log(true);
    let b = small_batch(&model.config);
    model
        .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
        .unwrap();
    let log = model.take_routing_log().unwrap();
    assert_eq!(log.modules.len(), 36);
    let enc = &log.modules["encoder.block.1.layer.1.DenseReluDense.wo"];
    assert_eq!(enc.expert_names, vec!["expert_a", "expert_b", "expert_c"]);
    // Padded tokens are routed (as in the paper's code) but never counted.
    assert_eq!(enc.tokens, 7 + 3);
    assert_eq!(enc.counts.iter().sum::<u64>(), 2 * enc.tokens);
    let dec = &log.modules["decoder.block.0.layer.1.EncDecAttention.q"];
    assert_eq!(
        dec.tokens,
        2 * 4,
        "a bare forward does not say which decoder rows are padding"
    );
    let kv = &log.modules["decoder.block.0.layer.1.EncDecAttention.k"];
    assert_eq!(kv.tokens, 7 + 3, "cross-attention k routes encoder tokens");
    assert_eq!(enc.choices.len(), 1);
    let w: f64 = enc.weight_sums.iter().sum();
    assert!(
        (w - enc.tokens as f64).abs() < 1e-3,
        "renormalised weights sum to one per token"
    );
}

/// Choice scoring pads inputs and choices to batches; the routing record counts only
/// real tokens: each input once per encoder module, once per choice in the
/// cross-attention keys and values, and each choice's tokens plus EOS in the decoder.
/// Marked tokens are counted apart.
#[test]
fn routing_counts_leave_padding_out_and_count_marked_tokens_apart() {
    let (mut model, experts, gates) = v1_1();
    model
        .set_adapters(AdapterSet::phatgoose(&experts, &gates, 2, DType::F32).unwrap())
        .unwrap();
    let items = vec![
        goosepipe::model::ChoiceItem {
            input: vec![5, 6, 7, 8, 9, 10, 1],
            choices: vec![vec![20, 21], vec![22]],
        },
        goosepipe::model::ChoiceItem {
            input: vec![11, 12, 1],
            choices: vec![vec![23, 24, 25], vec![26]],
        },
    ];
    model.start_routing_log_marked(false, Some([5u32, 6, 26].into_iter().collect()));
    model.score_choices(&items, 4).unwrap();
    let log = model.take_routing_log().unwrap();
    let enc = &log.modules["encoder.block.0.layer.0.SelfAttention.q"];
    assert_eq!(enc.tokens, 7 + 3);
    assert_eq!(enc.marked_tokens, 2, "tokens 5 and 6");
    assert_eq!(enc.marked_counts.iter().sum::<u64>(), 2 * 2);
    let kv = &log.modules["decoder.block.1.layer.1.EncDecAttention.v"];
    assert_eq!(kv.tokens, 2 * 7 + 2 * 3, "every choice reads its input");
    assert_eq!(kv.marked_tokens, 2 * 2);
    let dec = &log.modules["decoder.block.0.layer.0.SelfAttention.q"];
    assert_eq!(dec.tokens, (2 + 1) + (1 + 1) + (3 + 1) + (1 + 1));
    assert_eq!(dec.marked_tokens, 1, "token 26 is a decoder input once");
    // Batches of 3 pairs split the second item's choices over two batches: its input is
    // encoded twice but counted once.
    model.start_routing_log(false);
    model.score_choices(&items, 3).unwrap();
    let log = model.take_routing_log().unwrap();
    assert_eq!(
        log.modules["encoder.block.0.layer.0.SelfAttention.q"].tokens,
        7 + 3
    );
    assert_eq!(
        log.modules["decoder.block.1.layer.1.EncDecAttention.v"].tokens,
        2 * 7 + 2 * 3
    );
    // Generation: rows that finished feed padding and are not counted.
    model.start_routing_log(false);
    let out = model.generate_greedy(&[vec![5, 6, 1], vec![7, 1]], 3).unwrap();
    let log = model.take_routing_log().unwrap();
    let dec = &log.modules["decoder.block.0.layer.0.SelfAttention.q"];
    let live: u64 = out.iter().map(|o| (o.len() + 1).min(3) as u64).sum();
    assert_eq!(dec.tokens, live, "{out:?}");
}

#[test]
fn routing_ties_go_to_the_expert_first_by_name() {
    let (mut model, mut experts, mut gates) = v1_1();
    // Identical gates for all experts: every score ties.
    let same = gates[1].gates.clone();
    for g in &mut gates {
        g.gates = same.clone();
    }
    experts.reverse(); // listing order must not matter
    gates.reverse();
    model
        .set_adapters(AdapterSet::phatgoose(&experts, &gates, 2, DType::F32).unwrap())
        .unwrap();
    model.start_routing_log(false);
    let b = small_batch(&model.config);
    model
        .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
        .unwrap();
    for (m, r) in model.take_routing_log().unwrap().modules {
        assert_eq!(r.counts[2], 0, "{m}: expert_c chosen despite a tie with a-b");
        assert_eq!(r.counts[0], r.tokens);
        assert_eq!(r.counts[1], r.tokens);
    }
}

#[test]
fn arrow_scores_absolute_dot_products_without_standardising() {
    let emb = Tensor::new(&[[2f32, 0.0], [0.0, 3.0], [-4.0, 0.0]], &Device::Cpu).unwrap();
    let r = Router::new("m", &emb, Scoring::Arrow { temperature: 10.0 }, 2).unwrap();
    let u = Tensor::new(&[[1f32, 0.0]], &Device::Cpu).unwrap();
    let routing = r.route(&u).unwrap();
    assert_eq!(routing.experts, vec![2, 0]);
    let s: Vec<f64> = [2.0f64, 0.0, 4.0]
        .iter()
        .map(|x| x / 2f64.sqrt() / 10.0)
        .collect();
    let z: f64 = s.iter().map(|x| x.exp()).sum();
    let p: Vec<f64> = s.iter().map(|x| x.exp() / z).collect();
    let kept = p[2] + p[0];
    assert!((routing.weights[0] - p[2] / (kept + 1e-6)).abs() < 1e-6);
    assert!((routing.weights[1] - p[0] / (kept + 1e-6)).abs() < 1e-6);
    assert!(Router::new("m", &emb, Scoring::Arrow { temperature: 0.0 }, 2).is_err());
}

#[test]
fn unchosen_experts_are_never_computed() {
    // 20 extra experts carry NaN in B and router embeddings that can never
    // make the top 2. If the routed path computed all N experts and masked
    // them with zero weights, NaN * 0 would leak into the logits.
    let (mut model, experts, _) = v1_1();
    let mut pool = experts.clone();
    for i in 0..20 {
        let mut e = experts[0].clone();
        e.name = format!("z_poison_{i:02}");
        for l in e.modules.values_mut() {
            l.b = (l.b.clone() * f64::NAN).unwrap();
        }
        pool.push(e);
    }
    // Arrow scores |u.v|: real experts z = 0, 1, 2 have v = (1 + z) e_0 and the
    // poison ones v = e_0, so they at best tie with expert 0, and ties go to
    // the lower index: the top 2 is always among the real experts.
    let mut emb = BTreeMap::new();
    for (m, l) in &experts[0].modules {
        let d = l.a.dims()[1];
        let rows: Vec<Tensor> = (0..pool.len())
            .map(|i| {
                let mut v = vec![0f32; d];
                v[0] = if i < 3 { 1.0 + i as f32 } else { 1.0 };
                Tensor::from_vec(v, d, &Device::Cpu).unwrap()
            })
            .collect();
        emb.insert(m.clone(), Tensor::stack(&rows, 0).unwrap());
    }
    let set = AdapterSet::routed(&pool, &emb, Scoring::Arrow { temperature: 1.0 }, 2, DType::F32).unwrap();
    model.set_adapters(set).unwrap();
    let b = small_batch(&model.config);
    let logits = model
        .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
        .unwrap();
    let values = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(
        values.iter().all(|x| x.is_finite()),
        "a never-chosen expert was computed"
    );
}

#[test]
fn per_example_one_hot_mixture_equals_single_expert_runs() {
    let (mut model, experts, _) = v1_1();
    let b = small_batch(&model.config);
    let weights = MixWeights::PerExample(vec![vec![0.0, 1.0, 0.0], vec![0.0, 0.0, 1.0]]);
    model
        .set_adapters(AdapterSet::mixture(&experts, weights, DType::F32).unwrap())
        .unwrap();
    let mixed = model
        .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
        .unwrap();
    for (row, e) in [(0usize, 1usize), (1, 2)] {
        model.set_adapters(AdapterSet::from_lora(&experts[e])).unwrap();
        let single = model
            .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
            .unwrap();
        let d = max_diff(&mixed.get(row).unwrap(), &single.get(row).unwrap());
        assert!(
            d < 1e-4,
            "row {row}: one-hot mixture differs from expert {e} by {d}"
        );
    }
    // Wrong number of rows is a typed error, not a panic.
    model
        .set_adapters(
            AdapterSet::mixture(
                &experts,
                MixWeights::PerExample(vec![vec![1.0, 0.0, 0.0]]),
                DType::F32,
            )
            .unwrap(),
        )
        .unwrap();
    let err = model
        .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
        .unwrap_err();
    assert!(matches!(err, ModelError::Adapter { .. }), "{err}");
}

fn expect_err_containing(r: Result<LoraExpert, ModelError>, needles: &[&str]) {
    let msg = r.expect_err("loading must fail").to_string();
    for n in needles {
        assert!(msg.contains(n), "error `{msg}` does not mention `{n}`");
    }
}

#[test]
fn expert_files_round_trip_and_bad_files_name_the_problem() {
    let (model, experts, gates) = v1_1();
    let cfg = &model.config;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mine.safetensors");
    experts[0].save(&p).unwrap();
    let back = LoraExpert::load(&p, cfg, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(back.name, "expert_a");
    assert_eq!(back.rank, 4);
    back.check_base_model("fixture:v1_1").unwrap();
    let err = back
        .check_base_model("google/t5-xl-lm-adapt")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fixture:v1_1") && err.contains("google/t5-xl-lm-adapt"),
        "{err}"
    );
    for (m, l) in &experts[0].modules {
        assert_eq!(max_diff(&l.a, &back.modules[m].a), 0.0);
        assert_eq!(max_diff(&l.b, &back.modules[m].b), 0.0);
    }
    let gp = dir.path().join("mine.gates.safetensors");
    gates[0].save(&gp).unwrap();
    assert_eq!(
        GateVectors::load(&gp, cfg, &Device::Cpu, DType::F32)
            .unwrap()
            .gates
            .len(),
        36
    );
    // A gate file is not an expert.
    expect_err_containing(LoraExpert::load(&gp, cfg, &Device::Cpu, DType::F32), &["gate"]);

    let module = "decoder.block.1.layer.2.DenseReluDense.wo";
    let mut bad = experts[0].clone();
    let l = bad.modules[module].clone();
    bad.modules.insert(
        module.into(),
        LoraWeights {
            a: l.a.clone(),
            b: Tensor::zeros((31, 4), DType::F32, &Device::Cpu).unwrap(),
        },
    );
    bad.save(&p).unwrap();
    expect_err_containing(
        LoraExpert::load(&p, cfg, &Device::Cpu, DType::F32),
        &[module, "lora_B", "[31, 4]", "[32, 4]"],
    );

    let mut bad = experts[0].clone();
    let l = bad.modules[module].clone();
    bad.modules
        .insert("decoder.block.7.layer.2.DenseReluDense.wo".into(), l);
    bad.save(&p).unwrap();
    expect_err_containing(
        LoraExpert::load(&p, cfg, &Device::Cpu, DType::F32),
        &["decoder.block.7", "does not have"],
    );

    let only_a: Vec<(String, Tensor)> =
        vec![(format!("{module}.lora_A"), experts[0].modules[module].a.clone())];
    goosepipe::model::checkpoint::st_io::save_with_metadata(&p, &only_a, Default::default()).unwrap();
    expect_err_containing(
        LoraExpert::load(&p, cfg, &Device::Cpu, DType::F32),
        &["missing tensor", "lora_B"],
    );

    // A NaN (a diverged run, a damaged file) or integers are refused, naming the tensor.
    let mut bad = experts[0].clone();
    let l = bad.modules[module].clone();
    let mut b = l.b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    b[5] = f32::NAN;
    let b = Tensor::from_vec(b, l.b.dims(), &Device::Cpu).unwrap();
    bad.modules
        .insert(module.into(), LoraWeights { a: l.a.clone(), b });
    bad.save(&p).unwrap();
    expect_err_containing(
        LoraExpert::load(&p, cfg, &Device::Cpu, DType::F32),
        &[module, "lora_B", "NaN at element 5"],
    );
    let mut bad = experts[0].clone();
    let l = bad.modules[module].clone();
    let a = l.a.to_dtype(DType::I64).unwrap();
    bad.modules
        .insert(module.into(), LoraWeights { a, b: l.b.clone() });
    bad.save(&p).unwrap();
    expect_err_containing(
        LoraExpert::load(&p, cfg, &Device::Cpu, DType::F32),
        &[module, "lora_A", "I64", "floating point"],
    );
    let mut bad_gates = gates[0].clone();
    let (m, v) = bad_gates
        .gates
        .iter()
        .next()
        .map(|(m, v)| (m.clone(), v.clone()))
        .unwrap();
    let inf = (v.ones_like().unwrap() * f64::INFINITY).unwrap();
    bad_gates.gates.insert(m.clone(), inf);
    bad_gates.save(&gp).unwrap();
    let err = GateVectors::load(&gp, cfg, &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&m) && err.contains("inf at element 0"), "{err}");

    std::fs::write(&p, b"not a safetensors file").unwrap();
    assert!(LoraExpert::load(&p, cfg, &Device::Cpu, DType::F32).is_err());
}

#[test]
fn seeded_init_is_deterministic_and_saves_as_a_loadable_hf_folder() {
    let cfg = T5Config::tiny_v1_1(64, 16, 2);
    let a = T5Weights::init_random(&cfg, 42).unwrap();
    let b = T5Weights::init_random(&cfg, 42).unwrap();
    let c = T5Weights::init_random(&cfg, 43).unwrap();
    let name = "decoder.block.1.layer.1.EncDecAttention.k.weight";
    assert_eq!(max_diff(&a.tensors[name], &b.tensors[name]), 0.0);
    assert!(max_diff(&a.tensors[name], &c.tensors[name]) > 0.0);
    let std = a.tensors[name]
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    assert!(
        (std - 0.25).abs() < 0.05,
        "k init std {std}, expected d_model^-0.5 = 0.25"
    );

    let dir = tempfile::tempdir().unwrap();
    a.save_pretrained(dir.path()).unwrap();
    let loaded = T5Model::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(loaded.config, cfg);
    let direct = T5Model::from_weights(&a, &Device::Cpu, DType::F32).unwrap();
    let batch = small_batch(&cfg);
    let l1 = loaded.forward_loss(&batch).unwrap().to_scalar::<f32>().unwrap();
    let l2 = direct.forward_loss(&batch).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(l1, l2);
    assert!(l1.is_finite() && l1 > 0.0);
}

#[test]
fn config_errors_name_the_field_and_tie_rule_follows_the_checkpoint() {
    let p = std::path::Path::new("config.json");
    let err = T5Config::from_json_str(
        r#"{"vocab_size": 10, "num_layers": 1, "num_heads": 1, "d_ff": 4}"#,
        p,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("d_model"), "{err}");
    let base = r#""vocab_size": 10, "d_model": 8, "num_layers": 1, "num_heads": 2, "d_ff": 4"#;
    let err = T5Config::from_json_str(
        &format!(r#"{{{base}, "feed_forward_proj": "swish-glu"}}"#),
        p,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("swish-glu"), "{err}");
    // transformers 5 writes tie_word_embeddings=true always: the head decides tying,
    // scale_decoder_outputs decides scaling.
    let c = T5Config::from_json_str(
        &format!(r#"{{{base}, "tie_word_embeddings": true, "scale_decoder_outputs": false}}"#),
        p,
        Some(true),
    )
    .unwrap();
    assert!(!c.tie_word_embeddings && !c.scale_decoder_outputs);
    // Legacy config without scale_decoder_outputs: the tie flag decides scaling.
    let c = T5Config::from_json_str(
        &format!(r#"{{{base}, "tie_word_embeddings": true}}"#),
        p,
        Some(false),
    )
    .unwrap();
    assert!(c.tie_word_embeddings && c.scale_decoder_outputs);
    assert_eq!(c.d_kv, 4);
    // A missing tensor is reported by name.
    let dir = tempfile::tempdir().unwrap();
    let cfg = T5Config::tiny_v1_1(32, 8, 1);
    let mut w = T5Weights::init_random(&cfg, 1).unwrap();
    w.tensors.remove("decoder.final_layer_norm.weight");
    w.save_pretrained(dir.path()).unwrap();
    let err = T5Model::load(dir.path(), &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("decoder.final_layer_norm.weight"), "{err}");
}

#[test]
fn generic_routed_path_agrees_with_the_cpu_fast_path() {
    // f32 on CPU takes the gemm fast path; f64 takes the generic candle-op
    // path (the one CUDA uses). Both must give the same logits.
    let dir = fixture("v1_1");
    let run = |dtype: DType| -> Tensor {
        let mut model = T5Model::load(&dir, &Device::Cpu, dtype).unwrap();
        let load = |f: &str| dir.join(f);
        let experts: Vec<LoraExpert> = ["expert_a", "expert_b", "expert_c"]
            .iter()
            .map(|e| {
                LoraExpert::load(
                    &load(&format!("{e}.safetensors")),
                    &model.config,
                    &Device::Cpu,
                    dtype,
                )
                .unwrap()
            })
            .collect();
        let gates: Vec<GateVectors> = ["expert_a", "expert_b", "expert_c"]
            .iter()
            .map(|e| {
                GateVectors::load(
                    &load(&format!("{e}.gates.safetensors")),
                    &model.config,
                    &Device::Cpu,
                    dtype,
                )
                .unwrap()
            })
            .collect();
        model
            .set_adapters(AdapterSet::phatgoose(&experts, &gates, 2, dtype).unwrap())
            .unwrap();
        let b = small_batch(&model.config);
        model
            .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    let d = max_diff(&run(DType::F32), &run(DType::F64));
    assert!(d < 1e-4, "fast and generic routed paths differ by {d}");
}

#[test]
fn mean_activations_are_per_example_masked_means() {
    let dir = fixture("v1_1");
    let mut model = T5Model::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let cfg = model.config.clone();
    let inputs = vec![vec![5u32, 6, 7, 8, 9, 10, 1], vec![11, 12, 1]];
    let targets = vec![vec![20u32, 21, 22, 1], vec![23, 1]];
    let both = Seq2SeqBatch::from_pairs(&cfg, &inputs, &targets, &Device::Cpu).unwrap();
    let mut log = goosepipe::model::ActivationLog::default();
    model.accumulate_mean_activations(&both, &mut log).unwrap();
    assert_eq!(log.examples, 2);
    assert_eq!(log.sums.len(), 36);

    // One example at a time (no padding) gives the same sums: padding is masked.
    let mut split = goosepipe::model::ActivationLog::default();
    for i in 0..2 {
        let one = Seq2SeqBatch::from_pairs(&cfg, &inputs[i..=i], &targets[i..=i], &Device::Cpu).unwrap();
        model.accumulate_mean_activations(&one, &mut split).unwrap();
    }
    assert_eq!(split.examples, 2);
    for (m, v) in &log.sums {
        for (a, b) in v.iter().zip(&split.sums[m]) {
            assert!((a - b).abs() < 1e-4, "{m}: batched {a} vs one by one {b}");
        }
    }

    // First encoder layer: q's input is RMSNorm(embedding) * w, computed by hand.
    let st = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let emb: Vec<Vec<f32>> = st["shared.weight"].to_vec2().unwrap();
    let w: Vec<f32> = st["encoder.block.0.layer.0.layer_norm.weight"].to_vec1().unwrap();
    let mut expected = vec![0f64; cfg.d_model];
    for x in &inputs {
        for &t in x {
            let e = &emb[t as usize];
            let ms: f64 = e.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / e.len() as f64;
            let inv = 1.0 / (ms + cfg.layer_norm_epsilon).sqrt();
            for j in 0..cfg.d_model {
                expected[j] += e[j] as f64 * inv * w[j] as f64 / x.len() as f64;
            }
        }
    }
    let means = log.means();
    let got = &means["encoder.block.0.layer.0.SelfAttention.q"];
    for j in 0..cfg.d_model {
        assert!(
            (got[j] - expected[j] / 2.0).abs() < 1e-5,
            "dim {j}: {} vs {}",
            got[j],
            expected[j] / 2.0
        );
    }
    assert_eq!(means["encoder.block.0.layer.0.SelfAttention.k"], *got);
}

/// Routes random tokens with the f32 CPU path and with the generic candle-op
/// path in f64 (the reference) and checks they choose the same experts with
/// the same weights. Where the reference probabilities of the k-th and
/// (k+1)-th expert are within f32 rounding of each other either choice is
/// right; those near-ties are counted and must stay rare.
fn assert_cpu_routing_matches_reference(n: usize, scoring: Scoring, outliers: bool, k: usize) -> Router {
    assert_cpu_routing_matches_reference_with(n, scoring, outliers, k, Vectors::Avx512)
}

fn assert_cpu_routing_matches_reference_with(
    n: usize,
    scoring: Scoring,
    outliers: bool,
    k: usize,
    vectors: Vectors,
) -> Router {
    use goosepipe::rng::SeededRng;
    let d = 256;
    let mut rng = SeededRng::new(n as u64);
    let emb = rng.normal_tensor(&[n, d], 1.0, DType::F32, &Device::Cpu).unwrap();
    let mut u = rng
        .normal_tensor(&[1500, d], 1.0, DType::F32, &Device::Cpu)
        .unwrap();
    if outliers {
        // T5 activations carry a few huge dimensions; they coarsen the int8 grid.
        let mut scale = vec![1f32; d];
        scale[3] = 60.0;
        scale[100] = -25.0;
        u = u
            .broadcast_mul(&Tensor::from_vec(scale, d, &Device::Cpu).unwrap())
            .unwrap();
    }
    let r = Router::with_vectors("m", &emb, scoring, k, vectors).unwrap();
    let fast = r.route(&u).unwrap();
    let r64 = Router::new("m", &emb.to_dtype(DType::F64).unwrap(), scoring, k).unwrap();
    let u64 = u.to_dtype(DType::F64).unwrap();
    let reference = r64.route(&u64).unwrap();
    let probs: Vec<Vec<f64>> = r64.probabilities(&u64).unwrap().to_vec2().unwrap();
    let mut near_ties = 0;
    for (t, p) in probs.iter().enumerate() {
        let (f, g) = (
            &fast.experts[k * t..k * (t + 1)],
            &reference.experts[k * t..k * (t + 1)],
        );
        if f != g {
            let pf: f64 = f.iter().map(|&z| p[z as usize]).sum();
            let pg: f64 = g.iter().map(|&z| p[z as usize]).sum();
            assert!(
                (pf - pg).abs() <= 1e-5 * pg,
                "token {t}: chose {f:?} (p {pf}), reference {g:?} (p {pg})"
            );
            near_ties += 1;
            continue;
        }
        for s in k * t..k * (t + 1) {
            let (a, b) = (fast.weights[s], reference.weights[s]);
            assert!((a - b).abs() < 2e-6, "token {t}: weight {a} vs {b}");
        }
    }
    assert!(near_ties <= 3, "{near_ties} near-ties out of 1500 tokens");
    r
}

#[test]
fn cpu_routing_equals_the_reference_with_and_without_int8_screening() {
    let vnni = cfg!(target_arch = "x86_64") && {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512dq")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    };
    for outliers in [false, true] {
        let r = assert_cpu_routing_matches_reference(166, Scoring::Standardized, outliers, 2);
        assert_eq!(
            r.screens(),
            vnni,
            "166 experts are screened where the CPU has VNNI"
        );
        assert_cpu_routing_matches_reference(40, Scoring::Arrow { temperature: 3.0 }, outliers, 2);
    }
    // Other k: the screen's top-k network is sized per k (1-4, then 8 levels
    // for 5-8); beyond 8 every expert is scored exactly.
    for k in [1, 3, 6] {
        let r = assert_cpu_routing_matches_reference(70, Scoring::Standardized, true, k);
        assert_eq!(r.screens(), vnni);
    }
    let r = assert_cpu_routing_matches_reference(70, Scoring::Standardized, false, 9);
    assert!(!r.screens(), "top-9 is scored exactly");
    let r = assert_cpu_routing_matches_reference(8, Scoring::Standardized, false, 2);
    assert!(!r.screens(), "a few experts are scored exactly");
    // The portable kernels never screen: what they compute is the same on every CPU.
    let r = assert_cpu_routing_matches_reference_with(166, Scoring::Standardized, true, 2, Vectors::Portable);
    assert!(!r.screens(), "only AVX-512 kernels screen");
    let built = Router::new(
        "m",
        &Tensor::ones((166, 256), DType::F32, &Device::Cpu).unwrap(),
        Scoring::Standardized,
        2,
    )
    .unwrap();
    assert_eq!(
        built.screens(),
        vnni && Vectors::of_build() == Vectors::Avx512,
        "a router takes this build's kernels"
    );
}
