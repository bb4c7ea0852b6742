//! What a node of a cluster offers, as its record in the cluster's
//! directory says: shared by the cluster that writes it and the servers
//! and clients that show it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a node offers, as its record says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    pub name: String,
    /// The machine's architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// The runtimes that work on the node.
    pub runtimes: Vec<String>,
    /// Tasks the node runs at once.
    pub slots: usize,
    /// Tasks it runs now.
    pub running: usize,
    /// The provisioning cache keys it holds.
    pub cache_keys: Vec<String>,
    /// The subject prefix it serves the API under, for the workspaces
    /// placed on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// Workspaces it takes at most; no limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<usize>,
    /// When the node joined and when it last wrote its record, in
    /// milliseconds since the epoch.
    pub started_at: i64,
    pub heartbeat_at: i64,
}
