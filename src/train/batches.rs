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

/// How an epoch's examples are cut into micro-batches (the `batches` setting of the
/// `train` and `gate` groups). Its default, `ByLength`, is a keyless default in the
/// schema: keys from before the setting existed stay valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Batching {
    /// Examples of similar length together: less padding, so faster steps.
    #[default]
    ByLength,
    /// A seeded shuffle cut in order, as the paper's code's data loader draws them
    /// (measured against `ByLength` in pipelines/README.md, "Gate training, checked
    /// end to end").
    Random,
}

/// Micro-batches as index lists: a seeded shuffle cut into batches; `ByLength` first
/// sorts it by length inside windows of `50 * size` (so buckets stay shuffled across
/// the whole set).
pub fn buckets(pairs: &[Pair], size: usize, seed: u64, how: Batching) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..pairs.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let window = (size * 50).max(1);
    let mut out = vec![];
    for chunk in idx.chunks(window) {
        let mut c = chunk.to_vec();
        if how == Batching::ByLength {
            // Stable sort of the shuffled window: equal lengths stay in seeded order,
            // so batch composition changes with the seed and the epoch.
            c.sort_by_key(|&i| pairs[i].input.len() + pairs[i].target.len());
        }
        for b in c.chunks(size.max(1)) {
            out.push(b.to_vec());
        }
    }
    out
}

/// The micro-batch used at global micro-step `k`.
pub fn batch_at(pairs: &[Pair], size: usize, seed: u64, k: usize, how: Batching) -> Vec<usize> {
    let per_epoch = pairs.len().div_ceil(size.max(1)).max(1);
    let epoch = k / per_epoch;
    let mut bs = buckets(pairs, size, seed.wrapping_add(epoch as u64 * 0x9e37_79b9), how);
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
        for how in [Batching::ByLength, Batching::Random] {
            let mut seen: Vec<usize> = (0..6).flat_map(|k| batch_at(&p, 4, 3, k, how)).collect();
            seen.sort();
            assert_eq!(seen, (0..23).collect::<Vec<_>>());
            assert_eq!(batch_at(&p, 4, 3, 9, how), batch_at(&p, 4, 3, 9, how));
            let epoch = |seed| (0..6).map(|k| batch_at(&p, 4, seed, k, how)).collect::<Vec<_>>();
            assert_ne!(epoch(3), epoch(4));
        }
    }

    /// What the setting changes: by length, a batch's examples have (nearly) one
    /// length; random batches mix them as the paper's data loader does.
    #[test]
    fn random_batches_mix_lengths_and_length_batches_do_not() {
        let p = pairs(700);
        let spread = |how| {
            let per_epoch = 700 / 10;
            (0..per_epoch)
                .map(|k| {
                    let lens: Vec<usize> = batch_at(&p, 10, 5, k, how)
                        .iter()
                        .map(|&i| p[i].input.len())
                        .collect();
                    lens.iter().max().unwrap() - lens.iter().min().unwrap()
                })
                .sum::<usize>() as f64
                / per_epoch as f64
        };
        // Lengths 1..=7: a window of 500 holds ~71 of each, so a sorted batch of 10
        // spans at most one length step; a random batch of 10 spans about 5.
        assert!(
            spread(Batching::ByLength) <= 1.0,
            "{}",
            spread(Batching::ByLength)
        );
        assert!(spread(Batching::Random) >= 4.0, "{}", spread(Batching::Random));
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
