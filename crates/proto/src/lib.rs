//! Wire types shared by the berth provider and the in-workspace agent.
//!
//! This crate is deliberately tiny (serde and base64 only) so that the static
//! agent stays small. The service layer re-exports these types, so a command's
//! request, its streamed events and its exit status have one definition from
//! the HTTP API down to the agent.
//!
//! The agent protocol is in two parts: [`frame`] says how bytes on the unix
//! socket become frames (a length-prefixed JSON header plus a raw payload,
//! so bulk data is never base64-encoded), and [`message`] says what the
//! frames mean (a version handshake, then many operations multiplexed by
//! id over one connection).

pub mod exec;
pub mod files;
pub mod frame;
pub mod info;
pub mod message;
pub mod path;

pub use exec::{Command, ExecEvent, ExecRequest, ExitStatus, Output, Stream};
pub use files::{FileEntry, FileKind, WatchEvent, WatchKind, exact_path, raw_path};
pub use frame::{Frame, FrameDecoder, FrameError};
pub use info::{AgentInfo, Interpreter, InterpreterSource, Resources};
pub use message::{
    AgentMessage, ClientMessage, ErrorBody, ErrorCode, READ_CHUNK, READ_WINDOW, SessionParams,
    TerminalParams,
};
pub use path::{PathError, WorkspacePath};

/// The agent protocol version; the hello of both sides carries it and the
/// agent refuses a client speaking another.
pub const PROTOCOL_VERSION: u32 = 2;
