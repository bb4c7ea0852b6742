//! The controller's side of the job queue. Runs and tasks stay in the
//! controller's registry, which decides what is due (run concurrency,
//! retries, cancellation) exactly as for local runners; the controller
//! hands each due task to the work queue under its attempt's token, and
//! applies what nodes report, in order, from a durable consumer: a
//! controller restarted mid-run goes on where it stopped.
//!
//! Fencing: every report names its delivery's token. A later delivery of
//! a task ends the earlier delivery's attempt (its node went silent) and
//! holds the task from then on; the registry refuses the earlier token's
//! result, so no task completes twice.

use crate::wire::{self, Beat, BeatAnswer, Dispatched, Event};
use crate::{ClusterError, QueueSettings};
use async_nats::jetstream::{self, AckKind, consumer, stream};
use berth_core::Clock;
use berth_core::job::{Finish, TaskState};
use berth_store::{Store, StoreError};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// How the registry names the holder of a task handed to the work queue
/// that no node took yet.
pub const DISPATCHED: &str = "work queue";

/// How soon an event that could not be applied is tried again.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Controller {
    client: async_nats::Client,
    js: jetstream::Context,
    tasks: stream::Stream,
    patches: jetstream::object_store::ObjectStore,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    /// How often the registry is looked at for due tasks.
    poll: Duration,
}

impl Controller {
    /// Makes the streams and buckets if missing.
    pub async fn open(
        client: async_nats::Client,
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        settings: QueueSettings,
        poll: Duration,
    ) -> Result<Self, ClusterError> {
        let js = jetstream::new(client.clone());
        let (tasks, _) = wire::ensure_queue(&js, settings).await?;
        let patches = wire::patches(&js).await?;
        let controller = Controller {
            client,
            js,
            tasks,
            patches,
            store,
            clock,
            poll,
        };
        // Tasks taken but perhaps never handed over (the controller
        // stopped in between): handed over again under the same token,
        // which the work queue takes once.
        for claim in controller.store.held_by(DISPATCHED)? {
            controller
                .publish(&Dispatched {
                    task: claim.task,
                    token: claim.token,
                    spec: claim.spec,
                })
                .await?;
        }
        Ok(controller)
    }

    /// Dispatches, applies events and answers heartbeats until `shutdown`.
    pub async fn serve(&self, shutdown: CancellationToken) -> Result<(), ClusterError> {
        let events = self
            .js
            .get_stream(wire::EVENTS_STREAM)
            .await
            .map_err(|e| ClusterError::nats("open the events stream", e))?
            .get_or_create_consumer(
                wire::CONTROLLER,
                consumer::pull::Config {
                    durable_name: Some(wire::CONTROLLER.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| ClusterError::nats("make the controller's consumer", e))?;
        let mut stream = events
            .messages()
            .await
            .map_err(|e| ClusterError::nats("read the events stream", e))?;
        let mut beats = self
            .client
            .queue_subscribe(wire::HEARTBEAT_SUBJECT, "controllers".into())
            .await
            .map_err(|e| ClusterError::nats("answer heartbeats", e))?;
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => self.dispatch().await,
                message = stream.next() => match message {
                    Some(Ok(message)) => {
                        // An event that could not be applied for now comes
                        // back; one that never can is dropped.
                        let ack = if self.apply(&message).await {
                            AckKind::Ack
                        } else {
                            AckKind::Nak(Some(RETRY))
                        };
                        if let Err(e) = message.double_ack_with(ack).await {
                            tracing::warn!(error = %e, "cannot acknowledge an event");
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "cannot read an event"),
                    // The pull ended (the connection went away): pull again.
                    None => match events.messages().await {
                        Ok(again) => stream = again,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the events stream");
                            tokio::time::sleep(RETRY).await;
                        }
                    },
                },
                Some(beat) = beats.next() => self.answer(beat).await,
            }
        }
    }

