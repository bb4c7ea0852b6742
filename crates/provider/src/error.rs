//! The service layer's errors, each with a stable machine-readable code that
//! every front end (CLI exit codes, HTTP statuses, NATS errors) maps from.

use berth_core::events::ProvisionStep;
use berth_core::{PathError, Refusal, RuntimeError, SpecError, WorkspaceState};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    #[error("invalid request: field `{field}`: {message}")]
    InvalidRequest { field: String, message: String },
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    #[error(
        "no runtime chosen: set `runtime` in the spec, pass --runtime, or set BERTH_RUNTIME; \
         available here: {available}"
    )]
    NoRuntime { available: String },
    #[error("unknown runtime `{name}`; available here: {available}")]
    UnknownRuntime { name: String, available: String },
    #[error("runtime `{name}` is unavailable here: {reason}")]
    RuntimeUnavailable { name: String, reason: String },
    #[error("no workspace `{0}`")]
    NotFound(String),
    /// An id that can name nothing of its kind, whatever exists.
    #[error("`{id}` is not a {kind} id: expected {expected}")]
    InvalidId {
        kind: &'static str,
        id: String,
        expected: &'static str,
    },
    #[error("no snapshot `{0}`")]
    SnapshotNotFound(String),
    #[error("no session `{session}` in workspace {workspace}")]
    SessionNotFound { workspace: String, session: String },
    #[error(
        "workspace {workspace}: session `{session}` has ended{}",
        cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
    )]
    SessionEnded {
        workspace: String,
        session: String,
        cause: Option<String>,
    },
    #[error("{0}")]
    Ambiguous(String),
    #[error("a workspace named `{0}` already exists")]
    NameTaken(String),
    #[error("workspace {id} is {state}: {hint}")]
    WrongState {
        id: String,
        state: WorkspaceState,
        hint: &'static str,
    },
    #[error("workspace {id}: no such file or directory: `{path}`")]
    FileNotFound { id: String, path: String },
    #[error("workspace {id}: path `{path}` leads outside the workspace")]
    PathEscapes { id: String, path: String },
    /// What a workspace's runtime (or agent) answered about it.
    #[error("workspace {id}: {source}")]
    Runtime {
        id: String,
        #[source]
        source: RuntimeError,
    },
    /// What a runtime answered about a snapshot.
    #[error("snapshot `{id}`: {source}")]
    Snapshot {
        id: String,
        #[source]
        source: RuntimeError,
    },
    /// A runtime's failure in work of its own, not about one workspace.
    #[error("runtime `{name}`: {source}")]
    RuntimeFailed {
        name: String,
        #[source]
        source: RuntimeError,
    },
    #[error("workspace {id}: {source}")]
    Git {
        id: String,
        #[source]
        source: berth_git::GitError,
    },
    /// The git credentials file of the home cannot be used.
    #[error(transparent)]
    Credentials(berth_git::GitError),
    /// Clearing what interrupted git processes left in the mirrors failed.
    #[error("git mirrors: {0}")]
    Mirrors(#[source] berth_git::GitError),
    #[error("provisioning workspace {id} failed while {step}: {message}")]
    ProvisionFailed {
        id: String,
        step: &'static str,
        message: String,
    },
    #[error("registry: {0}")]
    Store(#[source] berth_store::StoreError),
    /// The host's own scratch space (the home's `tmp`) failed.
    #[error("workspace {id}: cannot {what} in {}: {source}", dir.display())]
    Scratch {
        id: String,
        what: &'static str,
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ServiceError {
    /// A stable code naming the kind of error, for machines.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::InvalidSpec(_) => "invalid_spec",
            ServiceError::InvalidRequest { .. } => "invalid_request",
            ServiceError::InvalidPath(_) | ServiceError::PathEscapes { .. } => "invalid_path",
            ServiceError::NoRuntime { .. } => "no_runtime",
            ServiceError::UnknownRuntime { .. } => "unknown_runtime",
            ServiceError::RuntimeUnavailable { .. } => "runtime_unavailable",
            ServiceError::NotFound(_)
            | ServiceError::SnapshotNotFound(_)
            | ServiceError::SessionNotFound { .. }
            | ServiceError::SessionEnded { .. } => "not_found",
            ServiceError::FileNotFound { .. } => "file_not_found",
            ServiceError::Ambiguous(_) => "ambiguous_id",
            ServiceError::NameTaken(_) => "name_taken",
            ServiceError::WrongState { .. } => "wrong_state",
            ServiceError::InvalidId { .. } => "invalid_id",
            ServiceError::Runtime { source, .. }
            | ServiceError::Snapshot { source, .. }
            | ServiceError::RuntimeFailed { source, .. } => match source {
                RuntimeError::Gone { .. } => "workspace_gone",
                RuntimeError::Unavailable { .. } => "runtime_unavailable",
                RuntimeError::Spawn { .. } => "command_not_started",
                RuntimeError::Unsupported { .. } => "unsupported",
                RuntimeError::WrongKind { .. } => "invalid_request",
                RuntimeError::AgentTimeout { .. } => "agent_timeout",
                RuntimeError::SnapshotNotFound(_) => "not_found",
                RuntimeError::Refused { reason, .. } => match reason {
                    Refusal::NotFound => "file_not_found",
                    Refusal::Escapes => "invalid_path",
                    Refusal::WrongKind | Refusal::BadRequest => "invalid_request",
                    Refusal::NotStarted => "command_not_started",
                    Refusal::AlreadyExists => "already_exists",
                    Refusal::PermissionDenied => "permission_denied",
                    Refusal::Unsupported => "unsupported",
                },
                _ => "runtime_error",
            },
            ServiceError::Git { source, .. }
            | ServiceError::Credentials(source)
            | ServiceError::Mirrors(source) => git_code(source),
            ServiceError::ProvisionFailed { .. } => "provision_failed",
            ServiceError::Store(_) => "registry_error",
            ServiceError::Scratch { .. } => "internal",
        }
    }

    /// Attributes a runtime error (an agent's refusal included, through
    /// `From<ClientError>`) to a workspace, lifting the errors that are the
    /// caller's (paths) out of the runtime's. `id` names the workspace and,
    /// where it helps, the part of it involved (a session).
    pub fn runtime(id: impl std::fmt::Display, source: RuntimeError) -> Self {
        let id = id.to_string();
        match source {
            RuntimeError::SnapshotNotFound(snapshot) => ServiceError::SnapshotNotFound(snapshot),
            RuntimeError::Path(e) => ServiceError::InvalidPath(e),
            RuntimeError::NotFound(path) => ServiceError::FileNotFound { id, path },
            RuntimeError::Escapes(path) => ServiceError::PathEscapes { id, path },
            source => ServiceError::Runtime { id, source },
        }
    }
}

impl From<berth_store::StoreError> for ServiceError {
    fn from(err: berth_store::StoreError) -> Self {
        match err {
            berth_store::StoreError::NotFound(what) => ServiceError::NotFound(what),
            berth_store::StoreError::Ambiguous { .. } => ServiceError::Ambiguous(err.to_string()),
            berth_store::StoreError::AlreadyExists(name) => ServiceError::NameTaken(name),
            other => ServiceError::Store(other),
        }
    }
}

fn git_code(err: &berth_git::GitError) -> &'static str {
    use berth_git::GitError;
    match err {
        GitError::CredentialsFile { .. }
        | GitError::CredentialsFileMode { .. }
        | GitError::CredentialsFileSyntax { .. }
        | GitError::InvalidCredential { .. } => "credentials_invalid",
        GitError::UnknownCredential { .. }
        | GitError::CredentialNeedsHttp { .. }
        | GitError::CredentialNotForUrl { .. } => "credential_unusable",
        GitError::UrlHasCredentials { .. } | GitError::InvalidUrl { .. } => "invalid_repository",
        GitError::InvalidRef { .. } | GitError::MissingRef { .. } => "invalid_ref",
        GitError::Authentication { .. } => "git_authentication_failed",
        GitError::CannotFastForward { .. } => "cannot_fast_forward",
        _ => "git_failed",
    }
}

/// Names a provisioning step as it reads after "failed while".
pub(crate) fn step_name(step: ProvisionStep) -> &'static str {
    match step {
        ProvisionStep::Create => "creating the workspace",
        ProvisionStep::Clone => "cloning",
        ProvisionStep::Fetch => "fetching",
        ProvisionStep::Setup => "running the setup script",
        ProvisionStep::Cache => "caching the provisioned state",
        ProvisionStep::Start => "starting",
    }
}
