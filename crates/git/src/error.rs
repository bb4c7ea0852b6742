//! What can go wrong cloning and fetching, each error naming the repository,
//! path, credential or ref at fault. Text that came from git has been
//! redacted before it gets here.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot read credentials file {path}: {source}")]
    CredentialsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "credentials file {path} has mode {mode:04o}, which lets other users read it; \
         make it 0600 (chmod 600 {path})"
    )]
    CredentialsFileMode { path: PathBuf, mode: u32 },

    #[error("invalid credentials file {path}: {message}")]
    CredentialsFileSyntax { path: PathBuf, message: String },

    #[error("invalid credential `{name}` from {origin}: {reason}")]
    InvalidCredential {
        name: String,
        origin: String,
        reason: String,
    },

    #[error(
        "repository {url} names credential `{name}`, which the provider does not have \
         (known: {known})"
    )]
    UnknownCredential {
        name: String,
        url: String,
        known: String,
    },

    #[error(
        "repository {url} names credential `{name}`, but credentials are only sent over \
         http or https"
    )]
    CredentialNeedsHttp { name: String, url: String },

    /// A repository names a credential for a URL outside the credential's
    /// `urls`, or for a URL that cannot be read unambiguously.
    #[error("credential `{name}` may not be sent to {url}: {reason}")]
    CredentialNotForUrl {
        name: String,
        url: String,
        reason: String,
    },

    #[error("invalid URL prefix `{prefix}`: {reason}")]
    InvalidUrlPrefix { prefix: String, reason: String },

    /// The URL carries a user or password; the message shows it with the
    /// user information replaced by `***`.
    #[error(
        "repository URL {url} contains credentials; remove them from the URL and name a \
         provider-held credential instead (`credential = \"NAME\"` in the spec)"
    )]
    UrlHasCredentials { url: String },

    #[error("invalid repository URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("invalid ref `{reference}` for repository {url}: {reason}")]
    InvalidRef {
        reference: String,
        url: String,
        reason: String,
    },

    #[error("cannot clone {url} into {path}: {reason}")]
    Destination {
        url: String,
        path: PathBuf,
        reason: String,
    },

    #[error("ref `{reference}` not found in repository {url}: no such branch, tag or commit")]
    MissingRef { reference: String, url: String },

    #[error(
        "authentication to {url} failed{}: {stderr}",
        match credential {
            Some(name) => format!(" with credential `{name}`"),
            None => " (the repository names no credential)".to_owned(),
        }
    )]
    Authentication {
        url: String,
        credential: Option<String>,
        stderr: String,
    },

    #[error("cannot fast-forward {path}: {reason}")]
    CannotFastForward { path: PathBuf, reason: String },

    #[error(
        "cannot fetch into `{path}`: the workspace has no `git` (or no `sh`) to take the \
         fetched commits in, and its runtime cannot copy the checkout out; use an image \
         that has git"
    )]
    NoGitInside { path: String },

    /// A git command run inside a workspace failed or answered nonsense.
    #[error("git inside the workspace, in `{path}`: {what}")]
    Inside { path: String, what: String },

    #[error("refusing to fetch into the copy of {path}: {reason}")]
    UnsafeCheckout { path: PathBuf, reason: String },

    #[error("{path} is not a git checkout")]
    NotACheckout { path: PathBuf },

    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A mirror answered what a read of it cannot use.
    #[error("reading the mirror of {url}: {what}")]
    MirrorRead { url: String, what: String },

    /// A git command failed for a reason not covered above.
    #[error(
        "`git {command}`{} failed ({status}): {stderr}",
        dir.as_ref().map(|d| format!(" in {}", d.display())).unwrap_or_default()
    )]
    Command {
        command: String,
        /// Where it ran, when that was a repository.
        dir: Option<PathBuf>,
        status: String,
        stderr: String,
    },
}
