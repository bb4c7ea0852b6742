//! Why a file operation was refused or failed, naming the workspace path.
//!
//! Paths in messages are the ones the caller asked about, relative to the
//! workspace root; host paths appear only for the root itself.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("no such file or directory: `{0}`")]
    NotFound(String),
    /// A `..`, an absolute symlink, a symlink leading above the root or a
    /// `/proc` magic link on the way.
    #[error("path `{0}` leads outside the workspace")]
    Escapes(String),
    #[error("`{0}` is not a directory")]
    NotADirectory(String),
    #[error("`{0}` is a directory")]
    IsADirectory(String),
    #[error("`{0}` is not a regular file")]
    NotAFile(String),
    #[error("`{0}` already exists")]
    AlreadyExists(String),
    #[error("path `{0}` has too many levels of symbolic links")]
    SymlinkLoop(String),
    #[error("the workspace root itself cannot be {0}")]
    Root(&'static str),
    #[error("`{0}` changed while it was being checked; try again")]
    Changed(String),
    #[error("cannot rename `{from}` to `{to}`: {source}")]
    Rename {
        from: String,
        to: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {op} `{path}`: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open workspace root `{path}`: {source}")]
    OpenRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
