//! The real agent binary, started as a child on a temporary socket and
//! driven through the real client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_agent_client::{AgentClient, ClientError};
use berth_proto::{
    ErrorCode, ExecEvent, ExecRequest, ExitStatus, InterpreterSource, SessionParams,
    TerminalParams, WatchKind, WorkspacePath,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Agent {
    _dir: tempfile::TempDir,
    root: PathBuf,
    child: Child,
    client: AgentClient,
    _watchdog: std::sync::mpsc::Sender<()>,
}

/// How long one test may use its agent; past it the agent is killed, so a
/// test waiting on it fails instead of hanging.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Kills `pid` after the limit unless the sender is dropped first.
fn watchdog(pid: u32) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(TEST_LIMIT) {
            eprintln!("the test ran past {TEST_LIMIT:?}; killing its agent");
            let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    });
    tx
}

impl Agent {
    async fn start() -> Agent {
        Self::start_with(&[]).await
    }

    async fn start_with(args: &[&str]) -> Agent {
        Self::start_env(args, &[]).await
    }

    async fn start_env(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let socket = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_berth-agent"))
            .arg("--socket")
            .arg(&socket)
            .arg("--root")
            .arg(&root)
            .args(["--grace-ms", "300"])
            .args(args)
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        let client = AgentClient::connect(&socket, Duration::from_secs(10))
            .await
            .unwrap();
        Agent {
            _dir: dir,
            root,
            _watchdog: watchdog(child.id()),
            child,
            client,
        }
    }

    async fn run(&self, request: ExecRequest) -> (String, String, ExitStatus) {
        let mut events = self
            .client
            .exec(request, CancellationToken::new())
            .await
            .unwrap();
        let (out, err, status) = berth_agent_client::collect(&mut events).await;
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            status,
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `done` holds, failing after a generous bound.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn path(p: &str) -> WorkspacePath {
    WorkspacePath::parse(p).unwrap()
}

#[tokio::test]
async fn exec_streams_output_and_reports_exit_codes() {
    let agent = Agent::start().await;
    let (out, err, status) = agent
        .run(ExecRequest::shell(
            "printf 'line\\n'; printf 'oops' >&2; printf '$ user@host:~> '; exit 3",
        ))
        .await;
    assert_eq!(out, "line\n$ user@host:~> ");
    assert_eq!(err, "oops");
    assert_eq!(status.code, Some(3));

    std::fs::create_dir_all(agent.root.join("sub")).unwrap();
    let mut request = ExecRequest::argv(["sh", "-c", "pwd; echo $GREETING"]);
    request.cwd = Some("sub".into());
    request.env.insert("GREETING".into(), "hi".into());
    let (out, _, status) = agent.run(request).await;
    assert_eq!(out, format!("{}\nhi\n", agent.root.join("sub").display()));
    assert!(status.success());

    let mut escape = ExecRequest::shell("true");
    escape.cwd = Some("../..".into());
    let err = agent
        .client
        .exec(escape, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Escapes));

    let missing = agent
        .client
        .exec(
            ExecRequest::argv(["/no/such/program"]),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::Spawn), "{missing}");
}

#[tokio::test]
async fn stdin_is_streamed_and_closable() {
    let agent = Agent::start().await;
    let mut cat = agent
        .client
        .spawn(ExecRequest::argv(["cat"]), true)
        .await
        .unwrap();
    cat.write(b"hello").unwrap();
    match cat.events.recv().await.unwrap() {
        ExecEvent::Stdout { data } => assert_eq!(data.0, b"hello"),
        other => panic!("expected output, got {other:?}"),
    }
    cat.write(b" world").unwrap();
    cat.close_stdin().unwrap();
    let (out, _, status) = cat.output().await;
    assert_eq!(out, b" world");
    assert_eq!(status.code, Some(0));

    let mut request = ExecRequest::argv(["wc", "-c"]);
    request.stdin = Some(vec![7; 12345]);
    let (out, _, _) = agent.run(request).await;
    assert_eq!(out.trim(), "12345");

    // Bytes given with the request come before the streamed ones.
    let mut request = ExecRequest::argv(["cat"]);
    request.stdin = Some(b"first ".to_vec());
    let cat = agent.client.spawn(request, true).await.unwrap();
    cat.write(b"then more").unwrap();
    cat.close_stdin().unwrap();
    let (out, _, _) = cat.output().await;
    assert_eq!(out, b"first then more");
}

