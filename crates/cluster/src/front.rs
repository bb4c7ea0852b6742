//! The controller's HTTP front end: the HTTP server's workspace routes
//! (`/v1` and Derrick's: sessions, terminals, exports and garbage
//! collection too) run over [`Front`], which calls the controller's own
//! NATS API, the [`Router`](crate::Router). Garbage collection is each
//! node's own: the router refuses it, naming where to ask.
//!
//! Why through the controller's own subjects rather than a second
//! implementation: placement, the registry's records and forwarding stay
//! in the router alone, so a workspace made over HTTP and one made over
//! NATS are placed and recorded alike, by whichever controller of the
//! cluster takes the request. The NATS client already streams (progress,
//! command output, file bytes) under flow control and sends `cancel` when
//! its answer is dropped, which the router passes on to the node: an HTTP
//! client that goes away cancels its command on the node. The price is a
//! hop through the NATS server on loopback.

use berth_client::ClientError;
use berth_core::proto::{AgentInfo, SessionParams, TerminalParams};
use berth_core::{
    Change, ExecEvent, ExecRequest, ExecStream, FileEntry, Labels, ReadStream, Snapshot, Spec,
    Workspace, WorkspaceId,
};
use berth_nats_api::{NatsClient, NatsTerminal};
use berth_provider::{
    CacheGc, CreateOptions, FetchResult, RuntimeGc, SessionCommand, SessionInfo, WorkspaceDetails,
};
use berth_server::ApiError;
use berth_server::ErrorBody;
use berth_server::workspaces::{Export, ProgressSender, WorkspaceTerminal, Workspaces};
use tokio_util::sync::CancellationToken;

/// The cluster's workspaces, as the HTTP routes call them.
pub struct Front {
    api: NatsClient,
}

impl Front {
    /// The front end of the controller serving the cluster's API under
    /// `prefix` on `nats`, the connection to the NATS server at `server`.
    pub fn new(nats: async_nats::Client, prefix: &str, server: &str) -> Front {
        Front {
            api: NatsClient::new(nats, prefix, server),
        }
    }
}

/// An error of the controller's API, with its code, or one reaching it.
fn api(err: ClientError) -> ApiError {
    let ErrorBody { code, message } = match err {
        ClientError::Api { code, message, .. } => ErrorBody { code, message },
        other => ErrorBody {
            code: "cluster_unavailable".into(),
            message: other.to_string(),
        },
    };
    ApiError {
        code: code.into(),
        message,
    }
}

/// A sender for the client, which wants one: a closed channel where no
/// one listens.
fn progress(sender: ProgressSender) -> tokio::sync::mpsc::Sender<berth_core::ProvisionEvent> {
    sender.unwrap_or_else(|| tokio::sync::mpsc::channel(1).0)
}

#[async_trait::async_trait]
impl Workspaces for Front {
    async fn create(
        &self,
        spec: Spec,
        options: CreateOptions,
        sender: ProgressSender,
    ) -> Result<Workspace, ApiError> {
        self.api
            .create(&spec, &options, progress(sender))
            .await
            .map_err(api)
    }

    async fn list(&self, all: bool, labels: &Labels) -> Result<Vec<Workspace>, ApiError> {
        self.api.list(all, labels).await.map_err(api)
    }

    async fn describe(&self, id: &str) -> Result<WorkspaceDetails, ApiError> {
        self.api.describe(id).await.map_err(api)
    }

    async fn get(&self, id: &str) -> Result<Workspace, ApiError> {
        Ok(self.describe(id).await?.workspace)
    }

    async fn start(&self, id: &str) -> Result<Workspace, ApiError> {
        self.api.start(id).await.map_err(api)
    }

    async fn stop(&self, id: &str) -> Result<Workspace, ApiError> {
        self.api.stop(id).await.map_err(api)
    }

    async fn remove(&self, id: &str) -> Result<Workspace, ApiError> {
        self.api.remove(id).await.map_err(api)
    }

    async fn fetch(&self, id: &str, sender: ProgressSender) -> Result<Vec<FetchResult>, ApiError> {
        self.api.fetch(id, progress(sender)).await.map_err(api)
    }

