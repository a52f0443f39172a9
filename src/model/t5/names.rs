//! Names of the adapted linear layers, in Hugging Face T5 naming. Expert files,
//! gate files and router embeddings are all keyed by these names.

use super::config::T5Config;

/// One linear layer that can carry an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearSite {
    /// e.g. `encoder.block.3.layer.1.DenseReluDense.wi_0`
    pub name: String,
    pub d_in: usize,
    pub d_out: usize,
}

fn ffn_sites(prefix: &str, cfg: &T5Config, out: &mut Vec<LinearSite>) {
    let wis: &[&str] = if cfg.feed_forward.is_gated() {
        &["wi_0", "wi_1"]
    } else {
        &["wi"]
    };
    for wi in wis {
        out.push(LinearSite {
            name: format!("{prefix}.DenseReluDense.{wi}"),
            d_in: cfg.d_model,
            d_out: cfg.d_ff,
        });
    }
    out.push(LinearSite {
        name: format!("{prefix}.DenseReluDense.wo"),
        d_in: cfg.d_ff,
        d_out: cfg.d_model,
    });
}

fn attention_sites(prefix: &str, cfg: &T5Config, out: &mut Vec<LinearSite>) {
    for p in ["q", "k", "v"] {
        out.push(LinearSite {
            name: format!("{prefix}.{p}"),
            d_in: cfg.d_model,
            d_out: cfg.inner_dim(),
        });
    }
    out.push(LinearSite {
        name: format!("{prefix}.o"),
        d_in: cfg.inner_dim(),
        d_out: cfg.d_model,
    });
}

/// Every adapted linear of the model, encoder first, in block order: 7 per
/// encoder block and 11 per decoder block for gated FFNs (6 and 10 otherwise).
pub fn adapted_linears(cfg: &T5Config) -> Vec<LinearSite> {
    let mut out = Vec::new();
    for i in 0..cfg.num_layers {
        attention_sites(&format!("encoder.block.{i}.layer.0.SelfAttention"), cfg, &mut out);
        ffn_sites(&format!("encoder.block.{i}.layer.1"), cfg, &mut out);
    }
    for i in 0..cfg.num_decoder_layers {
        attention_sites(&format!("decoder.block.{i}.layer.0.SelfAttention"), cfg, &mut out);
        attention_sites(
            &format!("decoder.block.{i}.layer.1.EncDecAttention"),
            cfg,
            &mut out,
        );
        ffn_sites(&format!("decoder.block.{i}.layer.2"), cfg, &mut out);
    }
    out
}
