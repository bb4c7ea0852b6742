//! Following jobs as they go: a task's log entry by entry until the task
//! ends, and a run's tasks change by change until the run ends. Both read
//! the registry, and while nothing new is there wait for the jobs
//! service's word that the log or the run changed (a write through it in this
//! process), or at most `poll`: the fallback for writers in other
//! processes (a `berth runner` on the same home), which cannot wake this
//! one and whose writes the registry alone carries.

use crate::api::{LogEnd, LogLine, RunEvent};
use crate::changes::Change;
use crate::{JobError, Jobs};
use berth_core::job::{LogEntry, Run, RunState, Task, TaskState};
use futures::Stream;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Log entries read from the registry at once.
const PAGE: u32 = 1000;

struct LogFollow {
    jobs: Jobs,
    task: String,
    seen: u64,
    poll: Duration,
    /// The log's and the run's changes, followed before the first read so
    /// that no write after it is missed.
    changes: Option<[Change; 2]>,
    pending: VecDeque<LogEntry>,
    /// The task was seen final: the next read takes what it wrote last.
    ended: Option<TaskState>,
    /// Every entry has been read: `end` comes once `pending` is empty.
    end: Option<TaskState>,
    over: bool,
}

/// A task's log after position `after`, entry by entry as it is written,
/// then an `end` line with the state the task ended in.
pub fn log(
    jobs: Jobs,
    task: String,
    after: u64,
    poll: Duration,
) -> impl Stream<Item = Result<LogLine, JobError>> + Send + 'static {
    let follow = LogFollow {
        jobs,
        task,
        seen: after,
        poll,
        changes: None,
        pending: VecDeque::new(),
        ended: None,
        end: None,
        over: false,
    };
    futures::stream::unfold(follow, |mut f| async move {
        let item = f.next().await;
        if item.as_ref().is_some_and(|r| r.is_err()) {
            f.over = true;
        }
        item.map(|item| (item, f))
    })
}

impl LogFollow {
    async fn next(&mut self) -> Option<Result<LogLine, JobError>> {
        loop {
            if let Some(entry) = self.pending.pop_front() {
                return Some(Ok(LogLine::Entry(entry)));
            }
            if let Some(state) = self.end.take() {
                self.over = true;
                return Some(Ok(LogLine::End(LogEnd::new(state))));
            }
            if self.over {
                return None;
            }
            if self.changes.is_none() {
                let changes = &self.jobs.changes;
                match self.jobs.task_by_id(&self.task) {
                    Ok(task) => {
                        self.changes = Some([
                            changes.logs.subscribe(&task.id),
                            changes.runs.subscribe(&task.run_id),
                        ]);
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            let entries = match self.jobs.log(&self.task, self.seen, PAGE) {
                Ok(entries) => entries,
                Err(e) => return Some(Err(e)),
            };
            let full = entries.len() == PAGE as usize;
            if let Some(last) = entries.last() {
                self.seen = last.seq;
            }
            self.pending.extend(entries);
            if full {
                continue;
            }
            if let Some(state) = self.ended {
                self.end = Some(state);
                continue;
            }
            match self.jobs.task_by_id(&self.task) {
                Ok(task) if task.state.is_final() => self.ended = Some(task.state),
                Ok(_) if self.pending.is_empty() => {
                    wait(self.changes.iter_mut().flatten(), self.poll).await;
                }
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

struct RunFollow {
    jobs: Jobs,
    run: String,
    poll: Duration,
    /// The run's changes, followed before the first read so that no write
    /// after it is missed.
    change: Option<Change>,
    last: Option<(Run, HashMap<String, Task>)>,
    pending: VecDeque<RunEvent>,
    over: bool,
}

/// A run's state: a snapshot, then an event per changed task and per
/// change of the run's own state, ending once the run has ended.
pub fn run(
    jobs: Jobs,
    run: String,
    poll: Duration,
) -> impl Stream<Item = Result<RunEvent, JobError>> + Send + 'static {
    let follow = RunFollow {
        jobs,
        run,
        poll,
        change: None,
        last: None,
        pending: VecDeque::new(),
        over: false,
    };
    futures::stream::unfold(follow, |mut f| async move {
        let item = f.next().await;
        if item.as_ref().is_some_and(|r| r.is_err()) {
            f.over = true;
        }
        item.map(|item| (item, f))
    })
}

impl RunFollow {
    async fn next(&mut self) -> Option<Result<RunEvent, JobError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.over {
                return None;
            }
            if self.change.is_none() {
                // The run by its exact id, which changes are told by.
                match self.jobs.run(&self.run) {
                    Ok(details) => {
                        self.change = Some(self.jobs.changes.runs.subscribe(&details.run.id));
                        self.run = details.run.id;
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            if self.last.is_some() {
                wait(self.change.iter_mut(), self.poll).await;
            }
            let details = match self.jobs.run(&self.run) {
                Ok(details) => details,
                Err(e) => return Some(Err(e)),
            };
            let (run, tasks) = (details.run, details.tasks);
            match &self.last {
                None => self.pending.push_back(RunEvent::Snapshot {
                    run: run.clone(),
                    tasks: tasks.clone(),
                }),
                Some((last_run, last_tasks)) => {
                    for task in &tasks {
                        if last_tasks.get(&task.id) != Some(task) {
                            self.pending.push_back(RunEvent::Task {
                                task: Box::new(task.clone()),
                            });
                        }
                    }
                    if last_run != &run {
                        self.pending.push_back(RunEvent::Run { run: run.clone() });
                    }
                }
            }
            self.over = run.state != RunState::Running;
            let by_id = tasks.into_iter().map(|t| (t.id.clone(), t)).collect();
            self.last = Some((run, by_id));
        }
    }
}

/// Until any of `changes` fires, or at most `poll`.
async fn wait(changes: impl Iterator<Item = &mut Change>, poll: Duration) {
    let changed: Vec<_> = changes.map(|c| Box::pin(c.changed())).collect();
    if changed.is_empty() {
        return tokio::time::sleep(poll).await;
    }
    tokio::select! {
        _ = futures::future::select_all(changed) => {}
        _ = tokio::time::sleep(poll) => {}
    }
}
