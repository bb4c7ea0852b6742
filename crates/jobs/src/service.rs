//! The jobs service: what every front end (the CLI, the HTTP API) asks of
//! jobs, runs and tasks. Runs are made here and queued; runners take them.

use crate::changes::{Changes, Notifying};
use crate::queue::{QueueError, SqliteQueue, TaskQueue};
use crate::spec::JobSpec;
use berth_core::Clock;
use berth_core::job::{
    Attempt, JobRecord, LogEntry, NewRun, NewTask, RetryScope, Run, SkippedTime, Task, TaskState,
};
use berth_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Spec(#[from] berth_core::SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(
        "run `{run}` has no task `{query}` (give a task id, a repository URL or its last path segment)"
    )]
    NoTask { run: String, query: String },
    #[error("`{query}` matches several tasks of run `{run}`: {}", candidates.join(", "))]
    AmbiguousTask {
        run: String,
        query: String,
        candidates: Vec<String>,
    },
    #[error("invalid `{field}`: {message}")]
    Invalid { field: String, message: String },
}

impl JobError {
    /// A stable machine-readable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            JobError::Spec(_) | JobError::Invalid { .. } => "invalid_request",
            JobError::NoTask { .. } => "not_found",
            JobError::AmbiguousTask { .. } => "ambiguous",
            JobError::Queue(QueueError::Lost { .. }) => "conflict",
            // The registry's word, straight or through the queue.
            JobError::Store(e) | JobError::Queue(QueueError::Store(e)) => match e {
                StoreError::JobNotFound(_)
                | StoreError::RunNotFound(_)
                | StoreError::TaskNotFound(_) => "not_found",
                StoreError::AmbiguousJobRecord { .. } => "ambiguous",
                StoreError::TaskState { .. } => "wrong_state",
                _ => "internal",
            },
            JobError::Queue(QueueError::Other(_)) => "internal",
        }
    }
}

/// A job and its last run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobSummary {
    #[serde(flatten)]
    pub job: JobRecord,
    pub last_run: Option<Run>,
}

/// A run and its tasks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunDetails {
    #[serde(flatten)]
    pub run: Run,
    pub tasks: Vec<Task>,
}

/// A task with every attempt it made.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskDetails {
    #[serde(flatten)]
    pub task: Task,
    /// Every attempt, oldest first (beside the task's own `attempts`, their
    /// count).
    pub history: Vec<Attempt>,
}

/// The jobs service. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    pub(crate) store: Arc<Store>,
    /// The queue, telling `changes` of what goes through it.
    queue: Arc<dyn TaskQueue>,
    pub(crate) changes: Arc<Changes>,
    clock: Arc<dyn Clock>,
}

impl Jobs {
    pub fn new(store: Arc<Store>, queue: Arc<dyn TaskQueue>, clock: Arc<dyn Clock>) -> Self {
        let changes = Arc::new(Changes::default());
        Jobs {
            store,
            queue: Arc::new(Notifying::new(queue, changes.clone())),
            changes,
            clock,
        }
    }

    /// The service over the registry's own queue.
    pub fn sqlite(store: Arc<Store>, clock: Arc<dyn Clock>) -> Self {
        let queue = Arc::new(SqliteQueue::new(store.clone(), clock.clone()));
        Jobs::new(store, queue, clock)
    }

