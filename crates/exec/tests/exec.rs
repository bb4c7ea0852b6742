//! The process engine, exercised with real processes.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_exec::{DEFAULT_GRACE, Spawn, Stdin, spawn};
use berth_proto::{ExecEvent, ExitStatus};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn sh(script: &str) -> Spawn {
    Spawn {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        cwd: std::env::temp_dir(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        stdin: Stdin::Null,
        timeout: None,
        output_limit: None,
        grace: DEFAULT_GRACE,
        cgroup: None,
        shepherd: None,
        nice: None,
    }
}

struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: ExitStatus,
}

async fn run(spawn_params: Spawn, cancel: CancellationToken) -> Collected {
    let mut running = spawn(spawn_params, cancel).unwrap();
    let mut out = Collected {
        stdout: Vec::new(),
        stderr: Vec::new(),
        exit: ExitStatus::default(),
    };
    let mut exits = 0;
    while let Some(event) = running.events.recv().await {
        match event {
            ExecEvent::Stdout { data } => out.stdout.extend(data.0),
            ExecEvent::Stderr { data } => out.stderr.extend(data.0),
            ExecEvent::Exit(exit) => {
                out.exit = exit;
                exits += 1;
            }
        }
    }
    assert_eq!(exits, 1, "exactly one exit event, last");
    out
}

/// Waits until `pid` no longer runs (absent, or a zombie awaiting its reaper).
async fn wait_until_gone(pid: u32) -> bool {
    for _ in 0..500 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) => {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                if state.starts_with('Z') || state.starts_with('X') {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn streams_both_outputs_in_order_and_reports_the_exit_code() {
    let out = run(
        sh("for i in 1 2 3; do echo out$i; echo err$i >&2; done; printf tail; exit 7"),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(out.stdout, b"out1\nout2\nout3\ntail");
    assert_eq!(out.stderr, b"err1\nerr2\nerr3\n");
    assert_eq!(out.exit.code, Some(7));
    assert!(!out.exit.timed_out && !out.exit.cancelled);
}

/// What a command printed on stdout and then on stderr arrives in that
/// order, as a log that shows both must show it. Many runs, on a runtime
/// with several threads, where two reading tasks would race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_on_stdout_then_one_on_stderr_arrive_in_that_order() {
    for run in 0..200 {
        let mut running = spawn(
            sh("echo edited; echo 'no luck' >&2; exit 7"),
            CancellationToken::new(),
        )
        .unwrap();
        let mut seen = Vec::new();
        while let Some(event) = running.events.recv().await {
            match event {
                ExecEvent::Stdout { data } => seen.push(("stdout", data.0)),
                ExecEvent::Stderr { data } => seen.push(("stderr", data.0)),
                ExecEvent::Exit(_) => {}
            }
        }
        let expected = vec![
            ("stdout", b"edited\n".to_vec()),
            ("stderr", b"no luck\n".to_vec()),
        ];
        assert_eq!(seen, expected, "run {run}");
    }
}

#[tokio::test]
async fn large_output_arrives_whole() {
    let out = run(sh("head -c 3000000 /dev/zero"), CancellationToken::new()).await;
    assert_eq!(out.stdout.len(), 3_000_000);
}

#[tokio::test]
async fn stdin_is_fed_then_closed() {
    let mut params = sh("tr a-z A-Z");
    params.stdin = Stdin::Bytes(b"hello berth".to_vec());
    let out = run(params, CancellationToken::new()).await;
    assert_eq!(out.stdout, b"HELLO BERTH");
}

#[tokio::test]
async fn streamed_stdin_reaches_the_command_until_the_sender_closes() {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut params = sh("cat");
    params.stdin = Stdin::Stream(rx);
    let task = tokio::spawn(run(params, CancellationToken::new()));
    for chunk in ["one ", "two ", "three"] {
        tx.send(chunk.as_bytes().to_vec()).await.unwrap();
    }
    drop(tx);
    let out = task.await.unwrap();
    assert_eq!(out.stdout, b"one two three");
}

#[tokio::test]
async fn the_environment_is_exactly_what_was_given() {
    // Whatever this test process has in its environment must not leak.
    let out = run(sh("env | sort"), CancellationToken::new()).await;
    let env = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    assert!(
        names
            .iter()
            .all(|n| ["PATH", "PWD", "SHLVL", "_"].contains(n)),
        "{env}"
    );
}

#[tokio::test]
async fn output_beyond_the_limit_is_counted_exactly() {
    let mut params = sh("head -c 100000 /dev/zero; head -c 10 /dev/zero >&2");
    params.output_limit = Some(1000);
    let out = run(params, CancellationToken::new()).await;
    assert_eq!(out.stdout.len(), 1000);
    assert_eq!(out.exit.stdout_dropped, 99_000);
    assert_eq!(out.stderr.len(), 10);
    assert_eq!(out.exit.stderr_dropped, 0);
}

#[tokio::test]
async fn a_timeout_ends_a_tree_that_ignores_sigterm_and_keeps_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild");
    let mut params = sh(&format!(
        "trap '' TERM; (trap '' TERM; exec sleep 1000) & echo $! > {}; echo started; wait",
        pidfile.display()
    ));
    params.timeout = Some(Duration::from_millis(300));
    params.grace = Duration::from_millis(200);
    let out = run(params, CancellationToken::new()).await;
    assert!(out.exit.timed_out);
    assert_eq!(out.exit.signal, Some(9));
    assert_eq!(out.stdout, b"started\n");
    let grandchild: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until_gone(grandchild).await,
        "grandchild {grandchild} survived"
    );
}

#[tokio::test]
async fn cancel_ends_the_command_and_says_so() {
    let cancel = CancellationToken::new();
    let mut running = spawn(sh("echo ready; exec sleep 1000"), cancel.clone()).unwrap();
    let first = running.events.recv().await.unwrap();
    assert!(matches!(first, ExecEvent::Stdout { .. }));
    cancel.cancel();
    let mut exit = None;
    while let Some(event) = running.events.recv().await {
        if let ExecEvent::Exit(status) = event {
            exit = Some(status);
        }
    }
    let exit = exit.unwrap();
    assert!(exit.cancelled);
    assert_eq!(exit.signal, Some(15));
}

#[tokio::test]
async fn dropping_the_events_ends_the_command() {
    let running = spawn(sh("exec sleep 1000"), CancellationToken::new()).unwrap();
    let pid = running.pid;
    drop(running);
    assert!(wait_until_gone(pid).await);
}

#[tokio::test]
async fn background_processes_holding_the_pipe_do_not_hang_the_command() {
    let out = run(sh("sleep 1000 & echo done"), CancellationToken::new()).await;
    assert_eq!(out.stdout, b"done\n");
    assert_eq!(out.exit.code, Some(0));
}

#[tokio::test]
async fn a_missing_program_is_a_clear_error() {
    let mut params = sh("");
    params.argv = vec!["/no/such/program".into()];
    let err = spawn(params, CancellationToken::new()).unwrap_err();
    assert!(err.to_string().contains("/no/such/program"), "{err}");
}
