//! A cluster over a real nats-server: nodes (separate `berth` processes,
//! each with its own home) join, withdraw and expire; a controller's jobs
//! run on them, surviving a node killed mid-run and the controller's own
//! restart, with no task lost or completed twice.

use super::Env;
use berth_core::job::TaskState;
use berth_store::Store;
use berth_testkit::{NatsServer, make_repo};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A node's process, named.
struct Node {
    name: String,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The job settings every process of a test cluster shares: heartbeats
/// every 0.2 s, a delivery given up on after 2 s without one.
fn settings(command: &mut Command) -> &mut Command {
    command
        .env("BERTH_JOB_HEARTBEAT", "0.2")
        .env("BERTH_JOB_STALL", "2")
        .env("BERTH_JOB_RESETS", "5")
        .env_remove("BERTH_RUNTIME")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
}

fn node(env: &Env, nats: &NatsServer, name: &str, ttl: u64) -> Node {
    node_with(env, nats, name, ttl, 5)
}

fn node_with(env: &Env, nats: &NatsServer, name: &str, ttl: u64, resets: u32) -> Node {
    let child = settings(&mut Command::new(env!("CARGO_BIN_EXE_berth")))
        .env("BERTH_JOB_RESETS", resets.to_string())
        .env("BERTH_HOME", env.dir.path().join(format!("node-{name}")))
        .args([
            "node",
            "--nats",
            &nats.url(),
            "--name",
            name,
            "--slots",
            "4",
        ])
        .args(["--ttl", &ttl.to_string()])
        .spawn()
        .unwrap();
    Node {
        name: name.into(),
        child,
    }
}

fn controller(env: &Env, nats: &NatsServer) -> Child {
    controller_with(env, nats, 5)
}

fn controller_with(env: &Env, nats: &NatsServer, resets: u32) -> Child {
    let socket = env.dir.path().join("controller.sock");
    let _ = std::fs::remove_file(&socket);
    settings(&mut env.berth())
        .env("BERTH_JOB_RESETS", resets.to_string())
        .args(["serve", "--nats", &nats.url(), "--socket"])
        .arg(&socket)
        .spawn()
        .unwrap()
}

/// The names of the live nodes, as `berth nodes --json` lists them.
fn names(env: &Env, nats: &NatsServer) -> Vec<String> {
    let out = env.ok(&["nodes", "--nats", &nats.url(), "--json"]);
    let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
    nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < until,
            "waited {limit:?} in vain for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success(), "the node exits cleanly");
}

fn kill_9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn three_nodes_register_sigterm_withdraws_and_a_killed_node_expires_after_its_ttl() {
    let nats = NatsServer::start();
    let env = Env::new();
    let mut a = node(&env, &nats, "a", 3);
    let mut b = node(&env, &nats, "b", 3);
    let _c = node(&env, &nats, "c", 3);
    wait_until("three nodes", Duration::from_secs(30), || {
        names(&env, &nats) == ["a", "b", "c"]
    });
    let out = env.ok(&["nodes", "--nats", &nats.url(), "--json"]);
    let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
    for node in nodes.as_array().unwrap() {
        assert_eq!(node["arch"], std::env::consts::ARCH, "{node}");
        assert_eq!(node["slots"], 4, "{node}");
        let runtimes = node["runtimes"].as_array().unwrap();
        assert!(runtimes.iter().any(|r| r == "local"), "{node}");
    }
    let table = env.ok(&["nodes", "--nats", &nats.url()]);
    assert!(
        table.contains("s ago"),
        "the age of each heartbeat: {table}"
    );

    // A node stopped withdraws before it exits.
    terminate(&mut a.child);
    assert_eq!(names(&env, &nats), ["b", "c"]);

    // A node killed stays listed until its record's TTL passes.
    kill_9(&mut b.child);
    let killed = Instant::now();
    assert_eq!(names(&env, &nats), ["b", "c"]);
    wait_until("the killed node to expire", Duration::from_secs(20), || {
        names(&env, &nats) == ["c"]
    });
    assert!(killed.elapsed() >= Duration::from_secs(1));
}

/// `count` repositories and a job running a short step over each on the
/// local runtime, all at once.
fn job(env: &Env, count: usize, step: &str) -> PathBuf {
    let repos = env.dir.path().join("repos");
    let mut text = String::from("name = \"edit\"\nruntime = \"local\"\nrepositories = [\n");
    for i in 0..count {
        let repo = repos.join(format!("r{i}"));
        make_repo(&repo, &[("version.txt", &format!("repo {i}\n"))]);
        text.push_str(&format!("  {{ url = \"{}\" }},\n", repo.display()));
    }
    text.push_str(&format!(
        "]\n[[steps]]\nrun = \"{step}\"\n[run]\nconcurrency = {count}\n"
    ));
    env.file("job.toml", &text)
}

/// How a run's tasks ended, from the controller's registry.
#[derive(Debug, Default)]
struct Counts {
    completed_once: usize,
    lost: usize,
    doubled: usize,
    /// Tasks an attempt of `victim` held that completed elsewhere.
    moved: usize,
}

fn counts(store: &Store, run: &str, victim: Option<&str>) -> Counts {
    let mut counts = Counts::default();
    for task in store.tasks_of(run).unwrap() {
        let attempts = store.attempts_of(&task.id).unwrap();
        let completed: Vec<_> = attempts
            .iter()
            .filter(|a| a.state == TaskState::Completed)
            .collect();
        match completed.len() {
            0 => counts.lost += 1,
            1 => counts.completed_once += 1,
            _ => counts.doubled += 1,
        }
        if let Some(victim) = victim
            && attempts.iter().any(|a| a.runner.as_deref() == Some(victim))
            && completed
                .iter()
                .all(|a| a.runner.as_deref() != Some(victim))
            && !completed.is_empty()
        {
            counts.moved += 1;
        }
    }
    counts
}

fn running_on(store: &Store, run: &str, node: &str) -> usize {
    store
        .tasks_of(run)
        .unwrap()
        .iter()
        .filter(|t| t.state == TaskState::Running && t.runner.as_deref() == Some(node))
        .count()
}

fn start_run(env: &Env, file: &std::path::Path) -> String {
    env.ok(&["job", "run", file.to_str().unwrap()])
        .trim()
        .to_owned()
}

fn wait_for_end(store: &Store, run: &str, limit: Duration) {
    wait_until("the run to end", limit, || {
        store.run(run).unwrap().state != berth_core::job::RunState::Running
    });
}

#[test]
fn a_node_killed_mid_run_loses_and_doubles_no_task_twenty_times_over() {
    let nats = NatsServer::start();
    let env = Env::new();
    let file = job(&env, 60, "sleep 0.2; echo done >> version.txt");
    let mut controller = controller(&env, &nats);
    let mut nodes: Vec<Node> = ["n0", "n1", "n2"]
        .iter()
        .map(|name| node(&env, &nats, name, 5))
        .collect();
    wait_until("three nodes", Duration::from_secs(30), || {
        names(&env, &nats).len() == 3
    });
    let store = Store::open(&env.home).unwrap();
    let started = Instant::now();
    let mut total = Counts::default();
    for round in 0..20 {
        let began = Instant::now();
        let run = start_run(&env, &file);
        let victim = round % nodes.len();
        let name = nodes[victim].name.clone();
        wait_until("the victim to hold tasks", Duration::from_secs(30), || {
            running_on(&store, &run, &name) > 0
        });
        kill_9(&mut nodes[victim].child);
        nodes[victim] = node(&env, &nats, &format!("n{victim}-{round}"), 5);
        wait_for_end(&store, &run, Duration::from_secs(120));
        let counts = counts(&store, &run, Some(&name));
        println!(
            "round {round:2}: 60 tasks, {} completed once, {} lost, {} doubled, {} moved from \
             the killed node {name}, {:.1} s",
            counts.completed_once,
            counts.lost,
            counts.doubled,
            counts.moved,
            began.elapsed().as_secs_f64()
        );
        assert_eq!(
            (counts.lost, counts.doubled),
            (0, 0),
            "round {round}: {counts:?}"
        );
        assert_eq!(counts.completed_once, 60, "round {round}: {counts:?}");
        assert!(
            counts.moved > 0,
            "the killed node's tasks finish elsewhere: {counts:?}"
        );
        assert_eq!(
            store.run(&run).unwrap().state,
            berth_core::job::RunState::Completed
        );
        total.completed_once += counts.completed_once;
        total.lost += counts.lost;
        total.doubled += counts.doubled;
        total.moved += counts.moved;
    }
    println!(
        "20 runs of 60 tasks, one node killed in each: {} completed once, {} lost, {} doubled, \
         {} moved from killed nodes, {:.1} s",
        total.completed_once,
        total.lost,
        total.doubled,
        total.moved,
        started.elapsed().as_secs_f64()
    );
    kill_9(&mut controller);
}

#[test]
fn a_controller_killed_and_restarted_mid_run_loses_nothing() {
    let nats = NatsServer::start();
    let env = Env::new();
    let file = job(&env, 24, "sleep 0.3; echo done >> version.txt");
    let mut first = controller(&env, &nats);
    let _nodes: Vec<Node> = ["a", "b"]
        .iter()
        .map(|name| node(&env, &nats, name, 5))
        .collect();
    wait_until("two nodes", Duration::from_secs(30), || {
        names(&env, &nats).len() == 2
    });
    let store = Store::open(&env.home).unwrap();
    let run = start_run(&env, &file);
    wait_until("some tasks to complete", Duration::from_secs(30), || {
        store
            .tasks_of(&run)
            .unwrap()
            .iter()
            .any(|t| t.state == TaskState::Completed)
    });
    kill_9(&mut first);
    // The nodes go on meanwhile; what they report waits in JetStream.
    let done_before = counts(&store, &run, None).completed_once;
    let mut second = controller(&env, &nats);
    wait_for_end(&store, &run, Duration::from_secs(60));
    kill_9(&mut second);
    let counts = counts(&store, &run, None);
    assert_eq!(
        (counts.completed_once, counts.lost, counts.doubled),
        (24, 0, 0),
        "{counts:?} ({done_before} completed before the restart)"
    );
    for task in store.tasks_of(&run).unwrap() {
        let log = env.ok(&["job", "logs", &run, &task.id]);
        assert!(log.contains("==> step 1"), "{log}");
        let patch = String::from_utf8(store.patch(&task.id).unwrap().unwrap()).unwrap();
        assert_eq!(patch.matches("+done").count(), 1, "{patch}");
    }
}

#[test]
fn cancel_reaches_the_node_that_holds_the_task() {
    let nats = NatsServer::start();
    let env = Env::new();
    let file = job(&env, 2, "echo started; sleep 600");
    let mut controller = controller(&env, &nats);
    let _node = node(&env, &nats, "holder", 5);
    let store = Store::open(&env.home).unwrap();
    let run = start_run(&env, &file);
    wait_until(
        "both tasks to run on the node",
        Duration::from_secs(30),
        || running_on(&store, &run, "holder") == 2,
    );
    let cancelled = Instant::now();
    env.ok(&["job", "cancel", &run]);
    wait_for_end(&store, &run, Duration::from_secs(30));
    assert!(cancelled.elapsed() < Duration::from_secs(20));
    kill_9(&mut controller);
    let details = store.run(&run).unwrap();
    assert_eq!(details.state, berth_core::job::RunState::Cancelled);
    for task in store.tasks_of(&run).unwrap() {
        assert_eq!(task.state, TaskState::Cancelled, "{task:?}");
        assert_eq!(task.runner.as_deref(), Some("holder"));
    }
}

#[test]
fn with_no_resets_a_task_whose_node_was_killed_fails_saying_its_runner_died() {
    let nats = NatsServer::start();
    let env = Env::new();
    let file = job(&env, 1, "echo started; sleep 600");
    let mut controller = controller_with(&env, &nats, 0);
    let mut first = node_with(&env, &nats, "first", 5, 0);
    let store = Store::open(&env.home).unwrap();
    let run = start_run(&env, &file);
    wait_until(
        "the task to run on the first node",
        Duration::from_secs(30),
        || running_on(&store, &run, "first") == 1,
    );
    kill_9(&mut first.child);
    let _second = node_with(&env, &nats, "second", 5, 0);
    wait_for_end(&store, &run, Duration::from_secs(30));
    kill_9(&mut controller);
    let task = &store.tasks_of(&run).unwrap()[0];
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    let error = task.error.as_deref().unwrap();
    assert!(
        error.contains("died") && error.contains("`first`"),
        "{error}"
    );
    assert_eq!(task.attempts, 1, "the second node never took it: {task:?}");
}

/// A controller with its own home, serving HTTP on a socket.
struct Controller {
    home: PathBuf,
    socket: PathBuf,
    child: Child,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controller {
    fn start(env: &Env, nats: &NatsServer, name: &str) -> Controller {
        let home = env.dir.path().join(format!("controller-{name}"));
        let socket = env.dir.path().join(format!("controller-{name}.sock"));
        let child = settings(&mut env.berth())
            .env("BERTH_HOME", &home)
            .args(["serve", "--nats", &nats.url(), "--socket"])
            .arg(&socket)
            .spawn()
            .unwrap();
        wait_until("the controller to serve", Duration::from_secs(30), || {
            socket.exists()
        });
        Controller {
            home,
            socket,
            child,
        }
    }

    /// Runs a command through this controller's API.
    fn ok(&self, env: &Env, args: &[&str]) -> String {
        let server = format!("unix://{}", self.socket.display());
        let mut full = vec!["--server", server.as_str()];
        full.extend_from_slice(args);
        env.ok(&full)
    }

    fn store(&self) -> Store {
        Store::open(&self.home).unwrap()
    }
}

/// Everything a registry holds about a run's tasks that a user sees:
/// each task's state, attempts (state, runner), log lines and patch.
fn tasks_as_seen(store: &Store, run: &str) -> Vec<String> {
    store
        .tasks_of(run)
        .unwrap()
        .iter()
        .map(|task| {
            let attempts: Vec<_> = store
                .attempts_of(&task.id)
                .unwrap()
                .iter()
                .map(|a| format!("{}@{}", a.state, a.runner.as_deref().unwrap_or("-")))
                .collect();
            let log: Vec<_> = store
                .log_after(&task.id, 0, 10_000)
                .unwrap()
                .iter()
                .map(|e| format!("{}:{}", e.seq, serde_json::to_string(&e.event).unwrap()))
                .collect();
            let patch = store.patch(&task.id).unwrap().unwrap_or_default();
            format!(
                "{} {} {} attempts {attempts:?} log {log:?} patch {}",
                task.id,
                task.state,
                task.attempts,
                String::from_utf8_lossy(&patch)
            )
        })
        .collect()
}

#[test]
fn a_controller_started_afresh_on_another_home_sees_every_run_its_tasks_logs_and_patches() {
    let nats = NatsServer::start();
    let env = Env::new();
    let file = job(&env, 6, "echo working; echo done >> version.txt");
    let first = Controller::start(&env, &nats, "first");
    let _node = node(&env, &nats, "worker", 5);
    let run = first
        .ok(&env, &["job", "run", file.to_str().unwrap()])
        .trim()
        .to_owned();
    let before = first.store();
    wait_for_end(&before, &run, Duration::from_secs(60));
    drop(first);

    let fresh = Controller::start(&env, &nats, "fresh");
    let after = fresh.store();
    wait_until(
        "the fresh controller to see the run end",
        Duration::from_secs(30),
        || {
            after
                .run(&run)
                .is_ok_and(|r| r.state == berth_core::job::RunState::Completed)
        },
    );
    assert_eq!(tasks_as_seen(&after, &run), tasks_as_seen(&before, &run));
    let shown = fresh.ok(&env, &["job", "show", &run]);
    assert!(shown.contains("completed"), "{shown}");
    for task in after.tasks_of(&run).unwrap() {
        assert_eq!(task.state, TaskState::Completed);
        assert_eq!(task.runner.as_deref(), Some("worker"));
        let log = fresh.ok(&env, &["job", "logs", &run, &task.id]);
        assert!(log.contains("working"), "{log}");
        let patch = String::from_utf8(after.patch(&task.id).unwrap().unwrap()).unwrap();
        assert_eq!(patch.matches("+done").count(), 1, "{patch}");
    }
}

#[test]
fn two_controllers_share_runs_dispatch_each_task_once_and_agree_on_every_state() {
    let nats = NatsServer::start();
    let env = Env::new();
    let file = job(&env, 20, "sleep 0.1; echo done >> version.txt");
    let a = Controller::start(&env, &nats, "a");
    let b = Controller::start(&env, &nats, "b");
    let _nodes: Vec<Node> = ["n0", "n1", "n2"]
        .iter()
        .map(|name| node(&env, &nats, name, 5))
        .collect();
    let run = a
        .ok(&env, &["job", "run", file.to_str().unwrap()])
        .trim()
        .to_owned();
    // Listed and shown through the other controller once its fold took
    // the run.
    let (store_a, store_b) = (a.store(), b.store());
    wait_until(
        "the other controller to fold the run",
        Duration::from_secs(10),
        || store_b.run(&run).is_ok(),
    );
    let listed = b.ok(&env, &["job", "runs", "edit"]);
    assert!(listed.contains(&run), "{listed}");
    let shown = b.ok(&env, &["job", "show", &run]);
    assert!(shown.contains(&run), "{shown}");
    wait_for_end(&store_a, &run, Duration::from_secs(120));
    wait_for_end(&store_b, &run, Duration::from_secs(30));
    for store in [&store_a, &store_b] {
        let counts = counts(store, &run, None);
        assert_eq!(
            (counts.completed_once, counts.lost, counts.doubled),
            (20, 0, 0),
            "{counts:?}"
        );
        for task in store.tasks_of(&run).unwrap() {
            assert_eq!(task.attempts, 1, "dispatched once: {task:?}");
        }
    }
    assert_eq!(tasks_as_seen(&store_a, &run), tasks_as_seen(&store_b, &run));
    let task = &store_b.tasks_of(&run).unwrap()[0].id;
    let log = b.ok(&env, &["job", "logs", &run, task]);
    assert!(log.contains("==> step 1"), "{log}");

    // A run started through one is cancelled through the other.
    let slow = job(&env, 2, "echo started; sleep 600");
    let run = a
        .ok(&env, &["job", "run", slow.to_str().unwrap()])
        .trim()
        .to_owned();
    wait_until("both tasks to run", Duration::from_secs(30), || {
        store_b
            .tasks_of(&run)
            .unwrap()
            .iter()
            .all(|t| t.state == TaskState::Running && t.runner.as_deref() != Some("work queue"))
    });
    b.ok(&env, &["job", "cancel", &run]);
    wait_for_end(&store_a, &run, Duration::from_secs(30));
    wait_for_end(&store_b, &run, Duration::from_secs(30));
    for store in [&store_a, &store_b] {
        assert_eq!(
            store.run(&run).unwrap().state,
            berth_core::job::RunState::Cancelled
        );
    }
    assert_eq!(tasks_as_seen(&store_a, &run), tasks_as_seen(&store_b, &run));
}

#[path = "cluster/placement.rs"]
mod placement;
#[path = "cluster/routing.rs"]
mod routing;
