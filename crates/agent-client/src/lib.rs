//! The provider's side of the agent protocol: one connection to an agent's
//! unix socket, over which any number of commands, sessions, terminals,
//! file operations and watches run at once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), berth_agent_client::ClientError> {
//! use berth_agent_client::AgentClient;
//! use berth_proto::{ExecEvent, ExecRequest};
//! use tokio_util::sync::CancellationToken;
//!
//! let agent = AgentClient::connect("/run/berth/ws1/agent.sock".as_ref(),
//!     std::time::Duration::from_secs(5)).await?;
//! let mut events = agent.exec(ExecRequest::shell("make test"), CancellationToken::new()).await?;
//! while let Some(event) = events.recv().await {
//!     if let ExecEvent::Exit(status) = event { println!("exit {:?}", status.code) }
//! }
//! # Ok(()) }
//! ```
//!
//! Dropping what an operation returned (an event receiver, a [`Process`],
//! a [`Session`], a [`Terminal`], a [`Watch`]) cancels it in the agent.

mod conn;
mod deadline;
mod ops;
mod pool;
mod priority;

pub use conn::AgentClient;
pub use deadline::{ANSWER_ENV, Deadlines};
pub use ops::{Process, Session, Stdin, Terminal, Watch, collect};
pub use pool::AgentPool;

use berth_proto::{ErrorBody, ErrorCode, FrameError};
use std::path::PathBuf;
use std::time::Duration;

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the agent at `{path}`: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent at `{path}` refused the handshake: {message}")]
    Handshake { path: PathBuf, message: String },
    /// The agent answered the operation with an error.
    #[error("{0}")]
    Agent(ErrorBody),
    #[error("the connection to the agent was lost")]
    Closed,
    #[error("cannot send to the agent: {0}")]
    Frame(#[from] FrameError),
    #[error("unexpected answer from the agent: {0}")]
    Protocol(String),
    /// The agent did not answer in time: it is stopped, wedged or starved.
    #[error("the agent did not answer `{operation}` within {after:?}")]
    Timeout {
        operation: &'static str,
        after: Duration,
    },
}

impl ClientError {
    /// The agent's error code, when the agent refused the operation.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Agent(body) => Some(body.code),
            _ => None,
        }
    }
}

/// The one mapping from the agent's refusals to runtime errors: a refusal
/// about a path the agent names apart keeps that path; any other refusal
/// that is the caller's mistake, or what the workspace does not allow or
/// offer, keeps the agent's message, which names the path or field, under
/// the reason front ends map to their codes. The rest (I/O failures, a
/// broken exchange) are the runtime's own failures.
impl From<ClientError> for berth_core::RuntimeError {
    fn from(err: ClientError) -> Self {
        use berth_core::{Refusal, RuntimeError};
        match err {
            ClientError::Agent(ErrorBody {
                code,
                message,
                path,
            }) => {
                let reason = match (code, path) {
                    (ErrorCode::NotFound, Some(path)) => return RuntimeError::NotFound(path),
                    (ErrorCode::Escapes, Some(path)) => return RuntimeError::Escapes(path),
                    (ErrorCode::NotFound, None) => Refusal::NotFound,
                    (ErrorCode::Escapes, None) => Refusal::Escapes,
                    (ErrorCode::WrongKind, _) => Refusal::WrongKind,
                    (ErrorCode::BadRequest, _) => Refusal::BadRequest,
                    (ErrorCode::Spawn, _) => Refusal::NotStarted,
                    (ErrorCode::AlreadyExists, _) => Refusal::AlreadyExists,
                    (ErrorCode::PermissionDenied, _) => Refusal::PermissionDenied,
                    (ErrorCode::Unsupported, _) => Refusal::Unsupported,
                    _ => return RuntimeError::Other(message),
                };
                RuntimeError::Refused { reason, message }
            }
            ClientError::Timeout { operation, after } => {
                RuntimeError::AgentTimeout { operation, after }
            }
            ClientError::Connect { path, source } => RuntimeError::Unavailable {
                runtime: "agent".into(),
                reason: format!("cannot connect to `{}`: {source}", path.display()),
            },
            other => RuntimeError::Other(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{Refusal, RuntimeError};

    fn refusal(code: ErrorCode, message: &str, path: Option<&str>) -> RuntimeError {
        ClientError::Agent(ErrorBody {
            code,
            message: message.into(),
            path: path.map(String::from),
        })
        .into()
    }

    #[test]
    fn refusals_keep_their_path_or_else_their_message_and_reason() {
        let err = refusal(ErrorCode::NotFound, "cannot open `a`", Some("a"));
        assert!(
            matches!(&err, RuntimeError::NotFound(path) if path == "a"),
            "{err:?}"
        );
        let err = refusal(ErrorCode::Escapes, "path `..` leads outside", Some(".."));
        assert!(
            matches!(&err, RuntimeError::Escapes(path) if path == ".."),
            "{err:?}"
        );

        for (code, reason) in [
            (ErrorCode::NotFound, Refusal::NotFound),
            (ErrorCode::Escapes, Refusal::Escapes),
            (ErrorCode::WrongKind, Refusal::WrongKind),
            (ErrorCode::BadRequest, Refusal::BadRequest),
            (ErrorCode::Spawn, Refusal::NotStarted),
            (ErrorCode::AlreadyExists, Refusal::AlreadyExists),
            (ErrorCode::PermissionDenied, Refusal::PermissionDenied),
            (ErrorCode::Unsupported, Refusal::Unsupported),
        ] {
            let err = refusal(code, "cwd: `x` is wrong", None);
            assert!(
                matches!(&err, RuntimeError::Refused { reason: r, .. } if *r == reason),
                "{code:?}: {err:?}"
            );
            assert_eq!(err.to_string(), "cwd: `x` is wrong");
        }
        // Refusals whose path the agent names apart too keep the message,
        // which says what was refused about it.
        for (code, message, reason) in [
            (
                ErrorCode::WrongKind,
                "`d` is a directory",
                Refusal::WrongKind,
            ),
            (
                ErrorCode::AlreadyExists,
                "`d` already exists",
                Refusal::AlreadyExists,
            ),
            (
                ErrorCode::PermissionDenied,
                "cannot write `d`: Permission denied (os error 13)",
                Refusal::PermissionDenied,
            ),
        ] {
            let err = refusal(code, message, Some("d"));
            assert!(
                matches!(&err, RuntimeError::Refused { reason: r, .. } if *r == reason),
                "{code:?}: {err:?}"
            );
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn other_failures_stay_runtime_failures() {
        let err = refusal(ErrorCode::Io, "disk full", None);
        assert!(
            matches!(&err, RuntimeError::Other(m) if m == "disk full"),
            "{err:?}"
        );
        let err: RuntimeError = ClientError::Closed.into();
        assert!(matches!(err, RuntimeError::Other(_)), "{err:?}");
    }
}
