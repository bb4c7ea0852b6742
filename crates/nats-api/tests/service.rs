//! The NATS API end to end: a real nats-server, a real provider with the
//! `local` runtime in a scratch home, the service over it, and the client
//! (or raw NATS requests, for what a client could send).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_client::ClientError;
use berth_core::{ExecEvent, ExecRequest, Spec};
use berth_jobs::api::RunEvent;
use berth_jobs::{JobSpec, Jobs};
use berth_nats_api::protocol::{self, Control};
use berth_nats_api::{NatsClient, Op, ServiceConfig};
use berth_provider::{CreateOptions, Provider, ProviderConfig};
use berth_runtime_local::LocalRuntime;
use berth_server::ErrorBody;
use berth_testkit::NatsServer;
use futures::StreamExt as _;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

/// The heartbeat interval of the services here: short, so that a client
/// that goes away is noticed within a second.
const KEEPALIVE: Duration = Duration::from_millis(100);

struct Api {
    nats: NatsServer,
    provider: Provider,
    jobs: Jobs,
    client: NatsClient,
    shutdown: CancellationToken,
    _home: tempfile::TempDir,
}

impl Api {
    async fn start() -> Api {
        let nats = NatsServer::start();
        let home = tempfile::tempdir().unwrap();
        let config =
            ProviderConfig::new(home.path()).runtime(Arc::new(LocalRuntime::new(home.path())));
        let provider = Provider::open(config).await.unwrap();
        // No runner: runs stay queued.
        let jobs = Jobs::sqlite(
            Arc::new(berth_store::Store::open(home.path()).unwrap()),
            Arc::new(berth_core::SystemClock),
        );
        let connection = async_nats::connect(nats.url()).await.unwrap();
        let service = berth_nats_api::start(
            connection.clone(),
            berth_nats_api::Api::new(provider.clone()).with_jobs(jobs.clone(), provider.clone()),
            ServiceConfig {
                keepalive: KEEPALIVE,
                ..ServiceConfig::default()
            },
        )
        .await
        .unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(service.run(shutdown.clone()));
        let client = NatsClient::new(
            async_nats::connect(nats.url()).await.unwrap(),
            berth_nats_api::DEFAULT_PREFIX,
            &nats.url(),
        );
        Api {
            nats,
            provider,
            jobs,
            client,
            shutdown,
            _home: home,
        }
    }

    async fn local(&self) -> String {
        let spec: Spec = serde_json::from_value(json!({ "runtime": "local" })).unwrap();
        let (progress, _events) = tokio::sync::mpsc::channel(256);
        let workspace = self
            .client
            .create(&spec, &CreateOptions::default(), progress)
            .await
            .unwrap();
        workspace.id.to_string()
    }

