//! The controller's side of the job queue, and how several controllers
//! share runs. Every change to a run is an event in one stream, kept:
//! runs made, cancelled and retried, and tasks dispatched (decided by a
//! controller, see [`crate::runs`]), and what nodes report. Each
//! controller folds that stream, in order, into its own registry through
//! an ordered consumer of its own, with the times the stream recorded: every
//! registry comes to the same state, and a controller started afresh
//! replays everything (a registry records how far it folded, and goes on
//! from there when its controller restarts). A controller decides from its registry which task
//! is due (run concurrency, retries, cancellation) exactly as for local
//! runners, says so as an event, and hands the task to the work queue once
//! its own fold took it; two controllers deciding the same dispatch make
//! one event and one queued task (the same message ids), and a dispatch the
//! fold finds stale (the task moved on meanwhile) is taken by no registry.
//!
//! Fencing: every report names its delivery's token. A later delivery of
//! a task ends the earlier delivery's attempt (its node went silent) and
//! holds the task from then on; the registry refuses the earlier token's
//! result, so no task completes twice.

use crate::wire::{self, Beat, BeatAnswer, Decision, Dispatched, Event};
use crate::{ClusterError, QueueSettings};
use async_nats::jetstream::{self, consumer, stream};
use berth_core::Clock;
use berth_core::job::{Finish, NewRun, NewTask, RetryScope, TaskState};
use berth_store::{Store, StoreError};
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// How the registry names the holder of a task handed to the work queue
/// that no node took yet.
pub const DISPATCHED: &str = "work queue";

/// How soon an event that could not be applied is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How often an event is tried before it is dropped.
const APPLY_TRIES: u32 = 30;

/// How long a decision may take to come back through the fold.
const FOLD_WAIT: Duration = Duration::from_secs(30);

