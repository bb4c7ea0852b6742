//! The cluster's nodes under `/v1/nodes`, as the cluster's directory
//! ([`NodeDirectory`], which `berth-cluster` implements over its key-value
//! bucket) reads them, when the server serves a cluster (`berth serve
//! --nats`).

use crate::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use berth_core::node::NodeInfo;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Why the cluster's directory cannot answer.
pub type DirectoryError = Box<dyn std::error::Error + Send + Sync>;

/// The nodes of a cluster, for a server to show.
#[async_trait::async_trait]
pub trait NodeDirectory: Send + Sync {
    /// Every node whose record is alive, by name.
    async fn list(&self) -> Result<Vec<NodeInfo>, DirectoryError>;

    /// Yields at each change of the nodes (a node joining, beating,
    /// leaving or expiring); ends when it cannot tell any more.
    async fn changes(&self) -> Result<BoxStream<'static, ()>, DirectoryError>;
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_nodes))
}

/// The cluster's live nodes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// Whether the server serves a cluster; when not, `nodes` is empty.
    pub clustered: bool,
    /// Every node whose record is alive, by name.
    pub nodes: Vec<NodeInfo>,
}

/// Lists the cluster's nodes: each with its runtimes, architecture, slots
/// and running tasks, provisioning cache keys and last heartbeat. A server
/// that serves no cluster answers with none.
#[utoipa::path(
    get,
    path = "/v1/nodes",
    tag = "cluster",
    responses(
        (status = 200, description = "The cluster's nodes", body = NodeList),
        (status = 503, description = "The cluster's NATS server cannot be reached",
            body = crate::error::ErrorResponse),
    )
)]
pub(crate) async fn list_nodes(State(state): State<AppState>) -> Result<Json<NodeList>, ApiError> {
    let Some(directory) = &state.cluster else {
        return Ok(Json(NodeList {
            clustered: false,
            nodes: Vec::new(),
        }));
    };
    let nodes = directory.list().await.map_err(unavailable)?;
    Ok(Json(NodeList {
        clustered: true,
        nodes,
    }))
}

fn unavailable(err: DirectoryError) -> ApiError {
    ApiError::new("cluster_unavailable", err.to_string())
}
