//! `score --routing`: where one input's tokens are routed. An eval's routing record
//! (`routing.json`) sums over a task's tokens; this is the same log kept per token for
//! one (input, target) pair, so a user can see which expert each word of their own
//! text goes to, on the encoder side and in the decoder.
//!
//! Each token's number for an expert is its routing weight (the renormalised top-k
//! weight, 0 where the expert is not chosen) averaged over the modules of that side:
//! encoder-side modules (the encoder's, and the decoder's cross-attention keys and
//! values, which read encoder outputs) for an input token, the decoder's other modules
//! for a decoder position.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

use crate::model::adapter::{RoutingLog, is_encoder_side};

/// One token's mean routing weight per expert (in [`RoutingTrace::experts`] order).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenRouting {
    pub piece: String,
    pub weights: Vec<f64>,
}

/// Per-token routing of one scored pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutingTrace {
    /// Expert names, sorted: the order of every `weights`.
    pub experts: Vec<String>,
    pub top_k: usize,
    pub encoder_modules: usize,
    pub decoder_modules: usize,
    /// The input's tokens (EOS included), as the encoder side routes them.
    pub input: Vec<TokenRouting>,
    /// Decoder positions, each named by the target token it predicts (the position
    /// reads the token before it: the start token, then the target's).
    pub target: Vec<TokenRouting>,
}

impl RoutingTrace {
    /// The trace of a log kept with its per-token choices, for a pass over one input
    /// of `input.len()` tokens and one target of `target.len()` (EOS included).
    pub fn from_log(
        log: &RoutingLog,
        top_k: usize,
        input: &[String],
        target: &[String],
    ) -> Result<RoutingTrace, String> {
        let experts: Vec<String> = log
            .modules
            .values()
            .flat_map(|m| m.expert_names.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let blank = |pieces: &[String]| -> Vec<TokenRouting> {
            pieces
                .iter()
                .map(|p| TokenRouting {
                    piece: p.clone(),
                    weights: vec![0.0; experts.len()],
                })
                .collect()
        };
        let (mut enc, mut dec) = (blank(input), blank(target));
        let (mut enc_modules, mut dec_modules) = (0usize, 0usize);
        for (module, m) in &log.modules {
            let (rows, count) = if is_encoder_side(module) {
                (&mut enc, &mut enc_modules)
            } else {
                (&mut dec, &mut dec_modules)
            };
            // The names of this module's experts, as columns of the whole pool (a
            // member may have no adapter at some modules).
            let column: Vec<usize> = m
                .expert_names
                .iter()
                .map(|n| experts.binary_search(n).expect("every name is in the union"))
                .collect();
            let tokens: usize = m.choices.iter().map(|r| r.experts.len() / r.k.max(1)).sum();
            if tokens != rows.len() {
                return Err(format!(
                    "module {module} routed {tokens} tokens where the pair has {}; per-token routing is read from one pass over one pair",
                    rows.len()
                ));
            }
            let mut t = 0;
            for r in &m.choices {
                let k = r.k.max(1);
                for (slot, (&z, &w)) in r.experts.iter().zip(&r.weights).enumerate() {
                    rows[t + slot / k].weights[column[z as usize]] += w;
                }
                t += r.experts.len() / k;
            }
            *count += 1;
        }
        for (rows, n) in [(&mut enc, enc_modules), (&mut dec, dec_modules)] {
            for row in rows.iter_mut() {
                row.weights.iter_mut().for_each(|w| *w /= n.max(1) as f64);
            }
        }
        Ok(RoutingTrace {
            experts,
            top_k,
            encoder_modules: enc_modules,
            decoder_modules: dec_modules,
            input: enc,
            target: dec,
        })
    }

    /// Each expert's mean weight over `rows` (a side's tokens).
    pub fn mean(&self, rows: &[TokenRouting]) -> Vec<f64> {
        let mut m = vec![0.0; self.experts.len()];
        for r in rows {
            for (a, w) in m.iter_mut().zip(&r.weights) {
                *a += w / rows.len().max(1) as f64;
            }
        }
        m
    }

    /// Plain text: per token, the experts with the most weight (at most three), then
    /// each side's mean over its tokens.
    pub fn render(&self, router: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "routing ({router}, top-{}): each token's weight per expert, averaged over the modules of its side (the three largest shown)",
            self.top_k
        );
        let width = self
            .input
            .iter()
            .chain(&self.target)
            .map(|t| t.piece.chars().count())
            .max()
            .unwrap_or(0)
            .max("input token".len());
        let sides = [
            ("input token", &self.input, self.encoder_modules, "encoder-side"),
            ("predicting", &self.target, self.decoder_modules, "decoder"),
        ];
        for (head, rows, modules, side) in sides {
            if modules == 0 {
                let _ = writeln!(out, "{head}: no {side} module is routed");
                continue;
            }
            let _ = writeln!(out, "{head:<width$}  experts ({modules} {side} modules)");
            for r in rows {
                let _ = writeln!(out, "{:<width$}  {}", r.piece, self.largest(&r.weights, 3));
            }
            let _ = writeln!(
                out,
                "{:<width$}  {}",
                "(mean)",
                self.largest(&self.mean(rows), self.experts.len())
            );
        }
        out
    }

