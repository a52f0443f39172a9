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

/// An error with its causes, each not already in the message before it: the
/// client's own message stops at "error sending request for url (...)", and the
/// cause that tells a proxy from a DNS failure from a refused connection is below it.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("error sending request for url (https://huggingface.co/x)")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn an_error_is_said_with_its_causes() {
        let e = Outer(Middle(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused",
        )));
        assert_eq!(
            with_causes(&e),
            "error sending request for url (https://huggingface.co/x): client error (Connect): Connection refused"
        );
    }
}
