//! berth's batch jobs: one script over many repositories, each in its own
//! workspace. A job spec ([`spec`]) makes runs; each repository is a task
//! of its run, queued in a [`queue::TaskQueue`], claimed by runners, run in
//! a workspace provisioned through the provider's cache, with its log
//! persisted as it is produced and its patch collected.

pub mod api;
mod changes;
pub mod follow;
pub mod publish;
pub mod queue;
pub mod runner;
pub mod schedule;
pub mod service;
pub mod spec;
mod utf8;

pub use publish::Published;
pub use queue::{Heartbeat, QueueError, SqliteQueue, TaskQueue};
pub use runner::{Runner, RunnerConfig};
pub use schedule::{Fired, Scheduler};
pub use service::{JobError, JobSummary, Jobs, RunDetails, TaskDetails};
pub use spec::{JobSpec, Keep};
