//! Batch jobs as the registry keeps them: runs, their tasks (one per
//! repository), each task's attempts and its log, and the states they move
//! through. The job spec itself and the queue live in `berth-jobs`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Mutex;
use utoipa::ToSchema;

/// A new lowercase ULID: ids sort by creation time, even within one
/// millisecond of one process.
fn ulid() -> String {
    static GENERATOR: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());
    let mut generator = GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let id = generator
        .generate()
        .unwrap_or_else(|_| ulid::Ulid::generate());
    id.to_string().to_ascii_lowercase()
}

/// A new run or task id.
pub fn generate_id() -> String {
    ulid()
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Running,
    /// Every step succeeded; the task has its patch.
    Completed,
    /// A step failed (non-zero exit).
    Failed,
    /// berth could not run it (provisioning, the runtime); retried while
    /// the job's `retries` allow, then final.
    Errored,
    Cancelled,
    TimedOut,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Errored => "errored",
            TaskState::Cancelled => "cancelled",
            TaskState::TimedOut => "timed_out",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "completed" => TaskState::Completed,
            "failed" => TaskState::Failed,
            "errored" => TaskState::Errored,
            "cancelled" => TaskState::Cancelled,
            "timed_out" => TaskState::TimedOut,
            _ => return None,
        })
    }

    /// Whether the task is over (until someone retries it).
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Queued | TaskState::Running)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a run is: active while any task is, then what its tasks came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    /// Every task completed.
    Completed,
    /// No task completed.
    Failed,
    /// Some tasks completed, some did not.
    Partial,
    /// The run was cancelled before every task ended.
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Partial => "partial",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => RunState::Running,
            "completed" => RunState::Completed,
            "failed" => RunState::Failed,
            "partial" => RunState::Partial,
            "cancelled" => RunState::Cancelled,
            _ => return None,
        })
    }

    /// What a run whose tasks all ended in `states` came to.
    pub fn of_final(states: &[TaskState], cancelled: bool) -> RunState {
        let completed = states
            .iter()
            .filter(|s| **s == TaskState::Completed)
            .count();
        if cancelled && completed < states.len() {
            RunState::Cancelled
        } else if completed == states.len() {
            RunState::Completed
        } else if completed == 0 {
            RunState::Failed
        } else {
            RunState::Partial
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as registered: its name, its spec (the jobs crate's JSON) and
/// its schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobRecord {
    pub name: String,
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// A cron expression; the server starts a run at each of its times.
    pub schedule: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One execution of a job over its repositories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub id: String,
    pub job: String,
    pub state: RunState,
    /// `manual` or `schedule`.
    pub trigger: String,
    /// Tasks of this run running at once, at most.
    pub concurrency: u32,
    pub cancelled: bool,
    pub created_at: i64,
    pub ended_at: Option<i64>,
}

/// One repository of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub run_id: String,
    /// The repository's place in the job's list.
    pub position: u32,
    pub url: String,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub credential: Option<String>,
    pub state: TaskState,
    /// Attempts made so far (the current one while running).
    pub attempts: u32,
    /// How often the task went back to the queue because its runner died.
    pub resets: u32,
    pub runner: Option<String>,
    pub exit_code: Option<i32>,
    /// The name (or 1-based number) of the step that failed.
    pub failed_step: Option<String>,
    pub error: Option<String>,
    /// The commit the workspace was provisioned at: the patch's base.
    pub base_commit: Option<String>,
    /// The workspace kept for inspection (`keep = "failed"`).
    pub workspace: Option<String>,
    pub patch_size: u64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// Where the task's change was last pushed, and at which commit.
    pub published_branch: Option<String>,
    pub published_commit: Option<String>,
}

/// One attempt of a task, kept beside the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub attempt: u32,
    pub state: TaskState,
    pub runner: Option<String>,
    pub exit_code: Option<i32>,
    pub failed_step: Option<String>,
    pub error: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

/// What a log entry says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEvent {
    /// A step begins (`step` counts from 1).
    StepStart {
        step: u32,
        name: String,
    },
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    /// A step ended with this exit code.
    StepEnd {
        step: u32,
        exit_code: i32,
    },
    /// berth's own word on the task: provisioning, retries, the outcome.
    Note {
        text: String,
    },
    /// Output beyond the task's log bound was dropped: this many bytes.
    Truncated {
        dropped_bytes: u64,
    },
}

/// A persisted log entry of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    /// Position in the task's log, from 1; a follower asks for what comes
    /// after the last it saw.
    pub seq: u64,
    pub attempt: u32,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    #[serde(flatten)]
    pub event: LogEvent,
}

/// A scheduled time at which no run started, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SkippedTime {
    pub job: String,
    pub at: i64,
    pub reason: String,
}

/// A repository to make a task of.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub url: String,
    pub reference: Option<String>,
    pub credential: Option<String>,
}

/// A new run: the job it belongs to, the spec it runs, its tasks.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub job: String,
    pub spec: serde_json::Value,
    pub trigger: String,
    pub concurrency: u32,
    pub tasks: Vec<NewTask>,
}

/// A task a runner now holds.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub task: Task,
    /// The attempt's token: every later word about it must carry it.
    pub token: String,
    /// The spec of the task's run.
    pub spec: serde_json::Value,
}

/// How an attempt ended, as its runner reports it.
#[derive(Debug, Clone, Default)]
pub struct Finish {
    pub state: Option<TaskState>,
    pub exit_code: Option<i32>,
    pub failed_step: Option<String>,
    pub error: Option<String>,
    pub patch: Option<Vec<u8>>,
    pub workspace: Option<String>,
    /// For an errored attempt that may be tried again: when.
    pub retry_at: Option<i64>,
}

/// What became of a task whose runner stopped heartbeating.
#[derive(Debug, Clone, PartialEq)]
pub enum Stalled {
    Requeued { task: String },
    Failed { task: String },
}

/// Which tasks of a run to try again.
#[derive(Debug, Clone)]
pub enum RetryScope {
    /// Every task that ended other than completed.
    Failed,
    One(String),
}
