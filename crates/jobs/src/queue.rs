//! The task queue: where runs put their tasks and runners take them.
//!
//! [`TaskQueue`] is what a runner needs: claim the oldest task atomically,
//! heartbeat it (the answer carries cancellation), log, and report the
//! result under the claim's attempt token, which is refused once the task
//! went on without that attempt. [`SqliteQueue`] keeps it in berth's
//! registry; a cluster backs the same trait with a shared work queue.
//!
//! Within one process the queue also signals at once: [`TaskQueue::work`]
//! wakes idle runners when work may have become claimable, and a claim's
//! [`Claim::cancelled`] fires when its task or run is cancelled through the
//! same queue. Work and cancellations from other processes arrive on the
//! runner's slow poll and on heartbeats.

use async_trait::async_trait;
use berth_core::Clock;
use berth_core::job::{Claimed, Finish, LogEvent, NewRun, RetryScope, Run, Stalled, Task};
use berth_store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the queue answers a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    Continue,
    /// The task (or its run) was cancelled: stop it and report `cancelled`.
    Cancel,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The attempt no longer holds its task: its word is refused.
    #[error("task `{task}` is no longer held by this attempt; its result is refused")]
    Lost { task: String },
    #[error(transparent)]
    Store(StoreError),
    /// The queue's backend failed (a cluster's messaging).
    #[error("task queue: {0}")]
    Other(String),
}

impl From<StoreError> for QueueError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::AttemptLost { task } => QueueError::Lost { task },
            other => QueueError::Store(other),
        }
    }
}

/// A claimed task, the token of its attempt and the spec of its run.
#[derive(Debug, Clone)]
pub struct Claim {
    pub task: Task,
    /// The attempt's token: every later word about it must carry it.
    pub token: String,
    pub spec: serde_json::Value,
    /// Fires as soon as the task or its run is cancelled through this
    /// queue in this process; a cancellation made elsewhere is the answer
    /// of the next heartbeat.
    pub cancelled: CancellationToken,
}

/// Tells idle runners that work may have become claimable: a run queued,
/// a task ended (freeing its run's concurrency), tasks requeued or retried.
#[derive(Debug, Clone)]
pub struct WorkSignal(watch::Receiver<u64>);

impl WorkSignal {
    /// Resolves once work was signalled since this signal last resolved
    /// (or was made); a signal is never missed between two waits.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            // The queue is gone: nothing will ever be signalled.
            std::future::pending::<()>().await;
        }
    }
}

/// The sending side of [`WorkSignal`]s, for queue implementations.
#[derive(Debug)]
pub struct WorkSender(watch::Sender<u64>);

impl Default for WorkSender {
    fn default() -> Self {
        WorkSender(watch::Sender::new(0))
    }
}

impl WorkSender {
    pub fn signal(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> WorkSignal {
        WorkSignal(self.0.subscribe())
    }
}

/// The contract every queue keeps:
/// - a task is held by at most one attempt at a time, named by the token
///   its claim returned; any word (heartbeat, base, result) with another
///   token is refused with [`QueueError::Lost`];
/// - claims take the oldest due task of a run that is not cancelled and
///   below its concurrency;
/// - a cancelled run's queued tasks never start, its running ones are told
///   by their heartbeat's answer, and within the process at once through
///   [`Claim::cancelled`];
/// - tasks whose heartbeats stop are requeued a bounded number of times.
#[async_trait]
pub trait TaskQueue: Send + Sync {
    /// Makes a run with one queued task per repository.
    async fn enqueue(&self, run: NewRun) -> Result<Run, QueueError>;
    /// The oldest claimable task, now held by `runner`, if any.
    async fn claim(&self, runner: &str) -> Result<Option<Claim>, QueueError>;
    /// A signal that wakes a runner when work may have become claimable.
    fn work(&self) -> WorkSignal;
    /// Cancels a run (by id or unique prefix): its queued tasks end
    /// `cancelled`, its running ones are asked to stop.
    async fn cancel_run(&self, run: &str) -> Result<Run, QueueError>;
    /// Cancels one task: at once when queued, by its runner when running.
    async fn cancel_task(&self, task: &str) -> Result<Task, QueueError>;
    /// Queues again the tasks of `run` that `scope` names.
    async fn retry(&self, run: &str, scope: &RetryScope) -> Result<Vec<Task>, QueueError>;
    /// Says the attempt is alive; answers whether it must stop.
    async fn heartbeat(&self, task: &str, token: &str) -> Result<Heartbeat, QueueError>;
    /// Records the commit the attempt's workspace was provisioned at.
    async fn set_base(&self, task: &str, token: &str, commit: &str) -> Result<(), QueueError>;
    /// Appends to the task's log.
    async fn log(&self, task: &str, attempt: u32, event: LogEvent) -> Result<(), QueueError>;
    /// Ends the attempt; refused when it no longer holds its task.
    async fn complete(&self, task: &str, token: &str, finish: Finish) -> Result<Task, QueueError>;
    /// Sends tasks whose runner went silent back to the queue (a bounded
    /// number of times, then fails them saying their runner died).
    async fn requeue_stalled(&self) -> Result<Vec<Stalled>, QueueError>;
}

/// The queue in berth's registry.
pub struct SqliteQueue {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    stall: Duration,
    max_resets: u32,
    work: WorkSender,
    /// The attempts claimed through this queue, by task id.
    held: Mutex<HashMap<String, Held>>,
}

/// An attempt claimed through this queue, until it ends or is lost.
struct Held {
    run: String,
    token: String,
    cancelled: CancellationToken,
}

/// How long a task's runner may stay silent before the task is requeued.
pub const DEFAULT_STALL: Duration = Duration::from_secs(60);
/// How often a task is requeued after its runner died before it fails.
pub const DEFAULT_MAX_RESETS: u32 = 3;

impl SqliteQueue {
    pub fn new(store: Arc<Store>, clock: Arc<dyn Clock>) -> Self {
        SqliteQueue {
            store,
            clock,
            stall: DEFAULT_STALL,
            max_resets: DEFAULT_MAX_RESETS,
            work: WorkSender::default(),
            held: Mutex::new(HashMap::new()),
        }
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        // The map is whole after any panic: every change is one call.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the attempt `token` of `task`, if it is the one held.
    fn release(&self, task: &str, token: &str) {
        let mut held = self.held();
        if held.get(task).is_some_and(|h| h.token == token) {
            held.remove(task);
        }
    }

    /// Sets the stall period and the number of requeues after it.
    pub fn with_stall(mut self, stall: Duration, max_resets: u32) -> Self {
        self.stall = stall;
        self.max_resets = max_resets;
        self
    }
}

#[async_trait]
impl TaskQueue for SqliteQueue {
    async fn enqueue(&self, run: NewRun) -> Result<Run, QueueError> {
        let run = self.store.create_run(&run, self.clock.now_ms())?;
        self.work.signal();
        Ok(run)
    }

