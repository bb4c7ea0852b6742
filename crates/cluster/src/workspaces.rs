//! Which workspace lives on which node: the `berth-workspaces` key-value
//! bucket, one record per workspace (its id the key, the workspace as its
//! node last answered, with `node` set). Every controller reads and writes
//! the same records, so a second or restarted controller knows every
//! workspace placed through any of them.
//!
//! Controllers write concurrently, so no write assumes what it read: a
//! record is made only if absent (JetStream's create), and changed only
//! at the revision it was read at and only while it exists, so that a
//! workspace one controller removed is not brought back by another's late
//! answer. A name given to a new workspace is reserved across the cluster
//! the same way, in `berth-workspace-names`, before the workspace is
//! placed: two controllers placing the same name at once make one
//! workspace, the other is refused as `name_taken`. Names a node derives
//! (the spec's name, with a suffix where it is taken there) are unique on
//! their node only; one that finds workspaces on two nodes is refused as
//! `ambiguous_id`, and the id names either.

use crate::ClusterError;
use crate::wire::{WORKSPACE_NAMES_BUCKET, WORKSPACES_BUCKET};
use async_nats::jetstream::{self, kv};
use berth_core::Workspace;
use bytes::Bytes;
use futures::StreamExt;

/// The cluster's record of placed workspaces.
#[derive(Clone)]
pub struct Placements {
    kv: kv::Store,
    /// The names reserved across the cluster, each naming its workspace's
    /// id (empty while it is being placed).
    names: kv::Store,
}

/// How often a change is tried again when another controller changed the
/// record in between.
const RACES: usize = 8;

/// What a name, id or id prefix finds among the records.
pub enum Found {
    One(Box<Workspace>),
    None,
    /// More than one record matches: their ids.
    Many(Vec<String>),
}

impl Placements {
    /// The buckets, made if missing.
    pub async fn open(js: &jetstream::Context) -> Result<Self, ClusterError> {
        Ok(Placements {
            kv: bucket(js, WORKSPACES_BUCKET).await?,
            names: bucket(js, WORKSPACE_NAMES_BUCKET).await?,
        })
    }

    /// Records a new workspace (whose `node` is set), if no record of it
    /// exists.
    pub async fn create(&self, workspace: &Workspace) -> Result<(), ClusterError> {
        let what = || format!("record the workspace {}", workspace.id);
        self.kv
            .create(workspace.id.as_str(), encode(workspace)?)
            .await
            .map_err(|e| ClusterError::nats(what(), e))
            .map(drop)
    }

    /// Records `workspace` as it is now, if it still has a record.
    pub async fn update(&self, workspace: &Workspace) -> Result<(), ClusterError> {
        let id = workspace.id.as_str();
        let what = || format!("record the workspace {id}");
        let body = encode(workspace)?;
        for _ in 0..RACES {
            let entry = self
                .kv
                .entry(id)
                .await
                .map_err(|e| ClusterError::nats(what(), e))?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                // Removed meanwhile: it stays removed.
                return Ok(());
            };
            match self.kv.update(id, body.clone(), entry.revision).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(ClusterError::nats(what(), e)),
            }
        }
        Err(ClusterError::nats(
            what(),
            format!("changed by others {RACES} times in a row"),
        ))
    }

    /// Reserves `name` for a workspace about to be placed.
    pub async fn reserve(&self, name: &str) -> Result<(), ClusterError> {
        match self.names.create(name_key(name), Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(ClusterError::NameTaken(name.into()))
            }
            Err(e) => Err(ClusterError::nats(format!("reserve the name `{name}`"), e)),
        }
    }

    /// The reserved `name` is the workspace `id`'s.
    pub async fn claim(&self, name: &str, id: &str) -> Result<(), ClusterError> {
        self.names
            .put(name_key(name), Bytes::copy_from_slice(id.as_bytes()))
            .await
            .map_err(|e| ClusterError::nats(format!("reserve the name `{name}`"), e))
            .map(drop)
    }

    /// Frees `name`, reserved for a workspace that was not made.
    pub async fn release(&self, name: &str) -> Result<(), ClusterError> {
        self.names
            .purge(name_key(name))
            .await
            .map_err(|e| ClusterError::nats(format!("free the name `{name}`"), e))
    }

    /// Frees the name of the removed `workspace`, if it is reserved for it.
    async fn release_of(&self, workspace: &Workspace) -> Result<(), ClusterError> {
        let key = name_key(&workspace.name);
        let what = || format!("free the name `{}`", workspace.name);
        let entry = self
            .names
            .entry(key.as_str())
            .await
            .map_err(|e| ClusterError::nats(what(), e))?;
        match entry {
            Some(entry)
                if entry.operation == kv::Operation::Put
                    && entry.value == workspace.id.as_str().as_bytes() =>
            {
                self.names
                    .purge_expect_revision(key, Some(entry.revision))
                    .await
                    .map_err(|e| ClusterError::nats(what(), e))
            }
            _ => Ok(()),
        }
    }

    /// Forgets the `workspace`, and frees its name.
    pub async fn remove(&self, workspace: &Workspace) -> Result<(), ClusterError> {
        let id = workspace.id.as_str();
        self.kv
            .purge(id)
            .await
            .map_err(|e| ClusterError::nats(format!("forget the workspace {id}"), e))?;
        self.release_of(workspace).await
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

/// A key-value bucket keeping the last value of each key, made if missing.
async fn bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store, ClusterError> {
    let config = kv::Config {
        bucket: name.into(),
        history: 1,
        ..Default::default()
    };
    crate::bucket(js, config).await
}

fn encode(workspace: &Workspace) -> Result<Bytes, ClusterError> {
    serde_json::to_vec(workspace)
        .map(Bytes::from)
        .map_err(|e| ClusterError::nats("encode a workspace's record", e))
}

/// A name as a key: hexadecimal, since a name may hold what a key may
/// not (a leading or trailing dot).
fn name_key(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}
