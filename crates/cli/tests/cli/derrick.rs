//! berth standing in for Derrick, driven as Derrick's clients drive it: a
//! subprocess named `derrick` (a link to berth in a directory on `PATH`)
//! started in its own process group with Derrick's long flags, polled on
//! `GET /health`, sent Derrick's requests with the headers its clients
//! send, and ended by SIGTERM to its group. On `docker` (an image with
//! bash and git made here with `docker import`), the `sandbox` and
//! `local`, and with `remote_nats`: a controller placing the workspaces on
//! two nodes of a cluster over a real nats-server.
//!
//! Derrick listens on 127.0.0.1:50080 and its clients give no other port,
//! so these tests take turns for it through a file lock.

use super::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

const ADDR: &str = "127.0.0.1:50080";
/// How long a start, a provision or a stop may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(120);
/// The test image: busybox, bash, git and GNU ls from this host.
const IMAGE: &str = "berth-test/derrick-bash-git:1";

/// Holds Derrick's port for one test at a time, across test processes.
pub(super) fn derrick_port() -> std::fs::File {
    let path = std::env::temp_dir().join("berth-test-derrick-port.lock");
    let lock = std::fs::File::create(&path).unwrap();
    lock.lock().unwrap();
    lock
}

/// The runtimes the workflow runs on.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Docker,
    Sandbox,
    Local,
    /// On the `local` runtime of a cluster's nodes.
    RemoteNats,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Docker => "docker",
            Mode::Sandbox => "sandbox",
            Mode::Local => "local",
            Mode::RemoteNats => "remote_nats",
        }
    }

    /// Whether the workspace has a filesystem of its own (`/` is its).
    fn isolated(self) -> bool {
        !matches!(self, Mode::Local | Mode::RemoteNats)
    }
}

/// A running `derrick`, and where its state is.
struct Derrick {
    dir: TempDir,
    home: PathBuf,
    child: std::process::Child,
    client: reqwest::Client,
    /// With `remote_nats`: the cluster its workspaces are made in.
    cluster: Option<Cluster>,
    _port: std::fs::File,
}

