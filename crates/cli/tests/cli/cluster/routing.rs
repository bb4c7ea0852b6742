//! What a controller routes to the node holding a workspace beyond its
//! files and commands: terminals over NATS (`berth --server nats://...
//! terminal`), and, over the controller's HTTP API, sessions, terminals,
//! exports and fetches. Each runs on the node: what it shows is only that
//! node's workspace's.

use super::placement::{http_controller, node_of, node_offering, ok, ready, sandbox_spec, up, via};
use super::wait_until;
use crate::terminal::{Pty, size};
use crate::{Env, stderr};
use berth_testkit::{NatsServer, make_repo};
use std::time::Duration;

/// The command lines of the processes a workspace's shell sees.
fn processes(env: &Env, nats: &NatsServer, id: &str) -> String {
    let out = via(
        env,
        nats,
        "berth.v1",
        &[
            "exec",
            id,
            "--",
            "sh",
            "-c",
            "for p in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $p; echo; done",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Two workspaces of one upstream repository, placed on nodes `a` and
/// `b` in turn (the least loaded first); each setup leaves its name in
/// `ready`, so what a command shows tells which node ran it.
fn one_on_each_node(env: &Env, nats: &NatsServer) -> (String, String) {
    let repo = env.dir.path().join("upstream");
    make_repo(&repo, &[("hello.txt", "hi\n")]);
    let first = up(
        env,
        nats,
        "berth.v1",
        &sandbox_spec(env, "one.toml", &repo, "one"),
    );
    let second = up(
        env,
        nats,
        "berth.v1",
        &sandbox_spec(env, "two.toml", &repo, "two"),
    );
    assert_eq!(node_of(env, nats, "berth.v1", &first), "a");
    assert_eq!(node_of(env, nats, "berth.v1", &second), "b");
    (first, second)
}

#[test]
fn a_terminal_over_nats_runs_on_the_workspaces_node_and_a_client_that_goes_away_ends_it() {
    let nats = NatsServer::start();
    let env = Env::new();
    let _a = node_offering(&env, &nats, "a", "sandbox", 15);
    let _b = node_offering(&env, &nats, "b", "sandbox", 15);
    let _controller = super::placement::controller(&env, &nats, "berth.v1");
    ready(&env, &nats, "berth.v1", &["a", "b"]);
    let (first, second) = one_on_each_node(&env, &nats);

    // Typed into a shell on the second workspace's node, its window
    // resized, left with `exit 3`.
    let terminal = |args: &[&str]| {
        let mut command = env.berth();
        command
            .args(["--server", &nats.url(), "terminal"])
            .args(args);
        Pty::spawn(command)
    };
    let mut pty = terminal(&[&second]);
    pty.type_text("cat rea''dy\r");
    pty.wait_for("two\r\n");
    pty.wait_for_size(24, 80);
    size(&pty.master, 40, 120);
    let pid = rustix::process::Pid::from_raw(pty.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::WINCH).unwrap();
    pty.wait_for_size(40, 120);
    pty.type_text("exit 3\r");
    assert_eq!(pty.exit_code(), Some(3), "the shell's exit code is berth's");

    // A command of its own, on the first workspace's node.
    let mut pty = terminal(&[&first, "--", "sh", "-c", "cat ready; exit 5"]);
    pty.wait_for("one\r\n");
    assert_eq!(pty.exit_code(), Some(5));

    // A client killed mid-terminal: its program ends on the node.
    let mut pty = terminal(&[&first, "--", "sh", "-c", "echo started; exec sleep 7345"]);
    pty.wait_for("started");
    assert!(processes(&env, &nats, &first).contains("sleep 7345"));
    pty.child.kill().unwrap();
    pty.child.wait().unwrap();
    wait_until(
        "the terminal's program to end on the node",
        Duration::from_secs(30),
        || !processes(&env, &nats, &first).contains("sleep 7345"),
    );

    // An unknown workspace is refused as over HTTP.
    let out = via(&env, &nats, "berth.v1", &["terminal", "nosuchworkspace"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nosuchworkspace"), "{}", stderr(&out));

    for id in [&first, &second] {
        assert_eq!(ok(&env, &nats, "berth.v1", &["rm", id]).trim(), id.as_str());
    }
}

/// A client typing far faster than its terminal's answers come, without
/// reading the output: what is beyond the window is refused, each input
/// is answered (applied or refused, none silently dropped), and the
/// terminal goes on once the client reads again.
#[test]
fn a_terminal_flooded_with_input_refuses_what_is_beyond_the_window_and_goes_on() {
    use berth_nats::async_nats;
    use berth_nats_api::protocol::{CONTROL, Control, EVENT};
    use futures::StreamExt as _;

    let nats = NatsServer::start();
    let env = Env::new();
    let _a = node_offering(&env, &nats, "a", "sandbox", 15);
    let _controller = super::placement::controller(&env, &nats, "berth.v1");
    ready(&env, &nats, "berth.v1", &["a"]);
    let repo = env.dir.path().join("upstream");
    make_repo(&repo, &[("hello.txt", "hi\n")]);
    let id = up(
        &env,
        &nats,
        "berth.v1",
        &sandbox_spec(&env, "one.toml", &repo, "one"),
    );

    const SENT: usize = 200;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let inbox = client.new_inbox();
        let mut answers = client.subscribe(inbox.clone()).await.unwrap();
        let args = serde_json::json!({
            "id": id,
            "params": { "command": ["cat"], "rows": 24, "cols": 80 },
        });
        client
            .publish_with_reply("berth.v1.terminal", inbox, args.to_string().into())
            .await
            .unwrap();
        let first = answers.next().await.unwrap();
        let headers = first.headers.unwrap();
        assert_eq!(headers.get(EVENT).unwrap().as_str(), "item");
        let control = headers.get(CONTROL).unwrap().as_str().to_owned();

        let replies = client.new_inbox();
        let mut answered = client.subscribe(format!("{replies}.*")).await.unwrap();
        let line = format!("{}\n", "x".repeat(1000));
        for n in 0..SENT {
            let input = Control::Input {
                data: berth_core::Output(line.clone().into_bytes()),
            };
            client
                .publish_with_reply(
                    control.clone(),
                    format!("{replies}.{n}"),
                    serde_json::to_vec(&input).unwrap().into(),
                )
                .await
                .unwrap();
        }
        client.flush().await.unwrap();

        // Reading again: every frame acknowledged as it comes.
        let reader = {
            let client = client.clone();
            let control = control.clone();
            tokio::spawn(async move {
                let mut received = 1;
                let mut seen = Vec::new();
                while let Some(frame) = answers.next().await {
                    received += 1;
                    if let Ok(berth_core::ExecEvent::Stdout { data }) =
                        serde_json::from_slice(&frame.payload)
                    {
                        seen.extend(data.0);
                    }
                    let ack = Control::Ack { received };
                    let ack = serde_json::to_vec(&ack).unwrap();
                    client.publish(control.clone(), ack.into()).await.unwrap();
                    if String::from_utf8_lossy(&seen).contains("after") {
                        return;
                    }
                }
                panic!("the terminal ended: {}", String::from_utf8_lossy(&seen));
            })
        };

        let (mut applied, mut refused) = (0, 0);
        for _ in 0..SENT {
            let reply = tokio::time::timeout(Duration::from_secs(60), answered.next())
                .await
                .expect("every input is answered")
                .unwrap();
            if reply.payload.is_empty() {
                applied += 1;
            } else {
                let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
                assert_eq!(body["error"]["code"], "invalid_request", "{body}");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(message.contains("more than 8 inputs"), "{message}");
                refused += 1;
            }
        }
        assert!(refused > 0, "{applied} applied, none refused");
        assert!(applied >= 8, "{applied} applied, {refused} refused");

        // The terminal goes on.
        let after = Control::Input {
            data: berth_core::Output(b"after\n".to_vec()),
        };
        let reply = client
            .request(control.clone(), serde_json::to_vec(&after).unwrap().into())
            .await
            .unwrap();
        assert!(reply.payload.is_empty(), "{:?}", reply.payload);
        tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("the terminal echoes what comes after")
            .unwrap();
        let cancel = serde_json::to_vec(&Control::Cancel).unwrap();
        client.publish(control, cancel.into()).await.unwrap();
        client.flush().await.unwrap();
    });
    assert_eq!(ok(&env, &nats, "berth.v1", &["rm", &id]).trim(), id);
}

/// Over a controller's HTTP API, sessions, terminals, exports and fetches
/// act on the node holding the workspace: each sees only what that
/// node's workspace has (its setup's marker, a file written there).
/// Garbage collection is each node's own, and refused saying where to
/// run it.
#[test]
fn sessions_terminals_exports_and_fetches_over_a_controllers_http_api_run_on_the_node() {
    let nats = NatsServer::start();
    let env = Env::new();
    let _a = node_offering(&env, &nats, "a", "sandbox", 15);
    let _b = node_offering(&env, &nats, "b", "sandbox", 15);
    let (_controller, url) = http_controller(&env, &nats);
    ready(&env, &nats, "berth.v1", &["a", "b"]);
    let http = |args: &[&str]| {
        env.berth()
            .args(["--server", &url])
            .args(args)
            .output()
            .unwrap()
    };
    wait_until("the HTTP front end", Duration::from_secs(30), || {
        http(&["ls"]).status.success()
    });
    let (first, second) = one_on_each_node(&env, &nats);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let session: serde_json::Value = client
            .post(format!("{url}/v1/workspaces/{second}/sessions"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = session["id"].as_str().expect("a session").to_owned();
        let run = |command: &str| {
            let client = client.clone();
            let at = format!("{url}/v1/workspaces/{second}/sessions/{session}/exec");
            let body = serde_json::json!({ "command": command });
            async move {
                let answer: serde_json::Value = client
                    .post(at)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                answer
            }
        };
        run("cd code; export MARK=$(cat ../ready)").await;
        let answer = run("echo $MARK; cat hello.txt").await;
        assert_eq!(answer["stdout"], "two\nhi\n", "{answer}");
        let interrupted: serde_json::Value = client
            .post(format!(
                "{url}/v1/workspaces/{second}/sessions/{session}/interrupt"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(interrupted["interrupted"], false, "{interrupted}");
        let closed = client
            .delete(format!("{url}/v1/workspaces/{second}/sessions/{session}"))
            .send()
            .await
            .unwrap();
        assert_eq!(closed.status(), 204);

        // A fetch's progress streams through the controller.
        let fetched = client
            .post(format!("{url}/v1/workspaces/{first}/fetch?stream=true"))
            .send()
            .await
            .unwrap();
        assert_eq!(fetched.status(), 200);
        let lines = fetched.text().await.unwrap();
        assert!(lines.contains("\"fetching\""), "{lines}");
        assert!(lines.contains("\"fetched\""), "{lines}");
    });

    // A terminal on the first workspace's node.
    let mut command = env.berth();
    command.args([
        "--server",
        &url,
        "terminal",
        &first,
        "--",
        "sh",
        "-c",
        "cat ready; exit 6",
    ]);
    let mut pty = Pty::spawn(command);
    pty.wait_for("one\r\n");
    assert_eq!(pty.exit_code(), Some(6));

    // The export is the second workspace's, from its node.
    let mut write = env
        .berth()
        .args(["--server", &url, "write", &second, "code/notes.md"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(write.stdin.as_mut().unwrap(), b"- only on b\n").unwrap();
    drop(write.stdin.take());
    assert!(write.wait().unwrap().success());
    let out_dir = env.dir.path().join("exported");
    let out = http(&["export", &second, "-o", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(out_dir.join("code/notes.md")).unwrap(),
        "- only on b\n"
    );

    let out = http(&["gc"]);
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(
        said.contains("each node's own") && said.contains("berth node"),
        "{said}"
    );

    for id in [&first, &second] {
        let out = http(&["rm", id]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}
