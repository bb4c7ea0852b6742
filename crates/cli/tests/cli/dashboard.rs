//! The dashboard in a real browser: Debian's chromium, headless, driven by
//! playwright-core (`tests/browser/dashboard.mjs`, installed by
//! `scripts/prepare` with `npm ci`), against a real `berth serve` with a
//! running sandbox workspace and batch jobs over real repositories, whose
//! tasks the server's own workers run in the sandbox. Each test saves a
//! screenshot under `target/tmp/dashboard/`.

use super::{Env, stderr, workspace_id};
use berth_testkit::{GitHttpServer, NatsServer, free_port, make_repo, write_credentials};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FORGE_TOKEN: &str = "tok-dashboard-9c41d2";

/// Two repositories; job `edit` appends a line to each, printing as it
/// goes, and fails in the second with exit code 7 and a word on stderr.
const EDIT: &str = r#"name = "edit"
runtime = "sandbox"
image = "host"
repositories = [
  { url = "FORGEr0", credential = "forge" },
  { url = "FORGEr1", credential = "forge" },
]
[[steps]]
name = "bump"
run = '''
for i in 1 2 3 4 5 6 7 8; do echo "working $i"; sleep 0.5; done
echo bumped >> version.txt
if grep -q 'repo 1' version.txt; then echo 'no luck' >&2; exit 7; fi
'''
"#;

/// A repository name with no place to break it (no hyphen), wider than a
/// phone.
const LONG_REPO: &str = "arepositorywhosenamegoesonandonwithoutasinglebreak";

/// Job `edit` of [`EDIT`], over `r0` and [`LONG_REPO`].
fn edit_long() -> String {
    EDIT.replace("FORGEr1", &format!("FORGE{LONG_REPO}"))
}

/// Job `slow`: one task that runs until it is cancelled.
const SLOW: &str = r#"name = "slow"
runtime = "sandbox"
image = "host"
repositories = [ { url = "FORGEr0", credential = "forge" } ]
[[steps]]
name = "wait"
run = "echo waiting; sleep 600"
"#;

/// A `berth serve` on a free loopback port, with a running sandbox
/// workspace holding a clone of `r0` from a token-guarded forge, ended
/// when dropped.
struct Served {
    env: Env,
    child: Child,
    url: String,
    workspace: String,
    /// The spec the workspace was made from, for making more.
    spec: PathBuf,
    _forge: GitHttpServer,
}

impl Served {
    fn start() -> Served {
        Served::start_with(&[])
    }

    /// A server whose home also has the jobs `specs` over the forge's `r0`
    /// and `r1` (`FORGE` in them standing for the forge's URL), each with a
    /// run started, which the server's workers run.
    fn start_with(specs: &[&str]) -> Served {
        Served::start_serving(specs, &[])
    }

