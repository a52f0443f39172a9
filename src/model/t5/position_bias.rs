//! T5 relative position buckets and the additive attention bias built from them.

use candle_core::{DType, Device, Tensor};

use crate::model::error::Result;

/// HF `_relative_position_bucket`. `rel = key_pos - query_pos`.
/// Bidirectional (encoder): half the buckets per sign, offset for keys after the
/// query. Unidirectional (decoder): only keys at or before the query count.
/// Exact buckets up to half the (per-direction) bucket count, log-spaced up to
/// `max_distance`. The log is computed in f32 as torch does, so bucket borders
/// agree with HF.
pub fn relative_bucket(rel: i64, bidirectional: bool, num_buckets: usize, max_distance: usize) -> u32 {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let n = if bidirectional {
        num_buckets /= 2;
        if rel > 0 {
            bucket += num_buckets;
        }
        rel.abs()
    } else {
        (-rel).max(0)
    };
    let max_exact = num_buckets / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let ratio = (n as f32 / max_exact as f32).ln()
            / ((max_distance as f64 / max_exact as f64).ln() as f32)
            * (num_buckets - max_exact) as f32;
        let large = max_exact + ratio as i64;
        bucket += large.min(num_buckets - 1);
    }
    bucket as u32
}

/// Bucket ids for queries at positions `q_offset..q_offset+q_len` against keys
/// `0..k_len`, as a `[q_len * k_len]` u32 tensor (row-major).
pub fn bucket_ids(
    q_offset: usize,
    q_len: usize,
    k_len: usize,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut ids = Vec::with_capacity(q_len * k_len);
    for q in 0..q_len {
        let qp = (q_offset + q) as i64;
        for k in 0..k_len {
            ids.push(relative_bucket(
                k as i64 - qp,
                bidirectional,
                num_buckets,
                max_distance,
            ));
        }
    }
    Ok(Tensor::from_vec(ids, q_len * k_len, device)?)
}

/// Position bias `[1, heads, q_len, k_len]` from the layer-0 embedding
/// `[num_buckets, heads]`. Gathered with index_select so it is differentiable.
pub fn position_bias(
    rel_embedding: &Tensor,
    q_offset: usize,
    q_len: usize,
    k_len: usize,
    bidirectional: bool,
    max_distance: usize,
) -> Result<Tensor> {
    let (num_buckets, heads) = rel_embedding.dims2()?;
    let ids = bucket_ids(
        q_offset,
        q_len,
        k_len,
        bidirectional,
        num_buckets,
        max_distance,
        rel_embedding.device(),
    )?;
    let b = rel_embedding.index_select(&ids, 0)?; // [q*k, heads]
    Ok(b.reshape((q_len, k_len, heads))?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?)
}

/// Large negative number added to masked attention logits. Finite so that
/// adding it to a bias never produces NaN through inf - inf.
pub const MASK_VALUE: f64 = -1e9;

/// Additive key mask `[batch, 1, 1, k_len]` from a 0/1 attention mask `[batch, k_len]`.
pub fn key_mask(attention_mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, k) = attention_mask.dims2()?;
    let m = attention_mask.to_dtype(dtype)?;
    let add = ((m - 1.0)? * (-MASK_VALUE))?; // 0 where kept, MASK_VALUE where masked
    Ok(add.reshape((b, 1, 1, k))?)
}

/// Additive causal mask `[1, 1, q_len, k_len]` for queries at
/// `q_offset..q_offset+q_len`: a key after its query is masked.
pub fn causal_mask(
    q_offset: usize,
    q_len: usize,
    k_len: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mut v = Vec::with_capacity(q_len * k_len);
    for q in 0..q_len {
        for k in 0..k_len {
            v.push(if k > q_offset + q { MASK_VALUE } else { 0.0 });
        }
    }
    Ok(Tensor::from_vec(v, (1, 1, q_len, k_len), device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_hf_reference_values() {
        // Values from HF's _relative_position_bucket with 32 buckets, max 128.
        let bi: Vec<u32> = [-200i64, -128, -20, -8, -7, -1, 0, 1, 7, 8, 20, 128, 200]
            .iter()
            .map(|&r| relative_bucket(r, true, 32, 128))
            .collect();
        assert_eq!(bi, vec![15, 15, 10, 8, 7, 1, 0, 17, 23, 24, 26, 31, 31]);
        let uni: Vec<u32> = [-200i64, -128, -40, -16, -15, -1, 0, 5]
            .iter()
            .map(|&r| relative_bucket(r, false, 32, 128))
            .collect();
        assert_eq!(uni, vec![31, 31, 23, 16, 15, 1, 0, 0]);
    }
}
