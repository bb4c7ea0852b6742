//! What travels over NATS: the operations and their subjects, each
//! operation's arguments, and the frames of an answer.
//!
//! A client sends a request to `PREFIX.OPERATION` with its arguments as
//! JSON, and a reply subject. The service answers on that subject with
//! frames, each carrying a [`EVENT`] header and a [`SEQ`] number counting
//! from 0: `item`s (progress events, output events, or chunks of bytes),
//! `alive` heartbeats while the operation runs, and one last `done` (the
//! result, as JSON) or `error` (an [`berth_server::ErrorResponse`], with
//! the stable code in [`ERROR_CODE`] and NATS's service error headers).
//! The first frame names, in [`CONTROL`], a subject where the client sends
//! [`Control`] messages: acknowledgements of the frames it has taken (the
//! service sends at most [`WINDOW`] frames ahead of them), sent at least
//! once per heartbeat interval ([`KEEPALIVE`]), and `cancel`. A service
//! that hears nothing from a client for [`LOST_AFTER`] heartbeat intervals
//! takes it for gone: a command it runs is cancelled, as when an HTTP
//! client disconnects; provisioning and the other operations finish.
//!
//! A terminal's answer is its program's output (`stdout` events, the first
//! one empty: the program started), then its `exit`. What the client types
//! goes the other way, as requests on the control subject ([`Control`]'s
//! `input`, `resize`, `signal` and `eof`), each answered once applied
//! (empty) or refused (an [`berth_server::ErrorResponse`]); a client sends
//! at most [`INPUT_WINDOW`] before their answers, and a service takes no
//! more, so input is bounded as output is.

use berth_core::Output;
use berth_core::proto::{SessionParams, TerminalParams};
use berth_core::{ExecRequest, Labels};
use berth_provider::SessionCommand;
use serde::{Deserialize, Serialize};

/// The subject prefix the service's endpoints live under by default.
pub use berth_nats::DEFAULT_PREFIX;

/// The service's name in `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS`.
pub const SERVICE_NAME: &str = "berth";

/// The frame's kind: `item`, `alive`, `done` or `error`.
pub const EVENT: &str = "Berth-Event";
/// The frame's number in its answer, from 0.
pub const SEQ: &str = "Berth-Seq";
/// On the first frame: the subject for the client's [`Control`] messages.
pub const CONTROL: &str = "Berth-Control";
/// On the first frame: the heartbeat interval, in milliseconds.
pub const KEEPALIVE: &str = "Berth-Keepalive-Ms";
/// On an `error` frame: the stable error code.
pub const ERROR_CODE: &str = "Berth-Error-Code";
/// On a `files.write` request: its [`PathArgs`] as JSON (the payload is
/// the file's bytes).
pub const ARGS: &str = "Berth-Args";

/// Frames the service sends ahead of the client's acknowledgements.
pub const WINDOW: u64 = 64;
/// Heartbeat intervals without a word from the client after which it is
/// taken for gone (and, on the client, without a frame from the service).
pub const LOST_AFTER: u32 = 5;

/// A terminal's inputs a service holds before their answers; a client
/// sending more has the rest refused.
pub const INPUT_WINDOW: usize = 8;

/// A message from the client about an answer it is receiving.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// The client has taken this many frames, and is still there.
    Ack { received: u64 },
    /// The client wants no more: a command is cancelled.
    Cancel,
    /// Bytes typed into a terminal.
    Input { data: Output },
    /// The client's window changed size.
    Resize { rows: u16, cols: u16 },
    /// A signal (such as 2, SIGINT) for the terminal's program.
    Signal { signal: i32 },
    /// The end of the terminal's input, as Ctrl-D.
    Eof,
}

/// The operations, one NATS service endpoint each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    List,
    Show,
    Start,
    Stop,
    Remove,
    Fetch,
    Runtimes,
    Exec,
    FilesList,
    FilesRead,
    FilesWrite,
    FilesRemove,
    Snapshot,
    Fork,
    Reset,
    Changes,
    Diff,
    Gc,
    GcCache,
    Info,
    SnapshotRemove,
    Export,
    SessionOpen,
    SessionClose,
    SessionExec,
    SessionInterrupt,
    Terminal,
    Nodes,
    JobStart,
    JobList,
    JobRerun,
    JobRuns,
    JobSchedule,
    RunShow,
    RunEvents,
    RunCancel,
    RunRetry,
    RunPublish,
    RunPatch,
    TaskShow,
    TaskLog,
    TaskPatch,
}

impl Op {
    pub const ALL: [Op; 43] = [
        Op::Create,
        Op::List,
        Op::Show,
        Op::Start,
        Op::Stop,
        Op::Remove,
        Op::Fetch,
        Op::Runtimes,
        Op::Exec,
        Op::FilesList,
        Op::FilesRead,
        Op::FilesWrite,
        Op::FilesRemove,
        Op::Snapshot,
        Op::Fork,
        Op::Reset,
        Op::Changes,
        Op::Diff,
        Op::Gc,
        Op::GcCache,
        Op::Info,
        Op::SnapshotRemove,
        Op::Export,
        Op::SessionOpen,
        Op::SessionClose,
        Op::SessionExec,
        Op::SessionInterrupt,
        Op::Terminal,
        Op::Nodes,
        Op::JobStart,
        Op::JobList,
        Op::JobRerun,
        Op::JobRuns,
        Op::JobSchedule,
        Op::RunShow,
        Op::RunEvents,
        Op::RunCancel,
        Op::RunRetry,
        Op::RunPublish,
        Op::RunPatch,
        Op::TaskShow,
        Op::TaskLog,
        Op::TaskPatch,
    ];

