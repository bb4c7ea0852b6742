//! A node's side of the job queue, as a [`TaskQueue`] its runner uses.
//!
//! A claim pulls one task from the work queue (waiting a little for one);
//! the delivery's number makes the attempt's token, so the word of an
//! earlier delivery (a node that was thought dead) is refused by the
//! controller. A heartbeat is an in-progress acknowledgement, which keeps
//! JetStream from delivering the task again, and a question to the
//! controllers, whose answer carries cancellation. Logs, the base commit
//! and the result go to the events stream; the task is acknowledged (and
//! so leaves the work queue) once its result is stored there. A node that
//! dies acknowledges nothing: after the ack wait JetStream delivers the
//! task to another node, up to the reset limit.

use crate::wire::{self, Beat, BeatAnswer, Dispatched, Event, Outcome};
use crate::{ClusterError, QueueSettings};
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use async_trait::async_trait;
use berth_core::job::{Finish, LogEvent, NewRun, RetryScope, Run, Stalled, Task, TaskState};
use berth_jobs::queue::{Claim, Heartbeat, QueueError, TaskQueue, WorkSender, WorkSignal};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a heartbeat waits for a controller's answer.
const BEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// A delivery the node holds.
struct Held {
    token: String,
    task: Task,
    message: Arc<jetstream::Message>,
}

pub struct NodeQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    consumer: PullConsumer,
    patches: jetstream::object_store::ObjectStore,
    /// How long a claim waits for a task to arrive.
    wait: Duration,
    held: Mutex<HashMap<String, Held>>,
}

fn other(what: &str, err: impl std::fmt::Display) -> QueueError {
    QueueError::Other(ClusterError::nats(what, err).to_string())
}

