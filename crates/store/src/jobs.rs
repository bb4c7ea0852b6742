//! Batch jobs in the registry: jobs, runs, tasks (which are the queue),
//! attempts, logs and skipped scheduled times.
//!
//! The queue's moves are each one `BEGIN IMMEDIATE` transaction: a claim
//! picks the oldest claimable task and marks it running under a fresh
//! attempt token in the same transaction, so two runners never hold one
//! task; every later word from a runner (heartbeat, result) names that
//! token and is refused once the task moved on without it.

use crate::Cached as _;
use crate::{Store, StoreError};
use berth_core::job::{
    Attempt, Claimed, Finish, JobRecord, LogEntry, LogEvent, NewRun, RetryScope, Run, RunState,
    SkippedTime, Stalled, Task, TaskState, generate_id,
};
use rusqlite::{OptionalExtension, Row, Transaction, params};

const TASK_COLUMNS: &str = "id, run_id, position, url, ref, credential, state, attempts, resets, \
     runner, exit_code, failed_step, error, base_commit, workspace, length(patch), started_at, \
     ended_at, published_branch, published_commit";

const RUN_COLUMNS: &str = "id, job, state, trigger, concurrency, cancelled, created_at, ended_at";

impl Store {
    /// Records a job (or replaces its spec), keeping its schedule unless
    /// `schedule` is given.
    pub fn upsert_job(
        &self,
        name: &str,
        spec: &serde_json::Value,
        schedule: Option<Option<&str>>,
        now: i64,
    ) -> Result<JobRecord, StoreError> {
        let spec_text = encode("job", name, "spec", spec)?;
        self.write(|tx| {
            tx.run(
                "INSERT INTO jobs (name, spec, schedule, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (name) DO UPDATE SET spec = ?2, updated_at = ?4",
                params![name, spec_text, schedule.flatten(), now],
            )
            .map_err(|e| self.db(e))?;
            if let Some(schedule) = schedule {
                tx.run(
                    "UPDATE jobs SET schedule = ?2 WHERE name = ?1",
                    params![name, schedule],
                )
                .map_err(|e| self.db(e))?;
            }
            Ok(())
        })?;
        self.job(name)
    }

    pub fn set_schedule(
        &self,
        name: &str,
        schedule: Option<&str>,
    ) -> Result<JobRecord, StoreError> {
        let changed = self
            .conn()
            .run(
                "UPDATE jobs SET schedule = ?2 WHERE name = ?1",
                params![name, schedule],
            )
            .map_err(|e| self.db(e))?;
        if changed == 0 {
            return Err(StoreError::JobNotFound(name.into()));
        }
        self.job(name)
    }

    pub fn job(&self, name: &str) -> Result<JobRecord, StoreError> {
        self.jobs_where("WHERE name = ?1", &[&name])?
            .pop()
            .ok_or_else(|| StoreError::JobNotFound(name.into()))
    }

