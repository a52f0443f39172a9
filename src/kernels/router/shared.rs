//! What the CPU router and its x86 kernels share: the routing formula's
//! constants, the int8 screen's layout and per-token terms, and the routing
//! result. Kept apart so that the router and its kernels import it and not
//! each other.

/// LayerNorm epsilon of the standardised scoring (every routing path).
pub const LN_EPS: f64 = 1e-5;
/// The `1e-6` of the top-k renormalisation `p / (sum of kept p + 1e-6)`.
pub const RENORM_EPS: f64 = 1e-6;
/// Experts per int8 screening group: one AVX-512 register of i32 lanes.
pub const GROUP: usize = 16;

/// Int8 copy of the embeddings, packed for `vpdpbusd` as its unsigned
/// operand (`q + 128`): for each group of 16 experts and each quad of input
/// dimensions, 16 x 4 bytes (expert-major). The same bytes are the expert
/// tiles of the AMX screen (`amx`), which works on pairs of groups:
/// an odd group count gets one all-zero group more.
#[derive(Debug, Clone)]
pub(super) struct Int8Screen {
    pub(super) groups: usize,
    pub(super) packed: Vec<u8>,
    /// Whether `dots` run on AMX tiles (Intel AMX-INT8, `d` a multiple of 64).
    pub(super) amx: bool,
    /// Per (padded) expert: quantisation scale, the norm of the
    /// quantisation residual `w - scale * w_q`, and `|w|`.
    pub(super) scale: Vec<f32>,
    pub(super) err_norm: Vec<f32>,
    pub(super) w_norm: Vec<f32>,
}

/// Per-token terms of a row's quantisation: scale `s`, `|s q|`, `|x - s q|`,
/// `|x|`, and the sum of the int8 values `q`.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowTerms {
    pub scale: f32,
    pub q_norm: f32,
    pub err_norm: f32,
    pub norm: f32,
    pub sum_q: i32,
}

/// The experts chosen for each of `n` tokens: `k` (expert, weight) pairs per token.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub k: usize,
    pub experts: Vec<u32>,
    pub weights: Vec<f64>,
}
