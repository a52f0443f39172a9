//! How well a router routes: for tasks an expert of the pool owns (it was trained on
//! the task's data), the share of routing weight and the top-k hit rate that expert
//! gets over the task's real tokens (padding never counts), averaged over modules,
//! encoder and decoder apart; and how alike the pool's gate vectors are (the mean
//! off-diagonal correlation of the standardized gates, module by module). A router
//! that works sends a held-in task's tokens to that task's expert; gates that all
//! look alike cannot.

use crate::eval::table::md_cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::plots::ModuleChoices;

pub use crate::artifact_files::QUALITY_JSON;

/// The owning expert's part of one method's routing on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnRouting {
    pub expert: String,
    /// Mean over modules of the owner's share of the routing weight.
    pub share: f64,
    /// Mean over modules of the fraction of tokens whose top-k holds the owner.
    pub hit: f64,
    pub encoder_share: Option<f64>,
    pub encoder_hit: Option<f64>,
    pub decoder_share: Option<f64>,
    pub decoder_hit: Option<f64>,
    /// The owner's share on the tokens only this task uses (its instruction words,
    /// say) and on the tokens it shares with other tasks, each averaged over the
    /// modules that saw such tokens: a router that reads tokens can only be right on
    /// the first kind by the token alone.
    pub distinct_share: Option<f64>,
    pub shared_share: Option<f64>,
    /// The fraction of the task's real tokens that are distinct (over all modules).
    pub distinct_fraction: Option<f64>,
    /// Modules averaged (those that saw at least one real token).
    pub modules: usize,
    /// Of those, the modules at which the owner was in no token's top-k: there the
    /// task never got its own expert (a gate that scores low on every token, say).
    #[serde(default)]
    pub never: usize,
}

/// How alike the gate vectors of a pool are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateSimilarity {
    /// Mean over modules of the mean off-diagonal Pearson correlation between experts
    /// (pairs with a constant gate left out: their correlation is undefined); None
    /// when no pair is left.
    pub mean_correlation: Option<f64>,
    /// The largest correlation of any pair in any module.
    pub max_correlation: Option<f64>,
    pub modules: usize,
    pub experts: usize,
    /// Experts whose gate is constant (all zero: untrained) at every module.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub constant: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingQuality {
    /// method -> task -> the owner's routing.
    pub own: BTreeMap<String, BTreeMap<String, OwnRouting>>,
    /// The gate vectors of the evaluated pool (PHATGOOSE's router embeddings).
    pub gates: Option<GateSimilarity>,
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// The owner's routing over the given modules' records (those where it is among the
/// routed experts: an adapter of some modules only is counted over those); None when
/// no such module saw a real token.
pub fn own_routing(expert: &str, modules: &BTreeMap<String, ModuleChoices>) -> Option<OwnRouting> {
    let (mut share, mut hit) = (vec![], vec![]);
    let (mut es, mut eh, mut ds, mut dh) = (vec![], vec![], vec![], vec![]);
    let (mut distinct, mut shared, mut marked, mut total) = (vec![], vec![], 0u64, 0u64);
    let mut never = 0;
    for (name, m) in modules {
        let Some(o) = m.expert_names.iter().position(|n| n == expert) else {
            continue;
        };
        if m.tokens == 0 {
            continue;
        }
        let s = m.weight_sums.get(o).copied().unwrap_or(0.0) / m.tokens as f64;
        let owner_tokens = m.counts.get(o).copied().unwrap_or(0);
        let h = owner_tokens as f64 / m.tokens as f64;
        share.push(s);
        hit.push(h);
        if owner_tokens == 0 {
            never += 1;
        }
        if let (Some(&mw), true) = (m.marked_weight_sums.get(o), !m.marked_counts.is_empty()) {
            marked += m.marked_tokens;
            total += m.tokens;
            if m.marked_tokens > 0 {
                distinct.push(mw / m.marked_tokens as f64);
            }
            let rest = m.tokens - m.marked_tokens;
            if rest > 0 {
                let w = m.weight_sums.get(o).copied().unwrap_or(0.0);
                shared.push((w - mw) / rest as f64);
            }
        }
        // Cross-attention keys and values read encoder tokens: encoder side. A
        // per-example row (retrieval) is neither.
        if reads_encoder_tokens(name) {
            es.push(s);
            eh.push(h);
        } else if name.starts_with("decoder.") {
            ds.push(s);
            dh.push(h);
        }
    }
    Some(OwnRouting {
        expert: expert.to_string(),
        share: mean(&share)?,
        hit: mean(&hit)?,
        encoder_share: mean(&es),
        encoder_hit: mean(&eh),
        decoder_share: mean(&ds),
        decoder_hit: mean(&dh),
        distinct_share: mean(&distinct),
        shared_share: mean(&shared),
        distinct_fraction: (total > 0).then(|| marked as f64 / total as f64),
        modules: share.len(),
        never,
    })
}

