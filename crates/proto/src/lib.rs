//! Wire types shared by the berth provider and the in-workspace agent.
//!
//! This crate is deliberately tiny (serde and base64 only) so that the static
//! agent stays small. The service layer re-exports these types, so a command's
//! request, its streamed events and its exit status have one definition from
//! the HTTP API down to the agent.

pub mod exec;
pub mod files;
pub mod path;

pub use exec::{Command, ExecEvent, ExecRequest, ExitStatus, Output, Stream};
pub use files::{FileEntry, FileKind};
pub use path::{PathError, WorkspacePath};