    pub fn queue(&self) -> Arc<dyn TaskQueue> {
        self.queue.clone()
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Registers the job (its spec replacing an earlier one of the same
    /// name, its schedule the spec's) without running it.
    pub fn register(&self, spec: &JobSpec) -> Result<JobRecord, JobError> {
        spec.validate()?;
        let value = serde_json::to_value(spec).map_err(|e| JobError::Invalid {
            field: "spec".into(),
            message: e.to_string(),
        })?;
        Ok(self.store.upsert_job(
            &spec.name,
            &value,
            Some(spec.run.schedule.as_deref()),
            self.clock.now_ms(),
        )?)
    }

    /// Registers the job and starts a run of it.
    pub async fn start(&self, spec: &JobSpec) -> Result<Run, JobError> {
        self.register(spec)?;
        self.start_registered(&spec.name, "manual").await
    }

    /// Registers a job sent by a client over a wire and starts a run of
    /// it. Its spec must stand on its own: repositories are absolute paths
    /// or URLs (the client resolved paths relative to its file), and no
    /// `repositories_file`.
    pub async fn submit(&self, spec: &JobSpec) -> Result<Run, JobError> {
        spec.check_standalone()?;
        self.start(spec).await
    }

    /// Starts a new run of a registered job with its registered spec.
    pub async fn run_again(&self, job: &str) -> Result<Run, JobError> {
        self.start_registered(job, "manual").await
    }

    /// Starts a run of a registered job with its registered spec.
    pub(crate) async fn start_registered(&self, job: &str, trigger: &str) -> Result<Run, JobError> {
        let record = self.store.job(job)?;
        let spec: JobSpec =
            serde_json::from_value(record.spec.clone()).map_err(|e| JobError::Invalid {
                field: "spec".into(),
                message: format!("the registered spec of job `{job}` cannot be read: {e}"),
            })?;
        let tasks = spec
            .repositories
            .iter()
            .map(|r| NewTask {
                url: r.url.clone(),
                reference: r.reference.clone(),
                credential: r.credential.clone(),
            })
            .collect();
        Ok(self
            .queue
            .enqueue(NewRun {
                job: spec.name.clone(),
                spec: record.spec,
                trigger: trigger.into(),
                concurrency: spec.run.concurrency,
                tasks,
            })
            .await?)
    }

    /// Every job with its last run.
    pub fn jobs(&self) -> Result<Vec<JobSummary>, JobError> {
        self.store
            .jobs()?
            .into_iter()
            .map(|job| {
                let last_run = self.store.runs_of(&job.name)?.pop();
                Ok(JobSummary { job, last_run })
            })
            .collect()
    }

    /// The runs of a job, oldest first.
    pub fn runs(&self, job: &str) -> Result<Vec<Run>, JobError> {
        self.store.job(job)?;
        Ok(self.store.runs_of(job)?)
    }

    /// A run (by id or unique prefix) and its tasks.
    pub fn run(&self, run: &str) -> Result<RunDetails, JobError> {
        let run = self.store.run(run)?;
        let tasks = self.store.tasks_of(&run.id)?;
        Ok(RunDetails { run, tasks })
    }

    /// A task of a run by id, id prefix, repository URL, or the URL's last
    /// path segment (without `.git`).
    pub fn task(&self, run: &str, query: &str) -> Result<TaskDetails, JobError> {
        let details = self.run(run)?;
        let lowered = query.to_ascii_lowercase();
        let matches: Vec<&Task> = details
            .tasks
            .iter()
            .filter(|t| {
                t.id == lowered
                    || (lowered.len() >= 4 && t.id.starts_with(&lowered))
                    || t.url == query
                    || repository_name(&t.url) == query
            })
            .collect();
        let task = match matches.as_slice() {
            [] => {
                return Err(JobError::NoTask {
                    run: details.run.id,
                    query: query.into(),
                });
            }
            [one] => (*one).clone(),
            several => {
                return Err(JobError::AmbiguousTask {
                    run: details.run.id.clone(),
                    query: query.into(),
                    candidates: several
                        .iter()
                        .map(|t| format!("{} ({})", t.id, t.url))
                        .collect(),
                });
            }
        };
        let history = self.store.attempts_of(&task.id)?;
        Ok(TaskDetails { task, history })
    }

    /// A task by its exact id.
    pub fn task_by_id(&self, id: &str) -> Result<Task, JobError> {
        Ok(self.store.task(id)?)
    }

    /// A task's log entries after position `after`, at most `limit`.
    pub fn log(&self, task: &str, after: u64, limit: u32) -> Result<Vec<LogEntry>, JobError> {
        Ok(self.store.log_after(task, after, limit)?)
    }

    /// A page of a task's log: at most `limit` entries after `after`.
    pub fn log_page(
        &self,
        task: &str,
        after: u64,
        limit: u32,
    ) -> Result<crate::api::LogPage, JobError> {
        // The state is read first: if the task had ended then, a short page
        // holds the last of its log.
        let ended = self.task_by_id(task)?.state.is_final();
        let entries = self.log(task, after, limit)?;
        Ok(crate::api::LogPage {
            next: entries.last().map_or(after, |e| e.seq),
            done: ended && entries.len() < limit as usize,
            entries,
        })
    }

    /// A task's patch; empty when it made none.
    pub fn patch(&self, task: &str) -> Result<Vec<u8>, JobError> {
        Ok(self.store.patch(task)?.unwrap_or_default())
    }

    /// Every completed task's patch of a run, one after the other in the
    /// run's order, with the run's id: one file that `git apply` takes in
    /// each repository's checkout.
    pub fn run_patch(&self, run: &str) -> Result<(String, Vec<u8>), JobError> {
        let details = self.run(run)?;
        let mut patches = Vec::new();
        for task in details
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::Completed)
        {
            patches.extend(self.patch(&task.id)?);
        }
        Ok((details.run.id, patches))
    }

    /// Cancels a run, or one task of it.
    pub async fn cancel(&self, run: &str, task: Option<&str>) -> Result<RunDetails, JobError> {
        match task {
            Some(query) => {
                let task = self.task(run, query)?.task;
                self.queue.cancel_task(&task.id).await?;
            }
            None => {
                self.queue.cancel_run(run).await?;
            }
        }
        self.run(run)
    }

    /// Queues again a run's failed tasks, or one task; earlier attempts stay.
    pub async fn retry(&self, run: &str, task: Option<&str>) -> Result<RunDetails, JobError> {
        let scope = match task {
            Some(query) => RetryScope::One(self.task(run, query)?.task.id),
            None => RetryScope::Failed,
        };
        self.queue.retry(run, &scope).await?;
        self.run(run)
    }

    /// Sets (or with `None` removes) a job's schedule.
    pub fn schedule(&self, job: &str, cron: Option<&str>) -> Result<JobRecord, JobError> {
        if let Some(cron) = cron {
            crate::schedule::parse(cron).map_err(|message| JobError::Invalid {
                field: "cron".into(),
                message,
            })?;
        }
        Ok(self.store.set_schedule(job, cron)?)
    }

    /// The scheduled times of a job at which no run started.
    pub fn skipped_times(&self, job: &str) -> Result<Vec<SkippedTime>, JobError> {
        Ok(self.store.skipped_times(job)?)
    }
}

/// The last path segment of a repository URL, without `.git`: how a
/// task is named in listings and patch files.
pub fn repository_name(url: &str) -> &str {
    let trimmed = url.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    last.strip_suffix(".git").unwrap_or(last)
}

/// The stem of the file a repository's patch is saved as: the URL's last
/// segment, made a name that can neither leave its directory nor break a
/// header.
pub fn patch_stem(url: &str) -> String {
    let cleaned: String = repository_name(url)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match cleaned.trim_start_matches('.') {
        "" => "repository".into(),
        rest => rest.to_owned(),
    }
}