    /// The endpoint's subject below the prefix.
    pub fn subject(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::List => "list",
            Op::Show => "show",
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Remove => "remove",
            Op::Fetch => "fetch",
            Op::Runtimes => "runtimes",
            Op::Exec => "exec",
            Op::FilesList => "files.list",
            Op::FilesRead => "files.read",
            Op::FilesWrite => "files.write",
            Op::FilesRemove => "files.remove",
            Op::Snapshot => "snapshot",
            Op::Fork => "fork",
            Op::Reset => "reset",
            Op::Changes => "changes",
            Op::Diff => "diff",
            Op::Gc => "gc",
            Op::GcCache => "gc.cache",
            Op::Info => "info",
            Op::SnapshotRemove => "snapshot.remove",
            Op::Export => "export",
            Op::SessionOpen => "session.open",
            Op::SessionClose => "session.close",
            Op::SessionExec => "session.exec",
            Op::SessionInterrupt => "session.interrupt",
            Op::Terminal => "terminal",
            Op::Nodes => "nodes",
            Op::JobStart => "job.start",
            Op::JobList => "job.list",
            Op::JobRerun => "job.rerun",
            Op::JobRuns => "job.runs",
            Op::JobSchedule => "job.schedule",
            Op::RunShow => "run.show",
            Op::RunEvents => "run.events",
            Op::RunCancel => "run.cancel",
            Op::RunRetry => "run.retry",
            Op::RunPublish => "run.publish",
            Op::RunPatch => "run.patch",
            Op::TaskShow => "task.show",
            Op::TaskLog => "task.log",
            Op::TaskPatch => "task.patch",
        }
    }

    /// Who answers the operation: a workspace's provider, the cluster's
    /// directory of nodes, or the jobs service.
    pub fn scope(self) -> Scope {
        match self {
            Op::Nodes => Scope::Nodes,
            Op::JobStart
            | Op::JobList
            | Op::JobRerun
            | Op::JobRuns
            | Op::JobSchedule
            | Op::RunShow
            | Op::RunEvents
            | Op::RunCancel
            | Op::RunRetry
            | Op::RunPublish
            | Op::RunPatch
            | Op::TaskShow
            | Op::TaskLog
            | Op::TaskPatch => Scope::Jobs,
            _ => Scope::Provider,
        }
    }

    /// The endpoint's name in `$SRV.INFO` (a subject without dots).
    pub fn name(self) -> String {
        self.subject().replace('.', "_")
    }
}

/// Who answers an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Provider,
    Nodes,
    Jobs,
}

/// The workspace an operation is about: an id, a unique id prefix, or a
/// name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Include removed workspaces.
    #[serde(default)]
    pub all: bool,
    /// Only workspaces carrying every one of these labels.
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecArgs {
    pub id: String,
    pub request: ExecRequest,
}

/// A file or directory of a workspace (the root when `path` is empty).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    pub id: String,
    #[serde(default)]
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkArgs {
    pub id: String,
    #[serde(default = "one")]
    pub count: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetArgs {
    pub id: String,
    /// A snapshot to reset to instead of the workspace's base.
    #[serde(default)]
    pub to: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfoArgs {
    pub id: String,
    /// Probe the interpreters again.
    #[serde(default)]
    pub detect: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotArgs {
    pub snapshot: String,
}

/// Opening a persistent shell session in a workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionOpenArgs {
    pub id: String,
    #[serde(default)]
    pub params: SessionParams,
}

/// A session of a workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    pub id: String,
    pub session: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionExecArgs {
    pub id: String,
    pub session: String,
    pub command: SessionCommand,
}

/// A terminal (a PTY) in a running workspace, running `params.command`
/// (a shell by default).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalArgs {
    pub id: String,
    #[serde(default)]
    pub params: TerminalParams,
}

/// A registered job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobArgs {
    pub job: String,
}

/// A job's new schedule, or none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleArgs {
    pub job: String,
    /// A cron expression (UTC); the schedule is removed when absent.
    #[serde(default)]
    pub cron: Option<String>,
}

/// A run: an id or a unique prefix of one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    pub run: String,
}

/// A run, or one task of it (an id or a unique prefix, its repository's
/// URL, or the URL's last path segment without `.git`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunTaskArgs {
    pub run: String,
    #[serde(default)]
    pub task: Option<String>,
}

/// One task of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskArgs {
    pub run: String,
    pub task: String,
}

/// A task's log: a page of entries (at most
/// [`berth_jobs::api::LOG_PAGE_MAX`]) after `after` or, `follow`ing, every
/// entry after it as it is written, then its end.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogArgs {
    pub run: String,
    pub task: String,
    #[serde(default)]
    pub after: u64,
    #[serde(default)]
    pub follow: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishArgs {
    pub run: String,
    pub branch: String,
    #[serde(default)]
    pub message: Option<String>,
}