    /// Every job, by name.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.jobs_where("", &[])
    }

    fn jobs_where(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT name, spec, schedule, created_at, updated_at FROM jobs {filter} ORDER BY name"
            ))
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map(args, |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| self.db(e))?;
        rows.into_iter()
            .map(|(name, spec, schedule, created_at, updated_at)| {
                let spec = decode("job", &name, "spec", &spec)?;
                Ok(JobRecord {
                    name,
                    spec,
                    schedule,
                    created_at,
                    updated_at,
                })
            })
            .collect()
    }

    /// Makes a run of `new.job` with one queued task per repository.
    pub fn create_run(&self, new: &NewRun, now: i64) -> Result<Run, StoreError> {
        let tasks: Vec<String> = new.tasks.iter().map(|_| generate_id()).collect();
        self.create_run_as(&generate_id(), &tasks, new, false, now)
    }

    /// Makes the run `id` of `new.job` with the queued tasks `tasks` (one
    /// id per repository), unless it exists: a run made elsewhere, as a
    /// cluster's event stream tells it (`shared`). Answers the run.
    pub fn create_run_as(
        &self,
        id: &str,
        tasks: &[String],
        new: &NewRun,
        shared: bool,
        now: i64,
    ) -> Result<Run, StoreError> {
        if tasks.len() != new.tasks.len() {
            return Err(StoreError::TaskIds {
                run: id.into(),
                ids: tasks.len(),
                repositories: new.tasks.len(),
            });
        }
        let spec = encode("run", id, "spec", &new.spec)?;
        self.write(|tx| {
            let made = tx
                .run(
                    "INSERT INTO job_runs (id, job, spec, state, trigger, concurrency, created_at,
                         shared)
                     VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
                    params![id, new.job, spec, new.trigger, new.concurrency, now, shared],
                )
                .map_err(|e| self.db(e))?;
            if made == 0 {
                tx.run(
                    "UPDATE job_runs SET shared = 1 WHERE id = ?1 AND ?2",
                    params![id, shared],
                )
                .map_err(|e| self.db(e))?;
                return Ok(());
            }
            for (position, (task, task_id)) in new.tasks.iter().zip(tasks).enumerate() {
                tx.run(
                    "INSERT INTO job_tasks (id, run_id, position, url, ref, credential, state,
                         queued_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7)",
                    params![
                        task_id,
                        id,
                        position as i64,
                        task.url,
                        task.reference,
                        task.credential,
                        now
                    ],
                )
                .map_err(|e| self.db(e))?;
            }
            settle_run(tx, id, now).map_err(|e| self.db(e))
        })?;
        self.run(id)
    }

    /// The last sequence of `stream` this registry applied (0: none).
    pub fn fold_position(&self, stream: &str) -> Result<u64, StoreError> {
        let seq: Option<i64> = self
            .conn()
            .row(
                "SELECT seq FROM cluster_folds WHERE stream = ?1",
                [stream],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        Ok(seq.map_or(0, |seq| seq as u64))
    }

    /// Records that the registry applied `stream` up to `seq`.
    pub fn set_fold_position(&self, stream: &str, seq: u64) -> Result<(), StoreError> {
        self.conn()
            .run(
                "INSERT INTO cluster_folds (stream, seq) VALUES (?1, ?2)
                 ON CONFLICT (stream) DO UPDATE SET seq = max(seq, ?2)",
                params![stream, seq as i64],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Records that `run` is not to be shared with a cluster (again).
    pub fn mark_shared(&self, run: &str) -> Result<(), StoreError> {
        self.conn()
            .run("UPDATE job_runs SET shared = 1 WHERE id = ?1", [run])
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The runs no cluster's event stream holds yet (made straight in the
    /// registry), oldest first, each with its spec and tasks.
    pub fn unshared_runs(&self) -> Result<Vec<(Run, serde_json::Value, Vec<Task>)>, StoreError> {
        self.runs_where("WHERE shared = 0", &[])?
            .into_iter()
            .map(|run| {
                let spec = self.run_spec(&run.id)?;
                let tasks = self.tasks_of(&run.id)?;
                Ok((run, spec, tasks))
            })
            .collect()
    }

    /// A run by id or unique id prefix.
    pub fn run(&self, query: &str) -> Result<Run, StoreError> {
        let query = query.to_ascii_lowercase();
        let mut runs = self.runs_where(
            "WHERE id >= ?1 AND id < ?1 || char(1114111) AND substr(id, 1, length(?1)) = ?1",
            &[&query],
        )?;
        if let Some(exact) = runs.iter().position(|r| r.id == query) {
            return Ok(runs.swap_remove(exact));
        }
        match runs.len() {
            1 if query.len() >= crate::MIN_PREFIX => Ok(runs.remove(0)),
            0 | 1 => Err(StoreError::RunNotFound(query)),
            _ => Err(StoreError::AmbiguousJobRecord {
                what: "runs",
                query,
                candidates: runs.into_iter().map(|r| r.id).collect(),
            }),
        }
    }

    /// The runs of a job, oldest first.
    pub fn runs_of(&self, job: &str) -> Result<Vec<Run>, StoreError> {
        self.runs_where("WHERE job = ?1", &[&job])
    }

    /// Whether a run of `job` is still running.
    pub fn has_active_run(&self, job: &str) -> Result<bool, StoreError> {
        Ok(!self
            .runs_where("WHERE job = ?1 AND state = 'running'", &[&job])?
            .is_empty())
    }

    /// The spec a run started with.
    pub fn run_spec(&self, run: &str) -> Result<serde_json::Value, StoreError> {
        let text: Option<String> = self
            .conn()
            .row("SELECT spec FROM job_runs WHERE id = ?1", [run], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|e| self.db(e))?;
        let text = text.ok_or_else(|| StoreError::RunNotFound(run.into()))?;
        decode("run", run, "spec", &text)
    }

    fn runs_where(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Run>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM job_runs {filter} ORDER BY created_at, id"
            ))
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map(args, |row| {
                Ok((
                    Run {
                        id: row.get(0)?,
                        job: row.get(1)?,
                        state: RunState::Running,
                        trigger: row.get(3)?,
                        concurrency: row.get(4)?,
                        cancelled: row.get(5)?,
                        created_at: row.get(6)?,
                        ended_at: row.get(7)?,
                    },
                    row.get::<_, String>(2)?,
                ))
            })
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| self.db(e))?;
        rows.into_iter()
            .map(|(mut run, state)| {
                run.state = RunState::parse(&state).ok_or_else(|| StoreError::Corrupt {
                    what: "run",
                    key: run.id.clone(),
                    field: "state",
                    detail: format!("unknown state `{state}`"),
                })?;
                Ok(run)
            })
            .collect()
    }

    /// The tasks of a run, in the job's order of repositories.
    pub fn tasks_of(&self, run: &str) -> Result<Vec<Task>, StoreError> {
        self.tasks_where("WHERE run_id = ?1 ORDER BY position", &[&run])
    }

    pub fn task(&self, id: &str) -> Result<Task, StoreError> {
        self.tasks_where("WHERE id = ?1", &[&id])?
            .pop()
            .ok_or_else(|| StoreError::TaskNotFound(id.into()))
    }

    fn tasks_where(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Task>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM job_tasks {filter}"))
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map(args, read_task)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| self.db(e))?;
        rows.into_iter()
            .map(|(task, state)| task.with_state(&state))
            .collect()
    }

    /// Every attempt of a task, first first.
    pub fn attempts_of(&self, task: &str) -> Result<Vec<Attempt>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT attempt, state, runner, exit_code, failed_step, error, started_at, ended_at
                 FROM job_attempts WHERE task_id = ?1 ORDER BY attempt",
            )
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([task], |row| {
                Ok((
                    row.get::<_, String>(1)?,
                    Attempt {
                        attempt: row.get(0)?,
                        state: TaskState::Queued,
                        runner: row.get(2)?,
                        exit_code: row.get(3)?,
                        failed_step: row.get(4)?,
                        error: row.get(5)?,
                        started_at: row.get(6)?,
                        ended_at: row.get(7)?,
                    },
                ))
            })
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| self.db(e))?;
        rows.into_iter()
            .map(|(state, mut attempt)| {
                attempt.state = parse_task_state(task, &state)?;
                Ok(attempt)
            })
            .collect()
    }

    /// The patch of a task's last attempt, if it made one.
    pub fn patch(&self, task: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn()
            .row("SELECT patch FROM job_tasks WHERE id = ?1", [task], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|e| self.db(e))?
            .ok_or_else(|| StoreError::TaskNotFound(task.into()))
    }

    /// Hands the oldest claimable task to `runner`: queued, due, of a run
    /// not cancelled and below its concurrency.
    pub fn claim_task(&self, runner: &str, now: i64) -> Result<Option<Claimed>, StoreError> {
        let token = generate_id();
        let claimed = self.write(|tx| {
            let Some((id, _)) = due(tx, now).map_err(|e| self.db(e))? else {
                return Ok(None);
            };
            take(tx, &id, &token, runner, now).map_err(|e| self.db(e))
        })?;
        self.claimed(claimed, token)
    }

    /// The oldest claimable task (as [`Store::claim_task`] would take it)
    /// and the number its next attempt would have, taking nothing.
    pub fn due_task(&self, now: i64) -> Result<Option<(String, u32)>, StoreError> {
        let found = due(&self.conn(), now).map_err(|e| self.db(e))?;
        Ok(found.map(|(id, attempts)| (id, attempts + 1)))
    }

    /// Hands `task` to `runner` as its attempt number `attempt` under
    /// `token`, if it is still claimable and that attempt is its next:
    /// queued, of a run not cancelled and below its concurrency, whatever
    /// its due time. Answers `None` otherwise.
    pub fn claim_named(
        &self,
        task: &str,
        attempt: u32,
        token: &str,
        runner: &str,
        now: i64,
    ) -> Result<Option<Claimed>, StoreError> {
        let claimed = self.write(|tx| {
            let claimable: bool = tx
                .row(
                    &format!(
                        "SELECT count(*) > 0 FROM {CLAIMABLE} AND t.id = ?1 AND t.attempts + 1 = ?2"
                    ),
                    params![task, attempt],
                    |row| row.get(0),
                )
                .map_err(|e| self.db(e))?;
            if !claimable {
                return Ok(None);
            }
            take(tx, task, token, runner, now).map_err(|e| self.db(e))
        })?;
        self.claimed(claimed, token.to_owned())
    }

    fn claimed(
        &self,
        claimed: Option<(String, String)>,
        token: String,
    ) -> Result<Option<Claimed>, StoreError> {
        let Some((id, spec)) = claimed else {
            return Ok(None);
        };
        Ok(Some(Claimed {
            task: self.task(&id)?,
            token,
            spec: decode("task", &id, "spec", &spec)?,
        }))
    }

    /// Records that the attempt holding `token` is alive; answers whether
    /// it is asked to stop. An attempt that lost its task is told so.
    pub fn heartbeat_task(&self, task: &str, token: &str, now: i64) -> Result<bool, StoreError> {
        let cancel: Option<bool> = self
            .conn()
            .row(
                "UPDATE job_tasks SET heartbeat_at = ?3
                 WHERE id = ?1 AND token = ?2 AND state = 'running' RETURNING cancel",
                params![task, token, now],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        cancel.ok_or_else(|| StoreError::AttemptLost { task: task.into() })
    }

    /// Records the commit the attempt's workspace was provisioned at.
    pub fn set_base_commit(&self, task: &str, token: &str, commit: &str) -> Result<(), StoreError> {
        let changed = self
            .conn()
            .run(
                "UPDATE job_tasks SET base_commit = ?3
                 WHERE id = ?1 AND token = ?2 AND state = 'running'",
                params![task, token, commit],
            )
            .map_err(|e| self.db(e))?;
        if changed == 0 {
            return Err(StoreError::AttemptLost { task: task.into() });
        }
        Ok(())
    }

    /// Ends the attempt holding `token` as `finish` says; an errored
    /// attempt with a `retry_at` goes back to the queue for then. Refused
    /// when the attempt no longer holds the task.
    pub fn finish_task(
        &self,
        task: &str,
        token: &str,
        finish: &Finish,
        now: i64,
    ) -> Result<Task, StoreError> {
        let state = finish.state.unwrap_or(TaskState::Errored);
        self.write(|tx| {
            let held: Option<String> = tx
                .row(
                    "SELECT run_id FROM job_tasks WHERE id = ?1 AND token = ?2 AND state = 'running'",
                    params![task, token],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| self.db(e))?;
            let Some(run) = held else {
                return Err(StoreError::AttemptLost { task: task.into() });
            };
            tx.run(
                "UPDATE job_attempts SET state = ?3, exit_code = ?4, failed_step = ?5, error = ?6,
                     ended_at = ?7
                 WHERE task_id = ?1 AND attempt = (SELECT attempts FROM job_tasks WHERE id = ?1)",
                params![
                    task,
                    token,
                    state.as_str(),
                    finish.exit_code,
                    finish.failed_step,
                    finish.error,
                    now
                ],
            )
            .map_err(|e| self.db(e))?;
            let (next, queued_at) = match (state, finish.retry_at) {
                (TaskState::Errored, Some(at)) => (TaskState::Queued, Some(at)),
                _ => (state, None),
            };
            tx.run(
                "UPDATE job_tasks SET state = ?2, token = NULL, exit_code = ?3, failed_step = ?4,
                     error = ?5, patch = ?6, workspace = ?7, ended_at = ?8,
                     queued_at = coalesce(?9, queued_at)
                 WHERE id = ?1",
                params![
                    task,
                    next.as_str(),
                    finish.exit_code,
                    finish.failed_step,
                    finish.error,
                    finish.patch,
                    finish.workspace,
                    now,
                    queued_at
                ],
            )
            .map_err(|e| self.db(e))?;
            settle_run(tx, &run, now).map_err(|e| self.db(e))
        })?;
        self.task(task)
    }

    /// Tasks whose runner has not heartbeated since `now - stall_ms` go
    /// back to the queue, up to `max_resets` times each; after that they
    /// fail, saying their runner died.
    pub fn requeue_stalled(
        &self,
        now: i64,
        stall_ms: i64,
        max_resets: u32,
    ) -> Result<Vec<Stalled>, StoreError> {
        self.write(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, run_id, resets, runner, heartbeat_at FROM job_tasks
                     WHERE state = 'running' AND heartbeat_at < ?1",
                )
                .map_err(|e| self.db(e))?;
            let stalled = stmt
                .query_map([now.saturating_sub(stall_ms)], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, u32>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, i64>(4)?,
                    ))
                })
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| self.db(e))?;
            drop(stmt);
            let mut moved = Vec::new();
            for (id, run, resets, runner, heartbeat) in stalled {
                let runner = runner.unwrap_or_else(|| "?".into());
                let silent = (now - heartbeat) / 1000;
                let (state, error, outcome) = if resets < max_resets {
                    (
                        TaskState::Queued,
                        format!(
                            "its runner `{runner}` stopped answering ({silent} s without a \
                             heartbeat); the task went back to the queue"
                        ),
                        Stalled::Requeued { task: id.clone() },
                    )
                } else {
                    (
                        TaskState::Failed,
                        format!(
                            "its runner `{runner}` died: no heartbeat for {silent} s, and the \
                             task was already requeued {resets} time(s), the most allowed"
                        ),
                        Stalled::Failed { task: id.clone() },
                    )
                };
                tx.run(
                    "UPDATE job_attempts SET state = 'errored', error = ?2, ended_at = ?3
                     WHERE task_id = ?1 AND attempt = (SELECT attempts FROM job_tasks WHERE id = ?1)",
                    params![id, error, now],
                )
                .map_err(|e| self.db(e))?;
                tx.run(
                    "UPDATE job_tasks SET state = ?2, token = NULL, error = ?3,
                         resets = resets + (?2 = 'queued'), queued_at = ?4,
                         ended_at = CASE WHEN ?2 = 'queued' THEN NULL ELSE ?4 END
                     WHERE id = ?1",
                    params![id, state.as_str(), error, now],
                )
                .map_err(|e| self.db(e))?;
                settle_run(tx, &run, now).map_err(|e| self.db(e))?;
                moved.push(outcome);
            }
            Ok(moved)
        })
    }

    /// Cancels a run: its queued tasks never start, its running ones are
    /// asked to stop (on their next heartbeat).
    pub fn cancel_run(&self, run: &str, now: i64) -> Result<Run, StoreError> {
        let run = self.run(run)?;
        self.write(|tx| {
            tx.run("UPDATE job_runs SET cancelled = 1 WHERE id = ?1", [&run.id])
                .map_err(|e| self.db(e))?;
            tx.run(
                "UPDATE job_tasks SET state = 'cancelled', ended_at = ?2
                 WHERE run_id = ?1 AND state = 'queued'",
                params![run.id, now],
            )
            .map_err(|e| self.db(e))?;
            tx.run(
                "UPDATE job_tasks SET cancel = 1 WHERE run_id = ?1 AND state = 'running'",
                [&run.id],
            )
            .map_err(|e| self.db(e))?;
            settle_run(tx, &run.id, now).map_err(|e| self.db(e))
        })?;
        self.run(&run.id)
    }

    /// Cancels one task: at once when queued, on its runner's next
    /// heartbeat when running.
    pub fn cancel_task(&self, task: &str, now: i64) -> Result<Task, StoreError> {
        let found = self.task(task)?;
        self.write(|tx| {
            tx.run(
                "UPDATE job_tasks SET state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
                     ended_at = CASE WHEN state = 'queued' THEN ?2 ELSE ended_at END,
                     cancel = (state = 'running')
                 WHERE id = ?1",
                params![task, now],
            )
            .map_err(|e| self.db(e))?;
            settle_run(tx, &found.run_id, now).map_err(|e| self.db(e))
        })?;
        self.task(task)
    }

    /// Queues again the tasks of `run` that `scope` names; their earlier
    /// attempts stay. Answers the tasks queued.
    pub fn retry_tasks(
        &self,
        run: &str,
        scope: &RetryScope,
        now: i64,
    ) -> Result<Vec<Task>, StoreError> {
        let run = self.run(run)?;
        let targets: Vec<Task> = match scope {
            RetryScope::Failed => self
                .tasks_of(&run.id)?
                .into_iter()
                .filter(|t| t.state.is_final() && t.state != TaskState::Completed)
                .collect(),
            RetryScope::One(id) => {
                let task = self.task(id)?;
                if task.run_id != run.id {
                    return Err(StoreError::TaskNotFound(id.clone()));
                }
                if !task.state.is_final() {
                    return Err(StoreError::TaskState {
                        task: task.id,
                        state: task.state.to_string(),
                        hint: "only a task that ended can be retried",
                    });
                }
                vec![task]
            }
        };
        self.write(|tx| {
            tx.run(
                "UPDATE job_runs SET cancelled = 0, state = 'running', ended_at = NULL
                 WHERE id = ?1",
                [&run.id],
            )
            .map_err(|e| self.db(e))?;
            for task in &targets {
                tx.run(
                    "UPDATE job_tasks SET state = 'queued', queued_at = ?2, resets = 0, cancel = 0
                     WHERE id = ?1",
                    params![task.id, now],
                )
                .map_err(|e| self.db(e))?;
            }
            settle_run(tx, &run.id, now).map_err(|e| self.db(e))
        })?;
        targets.iter().map(|t| self.task(&t.id)).collect()
    }

    /// Appends to a task's log; answers the entry's position.
    pub fn append_log(
        &self,
        task: &str,
        attempt: u32,
        at: i64,
        event: &LogEvent,
    ) -> Result<u64, StoreError> {
        let text = encode("task", task, "log", event)?;
        self.conn()
            .row(
                "INSERT INTO job_logs (task_id, seq, attempt, at, event)
                 VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM job_logs WHERE task_id = ?1),
                         ?2, ?3, ?4)
                 RETURNING seq",
                params![task, attempt, at, text],
                |row| row.get::<_, i64>(0),
            )
            .map(|seq| seq as u64)
            .map_err(|e| self.db(e))
    }

    /// A task's log entries after position `after`, at most `limit`.
    pub fn log_after(
        &self,
        task: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, attempt, at, event FROM job_logs WHERE task_id = ?1 AND seq > ?2
                 ORDER BY seq LIMIT ?3",
            )
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map(params![task, after as i64, limit], |row| {
                Ok((
                    row.get::<_, i64>(0)? as u64,
                    row.get::<_, u32>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| self.db(e))?;
        rows.into_iter()
            .map(|(seq, attempt, at, event)| {
                Ok(LogEntry {
                    seq,
                    attempt,
                    at,
                    event: decode("task", task, "log", &event)?,
                })
            })
            .collect()
    }

    /// Records where a task's change was pushed.
    pub fn set_published(&self, task: &str, branch: &str, commit: &str) -> Result<(), StoreError> {
        self.conn()
            .run(
                "UPDATE job_tasks SET published_branch = ?2, published_commit = ?3 WHERE id = ?1",
                params![task, branch, commit],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The commit berth last pushed to `branch` of the repository at `url`,
    /// by any run.
    pub fn last_published(&self, url: &str, branch: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .row(
                "SELECT t.published_commit FROM job_tasks t JOIN job_runs r ON r.id = t.run_id
                 WHERE t.url = ?1 AND t.published_branch = ?2
                 ORDER BY r.created_at DESC, t.id DESC LIMIT 1",
                params![url, branch],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.db(e))
    }

    /// Records a scheduled time at which no run started.
    pub fn record_skipped_time(&self, job: &str, at: i64, reason: &str) -> Result<(), StoreError> {
        self.conn()
            .run(
                "INSERT INTO job_skipped_times (job, at, reason) VALUES (?1, ?2, ?3)",
                params![job, at, reason],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub fn skipped_times(&self, job: &str) -> Result<Vec<SkippedTime>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT job, at, reason FROM job_skipped_times WHERE job = ?1 ORDER BY at",
            )
            .map_err(|e| self.db(e))?;
        stmt.query_map([job], |row| {
            Ok(SkippedTime {
                job: row.get(0)?,
                at: row.get(1)?,
                reason: row.get(2)?,
            })
        })
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| self.db(e))
    }
}

/// Brings a run's state in line with its tasks: running while any task
/// is queued or running, then what they came to.
fn settle_run(tx: &Transaction<'_>, run: &str, now: i64) -> rusqlite::Result<()> {
    let cancelled: bool = tx.row(
        "SELECT cancelled FROM job_runs WHERE id = ?1",
        [run],
        |row| row.get(0),
    )?;
    let mut stmt = tx.prepare_cached("SELECT state FROM job_tasks WHERE run_id = ?1")?;
    let states = stmt
        .query_map([run], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let states: Vec<TaskState> = states.iter().filter_map(|s| TaskState::parse(s)).collect();
    let state = if states.iter().any(|s| !s.is_final()) {
        RunState::Running
    } else {
        RunState::of_final(&states, cancelled)
    };
    tx.run(
        "UPDATE job_runs SET state = ?2,
             ended_at = CASE WHEN ?2 = 'running' THEN NULL ELSE coalesce(ended_at, ?3) END
         WHERE id = ?1",
        params![run, state.as_str(), now],
    )?;
    Ok(())
}

/// A task row, its state still text.
struct RawTask(Task);

impl RawTask {
    fn with_state(self, state: &str) -> Result<Task, StoreError> {
        let mut task = self.0;
        task.state = parse_task_state(&task.id, state)?;
        Ok(task)
    }
}

fn read_task(row: &Row<'_>) -> rusqlite::Result<(RawTask, String)> {
    Ok((
        RawTask(Task {
            id: row.get(0)?,
            run_id: row.get(1)?,
            position: row.get(2)?,
            url: row.get(3)?,
            reference: row.get(4)?,
            credential: row.get(5)?,
            state: TaskState::Queued,
            attempts: row.get(7)?,
            resets: row.get(8)?,
            runner: row.get(9)?,
            exit_code: row.get(10)?,
            failed_step: row.get(11)?,
            error: row.get(12)?,
            base_commit: row.get(13)?,
            workspace: row.get(14)?,
            patch_size: row.get::<_, Option<i64>>(15)?.unwrap_or(0) as u64,
            started_at: row.get(16)?,
            ended_at: row.get(17)?,
            published_branch: row.get(18)?,
            published_commit: row.get(19)?,
        }),
        row.get(6)?,
    ))
}

fn parse_task_state(task: &str, state: &str) -> Result<TaskState, StoreError> {
    TaskState::parse(state).ok_or_else(|| StoreError::Corrupt {
        what: "task",
        key: task.into(),
        field: "state",
        detail: format!("unknown state `{state}`"),
    })
}

fn encode<T: serde::Serialize>(
    what: &'static str,
    key: &str,
    field: &'static str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode {
        what,
        key: key.into(),
        field,
        source,
    })
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    key: &str,
    field: &'static str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what,
        key: key.into(),
        field,
        detail: e.to_string(),
    })
}

