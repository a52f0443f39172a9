//! The adapter-aware linear layer. Every adapted linear of the T5 computes
//! `W u` from frozen, pre-transposed weights and adds the output of whatever
//! adapter is attached to its name: one LoRA, a gated LoRA, a fixed mixture of
//! experts, or a per-token routed mixture.

pub mod pool;
pub mod trainable;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};
use crate::model::router::{Router, Routing};

/// One LoRA: `delta(u) = u A^T B^T / r`, A `[r, d_in]`, B `[d_out, r]`.
/// A and B may be plain tensors (frozen experts) or `Var` tensors (training).
#[derive(Debug, Clone)]
pub struct LoraWeights {
    pub a: Tensor,
    pub b: Tensor,
}

impl LoraWeights {
    pub fn new(module: &str, a: Tensor, b: Tensor, d_in: usize, d_out: usize) -> Result<Self> {
        let (r, din) = a
            .dims2()
            .map_err(|_| ModelError::adapter(module, format!("lora_A must be 2-D, got {:?}", a.dims())))?;
        if din != d_in || r == 0 {
            return Err(ModelError::adapter(
                module,
                format!("lora_A has shape {:?}, expected [r, {d_in}] with r > 0", a.dims()),
            ));
        }
        if b.dims() != [d_out, r] {
            return Err(ModelError::adapter(
                module,
                format!("lora_B has shape {:?}, expected [{d_out}, {r}]", b.dims()),
            ));
        }
        Ok(LoraWeights { a, b })
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// `u A^T B^T / r` for `u` of shape `[n, d_in]`.
    pub fn delta(&self, u: &Tensor) -> Result<Tensor> {
        let a = cast(&self.a, u.dtype())?;
        let b = cast(&self.b, u.dtype())?;
        // Scale the [n, r] intermediate, not the [n, d_out] output: same result, r/d_out the work.
        let h = (u.matmul(&a.t()?)? / self.rank() as f64)?;
        Ok(h.matmul(&b.t()?)?)
    }
}

fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(if t.dtype() == dtype {
        t.clone()
    } else {
        t.to_dtype(dtype)?
    })
}

/// N frozen LoRA experts of one module, stacked and pre-transposed for
/// gathering: `at[z] = A_z^T` (`[d_in, r]`), `bt[z] = B_z^T` (`[r, d_out]`).
#[derive(Debug, Clone)]
pub struct ExpertStack {
    pub names: Vec<String>,
    pub rank: usize,
    at: Tensor,
    bt: Tensor,
}

