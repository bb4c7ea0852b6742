//! Workspaces placed on nodes: controllers (`berth serve -s nats --remote`)
//! place each new workspace on a node and forward every operation on it
//! there; `berth --server nats://...` works through them as through one
//! berth. Nodes and controllers are separate processes with their own
//! homes.

use super::{Node, kill_9, names, settings, wait_until};
use crate::{Env, stderr, workspace_id};
use berth_testkit::{GitHttpServer, NatsServer, make_repo, write_credentials};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A node offering only `runtimes`, its record living `ttl` seconds.
pub(super) fn node_offering(
    env: &Env,
    nats: &NatsServer,
    name: &str,
    runtimes: &str,
    ttl: u64,
) -> Node {
    let log = std::fs::File::create(env.dir.path().join(format!("node-{name}.log"))).unwrap();
    let child = settings(&mut Command::new(env!("CARGO_BIN_EXE_berth")))
        .env("BERTH_HOME", env.dir.path().join(format!("node-{name}")))
        .args(["node", "--nats", &nats.url(), "--name", name])
        .args(["--runtimes", runtimes, "--ttl", &ttl.to_string()])
        .stderr(log)
        .spawn()
        .unwrap();
    Node {
        name: name.into(),
        child,
    }
}

/// A controller serving the NATS API under `prefix`, with its own home.
pub(super) fn controller(env: &Env, nats: &NatsServer, prefix: &str) -> Node {
    let log = std::fs::File::create(env.dir.path().join(format!("{prefix}.log"))).unwrap();
    let child = settings(&mut Command::new(env!("CARGO_BIN_EXE_berth")))
        .env(
            "BERTH_HOME",
            env.dir.path().join(format!("controller-{prefix}")),
        )
        .args(["serve", "-s", "nats", "--nats", &nats.url(), "--remote"])
        .args(["--nats-prefix", prefix])
        .stderr(log)
        .spawn()
        .unwrap();
    Node {
        name: prefix.into(),
        child,
    }
}

/// `berth --server nats://... --nats-prefix PREFIX ARGS`.
pub(super) fn via(env: &Env, nats: &NatsServer, prefix: &str, args: &[&str]) -> Output {
    env.berth()
        .args(["--server", &nats.url(), "--nats-prefix", prefix])
        .args(args)
        .output()
        .unwrap()
}