    /// A server as [`Served::start_with`] makes, `berth serve` given
    /// `serve_args` too.
    fn start_serving(specs: &[&str], serve_args: &[&str]) -> Served {
        let env = Env::new();
        let upstream = env.dir.path().join("repos");
        for i in 0..2 {
            make_repo(
                &upstream.join(format!("r{i}")),
                &[("version.txt", &format!("repo {i}\n"))],
            );
        }
        make_repo(&upstream.join(LONG_REPO), &[("version.txt", "repo long\n")]);
        let forge = GitHttpServer::start(&upstream, FORGE_TOKEN);
        write_credentials(&env.home, "forge", FORGE_TOKEN, &[&forge.url()]);
        let spec = env.file(
            "workspace.toml",
            &format!(
                "runtime = \"sandbox\"\nimage = \"host\"\nsetup_script = \"true\"\n\
                 repositories = [ {{ url = \"{}r0\", path = \"r0\", credential = \"forge\" }} ]\n",
                forge.url()
            ),
        );
        let out = env.run(&["up", spec.to_str().unwrap()]);
        assert!(out.status.success(), "berth up: {}", stderr(&out));
        let workspace = workspace_id(&String::from_utf8(out.stdout).unwrap());
        for (i, spec) in specs.iter().enumerate() {
            let file = env.file(
                &format!("job{i}.toml"),
                &spec.replace("FORGE", &forge.url()),
            );
            env.ok(&["job", "run", file.to_str().unwrap()]);
        }
        let addr = format!("127.0.0.1:{}", free_port());
        let child = env
            .berth()
            .args(["serve", "--listen", &addr])
            .args(serve_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "berth serve never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Served {
            env,
            child,
            url: format!("http://{addr}"),
            workspace,
            spec,
            _forge: forge,
        }
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.env.home.join("server-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Runs the browser test `name`; panics with its output if it fails.
    fn browse(&self, name: &str) {
        self.browse_with(name, &[]);
    }

    /// Runs the browser test `name` with more environment `vars`.
    fn browse_with(&self, name: &str, vars: &[(&str, &str)]) {
        let dir = browser_dir();
        let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
        std::fs::create_dir_all(&screenshots).unwrap();
        let out = Command::new("node")
            .arg(dir.join("dashboard.mjs"))
            .arg(name)
            .current_dir(&dir)
            .env("BERTH_URL", &self.url)
            .env("BERTH_TOKEN", self.token())
            .env("BERTH_WORKSPACE", &self.workspace)
            .env("BERTH_SCREENSHOT", screenshots.join(format!("{name}.png")))
            // For the tests that use the CLI beside the page.
            .env("BERTH_CLI", env!("CARGO_BIN_EXE_berth"))
            .env("BERTH_HOME", &self.env.home)
            .env("BERTH_SPEC", &self.spec)
            .env_remove("BERTH_RUNTIME")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run node (scripts/prepare installs nodejs): {e}"));
        assert!(
            out.status.success(),
            "browser test {name} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Every workspace of the home, the ones the page made (forks) too:
        // a sandbox instance outlives a home removed under it.
        let listed = self.env.berth().args(["ls", "--json"]).output();
        let ids: Vec<String> = listed
            .ok()
            .and_then(|out| serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).ok())
            .unwrap_or_default()
            .iter()
            .filter_map(|ws| ws["id"].as_str().map(str::to_owned))
            .chain([self.workspace.clone()])
            .collect();
        let _ = self.env.berth().arg("rm").args(&ids).output();
    }
}

/// Where the browser tests and their `node_modules` are; fails loudly when
/// chromium or playwright-core is missing.
fn browser_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: scripts/prepare installs Debian's chromium"
    );
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing in {}: scripts/prepare runs `npm ci` there",
        dir.display()
    );
    dir
}

#[test]
fn the_dashboard_logs_in_with_the_token_and_refuses_a_wrong_one() {
    Served::start().browse("login_with_the_token_and_a_wrong_token_refused");
}

#[test]
fn the_dashboard_terminal_runs_echo_hello_and_follows_its_size() {
    Served::start().browse("workspace_terminal_echoes_hello");
}

#[test]
fn the_dashboard_shows_a_workspace_diff_with_its_changed_lines() {
    Served::start().browse("workspace_diff_shows_the_changed_lines");
}

#[test]
fn the_dashboard_filters_workspaces_by_label_browses_files_and_acts() {
    Served::start().browse("a_workspaces_labels_files_and_actions");
}

#[test]
fn a_cross_site_page_cannot_use_the_dashboards_session_cookie() {
    Served::start().browse("a_cross_site_request_with_the_cookie_is_refused");
}

#[test]
fn the_dashboard_starts_a_run_and_shows_its_tasks_and_log_live() {
    Served::start_with(&[EDIT]).browse("start_a_run_and_see_it_live");
}

#[test]
fn the_dashboard_shows_a_failed_tasks_exit_code_and_log_tail() {
    Served::start_with(&[EDIT]).browse("a_failed_task_shows_its_exit_code_and_log_tail");
}

#[test]
fn the_dashboard_shows_a_succeeded_tasks_diff() {
    Served::start_with(&[EDIT]).browse("a_succeeded_task_shows_its_diff");
}

#[test]
fn the_dashboard_cancels_a_run_and_its_tasks_end() {
    Served::start_with(&[SLOW]).browse("cancel_a_run_and_its_tasks_end");
}

#[test]
fn the_dashboard_keeps_a_cancelled_task_cancelled_when_the_cancels_answer_comes_last() {
    Served::start_with(&[SLOW]).browse("a_cancels_late_answer_does_not_bring_its_ended_task_back");
}