impl ExpertStack {
    /// `experts` must all have the same rank; their order is the expert index.
    pub fn new(module: &str, names: Vec<String>, experts: &[LoraWeights], dtype: DType) -> Result<Self> {
        if experts.is_empty() || names.len() != experts.len() {
            return Err(ModelError::adapter(
                module,
                "an expert stack needs one name per expert and at least one expert",
            ));
        }
        let rank = experts[0].rank();
        if let Some((i, _)) = experts.iter().enumerate().find(|(_, e)| e.rank() != rank) {
            return Err(ModelError::adapter(
                module,
                format!(
                    "expert `{}` has rank {}, expert `{}` has rank {rank}",
                    names[i],
                    experts[i].rank(),
                    names[0]
                ),
            ));
        }
        let ats = experts
            .iter()
            .map(|e| cast(&e.a, dtype)?.t().map_err(ModelError::from))
            .collect::<Result<Vec<_>>>()?;
        let bts = experts
            .iter()
            .map(|e| cast(&e.b, dtype)?.t().map_err(ModelError::from))
            .collect::<Result<Vec<_>>>()?;
        Ok(ExpertStack {
            names,
            rank,
            at: Tensor::stack(&ats, 0)?.contiguous()?,
            bt: Tensor::stack(&bts, 0)?.contiguous()?,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Expert z's LoRA output `u A_z^T B_z^T / r` for `u` `[n, d_in]`.
    /// `weight * u A_z^T B_z^T / r`, scaling the small `[n, r]` intermediate.
    fn delta_one(&self, u: &Tensor, z: usize, weight: f64) -> Result<Tensor> {
        let h = (u.matmul(&self.at.get(z)?)? * (weight / self.rank as f64))?;
        Ok(h.matmul(&self.bt.get(z)?)?)
    }

    /// Routed LoRA output for `u` `[n, d_in]`: only the chosen experts are
    /// computed. Token rows are grouped by expert, so the work is two small
    /// matmuls per used expert and O(k) per token, never O(N).
    fn delta_routed(&self, u: &Tensor, routing: &Routing) -> Result<Tensor> {
        let n_tok = u.dims()[0];
        let k = routing.k;
        let n_exp = self.len();
        let mut counts = vec![0usize; n_exp];
        for &z in &routing.experts {
            counts[z as usize] += 1;
        }
        let mut offsets = vec![0usize; n_exp + 1];
        for z in 0..n_exp {
            offsets[z + 1] = offsets[z] + counts[z];
        }
        let total = offsets[n_exp];
        let mut fill = offsets.clone();
        let mut perm = vec![0u32; total];
        let mut w = vec![0f64; total];
        let inv_r = 1.0 / self.rank as f64;
        for (slot, (&z, &wt)) in routing.experts.iter().zip(&routing.weights).enumerate() {
            let at = fill[z as usize];
            fill[z as usize] += 1;
            perm[at] = (slot / k) as u32;
            w[at] = wt * inv_r;
        }
        if crate::kernels::routed_lora::applicable(u, &self.at) {
            let groups = crate::kernels::routed_lora::Groups {
                perm: &perm,
                weights: &w,
                offsets: &offsets,
            };
            return Ok(crate::kernels::routed_lora::routed_delta(
                u, &self.at, &self.bt, &groups,
            )?);
        }
        let device = u.device();
        let perm_t = Tensor::from_vec(perm, total, device)?;
        let w_t = Tensor::from_vec(w, (total, 1), device)?.to_dtype(u.dtype())?;
        let xs = u.index_select(&perm_t, 0)?;
        let used: Vec<usize> = (0..n_exp).filter(|&z| counts[z] > 0).collect();
        let mut hs = Vec::with_capacity(used.len());
        for &z in &used {
            hs.push(xs.narrow(0, offsets[z], counts[z])?.matmul(&self.at.get(z)?)?);
        }
        let h = Tensor::cat(&hs, 0)?.broadcast_mul(&w_t)?;
        let mut ys = Vec::with_capacity(used.len());
        for &z in &used {
            ys.push(h.narrow(0, offsets[z], counts[z])?.matmul(&self.bt.get(z)?)?);
        }
        let y = Tensor::cat(&ys, 0)?;
        let d_out = y.dims()[1];
        let zeros = Tensor::zeros((n_tok, d_out), u.dtype(), device)?;
        Ok(zeros.index_add(&perm_t, &y, 0)?)
    }
}

/// Fixed weights over the experts of a mixture.
#[derive(Debug, Clone, PartialEq)]
pub enum MixWeights {
    /// One weight per expert for every token (e.g. a uniform merge).
    Shared(Vec<f64>),
    /// One weight vector per example of the batch (e.g. a one-hot chosen by
    /// retrieval). Must have exactly `batch` rows at forward time.
    PerExample(Vec<Vec<f64>>),
}

/// What is attached to one linear layer.
#[derive(Debug, Clone)]
pub enum ModuleAdapter {
    Lora(LoraWeights),
    /// `W u + sigmoid(v·u) * u A^T B^T / r`; `gate` is `[d_in]`.
    GatedLora {
        lora: LoraWeights,
        gate: Tensor,
    },
    /// `W u + sum_z w_z * u A_z^T B_z^T / r` with fixed weights.
    Mixture {
        stack: ExpertStack,
        weights: MixWeights,
    },
    /// Per-token top-k routing among the stack's experts.
    Routed {
        stack: ExpertStack,
        router: Router,
    },
}

/// Adapters keyed by module name (see [`crate::model::t5::names::adapted_linears`]).
/// Modules without an entry run plain.
#[derive(Debug, Clone, Default)]
pub struct AdapterSet {
    pub modules: HashMap<String, ModuleAdapter>,
}

impl AdapterSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, module: impl Into<String>, adapter: ModuleAdapter) {
        self.modules.insert(module.into(), adapter);
    }

    pub fn get(&self, module: &str) -> Option<&ModuleAdapter> {
        self.modules.get(module)
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }
}

/// Routing decisions of one module accumulated over forward passes. Only real tokens
/// count: padding rows of the batch are left out of every count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModuleRouting {
    pub expert_names: Vec<String>,
    /// How many (token, slot) choices picked each expert.
    pub counts: Vec<u64>,
    /// Sum of the renormalised weights each expert received.
    pub weight_sums: Vec<f64>,
    pub tokens: u64,
    /// The same three counts over the marked tokens only (tokens that tell the task
    /// apart; see [`RoutingLog::marked`]), when the log marks any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marked_counts: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marked_weight_sums: Vec<f64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub marked_tokens: u64,
    /// Every call's per-token choices, kept only when requested.
    #[serde(skip)]
    pub choices: Vec<Routing>,
}