#[tokio::test]
async fn timeout_kills_a_tree_that_ignores_sigterm_and_keeps_output() {
    let agent = Agent::start().await;
    let mut request = ExecRequest::shell("trap '' TERM; sleep 1000 & echo $!; wait");
    request.timeout_ms = Some(300);
    let (out, _, status) = agent.run(request).await;
    assert!(status.timed_out, "{status:?}");
    let grandchild: u32 = out.trim().parse().unwrap();
    eventually("the grandchild to be killed and reaped", || {
        gone(grandchild)
    });
}

/// A timeout ends a shell and the child it waits for together: the shell
/// never sees its child end and runs on past it before its own SIGTERM,
/// however many other processes the command has (which make sending the
/// signals, one process at a time, take a while).
#[tokio::test]
async fn a_timeout_never_lets_a_shell_run_on_past_its_killed_child() {
    let agent = Agent::start().await;
    for round in 0..10 {
        let mut request = ExecRequest::shell(
            "for i in $(seq 100); do (trap '' TERM; exec sleep 1000) & done; \
             echo started; sleep 1000; echo never",
        );
        request.timeout_ms = Some(1000);
        let (out, _, status) = agent.run(request).await;
        assert!(status.timed_out, "{status:?}");
        assert_eq!(out, "started\n", "round {round}");
    }
}

