//! LoRA training of the T5 with a hand-written backward pass.
//!
//! candle's autograd gives every tensor that receives a gradient a zero-filled
//! accumulator and an add, allocates a fresh buffer per op, and splits each op
//! over the thread pool; at the quickstart's size that machinery, not the
//! arithmetic, is most of a training step (benches/README.md). This pass runs
//! the teacher-forced forward on slices, keeping what the backward reads, then
//! walks the layers backwards, writing each gradient in place once: the input
//! gradients of the frozen products, and the gradients of the trainable LoRAs.
//! It uses the fused kernels' own row functions and products and computes the
//! same function as the candle path, rounded differently where it groups or
//! merges products (tests compare loss and every gradient).
//!
//! It applies where expert training runs: CPU f32, the gated-GELU T5 (T5.1.1
//! and LM-adapted T5), plain LoRA adapters, no dropout. Elsewhere
//! [`T5Model::lora_loss_and_grads`] says so (None) and the caller uses candle's
//! autograd on [`T5Model::forward_loss`].

mod attention;
mod linear;
mod rows;
mod sublayers;
mod views;

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use self::attention::{Bias, Dims};
use self::linear::LoraGrad;
use self::sublayers::{AttentionCache, FeedForwardCache};
use self::views::{ModelView, StackView};
use super::position_bias::key_mask;
use super::{Seq2SeqBatch, T5Model};
use crate::kernels::fused::gemm::{Mat, gemm_new};
use crate::model::adapter::trainable::lora_var_names;
use crate::model::error::{ModelError, Result};

/// A micro-batch's loss and the gradients of the trainable LoRAs, named as their
/// variables are (`<module>.lora_A`, `<module>.lora_B`).
pub struct LoraGradients {
    pub loss: f64,
    pub grads: BTreeMap<String, Tensor>,
}

/// What one block's backward reads: the residual stream entering each
/// sublayer, its normed input, and the sublayer's own cache.
struct BlockCache {
    attn_in: Vec<f32>,
    attn_x: Vec<f32>,
    attn: AttentionCache,
    cross: Option<(Vec<f32>, Vec<f32>, AttentionCache)>,
    ffn_in: Vec<f32>,
    ffn_x: Vec<f32>,
    ffn: FeedForwardCache,
}

/// A stack's forward: every block's cache, the input of the final norm and
/// the stack's output.
struct StackRun {
    blocks: Vec<BlockCache>,
    final_in: Vec<f32>,
    out: Vec<f32>,
}

struct Pass<'m> {
    view: ModelView<'m>,
    d_model: usize,
    eps: f32,
}

impl Pass<'_> {
    fn embed(&self, ids: &[u32]) -> Vec<f32> {
        let d = self.d_model;
        let mut h = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            h.extend_from_slice(&self.view.shared[id as usize * d..][..d]);
        }
        h
    }

    /// Runs a stack over `h`; `enc` is the encoder output for a decoder stack.
    fn stack_forward(
        &self,
        stack: &StackView<'_>,
        mut h: Vec<f32>,
        self_dims: Dims,
        self_bias: &Bias,
        cross: Option<(&[f32], Dims, &Bias)>,
    ) -> StackRun {
        let n = h.len() / self.d_model;
        let mut blocks = Vec::with_capacity(stack.blocks.len());
        for b in &stack.blocks {
            let attn_x = rows::rms_norm(&h, &b.self_norm, self.eps);
            let (attn, out) = b.self_attn.forward(&attn_x, None, self_dims, self_bias);
            let attn_in = add_into(&mut h, &out);
            let cross = match (&b.cross, cross) {
                (Some((attn, norm)), Some((enc, dims, bias))) => {
                    let x = rows::rms_norm(&h, norm, self.eps);
                    let (c, out) = attn.forward(&x, Some(enc), dims, bias);
                    let input = add_into(&mut h, &out);
                    Some((input, x, c))
                }
                _ => None,
            };
            let ffn_x = rows::rms_norm(&h, &b.ffn_norm, self.eps);
            let (ffn, out) = b.ffn.forward(&ffn_x, n);
            let ffn_in = add_into(&mut h, &out);
            blocks.push(BlockCache {
                attn_in,
                attn_x,
                attn,
                cross,
                ffn_in,
                ffn_x,
                ffn,
            });
        }
        let out = rows::rms_norm(&h, &stack.final_norm, self.eps);
        StackRun {
            blocks,
            final_in: h,
            out,
        }
    }

    /// Backward through a stack from the gradient of its output; for a decoder,
    /// the gradient of the encoder output is added to `denc`. Returns nothing:
    /// the gradient of the embeddings is not needed (they are frozen).
    fn stack_backward(
        &self,
        stack: &StackView<'_>,
        run: &StackRun,
        g_out: &[f32],
        self_dims: Dims,
        mut cross: Option<(&[f32], Dims, &mut [f32])>,
        grads: &mut [LoraGrad],
    ) {
        let n = run.final_in.len() / self.d_model;
        let mut dh = vec![0f32; run.final_in.len()];
        rows::rms_norm_backward_add(&run.final_in, g_out, &stack.final_norm, self.eps, &mut dh);
        let mut dx = vec![0f32; dh.len()];
        for (i, (b, c)) in stack.blocks.iter().zip(&run.blocks).enumerate().rev() {
            b.ffn.backward(&c.ffn, &c.ffn_x, n, &dh, &mut dx, grads);
            rows::rms_norm_backward_add(&c.ffn_in, &dx, &b.ffn_norm, self.eps, &mut dh);
            if let (Some((attn, norm)), Some((input, x, cache)), Some((enc, dims, denc))) =
                (&b.cross, &c.cross, cross.as_mut())
            {
                attn.backward(
                    cache,
                    x,
                    Some(enc),
                    *dims,
                    &dh,
                    Some(&mut dx),
                    Some(&mut **denc),
                    grads,
                );
                rows::rms_norm_backward_add(input, &dx, norm, self.eps, &mut dh);
            }
            // The first sublayer's input gradient would only reach the (frozen)
            // embeddings: not computed.
            let dx_wanted = (i > 0).then_some(dx.as_mut_slice());
            b.self_attn
                .backward(&c.attn, &c.attn_x, None, self_dims, &dh, dx_wanted, None, grads);
            if i > 0 {
                rows::rms_norm_backward_add(&c.attn_in, &dx, &b.self_norm, self.eps, &mut dh);
            }
        }
    }
}

