//! What travels between nodes and controllers, and where.
//!
//! ```text
//!  controller ──publish──▶ berth.jobs.tasks ─▶ [BERTH_TASKS work queue] ─pull "runners"─▶ nodes
//!  nodes ──publish──▶ berth.jobs.events.<task> ─▶ [BERTH_EVENTS] ─pull, one consumer each─▶ controllers
//!  controllers ──publish──▶ berth.jobs.runs.<run|task> ─▶ [BERTH_EVENTS] (runs made, cancelled,
//!      retried, tasks dispatched: every controller folds the stream into its registry)
//!  JetStream ──$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.BERTH_TASKS.runners──▶ [BERTH_EVENTS]
//!  nodes ──request──▶ berth.jobs.heartbeat ─▶ a controller (answers continue, cancel or lost)
//!  nodes ──put──▶ object store berth-patches (a result's patch) ─▶ controller
//!  nodes ──put, TTL──▶ key-value berth-nodes (membership)
//!  controllers ──request──▶ berth.v1.node.<name>.<op> (a workspace's node, see `router`)
//!  controllers ──create, update──▶ key-value berth-workspaces (which node holds which workspace)
//!  controllers ──create──▶ key-value berth-workspace-names (names reserved across the cluster)
//! ```

use crate::{ClusterError, QueueSettings};
use async_nats::jetstream::{self, consumer, stream};
use berth_core::job::{Finish, LogEvent, Task, TaskState};
use serde::{Deserialize, Serialize};

pub const TASKS_STREAM: &str = "BERTH_TASKS";
pub const TASKS_SUBJECT: &str = "berth.jobs.tasks";
/// The durable consumer every node's runner pulls from.
pub const RUNNERS: &str = "runners";
pub const EVENTS_STREAM: &str = "BERTH_EVENTS";
pub const EVENTS_PREFIX: &str = "berth.jobs.events";
/// Where controllers say what they decided about runs.
pub const RUNS_PREFIX: &str = "berth.jobs.runs";
/// How long the streams remember a message's id, so that one published
/// twice (by two controllers deciding the same) is kept once.
pub const DUPLICATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);
pub const HEARTBEAT_SUBJECT: &str = "berth.jobs.heartbeat";
pub const PATCHES_BUCKET: &str = "berth-patches";
pub const NODES_BUCKET: &str = "berth-nodes";
pub const WORKSPACES_BUCKET: &str = "berth-workspaces";
pub const WORKSPACE_NAMES_BUCKET: &str = "berth-workspace-names";

/// Where JetStream says a task was delivered as often as allowed.
pub fn max_deliveries_subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{TASKS_STREAM}.{RUNNERS}")
}

/// A task handed to the work queue under the token of the registry's
/// attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dispatched {
    pub task: Task,
    pub token: String,
    pub spec: serde_json::Value,
}

/// The token of the `delivery`th delivery of a task dispatched under
/// `dispatch`: the first delivery keeps the registry's token, later ones
/// add their number, so each delivery's word is fenced from the others'.
pub fn delivery_token(dispatch: &str, delivery: u64) -> String {
    if delivery <= 1 {
        dispatch.to_owned()
    } else {
        format!("{dispatch}.{delivery}")
    }
}

/// The dispatch token and delivery number of a delivery's token.
pub fn parse_token(token: &str) -> (&str, u64) {
    match token.rsplit_once('.') {
        Some((dispatch, n)) => match n.parse() {
            Ok(n) => (dispatch, n),
            Err(_) => (token, 1),
        },
        None => (token, 1),
    }
}

/// How an attempt ended, as a node reports it (its patch, if any, is in
/// the patches bucket under the attempt's token).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub state: Option<TaskState>,
    pub exit_code: Option<i32>,
    pub failed_step: Option<String>,
    pub error: Option<String>,
    pub workspace: Option<String>,
    pub retry_at: Option<i64>,
    pub patch: bool,
}

impl Outcome {
    pub fn of(finish: &Finish) -> Self {
        Outcome {
            state: finish.state,
            exit_code: finish.exit_code,
            failed_step: finish.failed_step.clone(),
            error: finish.error.clone(),
            workspace: finish.workspace.clone(),
            retry_at: finish.retry_at,
            patch: finish.patch.as_ref().is_some_and(|p| !p.is_empty()),
        }
    }

    pub fn into_finish(self, patch: Option<Vec<u8>>) -> Finish {
        Finish {
            state: self.state,
            exit_code: self.exit_code,
            failed_step: self.failed_step,
            error: self.error,
            patch,
            workspace: self.workspace,
            retry_at: self.retry_at,
        }
    }
}

/// What a node says about a task it holds, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Started {
        task: String,
        token: String,
        runner: String,
    },
    Base {
        task: String,
        token: String,
        commit: String,
    },
    Log {
        task: String,
        token: String,
        event: LogEvent,
    },
    Finished {
        task: String,
        token: String,
        outcome: Outcome,
    },
}

