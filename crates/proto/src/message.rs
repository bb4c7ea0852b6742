//! The agent protocol's messages: what a client asks and what the agent
//! answers, multiplexed over one connection by operation id.
//!
//! # Conversation
//!
//! - The client sends [`ClientMessage::Hello`] with id 0 and its
//!   [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) first; the agent answers
//!   [`AgentMessage::Hello`] (or an `Error` with code `version`) and then
//!   serves any number of operations at once.
//! - An operation starts with a client frame under a fresh id (the client
//!   picks ids, never reusing one on a connection). Every frame about it,
//!   in both directions, carries that id: stdin, signals, resizes and
//!   cancellation go to it; output, events and the final answer come back
//!   under it.
//! - Each operation ends with exactly one final agent message: `Exit`,
//!   `Done`, `Data` with `last`, `Entries`, `Entry`, `Info` or `Error`.
//!   After that the id is free on the agent's side.
//! - [`ClientMessage::Cancel`] ends any running operation: an exec or a
//!   session command has its process group ended (SIGTERM, a grace period,
//!   SIGKILL) and still answers `Exit` with `cancelled`; a session or a
//!   terminal is closed; a watch answers `Done`. A client that disconnects
//!   cancels everything it started.
//! - A file is read in `data` frames of at most [`READ_CHUNK`] bytes, at
//!   most [`READ_WINDOW`] of them sent and not yet acknowledged: the
//!   client sends `ack` for each one it has taken, so a slow reader holds
//!   the agent back instead of piling the file up in memory.
//!
//! # Operations
//!
//! | first client message | agent frames under its id | client frames afterwards |
//! |---|---|---|
//! | `exec` | `started`, `output`*, `exit` | `stdin`, `close_stdin`, `signal`, `cancel` |
//! | `open_session` | `started`, then `exit` when the shell ends | `cancel` (closes it) |
//! | `run_in_session` | `ready` (queued), `output`*, `exit` | `signal`, `cancel` (interrupts) |
//! | `open_terminal` | `started`, `output`*, `exit` | `stdin`, `resize`, `signal`, `cancel` |
//! | `read_file` | `data`* (payload; the last has `last: true`) | `ack` per `data` taken, `cancel` |
//! | `write_file` (payload) | `done` | |
//! | `list_dir`, `stat` | `entries` / `entry` | |
//! | `remove`, `mkdir`, `rename` | `done` | |
//! | `watch` | `ready`, `changed`* until cancelled, then `done` | `cancel` |
//! | `info` | `info` | |

use crate::Command;
use crate::exec::{ExecRequest, ExitStatus, Stream};
use crate::files::{FileEntry, WatchEvent};
use crate::info::AgentInfo;
use crate::path::WorkspacePath;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The most file bytes in one `data` frame of a read.
pub const READ_CHUNK: usize = 1 << 20;

/// The most `data` frames of a read sent and not yet acknowledged.
pub const READ_WINDOW: u32 = 4;

/// A message from the client (the provider) to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// The first frame of a connection, with id 0.
    Hello {
        version: u32,
        /// Who is connecting, for the agent's log.
        #[serde(default)]
        client: String,
    },
    /// Runs a command. With `stream_stdin`, the command's stdin stays open
    /// for `stdin` frames until `close_stdin`; otherwise it is
    /// `request.stdin` (if any) and then closed.
    Exec {
        request: ExecRequest,
        #[serde(default)]
        stream_stdin: bool,
    },
    /// Bytes (the payload) for the operation's stdin or terminal input.
    Stdin,
    /// Closes the operation's stdin.
    CloseStdin,
    /// Sends a signal to the operation's process group (for a session
    /// command: the command, not the shell).
    Signal {
        signal: i32,
    },
    /// Ends the operation (see the module docs).
    Cancel,
    /// Starts a persistent shell; commands then run in it one at a time.
    OpenSession(SessionParams),
    /// Runs one command in the session opened under id `session`.
    RunInSession {
        session: u64,
        command: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        /// Bytes kept per stream; anything beyond is counted and dropped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_limit: Option<u64>,
    },
    /// Starts a command on a new pseudo-terminal.
    OpenTerminal(TerminalParams),
    /// Changes the terminal's size.
    Resize {
        rows: u16,
        cols: u16,
    },
    ReadFile {
        path: WorkspacePath,
    },
    /// The client has taken one `data` frame of a read: the agent may
    /// send one more.
    Ack,
    /// Writes the payload to a file, creating its parent directories; with
    /// `append`, adds it to the end (how a client sends a file larger than
    /// one frame).
    WriteFile {
        path: WorkspacePath,
        #[serde(default)]
        append: bool,
        /// Permission bits for a new file; 0644 when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    ListDir {
        path: WorkspacePath,
    },
    Stat {
        path: WorkspacePath,
    },
    /// Removes a file or a directory with everything in it.
    Remove {
        path: WorkspacePath,
    },
    /// Creates a directory and any missing parents.
    Mkdir {
        path: WorkspacePath,
    },
    Rename {
        from: WorkspacePath,
        to: WorkspacePath,
    },
    /// Streams changes under a directory until cancelled.
    Watch {
        path: WorkspacePath,
        #[serde(default)]
        recursive: bool,
    },
    /// The agent's version, interpreters and resource use; with `detect`,
    /// interpreters are probed again first.
    Info {
        #[serde(default)]
        detect: bool,
    },
}