/// `h += out`, returning `h` as it was (the sublayer's residual input, which its
/// norm's backward reads).
fn add_into(h: &mut [f32], out: &[f32]) -> Vec<f32> {
    let before = h.to_vec();
    add_to(h, out);
    before
}

/// A bias tensor broadcast to `[B, H, T, S]`, kept at its own size: a stride of
/// 0 for each dimension it broadcasts over.
fn bias_of(t: &Tensor, q_len: usize, k_len: usize) -> Result<Bias> {
    let (b, h, t_, s) = t.dims4()?;
    if t_ != 1 && t_ != q_len || s != k_len {
        return Err(ModelError::Input(format!(
            "attention bias of shape {:?} for {q_len} queries and {k_len} keys",
            t.dims()
        )));
    }
    let data: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let row = if t_ == 1 { 0 } else { s };
    let head = if h == 1 { 0 } else { t_ * s };
    let batch = if b == 1 { 0 } else { h * t_ * s };
    Ok(Bias {
        data,
        batch,
        head,
        row,
    })
}

fn ids(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?)
}

fn floats(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
}

/// How many parts of a micro-batch the pass runs on their own (forward and
/// backward), side by side on the thread pool, their gradients summed in part
/// order. At the quickstart's size most of a step is products too small to
/// split over threads and row-wise work on one thread: two halves of the batch
/// keep two cores busy (benches/README.md); work inside a part splits over the
/// pool only where it has threads to spare ([`spare_threads`]). A fixed count,
/// not one per thread, so the results do not depend on the thread count.
const PARTS: usize = 2;

/// Whether the pool has threads that the parts leave idle, for splitting the
/// work inside a part. With no thread to spare, a part that splits a product
/// waits on pieces another part's thread picks up between its own work: on 2
/// threads the quickstart step took 65-74 ms with products split inside the
/// parts against 43-47 ms without, T5-small 2.64-2.80 s against 2.13-2.26 s
/// (benches/README.md). Splitting a product or a row-wise pass does not change
/// its result (tested), so this choice by thread count changes only speed.
fn spare_threads() -> bool {
    rayon::current_num_threads() > PARTS
}

/// One part of the micro-batch: its examples' ids and attention biases.
struct Part {
    batch: usize,
    input_ids: Vec<u32>,
    decoder_input_ids: Vec<u32>,
    labels: Vec<u32>,
    label_mask: Vec<f32>,
    enc_bias: Bias,
    cross_bias: Bias,
}

