//! Word of changes within the process. Whatever goes through the jobs
//! service's queue wakes its followers at once: a log line those of its
//! task's log, a claim, a result, a cancellation or a retry those of its
//! run (and of its tasks' logs, which end with them). A wake-up carries
//! nothing: the registry stays the source of truth, read again on each.
//!
//! Writers in other processes (a `berth runner` on the same home, a
//! cluster's controller) wake nobody here: followers keep a slow poll for
//! them.

use crate::queue::{Claim, Heartbeat, QueueError, TaskQueue, WorkSignal};
use async_trait::async_trait;
use berth_core::job::{Finish, LogEvent, NewRun, RetryScope, Run, Stalled, Task};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// The wake-up signals of what is followed: a run's tasks changing state,
/// a task's log growing.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// By run id: a task of the run changed (claimed, ended, ...).
    pub(crate) runs: Signals,
    /// By task id: the task's log grew.
    pub(crate) logs: Signals,
}

/// Wake-up signals by key, made as they are followed.
#[derive(Debug, Default)]
pub(crate) struct Signals(Mutex<HashMap<String, watch::Sender<()>>>);

/// Resolves when what it follows may have changed since it last did (or
/// was made): a change is never missed between two waits.
#[derive(Debug)]
pub(crate) struct Change(watch::Receiver<()>);

impl Change {
    pub(crate) async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            // The service is gone: nothing will ever be signalled.
            std::future::pending::<()>().await;
        }
    }
}

impl Signals {
    fn map(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<()>>> {
        // The map is whole after any panic: every change is one call.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows `key` (an exact id); keys no longer followed are forgotten.
    pub(crate) fn subscribe(&self, key: &str) -> Change {
        let mut map = self.map();
        map.retain(|_, sender| sender.receiver_count() > 0);
        Change(
            map.entry(key.to_owned())
                .or_insert_with(|| watch::Sender::new(()))
                .subscribe(),
        )
    }

    pub(crate) fn notify(&self, key: &str) {
        if let Some(sender) = self.map().get(key) {
            sender.send_modify(|_| {});
        }
    }

    fn notify_all(&self) {
        for sender in self.map().values() {
            sender.send_modify(|_| {});
        }
    }
}

/// A queue that tells [`Changes`] of what goes through it.
pub(crate) struct Notifying {
    inner: Arc<dyn TaskQueue>,
    changes: Arc<Changes>,
    /// The run of each task claimed through this queue and not yet ended,
    /// for the base, which names only the task.
    claimed: Mutex<HashMap<String, String>>,
}

impl Notifying {
    pub(crate) fn new(inner: Arc<dyn TaskQueue>, changes: Arc<Changes>) -> Self {
        Notifying {
            inner,
            changes,
            claimed: Mutex::new(HashMap::new()),
        }
    }

    fn claimed(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.claimed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify_run_of(&self, task: &str) {
        let run = self.claimed().get(task).cloned();
        if let Some(run) = run {
            self.changes.runs.notify(&run);
        }
    }

    /// An attempt that lost its task says nothing more.
    fn forget_lost<T>(&self, task: &str, result: &Result<T, QueueError>) {
        if matches!(result, Err(QueueError::Lost { .. })) {
            self.claimed().remove(task);
        }
    }
}

#[async_trait]
impl TaskQueue for Notifying {
    async fn enqueue(&self, run: NewRun) -> Result<Run, QueueError> {
        self.inner.enqueue(run).await
    }

    async fn claim(&self, runner: &str) -> Result<Option<Claim>, QueueError> {
        let claim = self.inner.claim(runner).await?;
        if let Some(claim) = &claim {
            let run = claim.task.run_id.clone();
            self.changes.runs.notify(&run);
            self.claimed().insert(claim.task.id.clone(), run);
        }
        Ok(claim)
    }

    fn work(&self) -> WorkSignal {
        self.inner.work()
    }

    async fn cancel_run(&self, run: &str) -> Result<Run, QueueError> {
        let run = self.inner.cancel_run(run).await?;
        self.changes.runs.notify(&run.id);
        Ok(run)
    }

    async fn cancel_task(&self, task: &str) -> Result<Task, QueueError> {
        let task = self.inner.cancel_task(task).await?;
        self.changes.runs.notify(&task.run_id);
        Ok(task)
    }

    async fn retry(&self, run: &str, scope: &RetryScope) -> Result<Vec<Task>, QueueError> {
        let tasks = self.inner.retry(run, scope).await?;
        if let Some(task) = tasks.first() {
            self.changes.runs.notify(&task.run_id);
        }
        Ok(tasks)
    }

    async fn heartbeat(&self, task: &str, token: &str) -> Result<Heartbeat, QueueError> {
        let beat = self.inner.heartbeat(task, token).await;
        self.forget_lost(task, &beat);
        beat
    }

    async fn set_base(&self, task: &str, token: &str, commit: &str) -> Result<(), QueueError> {
        let set = self.inner.set_base(task, token, commit).await;
        self.forget_lost(task, &set);
        if set.is_ok() {
            self.notify_run_of(task);
        }
        set
    }

    async fn log(&self, task: &str, attempt: u32, event: LogEvent) -> Result<(), QueueError> {
        let logged = self.inner.log(task, attempt, event).await;
        self.forget_lost(task, &logged);
        if logged.is_ok() {
            self.changes.logs.notify(task);
        }
        logged
    }

    async fn complete(&self, task: &str, token: &str, finish: Finish) -> Result<Task, QueueError> {
        let done = self.inner.complete(task, token, finish).await;
        let run = self.claimed().remove(task);
        match (&done, run) {
            (Ok(done), _) => self.changes.runs.notify(&done.run_id),
            (Err(_), Some(run)) => self.changes.runs.notify(&run),
            (Err(_), None) => {}
        }
        done
    }

    async fn requeue_stalled(&self) -> Result<Vec<Stalled>, QueueError> {
        let moved = self.inner.requeue_stalled().await?;
        if !moved.is_empty() {
            // A stall names tasks only, and is rare: every follower looks.
            let mut claimed = self.claimed();
            for stalled in &moved {
                let (Stalled::Requeued { task } | Stalled::Failed { task }) = stalled;
                claimed.remove(task);
            }
            drop(claimed);
            self.changes.runs.notify_all();
        }
        Ok(moved)
    }
}
