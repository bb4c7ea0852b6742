//! Schedules: a job's cron expression (UTC) starts a run at each of its
//! times while a server runs. A time that comes while the job's previous
//! run is still active starts nothing and is recorded as skipped. Time is
//! the jobs service's clock, so schedules are tested without waiting.

use crate::{JobError, Jobs};
use berth_core::job::Run;
use chrono::{DateTime, Utc};
use croner::Cron;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Times of one job looked at in one tick, at most: a clock that jumped
/// far ahead does not start a flood of runs.
const MAX_TIMES_PER_TICK: usize = 100;

/// Parses a standard cron expression.
pub(crate) fn parse(expr: &str) -> Result<Cron, String> {
    expr.parse::<Cron>()
        .map_err(|e| format!("`{expr}` is not a cron expression: {e}"))
}

/// The first time of `cron` strictly after `after_ms`, in ms.
fn next_after(cron: &Cron, after_ms: i64) -> Option<i64> {
    let after = DateTime::<Utc>::from_timestamp_millis(after_ms)?;
    cron.find_next_occurrence(&after, false)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// What one scheduled time did.
#[derive(Debug, Clone, PartialEq)]
pub enum Fired {
    Started {
        job: String,
        at: i64,
        run: Run,
    },
    Skipped {
        job: String,
        at: i64,
        reason: String,
    },
}

/// Starts the runs of scheduled jobs as their times come.
pub struct Scheduler {
    jobs: Jobs,
    /// Per job, the time up to which its schedule was looked at.
    seen: Mutex<HashMap<String, i64>>,
    /// Times before this are not this scheduler's to start.
    since: i64,
}

impl Scheduler {
    /// A scheduler that starts what falls due from now on.
    pub fn new(jobs: Jobs) -> Self {
        let since = jobs.clock().now_ms();
        Scheduler {
            jobs,
            seen: Mutex::new(HashMap::new()),
            since,
        }
    }

    /// Starts (or records as skipped) every scheduled time that came since
    /// the last tick.
    pub async fn tick(&self) -> Result<Vec<Fired>, JobError> {
        let now = self.jobs.clock().now_ms();
        let mut fired = Vec::new();
        for job in self.jobs.store.jobs()? {
            let Some(expr) = &job.schedule else {
                continue;
            };
            let Ok(cron) = parse(expr) else {
                tracing::warn!(job = %job.name, schedule = %expr, "an unreadable schedule");
                continue;
            };
            let from = self.seen_until(&job.name).unwrap_or(self.since);
            let mut at = from;
            for _ in 0..MAX_TIMES_PER_TICK {
                match next_after(&cron, at) {
                    Some(next) if next <= now => at = next,
                    _ => break,
                }
                fired.push(self.fire(&job.name, at).await?);
            }
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(job.name.clone(), now.max(at));
        }
        Ok(fired)
    }

    fn seen_until(&self, job: &str) -> Option<i64> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job)
            .copied()
    }

    async fn fire(&self, job: &str, at: i64) -> Result<Fired, JobError> {
        let store = &self.jobs.store;
        if let Some(active) = store
            .runs_of(job)?
            .into_iter()
            .rfind(|r| r.state == berth_core::job::RunState::Running)
        {
            let reason = format!("run {} of the job was still active", active.id);
            store.record_skipped_time(job, at, &reason)?;
            return Ok(Fired::Skipped {
                job: job.to_owned(),
                at,
                reason,
            });
        }
        let run = self.jobs.start_registered(job, "schedule").await?;
        Ok(Fired::Started {
            job: job.to_owned(),
            at,
            run,
        })
    }

    /// Ticks every `every` until `shutdown`.
    pub async fn serve(&self, every: Duration, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {
                    if let Err(e) = self.tick().await {
                        tracing::warn!(error = %e, "cannot start scheduled runs");
                    }
                }
            }
        }
    }
}
