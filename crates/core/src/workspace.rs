//! Workspace records, as the registry keeps them and the APIs return them.

use crate::{Labels, Spec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use utoipa::ToSchema;

/// A workspace id: a lowercase ULID, so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct WorkspaceId(String);

impl WorkspaceId {
    /// A new id, greater than every id made before it in this process,
    /// even within one millisecond.
    pub fn generate() -> Self {
        static GENERATOR: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());
        let mut generator = GENERATOR
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The random part overflows only after 2^80 ids in one millisecond;
        // a fresh random id is then as good.
        let id = generator
            .generate()
            .unwrap_or_else(|_| ulid::Ulid::generate());
        WorkspaceId(id.to_string().to_ascii_lowercase())
    }

    /// Wraps an id read back from storage or given by a user.
    pub fn from_string(id: impl Into<String>) -> Self {
        WorkspaceId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a workspace is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceState {
    Creating,
    Running,
    Stopped,
    Failed,
    Removed,
    /// On a cluster node that is gone (its membership expired): known
    /// from the cluster's registry, unreachable.
    Lost,
}

impl WorkspaceState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceState::Creating => "creating",
            WorkspaceState::Running => "running",
            WorkspaceState::Stopped => "stopped",
            WorkspaceState::Failed => "failed",
            WorkspaceState::Removed => "removed",
            WorkspaceState::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "creating" => WorkspaceState::Creating,
            "running" => WorkspaceState::Running,
            "stopped" => WorkspaceState::Stopped,
            "failed" => WorkspaceState::Failed,
            "removed" => WorkspaceState::Removed,
            "lost" => WorkspaceState::Lost,
            _ => return None,
        })
    }
}

impl fmt::Display for WorkspaceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workspace as the registry holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub name: String,
    pub runtime: String,
    pub spec: Spec,
    pub state: WorkspaceState,
    /// `key=value` tags to list and remove the workspace by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = std::collections::HashMap<String, String>)]
    pub labels: Labels,
    /// What the runtime needs to find this workspace again (paths, container
    /// ids) and the isolation in force; its shape is the runtime's own.
    /// `null` until the runtime has made the workspace (and for good when
    /// that failed).
    #[schema(value_type = Option<Object>)]
    pub runtime_info: serde_json::Value,
    /// The provisioning cache entry this workspace was made from or saved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    /// Why the workspace failed, with the failing step's output tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Id of the process provisioning this workspace, while it is `creating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_pid: Option<u32>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Milliseconds since the Unix epoch.
    pub updated_at: i64,
    /// When a command, a file operation or a terminal last ran in it
    /// (its creation until then), in milliseconds since the Unix epoch.
    #[serde(default)]
    pub last_active_at: i64,
    /// The cluster node it lives on, when listed through a controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Workspace {
    /// When the workspace is stopped for being idle (`timeouts.idle`), in
    /// milliseconds since the Unix epoch; only a running workspace has one.
    pub fn idle_deadline(&self) -> Option<i64> {
        if self.state != WorkspaceState::Running {
            return None;
        }
        let idle = self.spec.timeouts.idle?;
        Some(after(self.last_active_at.max(self.created_at), idle))
    }

    /// When the workspace is removed (`timeouts.lifetime`), in milliseconds
    /// since the Unix epoch. One still being made waits for the end of its
    /// provisioning; a removed one has none.
    pub fn removal_deadline(&self) -> Option<i64> {
        if matches!(
            self.state,
            WorkspaceState::Removed | WorkspaceState::Creating
        ) {
            return None;
        }
        Some(after(self.created_at, self.spec.timeouts.lifetime?))
    }
}

/// `seconds` after the time `ms`, saturating: a deadline too far to count
/// is never reached.
fn after(ms: i64, seconds: u64) -> i64 {
    let span = i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    ms.saturating_add(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_creation_order_within_a_millisecond() {
        let ids: Vec<WorkspaceId> = (0..1000).map(|_| WorkspaceId::generate()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }
}
