//! The queue in berth's registry, driven with a manual clock: claims are
//! atomic and FIFO, heartbeats carry cancellation, stalled tasks are
//! requeued a bounded number of times, stale results are refused; within
//! the process, work and cancellation are signalled at once.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_core::ManualClock;
use berth_core::job::{Finish, NewRun, NewTask, RunState, Stalled, TaskState};
use berth_jobs::{Heartbeat, QueueError, SqliteQueue, TaskQueue};
use berth_store::Store;
use futures::FutureExt;
use std::sync::Arc;
use std::time::Duration;

const T0: i64 = 1_800_000_000_000;

struct World {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    clock: Arc<ManualClock>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        World {
            _dir: dir,
            store,
            clock: Arc::new(ManualClock::at(T0)),
        }
    }

    fn queue(&self, stall_secs: u64, max_resets: u32) -> SqliteQueue {
        SqliteQueue::new(self.store.clone(), self.clock.clone())
            .with_stall(Duration::from_secs(stall_secs), max_resets)
    }

    async fn run(&self, queue: &SqliteQueue, repos: usize, concurrency: u32) -> String {
        self.store
            .upsert_job("j", &serde_json::json!({"name": "j"}), None, T0)
            .unwrap();
        let tasks = (0..repos)
            .map(|i| NewTask {
                url: format!("https://git.example.com/r{i}.git"),
                reference: None,
                credential: None,
            })
            .collect();
        queue
            .enqueue(NewRun {
                job: "j".into(),
                spec: serde_json::json!({"name": "j"}),
                trigger: "manual".into(),
                concurrency,
                tasks,
            })
            .await
            .unwrap()
            .id
    }
}

fn done(state: TaskState) -> Finish {
    Finish {
        state: Some(state),
        ..Finish::default()
    }
}