/// How to start a session's shell.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SessionParams {
    /// The shell to run; `bash` when the image has it, else `sh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Starting directory relative to the workspace root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// How to start a terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TerminalParams {
    /// What to run; an interactive shell (`bash` or `sh`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    pub rows: u16,
    pub cols: u16,
}

impl Default for TerminalParams {
    fn default() -> Self {
        TerminalParams {
            command: None,
            cwd: None,
            env: BTreeMap::new(),
            rows: 24,
            cols: 80,
        }
    }
}

/// A message from the agent to the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// The answer to the client's hello.
    Hello {
        version: u32,
        /// The agent's own version.
        agent: String,
    },
    /// The operation's process started.
    Started { pid: u32 },
    /// Output (the payload) of a command, session command or terminal.
    Output { stream: Stream },
    /// How a command, session command, session or terminal ended. Final.
    Exit(ExitStatus),
    /// A chunk of a file (the payload); final when `last`.
    Data {
        #[serde(default)]
        last: bool,
    },
    /// A directory listing. Final.
    Entries { entries: Vec<FileEntry> },
    /// What a stat found. Final.
    Entry { entry: FileEntry },
    /// The operation is set up: a watch is armed (changes from now on are
    /// reported), a session command is queued.
    Ready,
    /// A change seen by a watch.
    Changed { event: WatchEvent },
    /// The agent's info. Final.
    Info { info: AgentInfo },
    /// The operation succeeded. Final.
    Done,
    /// The operation failed. Final.
    Error(ErrorBody),
}

impl AgentMessage {
    /// Whether this message ends its operation.
    pub fn is_final(&self) -> bool {
        match self {
            AgentMessage::Hello { .. }
            | AgentMessage::Started { .. }
            | AgentMessage::Output { .. }
            | AgentMessage::Ready
            | AgentMessage::Changed { .. } => false,
            AgentMessage::Data { last } => *last,
            AgentMessage::Exit(_)
            | AgentMessage::Entries { .. }
            | AgentMessage::Entry { .. }
            | AgentMessage::Info { .. }
            | AgentMessage::Done
            | AgentMessage::Error(_) => true,
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        AgentMessage::Error(ErrorBody {
            code,
            message: message.into(),
            path: None,
        })
    }

    /// An error about a workspace path, which the client can show alone.
    pub fn path_error(code: ErrorCode, path: &WorkspacePath, message: impl Into<String>) -> Self {
        AgentMessage::Error(ErrorBody {
            code,
            message: message.into(),
            path: Some(path.to_string()),
        })
    }
}

/// A failed operation: a stable code and a message naming what failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The workspace path the error is about, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Stable, machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or made no sense in its context.
    BadRequest,
    /// The client's protocol version is not served.
    Version,
    /// The frame names an operation or session that does not exist.
    UnknownOperation,
    /// The id is already used by a running operation.
    DuplicateId,
    NotFound,
    /// The path leads outside the workspace.
    Escapes,
    /// The path is of the wrong kind (a file where a directory is needed…).
    WrongKind,
    AlreadyExists,
    PermissionDenied,
    /// The command could not be started.
    Spawn,
    /// Not available on this system.
    Unsupported,
    /// Any other I/O failure.
    Io,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_snake_case() {
        let msg = ClientMessage::RunInSession {
            session: 3,
            command: "cd src".into(),
            timeout_ms: None,
            output_limit: None,
        };
        assert_eq!(
            serde_json::to_string(&msg).unwrap(),
            r#"{"type":"run_in_session","session":3,"command":"cd src"}"#
        );
        let exit: AgentMessage =
            serde_json::from_str(r#"{"type":"exit","code":0,"signal":null}"#).unwrap();
        assert!(exit.is_final());
        assert_eq!(
            serde_json::to_string(&AgentMessage::error(ErrorCode::NotFound, "no `a`")).unwrap(),
            r#"{"type":"error","code":"not_found","message":"no `a`"}"#
        );
    }

    #[test]
    fn paths_in_messages_are_checked_on_arrival() {
        let escape = serde_json::from_str::<ClientMessage>(r#"{"type":"stat","path":"../x"}"#);
        assert!(escape.unwrap_err().to_string().contains("`..`"));
    }
}
