//! Provisioning progress, as streamed to the CLI and the HTTP API.

use crate::{Output, Stream, WorkspaceId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One step of provisioning, named in progress and failure events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionStep {
    Create,
    Clone,
    Fetch,
    Setup,
    Cache,
    Start,
}

/// An event of provisioning a workspace; `Ready` or `Failed` comes last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProvisionEvent {
    /// The workspace is registered and its filesystem is being made.
    Created {
        id: WorkspaceId,
        name: String,
    },
    /// The provisioned state was found in the cache.
    CacheHit {
        key: String,
    },
    /// The provisioned state is not cached; it is being made.
    CacheMiss {
        key: String,
    },
    Cloning {
        repository: String,
        path: String,
        index: usize,
        total: usize,
    },
    Cloned {
        repository: String,
        path: String,
        commit: String,
    },
    /// Upstream changes are being fetched into a cached state.
    Fetching {
        path: String,
    },
    Fetched {
        path: String,
        /// The commit the checkout is at after the fetch.
        commit: String,
        /// Whether new commits arrived.
        updated: bool,
    },
    SetupStarted,
    /// Output of the setup script.
    SetupOutput {
        #[schema(value_type = String)]
        stream: Stream,
        #[schema(value_type = String)]
        data: Output,
    },
    SetupFinished {
        exit_code: i32,
    },
    /// The provisioned state was saved to the cache.
    Cached {
        key: String,
    },
    Ready {
        id: WorkspaceId,
    },
    Failed {
        step: ProvisionStep,
        message: String,
        /// The last lines of the failing step's output.
        output_tail: String,
    },
}