/// A command detaches a child that ignores SIGTERM and SIGKILLs the
/// shepherd it runs under: the child is killed and reaped as the command
/// ends, while what a finished command left running lives on.
#[tokio::test]
async fn a_command_that_kills_its_shepherd_has_its_detached_child_killed() {
    let agent = Agent::start().await;
    let (out, _, status) = agent
        .run(ExecRequest::shell("sleep 1000 >/dev/null 2>&1 & echo $!"))
        .await;
    assert!(status.success(), "{status:?}");
    let left_running: u32 = out.trim().parse().unwrap();

    let mut request = ExecRequest::shell(
        "setsid sh -c 'trap \"\" TERM; exec sleep 1000' >/dev/null 2>&1 & echo $!; \
         kill -9 $PPID; sleep 1000",
    );
    request.timeout_ms = Some(60_000);
    let (out, err, status) = agent.run(request).await;
    assert_eq!(status.signal, Some(9), "{status:?}");
    assert_eq!(err, berth_exec::UNSUPERVISED, "says why it was killed");
    assert!(
        !status.timed_out,
        "ended long before its timeout: {status:?}"
    );
    let detached: u32 = out.trim().parse().unwrap();
    eventually("the detached child to be killed and reaped", || {
        gone(detached)
    });
    assert!(!gone(left_running), "a finished command's process lives on");
    let pid = rustix::process::Pid::from_raw(left_running as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();

    // A command killed by SIGKILL with its shepherd left alone is just that.
    let (_, err, status) = agent.run(ExecRequest::shell("kill -9 $$")).await;
    assert_eq!((status.signal, err.as_str()), (Some(9), ""), "{status:?}");
}

/// The command's own process leaves the process group its shepherd
/// leads (`setsid` as the command itself): its exit code is still
/// reported, not a kill by a signal, and its timeout still ends it, with
/// what it started, rather than leaving it running.
#[tokio::test]
async fn a_command_that_leaves_its_shepherds_group_is_still_waited_for_and_ended() {
    let agent = Agent::start().await;
    let (_, _, status) = agent
        .run(ExecRequest::argv(["setsid", "sh", "-c", "exit 3"]))
        .await;
    assert_eq!((status.code, status.signal), (Some(3), None), "{status:?}");

    let mut request = ExecRequest::argv([
        "setsid",
        "sh",
        "-c",
        "trap '' TERM; sleep 1000 & echo $$ $!; wait",
    ]);
    request.timeout_ms = Some(1000);
    let (out, _, status) = agent.run(request).await;
    assert!(status.timed_out, "{status:?}");
    for pid in out.split_whitespace() {
        let pid: u32 = pid.parse().unwrap();
        eventually("the command's processes to be ended", || gone(pid));
    }
}

#[tokio::test]
async fn cancel_ends_the_command() {
    let agent = Agent::start().await;
    let cancel = CancellationToken::new();
    let mut events = agent
        .client
        .exec(
            ExecRequest::shell("echo started; exec sleep 1000"),
            cancel.clone(),
        )
        .await
        .unwrap();
    assert!(matches!(
        events.recv().await,
        Some(ExecEvent::Stdout { .. })
    ));
    cancel.cancel();
    let (_, _, status) = berth_agent_client::collect(&mut events).await;
    assert!(status.cancelled);
    assert_eq!(status.signal, Some(15));
}

#[tokio::test]
async fn output_beyond_the_limit_is_counted() {
    let agent = Agent::start().await;
    let mut request = ExecRequest::shell("head -c 100000 /dev/zero; head -c 10 /dev/zero >&2");
    request.output_limit = Some(1000);
    let (out, err, status) = agent.run(request).await;
    assert_eq!(out.len(), 1000);
    assert_eq!(err.len(), 10);
    assert_eq!(status.stdout_dropped, 99_000);
    assert_eq!(status.stderr_dropped, 0);
}

#[tokio::test]
async fn a_hundred_commands_share_one_connection() {
    let agent = Agent::start().await;
    let runs = (0..100).map(|i| {
        let client = agent.client.clone();
        async move {
            let mut events = client
                .exec(
                    ExecRequest::shell(format!("echo {i}; echo e{i} >&2")),
                    CancellationToken::new(),
                )
                .await
                .unwrap();
            let (out, err, status) = berth_agent_client::collect(&mut events).await;
            assert_eq!(out, format!("{i}\n").as_bytes());
            assert_eq!(err, format!("e{i}\n").as_bytes());
            assert_eq!(status.code, Some(0));
        }
    });
    let tasks: Vec<_> = runs.map(tokio::spawn).collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn a_session_keeps_directory_variables_and_functions() {
    let agent = Agent::start().await;
    let session = agent
        .client
        .session(SessionParams::default())
        .await
        .unwrap();
    let (_, _, status) = session.run("mkdir -p sub && cd sub").await.unwrap();
    assert_eq!(status.code, Some(0));
    session
        .run("export FOO=bar; greet() { echo \"hi $1\"; }")
        .await
        .unwrap();
    let (out, _, _) = session.run("pwd; echo $FOO; greet you").await.unwrap();
    let expected = format!("{}\nbar\nhi you\n", agent.root.join("sub").display());
    assert_eq!(String::from_utf8(out).unwrap(), expected);

    // Output without a newline, or looking like a prompt, is delimited
    // exactly, and each command has its own exit code.
    let (out, err, status) = session
        .run("printf 'bash-5.2$ '; printf 'no newline' >&2; false")
        .await
        .unwrap();
    assert_eq!(
        (&out[..], &err[..]),
        (&b"bash-5.2$ "[..], &b"no newline"[..])
    );
    assert_eq!(status.code, Some(1));

    // A syntax error is the command's failure, not the session's end.
    let (_, err, status) = session.run("echo 'unterminated").await.unwrap();
    assert_ne!(status.code, Some(0));
    assert!(!err.is_empty());
    let (out, _, status) = session.run("echo still here; (exit 42)").await.unwrap();
    assert_eq!((out, status.code), (b"still here\n".to_vec(), Some(42)));
}

#[tokio::test]
async fn an_interrupted_session_command_leaves_the_session_working() {
    let agent = Agent::start().await;
    let session = agent
        .client
        .session(SessionParams::default())
        .await
        .unwrap();
    session.run("cd /tmp").await.unwrap();
    let mut sleeper = session
        .start("echo sleeping; sleep 1000", None, None)
        .await
        .unwrap();
    match sleeper.events.recv().await.unwrap() {
        ExecEvent::Stdout { data } => assert_eq!(data.0, b"sleeping\n"),
        other => panic!("expected output, got {other:?}"),
    }
    sleeper.signal(2).unwrap();
    let (_, _, status) = sleeper.output().await;
    assert_eq!(status.code, Some(130));
    let (out, _, status) = session.run("pwd").await.unwrap();
    assert_eq!((out, status.code), (b"/tmp\n".to_vec(), Some(0)));

    // A timeout interrupts the same way.
    let (_, _, status) = session
        .start("sleep 1000", Some(200), None)
        .await
        .unwrap()
        .output()
        .await;
    assert!(status.timed_out);
    let (out, _, _) = session.run("echo ok").await.unwrap();
    assert_eq!(out, b"ok\n");

    // A loop of built-ins runs in the shell itself, which survives
    // SIGINT: cancelling it has to end the session, and says so.
    let looping = session
        .start("while :; do :; done", Some(200), None)
        .await
        .unwrap();
    let (_, _, status) = looping.output().await;
    assert!(status.timed_out);
    assert_eq!(status.signal, Some(9), "{status:?}");
    let after = session.run("true").await.unwrap_err();
    assert!(matches!(after, ClientError::Agent(_)), "{after}");
}

/// A session's command detaches a child that ignores SIGTERM (a double
/// fork and `setsid`) and goes on: its timeout, or its cancel, ends that
/// child too, not only what stayed in the shell's process group, while
/// the shell and what an earlier command left running live on.
#[tokio::test]
async fn a_session_commands_timeout_ends_what_it_detached() {
    let agent = Agent::start().await;
    let session = agent
        .client
        .session(SessionParams::default())
        .await
        .unwrap();
    let (out, _, _) = session
        .run("sleep 1000 >/dev/null 2>&1 & echo $!")
        .await
        .unwrap();
    let earlier: u32 = String::from_utf8(out).unwrap().trim().parse().unwrap();
    for cancel in [false, true] {
        let pidfile = agent.root.join(format!("detached-{cancel}"));
        let command = format!(
            "(setsid sh -c 'trap \"\" TERM; echo $$ > {0}.part; mv {0}.part {0}; exec sleep 1000' \
               >/dev/null 2>&1 &); \
             until [ -s {0} ]; do :; done; echo started; sleep 1000",
            pidfile.display()
        );
        let timeout = (!cancel).then_some(1000);
        let mut process = session.start(&command, timeout, None).await.unwrap();
        match process.events.recv().await.unwrap() {
            ExecEvent::Stdout { data } => assert_eq!(data.0, b"started\n"),
            other => panic!("expected output, got {other:?}"),
        }
        let detached: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if cancel {
            process.cancel();
        }
        let (_, _, status) = process.output().await;
        assert_eq!((status.timed_out, status.cancelled), (!cancel, cancel));
        eventually("the detached child to be ended", || gone(detached));
        assert!(!gone(earlier), "an earlier command's job lives on");
        let (out, _, status) = session.run("echo ok").await.unwrap();
        assert_eq!((out, status.code), (b"ok\n".to_vec(), Some(0)));
    }
    session.close().await.unwrap();
    eventually("the earlier job to end with the session", || gone(earlier));
}

/// A session's command is a loop in the shell that starts a child anew
/// each time one is killed: its timeout still ends it (with the session,
/// as for any loop the shell runs itself), rather than letting it run on
/// past its timeout until the client gives up on the agent.
#[tokio::test]
async fn a_session_command_that_restarts_its_killed_children_ends_at_its_timeout() {
    let agent = Agent::start().await;
    let session = agent
        .client
        .session(SessionParams::default())
        .await
        .unwrap();
    let began = Instant::now();
    let (_, err, status) = session
        .start("while :; do sleep 1000; done", Some(300), None)
        .await
        .unwrap()
        .output()
        .await;
    assert!(status.timed_out, "{status:?}");
    assert_eq!(status.signal, Some(9), "the session ends: {status:?}");
    let err = String::from_utf8_lossy(&err);
    assert!(!err.contains("berth:"), "the agent reported its end: {err}");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    let after = session.run("true").await.unwrap_err();
    assert!(matches!(after, ClientError::Agent(_)), "{after}");
}

#[tokio::test]
async fn a_session_ends_with_the_exit_of_its_shell() {
    let agent = Agent::start().await;
    let session = agent
        .client
        .session(SessionParams::default())
        .await
        .unwrap();
    // A command that exits the shell ends the session with its code.
    let (_, _, status) = session.run("exit 4").await.unwrap();
    assert_eq!(status.code, Some(4));
    let after = session.run("true").await.unwrap_err();
    assert!(matches!(after, ClientError::Agent(_)), "{after}");
}

/// Reads a terminal until its screen shows `wanted`; panics if it ends
/// first.
async fn screen_until(terminal: &mut berth_agent_client::Terminal, wanted: &str) -> String {
    let mut screen = Vec::new();
    while !String::from_utf8_lossy(&screen).contains(wanted) {
        match terminal.events.recv().await {
            Some(ExecEvent::Stdout { data }) => screen.extend_from_slice(&data.0),
            other => panic!(
                "{other:?} before {wanted:?}: {}",
                String::from_utf8_lossy(&screen)
            ),
        }
    }
    String::from_utf8_lossy(&screen).into_owned()
}

/// A shell on a terminal detaches a child that ignores SIGTERM, then the
/// terminal is closed, or the shell exits: the child ends with it, not
/// when the workspace stops.
#[tokio::test]
async fn closing_a_terminal_ends_what_it_detached() {
    let agent = Agent::start().await;
    for close in [true, false] {
        let mut terminal = agent
            .client
            .terminal(TerminalParams::default())
            .await
            .unwrap();
        let pidfile = agent.root.join(format!("detached-{close}"));
        terminal
            .write(
                format!(
                    "(setsid sh -c 'trap \"\" TERM; echo $$ > {0}.part; mv {0}.part {0}; exec sleep 1000' \
                       >/dev/null 2>&1 &); until [ -s {0} ]; do :; done; echo \"started $((40 + 2))\"\n",
                    pidfile.display()
                )
                .as_bytes(),
            )
            .unwrap();
        screen_until(&mut terminal, "started 42").await;
        let detached: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if close {
            terminal.cancel();
        } else {
            terminal.write(b"exit\n").unwrap();
        }
        let (_, _, status) = berth_agent_client::collect(&mut terminal.events).await;
        assert_eq!(status.cancelled, close, "{status:?}");
        eventually("the detached child to end with the terminal", || {
            gone(detached)
        });
    }
}

/// An interactive shell on a terminal leads a process group of its own,
/// away from the one that holds its processes together, and what it runs
/// orphans processes that come and go: the terminal stays open all the
/// same, past many times the agent's grace period (300 ms here), while a
/// command that ignores SIGTERM runs.
#[tokio::test]
async fn a_terminal_stays_open_while_its_orphans_come_and_go() {
    let agent = Agent::start().await;
    let mut terminal = agent
        .client
        .terminal(TerminalParams::default())
        .await
        .unwrap();
    terminal
        .write(
            b"(true &); (true &); sh -c 'trap \"\" TERM; sleep 3'; (true &); echo \"alive $((40 + 2))\"\n",
        )
        .unwrap();
    screen_until(&mut terminal, "alive 42").await;
    terminal.write(b"exit 5\n").unwrap();
    let (_, _, status) = berth_agent_client::collect(&mut terminal.events).await;
    assert_eq!(
        (status.code, status.cancelled),
        (Some(5), false),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_terminal_has_a_tty_and_follows_resizes() {
    let agent = Agent::start().await;
    let mut terminal = agent
        .client
        .terminal(TerminalParams {
            command: Some(berth_proto::Command::Shell(
                "read go; tty; stty size; echo TERM=$TERM".into(),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    terminal.resize(40, 100).unwrap();
    terminal.write(b"go\n").unwrap();
    let mut screen = Vec::new();
    let status = loop {
        match terminal.events.recv().await.unwrap() {
            ExecEvent::Stdout { data } => screen.extend_from_slice(&data.0),
            ExecEvent::Stderr { .. } => panic!("a terminal has one stream"),
            ExecEvent::Exit(status) => break status,
        }
    };
    let screen = String::from_utf8_lossy(&screen);
    assert!(screen.contains("/dev/pts/"), "{screen}");
    assert!(screen.contains("40 100"), "{screen}");
    assert!(screen.contains("TERM=xterm-256color"), "{screen}");
    assert_eq!(status.code, Some(0));
}

#[tokio::test]
async fn a_watch_sees_files_created_after_it_is_armed() {
    let agent = Agent::start().await;
    std::fs::create_dir_all(agent.root.join("src")).unwrap();
    let mut watch = agent.client.watch(&path("src"), true).await.unwrap();
    std::fs::write(agent.root.join("src/new.txt"), "x").unwrap();
    let event = watch.events.recv().await.unwrap();
    assert_eq!(event.path, path("src/new.txt"));
    assert_eq!(event.kind, WatchKind::Created);

    let missing = agent.client.watch(&path("nope"), false).await.unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NotFound));
}

fn version_of(argv: &[&str]) -> Option<String> {
    let output = Command::new(argv[0]).args(&argv[1..]).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    berth_agent::detect::extract_version(&text)
}

#[tokio::test]
async fn detection_finds_this_hosts_interpreters_with_their_versions() {
    let agent = Agent::start().await;
    let info = agent.client.info(false).await.unwrap();
    let find = |name: &str| info.interpreters.iter().find(|i| i.name == name);
    let expected = [
        ("python", vec!["python3", "--version"]),
        ("perl", vec!["perl", "-e", "print $^V"]),
        ("bash", vec!["bash", "--version"]),
        ("node", vec!["node", "--version"]),
    ];
    let mut checked = 0;
    for (name, argv) in expected {
        let Some(version) = version_of(&argv) else {
            assert!(find(name).is_none(), "{name} found but not runnable here");
            continue;
        };
        let found = find(name).unwrap_or_else(|| panic!("{name} not detected: {info:?}"));
        assert_eq!(found.version.as_deref(), Some(version.as_str()), "{name}");
        assert_eq!(found.source, InterpreterSource::Detected);
        checked += 1;
    }
    assert!(checked >= 2, "this host should have bash and perl at least");
    assert!(find("sh").is_some());
    assert_eq!(info.protocol, berth_proto::PROTOCOL_VERSION);
    assert!(info.resources.agent_rss_bytes > 0);
    assert!(info.resources.processes > 0);
}

#[tokio::test]
async fn a_hints_file_adds_and_overrides_interpreters() {
    let hints = tempfile::NamedTempFile::new().unwrap();
    let perl = which("perl");
    std::fs::write(
        hints.path(),
        format!(
            r#"{{"python": "{}", "mytool": {{"path": "/bin/true", "version": "9.9"}}, "ghost": "/no/such"}}"#,
            perl.display()
        ),
    )
    .unwrap();
    let agent = Agent::start_with(&["--hints", hints.path().to_str().unwrap()]).await;
    let info = agent.client.info(false).await.unwrap();
    let find = |name: &str| info.interpreters.iter().find(|i| i.name == name);
    let python = find("python").unwrap();
    assert_eq!(python.path, perl.to_string_lossy());
    assert_eq!(python.source, InterpreterSource::Hint);
    let mytool = find("mytool").unwrap();
    assert_eq!(mytool.version.as_deref(), Some("9.9"));
    assert!(find("ghost").is_none());

    // Detection on request reads the hints again.
    std::fs::write(hints.path(), "mytool: /bin/false\n").unwrap();
    let info = agent.client.info(true).await.unwrap();
    let mytool = info
        .interpreters
        .iter()
        .find(|i| i.name == "mytool")
        .unwrap();
    assert_eq!(mytool.path, "/bin/false");
}

fn which(program: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[tokio::test]
async fn orphans_are_reaped() {
    let agent = Agent::start().await;
    // The shell exits at once; its background child is orphaned to the
    // agent and must be reaped when it exits, or it stays a zombie.
    let (out, _, _) = agent
        .run(ExecRequest::shell("sleep 0.2 >/dev/null 2>&1 & echo $!"))
        .await;
    let orphan: u32 = out.trim().parse().unwrap();
    eventually("the orphan to be reaped", || gone(orphan));
}

#[tokio::test]
async fn sigterm_ends_commands_then_the_agent_exits_zero() {
    let mut agent = Agent::start().await;
    let mut events = agent
        .client
        .exec(
            ExecRequest::shell(
                "trap 'echo bye; exit 7' TERM; echo ready; while :; do sleep 0.05; done",
            ),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(matches!(
        events.recv().await,
        Some(ExecEvent::Stdout { .. })
    ));
    let pid = rustix::process::Pid::from_raw(agent.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let (out, _, status) = berth_agent_client::collect(&mut events).await;
    assert!(status.cancelled);
    assert_eq!(String::from_utf8(out).unwrap(), "bye\n", "{status:?}");
    assert_eq!(status.code, Some(7));
    let exit = agent.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn a_wrong_protocol_version_is_refused() {
    let agent = Agent::start().await;
    let socket = agent.client.socket().to_path_buf();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let hello = berth_proto::frame::encode(&berth_proto::Frame::new(
        0,
        berth_proto::ClientMessage::Hello {
            version: 999,
            client: "old".into(),
        },
    ))
    .unwrap();
    stream.write_all(&hello).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let mut decoder = berth_proto::FrameDecoder::new();
    decoder.feed(&reply);
    let frame = decoder
        .next_frame::<berth_proto::AgentMessage>()
        .unwrap()
        .unwrap();
    match frame.message {
        berth_proto::AgentMessage::Error(body) => {
            assert_eq!(body.code, ErrorCode::Version);
            assert!(body.message.contains("999"));
        }
        other => panic!("expected a version error, got {other:?}"),
    }
}

#[tokio::test]
async fn file_operations_stay_inside_the_workspace() {
    let agent = Agent::start().await;
    let client = &agent.client;
    client
        .write_file(&path("src/main.rs"), b"fn main() {}\n", None)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(agent.root.join("src/main.rs")).unwrap(),
        b"fn main() {}\n"
    );
    assert_eq!(
        client
            .read_file(&path("src/main.rs"))
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"fn main() {}\n"
    );
    client.mkdir(&path("a/b/c")).await.unwrap();
    client
        .rename(&path("src/main.rs"), &path("a/b/lib.rs"))
        .await
        .unwrap();
    let names: Vec<_> = client
        .list_dir(&path("a/b"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(names, ["a/b/c", "a/b/lib.rs"]);
    let stat = client.stat(&path("a/b/lib.rs")).await.unwrap();
    assert_eq!(stat.size, 13);
    client.remove(&path("a")).await.unwrap();
    let gone = client.stat(&path("a")).await.unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::NotFound));

    // Larger than one frame both ways, with every byte value.
    let big: Vec<u8> = (0..9 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    client
        .write_file(&path("big.bin"), &big, Some(0o600))
        .await
        .unwrap();
    assert_eq!(
        client
            .read_file(&path("big.bin"))
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        big
    );
    assert_eq!(
        client.stat(&path("big.bin")).await.unwrap().mode & 0o777,
        0o600
    );

    // A symlink leading out is refused, whatever the operation.
    std::os::unix::fs::symlink("/etc", agent.root.join("out")).unwrap();
    for err in [
        client.read_file(&path("out/passwd")).await.unwrap_err(),
        client
            .write_file(&path("out/evil"), b"x", None)
            .await
            .unwrap_err(),
        client.list_dir(&path("out")).await.unwrap_err(),
    ] {
        assert_eq!(err.code(), Some(ErrorCode::Escapes), "{err}");
    }
    let mut request = ExecRequest::shell("true");
    request.cwd = Some("out".into());
    let err = client
        .exec(request, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Escapes), "{err}");
    assert!(!Path::new("/etc/evil").exists());
}

#[tokio::test]
async fn signals_reach_the_command() {
    let agent = Agent::start().await;
    let mut process = agent
        .client
        .spawn(
            ExecRequest::shell(
                "trap 'echo got-usr1; exit 3' USR1; echo ready; while :; do sleep 0.05; done",
            ),
            false,
        )
        .await
        .unwrap();
    match process.events.recv().await.unwrap() {
        ExecEvent::Stdout { data } => assert_eq!(data.0, b"ready\n"),
        other => panic!("expected output, got {other:?}"),
    }
    process.signal(10).unwrap();
    let (out, _, status) = process.output().await;
    assert_eq!(out, b"got-usr1\n");
    assert_eq!(status.code, Some(3));
    assert!(!status.cancelled);
}

/// A directory with only busybox's `sh`, like a busybox-only image.
fn busybox_sh() -> tempfile::TempDir {
    let busybox = which("busybox");
    assert!(
        busybox.is_file(),
        "busybox is needed (scripts/prepare installs busybox-static)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&busybox, dir.path().join("sh")).unwrap();
    dir
}

#[tokio::test]
async fn sessions_work_in_busybox_sh() {
    let bin = busybox_sh();
    let agent = Agent::start().await;
    let session = agent
        .client
        .session(SessionParams {
            shell: Some(bin.path().join("sh").to_string_lossy().into_owned()),
            ..Default::default()
        })
        .await
        .unwrap();
    session
        .run("cd /tmp && export X=1 && f() { echo \"f$X\"; }")
        .await
        .unwrap();
    let (out, _, status) = session.run("pwd; f; printf '# '").await.unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "/tmp\nf1\n# ");
    assert_eq!(status.code, Some(0));
    let sleeper = session.start("sleep 1000", None, None).await.unwrap();
    sleeper.signal(2).unwrap();
    let (_, _, status) = sleeper.output().await;
    assert_eq!(status.code, Some(130));
    let (_, _, status) = session.run("echo 'unterminated").await.unwrap();
    assert_ne!(status.code, Some(0));
    let (out, _, _) = session.run("echo alive").await.unwrap();
    assert_eq!(out, b"alive\n");
}

#[tokio::test]
async fn busybox_sh_is_detected_with_its_version() {
    let bin = busybox_sh();
    let path = bin.path().to_string_lossy().into_owned();
    let agent = Agent::start_env(&[], &[("PATH", &path)]).await;
    let info = agent.client.info(false).await.unwrap();
    let names: Vec<_> = info.interpreters.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["sh"], "only sh is on this PATH");
    let expected = version_of(&["busybox"]).unwrap();
    assert_eq!(
        info.interpreters[0].version.as_deref(),
        Some(expected.as_str())
    );
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_what_it_started() {
    use berth_proto::{AgentMessage, ClientMessage, Frame, FrameDecoder, frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let agent = Agent::start().await;
    let mut stream = tokio::net::UnixStream::connect(agent.client.socket())
        .await
        .unwrap();
    let mut wire = Vec::new();
    let hello = ClientMessage::Hello {
        version: berth_proto::PROTOCOL_VERSION,
        client: "test".into(),
    };
    frame::encode_into(&mut wire, 0, &hello, &[]).unwrap();
    let exec = ClientMessage::Exec {
        request: ExecRequest::argv(["sleep", "1000"]),
        stream_stdin: false,
    };
    frame::encode_into(&mut wire, 1, &exec, &[]).unwrap();
    stream.write_all(&wire).await.unwrap();
    let mut decoder = FrameDecoder::new();
    let mut buf = [0u8; 4096];
    let pid = loop {
        match decoder.next_frame::<AgentMessage>().unwrap() {
            Some(Frame {
                message: AgentMessage::Started { pid },
                ..
            }) => break pid,
            Some(_) => {}
            None => {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the agent closed the connection");
                decoder.feed(&buf[..n]);
            }
        }
    };
    assert!(!gone(pid));
    drop(stream);
    eventually("the command of a vanished client to end", || gone(pid));
}