/// Whether a module's input rows are encoder tokens (encoder modules, and the
/// decoder's cross-attention keys and values).
fn reads_encoder_tokens(module: &str) -> bool {
    module.starts_with("encoder.")
        || module.ends_with("EncDecAttention.k")
        || module.ends_with("EncDecAttention.v")
}

/// `v` standardized as PHATGOOSE's router does (LayerNorm without affine, eps 1e-5).
fn standardize(v: &[f64]) -> Vec<f64> {
    let n = v.len().max(1) as f64;
    let mu = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / n;
    let inv = 1.0 / (var + 1e-5).sqrt();
    v.iter().map(|x| (x - mu) * inv).collect()
}

/// `gates[z]`: expert z's gate vector per module. Modules missing from any expert,
/// or pools of fewer than two experts, are skipped; so are pairs in which a gate is
/// constant (an untrained, all-zero gate: it standardizes to zero, which read as
/// "correlation 0", as if it told its expert apart perfectly).
pub fn gate_similarity(gates: &[BTreeMap<String, Vec<f64>>]) -> Option<GateSimilarity> {
    if gates.len() < 2 {
        return None;
    }
    let (mut per_module, mut max) = (vec![], None::<f64>);
    let mut modules = 0;
    let mut varies = vec![false; gates.len()];
    for module in gates[0].keys() {
        let Some(vs) = gates.iter().map(|g| g.get(module)).collect::<Option<Vec<_>>>() else {
            continue;
        };
        modules += 1;
        let vs: Vec<Option<Vec<f64>>> = vs
            .iter()
            .map(|v| (!is_constant(v)).then(|| standardize(v)))
            .collect();
        let d = gates[0][module].len().max(1) as f64;
        let mut pairs = vec![];
        for i in 0..vs.len() {
            varies[i] |= vs[i].is_some();
            for j in i + 1..vs.len() {
                let (Some(a), Some(b)) = (&vs[i], &vs[j]) else {
                    continue;
                };
                let c = a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>() / d;
                max = Some(max.map_or(c, |m| m.max(c)));
                pairs.push(c);
            }
        }
        per_module.extend(mean(&pairs));
    }
    (modules > 0).then(|| GateSimilarity {
        mean_correlation: mean(&per_module),
        max_correlation: max,
        modules,
        experts: gates.len(),
        constant: varies.iter().filter(|v| !**v).count(),
    })
}

/// Whether every entry of `v` is the same (an untrained gate is all zeros).
fn is_constant(v: &[f64]) -> bool {
    v.iter().all(|x| *x == v[0])
}

