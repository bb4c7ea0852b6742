//! Which workspace lives on which node: the `berth-workspaces` key-value
//! bucket, one record per workspace (its id the key, the workspace as its
//! node last answered, with `node` set). Every controller reads and writes
//! the same records, so a second or restarted controller knows every
//! workspace placed through any of them.

use crate::ClusterError;
use crate::wire::WORKSPACES_BUCKET;
use async_nats::jetstream::{self, kv};
use berth_core::Workspace;
use futures::StreamExt;

/// The cluster's record of placed workspaces.
#[derive(Clone)]
pub struct Placements {
    kv: kv::Store,
}

/// What a name, id or id prefix finds among the records.
pub enum Found {
    One(Box<Workspace>),
    None,
    /// More than one record matches: their ids.
    Many(Vec<String>),
}

impl Placements {
    /// The bucket, made if missing.
    pub async fn open(js: &jetstream::Context) -> Result<Self, ClusterError> {
        if let Ok(kv) = js.get_key_value(WORKSPACES_BUCKET).await {
            return Ok(Placements { kv });
        }
        let made = js
            .create_key_value(kv::Config {
                bucket: WORKSPACES_BUCKET.into(),
                history: 1,
                ..Default::default()
            })
            .await;
        match made {
            Ok(kv) => Ok(Placements { kv }),
            // Another controller made it meanwhile.
            Err(e) => js
                .get_key_value(WORKSPACES_BUCKET)
                .await
                .map(|kv| Placements { kv })
                .map_err(|_| ClusterError::nats(format!("make the bucket {WORKSPACES_BUCKET}"), e)),
        }
    }

    /// Records `workspace` (whose `node` is set) as it is now.
    pub async fn put(&self, workspace: &Workspace) -> Result<(), ClusterError> {
        let body = serde_json::to_vec(workspace)
            .map_err(|e| ClusterError::nats("encode a workspace's record", e))?;
        self.kv
            .put(workspace.id.as_str(), body.into())
            .await
            .map_err(|e| ClusterError::nats(format!("record the workspace {}", workspace.id), e))
            .map(drop)
    }

    /// Forgets the workspace `id`.
    pub async fn remove(&self, id: &str) -> Result<(), ClusterError> {
        self.kv
            .purge(id)
            .await
            .map_err(|e| ClusterError::nats(format!("forget the workspace {id}"), e))
    }

    /// Every record, oldest first.
    pub async fn all(&self) -> Result<Vec<Workspace>, ClusterError> {
        let what = || format!("read the bucket {WORKSPACES_BUCKET}");
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| ClusterError::nats(what(), e))?;
        let mut all = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| ClusterError::nats(what(), e))?;
            let Some(value) = self
                .kv
                .get(&key)
                .await
                .map_err(|e| ClusterError::nats(what(), e))?
            else {
                continue;
            };
            match serde_json::from_slice::<Workspace>(&value) {
                Ok(ws) => all.push(ws),
                Err(e) => tracing::warn!(workspace = %key, error = %e, "an unreadable record"),
            }
        }
        all.sort_by(|a, b| (a.created_at, a.id.as_str()).cmp(&(b.created_at, b.id.as_str())));
        Ok(all)
    }

    /// The workspace `target` names: its id, a unique id prefix, or its
    /// name.
    pub async fn find(&self, target: &str) -> Result<Found, ClusterError> {
        let all = self.all().await?;
        if let Some(ws) = all.iter().find(|ws| ws.id.as_str() == target) {
            return Ok(Found::One(Box::new(ws.clone())));
        }
        let mut matches: Vec<&Workspace> = all.iter().filter(|ws| ws.name == target).collect();
        if matches.is_empty() {
            matches = all
                .iter()
                .filter(|ws| ws.id.as_str().starts_with(target))
                .collect();
        }
        Ok(match matches.as_slice() {
            [] => Found::None,
            [one] => Found::One(Box::new((*one).clone())),
            many => Found::Many(many.iter().map(|ws| ws.id.to_string()).collect()),
        })
    }
}
