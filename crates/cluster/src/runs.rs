//! A controller's job queue for its API: starting, cancelling and retrying
//! a run are decisions published to the events stream, answered once this
//! controller's registry folded them (so a client reads what it wrote),
//! and seen by every other controller the same way. A controller runs no
//! tasks itself: nodes do, through [`crate::NodeQueue`].

use crate::Controller;
use crate::wire::{Decision, NewTaskRecord};
use async_trait::async_trait;
use berth_core::job::{Finish, LogEvent, NewRun, RetryScope, Run, Stalled, Task, generate_id};
use berth_jobs::queue::{Claim, Heartbeat, QueueError, TaskQueue, WorkSender, WorkSignal};

pub struct RunQueue {
    controller: Controller,
}

impl RunQueue {
    pub fn new(controller: Controller) -> Self {
        RunQueue { controller }
    }

    async fn decide(&self, decision: &Decision) -> Result<(), QueueError> {
        self.controller.decide(decision).await.map_err(|e| match e {
            crate::ClusterError::Store(e) => QueueError::from(e),
            other => QueueError::Other(other.to_string()),
        })
    }

    fn runs_no_tasks(&self, task: &str) -> QueueError {
        QueueError::Other(format!(
            "a controller runs no tasks (task `{task}`): its nodes do"
        ))
    }
}

#[async_trait]
impl TaskQueue for RunQueue {
    async fn enqueue(&self, run: NewRun) -> Result<Run, QueueError> {
        let id = generate_id();
        self.decide(&Decision::Created {
            run: id.clone(),
            job: run.job,
            spec: run.spec,
            trigger: run.trigger,
            concurrency: run.concurrency,
            tasks: run
                .tasks
                .into_iter()
                .map(|t| NewTaskRecord {
                    id: generate_id(),
                    url: t.url,
                    reference: t.reference,
                    credential: t.credential,
                })
                .collect(),
        })
        .await?;
        Ok(self.controller.store().run(&id)?)
    }

    async fn claim(&self, _runner: &str) -> Result<Option<Claim>, QueueError> {
        Ok(None)
    }

    fn work(&self) -> WorkSignal {
        // Nothing here claims work.
        WorkSender::default().subscribe()
    }

    async fn cancel_run(&self, run: &str) -> Result<Run, QueueError> {
        let store = self.controller.store();
        let run = store.run(run)?.id;
        self.decide(&Decision::CancelRun { run: run.clone() })
            .await?;
        Ok(store.run(&run)?)
    }

    async fn cancel_task(&self, task: &str) -> Result<Task, QueueError> {
        let store = self.controller.store();
        let task = store.task(task)?.id;
        self.decide(&Decision::CancelTask { task: task.clone() })
            .await?;
        Ok(store.task(&task)?)
    }

    async fn retry(&self, run: &str, scope: &RetryScope) -> Result<Vec<Task>, QueueError> {
        let store = self.controller.store();
        let run = store.run(run)?.id;
        let task = match scope {
            RetryScope::Failed => None,
            RetryScope::One(task) => Some(task.clone()),
        };
        self.decide(&Decision::Retry {
            run: run.clone(),
            task: task.clone(),
        })
        .await?;
        let tasks = store.tasks_of(&run)?;
        Ok(tasks
            .into_iter()
            .filter(|t| !t.state.is_final() && task.as_ref().is_none_or(|id| *id == t.id))
            .collect())
    }

    async fn heartbeat(&self, task: &str, _token: &str) -> Result<Heartbeat, QueueError> {
        Err(self.runs_no_tasks(task))
    }

    async fn set_base(&self, task: &str, _token: &str, _commit: &str) -> Result<(), QueueError> {
        Err(self.runs_no_tasks(task))
    }

    async fn log(&self, task: &str, _attempt: u32, _event: LogEvent) -> Result<(), QueueError> {
        Err(self.runs_no_tasks(task))
    }

    async fn complete(
        &self,
        task: &str,
        _token: &str,
        _finish: Finish,
    ) -> Result<Task, QueueError> {
        Err(self.runs_no_tasks(task))
    }

    async fn requeue_stalled(&self) -> Result<Vec<Stalled>, QueueError> {
        // JetStream delivers a silent node's tasks again by itself.
        Ok(Vec::new())
    }
}
