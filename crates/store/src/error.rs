//! The registry's errors, each naming the id, name, key or file involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no workspace `{0}`")]
    NotFound(String),
    #[error("`{query}` matches several workspaces: {}", candidates.join(", "))]
    Ambiguous {
        query: String,
        /// `id (name)` of each workspace that matched.
        candidates: Vec<String>,
    },
    #[error("a workspace named `{0}` already exists; remove it or choose another name")]
    AlreadyExists(String),
    #[error("a workspace with id `{0}` already exists")]
    DuplicateId(String),
    #[error("no job `{0}`")]
    JobNotFound(String),
    #[error("no run `{0}`")]
    RunNotFound(String),
    #[error("no task `{0}`")]
    TaskNotFound(String),
    #[error("`{query}` matches several {what}: {}", candidates.join(", "))]
    AmbiguousJobRecord {
        what: &'static str,
        query: String,
        candidates: Vec<String>,
    },
    #[error(
        "task `{task}` is no longer held by this attempt (it was requeued, cancelled or \
         finished by another); its result is refused"
    )]
    AttemptLost { task: String },
    #[error("task `{task}` is {state}: {hint}")]
    TaskState {
        task: String,
        state: String,
        hint: &'static str,
    },
    #[error("run `{run}`: {ids} task ids for {repositories} repositories")]
    TaskIds {
        run: String,
        ids: usize,
        repositories: usize,
    },
    #[error("no provisioning cache entry `{0}`")]
    CacheEntryNotFound(String),
    #[error("registry `{path}`: {source}")]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create berth's home directory `{path}`: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "registry `{path}` cannot use write-ahead logging (journal mode is `{mode}`); \
         is it on a network filesystem?"
    )]
    NoWal { path: PathBuf, mode: String },
    #[error(
        "registry `{path}` has schema version {found}, which this berth does not know \
         (it knows versions up to {supported}); was it written by a newer berth?"
    )]
    UnknownVersion {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{what} `{key}` has an unreadable `{field}` in the registry: {detail}")]
    Corrupt {
        what: &'static str,
        key: String,
        field: &'static str,
        detail: String,
    },
    #[error("cannot encode the `{field}` of {what} `{key}`: {source}")]
    Encode {
        what: &'static str,
        key: String,
        field: &'static str,
        #[source]
        source: serde_json::Error,
    },
}