/// The report's routing-quality section of one eval (empty when it has nothing).
/// The routing-quality tables; tasks in `order` (the manifest's) first, in that order.
pub fn markdown(title: &str, q: &RoutingQuality, order: &[String]) -> String {
    let mut out = String::new();
    if !q.own.is_empty() {
        let _ = writeln!(
            out,
            "#### {title}: routing to each task's own expert (real tokens, mean over modules)\n"
        );
        let _ = writeln!(
            out,
            "| method | task | own expert | weight share | top-k hit | encoder share | decoder share | share on distinct tokens | share on shared tokens | modules never reaching it |"
        );
        let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
        let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        for (method, tasks) in &q.own {
            let mut shares = vec![];
            let mut tasks: Vec<_> = tasks.iter().collect();
            tasks.sort_by_key(|(t, _)| order.iter().position(|o| o == *t).unwrap_or(usize::MAX));
            for (task, r) in tasks {
                shares.push(r.share);
                let distinct = match (r.distinct_share, r.distinct_fraction) {
                    (Some(s), Some(p)) => format!("{s:.2} ({:.0}% of tokens)", 100.0 * p),
                    _ => "-".into(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.2} | {:.2} | {} | {} | {distinct} | {} | {} of {} |",
                    md_cell(method),
                    md_cell(task),
                    md_cell(&r.expert),
                    r.share,
                    r.hit,
                    f(r.encoder_share),
                    f(r.decoder_share),
                    f(r.shared_share),
                    r.never,
                    r.modules
                );
            }
            if let Some(m) = mean(&shares) {
                let _ = writeln!(
                    out,
                    "| {} | **mean** | | **{m:.2}** | | | | | | |",
                    md_cell(method)
                );
            }
        }
        let _ = writeln!(
            out,
            "\nWeight share: the own expert's share of the routing weight, over the task's real tokens (padding never counts) and the modules; top-k hit: the fraction of those tokens whose top-k holds the own expert. Chance is 1/N of the weight with N experts. Distinct tokens occur in this task's examples and no other owned task's. Retrieval picks one expert per example: its share is the fraction of examples sent to the owner. A module never reaching the owner is one where no token of the task had its own expert in the top-k."
        );
    }
    if let Some(g) = &q.gates {
        let untrained = match g.constant {
            0 => String::new(),
            n => format!(
                " {n} of the {} experts have constant (all-zero, untrained) gates at every module: nothing to route them by, and left out of the correlation.",
                g.experts
            ),
        };
        match (g.mean_correlation, g.max_correlation) {
            (Some(mean), Some(max)) => {
                let _ = writeln!(
                    out,
                    "\nGate vectors of the pool ({} experts, {} modules): mean off-diagonal correlation {mean:.2} after standardization (the most alike pair at one module: {max:.3}); gates that tell experts apart correlate little.{untrained}",
                    g.experts, g.modules
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "\nGate vectors of the pool ({} experts, {} modules): no two trained gates to correlate.{untrained}",
                    g.experts, g.modules
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(names: &[&str], counts: &[u64], weights: &[f64], tokens: u64) -> ModuleChoices {
        ModuleChoices {
            expert_names: names.iter().map(|s| s.to_string()).collect(),
            counts: counts.to_vec(),
            weight_sums: weights.to_vec(),
            tokens,
            marked_counts: vec![],
            marked_weight_sums: vec![],
            marked_tokens: 0,
        }
    }

    #[test]
    fn distinct_and_shared_tokens_are_averaged_apart() {
        let mut m = module(&["a", "b"], &[10, 10], &[7.0, 3.0], 10);
        // 4 marked tokens, all to "a"; the 6 others split 3/3.
        m.marked_counts = vec![4, 4];
        m.marked_weight_sums = vec![4.0, 0.0];
        m.marked_tokens = 4;
        let r = own_routing("a", &BTreeMap::from([("encoder.x".to_string(), m)])).unwrap();
        assert_eq!(r.distinct_share, Some(1.0));
        assert_eq!(r.shared_share, Some(0.5));
        assert_eq!(r.distinct_fraction, Some(0.4));
    }

    #[test]
    fn own_share_and_hit_average_over_modules_with_sides_apart() {
        let names = ["a", "b", "c"];
        let modules = BTreeMap::from([
            (
                "encoder.block.0.q".to_string(),
                module(&names, &[10, 6, 4], &[8.0, 1.0, 1.0], 10),
            ),
            (
                "decoder.block.0.q".to_string(),
                module(&names, &[2, 4, 4], &[1.0, 2.0, 1.0], 4),
            ),
            (
                "decoder.block.0.k".to_string(),
                module(&names, &[0, 0, 0], &[0.0, 0.0, 0.0], 0),
            ),
            // Cross-attention values route encoder tokens: encoder side.
            (
                "decoder.block.0.layer.1.EncDecAttention.v".to_string(),
                module(&names, &[10, 5, 5], &[6.0, 2.0, 2.0], 10),
            ),
        ]);
        let r = own_routing("a", &modules).unwrap();
        assert_eq!(r.modules, 3);
        assert!((r.share - (0.8 + 0.25 + 0.6) / 3.0).abs() < 1e-12);
        assert!((r.hit - (1.0 + 0.5 + 1.0) / 3.0).abs() < 1e-12);
        assert!((r.encoder_share.unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(r.decoder_share, Some(0.25));
        assert_eq!(r.decoder_hit, Some(0.5));
        assert!(own_routing("zz", &modules).is_none());
        assert_eq!(r.never, 0);
    }

    #[test]
    fn modules_where_the_owner_is_never_in_the_top_k_are_counted() {
        let names = ["a", "b", "c"];
        let modules = BTreeMap::from([
            // "a" in the top-k of 3 tokens out of 10.
            (
                "encoder.block.0.q".to_string(),
                module(&names, &[3, 10, 7], &[1.0, 6.0, 3.0], 10),
            ),
            // "a" never: every token went to b and c.
            (
                "encoder.block.0.k".to_string(),
                module(&names, &[0, 10, 10], &[0.0, 5.0, 5.0], 10),
            ),
            // No real token: neither averaged nor counted.
            (
                "decoder.block.0.q".to_string(),
                module(&names, &[0, 0, 0], &[0.0, 0.0, 0.0], 0),
            ),
        ]);
        let a = own_routing("a", &modules).unwrap();
        assert_eq!((a.never, a.modules), (1, 2));
        let b = own_routing("b", &modules).unwrap();
        assert_eq!((b.never, b.modules), (0, 2));
        let table = markdown(
            "held-in",
            &RoutingQuality {
                own: BTreeMap::from([("phatgoose".to_string(), BTreeMap::from([("t".to_string(), a)]))]),
                gates: None,
            },
            &[],
        );
        assert!(table.contains("| 1 of 2 |"), "{table}");
    }

    #[test]
    fn a_routing_quality_written_before_never_was_counted_still_reads() {
        let old = r#"{"expert":"a","share":0.5,"hit":0.5,"encoder_share":null,"encoder_hit":null,"decoder_share":null,"decoder_hit":null,"distinct_share":null,"shared_share":null,"distinct_fraction":null,"modules":3}"#;
        let r: OwnRouting = serde_json::from_str(old).unwrap();
        assert_eq!((r.modules, r.never), (3, 0));
    }

    #[test]
    fn gate_correlation_is_pearson_after_standardization() {
        let g = |v: &[f64]| BTreeMap::from([("m".to_string(), v.to_vec())]);
        // b is an affine copy of a (correlation 1), c its mirror (-1).
        let s = gate_similarity(&[
            g(&[1.0, 2.0, 3.0, 4.0]),
            g(&[10.0, 12.0, 14.0, 16.0]),
            g(&[4.0, 3.0, 2.0, 1.0]),
        ])
        .unwrap();
        assert!((s.max_correlation.unwrap() - 1.0).abs() < 1e-4, "{s:?}");
        assert!(
            (s.mean_correlation.unwrap() - (1.0 - 1.0 - 1.0) / 3.0).abs() < 1e-4,
            "{s:?}"
        );
        assert_eq!(s.constant, 0);
        assert!(gate_similarity(&[g(&[1.0, 2.0])]).is_none());
        // The record of a pool without untrained gates reads as it was written.
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("constant"), "{json}");
        assert_eq!(serde_json::from_str::<GateSimilarity>(&json).unwrap(), s);
    }

    #[test]
    fn an_untrained_all_zero_gate_is_left_out_and_named_not_read_as_correlation_0() {
        let g = |v: &[f64]| BTreeMap::from([("m".to_string(), v.to_vec())]);
        let zero = g(&[0.0; 4]);
        // Two trained gates (correlation 1) and an untrained one: it read as 0 with
        // each, pulling the mean to 1/3.
        let s = gate_similarity(&[g(&[1.0, 2.0, 3.0, 4.0]), g(&[2.0, 4.0, 6.0, 8.0]), zero.clone()]).unwrap();
        assert!((s.mean_correlation.unwrap() - 1.0).abs() < 1e-4, "{s:?}");
        assert_eq!((s.constant, s.modules, s.experts), (1, 1, 3));
        let q = RoutingQuality {
            own: BTreeMap::new(),
            gates: Some(s),
        };
        assert!(
            markdown("e", &q, &[]).contains("1 of the 3 experts have constant (all-zero, untrained) gates"),
            "{}",
            markdown("e", &q, &[])
        );
        // Nothing left to correlate: said so (it printed "correlation 0.00").
        let s = gate_similarity(&[zero.clone(), zero]).unwrap();
        assert_eq!((s.mean_correlation, s.constant), (None, 2));
        let q = RoutingQuality {
            own: BTreeMap::new(),
            gates: Some(s),
        };
        let md = markdown("e", &q, &[]);
        assert!(
            md.contains("no two trained gates to correlate") && !md.contains("0.00"),
            "{md}"
        );
    }

    #[test]
    fn an_owner_that_adapts_some_modules_is_measured_over_those() {
        // The owner "a" has no adapter at m2: its row was dropped altogether.
        let modules = BTreeMap::from([
            (
                "encoder.m1".to_string(),
                module(&["a", "b"], &[8, 2], &[7.0, 3.0], 10),
            ),
            (
                "encoder.m2".to_string(),
                module(&["b", "c"], &[10, 10], &[5.0, 5.0], 10),
            ),
        ]);
        let r = own_routing("a", &modules).unwrap();
        assert_eq!(r.modules, 1);
        assert!(
            (r.share - 0.7).abs() < 1e-12 && (r.hit - 0.8).abs() < 1e-12,
            "{r:?}"
        );
        assert!(own_routing("z", &modules).is_none());
    }
}