/// Routing analysis record over all routed modules.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoutingLog {
    pub keep_choices: bool,
    pub modules: BTreeMap<String, ModuleRouting>,
    /// Which rows of the current encoder-side input (encoder modules, cross-attention
    /// keys and values) are real tokens; set by the model before those modules run.
    #[serde(skip)]
    pub encoder_rows: Option<Vec<bool>>,
    /// The same for the current decoder input (set by whoever decodes: scoring knows
    /// which target positions are padding, generation which rows have finished).
    #[serde(skip)]
    pub decoder_rows: Option<Vec<bool>>,
    /// Rows for the next encoder pass instead of its attention mask (choice scoring
    /// encodes an input again when its choices span two batches: counted once).
    #[serde(skip)]
    pub next_encoder_rows: Option<Vec<bool>>,
    /// Token ids of the current encoder-side and decoder inputs' rows (set with the
    /// rows above), so marked tokens can be counted apart.
    #[serde(skip)]
    pub encoder_ids: Option<Vec<u32>>,
    #[serde(skip)]
    pub decoder_ids: Option<Vec<u32>>,
    /// Token ids counted apart as well (an eval marks the tokens only one task uses).
    #[serde(skip)]
    pub marked: Option<std::collections::HashSet<u32>>,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

impl RoutingLog {
    fn record(&mut self, module: &str, names: &[String], routing: &Routing) {
        let (rows, ids) = if is_encoder_side(module) {
            (&self.encoder_rows, &self.encoder_ids)
        } else {
            (&self.decoder_rows, &self.decoder_ids)
        };
        let n_tok = routing.experts.len() / routing.k.max(1);
        // A mask of the wrong length (a caller that did not say) counts every row.
        let real = |t: usize| match rows {
            Some(r) if r.len() == n_tok => r[t],
            _ => true,
        };
        let marked = |t: usize| match (&self.marked, ids) {
            (Some(m), Some(ids)) if ids.len() == n_tok => m.contains(&ids[t]),
            _ => false,
        };
        let marking = self.marked.is_some();
        let entry = self
            .modules
            .entry(module.to_owned())
            .or_insert_with(|| ModuleRouting {
                expert_names: names.to_vec(),
                counts: vec![0; names.len()],
                weight_sums: vec![0.0; names.len()],
                ..Default::default()
            });
        if marking && entry.marked_counts.is_empty() {
            entry.marked_counts = vec![0; names.len()];
            entry.marked_weight_sums = vec![0.0; names.len()];
        }
        let k = routing.k.max(1);
        for (slot, (&z, &w)) in routing.experts.iter().zip(&routing.weights).enumerate() {
            if real(slot / k) {
                entry.counts[z as usize] += 1;
                entry.weight_sums[z as usize] += w;
                if marking && marked(slot / k) {
                    entry.marked_counts[z as usize] += 1;
                    entry.marked_weight_sums[z as usize] += w;
                }
            }
        }
        entry.tokens += (0..n_tok).filter(|&t| real(t)).count() as u64;
        entry.marked_tokens += (0..n_tok).filter(|&t| real(t) && marked(t)).count() as u64;
        if self.keep_choices {
            entry.choices.push(routing.clone());
        }
    }
}

/// Per-module mean input activations (the "average activation" router's
/// embeddings): `sum` is the sum over examples of each example's masked mean
/// input, `examples` how many examples were added. Divide to get the mean.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ActivationLog {
    pub examples: u64,
    pub sums: BTreeMap<String, Vec<f64>>,
}

