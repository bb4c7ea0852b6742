//! `GET /v1/events`: which of the server's lists changed — its workspaces,
//! its jobs (with their last runs and those runs' tasks), the cluster's
//! nodes — pushed as server-sent events or NDJSON, so that a page redraws
//! a list when it changes rather than asking again and again.
//!
//! One watcher per server serves every subscriber, and works only while
//! someone listens. The registry is shared with other processes (the CLI
//! writes it directly), so no notification inside this process sees every
//! change: the watcher reads the registry's data version (a microsecond's
//! read on a handle of its own) every [`CHECK`], and only when it moved
//! reads the lists through the service layer and compares them with what
//! it saw, so that a heartbeat or a log line is not told as a change of a
//! list. The nodes' changes come from the cluster directory's watch.

use crate::AppState;
use crate::stream::{Format, negotiate, streamed};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use berth_jobs::Jobs;
use berth_provider::Provider;
use futures::{Stream, StreamExt as _, stream};
use serde::{Deserialize, Serialize};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How often the watcher looks at the registry's data version.
const CHECK: Duration = Duration::from_millis(200);

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

/// A list that changed, or `ready` when the stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    /// The stream is open: every change from now on is told.
    Ready,
    Workspaces,
    /// The jobs, their last runs or those runs' tasks.
    Jobs,
    /// The cluster's nodes (joined, beat, left or expired).
    Nodes,
}

/// One event of `GET /v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListChanged {
    /// What changed; read the list again to see how.
    #[serde(rename = "type")]
    pub kind: ListKind,
}

/// Tells when the server's lists change, as server-sent events (each
/// event named by its `type`) or NDJSON: `ready` first, then `workspaces`,
/// `jobs` or `nodes` each time that list changed. It carries no list:
/// the client reads the list again, with its own filters.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    responses(
        (status = 200, description = "The lists' changes", content(
            (ListChanged = "text/event-stream"),
            (ListChanged = "application/x-ndjson"))),
    )
)]
pub(crate) async fn events(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let format = match negotiate(&headers, true) {
        Format::Json => Format::NdJson,
        other => other,
    };
    streamed(format, state.lists.subscribe(&state))
}

/// How often each list changed, and how often the watcher read the lists,
/// since the watcher started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Generations {
    readings: u64,
    workspaces: u64,
    jobs: u64,
    nodes: u64,
}

impl Generations {
    /// The lists that moved from `before` to `self`.
    fn moved(&self, before: &Generations) -> Vec<ListKind> {
        [
            (self.workspaces != before.workspaces, ListKind::Workspaces),
            (self.jobs != before.jobs, ListKind::Jobs),
            (self.nodes != before.nodes, ListKind::Nodes),
        ]
        .into_iter()
        .filter_map(|(moved, kind)| moved.then_some(kind))
        .collect()
    }
}

/// The server's one watcher of its lists, started by its first subscriber.
#[derive(Clone, Default)]
pub(crate) struct Lists {
    watching: Arc<OnceLock<watch::Receiver<Generations>>>,
    /// Subscriptions so far: a new one makes the watcher read the lists.
    joined: Arc<AtomicU64>,
}

impl Lists {
    /// `ready` once the watcher read the lists after this call (so that
    /// what the subscriber reads from then on is what later changes are
    /// told against), then each change.
    fn subscribe(&self, state: &AppState) -> impl Stream<Item = ListChanged> + Send + 'static {
        let mut receiver = self
            .watching
            .get_or_init(|| {
                let (sender, receiver) = watch::channel(Generations::default());
                tokio::spawn(watcher(
                    sender,
                    self.joined.clone(),
                    state.provider.clone(),
                    state.jobs.clone(),
                    state.cluster.clone(),
                ));
                receiver
            })
            .clone();
        let start = *receiver.borrow_and_update();
        self.joined.fetch_add(1, Ordering::Relaxed);
        stream::unfold((receiver, None), move |(mut receiver, seen)| async move {
            receiver.changed().await.ok()?;
            let now = *receiver.borrow_and_update();
            let told = match seen {
                None if now.readings == start.readings => {
                    return Some((Vec::new(), (receiver, None)));
                }
                None => vec![ListKind::Ready],
                Some(seen) => now.moved(&seen),
            };
            Some((told, (receiver, Some(now))))
        })
        .flat_map(stream::iter)
        .map(|kind| ListChanged { kind })
    }
}

/// Bumps a list's generation each time it changes, while anyone listens
/// (the [`Lists`] keeps one receiver itself).
async fn watcher(
    sender: watch::Sender<Generations>,
    joined: Arc<AtomicU64>,
    provider: Provider,
    jobs: Jobs,
    cluster: Option<std::sync::Arc<dyn crate::cluster::NodeDirectory>>,
) {
    // A handle of the watcher's own, so that every write — this
    // process's too — moves its data version.
    let registry = berth_store::Store::open(provider.home())
        .inspect_err(|e| tracing::warn!(error = %e, "cannot watch the registry; reading the lists every time"))
        .ok();
    let mut nodes = match &cluster {
        Some(directory) => match directory.changes().await {
            Ok(changes) => changes.boxed(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the cluster's nodes");
                stream::pending().boxed()
            }
        },
        None => stream::pending().boxed(),
    };
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut version = None;
    let mut seen = (None, None);
    let mut subscriptions = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if sender.receiver_count() <= 1 {
                    // Nobody listens: the next listener starts afresh.
                    (version, seen) = (None, (None, None));
                    continue;
                }
                let now = registry.as_ref().and_then(|r| r.data_version().ok());
                let joins = joined.load(Ordering::Relaxed);
                if now.is_some() && now == version && joins == subscriptions {
                    continue;
                }
                (version, subscriptions) = (now, joins);
                // A first reading is what later ones are compared with.
                let workspaces = workspaces_fingerprint(&provider);
                let jobs = jobs_fingerprint(&jobs);
                let moved = |now: Option<u64>, seen: Option<u64>| {
                    u64::from(now.is_some() && seen.is_some() && now != seen)
                };
                sender.send_modify(|generations| {
                    generations.readings += 1;
                    generations.workspaces += moved(workspaces, seen.0);
                    generations.jobs += moved(jobs, seen.1);
                });
                seen = (workspaces.or(seen.0), jobs.or(seen.1));
            }
            change = nodes.next() => match change {
                Some(()) => { sender.send_modify(|generations| generations.nodes += 1); }
                None => {
                    tracing::warn!("the watch of the cluster's nodes ended");
                    nodes = stream::pending().boxed();
                }
            },
        }
    }
}

/// What the workspaces' list shows, hashed; `None` when it cannot be read.
fn workspaces_fingerprint(provider: &Provider) -> Option<u64> {
    let workspaces = provider.list(false).ok()?;
    let mut hasher = DefaultHasher::new();
    for w in &workspaces {
        (w.id.as_str(), &w.name, &w.runtime, &w.labels, &w.error).hash(&mut hasher);
        serde_json::to_string(&w.state).ok()?.hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// What the jobs' list shows — each job, its last run and the states of
/// that run's tasks — hashed; `None` when it cannot be read.
fn jobs_fingerprint(jobs: &Jobs) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    for job in jobs.jobs().ok()? {
        serde_json::to_string(&job).ok()?.hash(&mut hasher);
        if let Some(run) = &job.last_run {
            for task in jobs.run(&run.id).ok()?.tasks {
                (task.id, serde_json::to_string(&task.state).ok()?).hash(&mut hasher);
            }
        }
    }
    Some(hasher.finish())
}
