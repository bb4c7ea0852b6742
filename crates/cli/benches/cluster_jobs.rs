//! Jobs on a NATS cluster of `berth` processes over loopback (a real
//! nats-server, a controller, nodes with their own homes, the local
//! runtime):
//! - dispatch latency: single-task runs one after the other, each started
//!   through the controller's API; for each, the time from the run being
//!   enqueued to a node taking its task (its first log entry) and to its
//!   first step starting there (median; goal 20 ms);
//! - a 200-task job on three nodes against the same on one node (wall
//!   time from enqueue to the run's end, 4 slots a node).
//!
//! `cargo bench -p berth --bench cluster_jobs`; `BERTH_BENCH_ITERATIONS`
//! sets the single-task runs (default 30).
#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly on any error")]

mod support;

use berth_core::job::{LogEvent, RunState};
use berth_store::Store;
use berth_testkit::{NatsServer, make_repo, temp_dir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{median, ok};

const GOAL: Duration = Duration::from_millis(20);

fn berth(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
    command
        .env("BERTH_HOME", home)
        .env("BERTH_JOB_HEARTBEAT", "1")
        .env("BERTH_JOB_STALL", "10")
        .env_remove("BERTH_RUNTIME")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A controller serving a unix socket, and `nodes` nodes; answers the
/// controller's home and its API's address.
fn cluster(dir: &Path, nats: &NatsServer, nodes: usize, tag: &str) -> (PathBuf, String, Killed) {
    let home = dir.join(format!("controller-{tag}"));
    let socket = dir.join(format!("{tag}.sock"));
    let mut children = vec![
        berth(&home)
            .args(["serve", "--nats", &nats.url(), "--socket"])
            .arg(&socket)
            .spawn()
            .unwrap(),
    ];
    for i in 0..nodes {
        let name = format!("{tag}-{i}");
        children.push(
            berth(&dir.join(format!("node-{name}")))
                .args([
                    "node",
                    "--nats",
                    &nats.url(),
                    "--name",
                    &name,
                    "--slots",
                    "4",
                ])
                .spawn()
                .unwrap(),
        );
    }
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = ok(berth(&home)
            .args(["nodes", "--nats", &nats.url(), "--json"])
            .stdout(Stdio::piped()));
        let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
        let mine = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["name"].as_str().unwrap().starts_with(&format!("{tag}-")))
            .count();
        if mine == nodes && socket.exists() {
            break;
        }
        assert!(Instant::now() < until, "the nodes did not join");
        std::thread::sleep(Duration::from_millis(50));
    }
    let server = format!("unix://{}", socket.display());
    (home, server, Killed(children))
}

fn job(dir: &Path, name: &str, repos: &[PathBuf], step: &str) -> PathBuf {
    let mut text = format!("name = \"{name}\"\nruntime = \"local\"\nrepositories = [\n");
    for repo in repos {
        text.push_str(&format!("  {{ url = \"{}\" }},\n", repo.display()));
    }
    text.push_str(&format!(
        "]\n[[steps]]\nrun = \"{step}\"\n[run]\nconcurrency = {}\n",
        repos.len()
    ));
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    file
}

/// Starts a run through the controller's API, as a client would.
fn run(home: &Path, server: &str, file: &Path) -> String {
    ok(berth(home)
        .args(["--server", server, "job", "run", file.to_str().unwrap()])
        .stdout(Stdio::piped()))
    .trim()
    .to_owned()
}

fn wait_end(store: &Store, run: &str) {
    let until = Instant::now() + Duration::from_secs(600);
    while store.run(run).unwrap().state == RunState::Running {
        assert!(Instant::now() < until, "run {run} did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ms(millis: i64) -> Duration {
    Duration::from_millis(millis.max(0) as u64)
}

fn main() {
    let iterations: usize = std::env::var("BERTH_BENCH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let dir = temp_dir();
    let nats = NatsServer::start();
    let repos: Vec<PathBuf> = (0..200)
        .map(|i| {
            let repo = dir.path().join("repos").join(format!("r{i}"));
            make_repo(&repo, &[("version.txt", &format!("repo {i}\n"))]);
            repo
        })
        .collect();

    // Dispatch latency, on three nodes.
    let (home, server, _three) = cluster(dir.path(), &nats, 3, "three");
    let store = Store::open(&home).unwrap();
    let single = job(dir.path(), "single", &repos[..1], "true");
    let (mut taken, mut stepped) = (Vec::new(), Vec::new());
    for i in 0..iterations + 3 {
        let id = run(&home, &server, &single);
        wait_end(&store, &id);
        let created = store.run(&id).unwrap().created_at;
        let task = &store.tasks_of(&id).unwrap()[0];
        let log = store.log_after(&task.id, 0, 100).unwrap();
        let step = log
            .iter()
            .find(|e| matches!(e.event, LogEvent::StepStart { .. }))
            .unwrap();
        if i >= 3 {
            taken.push(ms(log[0].at - created));
            stepped.push(ms(step.at - created));
        }
    }
    let (taken, stepped) = (median(taken), median(stepped));
    println!(
        "dispatch latency over {iterations} runs (median): enqueued -> taken by a node {taken:?}, \
         enqueued -> first step started {stepped:?} (goal {GOAL:?})"
    );

    // 200 tasks on three nodes, then on one.
    let wide = job(dir.path(), "wide", &repos, "echo done >> version.txt");
    let timed = |home: &Path, server: &str| {
        let store = Store::open(home).unwrap();
        let id = run(home, server, &wide);
        wait_end(&store, &id);
        let run = store.run(&id).unwrap();
        assert_eq!(run.state, RunState::Completed, "{run:?}");
        ms(run.ended_at.unwrap() - run.created_at)
    };
    let on_three = timed(&home, &server);
    drop(_three);
    let (home_one, server_one, _one) = cluster(dir.path(), &nats, 1, "one");
    let on_one = timed(&home_one, &server_one);
    println!(
        "200 tasks: three nodes {:.2} s, one node {:.2} s: {:.2}x",
        on_three.as_secs_f64(),
        on_one.as_secs_f64(),
        on_one.as_secs_f64() / on_three.as_secs_f64()
    );
}