impl ActivationLog {
    /// `sums[module] / examples` as `[d_in]` vectors.
    pub fn means(&self) -> BTreeMap<String, Vec<f64>> {
        let n = self.examples.max(1) as f64;
        self.sums
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|x| x / n).collect()))
            .collect()
    }
}

/// Row weights that turn a weighted row sum into a sum of per-example masked
/// means: `mask[b, t] / sum_t mask[b, t]`, flattened. Encoder-side inputs
/// (encoder modules and cross-attention k/v) use the encoder mask, the other
/// decoder modules the target mask.
#[derive(Debug, Clone)]
pub struct ActivationTap {
    pub encoder_rows: Tensor,
    pub decoder_rows: Tensor,
    pub log: std::sync::Arc<Mutex<ActivationLog>>,
}

/// What a linear needs besides its input at forward time.
#[derive(Clone, Copy)]
pub struct AdapterCtx<'a> {
    pub adapters: &'a AdapterSet,
    pub log: Option<&'a Mutex<RoutingLog>>,
    pub tap: Option<&'a ActivationTap>,
    /// Training-time dropout (attention probabilities, FFN hidden); None at eval.
    pub dropout: Option<&'a crate::model::t5::dropout::Dropout>,
}

/// Whether a module reads encoder-side rows (the encoder's modules, and the decoder's
/// cross-attention keys and values, computed from the encoder's output).
pub fn is_encoder_side(module: &str) -> bool {
    module.starts_with("encoder.")
        || module.ends_with("EncDecAttention.k")
        || module.ends_with("EncDecAttention.v")
}

/// A frozen linear layer without bias, stored as `W^T` (`[d_in, d_out]`,
/// contiguous) because that layout is about twice as fast in gemm for the
/// small row counts of T5 batches.
#[derive(Debug, Clone)]
pub struct Linear {
    pub name: String,
    wt: Tensor,
}

impl Linear {
    /// `weight` in torch layout `[d_out, d_in]`.
    pub fn from_torch_weight(name: impl Into<String>, weight: &Tensor) -> Result<Self> {
        Ok(Linear {
            name: name.into(),
            wt: weight.t()?.contiguous()?,
        })
    }

    pub fn d_in(&self) -> usize {
        self.wt.dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.wt.dims()[1]
    }

    /// `Wᵀ`, `[d_in, d_out]`, contiguous.
    pub(crate) fn wt(&self) -> &Tensor {
        &self.wt
    }

    /// The weight back in torch layout `[d_out, d_in]`.
    pub fn torch_weight(&self) -> Result<Tensor> {
        Ok(self.wt.t()?.contiguous()?)
    }

