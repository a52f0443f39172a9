//! The hub's own errors: every message names the repo, file or setting.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A model repo could not be resolved or downloaded, or the client not built.
    #[error("hub: {0}")]
    Request(String),

    /// A dataset split could not be listed or downloaded.
    #[error("hub dataset {repo}@{revision}: {message}")]
    Dataset {
        repo: String,
        revision: String,
        message: String,
    },

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file of a model folder that is not what its name promises.
    #[error("{file}: {message}")]
    BadFile { file: String, message: String },
}

pub type Result<T, E = HubError> = std::result::Result<T, E>;
