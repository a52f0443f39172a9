//! Tokenized training pairs and length-bucketed batch order.
//!
//! Batches group examples of similar length (less padding, faster steps); the order
//! of batches in each epoch is a seeded shuffle, so the batch used at any micro-step
//! is a pure function of (seed, micro-step): a resumed run sees the same data.

use candle_core::Device;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::model::{Result as ModelResult, Seq2SeqBatch, T5Config};

/// One tokenized example: input ids and target ids (targets end with EOS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub input: Vec<u32>,
    pub target: Vec<u32>,
}

/// A micro-batch of pairs as the model's padded teacher-forcing batch.
pub fn seq2seq_batch(batch: &[&Pair], cfg: &T5Config, device: &Device) -> ModelResult<Seq2SeqBatch> {
    let inputs: Vec<Vec<u32>> = batch.iter().map(|p| p.input.clone()).collect();
    let targets: Vec<Vec<u32>> = batch.iter().map(|p| p.target.clone()).collect();
    Seq2SeqBatch::from_pairs(cfg, &inputs, &targets, device)
}

/// Truncates to the length limits, keeping the target's final EOS.
pub fn truncate(mut p: Pair, max_input: usize, max_target: usize, eos: u32) -> Pair {
    if p.input.len() > max_input {
        p.input.truncate(max_input.saturating_sub(1));
        p.input.push(eos);
    }
    if p.target.len() > max_target {
        p.target.truncate(max_target.saturating_sub(1));
        p.target.push(eos);
    }
    p
}

/// Micro-batches as index lists: examples sorted by length inside windows of
/// `50 * size` (so buckets stay shuffled across the whole set), then cut into batches.
pub fn buckets(pairs: &[Pair], size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..pairs.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let window = (size * 50).max(1);
    let mut out = vec![];
    for chunk in idx.chunks(window) {
        let mut c = chunk.to_vec();
        // Stable sort of the shuffled window: equal lengths stay in seeded order, so
        // batch composition changes with the seed and the epoch.
        c.sort_by_key(|&i| pairs[i].input.len() + pairs[i].target.len());
        for b in c.chunks(size.max(1)) {
            out.push(b.to_vec());
        }
    }
    out
}

/// The micro-batch used at global micro-step `k`.
pub fn batch_at(pairs: &[Pair], size: usize, seed: u64, k: usize) -> Vec<usize> {
    let per_epoch = pairs.len().div_ceil(size.max(1)).max(1);
    let epoch = k / per_epoch;
    let mut bs = buckets(pairs, size, seed.wrapping_add(epoch as u64 * 0x9e37_79b9));
    bs.shuffle(&mut ChaCha8Rng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x85eb_ca6b),
    ));
    bs.swap_remove(k % bs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: usize) -> Vec<Pair> {
        (0..n)
            .map(|i| Pair {
                input: vec![5; 1 + i % 7],
                target: vec![1],
            })
            .collect()
    }

    #[test]
    fn every_example_once_per_epoch_and_deterministic() {
        let p = pairs(23);
        let mut seen: Vec<usize> = (0..6).flat_map(|k| batch_at(&p, 4, 3, k)).collect();
        seen.sort();
        assert_eq!(seen, (0..23).collect::<Vec<_>>());
        assert_eq!(batch_at(&p, 4, 3, 9), batch_at(&p, 4, 3, 9));
        let epoch = |seed| (0..6).map(|k| batch_at(&p, 4, seed, k)).collect::<Vec<_>>();
        assert_ne!(epoch(3), epoch(4));
    }

    #[test]
    fn truncation_keeps_eos() {
        let t = truncate(
            Pair {
                input: vec![9, 9, 9, 1],
                target: vec![8, 8, 1],
            },
            3,
            2,
            1,
        );
        assert_eq!(
            t,
            Pair {
                input: vec![9, 9, 1],
                target: vec![8, 1]
            }
        );
    }
}
