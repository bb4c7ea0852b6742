//! The static agent as PID 1 of a new PID namespace (`unshare --pid
//! --fork --mount-proc`, which needs root): it reaps orphans, and on
//! SIGTERM ends its commands and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_agent_client::AgentClient;
use berth_proto::{ExecEvent, ExecRequest};
use std::process::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn run(
    client: &AgentClient,
    script: &str,
    timeout_ms: u64,
) -> (String, berth_proto::ExitStatus) {
    let mut request = ExecRequest::shell(script);
    request.timeout_ms = Some(timeout_ms);
    let mut events = client
        .exec(request, CancellationToken::new())
        .await
        .unwrap();
    let (out, _, status) = berth_agent_client::collect(&mut events).await;
    (String::from_utf8(out).unwrap(), status)
}

#[tokio::test]
async fn as_pid_1_the_agent_reaps_orphans_and_stops_gracefully() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root for `unshare --pid`; CI runs as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let agent = berth_agent_bin::install(&dir.path().join("bin")).unwrap();
    let socket = dir.path().join("agent.sock");
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(&agent)
        .arg("--socket")
        .arg(&socket)
        .arg("--root")
        .arg(dir.path().join("root"))
        .args(["--grace-ms", "300"])
        .spawn()
        .expect("unshare (util-linux) must be installed");
    // Past this, a hung agent is killed so that the test fails instead.
    let outcome =
        tokio::time::timeout(Duration::from_secs(60), exercise(&socket, &mut unshare)).await;
    if outcome.is_err() {
        let _ = unshare.kill();
        let _ = unshare.wait();
        panic!("the agent in its PID namespace did not answer within 60 s");
    }
}

async fn exercise(socket: &std::path::Path, unshare: &mut std::process::Child) {
    let client = AgentClient::connect(socket, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(client.info(false).await.unwrap().pid, 1);

    // The shell exits at once, orphaning `sleep` to PID 1; once it exits
    // it must be reaped, or its /proc entry stays forever (a zombie).
    let (out, _) = run(&client, "sleep 0.1 >/dev/null 2>&1 & echo $!", 5000).await;
    let orphan = out.trim();
    let (out, status) = run(
        &client,
        &format!("while [ -e /proc/{orphan} ]; do sleep 0.01; done; echo reaped"),
        5000,
    )
    .await;
    assert_eq!(out, "reaped\n", "{status:?}");

    let mut events = client
        .exec(
            ExecRequest::shell("trap 'exit 5' TERM; echo up; while :; do sleep 0.05; done"),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(matches!(
        events.recv().await,
        Some(ExecEvent::Stdout { .. })
    ));
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
    let agent_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(agent_pid).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let (_, _, status) = berth_agent_client::collect(&mut events).await;
    assert_eq!(status.code, Some(5));
    assert!(status.cancelled);
    assert_eq!(unshare.wait().unwrap().code(), Some(0));
}