/// The tasks a claim may take, whatever their due time: queued, of a run
/// not cancelled and below its concurrency.
const CLAIMABLE: &str = "job_tasks t JOIN job_runs r ON r.id = t.run_id
     WHERE t.state = 'queued' AND r.cancelled = 0
       AND (SELECT count(*) FROM job_tasks x
            WHERE x.run_id = t.run_id AND x.state = 'running') < r.concurrency";

/// The oldest claimable task due at `now`, with its attempts so far.
fn due(conn: &rusqlite::Connection, now: i64) -> rusqlite::Result<Option<(String, u32)>> {
    conn.row(
        &format!(
            "SELECT t.id, t.attempts FROM {CLAIMABLE} AND t.queued_at <= ?1
             ORDER BY t.queued_at, t.run_id, t.position LIMIT 1"
        ),
        [now],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
}

/// Starts the next attempt of `id` under `token`, held by `runner`;
/// answers the task's id and its run's spec.
fn take(
    tx: &Transaction,
    id: &str,
    token: &str,
    runner: &str,
    now: i64,
) -> rusqlite::Result<Option<(String, String)>> {
    tx.run(
        "UPDATE job_tasks SET state = 'running', attempts = attempts + 1, token = ?2,
             runner = ?3, heartbeat_at = ?4, started_at = ?4, ended_at = NULL,
             exit_code = NULL, failed_step = NULL, error = NULL, patch = NULL,
             workspace = NULL, base_commit = NULL, cancel = 0
         WHERE id = ?1",
        params![id, token, runner, now],
    )?;
    tx.run(
        "INSERT INTO job_attempts (task_id, attempt, state, runner, started_at)
         SELECT id, attempts, 'running', runner, started_at FROM job_tasks WHERE id = ?1",
        [id],
    )?;
    tx.row(
        "SELECT t.id, r.spec FROM job_tasks t JOIN job_runs r ON r.id = t.run_id WHERE t.id = ?1",
        [id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
}
