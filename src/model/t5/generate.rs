//! Inference on top of the T5: greedy generation with a KV cache, and
//! per-choice scoring for rank classification.

use candle_core::{D, DType, Tensor};
use serde::Serialize;

use crate::model::error::{ModelError, Result};
use crate::model::t5::{Seq2SeqBatch, T5Model, mask_rows, token_nll};

/// Log-probabilities of one answer choice given its input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChoiceScore {
    /// The scored target tokens (the choice, with EOS appended).
    pub token_ids: Vec<u32>,
    /// `log p(token_i | input, tokens_<i)` per token.
    pub logprobs: Vec<f64>,
    pub sum: f64,
    /// `sum / len`: the length-normalised score used by rank classification.
    pub mean: f64,
}

/// One rank-classification item: an input and its candidate answers.
#[derive(Debug, Clone)]
pub struct ChoiceItem {
    pub input: Vec<u32>,
    pub choices: Vec<Vec<u32>>,
}

fn pad_inputs(model: &T5Model, inputs: &[&[u32]]) -> Result<(Tensor, Tensor)> {
    let cfg = &model.config;
    let b = inputs.len();
    let s = inputs.iter().map(|x| x.len()).max().unwrap_or(0);
    let mut ids = vec![cfg.pad_token_id; b * s];
    let mut mask = vec![0f32; b * s];
    for (i, x) in inputs.iter().enumerate() {
        if x.is_empty() {
            return Err(ModelError::Input(format!("input {i} is empty")));
        }
        for (j, &t) in x.iter().enumerate() {
            if t as usize >= cfg.vocab_size {
                return Err(ModelError::Input(format!(
                    "token id {t} is outside the vocabulary ({})",
                    cfg.vocab_size
                )));
            }
            ids[i * s + j] = t;
            mask[i * s + j] = 1.0;
        }
    }
    let dev = model.device();
    Ok((
        Tensor::from_vec(ids, (b, s), dev)?,
        Tensor::from_vec(mask, (b, s), dev)?,
    ))
}

impl T5Model {
    /// Greedy decoding for a batch of inputs, at most `max_new_tokens` steps.
    /// Each result stops before the first EOS. The decoder keeps a self-attention
    /// KV cache; cross-attention keys/values are computed once.
    pub fn generate_greedy(&self, inputs: &[Vec<u32>], max_new_tokens: usize) -> Result<Vec<Vec<u32>>> {
        Ok(self
            .generate_greedy_until(inputs, max_new_tokens, &|| false)?
            .expect("never stopped"))
    }