    async fn claim(&self, runner: &str) -> Result<Option<Claim>, QueueError> {
        let Some(Claimed { task, token, spec }) =
            self.store.claim_task(runner, self.clock.now_ms())?
        else {
            return Ok(None);
        };
        let cancelled = CancellationToken::new();
        self.held().insert(
            task.id.clone(),
            Held {
                run: task.run_id.clone(),
                token: token.clone(),
                cancelled: cancelled.clone(),
            },
        );
        Ok(Some(Claim {
            task,
            token,
            spec,
            cancelled,
        }))
    }

    fn work(&self) -> WorkSignal {
        self.work.subscribe()
    }

    async fn cancel_run(&self, run: &str) -> Result<Run, QueueError> {
        let run = self.store.cancel_run(run, self.clock.now_ms())?;
        for held in self.held().values().filter(|h| h.run == run.id) {
            held.cancelled.cancel();
        }
        Ok(run)
    }

    async fn cancel_task(&self, task: &str) -> Result<Task, QueueError> {
        let task = self.store.cancel_task(task, self.clock.now_ms())?;
        if let Some(held) = self.held().get(&task.id) {
            held.cancelled.cancel();
        }
        Ok(task)
    }

    async fn retry(&self, run: &str, scope: &RetryScope) -> Result<Vec<Task>, QueueError> {
        let tasks = self.store.retry_tasks(run, scope, self.clock.now_ms())?;
        self.work.signal();
        Ok(tasks)
    }

    async fn heartbeat(&self, task: &str, token: &str) -> Result<Heartbeat, QueueError> {
        let cancel = match self.store.heartbeat_task(task, token, self.clock.now_ms()) {
            Ok(cancel) => cancel,
            Err(e) => {
                if matches!(e, StoreError::AttemptLost { .. }) {
                    self.release(task, token);
                }
                return Err(e.into());
            }
        };
        Ok(if cancel {
            Heartbeat::Cancel
        } else {
            Heartbeat::Continue
        })
    }

    async fn set_base(&self, task: &str, token: &str, commit: &str) -> Result<(), QueueError> {
        Ok(self.store.set_base_commit(task, token, commit)?)
    }

    async fn log(&self, task: &str, attempt: u32, event: LogEvent) -> Result<(), QueueError> {
        self.store
            .append_log(task, attempt, self.clock.now_ms(), &event)?;
        Ok(())
    }

    async fn complete(&self, task: &str, token: &str, finish: Finish) -> Result<Task, QueueError> {
        let done = self
            .store
            .finish_task(task, token, &finish, self.clock.now_ms());
        // Ended, or refused because the attempt lost its task: either way
        // this attempt holds nothing now, and its run may take another.
        self.release(task, token);
        self.work.signal();
        Ok(done?)
    }

    async fn requeue_stalled(&self) -> Result<Vec<Stalled>, QueueError> {
        let stall = i64::try_from(self.stall.as_millis()).unwrap_or(i64::MAX);
        let moved = self
            .store
            .requeue_stalled(self.clock.now_ms(), stall, self.max_resets)?;
        if !moved.is_empty() {
            let mut held = self.held();
            for stalled in &moved {
                let (Stalled::Requeued { task } | Stalled::Failed { task }) = stalled;
                held.remove(task);
            }
            drop(held);
            self.work.signal();
        }
        Ok(moved)
    }
}