/// How many refused decisions are remembered for their deciders.
const REFUSALS: usize = 256;

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
    /// The stream sequence the fold has passed.
    applied: Arc<watch::Sender<u64>>,
    /// Told when the fold applied what may make a task due (a run
    /// started or retried, a task finished, freeing its run's slot), so
    /// that it is dispatched at once rather than at the next poll.
    due: Arc<Notify>,
    /// The decisions the fold refused lately, by stream sequence.
    refused: Arc<Mutex<VecDeque<(u64, StoreError)>>>,
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
            applied: Arc::new(watch::Sender::new(0)),
            due: Arc::new(Notify::new()),
            refused: Arc::new(Mutex::new(VecDeque::new())),
        };
        // Tasks dispatched but perhaps never handed over (the controller
        // stopped in between): handed over again under the same token,
        // which the work queue takes once within its duplicate window;
        // older ones were handed over, or their dispatch is long stale.
        let window = i64::try_from(wire::DUPLICATE_WINDOW.as_millis()).unwrap_or(i64::MAX) / 2;
        let recent = controller.clock.now_ms() - window;
        for claim in controller.store.held_by(DISPATCHED)? {
            if claim.task.started_at.is_some_and(|at| at >= recent) {
                controller
                    .hand_over(claim.task.id.clone(), claim.token)
                    .await?;
            }
        }
        Ok(controller)
    }

    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Folds the events, dispatches and answers heartbeats until
    /// `shutdown`.
    pub async fn serve(&self, shutdown: CancellationToken) -> Result<(), ClusterError> {
        let mut events = self
            .js
            .get_stream(wire::EVENTS_STREAM)
            .await
            .map_err(|e| ClusterError::nats("open the events stream", e))?;
        // Nothing is dispatched before the registry caught up with the
        // stream: a registry that is behind would decide from the past.
        let last = events
            .info()
            .await
            .map_err(|e| ClusterError::nats("read the events stream", e))?
            .state
            .last_sequence;
        let beats = self
            .client
            .queue_subscribe(wire::HEARTBEAT_SUBJECT, "controllers".into())
            .await
            .map_err(|e| ClusterError::nats("answer heartbeats", e))?;
        tokio::join!(
            self.fold(events, &shutdown),
            self.dispatching(last, &shutdown),
            self.answering(beats, &shutdown),
        );
        Ok(())
    }

    /// Applies the events, in order, from where this registry stopped,
    /// until `shutdown`.
    async fn fold(&self, events: stream::Stream, shutdown: &CancellationToken) {
        let mut messages = None;
        loop {
            let Some(pending) = messages.as_mut() else {
                match self.follow(&events).await {
                    Ok(follow) => messages = Some(follow),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the events stream");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(RETRY) => {}
                        }
                    }
                }
                continue;
            };
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = pending.next() => message,
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read an event");
                    messages = None;
                    continue;
                }
                None => {
                    messages = None;
                    continue;
                }
            };
            let Ok(info) = message.info() else {
                tracing::warn!(subject = %message.subject, "an event without its place in the stream");
                continue;
            };
            let seq = info.stream_sequence;
            // The time the stream recorded it, in ms since the Unix epoch.
            let at = i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000)
                .unwrap_or(i64::MAX);
            // An event that cannot be applied for now is tried again, in
            // its place, for a while; one that never can is dropped.
            let mut tries = 1;
            while !self.apply(&message, seq, at).await {
                if tries == APPLY_TRIES {
                    tracing::error!(seq, subject = %message.subject, "an event is dropped: the registry kept refusing it");
                    break;
                }
                tries += 1;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
            if let Err(e) = self.store.set_fold_position(wire::EVENTS_STREAM, seq) {
                tracing::warn!(seq, error = %e, "cannot record how far the events were applied");
            }
            self.applied.send_replace(seq);
        }
    }

    /// The events after the last one this registry applied, in order.
    async fn follow(
        &self,
        events: &stream::Stream,
    ) -> Result<consumer::pull::Ordered, ClusterError> {
        let position = self.store.fold_position(wire::EVENTS_STREAM)?;
        events
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: position + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::nats("follow the events stream", e))?
            .messages()
            .await
            .map_err(|e| ClusterError::nats("follow the events stream", e))
    }

    /// Publishes a decision to the events stream and waits until this
    /// controller's registry applied it; answers why it was refused, if
    /// it was.
    pub(crate) async fn decide(&self, decision: &Decision) -> Result<(), ClusterError> {
        let (subject, id) = decision.subject_and_id();
        let body =
            serde_json::to_vec(decision).map_err(|e| ClusterError::nats("encode a decision", e))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let ack = self
            .js
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(|e| ClusterError::nats("publish a decision", e))?
            .await
            .map_err(|e| ClusterError::nats("store a decision", e))?;
        let seq = ack.sequence;
        let mut applied = self.applied.subscribe();
        match tokio::time::timeout(FOLD_WAIT, applied.wait_for(|passed| *passed >= seq)).await {
            Ok(Ok(_)) => {}
            _ => {
                return Err(ClusterError::nats(
                    format!(
                        "apply the decision at sequence {seq} of {}",
                        wire::EVENTS_STREAM
                    ),
                    format!("this controller's registry did not within {FOLD_WAIT:?}"),
                ));
            }
        }
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        match refused.iter().position(|(at, _)| *at == seq) {
            Some(i) => Err(refused.remove(i).map(|(_, e)| e.into()).unwrap_or_else(|| {
                ClusterError::Undecodable(format!("the decision at sequence {seq}"))
            })),
            None => Ok(()),
        }
    }

    /// Dispatches due tasks as soon as the fold applied what may make one
    /// due, and every `poll` (for runs made straight in the registry and
    /// retries whose time came), once the fold passed `from`, until
    /// `shutdown`.
    async fn dispatching(&self, from: u64, shutdown: &CancellationToken) {
        let mut applied = self.applied.subscribe();
        let caught_up = self.store.fold_position(wire::EVENTS_STREAM).unwrap_or(0) >= from;
        if !caught_up {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = applied.wait_for(|passed| *passed >= from) => {}
            }
        }
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                () = self.due.notified() => {}
            }
            if let Err(e) = self.dispatch(shutdown).await {
                tracing::warn!(error = %e, "cannot dispatch");
            }
        }
    }

    /// Shares the runs made straight in the registry, then hands every
    /// due task to the work queue.
    async fn dispatch(&self, shutdown: &CancellationToken) -> Result<(), ClusterError> {
        for (run, spec, tasks) in self.store.unshared_runs()? {
            // A run that went on here before the cluster knew it (made
            // before this registry joined one) is left out: another
            // registry would take its tasks as never run.
            if tasks
                .iter()
                .any(|t| t.state != TaskState::Queued || t.attempts > 0)
            {
                tracing::info!(run = %run.id, "a run older than the cluster is not shared");
                self.store.mark_shared(&run.id)?;
                continue;
            }
            self.decide(&Decision::Created {
                run: run.id,
                job: run.job,
                spec,
                trigger: run.trigger,
                concurrency: run.concurrency,
                tasks: tasks
                    .into_iter()
                    .map(|t| wire::NewTaskRecord {
                        id: t.id,
                        url: t.url,
                        reference: t.reference,
                        credential: t.credential,
                    })
                    .collect(),
            })
            .await?;
        }
        while let Some((task, attempt)) = self.store.due_task(self.clock.now_ms())? {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let token = wire::dispatch_token(&task, attempt);
            self.decide(&Decision::Dispatched {
                task: task.clone(),
                attempt,
                token: token.clone(),
            })
            .await?;
            // The fold took it, unless it was stale; a node may have
            // started it already (another controller handed it over).
            let held = self.store.held_token(&task)?;
            let record = self.store.task(&task)?;
            if held.as_deref() == Some(token.as_str())
                && record.runner.as_deref() == Some(DISPATCHED)
            {
                while let Err(e) = self.hand_over(task.clone(), token.clone()).await {
                    tracing::warn!(task = %task, error = %e, "cannot hand a task to the work queue");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Puts the task held under `token` on the work queue.
    async fn hand_over(&self, task: String, token: String) -> Result<(), ClusterError> {
        let record = self.store.task(&task)?;
        let spec = self.store.run_spec(&record.run_id)?;
        let dispatched = Dispatched {
            task: record,
            token,
            spec,
        };
        let body =
            serde_json::to_vec(&dispatched).map_err(|e| ClusterError::nats("encode a task", e))?;
        let mut headers = async_nats::HeaderMap::new();
        // A task handed over twice (by two controllers, or by one
        // restarted in between) is queued once.
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

    /// Answers heartbeats until `shutdown`.
    async fn answering(&self, mut beats: async_nats::Subscriber, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                beat = beats.next() => match beat {
                    Some(beat) => self.answer(beat).await,
                    None => return,
                },
            }
        }
    }

    /// Applies one event (a node's word, a controller's decision, or
    /// JetStream's word that a task was delivered as often as allowed) to
    /// the registry, as of `at`, the time the stream recorded it.
    /// Answers false when the event should come back later (the registry
    /// or the object store failed).
    async fn apply(&self, message: &jetstream::Message, seq: u64, at: i64) -> bool {
        let subject = message.subject.as_str();
        let result = if subject == wire::max_deliveries_subject() {
            self.exhausted(&message.payload).await
        } else if subject.starts_with(wire::RUNS_PREFIX) {
            match serde_json::from_slice::<Decision>(&message.payload) {
                Ok(decision) => match self.apply_decision(decision, at) {
                    Err(ClusterError::Store(e)) if !transient(&e) => {
                        tracing::info!(seq, error = %e, "a decision is refused");
                        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
                        if refused.len() == REFUSALS {
                            refused.pop_front();
                        }
                        refused.push_back((seq, e));
                        Ok(())
                    }
                    other => other,
                },
                Err(e) => Err(ClusterError::Undecodable(format!(
                    "the decision on {subject}: {e}"
                ))),
            }
        } else {
            match serde_json::from_slice::<Event>(&message.payload) {
                Ok(event) => self.apply_event(event, at).await,
                Err(e) => Err(ClusterError::Undecodable(format!(
                    "the event on {subject}: {e}"
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

    /// Applies a controller's decision.
    fn apply_decision(&self, decision: Decision, at: i64) -> Result<(), ClusterError> {
        match decision {
            Decision::Created {
                run,
                job,
                spec,
                trigger,
                concurrency,
                tasks,
            } => {
                // The job's spec as its latest run started it; its
                // schedule stays with the registry that set it.
                self.store.upsert_job(&job, &spec, None, at)?;
                let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
                let new = NewRun {
                    job,
                    spec,
                    trigger,
                    concurrency,
                    tasks: tasks
                        .into_iter()
                        .map(|t| NewTask {
                            url: t.url,
                            reference: t.reference,
                            credential: t.credential,
                        })
                        .collect(),
                };
                self.store.create_run_as(&run, &ids, &new, true, at)?;
                self.due.notify_one();
            }
            Decision::CancelRun { run } => {
                self.store.cancel_run(&run, at)?;
            }
            Decision::CancelTask { task } => {
                self.store.cancel_task(&task, at)?;
            }
            Decision::Retry { run, task } => {
                let scope = match task {
                    Some(task) => RetryScope::One(task),
                    None => RetryScope::Failed,
                };
                self.store.retry_tasks(&run, &scope, at)?;
                self.due.notify_one();
            }
            Decision::Dispatched {
                task,
                attempt,
                token,
            } => {
                // Stale (the task moved on since it was decided): taken by
                // no registry.
                self.store
                    .claim_named(&task, attempt, &token, DISPATCHED, at)?;
            }
            Decision::Exhausted {
                task,
                dispatch,
                deliveries,
            } => {
                if let Some(held) = self.store.held_token(&task)?
                    && wire::parse_token(&held).0 == dispatch
                {
                    let runner = self.store.task(&task)?.runner.unwrap_or_else(|| "?".into());
                    let resets = deliveries.saturating_sub(1);
                    let finish = Finish {
                        state: Some(TaskState::Failed),
                        error: Some(format!(
                            "its runner `{runner}` died: the task was delivered again {resets} \
                             time(s), the most allowed, and no runner finished it"
                        )),
                        ..Finish::default()
                    };
                    self.store.finish_task(&task, &held, &finish, at)?;
                }
            }
        }
        Ok(())
    }

    async fn apply_event(&self, event: Event, at: i64) -> Result<(), ClusterError> {
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
                        .hand_over(&task, &held, &token, &runner, &error, at)?;
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
                self.store.append_log(&task, attempt, at, &event)?;
            }
            Event::Finished {
                task,
                token,
                outcome,
            } => {
                // The patch stays in its bucket: a controller started
                // afresh folds this result too.
                let patch = if outcome.patch {
                    Some(self.read_patch(&token).await?)
                } else {
                    None
                };
                self.store
                    .finish_task(&task, &token, &outcome.into_finish(patch), at)?;
                self.due.notify_one();
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
    /// the first controller to read JetStream's word says so as a
    /// decision (which every registry folds: the task fails saying its
    /// runner died), and takes the task off the work queue.
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
            // Finished meanwhile, or another controller said so: nothing
            // to do.
            Err(_) => return Ok(()),
        };
        let dispatched: Dispatched = serde_json::from_slice(&message.payload)
            .map_err(|e| ClusterError::Undecodable(format!("an exhausted task: {e}")))?;
        let task = dispatched.task.id;
        let decision = Decision::Exhausted {
            task: task.clone(),
            dispatch: dispatched.token,
            deliveries: advisory.deliveries,
        };
        let (subject, id) = decision.subject_and_id();
        let body = serde_json::to_vec(&decision)
            .map_err(|e| ClusterError::nats("encode a decision", e))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        // Not waited for: it comes through this fold after this event.
        self.js
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(|e| ClusterError::nats("publish a decision", e))?
            .await
            .map_err(|e| ClusterError::nats("store a decision", e))?;
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

/// Whether the registry may take an event it failed to take now later
/// (its database was busy), rather than never.
fn transient(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::Database { .. } | StoreError::CreateDir { .. }
    )
}