    /// `x`: `[..., d_in]` -> `[..., d_out]`. The batch dimension (first) is
    /// needed by per-example mixture weights.
    pub fn forward(&self, x: &Tensor, ctx: AdapterCtx<'_>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_in = *dims
            .last()
            .ok_or_else(|| ModelError::Input("linear input is a scalar".into()))?;
        if d_in != self.d_in() {
            return Err(ModelError::Input(format!(
                "{}: input has last dimension {d_in}, expected {}",
                self.name,
                self.d_in()
            )));
        }
        let n: usize = dims[..dims.len() - 1].iter().product();
        let u = x.reshape((n, d_in))?;
        if let Some(tap) = ctx.tap {
            self.record_activation(&u, tap)?;
        }
        let adapter = ctx.adapters.get(&self.name);
        // One trainable LoRA (expert training): one fused op on CPU f32.
        let fused = match adapter {
            Some(ModuleAdapter::Lora(l)) => crate::kernels::fused::lora_linear::lora_linear(
                &u,
                &self.wt,
                &l.a,
                &l.b,
                1.0 / l.rank() as f64,
            )?,
            _ => None,
        };
        let y = match (fused, adapter) {
            (Some(y), _) => y,
            (None, Some(adapter)) => {
                let base = crate::kernels::frozen_matmul::frozen_matmul(&u, &self.wt)?;
                (base + self.adapter_delta(&u, &dims, adapter, ctx)?)?
            }
            (None, None) => crate::kernels::frozen_matmul::frozen_matmul(&u, &self.wt)?,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty, checked above") = self.d_out();
        Ok(y.reshape(out_dims)?)
    }

    fn record_activation(&self, u: &Tensor, tap: &ActivationTap) -> Result<()> {
        let rows = if is_encoder_side(&self.name) {
            &tap.encoder_rows
        } else {
            &tap.decoder_rows
        };
        if rows.dims() != [u.dims()[0]] {
            return Err(ModelError::adapter(
                &self.name,
                format!(
                    "activation row weights have {:?} entries for {} rows",
                    rows.dims(),
                    u.dims()[0]
                ),
            ));
        }
        let w = rows.to_dtype(u.dtype())?.unsqueeze(0)?;
        let sum: Vec<f64> = w
            .matmul(&u.detach())?
            .squeeze(0)?
            .to_dtype(DType::F64)?
            .to_vec1()?;
        let mut log = tap
            .log
            .lock()
            .map_err(|_| ModelError::adapter(&self.name, "activation log lock poisoned"))?;
        let acc = log
            .sums
            .entry(self.name.clone())
            .or_insert_with(|| vec![0.0; sum.len()]);
        for (a, s) in acc.iter_mut().zip(sum) {
            *a += s;
        }
        Ok(())
    }

    fn adapter_delta(
        &self,
        u: &Tensor,
        dims: &[usize],
        adapter: &ModuleAdapter,
        ctx: AdapterCtx<'_>,
    ) -> Result<Tensor> {
        match adapter {
            ModuleAdapter::Lora(l) => l.delta(u),
            ModuleAdapter::GatedLora { lora, gate } => {
                let v = cast(gate, u.dtype())?.reshape((self.d_in(), 1))?;
                let logits = u.matmul(&v)?; // [n, 1]
                // sigmoid written with primitive ops so it has a backward pass.
                let g = (logits.neg()?.exp()? + 1.0)?.recip()?;
                Ok(lora.delta(u)?.broadcast_mul(&g)?)
            }
            ModuleAdapter::Mixture { stack, weights } => self.mixture_delta(u, dims, stack, weights),
            ModuleAdapter::Routed { stack, router } => {
                let routing = router.route(u)?;
                if let Some(log) = ctx.log {
                    let mut log = log
                        .lock()
                        .map_err(|_| ModelError::adapter(&self.name, "routing log lock poisoned"))?;
                    log.record(&self.name, &stack.names, &routing);
                }
                stack.delta_routed(u, &routing)
            }
        }
    }

    fn mixture_delta(
        &self,
        u: &Tensor,
        dims: &[usize],
        stack: &ExpertStack,
        weights: &MixWeights,
    ) -> Result<Tensor> {
        let n = u.dims()[0];
        let mut acc = Tensor::zeros((n, self.d_out()), u.dtype(), u.device())?;
        match weights {
            MixWeights::Shared(w) => {
                if w.len() != stack.len() {
                    return Err(ModelError::adapter(
                        &self.name,
                        format!("{} mixture weights for {} experts", w.len(), stack.len()),
                    ));
                }
                for (z, &wz) in w.iter().enumerate() {
                    if wz != 0.0 {
                        acc = (acc + stack.delta_one(u, z, wz)?)?;
                    }
                }
            }
            MixWeights::PerExample(rows) => {
                let batch = dims[0];
                if rows.len() != batch || rows.iter().any(|r| r.len() != stack.len()) {
                    return Err(ModelError::adapter(
                        &self.name,
                        format!("per-example mixture weights must be [{batch}, {}]", stack.len()),
                    ));
                }
                let per_example = n / batch.max(1);
                for z in 0..stack.len() {
                    let col: Vec<f64> = rows.iter().map(|r| r[z]).collect();
                    if col.iter().all(|&c| c == 0.0) {
                        continue;
                    }
                    let wz = Tensor::from_vec(col, (batch, 1, 1), u.device())?.to_dtype(u.dtype())?;
                    let d = stack
                        .delta_one(u, z, 1.0)?
                        .reshape((batch, per_example, self.d_out()))?
                        .broadcast_mul(&wz)?
                        .reshape((n, self.d_out()))?;
                    acc = (acc + d)?;
                }
            }
        }
        Ok(acc)
    }
}
