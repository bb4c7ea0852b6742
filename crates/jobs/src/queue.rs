//! The task queue: where runs put their tasks and runners take them.
//!
//! [`TaskQueue`] is what a runner needs: claim the oldest task atomically,
//! heartbeat it (the answer carries cancellation), log, and report the
//! result under the claim's attempt token, which is refused once the task
//! went on without that attempt. [`SqliteQueue`] keeps it in berth's
//! registry; a cluster backs the same trait with a shared work queue.

use async_trait::async_trait;
use berth_core::Clock;
use berth_core::job::{Claimed, Finish, LogEvent, NewRun, Run, Stalled, Task};
use berth_store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

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

/// A claimed task and the token of its attempt.
pub type Claim = Claimed;

#[async_trait]
pub trait TaskQueue: Send + Sync {
    /// Makes a run with one queued task per repository.
    async fn enqueue(&self, run: NewRun) -> Result<Run, QueueError>;
    /// The oldest claimable task, now held by `runner`, if any.
    async fn claim(&self, runner: &str) -> Result<Option<Claim>, QueueError>;
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
        Ok(self.store.create_run(&run, self.clock.now_ms())?)
    }

    async fn claim(&self, runner: &str) -> Result<Option<Claim>, QueueError> {
        Ok(self.store.claim_task(runner, self.clock.now_ms())?)
    }

    async fn heartbeat(&self, task: &str, token: &str) -> Result<Heartbeat, QueueError> {
        let cancel = self
            .store
            .heartbeat_task(task, token, self.clock.now_ms())?;
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
        Ok(self
            .store
            .finish_task(task, token, &finish, self.clock.now_ms())?)
    }

    async fn requeue_stalled(&self) -> Result<Vec<Stalled>, QueueError> {
        let stall = i64::try_from(self.stall.as_millis()).unwrap_or(i64::MAX);
        Ok(self
            .store
            .requeue_stalled(self.clock.now_ms(), stall, self.max_resets)?)
    }
}
