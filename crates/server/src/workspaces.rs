//! What the workspace routes call: [`Workspaces`], the operations on
//! workspaces that `/v1` and Derrick's routes translate HTTP into
//! (sessions, terminals, exports and garbage collection included). The
//! provider in this process is one; a cluster's controller gives the
//! server another, whose every call goes through the cluster's placement
//! and routing (`berth_cluster::front`), so that the HTTP handlers are
//! written once whatever serves them.
//!
//! The jobs routes are the server's own.

use crate::error::ApiError;
use berth_core::proto::{SessionParams, TerminalParams};
use berth_core::{
    Change, ExecEvent, ExecRequest, ExecStream, FileEntry, Labels, ProvisionEvent, ReadStream,
    Snapshot, Spec, Workspace, WorkspaceId,
};
use berth_provider::{
    CacheGc, CreateOptions, FetchResult, Progress, Provider, RuntimeGc, SessionCommand,
    SessionInfo, Terminal, WorkspaceDetails,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where provisioning events go, if anyone listens.
pub type ProgressSender = Option<mpsc::Sender<ProvisionEvent>>;

/// A workspace's changes as a `.tar.zst` archive, to stream.
pub struct Export {
    /// The workspace's id.
    pub workspace: String,
    /// Files, links and directories in the archive.
    pub entries: u64,
    /// Bytes of file content, uncompressed.
    pub bytes: u64,
    /// Paths deleted in the workspace, not in the archive.
    pub deleted: u64,
    pub file: tokio::fs::File,
    /// The archive's size in bytes.
    pub length: u64,
}

/// A program on a workspace's terminal, wherever it runs. Dropping it
/// ends the program.
#[async_trait::async_trait]
pub trait WorkspaceTerminal: Send {
    /// The program's next output (as `Stdout`), then its `Exit`; `None`
    /// once its events ended without one.
    async fn next(&mut self) -> Option<ExecEvent>;
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ApiError>;
    async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ApiError>;
    /// Sends a signal (such as 2, SIGINT) to the program.
    async fn signal(&mut self, signal: i32) -> Result<(), ApiError>;
    /// Ends the terminal's input, as Ctrl-D does.
    async fn close_stdin(&mut self) -> Result<(), ApiError>;
}

#[async_trait::async_trait]
impl WorkspaceTerminal for Terminal {
    async fn next(&mut self) -> Option<ExecEvent> {
        Terminal::next(self).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ApiError> {
        Ok(Terminal::write(self, bytes)?)
    }

    async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ApiError> {
        Ok(Terminal::resize(self, rows, cols)?)
    }

    async fn signal(&mut self, signal: i32) -> Result<(), ApiError> {
        Ok(Terminal::signal(self, signal)?)
    }

    async fn close_stdin(&mut self) -> Result<(), ApiError> {
        Ok(Terminal::close_stdin(self)?)
    }
}

/// The operations on workspaces behind the HTTP routes. Errors carry the
/// service layer's stable codes.
#[async_trait::async_trait]
pub trait Workspaces: Send + Sync + 'static {
    async fn create(
        &self,
        spec: Spec,
        options: CreateOptions,
        progress: ProgressSender,
    ) -> Result<Workspace, ApiError>;
    async fn list(&self, all: bool, labels: &Labels) -> Result<Vec<Workspace>, ApiError>;
    async fn describe(&self, id: &str) -> Result<WorkspaceDetails, ApiError>;
    /// The workspace `id` names (an id, a unique id prefix or a name).
    async fn get(&self, id: &str) -> Result<Workspace, ApiError>;
    async fn start(&self, id: &str) -> Result<Workspace, ApiError>;
    async fn stop(&self, id: &str) -> Result<Workspace, ApiError>;
    async fn remove(&self, id: &str) -> Result<Workspace, ApiError>;
    async fn fetch(&self, id: &str, progress: ProgressSender)
    -> Result<Vec<FetchResult>, ApiError>;
    /// Runs a command; cancelling `cancel` ends its whole process tree.
    async fn exec(
        &self,
        id: &str,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<(WorkspaceId, ExecStream), ApiError>;
    async fn list_files(&self, id: &str, dir: &str) -> Result<Vec<FileEntry>, ApiError>;
    async fn read_file(&self, id: &str, path: &str) -> Result<ReadStream, ApiError>;
    async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<(), ApiError>;
    async fn remove_file(&self, id: &str, path: &str) -> Result<(), ApiError>;
    async fn snapshot(&self, id: &str) -> Result<Snapshot, ApiError>;
    async fn fork(&self, id: &str, count: usize) -> Result<Vec<Workspace>, ApiError>;
    async fn reset(&self, id: &str, to: Option<&str>) -> Result<Workspace, ApiError>;
    async fn changes(&self, id: &str) -> Result<Vec<Change>, ApiError>;
    async fn diff(&self, id: &str) -> Result<ReadStream, ApiError>;
    async fn agent_info(
        &self,
        id: &str,
        detect: bool,
    ) -> Result<berth_core::proto::AgentInfo, ApiError>;
    async fn open_session(&self, id: &str, params: SessionParams) -> Result<SessionInfo, ApiError>;
    async fn close_session(&self, id: &str, session: &str) -> Result<(), ApiError>;
    /// Runs a command in a session; cancelling `cancel`, or dropping the
    /// events, interrupts it.
    async fn session_exec(
        &self,
        id: &str,
        session: &str,
        command: SessionCommand,
        cancel: CancellationToken,
    ) -> Result<(WorkspaceId, ExecStream), ApiError>;
    /// Interrupts a session's command; whether one was running.
    async fn interrupt_session(&self, id: &str, session: &str) -> Result<bool, ApiError>;
    async fn terminal(
        &self,
        id: &str,
        params: TerminalParams,
    ) -> Result<Box<dyn WorkspaceTerminal>, ApiError>;
    async fn export(&self, id: &str) -> Result<Export, ApiError>;
    async fn remove_snapshot(&self, snapshot: &str) -> Result<(), ApiError>;
    /// Removes what nothing uses, in every runtime that keeps layers.
    async fn gc(&self) -> Result<Vec<RuntimeGc>, ApiError>;
    async fn gc_cache(&self, budget: Option<u64>) -> Result<CacheGc, ApiError>;
}

fn progress(sender: ProgressSender) -> Progress {
    sender.map_or_else(Progress::none, Progress::to)
}

#[async_trait::async_trait]
impl Workspaces for Provider {
    async fn create(
        &self,
        spec: Spec,
        options: CreateOptions,
        sender: ProgressSender,
    ) -> Result<Workspace, ApiError> {
        Ok(Provider::create(self, spec, options, progress(sender)).await?)
    }

    async fn list(&self, all: bool, labels: &Labels) -> Result<Vec<Workspace>, ApiError> {
        Ok(self.list_labelled(all, labels).await?)
    }

    async fn describe(&self, id: &str) -> Result<WorkspaceDetails, ApiError> {
        Ok(Provider::describe(self, id).await?)
    }

    async fn get(&self, id: &str) -> Result<Workspace, ApiError> {
        Ok(Provider::get(self, id)?)
    }

    async fn start(&self, id: &str) -> Result<Workspace, ApiError> {
        Ok(Provider::start(self, id).await?)
    }

    async fn stop(&self, id: &str) -> Result<Workspace, ApiError> {
        Ok(Provider::stop(self, id).await?)
    }

    async fn remove(&self, id: &str) -> Result<Workspace, ApiError> {
        Ok(Provider::remove(self, id).await?)
    }

    async fn fetch(&self, id: &str, sender: ProgressSender) -> Result<Vec<FetchResult>, ApiError> {
        Ok(Provider::fetch(self, id, progress(sender)).await?)
    }

    async fn exec(
        &self,
        id: &str,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<(WorkspaceId, ExecStream), ApiError> {
        Ok(Provider::exec(self, id, request, cancel).await?)
    }

    async fn list_files(&self, id: &str, dir: &str) -> Result<Vec<FileEntry>, ApiError> {
        Ok(Provider::list_files(self, id, dir).await?)
    }

    async fn read_file(&self, id: &str, path: &str) -> Result<ReadStream, ApiError> {
        Ok(Provider::read_file(self, id, path).await?)
    }

    async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<(), ApiError> {
        Ok(Provider::write_file(self, id, path, data).await?)
    }

    async fn remove_file(&self, id: &str, path: &str) -> Result<(), ApiError> {
        Ok(Provider::remove_file(self, id, path).await?)
    }

    async fn snapshot(&self, id: &str) -> Result<Snapshot, ApiError> {
        Ok(Provider::snapshot(self, id).await?)
    }

    async fn fork(&self, id: &str, count: usize) -> Result<Vec<Workspace>, ApiError> {
        Ok(Provider::fork(self, id, count).await?)
    }

    async fn reset(&self, id: &str, to: Option<&str>) -> Result<Workspace, ApiError> {
        Ok(Provider::reset(self, id, to).await?)
    }

    async fn changes(&self, id: &str) -> Result<Vec<Change>, ApiError> {
        Ok(Provider::changes(self, id).await?)
    }

    async fn diff(&self, id: &str) -> Result<ReadStream, ApiError> {
        Ok(Provider::diff(self, id).await?)
    }

    async fn agent_info(
        &self,
        id: &str,
        detect: bool,
    ) -> Result<berth_core::proto::AgentInfo, ApiError> {
        Ok(Provider::agent_info(self, id, detect).await?)
    }

    async fn open_session(&self, id: &str, params: SessionParams) -> Result<SessionInfo, ApiError> {
        Ok(Provider::open_session(self, id, params).await?)
    }

    async fn close_session(&self, id: &str, session: &str) -> Result<(), ApiError> {
        Provider::close_session(self, id, session).await?;
        Ok(())
    }

    async fn session_exec(
        &self,
        id: &str,
        session: &str,
        command: SessionCommand,
        _cancel: CancellationToken,
    ) -> Result<(WorkspaceId, ExecStream), ApiError> {
        // Dropping the events interrupts the command.
        Ok(Provider::session_exec(self, id, session, command).await?)
    }

    async fn interrupt_session(&self, id: &str, session: &str) -> Result<bool, ApiError> {
        Ok(Provider::interrupt_session(self, id, session).await?)
    }

    async fn terminal(
        &self,
        id: &str,
        params: TerminalParams,
    ) -> Result<Box<dyn WorkspaceTerminal>, ApiError> {
        Ok(Box::new(Provider::terminal(self, id, params).await?))
    }

    async fn export(&self, id: &str) -> Result<Export, ApiError> {
        let archive = self.export_archive(id).await?;
        Ok(Export {
            workspace: archive.workspace,
            entries: archive.summary.entries,
            bytes: archive.summary.bytes,
            deleted: archive.summary.deleted.len() as u64,
            file: archive.file,
            length: archive.length,
        })
    }

    async fn remove_snapshot(&self, snapshot: &str) -> Result<(), ApiError> {
        Ok(Provider::remove_snapshot(self, snapshot).await?)
    }

    async fn gc(&self) -> Result<Vec<RuntimeGc>, ApiError> {
        Ok(Provider::gc(self).await?.runtimes)
    }

    async fn gc_cache(&self, budget: Option<u64>) -> Result<CacheGc, ApiError> {
        Ok(Provider::gc_cache(self, budget).await?)
    }
}