    async fn exec(
        &self,
        id: &str,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<(WorkspaceId, ExecStream), ApiError> {
        let events = self.api.exec(id, &request, cancel).await.map_err(api)?;
        Ok((WorkspaceId::from_string(id), events))
    }

    async fn list_files(&self, id: &str, dir: &str) -> Result<Vec<FileEntry>, ApiError> {
        self.api.list_files(id, dir).await.map_err(api)
    }

    async fn read_file(&self, id: &str, path: &str) -> Result<ReadStream, ApiError> {
        self.api.read_file(id, path).await.map_err(api)
    }

    async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<(), ApiError> {
        self.api.write_file(id, path, data).await.map_err(api)
    }

    async fn remove_file(&self, id: &str, path: &str) -> Result<(), ApiError> {
        self.api.remove_file(id, path).await.map_err(api)
    }

    async fn snapshot(&self, id: &str) -> Result<Snapshot, ApiError> {
        self.api.snapshot(id).await.map_err(api)
    }

    async fn fork(&self, id: &str, count: usize) -> Result<Vec<Workspace>, ApiError> {
        self.api.fork(id, count).await.map_err(api)
    }

    async fn reset(&self, id: &str, to: Option<&str>) -> Result<Workspace, ApiError> {
        self.api.reset(id, to).await.map_err(api)
    }

    async fn changes(&self, id: &str) -> Result<Vec<Change>, ApiError> {
        self.api.changes(id).await.map_err(api)
    }

    async fn diff(&self, id: &str) -> Result<ReadStream, ApiError> {
        self.api.diff(id).await.map_err(api)
    }

    async fn agent_info(&self, id: &str, detect: bool) -> Result<AgentInfo, ApiError> {
        self.api.agent_info(id, detect).await.map_err(api)
    }

    async fn open_session(&self, id: &str, params: SessionParams) -> Result<SessionInfo, ApiError> {
        self.api.open_session(id, &params).await.map_err(api)
    }

    async fn close_session(&self, id: &str, session: &str) -> Result<(), ApiError> {
        self.api.close_session(id, session).await.map_err(api)
    }

    async fn session_exec(
        &self,
        id: &str,
        session: &str,
        command: SessionCommand,
        cancel: CancellationToken,
    ) -> Result<(WorkspaceId, ExecStream), ApiError> {
        let events = self
            .api
            .session_exec(id, session, &command, cancel)
            .await
            .map_err(api)?;
        Ok((WorkspaceId::from_string(id), events))
    }

    async fn interrupt_session(&self, id: &str, session: &str) -> Result<bool, ApiError> {
        self.api.interrupt_session(id, session).await.map_err(api)
    }

    async fn terminal(
        &self,
        id: &str,
        params: TerminalParams,
    ) -> Result<Box<dyn WorkspaceTerminal>, ApiError> {
        let terminal = self.api.terminal(id, &params).await.map_err(api)?;
        Ok(Box::new(NodeTerminal(terminal)))
    }

    /// The node's archive, whole in a scratch file here first: its counts
    /// (HTTP headers) come after its bytes over NATS.
    async fn export(&self, id: &str) -> Result<Export, ApiError> {
        let local = |what: &str, e: std::io::Error| ApiError {
            code: "internal".into(),
            message: format!("the export of {id}: {what}: {e}"),
        };
        let scratch = tempfile::tempdir().map_err(|e| local("a scratch directory", e))?;
        let path = scratch.path().join("export.tar.zst");
        let counts = self.api.export(id, &path, true).await.map_err(api)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| local("reading it back", e))?;
        let length = file
            .metadata()
            .await
            .map_err(|e| local("reading it back", e))?
            .len();
        // The open file outlives its name.
        drop(scratch);
        Ok(Export {
            workspace: self.get(id).await?.id.to_string(),
            entries: counts.entries,
            bytes: counts.bytes,
            deleted: counts.deleted,
            file,
            length,
        })
    }

    async fn remove_snapshot(&self, snapshot: &str) -> Result<(), ApiError> {
        self.api.remove_snapshot(snapshot).await.map_err(api)
    }

    async fn gc(&self) -> Result<Vec<RuntimeGc>, ApiError> {
        self.api.gc().await.map_err(api)
    }

    async fn gc_cache(&self, budget: Option<u64>) -> Result<CacheGc, ApiError> {
        self.api.gc_cache(budget).await.map_err(api)
    }
}

/// A terminal on a node, through the controller's NATS API.
struct NodeTerminal(NatsTerminal);

#[async_trait::async_trait]
impl WorkspaceTerminal for NodeTerminal {
    async fn next(&mut self) -> Option<ExecEvent> {
        self.0.next().await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ApiError> {
        self.0.write(bytes).await.map_err(api)
    }

    async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ApiError> {
        self.0.resize(rows, cols).await.map_err(api)
    }

    async fn signal(&mut self, signal: i32) -> Result<(), ApiError> {
        self.0.signal(signal).await.map_err(api)
    }

    async fn close_stdin(&mut self) -> Result<(), ApiError> {
        self.0.close_stdin().await.map_err(api)
    }
}
