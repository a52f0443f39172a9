//! The file names inside every step kind's artifact (and a training step's
//! work folder), in one place: the step that writes a file and every reader
//! (later steps, `report`, `show`, tests) name it through these constants.
//! A leaf module: it uses nothing.

// dataset
pub const EXAMPLES: &str = "examples.jsonl";
pub const TRAIN: &str = "train.jsonl";
pub const VALIDATION: &str = "validation.jsonl";
pub const DATA_JSON: &str = "data.json";

// tokenize
pub const TOKENS: &str = "tokens.safetensors";

// model
pub const MODEL_JSON: &str = "model.json";

// expert, gate, multitask, pool
pub const EXPERT_FILE: &str = "expert.safetensors";
pub const GATES_FILE: &str = "gates.safetensors";
/// A pool's member list.
pub const POOL_JSON: &str = "pool.json";
/// What a training or average-activation step reports about itself.
pub const SUMMARY_JSON: &str = "summary.json";
/// Per-step training metrics.
pub const METRICS_JSONL: &str = "metrics.jsonl";

// training state (work folders)
/// The current checkpoint.
pub const STATE: &str = "train-state.safetensors";
/// The checkpoint before the current one, kept until the next one is in place.
pub const PREVIOUS: &str = "train-state.prev.safetensors";

// average-activation
pub const EMBEDDINGS_FILE: &str = "embeddings.safetensors";

// retrieval-index
pub const LIBRARY_FILE: &str = "library.safetensors";

// eval
/// The eval step's results table, in three forms.
pub const RESULTS_JSON: &str = "results.json";
pub const RESULTS_MD: &str = "results.md";
pub const RESULTS_CSV: &str = "results.csv";
/// method -> task -> every example's score, in the task's example order.
pub const PER_EXAMPLE_JSON: &str = "per-example.json";
/// task -> its examples as scored and each method's answer to each.
pub const PREDICTIONS_JSON: &str = "predictions.json";
/// The eval artifact's routing record: method -> task -> module -> choices.
pub const ROUTING_JSON: &str = "routing.json";
/// The eval artifact's (method, task) results, one file per part key: what later
/// evals reuse.
pub const EVAL_PARTS_DIR: &str = "parts";
/// The eval artifact's routing-quality record.
pub const QUALITY_JSON: &str = "routing-quality.json";

// study
pub const STUDY_JSON: &str = "study.json";
pub const STUDY_MD: &str = "study.md";
