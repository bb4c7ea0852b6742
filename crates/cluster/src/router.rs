//! The controller's API for workspaces: served under the cluster's prefix
//! (`berth.v1`), each request goes to the service of the node that holds
//! its workspace (under `berth.v1.node.<name>`), answered by that node's
//! provider frame by frame. A new workspace goes where [`placement`]
//! says; which node holds which workspace is kept in [`Placements`];
//! `list` asks every live node and shows the workspaces of nodes that are
//! gone as `lost`. Nothing but the request and its answer crosses: a
//! repository's credential is a name the node resolves in its own
//! `credentials.toml`.
//!
//! [`placement`]: crate::placement

use crate::nodes::{self, NodeInfo};
use crate::workspaces::{Found, Placements};
use crate::{ClusterError, placement};
use async_nats::jetstream::{self, kv};
use berth_core::{Labels, Workspace, WorkspaceState};
use berth_nats_api::protocol::{ARGS, ListArgs};
use berth_nats_api::{Frame, Handler, Inputs, NatsClient, Op};
use berth_server::ErrorBody;
use berth_server::v1::{CreateWorkspaceParams, WorkspaceList};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::{self, BoxStream};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The subject prefix the node `name` serves the API under, below the
/// cluster's `prefix`.
pub fn node_prefix(prefix: &str, name: &str) -> String {
    format!("{prefix}.node.{name}")
}

/// The prefix `node`'s record names for its API, if it is one a node
/// serves: literal tokens ending in `node.<its name>`. Any other (the
/// controllers' own `berth.v1`, another node's) would have a controller
/// forward requests to itself or to the wrong node.
pub fn node_api(node: &NodeInfo) -> Option<&str> {
    let api = node.api.as_deref()?;
    let own = api
        .strip_suffix(node.name.as_str())
        .and_then(|rest| rest.strip_suffix(".node."))
        .is_some_and(|base| !base.is_empty());
    (own && berth_nats_api::valid_prefix(api)).then_some(api)
}

/// The controller's handler of the NATS API. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    nats: async_nats::Client,
    nodes: kv::Store,
    placements: Placements,
    /// The cluster's prefix, for messages.
    prefix: String,
    /// The NATS server, for messages.
    server: String,
    /// The runtime of workspaces whose request and spec name none.
    default_runtime: Option<String>,
}

type Answer = Result<BoxStream<'static, Frame>, ErrorBody>;

impl Router {
    pub async fn open(
        nats: async_nats::Client,
        prefix: &str,
        server: &str,
        default_runtime: Option<String>,
    ) -> Result<Router, ClusterError> {
        let js = jetstream::new(nats.clone());
        let nodes = nodes::bucket(&js).await?;
        let placements = Placements::open(&js).await?;
        Ok(Router {
            inner: Arc::new(Inner {
                nats,
                nodes,
                placements,
                prefix: prefix.into(),
                server: server.into(),
                default_runtime,
            }),
        })
    }
}

