//! Everything that talks to the Hugging Face hub: model snapshots
//! (`model`), dataset splits (`dataset`), the client settings (`options`),
//! the file names of a model folder's weights (`weight_files`), and the watch
//! that turns a silent hub into an error instead of a hang (`watch`). Every
//! request tries the local cache first, so cached repos work offline. Used
//! by model, data and steps; uses nothing of theirs.

mod cache_layout;
pub mod dataset;
pub mod error;
pub mod model;
pub mod options;
pub(crate) mod watch;
pub mod weight_files;

pub use error::HubError;
pub use model::{
    resolve_adapter, resolve_adapter_with, resolve_model, resolve_model_dir, resolve_model_reporting,
};
pub use options::{HubOptions, parse_repo_id};
pub use watch::DownloadReport;
