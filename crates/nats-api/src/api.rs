//! The whole service layer behind one NATS service: the workspaces'
//! operations answered by a [`Handler`] (this host's provider, or a
//! cluster's controller routing to nodes), jobs by the jobs service, and
//! the nodes by the cluster's directory, as `berth serve` offers them over
//! HTTP.

use crate::protocol::{Op, Scope};
use crate::service::{Frame, Handler, Inputs, answered};
use berth_jobs::Jobs;
use berth_provider::Provider;
use berth_server::ErrorBody;
use berth_server::cluster::{NodeDirectory, NodeList};
use futures::stream::BoxStream;
use std::sync::Arc;

/// The service layer's front end over NATS.
pub struct Api<H> {
    workspaces: H,
    /// The jobs service, and the provider publishing pushes through.
    jobs: Option<(Jobs, Provider)>,
    nodes: Option<Arc<dyn NodeDirectory>>,
}

impl<H: Handler> Api<H> {
    /// Workspaces answered by `workspaces`; no jobs and no cluster.
    pub fn new(workspaces: H) -> Self {
        Api {
            workspaces,
            jobs: None,
            nodes: None,
        }
    }

    /// Jobs and runs answered by `jobs`.
    pub fn with_jobs(mut self, jobs: Jobs, provider: Provider) -> Self {
        self.jobs = Some((jobs, provider));
        self
    }

    /// The cluster's nodes listed from `nodes`.
    pub fn with_nodes(mut self, nodes: Arc<dyn NodeDirectory>) -> Self {
        self.nodes = Some(nodes);
        self
    }
}

impl<H: Handler> Handler for Api<H> {
    fn answer(
        &self,
        op: Op,
        message: &async_nats::Message,
        inputs: Inputs,
    ) -> BoxStream<'static, Frame> {
        match (op.scope(), &self.jobs, &self.nodes) {
            (Scope::Jobs, Some((jobs, provider)), _) => {
                crate::jobs::answer(op, jobs, provider, &message.payload)
            }
            (Scope::Nodes, _, Some(nodes)) => {
                let nodes = nodes.clone();
                answered(async move {
                    let nodes = nodes.list().await.map_err(|e| ErrorBody {
                        code: "cluster_unavailable".into(),
                        message: e.to_string(),
                    })?;
                    Ok::<_, ErrorBody>(NodeList {
                        clustered: true,
                        nodes,
                    })
                })
            }
            _ => self.workspaces.answer(op, message, inputs),
        }
    }
}