/// A nats-server and two nodes, `a` and `b`, offering `local`, each a
/// `berth node` process with a home of its own.
struct Cluster {
    nats: berth_testkit::NatsServer,
    nodes: Vec<(PathBuf, std::process::Child)>,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let nats = berth_testkit::NatsServer::start();
        let nodes = ["a", "b"]
            .into_iter()
            .map(|name| {
                let home = dir.join(format!("node-{name}"));
                let child = Command::new(env!("CARGO_BIN_EXE_berth"))
                    .env("BERTH_HOME", &home)
                    .env_remove("BERTH_RUNTIME")
                    .args(["node", "--nats", &nats.url(), "--name", name])
                    .args(["--runtimes", "local", "--ttl", "15"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                (home, child)
            })
            .collect();
        let cluster = Cluster { nats, nodes };
        let deadline = Instant::now() + PATIENCE;
        while cluster.names() != ["a", "b"] {
            assert!(Instant::now() < deadline, "the nodes never joined");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    fn names(&self) -> Vec<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["nodes", "--nats", &self.nats.url(), "--json"])
            .output()
            .unwrap();
        let nodes: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
        nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|node| node["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The workspaces in the registry of the node `name`'s own home.
    fn registry(&self, name: &str) -> Vec<Value> {
        let (home, _) = &self.nodes[if name == "a" { 0 } else { 1 }];
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .env("BERTH_HOME", home)
            .args(["ls", "--all", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Derrick {
    /// `derrick -p MODE -w CONFIG -s http`, started as a client starts it.
    async fn start(mode: Mode, config: &Value) -> Derrick {
        let port = derrick_port();
        let dir = temp_dir();
        let home = dir.path().join("home");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_berth"), bin.join("derrick")).unwrap();
        let config_path = dir.path().join("workspace_config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let mut command = Command::new("derrick");
        command
            .args([
                "--provisioning-mode",
                mode.name(),
                "--workspace-config-path",
            ])
            .arg(&config_path)
            .args(["--server-mode", "http"])
            .env("PATH", path)
            .env("BERTH_HOME", &home)
            .env("BERTH_INSECURE_NO_AUTH", "1")
            .env_remove("BERTH_RUNTIME")
            .stdin(Stdio::null())
            .process_group(0);
        if mode == Mode::Docker {
            command.env("BERTH_IMAGE", bash_git_image());
        }
        let cluster = (mode == Mode::RemoteNats).then(|| Cluster::start(dir.path()));
        if let Some(cluster) = &cluster {
            // The runtime the nodes make the workspaces in.
            command
                .args(["--nats", &cluster.nats.url()])
                .env("BERTH_RUNTIME", "local");
        }
        let child = command.spawn().unwrap();
        let derrick = Derrick {
            dir,
            home,
            child,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            cluster,
            _port: port,
        };
        derrick.wait_healthy().await;
        derrick
    }

    /// Polls `GET /health` as the clients do, until it answers.
    async fn wait_healthy(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(response) = self.client.get(url("/health")).send().await {
                assert_eq!(response.status(), 200);
                let body: Value = response.json().await.unwrap();
                assert_eq!(body, json!({ "healthy": true }));
                return;
            }
            assert!(Instant::now() < deadline, "derrick never answered /health");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A request as Derrick's clients send it: JSON, addressed to
    /// `localhost:50080` (Python's requests, Ruby's Net::HTTP).
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, url(path))
            .header("Host", "localhost:50080");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("a {status} body that is not JSON ({e}): {text}"));
        (status, body)
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.request(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 200, "POST {path}: {answer}");
        answer
    }

    async fn cmd(&self, id: &str, body: Value) -> Value {
        self.post(&format!("/workspaces/{id}/cmd_with_output"), body)
            .await
    }

    /// The output of a command that must succeed.
    async fn ok(&self, id: &str, cmd: &str) -> String {
        let out = self.cmd(id, json!({ "cmd": cmd })).await;
        assert_eq!(out["exit_code"], 0, "`{cmd}`: {out}");
        out["output"].as_str().unwrap().to_string()
    }

    async fn read_file(&self, id: &str, path: &str) -> Vec<u8> {
        let response = self
            .client
            .post(url(&format!("/workspaces/{id}/read_file")))
            .json(&json!({ "path": path }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/octet-stream",
            "exactly, as Derrick's clients compare it"
        );
        response.bytes().await.unwrap().to_vec()
    }

    /// berth's own command line on the same state.
    fn berth(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env("BERTH_HOME", &self.home)
            .env_remove("BERTH_RUNTIME")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// berth's command line through this server (`--server`).
    fn through(&self, args: &[&str]) -> String {
        let url = url("");
        let mut all = vec!["--server", url.as_str()];
        all.extend_from_slice(args);
        self.berth(&all)
    }

    /// The node the controller says the workspace `id` is on, which holds
    /// it in its own registry.
    fn node_of(&self, id: &str) -> String {
        let listed: Value = serde_json::from_str(&self.through(&["ls", "--json"])).unwrap();
        let node = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|ws| ws["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not listed: {listed}"))["node"]
            .as_str()
            .unwrap()
            .to_owned();
        let cluster = self.cluster.as_ref().unwrap();
        assert!(
            cluster.registry(&node).iter().any(|ws| ws["id"] == id),
            "{id} is in the registry of {node}"
        );
        node
    }

    /// SIGTERM to the process group, as the harness ends it; the server
    /// exits cleanly, its port is free and its workspaces are removed.
    fn terminate(mut self) {
        let group = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process_group(group, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "derrick did not end after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "derrick ended with {status}");
        if let Err(e) = std::net::TcpListener::bind(ADDR) {
            panic!("the port is still taken after the server ended: {e}");
        }
        let all: Value = serde_json::from_str(&self.berth(&["ls", "--all", "--json"])).unwrap();
        for ws in all.as_array().unwrap() {
            assert_eq!(ws["state"], "removed", "{ws}");
        }
        if let Some(cluster) = &self.cluster {
            for node in ["a", "b"] {
                for ws in cluster.registry(node) {
                    assert_eq!(ws["state"], "removed", "on {node}: {ws}");
                }
            }
        }
        assert_eq!(self.containers(), "", "no container is left");
    }

    /// The ids of the Docker containers made for this berth home.
    fn containers(&self) -> String {
        let home_id = match std::fs::read_to_string(self.home.join("home-id")) {
            Ok(id) => id,
            // A home whose runtimes were never set up (a controller's, whose
            // workspaces live on nodes) made no container.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return String::new(),
            Err(e) => panic!("cannot read the home id: {e}"),
        };
        let label = format!("label=dev.berth.home={}", home_id.trim());
        match Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
        {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            // Without docker there are none; the docker tests need it.
            Err(_) => String::new(),
        }
    }
}

impl Drop for Derrick {
    fn drop(&mut self) {
        // A failed test still ends its server, and what it made.
        if let Ok(None) = self.child.try_wait()
            && let Some(group) = rustix::process::Pid::from_raw(self.child.id() as i32)
        {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
            let _ = self.child.wait();
        }
    }
}

fn url(path: &str) -> String {
    format!("http://{ADDR}{path}")
}

/// Ruby's `Base64.encode64`: a line break after every 60 characters and
/// at the end.
fn ruby_base64(data: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    encoded
        .as_bytes()
        .chunks(60)
        .map(|line| format!("{}\n", std::str::from_utf8(line).unwrap()))
        .collect()
}

/// The upstream repository the harness works on: a file to patch and a
/// test that fails until it is patched.
fn upstream(dir: &Path) -> (PathBuf, String) {
    let repo = dir.join("todolist");
    let base = make_repo(
        &repo,
        &[
            ("todo.txt", "buy milk\n"),
            (
                "test.sh",
                "grep -q 'call mom' todo.txt && echo PASSED || { echo FAILED; exit 1; }\n",
            ),
        ],
    );
    (repo, base)
}

/// Derrick's config as the harness writes it: the repository at `/name`,
/// and a setup script using the create request's env.
fn harness_config(repo: &Path) -> Value {
    json!({
        "name": "todolist",
        "repositories": [{
            "name": "todolist",
            "url": format!("file://{}", repo.display()),
            "path": "/todolist",
        }],
        "setup_script": "rm /tmp/hello.txt 2>/dev/null; echo \"Hello World\" > /tmp/hello.txt\n\
                         cd \"$PROJECT_ROOT\" && git config user.email agent@example.com \
                         && git config user.name agent && ls > /tmp/listing.txt",
    })
}

/// Every request of Derrick's test suite and of the harness's workflow.
async fn workflow(mode: Mode) {
    let sources = temp_dir();
    let (repo, base) = upstream(sources.path());
    let mut config = harness_config(&repo);
    let project = if mode.isolated() {
        "/todolist"
    } else {
        "todolist"
    };
    if !mode.isolated() {
        // Without isolation `/tmp` is the host's: the setup's files stay in
        // the workspace's directory.
        config["setup_script"] = json!(
            "echo \"Hello World\" > hello.txt && cd \"$PROJECT_ROOT\" \
             && git config user.email agent@example.com && git config user.name agent"
        );
    }
    let derrick = Derrick::start(mode, &config).await;
    let (_, list) = derrick
        .request(reqwest::Method::GET, "/workspaces", None)
        .await;
    assert_eq!(list, json!({ "workspaces": [] }));

    let created = derrick
        .post("/workspaces", json!({ "env": { "PROJECT_ROOT": project } }))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let (_, list) = derrick
        .request(reqwest::Method::GET, "/workspaces", None)
        .await;
    assert_eq!(list["workspaces"][0]["id"], id.as_str(), "{list}");
    if mode == Mode::RemoteNats {
        assert_eq!(derrick.node_of(&id), "a");
        assert_eq!(derrick.berth(&["ls", "--json"]).trim(), "[]", "none here");
    }

    // Derrick's own test suite.
    let out = derrick.cmd(&id, json!({ "cmd": "echo hello" })).await;
    assert_eq!(
        (out["output"].as_str(), out["exit_code"].as_i64()),
        (Some("hello\n"), Some(0))
    );
    for ls in ["ls ./todolist", "cd ./todolist && ls", "ls todolist/"] {
        assert!(derrick.ok(&id, ls).await.contains("todo.txt"), "{ls}");
    }
    assert_eq!(
        derrick.ok(&id, "echo hello\necho world").await,
        "hello\nworld\n"
    );
    let hello = if mode.isolated() {
        "/tmp/hello.txt"
    } else {
        "hello.txt"
    };
    assert_eq!(
        derrick.ok(&id, &format!("cat {hello}")).await,
        "Hello World\n"
    );
    let out = derrick
        .cmd(
            &id,
            json!({ "cmd": "echo $HELLO", "env": { "HELLO": "WORLD" } }),
        )
        .await;
    assert_eq!(out["output"], "WORLD\n");
    let heredoc = "cat <<-\"EOF\" > heredoc.txt\n\thello\n\tworld\n\tEOF\ncat heredoc.txt\n";
    assert_eq!(derrick.ok(&id, heredoc).await, "hello\nworld\n");
    let out = derrick
        .cmd(&id, json!({ "cmd": "ls /nonexistent/directory" }))
        .await;
    assert_eq!(out["exit_code"], 2, "{out}");
    assert!(
        out["output"]
            .as_str()
            .unwrap()
            .contains("No such file or directory"),
        "stderr is in the output: {out}"
    );
    let content = b"Hello, world!";
    let (status, written) = derrick
        .request(
            reqwest::Method::POST,
            &format!("/workspaces/{id}/write_file"),
            Some(json!({ "path": "/tmp/test.txt", "content": ruby_base64(content) })),
        )
        .await;
    assert_eq!((status, &written), (200, &json!({ "success": true })));
    assert_eq!(derrick.read_file(&id, "/tmp/test.txt").await, content);

    // The harness: bash, prompts in the environment, a patch applied and
    // committed, a diff, tests whose failure is data, timeouts.
    let script = "pushd /tmp >/dev/null && popd >/dev/null && [[ -n $BASH_VERSION ]] \
                  && echo 'x=sourced' > vars.sh && source vars.sh && echo $x";
    assert_eq!(derrick.ok(&id, script).await, "sourced\n");
    let prompt = "Add \"call mom\" to the list.\nCost: $0 (`free`), 100% 'sure'\n";
    let out = derrick
        .cmd(
            &id,
            json!({ "cmd": "printf '%s' \"$PROMPT\"", "env": { "PROMPT": prompt } }),
        )
        .await;
    assert_eq!(out["output"], prompt);
    let failing = derrick
        .cmd(
            &id,
            json!({ "cmd": format!("cd {project} && bash test.sh") }),
        )
        .await;
    assert_eq!(
        (failing["exit_code"].as_i64(), failing["output"].as_str()),
        (Some(1), Some("FAILED\n"))
    );

    let patch = "--- a/todo.txt\n+++ b/todo.txt\n@@ -1 +1,2 @@\n buy milk\n+call mom\n";
    let patch_path = if mode.isolated() {
        "/tmp/test.patch"
    } else {
        "/test.patch"
    };
    derrick
        .post(
            &format!("/workspaces/{id}/write_file"),
            json!({ "path": patch_path, "content": ruby_base64(patch.as_bytes()) }),
        )
        .await;
    let apply = format!(
        "cd {project} && git apply {} && git commit -a -q -m 'call mom'",
        if mode.isolated() {
            "/tmp/test.patch"
        } else {
            "../test.patch"
        }
    );
    derrick.ok(&id, &apply).await;
    let head = derrick
        .ok(&id, &format!("cd {project} && git rev-parse HEAD"))
        .await;
    assert!(
        head.len() == 41
            && head.ends_with('\n')
            && head[..40].chars().all(|c| c.is_ascii_hexdigit()),
        "the whole output is the hash: {head:?}"
    );
    assert_ne!(head.trim(), base);
    let diff = derrick
        .ok(&id, &format!("cd {project} && git diff {base}"))
        .await;
    assert!(diff.contains("+call mom"), "{diff}");
    let passing = derrick
        .cmd(
            &id,
            json!({ "cmd": format!("cd {project} && bash test.sh") }),
        )
        .await;
    assert_eq!(passing["output"], "PASSED\n");

    let out = derrick
        .cmd(
            &id,
            json!({ "cmd": "echo started; sleep 60; echo never", "timeout": 1 }),
        )
        .await;
    assert_eq!(out["exit_code"], 124, "{out}");
    assert_eq!(out["output"], "started\n");
    let done = derrick
        .post(
            &format!("/workspaces/{id}/cmd"),
            json!({ "cmd": "sleep 60", "timeout": 1 }),
        )
        .await;
    assert_eq!(done["exit_code"], 124, "{done}");
    let done = derrick
        .post(&format!("/workspaces/{id}/cmd"), json!({ "cmd": "true" }))
        .await;
    assert_eq!(done["exit_code"], 0, "{done}");

    if mode.isolated() {
        // berth's own view of the same workspace covers the repository at
        // its absolute path.
        let changes = derrick.berth(&["changes", &id]);
        assert!(
            changes.lines().any(|l| l == "M todolist/todo.txt"),
            "{changes}"
        );
        // The patch the client wrote to /tmp is scratch in a bounded
        // tmpfs: left out of changes, as every later file in /tmp is.
        assert!(
            !changes.lines().any(|l| l.ends_with(" tmp/test.patch")),
            "{changes}"
        );
        assert!(!changes.contains(".berth"), "{changes}");
        let patch = derrick.berth(&["diff", &id]);
        assert!(
            patch.contains("--- a/todolist/todo.txt") && patch.contains("+call mom"),
            "{patch}"
        );
        let export = derrick.dir.path().join("export");
        derrick.berth(&["export", &id, "-o", export.to_str().unwrap()]);
        assert_eq!(
            std::fs::read_to_string(export.join("todolist/todo.txt")).unwrap(),
            "buy milk\ncall mom\n"
        );
    }

    let delete = |id: String| {
        let derrick = &derrick;
        async move {
            derrick
                .request(reqwest::Method::DELETE, &format!("/workspaces/{id}"), None)
                .await
        }
    };
    assert_eq!(delete(id.clone()).await, (200, json!(true)));
    assert_eq!(delete(id.clone()).await, (200, json!(false)));

    // The next workspace comes from the cache, the setup's files with it;
    // it is still there when the server is ended.
    let second = derrick
        .post("/workspaces", json!({ "env": { "PROJECT_ROOT": project } }))
        .await;
    let second = second["id"].as_str().unwrap();
    assert_eq!(
        derrick.ok(second, &format!("cat {hello}")).await,
        "Hello World\n"
    );
    assert_eq!(
        derrick.ok(second, &format!("cat {project}/todo.txt")).await,
        "buy milk\n"
    );
    if mode == Mode::Docker {
        assert_ne!(
            derrick.containers(),
            "",
            "the live workspace's container is found"
        );
    }
    if mode == Mode::RemoteNats {
        // berth's command line works on them through the controller too.
        derrick.node_of(second);
        let out = derrick.through(&["exec", second, "--", "cat", "todolist/todo.txt"]);
        assert_eq!(out, "buy milk\n");
        let third = derrick
            .post("/workspaces", json!({ "env": { "PROJECT_ROOT": project } }))
            .await;
        let third = third["id"].as_str().unwrap();
        let node = derrick.node_of(third);
        assert_eq!(derrick.through(&["rm", third]).trim(), third);
        let listed = derrick.through(&["ls", "--json"]);
        assert!(!listed.contains(third), "{listed}");
        let cluster = derrick.cluster.as_ref().unwrap();
        assert!(
            cluster
                .registry(&node)
                .iter()
                .any(|ws| ws["id"] == third && ws["state"] == "removed"),
            "removed on {node}"
        );
    }
    derrick.terminate();
}

#[tokio::test]
async fn derricks_clients_run_unchanged_on_docker() {
    workflow(Mode::Docker).await;
}

#[tokio::test]
async fn derricks_clients_run_unchanged_on_the_sandbox() {
    workflow(Mode::Sandbox).await;
}

#[tokio::test]
async fn derricks_clients_run_unchanged_on_local() {
    workflow(Mode::Local).await;
}

#[tokio::test]
async fn derricks_clients_run_unchanged_with_workspaces_made_on_nodes() {
    workflow(Mode::RemoteNats).await;
}

/// Where the workspace has no bash, commands run under the POSIX shell.
#[tokio::test]
async fn a_workspace_without_bash_runs_commands_under_sh() {
    let mut config = json!({ "name": "nobash", "repositories": [], "setup_script": "true" });
    config["image"] = json!(busybox_image());
    let derrick = Derrick::start(Mode::Docker, &config).await;
    let id = derrick.post("/workspaces", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        derrick.ok(&id, "echo \"[$BASH_VERSION]\"; pwd").await,
        "[]\n/\n"
    );
    derrick.terminate();
}

/// The token-less listener answers only requests addressed to it: a web
/// page that rebinds its own name to 127.0.0.1 is refused.
#[tokio::test]
async fn a_rebound_host_name_cannot_reach_the_tokenless_listener() {
    let config = json!({ "name": "host", "repositories": [], "setup_script": "" });
    let derrick = Derrick::start(Mode::Local, &config).await;
    for host in ["attacker.example:50080", "localhost:8080"] {
        let response = derrick
            .client
            .post(url("/workspaces"))
            .header("Host", host)
            .json(&json!({ "env": {} }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{host}");
    }
    let all: Value = serde_json::from_str(&derrick.berth(&["ls", "--all", "--json"])).unwrap();
    assert_eq!(all, json!([]), "nothing was made");
    derrick.terminate();
}

/// Refusals at start, each naming what to do instead: no image for
/// docker, no explicit consent to serve without a token, a non-loopback
/// address without one, NATS.
#[test]
fn derrick_refuses_to_start_what_it_cannot_serve_and_says_why() {
    let dir = temp_dir();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_berth"), bin.join("derrick")).unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"name": "x", "repositories": [{"name": "x", "url": "u", "path": "/x"}], "setup_script": ""}"#,
    )
    .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(bin.join("derrick"));
        command
            .args(args)
            .arg("--workspace-config-path")
            .arg(&config)
            .env("BERTH_HOME", dir.path().join("home"))
            .env_remove("BERTH_IMAGE")
            .env_remove("BERTH_INSECURE_NO_AUTH")
            .stdin(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let out = command.output().unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let no_auth = [("BERTH_INSECURE_NO_AUTH", "1")];
    let err = run(&["-p", "docker", "-s", "http"], &no_auth);
    assert!(
        err.contains("--image") && err.contains("BERTH_IMAGE"),
        "{err}"
    );
    assert!(
        err.contains("ignoring what berth does not read: repositories[0].name"),
        "unknown fields are listed once: {err}"
    );
    let err = run(&["-p", "local", "-s", "http"], &[]);
    assert!(err.contains("BERTH_INSECURE_NO_AUTH=1"), "{err}");
    let err = run(
        &["-p", "local", "-s", "http", "--listen", "0.0.0.0:50081"],
        &no_auth,
    );
    assert!(err.contains("loopback"), "{err}");
    // Derrick's NATS mode needs the NATS server to serve through.
    let err = run(&["-p", "local", "-s", "nats"], &no_auth);
    assert!(
        err.contains("--server-mode nats") && err.contains("--nats nats://HOST:PORT"),
        "{err}"
    );
    // Workspaces made on the nodes of a cluster need the cluster.
    let err = run(&["-p", "remote_nats", "-s", "http"], &no_auth);
    assert!(
        err.contains("--provisioning-mode remote_nats") && err.contains("--nats"),
        "{err}"
    );
    let err = run(&["-s", "http"], &no_auth);
    assert!(
        err.contains("--provisioning-mode"),
        "Derrick's flags are required: {err}"
    );
}

// --- images -----------------------------------------------------------------

/// An image with this host's bash, git and GNU ls (Derrick's test counts
/// on its exit code 2) over busybox, made once per machine under a lock.
pub(crate) fn bash_git_image() -> &'static str {
    image(IMAGE, |root| {
        busybox_root(root);
        let git = ["/usr/bin/git", "/usr/local/bin/git"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| panic!("git is missing: scripts/prepare installs it"));
        for (program, inside) in [
            ("/usr/bin/bash", "bin/bash"),
            (git, "usr/bin/git"),
            ("/usr/bin/ls", "bin/ls"),
        ] {
            copy_program(root, Path::new(program), inside);
        }
    })
}

/// An image with busybox alone: a shell, and no bash.
fn busybox_image() -> &'static str {
    image("berth-test/derrick-busybox:1", busybox_root)
}

fn image(tag: &'static str, build: impl FnOnce(&Path)) -> &'static str {
    let exists = || {
        Command::new("docker")
            .args(["image", "inspect", tag])
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker (scripts/prepare installs it): {e}"))
            .status
            .success()
    };
    if exists() {
        return tag;
    }
    let lock = std::fs::File::create(std::env::temp_dir().join("berth-test-images.lock")).unwrap();
    lock.lock().unwrap();
    if !exists() {
        let root = tempfile::Builder::new()
            .prefix("berth-image-")
            .tempdir_in("/var/tmp")
            .unwrap();
        build(root.path());
        let tarball = root.path().with_extension("tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .args(["--numeric-owner", "-cf"])
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        let out = Command::new("docker")
            .args(["import", tarball.to_str().unwrap(), tag])
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&tarball);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tag
}

/// Debian's static busybox with its applets, and the directories a
/// workspace needs.
fn busybox_root(root: &Path) {
    for dir in ["bin", "tmp", "root", "etc", ".berth/run"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| panic!("busybox is missing: apt-get install busybox-static"));
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
}

/// Copies a dynamically linked program to `inside` under `root`, with the
/// libraries `ldd` says it loads at their own paths.
fn copy_program(root: &Path, program: &Path, inside: &str) {
    let target = root.join(inside);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&target);
    std::fs::copy(program, &target).unwrap();
    let ldd = Command::new("ldd").arg(program).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let lib = match line.split_once("=>") {
            Some((_, rest)) => rest.trim().split(' ').next().unwrap_or(""),
            None => line.trim().split(' ').next().unwrap_or(""),
        };
        if lib.starts_with('/') {
            let dest = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            if !dest.exists() {
                std::fs::copy(lib, &dest).unwrap();
            }
        }
    }
}