pub(super) fn ok(env: &Env, nats: &NatsServer, prefix: &str, args: &[&str]) -> String {
    let out = via(env, nats, prefix, args);
    assert!(
        out.status.success(),
        "berth {args:?} through {prefix} failed: {}",
        stderr(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits for the nodes `expected` and for the controller under `prefix`.
pub(super) fn ready(env: &Env, nats: &NatsServer, prefix: &str, expected: &[&str]) {
    wait_until("the nodes", Duration::from_secs(30), || {
        names(env, nats) == expected
    });
    wait_until("the controller", Duration::from_secs(30), || {
        via(env, nats, prefix, &["ls"]).status.success()
    });
}

/// `(id, node, state)` of every workspace `berth ls --json` lists.
pub(super) fn placed(env: &Env, nats: &NatsServer, prefix: &str) -> Vec<(String, String, String)> {
    let listed: serde_json::Value =
        serde_json::from_str(&ok(env, nats, prefix, &["ls", "--json"])).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|ws| {
            (
                ws["id"].as_str().unwrap().to_owned(),
                ws["node"].as_str().unwrap_or("").to_owned(),
                ws["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub(super) fn node_of(env: &Env, nats: &NatsServer, prefix: &str, id: &str) -> String {
    placed(env, nats, prefix)
        .into_iter()
        .find(|(listed, _, _)| listed == id)
        .map(|(_, node, _)| node)
        .unwrap_or_else(|| panic!("{id} is not listed"))
}

/// A spec on the local runtime cloning `repo`, its setup writing `marker`.
pub(super) fn spec(env: &Env, name: &str, repo: &std::path::Path, marker: &str) -> String {
    spec_on(env, "runtime = \"local\"", name, repo, marker)
}

/// The same on the sandbox, which keeps layers (changes, diff, reset).
pub(super) fn sandbox_spec(env: &Env, name: &str, repo: &std::path::Path, marker: &str) -> String {
    spec_on(
        env,
        "runtime = \"sandbox\"\nimage = \"host\"",
        name,
        repo,
        marker,
    )
}

pub(super) fn spec_on(
    env: &Env,
    runtime: &str,
    name: &str,
    repo: &std::path::Path,
    marker: &str,
) -> String {
    env.file(
        name,
        &format!(
            "{runtime}\nsetup_script = \"echo {marker} > ready\"\n\
             [[repositories]]\nurl = \"{}\"\npath = \"code\"\n",
            repo.display()
        ),
    )
    .to_str()
    .unwrap()
    .to_owned()
}

pub(super) fn up(env: &Env, nats: &NatsServer, prefix: &str, spec: &str) -> String {
    workspace_id(&ok(env, nats, prefix, &["up", spec]))
}

#[test]
fn workspaces_placed_on_two_nodes_are_worked_on_through_the_controller() {
    let nats = NatsServer::start();
    let env = Env::new();
    let _a = node_offering(&env, &nats, "a", "sandbox", 15);
    let _b = node_offering(&env, &nats, "b", "sandbox", 15);
    let _controller = controller(&env, &nats, "berth.v1");
    ready(&env, &nats, "berth.v1", &["a", "b"]);
    let repo = env.dir.path().join("upstream");
    make_repo(&repo, &[("hello.txt", "hi\n")]);

    let one = sandbox_spec(&env, "one.toml", &repo, "one");
    let first = up(&env, &nats, "berth.v1", &one);
    let two = sandbox_spec(&env, "two.toml", &repo, "two");
    let second = up(&env, &nats, "berth.v1", &two);
    assert_eq!(node_of(&env, &nats, "berth.v1", &first), "a");
    assert_eq!(
        node_of(&env, &nats, "berth.v1", &second),
        "b",
        "the second goes to the less loaded node"
    );
    let table = ok(&env, &nats, "berth.v1", &["ls"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.lines().next().unwrap().contains("NODE"), "{table}");

    for (id, marker) in [(&first, "one"), (&second, "two")] {
        let out = via(
            &env,
            &nats,
            "berth.v1",
            &[
                "exec",
                id,
                "--",
                "sh",
                "-c",
                "cat ready code/hello.txt; echo oops >&2; exit 4",
            ],
        );
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{marker}\nhi\n")
        );
        assert_eq!(stderr(&out), "oops\n");

        let mut write = env
            .berth()
            .args(["--server", &nats.url(), "write", id, "code/notes.md"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(write.stdin.as_mut().unwrap(), b"- ship it\n").unwrap();
        drop(write.stdin.take());
        assert!(write.wait().unwrap().success());
        assert_eq!(
            ok(&env, &nats, "berth.v1", &["read", id, "code/notes.md"]),
            "- ship it\n"
        );
        assert_eq!(
            ok(&env, &nats, "berth.v1", &["files", id, "code"]),
            "code/.git/\ncode/hello.txt\ncode/notes.md\n"
        );
        let changes = ok(&env, &nats, "berth.v1", &["changes", id]);
        assert_eq!(changes, "A code/notes.md\n");
        let diff = ok(&env, &nats, "berth.v1", &["diff", id]);
        assert!(diff.contains("+- ship it"), "{diff}");
        ok(&env, &nats, "berth.v1", &["reset", id]);
        let out = via(&env, &nats, "berth.v1", &["read", id, "code/notes.md"]);
        assert!(!out.status.success(), "reset drops the file");
        assert_eq!(
            ok(&env, &nats, "berth.v1", &["stop", id]).trim(),
            id.as_str()
        );
        assert_eq!(
            ok(&env, &nats, "berth.v1", &["start", id]).trim(),
            id.as_str()
        );
    }

    assert_eq!(ok(&env, &nats, "berth.v1", &["rm", &first]).trim(), first);
    assert_eq!(
        placed(&env, &nats, "berth.v1"),
        [(second.clone(), "b".into(), "running".into())]
    );
    let out = via(&env, &nats, "berth.v1", &["exec", &first, "--", "true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&first), "{}", stderr(&out));
    assert_eq!(ok(&env, &nats, "berth.v1", &["rm", &second]).trim(), second);
}

#[test]
fn placement_prefers_the_node_holding_the_cache_and_never_one_without_the_runtime() {
    let nats = NatsServer::start();
    let env = Env::new();
    let _a = node_offering(&env, &nats, "a", "local", 2);
    let _b = node_offering(&env, &nats, "b", "local", 2);
    let _c = node_offering(&env, &nats, "c", "docker", 2);
    let _controller = controller(&env, &nats, "berth.v1");
    ready(&env, &nats, "berth.v1", &["a", "b", "c"]);
    let nodes: serde_json::Value =
        serde_json::from_str(&env.ok(&["nodes", "--nats", &nats.url(), "--json"])).unwrap();
    let c = &nodes[2];
    assert!(
        !c["runtimes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "local"),
        "c offers only what it was told: {c}"
    );
    let repo = env.dir.path().join("upstream");
    make_repo(&repo, &[("hello.txt", "hi\n")]);
    let cached = spec(&env, "cached.toml", &repo, "cached");

    let first = up(&env, &nats, "berth.v1", &cached);
    assert_eq!(node_of(&env, &nats, "berth.v1", &first), "a");
    wait_until("a to hold the cache", Duration::from_secs(20), || {
        let nodes: serde_json::Value =
            serde_json::from_str(&env.ok(&["nodes", "--nats", &nats.url(), "--json"])).unwrap();
        nodes[0]["cache_keys"]
            .as_array()
            .is_some_and(|keys| !keys.is_empty())
    });
    // b holds nothing, yet a holds the spec's cache.
    let again = up(&env, &nats, "berth.v1", &cached);
    assert_eq!(node_of(&env, &nats, "berth.v1", &again), "a");
    let other = up(
        &env,
        &nats,
        "berth.v1",
        &spec(&env, "other.toml", &repo, "other"),
    );
    assert_eq!(node_of(&env, &nats, "berth.v1", &other), "b");
    assert!(
        placed(&env, &nats, "berth.v1")
            .iter()
            .all(|(_, node, _)| node != "c"),
        "c offers no local runtime"
    );

    let sandboxed = env.file(
        "sandboxed.toml",
        "runtime = \"sandbox\"\nsetup_script = \"true\"\n",
    );
    let out = via(
        &env,
        &nats,
        "berth.v1",
        &["up", sandboxed.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("runtime `sandbox`"), "{err}");
    assert!(
        err.contains("a offers local"),
        "the nodes and what they offer: {err}"
    );
    assert_eq!(placed(&env, &nats, "berth.v1").len(), 3, "nothing was made");
}

#[test]
fn a_killed_nodes_workspaces_are_lost_naming_it_and_two_controllers_agree() {
    let nats = NatsServer::start();
    let env = Env::new();
    let mut a = node_offering(&env, &nats, "a", "local", 2);
    let _b = node_offering(&env, &nats, "b", "local", 2);
    let _p = controller(&env, &nats, "berth.p");
    let _q = controller(&env, &nats, "berth.q");
    ready(&env, &nats, "berth.p", &["a", "b"]);
    ready(&env, &nats, "berth.q", &["a", "b"]);
    let repo = env.dir.path().join("upstream");
    make_repo(&repo, &[("hello.txt", "hi\n")]);

    let on_a = up(
        &env,
        &nats,
        "berth.p",
        &spec(&env, "one.toml", &repo, "one"),
    );
    // q sees what p placed, and places beside it.
    let on_b = up(
        &env,
        &nats,
        "berth.q",
        &spec(&env, "two.toml", &repo, "two"),
    );
    let both = placed(&env, &nats, "berth.p");
    assert_eq!(
        both,
        [
            (on_a.clone(), "a".into(), "running".into()),
            (on_b.clone(), "b".into(), "running".into())
        ]
    );
    assert_eq!(placed(&env, &nats, "berth.q"), both);
    // A controller started afresh, with an empty home, sees them too.
    let fresh = controller(&env, &nats, "berth.r");
    ready(&env, &nats, "berth.r", &["a", "b"]);
    assert_eq!(placed(&env, &nats, "berth.r"), both);
    drop(fresh);

    kill_9(&mut a.child);
    wait_until("a's workspace to be lost", Duration::from_secs(20), || {
        placed(&env, &nats, "berth.p")
            .iter()
            .any(|(id, _, state)| id == &on_a && state == "lost")
    });
    let lost = [
        (on_a.clone(), "a".into(), "lost".into()),
        (on_b.clone(), "b".into(), "running".into()),
    ];
    assert_eq!(placed(&env, &nats, "berth.p"), lost);
    assert_eq!(placed(&env, &nats, "berth.q"), lost);
    let table = ok(&env, &nats, "berth.q", &["ls"]);
    assert!(table.contains("lost"), "{table}");

    let out = via(&env, &nats, "berth.q", &["exec", &on_a, "--", "true"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("node `a`") && err.contains("gone"), "{err}");
    let out = via(
        &env,
        &nats,
        "berth.q",
        &["exec", &on_b, "--", "cat", "ready"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "two\n",
        "{}",
        stderr(&out)
    );

    // A lost workspace can be forgotten.
    assert_eq!(ok(&env, &nats, "berth.p", &["rm", &on_a]).trim(), on_a);
    assert_eq!(
        placed(&env, &nats, "berth.q"),
        [(on_b.clone(), "b".into(), "running".into())]
    );
}

#[test]
fn a_token_the_node_clones_with_never_crosses_nats() {
    let nats = NatsServer::start();
    let env = Env::new();
    let token = format!("tok-{}", berth_testkit::attacks::marker());
    let repos = env.dir.path().join("repos");
    make_repo(&repos.join("app"), &[("README", "one\n")]);
    let forge = GitHttpServer::start(&repos, &token);
    write_credentials(
        &env.dir.path().join("node-a"),
        "forge",
        &token,
        &[&forge.url()],
    );

    let _a = node_offering(&env, &nats, "a", "local", 15);
    let _controller = controller(&env, &nats, "berth.v1");
    ready(&env, &nats, "berth.v1", &["a"]);
    // Everything that crosses the NATS server from now on (a tap on
    // `>` before the controller answers would hold requests meant for it).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime
        .block_on(berth_nats::async_nats::connect(nats.url()))
        .unwrap();
    let mut all = runtime.block_on(client.subscribe(">")).unwrap();
    runtime.block_on(client.flush()).unwrap();
    let tap = {
        let seen = seen.clone();
        runtime.spawn(async move {
            use futures::StreamExt as _;
            while let Some(message) = all.next().await {
                let mut seen = seen.lock().unwrap();
                seen.extend_from_slice(message.subject.as_bytes());
                for (name, values) in message.headers.iter().flat_map(|h| h.iter()) {
                    let name: &str = name.as_ref();
                    seen.extend_from_slice(name.as_bytes());
                    for value in values {
                        seen.extend_from_slice(value.as_str().as_bytes());
                    }
                }
                seen.extend_from_slice(&message.payload);
            }
        })
    };

    let spec = env.file(
        "spec.toml",
        &format!(
            "runtime = \"local\"\n[[repositories]]\nurl = \"{}app\"\npath = \"app\"\n\
             credential = \"forge\"\n",
            forge.url()
        ),
    );
    let id = up(&env, &nats, "berth.v1", spec.to_str().unwrap());
    assert_eq!(
        ok(&env, &nats, "berth.v1", &["read", &id, "app/README"]),
        "one\n"
    );
    assert!(forge.served() > 0, "the node cloned with the token");
    let sent = forge.authorizations();
    assert!(!sent.is_empty());

    tap.abort();
    let seen = seen.lock().unwrap();
    let contains = |needle: &[u8]| seen.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"app/README"), "the tap saw the requests");
    assert!(!contains(token.as_bytes()), "the token crossed NATS");
    for authorization in &sent {
        let credential = authorization.rsplit(' ').next().unwrap();
        assert!(
            !contains(credential.as_bytes()),
            "the Authorization header's credential crossed NATS"
        );
    }
}

#[test]
fn two_controllers_placing_one_name_at_once_on_different_nodes_make_one_workspace() {
    let nats = NatsServer::start();
    let env = Env::new();
    // Each controller can only place on its own node: the local runtime
    // is a's, the sandbox b's.
    let _a = node_offering(&env, &nats, "a", "local", 15);
    let _b = node_offering(&env, &nats, "b", "sandbox", 15);
    let _p = controller(&env, &nats, "berth.p");
    let _q = controller(&env, &nats, "berth.q");
    ready(&env, &nats, "berth.p", &["a", "b"]);
    ready(&env, &nats, "berth.q", &["a", "b"]);
    let repo = env.dir.path().join("upstream");
    make_repo(&repo, &[("hello.txt", "hi\n")]);
    let local = spec(&env, "local.toml", &repo, "local");
    let sandboxed = sandbox_spec(&env, "sandboxed.toml", &repo, "sandboxed");

    let racers: Vec<_> = [("berth.p", &local), ("berth.q", &sandboxed)]
        .into_iter()
        .map(|(prefix, spec)| {
            env.berth()
                .args(["--server", &nats.url(), "--nats-prefix", prefix])
                .args(["up", spec, "--name", "twin"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = racers
        .into_iter()
        .map(|racer| racer.wait_with_output().unwrap())
        .collect();
    let made: Vec<&Output> = outs.iter().filter(|out| out.status.success()).collect();
    assert_eq!(made.len(), 1, "one of the two is made");
    let refused = outs.iter().find(|out| !out.status.success()).unwrap();
    assert!(
        stderr(refused).contains("the name `twin` is taken in the cluster"),
        "{}",
        stderr(refused)
    );
    let twin = workspace_id(&String::from_utf8_lossy(&made[0].stdout));
    assert_eq!(placed(&env, &nats, "berth.q").len(), 1);
    let out = via(
        &env,
        &nats,
        "berth.q",
        &["exec", "twin", "--", "cat", "ready"],
    );
    assert!(out.status.success(), "the name names one: {}", stderr(&out));

    // Removed, its name is free again, for either node.
    assert_eq!(ok(&env, &nats, "berth.q", &["rm", "twin"]).trim(), twin);
    let again = ok(&env, &nats, "berth.p", &["up", &local, "--name", "twin"]);
    assert_eq!(node_of(&env, &nats, "berth.p", &workspace_id(&again)), "a");
}

/// A controller serving HTTP (without a token, on loopback) and the NATS
/// API, with its own home; its address.
pub(super) fn http_controller(env: &Env, nats: &NatsServer) -> (Node, String) {
    let addr = format!("127.0.0.1:{}", berth_testkit::free_port());
    let log = std::fs::File::create(env.dir.path().join("http-controller.log")).unwrap();
    let child = settings(&mut Command::new(env!("CARGO_BIN_EXE_berth")))
        .env("BERTH_HOME", env.dir.path().join("controller-http"))
        .args(["serve", "-s", "http", "--nats", &nats.url(), "--remote"])
        .args(["--listen", &addr, "--insecure-no-auth"])
        .stderr(log)
        .spawn()
        .unwrap();
    let node = Node {
        name: "http".into(),
        child,
    };
    (node, format!("http://{addr}"))
}

#[test]
fn an_http_client_that_goes_away_has_its_command_ended_on_the_node() {
    let nats = NatsServer::start();
    let env = Env::new();
    let _a = node_offering(&env, &nats, "a", "local", 15);
    let (_controller, url) = http_controller(&env, &nats);
    ready(&env, &nats, "berth.v1", &["a"]);
    let http = |args: &[&str]| {
        let out = env
            .berth()
            .args(["--server", &url])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "berth {args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    wait_until("the HTTP front end", Duration::from_secs(30), || {
        env.berth()
            .args(["--server", &url, "ls"])
            .output()
            .unwrap()
            .status
            .success()
    });
    let repo = env.dir.path().join("upstream");
    make_repo(&repo, &[("hello.txt", "hi\n")]);
    let id = workspace_id(&http(&["up", &spec(&env, "one.toml", &repo, "one")]));
    assert_eq!(node_of(&env, &nats, "berth.v1", &id), "a");
    let listed: serde_json::Value = serde_json::from_str(&http(&["ls", "--json"])).unwrap();
    assert_eq!(listed[0]["node"], "a", "{listed}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pid: i32 = runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut response = client
            .post(format!("{url}/v1/workspaces/{id}/exec?stream=true"))
            .json(&serde_json::json!({
                "command": ["sh", "-c", "echo $$ > pid; echo started; exec sleep 1000"]
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut seen = String::new();
        while !seen.contains("started") {
            let chunk = response.chunk().await.unwrap().expect("the output streams");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        let pid = http(&["exec", &id, "--", "cat", "pid"]);
        drop(response);
        pid.trim().parse().unwrap()
    });
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(
        std::fs::read_to_string(proc.join("cmdline")).is_ok_and(|c| c.contains("sleep"))
            || !proc.exists(),
        "the pid is the command's"
    );
    wait_until(
        "the command to end on the node",
        Duration::from_secs(20),
        || std::fs::read_to_string(proc.join("stat")).map_or(true, |stat| stat.contains(") Z ")),
    );
    assert_eq!(http(&["rm", &id]).trim(), id);
    assert_eq!(http(&["ls", "--json"]).trim(), "[]");
}
