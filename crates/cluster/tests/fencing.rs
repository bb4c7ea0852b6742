//! The controller against nodes' word over a real nats-server: a task
//! delivered again (its first node went silent) belongs to the new
//! delivery, and the late result of the first is refused; a forged or
//! unreadable decision in the events stream is taken by no registry.

use berth_cluster::wire::{Decision, RUNS_PREFIX, dispatch_token};
use berth_cluster::{Controller, NodeQueue, QueueSettings};
use berth_core::SystemClock;
use berth_core::job::{Finish, NewRun, NewTask, RunState, TaskState};
use berth_jobs::queue::{QueueError, TaskQueue};
use berth_store::Store;
use berth_testkit::{NatsServer, temp_dir};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let limit = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < limit, "waited in vain for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn completed(patch: &[u8]) -> Finish {
    Finish {
        state: Some(TaskState::Completed),
        exit_code: Some(0),
        patch: Some(patch.to_vec()),
        ..Finish::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_result_from_a_delivery_thought_dead_is_refused() {
    let nats = NatsServer::start();
    let dir = temp_dir();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    store
        .upsert_job("fence", &serde_json::json!({}), None, 0)
        .unwrap();
    let run = store
        .create_run(
            &NewRun {
                job: "fence".into(),
                spec: serde_json::json!({}),
                trigger: "manual".into(),
                concurrency: 1,
                tasks: vec![NewTask {
                    url: "https://git.example.com/r.git".into(),
                    reference: None,
                    credential: None,
                }],
            },
            0,
        )
        .unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let settings = QueueSettings {
        ack_wait: Duration::from_secs(30),
        max_resets: 3,
    };
    let controller = Controller::open(
        client.clone(),
        store.clone(),
        Arc::new(SystemClock),
        settings,
        Duration::from_millis(10),
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { controller.serve(shutdown).await }
    });

    let first = NodeQueue::open(client.clone(), settings, Duration::from_secs(5))
        .await
        .unwrap();
    let stale = first.claim("first").await.unwrap().unwrap();
    let task = stale.task.id.clone();
    until("the first node to hold the task", || {
        store.task(&task).unwrap().runner.as_deref() == Some("first")
    })
    .await;
    // The task goes to another node as if the first had gone silent.
    first.release_all().await;
    let second = NodeQueue::open(client.clone(), settings, Duration::from_secs(5))
        .await
        .unwrap();
    let fresh = second.claim("second").await.unwrap().unwrap();
    assert_ne!(fresh.token, stale.token);
    until("the task to be handed over", || {
        store.task(&task).unwrap().runner.as_deref() == Some("second")
    })
    .await;

    // The first node comes back with its result: refused.
    let late = first
        .complete(&task, &stale.token, completed(b"late\n"))
        .await;
    assert!(matches!(late, Err(QueueError::Lost { .. })), "{late:?}");
    second
        .complete(&task, &fresh.token, completed(b"fresh\n"))
        .await
        .unwrap();
    until("the run to end", || {
        store.run(&run.id).unwrap().state != RunState::Running
    })
    .await;
    shutdown.cancel();
    serving.await.unwrap().unwrap();

    assert_eq!(store.patch(&task).unwrap().unwrap(), b"fresh\n");
    let attempts = store.attempts_of(&task).unwrap();
    let states: Vec<_> = attempts
        .iter()
        .map(|a| (a.state, a.runner.as_deref()))
        .collect();
    assert_eq!(
        states,
        [
            (TaskState::Errored, Some("first")),
            (TaskState::Completed, Some("second"))
        ]
    );
    assert!(
        attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("stopped answering"),
        "{attempts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_dispatch_of_an_attempt_not_next_and_an_unreadable_decision_are_taken_by_no_registry()
 {
    let nats = NatsServer::start();
    let dir = temp_dir();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    store
        .upsert_job("forge", &serde_json::json!({}), None, 0)
        .unwrap();
    let run = store
        .create_run(
            &NewRun {
                job: "forge".into(),
                spec: serde_json::json!({}),
                trigger: "manual".into(),
                concurrency: 1,
                tasks: vec![NewTask {
                    url: "https://git.example.com/r.git".into(),
                    reference: None,
                    credential: None,
                }],
            },
            0,
        )
        .unwrap();
    let task = store.tasks_of(&run.id).unwrap()[0].id.clone();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let settings = QueueSettings {
        ack_wait: Duration::from_secs(30),
        max_resets: 3,
    };
    let controller = Controller::open(
        client.clone(),
        store.clone(),
        Arc::new(SystemClock),
        settings,
        Duration::from_millis(10),
    )
    .await
    .unwrap();
    // Ahead of anything the controller decides: a decision no one can
    // read, and a dispatch of a later attempt under a token of the
    // forger's choosing.
    let js = async_nats::jetstream::new(client.clone());
    let forged = Decision::Dispatched {
        task: task.clone(),
        attempt: 7,
        token: "forged".into(),
    };
    for body in [
        b"not a decision".to_vec(),
        serde_json::to_vec(&forged).unwrap(),
    ] {
        js.publish(format!("{RUNS_PREFIX}.{task}"), body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { controller.serve(shutdown).await }
    });

    let node = NodeQueue::open(client.clone(), settings, Duration::from_secs(5))
        .await
        .unwrap();
    let claim = node.claim("node").await.unwrap().unwrap();
    assert_eq!(claim.task.id, task);
    assert_eq!(claim.token, dispatch_token(&task, 1));
    node.complete(&task, &claim.token, completed(b"real\n"))
        .await
        .unwrap();
    until("the run to end", || {
        store.run(&run.id).unwrap().state != RunState::Running
    })
    .await;
    shutdown.cancel();
    serving.await.unwrap().unwrap();

    let done = store.task(&task).unwrap();
    assert_eq!(
        (done.state, done.attempts),
        (TaskState::Completed, 1),
        "{done:?}"
    );
    assert_eq!(store.patch(&task).unwrap().unwrap(), b"real\n");
}