#[test]
fn the_dashboard_shows_a_workspace_made_from_the_cli_without_a_reload() {
    Served::start().browse("a_workspace_made_from_the_cli_appears_live");
}

/// A child process (`berth node`, `berth serve`), killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Job `many`: a thousand repositories, tasks one at a time.
fn many_tasks() -> String {
    let mut spec = String::from(
        "name = \"many\"\nruntime = \"sandbox\"\nimage = \"host\"\nrepositories = [\n",
    );
    for i in 0..1000 {
        spec.push_str(&format!(
            "  {{ url = \"FORGEmany-{i:04}\", credential = \"forge\" }},\n"
        ));
    }
    spec.push_str("]\n[run]\nconcurrency = 1\n[[steps]]\nname = \"nothing\"\nrun = \"true\"\n");
    spec
}

#[test]
fn the_dashboard_renders_a_run_of_a_thousand_tasks_quickly() {
    Served::start_with(&[&many_tasks()]).browse("a_run_of_a_thousand_tasks_renders_quickly");
}

#[test]
fn the_dashboard_labels_its_controls_and_works_from_the_keyboard() {
    Served::start_with(&[EDIT]).browse("every_control_is_labelled_and_reached_by_the_keyboard");
}

#[test]
fn the_dashboard_fits_a_narrow_window() {
    Served::start_with(&[&edit_long()]).browse("every_page_fits_a_narrow_window");
}

impl Served {
    /// A `berth node` of this server's cluster at `nats`, with its own
    /// home, running `slots` tasks at once.
    fn node(&self, nats: &NatsServer, name: &str, slots: usize) -> Process {
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .env(
                "BERTH_HOME",
                self.env.dir.path().join(format!("node-{name}")),
            )
            .env_remove("BERTH_RUNTIME")
            .args(["node", "--nats", &nats.url(), "--name", name])
            .args(["--slots", &slots.to_string()])
            // The shortest TTL: a killed node's record goes a second later,
            // and a node writes its load every third of it.
            .args(["--ttl", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Process(child)
    }
}

#[test]
fn the_dashboard_lists_the_cluster_nodes_and_drops_a_killed_one_after_its_ttl() {
    let nats = NatsServer::start();
    let served = Served::start_serving(&[], &["--nats", &nats.url()]);
    let node = |name: &str| served.node(&nats, name, 3);
    let (kept, killed) = (node("node-kept"), node("node-killed"));
    served.browse_with(
        "the_cluster_page_lists_the_nodes_and_drops_a_killed_one",
        &[("BERTH_KILL_PID", &killed.0.id().to_string())],
    );
    // The CLI reads the same list from the server.
    let token = served.env.home.join("server-token");
    let out = served.env.ok(&[
        "nodes",
        "--server",
        &served.url,
        "--token-file",
        token.to_str().unwrap(),
        "--json",
    ]);
    let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node-kept"], "{out}");
    drop(kept);
}

#[test]
fn the_dashboard_shows_a_nodes_state_from_its_load() {
    let nats = NatsServer::start();
    let served = Served::start_serving(&[], &["--nats", &nats.url()]);
    let _worker = served.node(&nats, "worker", 2);
    let repos = served.env.dir.path().join("repos");
    served.browse_with(
        "a_nodes_state_follows_its_load",
        &[("BERTH_REPOS", repos.to_str().unwrap())],
    );
}

#[test]
fn berth_nodes_through_a_server_without_a_cluster_says_so() {
    let served = Served::start();
    let token = served.env.home.join("server-token");
    let out = served.env.run(&[
        "nodes",
        "--server",
        &served.url,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("serves no cluster"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn berth_serve_prints_the_dashboards_address_and_where_its_token_is() {
    let env = Env::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = env
        .berth()
        .args(["serve", "--listen", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _served = Process(child);
    let (lines, said) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let token = env.home.join("server-token");
    let wanted = format!(
        "berth serve: the dashboard is at http://{addr}/; log in with the token in {}",
        token.display()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        match said.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line == wanted => break,
            Ok(line) => seen.push(line),
            Err(_) => panic!("berth serve never said {wanted:?}; it said {seen:?}"),
        }
    }
    // The token is there to be read once it is said.
    let token = std::fs::read_to_string(&token).unwrap();
    assert!(token.trim().len() >= 32, "{token:?}");
}