    fn root(&self, id: &str) -> std::path::PathBuf {
        let ws = self.provider.get(id).unwrap();
        std::path::PathBuf::from(ws.runtime_info["root"].as_str().unwrap())
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn run(command: &str) -> ExecRequest {
    serde_json::from_value(json!({ "command": command })).unwrap()
}

/// Everything a command printed, and its exit code.
async fn collect(mut events: berth_core::ExecStream) -> (String, String, Option<i32>) {
    let (mut stdout, mut stderr, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(event) = events.recv().await {
        match event {
            ExecEvent::Stdout { data } => stdout.extend(data.0),
            ExecEvent::Stderr { data } => stderr.extend(data.0),
            ExecEvent::Exit(exit) => code = Some(exit.code.unwrap_or(-1)),
        }
    }
    (
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
        code,
    )
}

fn api_error(result: Result<impl std::fmt::Debug, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Api { code, message, .. }) => (code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn eventually<F: FnMut() -> bool>(what: &str, mut done: F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process has ended (gone, or a zombie waiting to be reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn srv_ping_info_and_stats_answer_with_every_endpoint() {
    let api = Api::start().await;
    let nats = async_nats::connect(api.nats.url()).await.unwrap();
    let ping: Value = serde_json::from_slice(
        &nats
            .request("$SRV.PING.berth", "".into())
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(ping["name"], "berth");
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));

    let info: Value = serde_json::from_slice(
        &nats
            .request("$SRV.INFO.berth", "".into())
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    let mut subjects: Vec<String> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_owned())
        .collect();
    subjects.sort();
    let mut expected: Vec<String> = Op::ALL
        .iter()
        .map(|op| format!("berth.v1.{}", op.subject()))
        .collect();
    expected.sort();
    assert_eq!(subjects, expected);

    api.client.list(false, &Default::default()).await.unwrap();
    let stats: Value = serde_json::from_slice(
        &nats
            .request("$SRV.STATS.berth", "".into())
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    let list = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "list")
        .unwrap();
    assert_eq!(list["num_requests"], 1, "{stats}");
}

#[tokio::test]
async fn a_workspace_lives_its_whole_life_over_nats() {
    let api = Api::start().await;
    let spec: Spec = serde_json::from_value(json!({ "runtime": "local" })).unwrap();
    let (progress, mut events) = tokio::sync::mpsc::channel(256);
    let workspace = api
        .client
        .create(&spec, &CreateOptions::default(), progress)
        .await
        .unwrap();
    let id = workspace.id.to_string();
    let mut kinds = Vec::new();
    while let Ok(event) = events.try_recv() {
        kinds.push(serde_json::to_value(&event).unwrap()["type"].clone());
    }
    assert_eq!(kinds.last(), Some(&json!("ready")), "{kinds:?}");

    let listed = api.client.list(false, &Default::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, workspace.id);
    let details = api.client.describe(&id).await.unwrap();
    assert_eq!(details.workspace.id, workspace.id);

    let events = api
        .client
        .exec(
            &id,
            &run("echo one; echo two >&2; echo three; exit 3"),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        collect(events).await,
        ("one\nthree\n".into(), "two\n".into(), Some(3))
    );

    api.client
        .write_file(&id, "dir/hello.txt", b"hello\n".to_vec())
        .await
        .unwrap();
    let mut read = Vec::new();
    api.client
        .read_file(&id, "dir/hello.txt")
        .await
        .unwrap()
        .read_to_end(&mut read)
        .await
        .unwrap();
    assert_eq!(read, b"hello\n");
    let entries = api.client.list_files(&id, "dir").await.unwrap();
    let names: Vec<String> = entries.iter().map(|e| e.path.to_string()).collect();
    assert_eq!(names, ["dir/hello.txt"]);
    api.client.remove_file(&id, "dir/hello.txt").await.unwrap();
    assert!(api.client.list_files(&id, "dir").await.unwrap().is_empty());

    let stopped = api.client.stop(&id).await.unwrap();
    assert_eq!(stopped.state, berth_core::WorkspaceState::Stopped);
    let started = api.client.start(&id).await.unwrap();
    assert_eq!(started.state, berth_core::WorkspaceState::Running);
    let removed = api.client.remove(&id).await.unwrap();
    assert_eq!(removed.state, berth_core::WorkspaceState::Removed);
    assert!(
        api.client
            .list(false, &Default::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn errors_carry_the_service_layers_codes_and_messages() {
    let api = Api::start().await;
    let id = api.local().await;
    // What HTTP answers for the same failures, through the same mapping.
    let expected = |err: berth_provider::ServiceError| {
        let body = ErrorBody::from(err);
        (body.code, body.message)
    };
    assert_eq!(
        api_error(api.client.describe("nope").await),
        expected(api.provider.describe("nope").await.unwrap_err())
    );
    assert_eq!(
        api_error(
            api.client
                .read_file(&id, "../../etc/passwd")
                .await
                .map(drop)
        ),
        expected(
            api.provider
                .read_file(&id, "../../etc/passwd")
                .await
                .map(drop)
                .unwrap_err()
        )
    );
    let (code, _) = api_error(api.client.snapshot(&id).await);
    assert_eq!(code, "unsupported");
    let outside: ExecRequest =
        serde_json::from_value(json!({ "command": "true", "cwd": "../.." })).unwrap();
    assert_eq!(
        api_error(
            api.client
                .exec(&id, &outside, CancellationToken::new())
                .await
                .map(drop)
        ),
        expected(
            api.provider
                .exec(&id, outside.clone(), CancellationToken::new())
                .await
                .map(drop)
                .unwrap_err()
        )
    );
}

/// Keys typed at a command that is not a terminal reach nothing: each is
/// answered with a refusal. A
/// terminal on a runtime without an agent is refused as over HTTP.
#[tokio::test]
async fn input_sent_to_an_operation_that_takes_none_is_refused_and_a_terminal_needs_an_agent() {
    let api = Api::start().await;
    let id = api.local().await;
    let (code, message) = api_error(
        api.client
            .terminal(&id, &Default::default())
            .await
            .map(drop),
    );
    assert_eq!(code, "unsupported", "{message}");

    let nats = async_nats::connect(api.nats.url()).await.unwrap();
    let inbox = nats.new_inbox();
    let mut answers = nats.subscribe(inbox.clone()).await.unwrap();
    let args = json!({ "id": id, "request": { "command": "echo started; exec sleep 30" } });
    nats.publish_with_reply("berth.v1.exec", inbox, args.to_string().into())
        .await
        .unwrap();
    let first = answers.next().await.unwrap();
    let control = first.headers.unwrap();
    let control = control.get(protocol::CONTROL).unwrap().as_str().to_owned();
    let input = Control::Input {
        data: berth_core::Output(b"typed\n".to_vec()),
    };
    let reply = nats
        .request(control, serde_json::to_vec(&input).unwrap().into())
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert_eq!(message, "berth.v1.exec takes no input");
}

#[tokio::test]
async fn a_malformed_request_is_refused_naming_the_operation() {
    let api = Api::start().await;
    let nats = async_nats::connect(api.nats.url()).await.unwrap();
    let answer = nats
        .request("berth.v1.exec", "{\"id\": 7}".into())
        .await
        .unwrap();
    let headers = answer.headers.unwrap();
    assert_eq!(
        headers.get(protocol::ERROR_CODE).unwrap().as_str(),
        "invalid_body"
    );
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "400"
    );
    let body: Value = serde_json::from_slice(&answer.payload).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("the exec request:"), "{message}");
}

#[tokio::test]
async fn output_far_beyond_the_window_arrives_whole_and_in_order() {
    let api = Api::start().await;
    let id = api.local().await;
    let events = api
        .client
        .exec(
            &id,
            &run("i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done"),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let (stdout, _, code) = collect(events).await;
    let expected: String = (0..3000).map(|i| format!("line {i}\n")).collect();
    assert_eq!(code, Some(0));
    assert_eq!(stdout, expected);
}

#[tokio::test]
async fn a_cancelled_exec_ends_the_whole_command() {
    let api = Api::start().await;
    let id = api.local().await;
    let cancel = CancellationToken::new();
    let script = "sleep 300 & echo $! > child.pid; echo started; wait";
    let mut events = api
        .client
        .exec(&id, &run(script), cancel.clone())
        .await
        .unwrap();
    let first = events.recv().await.unwrap();
    assert!(matches!(first, ExecEvent::Stdout { .. }), "{first:?}");
    let child: u32 = std::fs::read_to_string(api.root(&id).join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!process_gone(child));
    cancel.cancel();
    eventually("the command's child is gone", || process_gone(child)).await;
}

/// A client that sends an exec and vanishes without a word (its
/// connection is closed, as when its process is killed): the service
/// stops hearing its keepalives and cancels the command.
#[tokio::test]
async fn a_client_that_vanishes_mid_exec_has_its_command_ended() {
    let api = Api::start().await;
    let id = api.local().await;
    let vanishing = async_nats::connect(api.nats.url()).await.unwrap();
    let inbox = vanishing.new_inbox();
    let mut answers = vanishing.subscribe(inbox.clone()).await.unwrap();
    let args = json!({
        "id": id,
        "request": { "command": "sleep 300 & echo $! > child.pid; echo started; wait" },
    });
    vanishing
        .publish_with_reply("berth.v1.exec", inbox, args.to_string().into())
        .await
        .unwrap();
    let first = answers.next().await.unwrap();
    let headers = first.headers.unwrap();
    assert_eq!(headers.get(protocol::EVENT).unwrap().as_str(), "item");
    // It acknowledges once, so it was alive, then goes.
    let control = headers.get(protocol::CONTROL).unwrap().as_str().to_owned();
    let ack = serde_json::to_vec(&Control::Ack { received: 1 }).unwrap();
    vanishing.publish(control, ack.into()).await.unwrap();
    vanishing.flush().await.unwrap();
    let child: u32 = std::fs::read_to_string(api.root(&id).join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(answers);
    drop(vanishing);
    eventually("the vanished client's command is gone", || {
        process_gone(child)
    })
    .await;
}

#[tokio::test]
async fn a_prefix_nobody_serves_fails_at_once_naming_the_subject() {
    let api = Api::start().await;
    let elsewhere = NatsClient::new(
        async_nats::connect(api.nats.url()).await.unwrap(),
        "nobody.here",
        &api.nats.url(),
    );
    match elsewhere.list(false, &Default::default()).await {
        Err(ClientError::Unreachable { detail, .. }) => {
            assert!(detail.contains("nobody.here.list"), "{detail}")
        }
        other => panic!("expected an unreachable service, got {other:?}"),
    }
}

#[tokio::test]
async fn a_prefix_with_wildcards_is_refused() {
    let nats = NatsServer::start();
    let home = tempfile::tempdir().unwrap();
    let provider = Provider::open(ProviderConfig::new(home.path()))
        .await
        .unwrap();
    let connection = async_nats::connect(nats.url()).await.unwrap();
    let refused = berth_nats_api::start(
        connection,
        provider,
        ServiceConfig {
            prefix: "berth.>".into(),
            ..ServiceConfig::default()
        },
    )
    .await;
    let message = refused.err().unwrap().to_string();
    assert!(message.contains("\"berth.>\""), "{message}");
}

/// A job spec of one repository at `url`, on the local runtime.
fn job_spec(name: &str, extra: Value) -> JobSpec {
    let mut spec = json!({
        "name": name,
        "runtime": "local",
        "repositories": [{ "url": "/nowhere/repo" }],
        "steps": [{ "run": "true" }],
    });
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    serde_json::from_value(spec).unwrap()
}

#[tokio::test]
async fn jobs_and_runs_over_nats_answer_as_the_jobs_service_and_fail_with_its_codes() {
    let api = Api::start().await;
    let run = api
        .client
        .start_job(&job_spec("edit", json!({})))
        .await
        .unwrap();
    assert_eq!(api.jobs.run(&run.id).unwrap().run.id, run.id);
    let listed = api.client.jobs().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_run.as_ref().unwrap().id, run.id);
    assert_eq!(api.client.runs("edit").await.unwrap().runs.len(), 1);
    let details = api.client.job_run(&run.id[..8]).await.unwrap();
    assert_eq!(details.tasks.len(), 1);
    let task = &details.tasks[0];
    assert_eq!(
        api.client.task(&run.id, "repo").await.unwrap().task.id,
        task.id
    );
    let page = api.client.log_page(&run.id, &task.id, 0).await.unwrap();
    assert!(page.entries.is_empty() && !page.done);
    assert!(
        api.client
            .task_patch(&run.id, &task.id)
            .await
            .unwrap()
            .is_empty()
    );
    let record = api
        .client
        .schedule("edit", Some("0 3 * * *"))
        .await
        .unwrap();
    assert_eq!(record.schedule.as_deref(), Some("0 3 * * *"));
    // A task still queued cannot be retried.
    let (code, _) = api_error(api.client.retry_run(&run.id, Some(&task.id)).await);
    assert_eq!(code, "wrong_state");
    assert_eq!(
        api_error(api.client.retry_run(&run.id, Some(&task.id)).await),
        {
            let body = ErrorBody::from(api.jobs.retry(&run.id, Some(&task.id)).await.unwrap_err());
            (body.code, body.message)
        }
    );
    let cancelled = api.client.cancel_run(&run.id, None).await.unwrap();
    assert_eq!(cancelled.run.state.as_str(), "cancelled");

    // What HTTP answers for the same failures, through the same mapping.
    let expected = |err: berth_jobs::JobError| {
        let body = ErrorBody::from(err);
        (body.code, body.message)
    };
    assert_eq!(
        api_error(api.client.job_run("nope").await),
        expected(api.jobs.run("nope").unwrap_err())
    );
    assert_eq!(
        api_error(api.client.task(&run.id, "no-such-task").await),
        expected(api.jobs.task(&run.id, "no-such-task").unwrap_err())
    );
    assert_eq!(
        api_error(api.client.runs("no-such-job").await),
        expected(api.jobs.runs("no-such-job").unwrap_err())
    );
    assert_eq!(
        api_error(api.client.schedule("edit", Some("every day")).await),
        expected(api.jobs.schedule("edit", Some("every day")).unwrap_err())
    );
    let (code, _) = api_error(api.client.job_run("nope").await);
    assert_eq!(code, "not_found");
}

#[tokio::test]
async fn a_job_spec_naming_a_host_file_is_refused_and_nothing_is_registered() {
    let api = Api::start().await;
    // The service would read the list from its own host's filesystem.
    let spec = job_spec("leak", json!({ "repositories_file": "/etc/passwd" }));
    let (code, message) = api_error(api.client.start_job(&spec).await);
    let http = ErrorBody::from(api.jobs.submit(&spec).await.unwrap_err());
    assert_eq!((&code, &message), (&http.code, &http.message));
    assert_eq!(code, "invalid_request");
    assert!(message.contains("repositories_file"), "{message}");
    assert!(api.client.jobs().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_export_request_naming_a_host_path_is_refused() {
    let api = Api::start().await;
    let id = api.local().await;
    let target = tempfile::tempdir().unwrap();
    let path = target.path().join("written");
    let nats = async_nats::connect(api.nats.url()).await.unwrap();
    let request = json!({ "id": id, "path": path.display().to_string() });
    let answer = nats
        .request("berth.v1.export", request.to_string().into())
        .await
        .unwrap();
    let headers = answer.headers.unwrap();
    assert_eq!(
        headers.get(protocol::ERROR_CODE).unwrap().as_str(),
        "invalid_body"
    );
    assert!(!path.exists());
}

#[tokio::test]
async fn a_service_without_a_cluster_lists_no_nodes_and_a_node_runs_no_jobs() {
    let api = Api::start().await;
    assert_eq!(api.client.nodes().await.unwrap(), None);
    // A provider served alone (as a node serves its own) has no jobs.
    let nats = async_nats::connect(api.nats.url()).await.unwrap();
    let service = berth_nats_api::start(
        nats.clone(),
        api.provider.clone(),
        ServiceConfig {
            prefix: "berth.v1.node.n1".into(),
            keepalive: KEEPALIVE,
        },
    )
    .await
    .unwrap();
    tokio::spawn(service.run(api.shutdown.clone()));
    let node = NatsClient::new(nats, "berth.v1.node.n1", &api.nats.url());
    let (code, message) = api_error(node.jobs().await);
    assert_eq!(code, "unsupported");
    assert!(message.contains("job.list"), "{message}");
}

#[tokio::test]
async fn a_runs_events_stream_a_snapshot_then_its_changes_until_it_ends() {
    let api = Api::start().await;
    let run = api
        .client
        .start_job(&job_spec("edit", json!({})))
        .await
        .unwrap();
    let mut events = api.client.run_events(&run.id).await.unwrap();
    let first = events.next().await.unwrap().unwrap();
    let RunEvent::Snapshot { run: seen, tasks } = first else {
        panic!("a snapshot first: {first:?}");
    };
    assert_eq!((seen.id.as_str(), tasks.len()), (run.id.as_str(), 1));
    api.jobs.cancel(&run.id, None).await.unwrap();
    let mut last = None;
    while let Some(event) = events.next().await {
        last = Some(event.unwrap());
    }
    match last {
        Some(RunEvent::Run { run: ended }) => assert_eq!(ended.state.as_str(), "cancelled"),
        other => panic!("the run's end last: {other:?}"),
    }
    // No task completed: no patch.
    assert!(api.client.run_patch(&run.id).await.unwrap().is_empty());
    let (code, _) = api_error(api.client.run_events("nope").await.map(drop));
    assert_eq!(code, "not_found");
}
