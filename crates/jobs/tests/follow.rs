//! Following a task's log and a run's events: what is written through the
//! jobs service's queue reaches a waiting follower at once, with no poll
//! (the poll here is an hour, and every read is a single poll of the
//! stream, never a wait).
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_core::ManualClock;
use berth_core::job::{Finish, LogEvent, NewRun, NewTask, RunState, TaskState};
use berth_jobs::Jobs;
use berth_jobs::api::{LogLine, RunEvent};
use berth_jobs::queue::Claim;
use berth_store::Store;
use futures::stream::FusedStream;
use futures::{FutureExt, Stream, StreamExt};
use std::sync::Arc;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

struct World {
    _dir: tempfile::TempDir,
    jobs: Jobs,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let clock = Arc::new(ManualClock::at(1_800_000_000_000));
        let jobs = Jobs::sqlite(store.clone(), clock);
        store
            .upsert_job("j", &serde_json::json!({"name": "j"}), None, 0)
            .unwrap();
        World { _dir: dir, jobs }
    }

    /// A run of two tasks, the first claimed.
    async fn claimed(&self) -> Claim {
        let tasks = (0..2)
            .map(|i| NewTask {
                url: format!("https://git.example.com/r{i}.git"),
                reference: None,
                credential: None,
            })
            .collect();
        self.jobs
            .queue()
            .enqueue(NewRun {
                job: "j".into(),
                spec: serde_json::json!({"name": "j"}),
                trigger: "manual".into(),
                concurrency: 1,
                tasks,
            })
            .await
            .unwrap();
        self.jobs.queue().claim("runner").await.unwrap().unwrap()
    }

    async fn log(&self, claim: &Claim, text: &str) {
        let event = LogEvent::Stdout { text: text.into() };
        self.jobs
            .queue()
            .log(&claim.task.id, claim.task.attempts, event)
            .await
            .unwrap();
    }

    async fn complete(&self, claim: &Claim) {
        let finish = Finish {
            state: Some(TaskState::Completed),
            ..Finish::default()
        };
        self.jobs
            .queue()
            .complete(&claim.task.id, &claim.token, finish)
            .await
            .unwrap();
    }
}

/// The next item if it is there now, without waiting.
fn now<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    stream.next().now_or_never().flatten()
}

fn stdout(line: Option<Result<LogLine, berth_jobs::JobError>>) -> String {
    match line.unwrap().unwrap() {
        LogLine::Entry(entry) => match entry.event {
            LogEvent::Stdout { text } => text,
            other => panic!("not stdout: {other:?}"),
        },
        LogLine::End(end) => panic!("the log ended: {end:?}"),
    }
}

#[tokio::test]
async fn a_followed_log_line_arrives_as_it_is_written_without_waiting_for_the_poll() {
    let world = World::new();
    let claim = world.claimed().await;
    world.log(&claim, "before\n").await;
    let mut log =
        berth_jobs::follow::log(world.jobs.clone(), claim.task.id.clone(), 0, HOUR).boxed();
    assert_eq!(stdout(now(&mut log)), "before\n");
    // Nothing more yet: the follower waits.
    assert!(now(&mut log).is_none());

    world.log(&claim, "live\n").await;
    assert_eq!(stdout(now(&mut log)), "live\n");
    assert!(now(&mut log).is_none());

    world.log(&claim, "last\n").await;
    world.complete(&claim).await;
    assert_eq!(stdout(now(&mut log)), "last\n");
    match now(&mut log).unwrap().unwrap() {
        LogLine::End(end) => assert_eq!(end.state, TaskState::Completed),
        other => panic!("not the end: {other:?}"),
    }
    assert!(log.next().await.is_none());
}

#[tokio::test]
async fn a_followed_run_tells_each_change_as_it_is_made_without_waiting_for_the_poll() {
    let world = World::new();
    let claim = world.claimed().await;
    let run = claim.task.run_id.clone();
    // Followed by a prefix of its id, as a user may give it.
    let mut events = berth_jobs::follow::run(world.jobs.clone(), run[..8].into(), HOUR)
        .boxed()
        .fuse();
    match now(&mut events).unwrap().unwrap() {
        RunEvent::Snapshot { tasks, .. } => assert_eq!(tasks[0].state, TaskState::Running),
        other => panic!("not the snapshot: {other:?}"),
    }
    assert!(now(&mut events).is_none());

    world.complete(&claim).await;
    match now(&mut events).unwrap().unwrap() {
        RunEvent::Task { task } => {
            assert_eq!(
                (task.id.as_str(), task.state),
                (claim.task.id.as_str(), TaskState::Completed)
            );
        }
        other => panic!("not the task: {other:?}"),
    }
    assert!(now(&mut events).is_none());

    // The second task's claim, and its cancellation, end the run.
    let second = world.jobs.queue().claim("runner").await.unwrap().unwrap();
    match now(&mut events).unwrap().unwrap() {
        RunEvent::Task { task } => assert_eq!(task.state, TaskState::Running),
        other => panic!("not the task: {other:?}"),
    }
    world
        .jobs
        .cancel(&run, Some(&second.task.id))
        .await
        .unwrap();
    world
        .jobs
        .queue()
        .complete(
            &second.task.id,
            &second.token,
            Finish {
                state: Some(TaskState::Cancelled),
                ..Finish::default()
            },
        )
        .await
        .unwrap();
    let mut last = None;
    while let Some(event) = now(&mut events) {
        last = Some(event.unwrap());
    }
    // The stream ended there, with no wait.
    assert!(events.is_terminated(), "{last:?}");
    match last.unwrap() {
        RunEvent::Run { run } => assert_eq!(run.state, RunState::Partial),
        other => panic!("not the run: {other:?}"),
    }
}