/// Sizes the pass reads from the config.
#[derive(Clone, Copy)]
struct Shape {
    heads: usize,
    d_kv: usize,
    vocab: usize,
    src: usize,
    tgt: usize,
    /// Factor on the decoder output before the head (T5's tied-head scaling).
    out_scale: f32,
}

impl Pass<'_> {
    /// Forward and backward over one part: the sum of its tokens' losses and its
    /// LoRA gradients, for the gradient of `grad_scale ·` the sum over `count`
    /// tokens (the whole micro-batch's).
    fn part_loss_and_grads(
        &self,
        part: &Part,
        shape: Shape,
        dec_bias: &Bias,
        count: f64,
        grad_scale: f64,
    ) -> (f64, Vec<LoraGrad>) {
        let mut grads: Vec<LoraGrad> = self
            .view
            .slots
            .iter()
            .map(|sl| LoraGrad {
                da: vec![0f32; sl.rank * sl.d_in],
                db: vec![0f32; sl.d_out * sl.rank],
            })
            .collect();
        let (b, s, t) = (part.batch, shape.src, shape.tgt);
        let dims = |q_len, k_len| Dims {
            batch: b,
            heads: shape.heads,
            d_kv: shape.d_kv,
            q_len,
            k_len,
        };
        let (enc_dims, dec_dims, cross_dims) = (dims(s, s), dims(t, t), dims(t, s));

        // Forward.
        let h = self.embed(&part.input_ids);
        let enc = self.stack_forward(&self.view.encoder, h, enc_dims, &part.enc_bias, None);
        let h = self.embed(&part.decoder_input_ids);
        let dec = self.stack_forward(
            &self.view.decoder,
            h,
            dec_dims,
            dec_bias,
            Some((&enc.out, cross_dims, &part.cross_bias)),
        );
        let (n_dec, d, v) = (b * t, self.d_model, shape.vocab);
        let head = Mat::new(&self.view.head_t, d, v);
        let logits_par = linear::parallel(n_dec, d, v);
        let mut logits = gemm_new(Mat::new(&dec.out, n_dec, d), head, shape.out_scale, logits_par);
        let loss_sum =
            rows::masked_cross_entropy_sum(&mut logits, v, &part.labels, &part.label_mask, count, grad_scale);

        // Backward: logits now hold their gradient.
        let g_out = gemm_new(Mat::new(&logits, n_dec, v), head.t(), shape.out_scale, logits_par);
        drop(logits);
        let mut denc = vec![0f32; enc.out.len()];
        let cross = Some((enc.out.as_slice(), cross_dims, denc.as_mut_slice()));
        self.stack_backward(&self.view.decoder, &dec, &g_out, dec_dims, cross, &mut grads);
        self.stack_backward(&self.view.encoder, &enc, &denc, enc_dims, None, &mut grads);
        (loss_sum, grads)
    }
}

impl T5Model {
    /// The masked mean loss of `batch` (as [`T5Model::forward_loss`]) and the
    /// gradients of `grad_scale ·` that loss with respect to every attached LoRA,
    /// by the hand-written pass; None where the pass does not apply (see the
    /// module doc), the caller then takes candle's autograd.
    pub fn lora_loss_and_grads(
        &self,
        batch: &Seq2SeqBatch,
        grad_scale: f64,
    ) -> Result<Option<LoraGradients>> {
        let Some(view) = ModelView::of(self) else {
            return Ok(None);
        };
        let cfg = &self.config;
        let (b, s) = batch.input_ids.dims2()?;
        let (_, t) = batch.decoder_input_ids.dims2()?;
        let shape = Shape {
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            vocab: cfg.vocab_size,
            src: s,
            tgt: t,
            out_scale: cfg.decoder_output_scale().map_or(1.0, |f| f as f32),
        };
        // The same biases as the candle path's (f32 model: f32 biases); the
        // decoder's is the same for every example.
        let dec_bias = bias_of(&self.decoder_self_bias(0, t)?, t, t)?;
        let (input_ids, decoder_input_ids) = (ids(&batch.input_ids)?, ids(&batch.decoder_input_ids)?);
        let (labels, label_mask) = (ids(&batch.labels)?, floats(&batch.label_mask)?);
        let count: f64 = label_mask.iter().map(|&m| m as f64).sum::<f64>().max(1.0);
        let mut parts = Vec::with_capacity(PARTS);
        for (start, len) in part_ranges(b, PARTS) {
            // Rows `start..start + len` of a `[b, width]` matrix.
            let rows = |width: usize| start * width..(start + len) * width;
            let mask = batch.attention_mask.narrow(0, start, len)?;
            parts.push(Part {
                batch: len,
                input_ids: input_ids[rows(s)].to_vec(),
                decoder_input_ids: decoder_input_ids[rows(t)].to_vec(),
                labels: labels[rows(t)].to_vec(),
                label_mask: label_mask[rows(t)].to_vec(),
                enc_bias: bias_of(&self.encoder_bias(&mask, s)?, s, s)?,
                cross_bias: bias_of(&key_mask(&mask, DType::F32)?, t, s)?,
            });
        }
        let pass = Pass {
            view,
            d_model: cfg.d_model,
            eps: cfg.layer_norm_epsilon as f32,
        };
        let results: Vec<(f64, Vec<LoraGrad>)> = parts
            .par_iter()
            .map(|part| pass.part_loss_and_grads(part, shape, &dec_bias, count, grad_scale))
            .collect();
        let mut results = results.into_iter();
        let (mut loss_sum, mut grads) = results.next().expect("a batch has at least one part");
        for (part_loss, part_grads) in results {
            loss_sum += part_loss;
            for (acc, g) in grads.iter_mut().zip(part_grads) {
                add_to(&mut acc.da, &g.da);
                add_to(&mut acc.db, &g.db);
            }
        }

        let mut named = BTreeMap::new();
        for (slot, g) in pass.view.slots.iter().zip(grads) {
            let [a_name, b_name] = lora_var_names(&slot.module);
            named.insert(
                a_name,
                Tensor::from_vec(g.da, (slot.rank, slot.d_in), &self.device)?,
            );
            named.insert(
                b_name,
                Tensor::from_vec(g.db, (slot.d_out, slot.rank), &self.device)?,
            );
        }
        Ok(Some(LoraGradients {
            loss: loss_sum / count,
            grads: named,
        }))
    }
}