impl NodeQueue {
    /// Joins the work queue (making it if no controller did yet).
    pub async fn open(
        client: async_nats::Client,
        settings: QueueSettings,
        wait: Duration,
    ) -> Result<Self, ClusterError> {
        let js = jetstream::new(client.clone());
        let (_, consumer) = wire::ensure_queue(&js, settings).await?;
        let patches = wire::patches(&js).await?;
        Ok(NodeQueue {
            client,
            js,
            consumer,
            patches,
            wait,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// How many tasks the node holds now.
    pub fn load(&self) -> usize {
        self.lock().len()
    }

    /// Gives back every task held, for another node to take at once (the
    /// node is leaving).
    pub async fn release_all(&self) {
        let held: Vec<Arc<jetstream::Message>> =
            self.lock().drain().map(|(_, h)| h.message).collect();
        for message in held {
            if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                tracing::warn!(error = %e, "cannot give a task back");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token of the delivery of `task` the node holds.
    fn token_of(&self, task: &str) -> Option<String> {
        self.lock().get(task).map(|h| h.token.clone())
    }

    async fn send(&self, event: &Event) -> Result<(), QueueError> {
        let subject = format!("{}.{}", wire::EVENTS_PREFIX, event.task());
        let body = serde_json::to_vec(event).map_err(|e| other("encode an event", e))?;
        self.js
            .publish(subject, body.into())
            .await
            .map_err(|e| other("send an event", e))?
            .await
            .map_err(|e| other("store an event", e))?;
        Ok(())
    }

    /// Takes one delivery: parses it, holds it and says it started.
    async fn take(&self, runner: &str, message: jetstream::Message) -> Result<Claim, QueueError> {
        let delivery = message.info().map(|i| i.delivered).unwrap_or(1).max(1) as u64;
        let dispatched: Dispatched = match serde_json::from_slice(&message.payload) {
            Ok(d) => d,
            Err(e) => {
                // Nothing can run it; keep it from coming back.
                let _ = message.ack_with(AckKind::Term).await;
                return Err(other("read a task from the work queue", e));
            }
        };
        let token = wire::delivery_token(&dispatched.token, delivery);
        let mut task = dispatched.task;
        task.state = TaskState::Running;
        task.runner = Some(runner.to_owned());
        self.lock().insert(
            task.id.clone(),
            Held {
                token: token.clone(),
                task: task.clone(),
                message: Arc::new(message),
            },
        );
        self.send(&Event::Started {
            task: task.id.clone(),
            token: token.clone(),
            runner: runner.to_owned(),
        })
        .await?;
        Ok(Claim {
            task,
            token,
            spec: dispatched.spec,
            // Cancellation reaches a node on its heartbeats.
            cancelled: tokio_util::sync::CancellationToken::new(),
        })
    }
}

#[async_trait]
impl TaskQueue for NodeQueue {
    async fn enqueue(&self, run: NewRun) -> Result<Run, QueueError> {
        Err(QueueError::Other(format!(
            "a node runs tasks but does not start runs (job `{}`): start it on a controller",
            run.job
        )))
    }

    fn work(&self) -> WorkSignal {
        // A claim waits for work itself; nothing else wakes a node's runner.
        WorkSender::default().subscribe()
    }

    async fn cancel_run(&self, run: &str) -> Result<Run, QueueError> {
        Err(QueueError::Other(format!(
            "a node runs tasks but does not cancel runs (run `{run}`): cancel it on a controller"
        )))
    }

    async fn cancel_task(&self, task: &str) -> Result<Task, QueueError> {
        Err(QueueError::Other(format!(
            "a node runs tasks but does not cancel them (task `{task}`): cancel it on a controller"
        )))
    }

    async fn retry(&self, run: &str, _scope: &RetryScope) -> Result<Vec<Task>, QueueError> {
        Err(QueueError::Other(format!(
            "a node runs tasks but does not retry them (run `{run}`): retry it on a controller"
        )))
    }

    async fn claim(&self, runner: &str) -> Result<Option<Claim>, QueueError> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(1)
            .expires(self.wait)
            .messages()
            .await
            .map_err(|e| other("pull from the work queue", e))?;
        match batch.next().await {
            Some(Ok(message)) => self.take(runner, message).await.map(Some),
            Some(Err(e)) => Err(other("pull from the work queue", e)),
            None => Ok(None),
        }
    }

    async fn heartbeat(&self, task: &str, token: &str) -> Result<Heartbeat, QueueError> {
        let message = match self.lock().get(task) {
            Some(held) if held.token == token => held.message.clone(),
            _ => return Err(QueueError::Lost { task: task.into() }),
        };
        message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| other("acknowledge progress", e))?;
        let beat = serde_json::to_vec(&Beat {
            task: task.into(),
            token: token.into(),
        })
        .map_err(|e| other("encode a heartbeat", e))?;
        let answer = tokio::time::timeout(
            BEAT_TIMEOUT,
            self.client.request(wire::HEARTBEAT_SUBJECT, beat.into()),
        )
        .await;
        // Without a controller to ask, the task goes on: only the ack keeps
        // it, and the result waits in the events stream.
        let Ok(Ok(reply)) = answer else {
            return Ok(Heartbeat::Continue);
        };
        match serde_json::from_slice::<BeatAnswer>(&reply.payload) {
            Ok(BeatAnswer::Cancel) => Ok(Heartbeat::Cancel),
            Ok(BeatAnswer::Lost) => {
                self.lock().remove(task);
                Err(QueueError::Lost { task: task.into() })
            }
            _ => Ok(Heartbeat::Continue),
        }
    }

    async fn set_base(&self, task: &str, token: &str, commit: &str) -> Result<(), QueueError> {
        self.send(&Event::Base {
            task: task.into(),
            token: token.into(),
            commit: commit.into(),
        })
        .await
    }

    async fn log(&self, task: &str, _attempt: u32, event: LogEvent) -> Result<(), QueueError> {
        let Some(token) = self.token_of(task) else {
            return Err(QueueError::Lost { task: task.into() });
        };
        self.send(&Event::Log {
            task: task.into(),
            token,
            event,
        })
        .await
    }

    async fn complete(&self, task: &str, token: &str, finish: Finish) -> Result<Task, QueueError> {
        let outcome = Outcome::of(&finish);
        if outcome.patch
            && let Some(patch) = &finish.patch
        {
            let mut reader: &[u8] = patch;
            self.patches
                .put(token, &mut reader)
                .await
                .map_err(|e| other("store a patch", e))?;
        }
        self.send(&Event::Finished {
            task: task.into(),
            token: token.into(),
            outcome,
        })
        .await?;
        let held = {
            let mut map = self.lock();
            match map.get(task) {
                Some(h) if h.token == token => map.remove(task),
                _ => None,
            }
        };
        let Some(held) = held else {
            return Err(QueueError::Lost { task: task.into() });
        };
        held.message
            .double_ack()
            .await
            .map_err(|e| other("acknowledge a finished task", e))?;
        let mut done = held.task;
        done.state = finish.state.unwrap_or(TaskState::Errored);
        done.exit_code = finish.exit_code;
        done.failed_step = finish.failed_step;
        done.error = finish.error;
        done.workspace = finish.workspace;
        done.patch_size = finish.patch.map_or(0, |p| p.len() as u64);
        Ok(done)
    }

    /// JetStream delivers a silent node's tasks again by itself.
    async fn requeue_stalled(&self) -> Result<Vec<Stalled>, QueueError> {
        Ok(Vec::new())
    }
}
