//! The controller's HTTP front end: the HTTP server's workspace routes
//! (`/v1` and Derrick's) run over [`Front`], which calls the controller's
//! own NATS API, the [`Router`](crate::Router).
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
use berth_core::proto::AgentInfo;
use berth_core::{
    Change, ExecRequest, ExecStream, FileEntry, Labels, ReadStream, Snapshot, Spec, Workspace,
    WorkspaceId,
};
use berth_nats_api::NatsClient;
use berth_provider::{CreateOptions, FetchResult, WorkspaceDetails};
use berth_server::ApiError;
use berth_server::ErrorBody;
use berth_server::workspaces::{ProgressSender, Workspaces};
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

    async fn fetch(
        &self,
        id: &str,
        _progress: ProgressSender,
    ) -> Result<Vec<FetchResult>, ApiError> {
        // The NATS client passes on no fetch progress: the result only.
        self.api.fetch(id).await.map_err(api)
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
}
