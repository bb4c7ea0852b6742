//! berth across hosts over NATS JetStream.
//!
//! - [`nodes`]: each node registers what it offers in a key-value bucket,
//!   refreshed by a heartbeat under a per-key TTL, so a node that dies
//!   disappears by itself.
//! - [`queue`]: a node's side of the job queue: its runner pulls tasks from
//!   a work-queue stream, heartbeats them with in-progress acks, and
//!   reports logs and results as events.
//! - [`controller`]: the side that keeps runs: every controller folds one
//!   stream of events (runs made, cancelled, retried, tasks dispatched,
//!   the nodes' reports) into its registry, hands due tasks to the work
//!   queue, and fences off attempts that lost their task; [`runs`] is its
//!   API's queue, which publishes those decisions.
//! - [`router`]: the controller's API for workspaces: each placed on a
//!   node ([`placement`]), recorded in a key-value bucket
//!   ([`workspaces`]), and every request about it forwarded to its node;
//!   [`front`] has the controller's HTTP routes call it.
//!
//! The subjects, streams and buckets are named in [`wire`].

pub mod controller;
pub mod front;
pub mod nodes;
pub mod placement;
pub mod queue;
pub mod router;
pub mod runs;
pub mod wire;
pub mod workspaces;

use std::time::Duration;

pub use controller::Controller;
pub use front::Front;
pub use nodes::{Directory, Membership, NodeInfo};
pub use queue::NodeQueue;
pub use router::{Router, node_prefix};
pub use runs::RunQueue;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS or JetStream refused or failed an operation.
    #[error("NATS: cannot {what}: {message}")]
    Nats { what: String, message: String },
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    /// A message that no retry can make readable.
    #[error("cannot read {0}")]
    Undecodable(String),
    #[error("invalid node name `{0}`: use letters, digits, `-` and `_`")]
    NodeName(String),
    /// A workspace of the cluster has the name, or is being placed with it.
    #[error("the name `{0}` is taken in the cluster")]
    NameTaken(String),
}

impl ClusterError {
    pub(crate) fn nats(what: impl Into<String>, err: impl std::fmt::Display) -> Self {
        ClusterError::Nats {
            what: what.into(),
            message: err.to_string(),
        }
    }
}

/// The key-value bucket `config` names, made with `config` if missing.
/// Every process of the cluster (nodes, controllers) may be the first, so
/// losing the race to make it is no error.
pub(crate) async fn bucket(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
) -> Result<async_nats::jetstream::kv::Store, ClusterError> {
    let name = config.bucket.clone();
    if let Ok(kv) = js.get_key_value(&name).await {
        return Ok(kv);
    }
    match js.create_key_value(config).await {
        Ok(kv) => Ok(kv),
        // Another process made it meanwhile.
        Err(e) => js
            .get_key_value(&name)
            .await
            .map_err(|_| ClusterError::nats(format!("make the bucket {name}"), e)),
    }
}

/// How tasks move through the work queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// How long a delivered task may go without an acknowledgement (a
    /// heartbeat) before JetStream delivers it to another node.
    pub ack_wait: Duration,
    /// How often a task is delivered again after its node went silent
    /// before it fails, saying its runner died.
    pub max_resets: u32,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            ack_wait: berth_jobs::queue::DEFAULT_STALL,
            max_resets: berth_jobs::queue::DEFAULT_MAX_RESETS,
        }
    }
}
