//! A running task handed from one attempt to the next without going back
//! through the queue: a shared work queue delivered the task again (its
//! holder stopped answering), so the attempt that held it ends and the new
//! delivery's attempt holds it from now on. The old token is refused after.

use crate::Cached as _;
use crate::{Store, StoreError};
use berth_core::job::{Claimed, Task};
use rusqlite::{OptionalExtension, params};

impl Store {
    /// The token of the attempt holding a running task; `None` when the
    /// task is not running.
    pub fn held_token(&self, task: &str) -> Result<Option<String>, StoreError> {
        let token: Option<Option<String>> = self
            .conn()
            .row(
                "SELECT token FROM job_tasks WHERE id = ?1 AND state = 'running'",
                [task],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        Ok(token.flatten())
    }

    /// Names `runner` as the holder of the attempt under `token`.
    pub fn set_task_runner(&self, task: &str, token: &str, runner: &str) -> Result<(), StoreError> {
        let changed = self
            .write(|tx| {
                let changed = tx
                    .run(
                        "UPDATE job_tasks SET runner = ?3
                         WHERE id = ?1 AND token = ?2 AND state = 'running'",
                        params![task, token, runner],
                    )
                    .map_err(|e| self.db(e))?;
                tx.run(
                    "UPDATE job_attempts SET runner = ?2
                     WHERE task_id = ?1 AND attempt = (SELECT attempts FROM job_tasks WHERE id = ?1)",
                    params![task, runner],
                )
                .map_err(|e| self.db(e))?;
                Ok(changed)
            })?;
        if changed == 0 {
            return Err(StoreError::AttemptLost { task: task.into() });
        }
        Ok(())
    }

    /// Ends the attempt holding `held` as errored with `error` (counted as
    /// a reset) and starts the next attempt under `token`, held by
    /// `runner`. Refused when `held` no longer holds the task.
    pub fn hand_over(
        &self,
        task: &str,
        held: &str,
        token: &str,
        runner: &str,
        error: &str,
        now: i64,
    ) -> Result<Task, StoreError> {
        self.write(|tx| {
            let changed = tx
                .run(
                    "UPDATE job_attempts SET state = 'errored', error = ?3, ended_at = ?4
                     WHERE task_id = ?1
                       AND attempt = (SELECT attempts FROM job_tasks
                                      WHERE id = ?1 AND token = ?2 AND state = 'running')",
                    params![task, held, error, now],
                )
                .map_err(|e| self.db(e))?;
            if changed == 0 {
                return Err(StoreError::AttemptLost { task: task.into() });
            }
            tx.run(
                "UPDATE job_tasks SET attempts = attempts + 1, resets = resets + 1, token = ?2,
                     runner = ?3, heartbeat_at = ?4, started_at = ?4, base_commit = NULL
                 WHERE id = ?1",
                params![task, token, runner, now],
            )
            .map_err(|e| self.db(e))?;
            tx.run(
                "INSERT INTO job_attempts (task_id, attempt, state, runner, started_at)
                 SELECT id, attempts, 'running', runner, started_at FROM job_tasks WHERE id = ?1",
                [task],
            )
            .map_err(|e| self.db(e))?;
            Ok(())
        })?;
        self.task(task)
    }
}

impl Store {
    /// The running tasks `runner` holds, as claimed: what a dispatcher
    /// that stopped between taking and handing them over hands over again.
    pub fn held_by(&self, runner: &str) -> Result<Vec<Claimed>, StoreError> {
        let rows: Vec<(String, String, String)> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT t.id, t.token, r.spec FROM job_tasks t JOIN job_runs r ON r.id = t.run_id
                     WHERE t.state = 'running' AND t.runner = ?1 AND t.token IS NOT NULL
                     ORDER BY t.queued_at, t.run_id, t.position",
                )
                .map_err(|e| self.db(e))?;
            stmt.query_map([runner], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| self.db(e))?
        };
        rows.into_iter()
            .map(|(id, token, spec)| {
                Ok(Claimed {
                    task: self.task(&id)?,
                    token,
                    spec: crate::jobs::decode("task", &id, "spec", &spec)?,
                })
            })
            .collect()
    }
}