/// `b` examples as at most `parts` consecutive ranges `(start, len)` of sizes
/// differing by at most one, the larger first.
fn part_ranges(b: usize, parts: usize) -> Vec<(usize, usize)> {
    let n = parts.min(b).max(1);
    let (base, extra) = (b / n, b % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let range = (start, len);
            start += len;
            range
        })
        .collect()
}

fn add_to(acc: &mut [f32], x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    use super::*;
    use crate::kernels::fused::test_support::max_abs_diff;
    use crate::model::adapter::trainable::new_trainable_lora;
    use crate::model::t5::config::T5Config;
    use crate::rng::SeededRng;

    /// A random model with a LoRA on the linears `filter` keeps, its B drawn
    /// non-zero (a fresh LoRA's B is zero, which would leave every A gradient 0).
    fn model(cfg: &T5Config, filter: impl Fn(&str) -> bool) -> (T5Model, Vec<(String, Var)>) {
        let dev = Device::Cpu;
        let mut model = T5Model::init_random(cfg, 3, &dev, DType::F32).unwrap();
        let varmap = VarMap::new();
        let set = new_trainable_lora(cfg, 4, 5, filter, &varmap, &dev, DType::F32).unwrap();
        let mut rng = SeededRng::new(7);
        let mut vars: Vec<(String, Var)> = varmap.data().lock().unwrap().clone().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, var) in &vars {
            if name.ends_with("lora_B") {
                let t = rng.normal_tensor(var.dims(), 0.3, DType::F32, &dev).unwrap();
                var.set(&t).unwrap();
            }
        }
        model.set_adapters(set).unwrap();
        (model, vars)
    }

    /// Inputs and targets of different lengths, so padding and masks matter;
    /// three examples, so the pass splits them into parts of 2 and 1.
    fn batch(cfg: &T5Config) -> Seq2SeqBatch {
        let mut rng = SeededRng::new(11);
        let mut seq = |len: usize| -> Vec<u32> {
            (0..len)
                .map(|_| 2 + (rng.uniform() * (cfg.vocab_size - 2) as f64) as u32)
                .collect()
        };
        let inputs = vec![seq(7), seq(3), seq(5)];
        let targets = vec![seq(2), seq(4), seq(1)];
        Seq2SeqBatch::from_pairs(cfg, &inputs, &targets, &Device::Cpu).unwrap()
    }

    fn check(cfg: &T5Config, filter: impl Fn(&str) -> bool) {
        check_on(cfg, filter, &batch(cfg));
    }

    /// Loss and every LoRA gradient of the pass on `b` equal candle's autograd.
    fn check_on(cfg: &T5Config, filter: impl Fn(&str) -> bool, b: &Seq2SeqBatch) {
        let (model, vars) = model(cfg, filter);
        let scale = 0.5;
        let reference = model.forward_loss(b).unwrap();
        let expected_loss = reference.to_scalar::<f32>().unwrap() as f64;
        let store = (reference * scale).unwrap().backward().unwrap();
        let pass = model
            .lora_loss_and_grads(b, scale)
            .unwrap()
            .expect("the pass applies");
        assert!(
            (pass.loss - expected_loss).abs() < 1e-5 * expected_loss.abs().max(1.0),
            "loss {} vs candle's {expected_loss}",
            pass.loss
        );
        assert_eq!(
            pass.grads.len(),
            vars.len(),
            "one gradient per trainable variable"
        );
        for (name, var) in &vars {
            let want = store.get(var.as_tensor()).expect("candle has the gradient");
            let got = &pass.grads[name];
            let scale_of = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let diff = max_abs_diff(got, want);
            assert!(scale_of > 0.0, "{name}: a zero gradient tests nothing");
            assert!(
                diff <= 1e-4 * scale_of,
                "{name}: gradients differ by {diff} (largest {scale_of})"
            );
        }
    }

    #[test]
    fn loss_and_every_lora_gradient_equal_candles_autograd() {
        let mut cfg = T5Config::tiny_v1_1(37, 16, 2);
        cfg.d_kv = 8;
        cfg.d_ff = 24;
        check(&cfg, |_| true);
    }

    #[test]
    fn a_tied_head_and_loras_on_some_modules_only_match_too() {
        let mut cfg = T5Config::tiny_v1_1(29, 12, 1);
        cfg.num_heads = 3;
        cfg.d_kv = 5;
        cfg.tie_word_embeddings = true;
        cfg.scale_decoder_outputs = true;
        check(&cfg, |m| {
            m.ends_with(".q") || m.ends_with(".v") || m.contains("wo")
        });
    }

    #[test]
    fn the_pass_declines_what_it_does_not_cover() {
        let cfg = T5Config::tiny_v1_1(37, 16, 1);
        let (mut model, _) = model(&cfg, |_| true);
        let b = batch(&cfg);
        model.enable_dropout(0.1, 1).unwrap();
        assert!(model.lora_loss_and_grads(&b, 1.0).unwrap().is_none(), "dropout");
        model.disable_dropout();
        assert!(model.lora_loss_and_grads(&b, 1.0).unwrap().is_some());
        model.start_routing_log(false);
        assert!(
            model.lora_loss_and_grads(&b, 1.0).unwrap().is_none(),
            "routing log"
        );
    }

    #[test]
    fn a_batch_splits_into_consecutive_parts_of_near_equal_size() {
        assert_eq!(part_ranges(32, 2), vec![(0, 16), (16, 16)]);
        assert_eq!(part_ranges(3, 2), vec![(0, 2), (2, 1)]);
        assert_eq!(part_ranges(1, 2), vec![(0, 1)], "one example, one part");
        assert_eq!(part_ranges(7, 3), vec![(0, 3), (3, 2), (5, 2)]);
    }

    #[test]
    fn a_one_example_batch_matches_candles_autograd_too() {
        // One part only: the split must not assume two.
        let mut cfg = T5Config::tiny_v1_1(37, 16, 1);
        cfg.d_kv = 8;
        let one = Seq2SeqBatch::from_pairs(&cfg, &[vec![5, 9, 4]], &[vec![7, 1]], &Device::Cpu).unwrap();
        check_on(&cfg, |_| true, &one);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Large enough that the feed-forward products split over the pool, which
        // they do with 3 threads (more than the parts) and not with 1.
        let mut cfg = T5Config::tiny_v1_1(50, 128, 1);
        cfg.d_kv = 32;
        cfg.d_ff = 256;
        let (model, _) = model(&cfg, |_| true);
        let mut rng = SeededRng::new(3);
        let mut seq =
            |len: usize| -> Vec<u32> { (0..len).map(|_| 2 + (rng.uniform() * 45.0) as u32).collect() };
        let inputs: Vec<Vec<u32>> = (0..16).map(|i| seq(20 + i % 13)).collect();
        let targets: Vec<Vec<u32>> = (0..16).map(|i| seq(4 + i % 9)).collect();
        let b = Seq2SeqBatch::from_pairs(&cfg, &inputs, &targets, &Device::Cpu).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let out = pool.install(|| model.lora_loss_and_grads(&b, 1.0).unwrap().unwrap());
            let grads: Vec<Vec<f32>> = out
                .grads
                .values()
                .map(|g| g.flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            (out.loss, grads)
        };
        assert_eq!(run(1), run(3));
    }
}