    /// [`generate_greedy`](Self::generate_greedy), asking `stop` before each decoding
    /// step: None once it says stop (Ctrl-C waited for the whole batch: minutes with
    /// long generations).
    pub fn generate_greedy_until(
        &self,
        inputs: &[Vec<u32>],
        max_new_tokens: usize,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Vec<Vec<u32>>>> {
        if inputs.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let (ids, mask) = pad_inputs(self, &refs)?;
        let enc = self.encode(&ids, &mask)?;
        let mut cache = self.start_decoding(&enc, &mask)?;
        let b = inputs.len();
        let (eos, pad) = (self.config.eos_token_id, self.config.pad_token_id);
        let mut out = vec![Vec::new(); b];
        let mut done = vec![false; b];
        let mut next = vec![self.config.decoder_start_token_id; b];
        for _ in 0..max_new_tokens {
            if stop() {
                return Ok(None);
            }
            let step = Tensor::from_vec(next.clone(), (b, 1), self.device())?;
            // Rows that finished feed padding: not tokens the router should count.
            self.set_decoder_rows(Some(done.iter().map(|d| !d).collect()));
            let logits = self.decode_step(&step, &mut cache)?.squeeze(1)?; // [B, V]
            let best: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
            // NaN logits still have an argmax: text generated from them would be
            // scored as an answer. A row's sum is NaN or infinite when any logit is.
            let sums: Vec<f32> = logits.sum(D::Minus1)?.to_dtype(DType::F32)?.to_vec1()?;
            if let Some(i) = (0..b).find(|&i| !done[i] && !sums[i].is_finite()) {
                return Err(ModelError::NotFinite(format!(
                    "the logits of generated token {} of input {} are not finite",
                    out[i].len() + 1,
                    i + 1
                )));
            }
            for i in 0..b {
                if done[i] {
                    // HF feeds pad after EOS; the value does not affect live rows.
                    next[i] = pad;
                    continue;
                }
                if best[i] == eos {
                    done[i] = true;
                } else {
                    out[i].push(best[i]);
                }
                next[i] = best[i];
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        Ok(Some(out))
    }

    /// Scores every choice of every item: EOS is appended to each choice, and
    /// all (item, choice) pairs are decoded together in chunks of at most
    /// `batch_size` pairs (padded and masked). Each input is encoded once.
    pub fn score_choices(&self, items: &[ChoiceItem], batch_size: usize) -> Result<Vec<Vec<ChoiceScore>>> {
        if batch_size == 0 {
            return Err(ModelError::Input("batch_size must be at least 1".into()));
        }
        let eos = self.config.eos_token_id;
        let mut pairs: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if item.choices.is_empty() {
                return Err(ModelError::Input(format!("item {i} has no choices")));
            }
            for c in &item.choices {
                let mut t = c.clone();
                t.push(eos);
                pairs.push((i, t));
            }
        }
        let mut scores: Vec<ChoiceScore> = Vec::with_capacity(pairs.len());
        let mut first_encoding = std::collections::HashSet::new();
        for chunk in pairs.chunks(batch_size) {
            // Encode the distinct inputs of this chunk once, then expand per choice.
            let mut uniq: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
            uniq.dedup();
            let refs: Vec<&[u32]> = uniq.iter().map(|&i| items[i].input.as_slice()).collect();
            let (ids, mask) = pad_inputs(self, &refs)?;
            // An input whose choices began in the previous batch is encoded again here;
            // the routing record counts its tokens once.
            let s = ids.dims()[1];
            let mut count = mask_rows(&mask)?;
            for (row, i) in uniq.iter().enumerate() {
                if !first_encoding.insert(*i) {
                    count[row * s..(row + 1) * s].fill(false);
                }
            }
            self.set_next_encoder_rows(count);
            let enc = self.encode(&ids, &mask)?;
            let rows: Vec<u32> = chunk
                .iter()
                .map(|(i, _)| uniq.iter().position(|u| u == i).unwrap_or(0) as u32)
                .collect();
            let rows_t = Tensor::from_vec(rows, chunk.len(), self.device())?;
            let enc = enc.index_select(&rows_t, 0)?;
            // The routing log counts cross-attention rows by the tokens they come from.
            self.set_encoder_ids(&ids.index_select(&rows_t, 0)?)?;
            let mask = mask.index_select(&rows_t, 0)?;
            let dummy_inputs: Vec<Vec<u32>> = vec![vec![self.config.pad_token_id]; chunk.len()];
            let targets: Vec<Vec<u32>> = chunk.iter().map(|(_, t)| t.clone()).collect();
            let batch = Seq2SeqBatch::from_pairs(&self.config, &dummy_inputs, &targets, self.device())?;
            let mut cache = self.start_decoding(&enc, &mask)?;
            // Decoder position j is a real token iff it predicts a real target token.
            self.set_decoder_rows(Some(mask_rows(&batch.label_mask)?));
            let logits = self.decode_step(&batch.decoder_input_ids, &mut cache)?;
            let (nll, _) = token_nll(&logits, &batch.labels, &batch.label_mask)?;
            let nll: Vec<Vec<f64>> = nll.to_dtype(DType::F64)?.to_vec2()?;
            for ((_, t), row) in chunk.iter().zip(nll) {
                let logprobs: Vec<f64> = row[..t.len()].iter().map(|x| -x).collect();
                // NaN scores would rank as any other (ties go to the first choice):
                // an accuracy that reads as a result.
                if let Some(j) = logprobs.iter().position(|lp| !lp.is_finite()) {
                    return Err(ModelError::NotFinite(format!(
                        "the log-probability of token {} of an answer choice is {}",
                        j + 1,
                        logprobs[j]
                    )));
                }
                let sum: f64 = logprobs.iter().sum();
                scores.push(ChoiceScore {
                    token_ids: t.clone(),
                    mean: sum / t.len() as f64,
                    sum,
                    logprobs,
                });
            }
        }
        let mut it = scores.into_iter();
        Ok(items
            .iter()
            .map(|item| it.by_ref().take(item.choices.len()).collect())
            .collect())
    }
}

/// Rank classification: the index of the choice with the highest mean
/// log-probability (lowest length-normalised CE); ties go to the first.
pub fn predict(scores: &[ChoiceScore]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, s) in scores.iter().enumerate() {
        if best.is_none_or(|(_, b)| s.mean > b) {
            best = Some((i, s.mean));
        }
    }
    best.map(|(i, _)| i)
}