    /// Hands every due task to the work queue.
    async fn dispatch(&self) {
        loop {
            let claim = match self.store.claim_task(DISPATCHED, self.clock.now_ms()) {
                Ok(Some(claim)) => claim,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take a due task");
                    return;
                }
            };
            let (task, token) = (claim.task.id.clone(), claim.token.clone());
            let dispatched = Dispatched {
                task: claim.task,
                token: claim.token,
                spec: claim.spec,
            };
            if let Err(e) = self.publish(&dispatched).await {
                // Back to the registry's queue, to be handed over again.
                let finish = Finish {
                    state: Some(TaskState::Errored),
                    error: Some(format!("cannot hand the task to the work queue: {e}")),
                    retry_at: Some(self.clock.now_ms() + 1000),
                    ..Finish::default()
                };
                if let Err(e) = self
                    .store
                    .finish_task(&task, &token, &finish, self.clock.now_ms())
                {
                    tracing::warn!(task = %task, error = %e, "cannot requeue a task");
                }
                return;
            }
        }
    }

    async fn publish(&self, dispatched: &Dispatched) -> Result<(), ClusterError> {
        let body =
            serde_json::to_vec(dispatched).map_err(|e| ClusterError::nats("encode a task", e))?;
        let mut headers = async_nats::HeaderMap::new();
        // A task handed over twice (a controller restarted between taking
        // and handing it) is queued once.
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            dispatched.token.as_str(),
        );
        self.js
            .publish_with_headers(wire::TASKS_SUBJECT, headers, body.into())
            .await
            .map_err(|e| ClusterError::nats("queue a task", e))?
            .await
            .map_err(|e| ClusterError::nats("queue a task", e))?;
        Ok(())
    }

    /// Applies one event (or JetStream's word that a task was delivered
    /// as often as allowed) to the registry.
    /// Answers false when the event should come back later (the registry
    /// or the object store failed).
    async fn apply(&self, message: &jetstream::Message) -> bool {
        let result = if message.subject.as_str() == wire::max_deliveries_subject() {
            self.exhausted(&message.payload).await
        } else {
            match serde_json::from_slice::<Event>(&message.payload) {
                Ok(event) => self.apply_event(event).await,
                Err(e) => Err(ClusterError::Undecodable(format!(
                    "the event on {}: {e}",
                    message.subject
                ))),
            }
        };
        match result {
            Ok(()) => true,
            Err(ClusterError::Store(StoreError::AttemptLost { task })) => {
                tracing::info!(task = %task, "a report from an attempt that lost its task is refused");
                true
            }
            Err(ClusterError::Undecodable(e)) => {
                tracing::warn!(error = %e, "an unreadable report is dropped");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot apply a node's report; it comes back");
                false
            }
        }
    }

    async fn apply_event(&self, event: Event) -> Result<(), ClusterError> {
        let now = self.clock.now_ms();
        match event {
            Event::Started {
                task,
                token,
                runner,
            } => {
                let Some(held) = self.store.held_token(&task)? else {
                    return Err(StoreError::AttemptLost { task }.into());
                };
                if held == token {
                    self.store.set_task_runner(&task, &token, &runner)?;
                } else if later(&held, &token) {
                    let before = self.store.task(&task)?.runner.unwrap_or_else(|| "?".into());
                    let error = format!(
                        "its runner `{before}` stopped answering; the work queue delivered the \
                         task again, to `{runner}`"
                    );
                    self.store
                        .hand_over(&task, &held, &token, &runner, &error, now)?;
                } else {
                    return Err(StoreError::AttemptLost { task }.into());
                }
            }
            Event::Base {
                task,
                token,
                commit,
            } => self.store.set_base_commit(&task, &token, &commit)?,
            Event::Log { task, token, event } => {
                if self.store.held_token(&task)?.as_deref() != Some(token.as_str()) {
                    return Err(StoreError::AttemptLost { task }.into());
                }
                let attempt = self.store.task(&task)?.attempts;
                self.store.append_log(&task, attempt, now, &event)?;
            }
            Event::Finished {
                task,
                token,
                outcome,
            } => {
                let stored = outcome.patch;
                let patch = if stored {
                    Some(self.read_patch(&token).await?)
                } else {
                    None
                };
                let finished =
                    self.store
                        .finish_task(&task, &token, &outcome.into_finish(patch), now);
                // Kept while the result may still be applied on a retry.
                if stored
                    && matches!(finished, Ok(_) | Err(StoreError::AttemptLost { .. }))
                    && let Err(e) = self.patches.delete(&token).await
                {
                    tracing::warn!(token, error = %e, "cannot remove a delivered patch");
                }
                finished?;
            }
        }
        Ok(())
    }

    /// Reads the patch a node stored under `token`.
    async fn read_patch(&self, token: &str) -> Result<Vec<u8>, ClusterError> {
        let mut object = self
            .patches
            .get(token)
            .await
            .map_err(|e| ClusterError::nats(format!("read the patch {token}"), e))?;
        let mut patch = Vec::new();
        object
            .read_to_end(&mut patch)
            .await
            .map_err(|e| ClusterError::nats(format!("read the patch {token}"), e))?;
        Ok(patch)
    }

    /// A task was delivered as often as allowed and no node finished it:
    /// it fails saying its runner died, and leaves the work queue.
    async fn exhausted(&self, advisory: &[u8]) -> Result<(), ClusterError> {
        #[derive(serde::Deserialize)]
        struct Advisory {
            stream_seq: u64,
            deliveries: u64,
        }
        let advisory: Advisory = serde_json::from_slice(advisory)
            .map_err(|e| ClusterError::Undecodable(format!("a max-deliveries advisory: {e}")))?;
        let message = match self.tasks.get_raw_message(advisory.stream_seq).await {
            Ok(message) => message,
            // Finished meanwhile: nothing to do.
            Err(_) => return Ok(()),
        };
        let dispatched: Dispatched = serde_json::from_slice(&message.payload)
            .map_err(|e| ClusterError::Undecodable(format!("an exhausted task: {e}")))?;
        let task = dispatched.task.id;
        if let Some(held) = self.store.held_token(&task)?
            && wire::parse_token(&held).0 == dispatched.token
        {
            let runner = self.store.task(&task)?.runner.unwrap_or_else(|| "?".into());
            let resets = advisory.deliveries.saturating_sub(1);
            let finish = Finish {
                state: Some(TaskState::Failed),
                error: Some(format!(
                    "its runner `{runner}` died: the task was delivered again {resets} time(s), \
                     the most allowed, and no runner finished it"
                )),
                ..Finish::default()
            };
            self.store
                .finish_task(&task, &held, &finish, self.clock.now_ms())?;
        }
        if let Err(e) = self.tasks.delete_message(advisory.stream_seq).await {
            tracing::warn!(task = %task, error = %e, "cannot remove an exhausted task");
        }
        Ok(())
    }

    /// Answers a node's heartbeat: cancel, go on, or stop (the delivery
    /// lost its task).
    async fn answer(&self, message: async_nats::Message) {
        let Some(reply) = message.reply.clone() else {
            return;
        };
        let answer = match serde_json::from_slice::<Beat>(&message.payload) {
            Ok(beat) => self.beat(&beat),
            Err(_) => BeatAnswer::Continue,
        };
        let body = serde_json::to_vec(&answer).unwrap_or_default();
        if let Err(e) = self.client.publish(reply, body.into()).await {
            tracing::warn!(error = %e, "cannot answer a heartbeat");
        }
    }

    fn beat(&self, beat: &Beat) -> BeatAnswer {
        match self
            .store
            .heartbeat_task(&beat.task, &beat.token, self.clock.now_ms())
        {
            Ok(true) => BeatAnswer::Cancel,
            Ok(false) => BeatAnswer::Continue,
            Err(StoreError::AttemptLost { .. }) => match self.store.held_token(&beat.task) {
                // The delivery's start is not applied yet.
                Ok(Some(held)) if later(&held, &beat.token) => BeatAnswer::Continue,
                Ok(_) => BeatAnswer::Lost,
                Err(_) => BeatAnswer::Continue,
            },
            Err(_) => BeatAnswer::Continue,
        }
    }
}

/// Whether `token` is a later delivery of the dispatch `held` belongs to.
fn later(held: &str, token: &str) -> bool {
    let (held_dispatch, held_delivery) = wire::parse_token(held);
    let (dispatch, delivery) = wire::parse_token(token);
    held_dispatch == dispatch && delivery > held_delivery
}