    /// `name weight` of the `n` experts with the most weight (ties: by name), leaving
    /// out those with none.
    fn largest(&self, weights: &[f64], n: usize) -> String {
        let mut order: Vec<usize> = (0..weights.len()).filter(|&z| weights[z] > 0.0).collect();
        order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
        order
            .iter()
            .take(n)
            .map(|&z| format!("{} {:.2}", self.experts[z], weights[z]))
            .collect::<Vec<_>>()
            .join("  ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::adapter::ModuleRouting;
    use crate::model::router::Routing;

    fn module(names: &[&str], experts: Vec<u32>, weights: Vec<f64>) -> ModuleRouting {
        ModuleRouting {
            expert_names: names.iter().map(|s| s.to_string()).collect(),
            choices: vec![Routing {
                k: 2,
                experts,
                weights,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn weights_are_averaged_per_token_over_the_modules_of_its_side() {
        let mut log = RoutingLog::default();
        // Two input tokens: two encoder-side modules (one of them cross-attention).
        log.modules.insert(
            "encoder.block.0.layer.0.SelfAttention.q".into(),
            module(&["a", "b", "c"], vec![0, 1, 2, 1], vec![0.75, 0.25, 0.5, 0.5]),
        );
        // A module where expert "a" has no adapter: its columns are "b", "c".
        log.modules.insert(
            "decoder.block.0.layer.1.EncDecAttention.k".into(),
            module(&["b", "c"], vec![0, 1, 1, 0], vec![0.5, 0.5, 1.0, 0.0]),
        );
        // One decoder position.
        log.modules.insert(
            "decoder.block.0.layer.0.SelfAttention.q".into(),
            module(&["a", "b", "c"], vec![2, 0], vec![0.6, 0.4]),
        );
        let pieces = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let t = RoutingTrace::from_log(&log, 2, &pieces(&["x", "</s>"]), &pieces(&["y"])).unwrap();
        assert_eq!(t.experts, ["a", "b", "c"]);
        assert_eq!((t.encoder_modules, t.decoder_modules), (2, 1));
        assert_eq!(t.input[0].weights, vec![0.375, 0.375, 0.25]);
        assert_eq!(t.input[1].weights, vec![0.0, 0.25, 0.75]);
        assert_eq!(t.target[0].weights, vec![0.4, 0.0, 0.6]);
        assert_eq!(t.mean(&t.input), vec![0.1875, 0.3125, 0.5]);
        let text = t.render("phatgoose");
        assert!(text.contains("x            a 0.38  b 0.38  c 0.25"), "{text}");
        assert!(text.contains("</s>         c 0.75  b 0.25"), "{text}");
        assert!(text.contains("(mean)       c 0.50  b 0.31  a 0.19"), "{text}");
        // A log of another pass (more tokens than the pair) is refused, not misread.
        let err = RoutingTrace::from_log(&log, 2, &pieces(&["x"]), &pieces(&["y"])).unwrap_err();
        assert!(err.contains("routed 2 tokens where the pair has 1"), "{err}");
    }
}
