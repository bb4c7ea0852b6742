//! What the workspace routes call: [`Workspaces`], the operations on
//! workspaces that `/v1` and Derrick's routes translate HTTP into. The
//! provider in this process is one; a cluster's controller gives the
//! server another, whose every call goes through the cluster's placement
//! and routing (`berth_cluster::front`), so that the HTTP handlers are
//! written once whatever serves them.
//!
//! The other routes (sessions, terminals, layer exports, garbage
//! collection, jobs) are the local provider's.

use crate::error::ApiError;
use berth_core::{
    Change, ExecRequest, ExecStream, FileEntry, Labels, ProvisionEvent, ReadStream, Snapshot, Spec,
    Workspace, WorkspaceId,
};
use berth_provider::{CreateOptions, FetchResult, Progress, Provider, WorkspaceDetails};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where provisioning events go, if anyone listens.
pub type ProgressSender = Option<mpsc::Sender<ProvisionEvent>>;

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
}
