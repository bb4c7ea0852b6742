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
mod ops;
mod pool;

pub use conn::AgentClient;
pub use ops::{Process, Session, Stdin, Terminal, Watch, collect};
pub use pool::AgentPool;

use berth_proto::{ErrorBody, ErrorCode, FrameError};
use std::path::PathBuf;

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

impl From<ClientError> for berth_core::RuntimeError {
    fn from(err: ClientError) -> Self {
        use berth_core::RuntimeError;
        match err {
            ClientError::Agent(ErrorBody {
                code,
                message,
                path,
            }) => match (code, path) {
                (ErrorCode::NotFound, Some(path)) => RuntimeError::NotFound(path),
                (ErrorCode::Escapes, Some(path)) => RuntimeError::Escapes(path),
                (ErrorCode::Spawn, _) => RuntimeError::Spawn {
                    command: message.clone(),
                    source: std::io::Error::other(message),
                },
                _ => RuntimeError::Other(message),
            },
            ClientError::Connect { path, source } => RuntimeError::Unavailable {
                runtime: "agent".into(),
                reason: format!("cannot connect to `{}`: {source}", path.display()),
            },
            other => RuntimeError::Other(other.to_string()),
        }
    }
}