#[tokio::test]
async fn claims_are_fifo_and_never_hand_one_task_to_two_runners() {
    let world = World::new();
    let queue = Arc::new(world.queue(60, 3));
    let run = world.run(&queue, 40, 100).await;
    let mut claimers = Vec::new();
    for r in 0..8 {
        let queue = queue.clone();
        claimers.push(tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut got = Vec::new();
            while let Some(claim) = rt.block_on(queue.claim(&format!("runner-{r}"))).unwrap() {
                got.push(claim.task.position);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for claimer in claimers {
        let got = claimer.await.unwrap();
        // Each runner sees the queue in order.
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        all.extend(got);
    }
    all.sort();
    assert_eq!(all, (0..40).collect::<Vec<u32>>());
    let tasks = world.store.tasks_of(&run).unwrap();
    assert!(
        tasks
            .iter()
            .all(|t| t.state == TaskState::Running && t.attempts == 1)
    );
}

#[tokio::test]
async fn a_run_never_has_more_tasks_running_than_its_concurrency() {
    let world = World::new();
    let queue = world.queue(60, 3);
    world.run(&queue, 5, 2).await;
    let a = queue.claim("r").await.unwrap().unwrap();
    let _b = queue.claim("r").await.unwrap().unwrap();
    assert!(queue.claim("r").await.unwrap().is_none());
    queue
        .complete(&a.task.id, &a.token, done(TaskState::Completed))
        .await
        .unwrap();
    assert!(queue.claim("r").await.unwrap().is_some());
}

#[tokio::test]
async fn the_heartbeat_answer_carries_cancellation_and_queued_tasks_never_start() {
    let world = World::new();
    let queue = world.queue(60, 3);
    let run = world.run(&queue, 3, 1).await;
    let claim = queue.claim("r").await.unwrap().unwrap();
    assert_eq!(
        queue.heartbeat(&claim.task.id, &claim.token).await.unwrap(),
        Heartbeat::Continue
    );
    world.store.cancel_run(&run, T0).unwrap();
    assert_eq!(
        queue.heartbeat(&claim.task.id, &claim.token).await.unwrap(),
        Heartbeat::Cancel
    );
    assert!(queue.claim("r").await.unwrap().is_none());
    queue
        .complete(&claim.task.id, &claim.token, done(TaskState::Cancelled))
        .await
        .unwrap();
    let tasks = world.store.tasks_of(&run).unwrap();
    assert!(tasks.iter().all(|t| t.state == TaskState::Cancelled));
    assert_eq!(
        tasks[1].attempts, 0,
        "a queued task of a cancelled run never started"
    );
    assert_eq!(world.store.run(&run).unwrap().state, RunState::Cancelled);
}

#[tokio::test]
async fn a_cancel_through_the_queue_reaches_the_holder_at_once_without_a_heartbeat() {
    let world = World::new();
    let queue = world.queue(60, 3);
    let run = world.run(&queue, 4, 2).await;
    let (a, b) = (
        queue.claim("r").await.unwrap().unwrap(),
        queue.claim("r").await.unwrap().unwrap(),
    );
    assert!(!a.cancelled.is_cancelled() && !b.cancelled.is_cancelled());

    // One task: its holder is told, the other holder is not.
    queue.cancel_task(&a.task.id).await.unwrap();
    assert!(a.cancelled.is_cancelled());
    assert!(!b.cancelled.is_cancelled());

    // The run: the other holder is told too, and its queued tasks end.
    let cancelled = queue.cancel_run(&run).await.unwrap();
    assert_eq!(cancelled.id, run);
    assert!(b.cancelled.is_cancelled());
    assert!(queue.claim("r").await.unwrap().is_none());
    for claim in [&a, &b] {
        queue
            .complete(&claim.task.id, &claim.token, done(TaskState::Cancelled))
            .await
            .unwrap();
    }
    let tasks = world.store.tasks_of(&run).unwrap();
    assert!(tasks.iter().all(|t| t.state == TaskState::Cancelled));
    assert_eq!(tasks.iter().filter(|t| t.attempts == 0).count(), 2);
}

#[tokio::test]
async fn work_wakes_an_idle_runner_when_queued_when_a_task_ends_and_when_retried() {
    let world = World::new();
    let queue = world.queue(60, 3);
    let mut work = queue.work();
    assert!(work.changed().now_or_never().is_none(), "no work yet");
    let run = world.run(&queue, 2, 1).await;
    assert!(work.changed().now_or_never().is_some(), "a run was queued");
    let claim = queue.claim("r").await.unwrap().unwrap();
    // The run's concurrency is taken: nothing is claimable, nothing said.
    assert!(queue.claim("r").await.unwrap().is_none());
    assert!(work.changed().now_or_never().is_none());
    queue
        .complete(&claim.task.id, &claim.token, done(TaskState::Failed))
        .await
        .unwrap();
    assert!(work.changed().now_or_never().is_some(), "a task ended");
    let next = queue.claim("r").await.unwrap().unwrap();
    queue
        .complete(&next.task.id, &next.token, done(TaskState::Completed))
        .await
        .unwrap();
    assert!(work.changed().now_or_never().is_some());
    queue
        .retry(&run, &berth_core::job::RetryScope::Failed)
        .await
        .unwrap();
    assert!(
        work.changed().now_or_never().is_some(),
        "a task was retried"
    );
    assert_eq!(
        queue.claim("r").await.unwrap().unwrap().task.id,
        claim.task.id
    );
}

#[tokio::test]
async fn a_runner_that_died_is_requeued_then_a_late_result_of_the_dead_attempt_is_refused() {
    let world = World::new();
    let queue = world.queue(60, 1);
    let run = world.run(&queue, 1, 1).await;
    let dead = queue.claim("dead").await.unwrap().unwrap();
    world.clock.advance_ms(59_000);
    assert!(queue.requeue_stalled().await.unwrap().is_empty());
    world.clock.advance_ms(2_000);
    assert_eq!(
        queue.requeue_stalled().await.unwrap(),
        vec![Stalled::Requeued {
            task: dead.task.id.clone()
        }]
    );
    let alive = queue.claim("alive").await.unwrap().unwrap();
    assert_eq!(alive.task.attempts, 2);
    // The killed attempt comes back: its heartbeat and its result are refused.
    assert!(matches!(
        queue.heartbeat(&dead.task.id, &dead.token).await,
        Err(QueueError::Lost { .. })
    ));
    assert!(matches!(
        queue
            .complete(&dead.task.id, &dead.token, done(TaskState::Completed))
            .await,
        Err(QueueError::Lost { .. })
    ));
    let task = queue
        .complete(&alive.task.id, &alive.token, done(TaskState::Completed))
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::Completed);
    // Completed once: a second result of the same attempt is refused too.
    assert!(
        queue
            .complete(&alive.task.id, &alive.token, done(TaskState::Failed))
            .await
            .is_err()
    );
    let attempts = world.store.attempts_of(&alive.task.id).unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].state, TaskState::Errored);
    assert!(attempts[0].error.as_deref().unwrap().contains("`dead`"));
    assert_eq!(world.store.run(&run).unwrap().state, RunState::Completed);
}