impl Event {
    pub fn task(&self) -> &str {
        match self {
            Event::Started { task, .. }
            | Event::Base { task, .. }
            | Event::Log { task, .. }
            | Event::Finished { task, .. } => task,
        }
    }
}

/// A task of a run being made: its id and repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewTaskRecord {
    pub id: String,
    pub url: String,
    pub reference: Option<String>,
    pub credential: Option<String>,
}

/// What a controller decided about runs, in the events stream beside the
/// nodes' word, so that every controller's registry folds the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    /// A run was made with these ids.
    Created {
        run: String,
        job: String,
        spec: serde_json::Value,
        trigger: String,
        concurrency: u32,
        tasks: Vec<NewTaskRecord>,
    },
    CancelRun {
        run: String,
    },
    CancelTask {
        task: String,
    },
    /// The run's failed tasks, or the one named, are queued again.
    Retry {
        run: String,
        task: Option<String>,
    },
    /// The task's attempt number `attempt` goes to the work queue under
    /// `token`.
    Dispatched {
        task: String,
        attempt: u32,
        token: String,
    },
    /// The work queue delivered the dispatch `dispatch` as often as
    /// allowed and no node finished it.
    Exhausted {
        task: String,
        dispatch: String,
        deliveries: u64,
    },
}

impl Decision {
    /// The subject it is published on, and its message id: the same
    /// decision made by two controllers is kept once.
    pub fn subject_and_id(&self) -> (String, String) {
        let (about, id) = match self {
            Decision::Created { run, .. } => (run, format!("created.{run}")),
            Decision::Dispatched { task, token, .. } => (task, format!("dispatched.{token}")),
            Decision::Exhausted { task, dispatch, .. } => (task, format!("exhausted.{dispatch}")),
            // Each its own: two cancels are as one, a retry twice is two.
            Decision::CancelRun { run } | Decision::Retry { run, .. } => {
                (run, berth_core::job::generate_id())
            }
            Decision::CancelTask { task } => (task, berth_core::job::generate_id()),
        };
        (format!("{RUNS_PREFIX}.{about}"), id)
    }
}

/// The token of a task's attempt number `attempt` dispatched to the work
/// queue: the same wherever it is decided, so that the work queue takes it
/// once.
pub fn dispatch_token(task: &str, attempt: u32) -> String {
    format!("{task}-{attempt}")
}

/// A node's heartbeat of a task it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Beat {
    pub task: String,
    pub token: String,
}

/// A controller's answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BeatAnswer {
    Continue,
    Cancel,
    /// The delivery no longer holds its task.
    Lost,
}

/// The work queue, its consumer and the events stream, made if missing.
pub async fn ensure_queue(
    js: &jetstream::Context,
    settings: QueueSettings,
) -> Result<(stream::Stream, consumer::PullConsumer), ClusterError> {
    let tasks = js
        .get_or_create_stream(stream::Config {
            name: TASKS_STREAM.into(),
            subjects: vec![TASKS_SUBJECT.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::nats(format!("make the stream {TASKS_STREAM}"), e))?;
    let consumer = tasks
        .get_or_create_consumer(
            RUNNERS,
            consumer::pull::Config {
                durable_name: Some(RUNNERS.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                max_deliver: i64::from(settings.max_resets) + 1,
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ClusterError::nats(format!("make the consumer {RUNNERS}"), e))?;
    let events = stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: vec![
            format!("{EVENTS_PREFIX}.>"),
            format!("{RUNS_PREFIX}.>"),
            max_deliveries_subject(),
        ],
        // Kept: a controller started afresh folds the whole stream.
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    let mut made = js
        .get_or_create_stream(events.clone())
        .await
        .map_err(|e| ClusterError::nats(format!("make the stream {EVENTS_STREAM}"), e))?;
    let info = made
        .info()
        .await
        .map_err(|e| ClusterError::nats(format!("read the stream {EVENTS_STREAM}"), e))?;
    // A stream made by an earlier berth (events dropped once applied).
    if info.config.retention != events.retention || info.config.subjects != events.subjects {
        js.update_stream(events)
            .await
            .map_err(|e| ClusterError::nats(format!("update the stream {EVENTS_STREAM}"), e))?;
    }
    Ok((tasks, consumer))
}

/// The bucket a result's patch travels through.
pub async fn patches(
    js: &jetstream::Context,
) -> Result<jetstream::object_store::ObjectStore, ClusterError> {
    if let Ok(store) = js.get_object_store(PATCHES_BUCKET).await {
        return Ok(store);
    }
    match js
        .create_object_store(jetstream::object_store::Config {
            bucket: PATCHES_BUCKET.into(),
            ..Default::default()
        })
        .await
    {
        Ok(store) => Ok(store),
        // Another process made it meanwhile.
        Err(e) => js
            .get_object_store(PATCHES_BUCKET)
            .await
            .map_err(|_| ClusterError::nats(format!("make the bucket {PATCHES_BUCKET}"), e)),
    }
}
