//! Node membership: each node keeps a record of what it offers in the
//! `berth-nodes` key-value bucket, written again on every heartbeat with a
//! per-key TTL (nats-server 2.11+). A node withdraws its record when it
//! stops; one that dies stops writing it, and the server removes the
//! record when its TTL passes. A [`Directory`] reads the records for a
//! server to show, and tells it when they change.

use crate::ClusterError;
use crate::wire::NODES_BUCKET;
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use std::time::Duration;

pub use berth_core::node::NodeInfo;

/// A node's record in the bucket.
pub struct Membership {
    js: jetstream::Context,
    kv: kv::Store,
    name: String,
    ttl: Duration,
}

/// Whether `name` can name a node (and so a key of the bucket).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The bucket, made if missing.
pub(crate) async fn bucket(js: &jetstream::Context) -> Result<kv::Store, ClusterError> {
    crate::bucket(
        js,
        kv::Config {
            bucket: NODES_BUCKET.into(),
            history: 1,
            // Per-key TTLs, and how long a removal is remembered.
            limit_markers: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    )
    .await
}

impl Membership {
    /// A membership for `name`, whose record lives `ttl` after each beat
    /// (whole seconds, at least one).
    pub async fn join(
        client: async_nats::Client,
        name: &str,
        ttl: Duration,
    ) -> Result<Self, ClusterError> {
        if !valid_name(name) {
            return Err(ClusterError::NodeName(name.into()));
        }
        let js = jetstream::new(client);
        let kv = bucket(&js).await?;
        Ok(Membership {
            js,
            kv,
            name: name.into(),
            ttl: Duration::from_secs(ttl.as_secs().max(1)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How often the record must be written to stay.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Writes the record, to live `ttl` from now.
    pub async fn beat(&self, info: &NodeInfo) -> Result<(), ClusterError> {
        let body = serde_json::to_vec(info)
            .map_err(|e| ClusterError::nats("encode the node's record", e))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_TTL,
            format!("{}s", self.ttl.as_secs()).as_str(),
        );
        // A key-value put is a publish on the bucket's subject; the TTL
        // travels as a header, which the bucket's `put` cannot carry.
        self.js
            .publish_with_headers(
                format!("$KV.{NODES_BUCKET}.{}", self.name),
                headers,
                body.into(),
            )
            .await
            .map_err(|e| ClusterError::nats("write the node's record", e))?
            .await
            .map_err(|e| ClusterError::nats("write the node's record", e))?;
        Ok(())
    }

    /// Removes the record: the node leaves.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.kv
            .purge(&self.name)
            .await
            .map_err(|e| ClusterError::nats("remove the node's record", e))
    }
}

/// Every node whose record is alive, by name.
pub async fn list(client: async_nats::Client) -> Result<Vec<NodeInfo>, ClusterError> {
    list_in(&bucket(&jetstream::new(client)).await?).await
}

/// Every node whose record in `kv` is alive, by name.
pub(crate) async fn list_in(kv: &kv::Store) -> Result<Vec<NodeInfo>, ClusterError> {
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| ClusterError::nats("list the nodes", e))?;
    let mut nodes = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| ClusterError::nats("list the nodes", e))?;
        let Some(value) = kv
            .get(&key)
            .await
            .map_err(|e| ClusterError::nats(format!("read the node `{key}`"), e))?
        else {
            continue;
        };
        match serde_json::from_slice::<NodeInfo>(&value) {
            Ok(info) => nodes.push(info),
            Err(e) => tracing::warn!(node = %key, error = %e, "an unreadable node record"),
        }
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

/// The cluster's node records as a server sees them: listed on demand,
/// and watched for any change (a node joining, beating, leaving or
/// expiring). Cheap to clone.
#[derive(Clone)]
pub struct Directory {
    kv: kv::Store,
}

impl Directory {
    /// The directory of the cluster `client` reaches (its bucket made if
    /// missing).
    pub async fn open(client: async_nats::Client) -> Result<Self, ClusterError> {
        Ok(Directory {
            kv: bucket(&jetstream::new(client)).await?,
        })
    }

    /// Every node whose record is alive, by name.
    pub async fn list(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        list_in(&self.kv).await
    }

    /// A stream that yields once per live record at first, then once per
    /// change of any record (a node joining, beating, leaving, or its
    /// record expiring); it ends when the watch breaks.
    pub async fn changes(
        &self,
    ) -> Result<impl futures::Stream<Item = ()> + Send + 'static, ClusterError> {
        let watch = self
            .kv
            .watch_all()
            .await
            .map_err(|e| ClusterError::nats("watch the nodes", e))?;
        Ok(watch
            .take_while(|entry| std::future::ready(entry.is_ok()))
            .map(|_| ()))
    }
}

#[async_trait::async_trait]
impl berth_server::cluster::NodeDirectory for Directory {
    async fn list(&self) -> Result<Vec<NodeInfo>, berth_server::cluster::DirectoryError> {
        Ok(Directory::list(self).await?)
    }

    async fn changes(
        &self,
    ) -> Result<futures::stream::BoxStream<'static, ()>, berth_server::cluster::DirectoryError>
    {
        Ok(Directory::changes(self).await?.boxed())
    }
}