impl Handler for Router {
    fn answer(
        &self,
        op: Op,
        message: &async_nats::Message,
        inputs: Inputs,
    ) -> BoxStream<'static, Frame> {
        let inner = self.inner.clone();
        let message = message.clone();
        stream::once(async move {
            match inner.route(op, message, inputs).await {
                Ok(frames) => frames,
                Err(error) => stream::once(async move { Frame::Failed(error) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }
}

impl Inner {
    async fn route(
        self: Arc<Self>,
        op: Op,
        message: async_nats::Message,
        inputs: Inputs,
    ) -> Answer {
        match op {
            Op::Create => self.create(&message.payload, inputs).await,
            Op::List => {
                let args: ListArgs = parse(op, &message.payload)?;
                let workspaces = self.list(args.all, &args.labels).await?;
                Ok(done(&WorkspaceList { workspaces }))
            }
            Op::Runtimes | Op::Gc | Op::GcCache | Op::SnapshotRemove => Err(ErrorBody {
                code: "unsupported".into(),
                message: format!(
                    "`{}` is each node's own: run berth on the node's host (where \
                     `berth node` runs), or ask the node's service, under {}",
                    op.subject(),
                    node_prefix(&self.prefix, "NAME")
                ),
            }),
            _ => self.forward(op, message, inputs).await,
        }
    }

    /// Places a new workspace and has its node make it.
    async fn create(self: Arc<Self>, payload: &[u8], inputs: Inputs) -> Answer {
        let mut params: CreateWorkspaceParams = parse(Op::Create, payload)?;
        let runtime = params
            .runtime
            .clone()
            .or_else(|| params.spec.runtime.clone())
            .or_else(|| self.default_runtime.clone())
            .ok_or_else(|| ErrorBody {
                code: "no_runtime".into(),
                message: "the spec names no runtime and the controller has no default \
                          (-p RUNTIME): name one, for the cluster to place the workspace on a \
                          node offering it"
                    .into(),
            })?;
        params.runtime = Some(runtime.clone());
        // Reserved before placing, so that no other controller places
        // the same name meanwhile.
        let name = params.name.clone();
        if let Some(name) = &name {
            self.placements.reserve(name).await.map_err(|e| match e {
                ClusterError::NameTaken(_) => ErrorBody {
                    code: "name_taken".into(),
                    message: e.to_string(),
                },
                e => internal(e),
            })?;
        }
        let placed = self.place(params, &runtime, inputs).await;
        if placed.is_err()
            && let Some(name) = &name
            && let Err(e) = self.placements.release(name).await
        {
            tracing::warn!(%name, error = %e, "cannot free a name reserved in vain");
        }
        let (node, frames) = placed?;
        Ok(self.recording(Op::Create, node, frames, name))
    }

    /// Chooses the node for a new workspace and has it make it.
    async fn place(
        self: &Arc<Self>,
        params: CreateWorkspaceParams,
        runtime: &str,
        inputs: Inputs,
    ) -> Result<(String, BoxStream<'static, Frame>), ErrorBody> {
        let nodes = nodes::list_in(&self.nodes).await.map_err(internal)?;
        let mut held = BTreeMap::<String, usize>::new();
        for ws in self.placements.all().await.map_err(internal)? {
            if let Some(node) = ws.node {
                *held.entry(node).or_default() += 1;
            }
        }
        let node = placement::choose(&nodes, &held, runtime, &params.spec.cache_key(runtime))
            .map_err(|e| ErrorBody {
                code: "no_node".into(),
                message: e.to_string(),
            })?
            .clone();
        tracing::info!(node = %node.name, %runtime, "placing a workspace");
        let payload = serde_json::to_vec(&params).map_err(internal)?;
        let frames = self
            .client(&node)?
            .forward(Op::Create, Default::default(), payload.into(), inputs)
            .await;
        Ok((node.name, frames))
    }

    /// Forwards a request about one workspace to its node, and what its
    /// client types.
    async fn forward(
        self: Arc<Self>,
        op: Op,
        message: async_nats::Message,
        inputs: Inputs,
    ) -> Answer {
        let mut headers = message.headers.clone().unwrap_or_default();
        let mut args: Value = if op == Op::FilesWrite {
            let raw = headers.get(ARGS).map(|v| v.as_str().to_owned());
            parse(op, raw.unwrap_or_default().as_bytes())?
        } else {
            parse(op, &message.payload)?
        };
        let target = args
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(op, "missing field `id`"))?;
        let ws = match self.placements.find(target).await.map_err(internal)? {
            Found::One(ws) => *ws,
            // Made on a node directly (a job's task, a failed create):
            // the node that knows it.
            Found::None => self.ask_nodes(target).await?.ok_or_else(|| ErrorBody {
                code: "not_found".into(),
                message: format!("no workspace `{target}` in the cluster"),
            })?,
            Found::Many(ids) => {
                return Err(ErrorBody {
                    code: "ambiguous_id".into(),
                    message: format!(
                        "`{target}` names several workspaces of the cluster: {}",
                        ids.join(", ")
                    ),
                });
            }
        };
        let name = ws.node.clone().unwrap_or_default();
        let Some(node) = self.node(&name).await? else {
            if op == Op::Remove {
                // The registry's record is all that is left to remove.
                self.placements.remove(&ws).await.map_err(internal)?;
                return Ok(done(&Workspace {
                    state: WorkspaceState::Lost,
                    ..ws
                }));
            }
            return Err(ErrorBody {
                code: "node_lost".into(),
                message: format!(
                    "the workspace {} is on the node `{name}`, which is gone (its membership \
                     expired); `berth rm {}` forgets it",
                    ws.id, ws.id
                ),
            });
        };
        // The node is given the id, which names the same workspace there.
        args["id"] = Value::String(ws.id.to_string());
        let payload = if op == Op::FilesWrite {
            headers.insert(ARGS, args.to_string().as_str());
            message.payload.clone()
        } else {
            Bytes::from(args.to_string())
        };
        let frames = self
            .client(&node)?
            .forward(op, headers, payload, inputs)
            .await;
        Ok(self.recording(op, name, frames, None))
    }

    /// Every node's workspaces, and those of nodes gone as `lost`.
    async fn list(&self, all: bool, labels: &Labels) -> Result<Vec<Workspace>, ErrorBody> {
        let nodes = nodes::list_in(&self.nodes).await.map_err(internal)?;
        let records = self.placements.all().await.map_err(internal)?;
        let asked = futures::future::join_all(nodes.iter().map(|node| async move {
            let listed = match self.client(node) {
                Ok(client) => client.list(all, labels).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.message),
            };
            (node.name.clone(), listed)
        }))
        .await;
        let live: BTreeSet<&str> = nodes.iter().map(|node| node.name.as_str()).collect();
        let labelled = |ws: &Workspace| labels.iter().all(|(k, v)| ws.labels.get(k) == Some(v));
        let mut workspaces = Vec::new();
        for (node, listed) in asked {
            match listed {
                Ok(listed) => workspaces.extend(listed.into_iter().map(|ws| Workspace {
                    node: Some(node.clone()),
                    ..ws
                })),
                Err(e) => {
                    // What the registry last knew of them.
                    tracing::warn!(%node, error = %e, "a node did not list its workspaces");
                    workspaces.extend(
                        records
                            .iter()
                            .filter(|ws| ws.node.as_deref() == Some(node.as_str()) && labelled(ws))
                            .cloned(),
                    );
                }
            }
        }
        workspaces.extend(
            records
                .into_iter()
                .filter(|ws| !ws.node.as_deref().is_some_and(|n| live.contains(n)))
                .filter(labelled)
                .map(|ws| Workspace {
                    state: WorkspaceState::Lost,
                    ..ws
                }),
        );
        workspaces.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(workspaces)
    }

    /// The workspace `target` as the first live node that knows it
    /// describes it.
    async fn ask_nodes(&self, target: &str) -> Result<Option<Workspace>, ErrorBody> {
        for node in nodes::list_in(&self.nodes).await.map_err(internal)? {
            if let Ok(client) = self.client(&node)
                && let Ok(details) = client.describe(target).await
            {
                return Ok(Some(Workspace {
                    node: Some(node.name),
                    ..details.workspace
                }));
            }
        }
        Ok(None)
    }

    /// The live node `name`.
    async fn node(&self, name: &str) -> Result<Option<NodeInfo>, ErrorBody> {
        let Some(value) = self.nodes.get(name).await.map_err(internal)? else {
            return Ok(None);
        };
        serde_json::from_slice(&value).map(Some).map_err(internal)
    }

    /// A client of `node`'s service.
    fn client(&self, node: &NodeInfo) -> Result<NatsClient, ErrorBody> {
        let api = node_api(node).ok_or_else(|| ErrorBody {
            code: "node_unreachable".into(),
            message: format!(
                "the node `{}` serves no API under {}",
                node.name,
                node_prefix("PREFIX", &node.name)
            ),
        })?;
        Ok(NatsClient::new(self.nats.clone(), api, &self.server))
    }

    /// A node's answer, its result marked with the node and recorded in
    /// the registry as the operation changed it; the name `reserved` for
    /// a new workspace is its once made, and free again if not.
    fn recording(
        self: Arc<Self>,
        op: Op,
        node: String,
        frames: BoxStream<'static, Frame>,
        reserved: Option<String>,
    ) -> BoxStream<'static, Frame> {
        frames
            .then(move |frame| {
                let (this, node, reserved) = (self.clone(), node.clone(), reserved.clone());
                async move {
                    match frame {
                        Frame::Done(result) => {
                            match this.record(op, &node, &result, reserved.as_deref()).await {
                                Ok(result) => Frame::Done(result),
                                Err(error) => Frame::Failed(error),
                            }
                        }
                        Frame::Failed(error) => {
                            if let Some(name) = &reserved
                                && let Err(e) = this.placements.release(name).await
                            {
                                tracing::warn!(%name, error = %e, "cannot free a name");
                            }
                            Frame::Failed(error)
                        }
                        item => item,
                    }
                }
            })
            .boxed()
    }

    async fn record(
        &self,
        op: Op,
        node: &str,
        result: &Bytes,
        reserved: Option<&str>,
    ) -> Result<Bytes, ErrorBody> {
        let mark = |value: &mut Value| {
            if let Some(object) = value.as_object_mut() {
                object.insert("node".into(), Value::String(node.into()));
            }
        };
        let decode = |value: &Value| {
            serde_json::from_value::<Workspace>(value.clone()).map_err(|e| ErrorBody {
                code: "internal".into(),
                message: format!("the node `{node}` answered {}: {e}", op.subject()),
            })
        };
        let failed = |ws: &Workspace, e: ClusterError| ErrorBody {
            code: "internal".into(),
            message: format!(
                "the workspace {} on the node `{node}`: the cluster's registry failed: {e}",
                ws.id
            ),
        };
        match op {
            Op::Create | Op::Start | Op::Stop | Op::Reset | Op::Remove | Op::Show => {
                let mut value: Value = serde_json::from_slice(result).map_err(internal)?;
                mark(&mut value);
                let ws = decode(&value)?;
                let recorded = match op {
                    Op::Create => match self.placements.create(&ws).await {
                        Ok(()) => match reserved {
                            Some(name) => self.placements.claim(name, ws.id.as_str()).await,
                            None => Ok(()),
                        },
                        Err(e) => Err(e),
                    },
                    Op::Remove => self.placements.remove(&ws).await,
                    Op::Show => Ok(()),
                    _ => self.placements.update(&ws).await,
                };
                recorded.map_err(|e| failed(&ws, e))?;
                Ok(value.to_string().into())
            }
            Op::Fork => {
                let mut value: Value = serde_json::from_slice(result).map_err(internal)?;
                if let Some(forks) = value.get_mut("workspaces").and_then(Value::as_array_mut) {
                    for fork in forks {
                        mark(fork);
                        let ws = decode(fork)?;
                        self.placements
                            .create(&ws)
                            .await
                            .map_err(|e| failed(&ws, e))?;
                    }
                }
                Ok(value.to_string().into())
            }
            _ => Ok(result.clone()),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(op: Op, payload: &[u8]) -> Result<T, ErrorBody> {
    // An operation without arguments may be sent an empty payload.
    let payload = if payload.is_empty() { b"{}" } else { payload };
    serde_json::from_slice(payload).map_err(|e| invalid(op, e))
}

fn invalid(op: Op, detail: impl std::fmt::Display) -> ErrorBody {
    ErrorBody {
        code: "invalid_body".into(),
        message: format!("the {} request: {detail}", op.subject()),
    }
}

fn internal(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody {
        code: "internal".into(),
        message: e.to_string(),
    }
}

fn done(value: &impl serde::Serialize) -> BoxStream<'static, Frame> {
    let frame = match serde_json::to_vec(value) {
        Ok(json) => Frame::Done(json.into()),
        Err(e) => Frame::Failed(internal(e)),
    };
    stream::once(async move { frame }).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claiming(name: &str, api: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            arch: "x86_64".into(),
            runtimes: vec!["local".into()],
            slots: 1,
            running: 0,
            cache_keys: Vec::new(),
            api: Some(api.into()),
            capacity: None,
            started_at: 0,
            heartbeat_at: 0,
        }
    }

    #[test]
    fn a_node_record_naming_the_controllers_subjects_or_another_nodes_is_not_forwarded_to() {
        assert_eq!(
            node_api(&claiming("a", "berth.v1.node.a")),
            Some("berth.v1.node.a")
        );
        assert_eq!(
            node_api(&claiming("a", "team.x.node.a")),
            Some("team.x.node.a")
        );
        for api in [
            "berth.v1",
            "berth.v1.node.b",
            "berth.v1.node.xa",
            ".node.a",
            "berth.*.node.a",
            "berth.>.node.a",
            "node.a",
        ] {
            assert_eq!(node_api(&claiming("a", api)), None, "{api}");
        }
    }
}
