//! What the front ends that speak over a wire (HTTP, NATS) send and answer
//! about jobs: the requests and the listings, pages and events around the
//! service's own types, so that every front end and client reads and writes
//! the same shapes.

use crate::{JobSummary, Published};
use berth_core::job::{LogEntry, Run, SkippedTime, Task, TaskState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The most log entries one page holds.
pub const LOG_PAGE_MAX: u32 = 1000;

/// Every job with its last run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
}

/// A job's runs, oldest first, and the scheduled times at which none started.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<Run>,
    pub skipped: Vec<SkippedTime>,
}

/// A page of a task's log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    /// The position to ask for the next page `after`: the last entry's, or
    /// the one asked for when the page is empty.
    pub next: u64,
    /// The task has ended and this page reaches the end of its log: no
    /// entry will come after it (until the task is retried).
    pub done: bool,
}

/// One item of a followed log: an entry, then `end` once the task ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LogLine {
    Entry(LogEntry),
    End(LogEnd),
}

/// The last item of a followed log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogEnd {
    /// Always `end`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The state the task ended in.
    pub state: TaskState,
}

impl LogEnd {
    pub fn new(state: TaskState) -> Self {
        LogEnd {
            kind: "end".into(),
            state,
        }
    }
}

/// A run's live state: a snapshot first, then an event per change of a
/// task, and a `run` event when the run's own state changes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    Snapshot { run: Run, tasks: Vec<Task> },
    Task { task: Box<Task> },
    Run { run: Run },
}

/// Publishing a run's succeeded tasks as a branch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub branch: String,
    /// The commit message; `berth job JOB` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What publishing did, one entry per succeeded task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublishResponse {
    pub published: Vec<Published>,
}

/// A job's new schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// A cron expression (UTC).
    pub cron: String,
}