#[tokio::test]
async fn with_no_resets_left_a_stalled_task_fails_saying_its_runner_died() {
    let world = World::new();
    let queue = world.queue(10, 0);
    let run = world.run(&queue, 1, 1).await;
    let claim = queue.claim("gone").await.unwrap().unwrap();
    world.clock.advance_ms(11_000);
    assert_eq!(
        queue.requeue_stalled().await.unwrap(),
        vec![Stalled::Failed {
            task: claim.task.id.clone()
        }]
    );
    let task = world.store.task(&claim.task.id).unwrap();
    assert_eq!(task.state, TaskState::Failed);
    assert!(task.error.unwrap().contains("runner `gone` died"));
    assert_eq!(world.store.run(&run).unwrap().state, RunState::Failed);
}

#[tokio::test]
async fn an_errored_task_is_retried_after_its_backoff_and_runs_end_partial() {
    let world = World::new();
    let queue = world.queue(60, 3);
    let run = world.run(&queue, 2, 2).await;
    let a = queue.claim("r").await.unwrap().unwrap();
    let b = queue.claim("r").await.unwrap().unwrap();
    queue
        .complete(
            &a.task.id,
            &a.token,
            Finish {
                state: Some(TaskState::Errored),
                error: Some("the runtime went away".into()),
                retry_at: Some(T0 + 5_000),
                ..Finish::default()
            },
        )
        .await
        .unwrap();
    queue
        .complete(&b.task.id, &b.token, done(TaskState::Completed))
        .await
        .unwrap();
    assert_eq!(world.store.run(&run).unwrap().state, RunState::Running);
    assert!(
        queue.claim("r").await.unwrap().is_none(),
        "not before its backoff"
    );
    world.clock.advance_ms(5_000);
    let again = queue.claim("r").await.unwrap().unwrap();
    assert_eq!(again.task.id, a.task.id);
    assert_eq!(again.task.attempts, 2);
    queue
        .complete(
            &again.task.id,
            &again.token,
            Finish {
                state: Some(TaskState::Failed),
                exit_code: Some(3),
                failed_step: Some("bump".into()),
                ..Finish::default()
            },
        )
        .await
        .unwrap();
    let run = world.store.run(&run).unwrap();
    assert_eq!(run.state, RunState::Partial);
    assert!(run.ended_at.is_some());
    // Retrying the failed tasks queues them again beside their attempts.
    let retried = world
        .store
        .retry_tasks(&run.id, &berth_core::job::RetryScope::Failed, T0)
        .unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(world.store.run(&run.id).unwrap().state, RunState::Running);
    let third = queue.claim("r").await.unwrap().unwrap();
    assert_eq!(third.task.attempts, 3);
    assert_eq!(world.store.attempts_of(&third.task.id).unwrap().len(), 3);
}
