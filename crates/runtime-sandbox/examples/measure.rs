//! Measures the sandbox's hot paths on this machine: a new workspace from
//! a cached spec (against `cp -a` of the same tree), `true` through the
//! agent, reset after 10 changed files, the change list of 10 files
//! (against `git status`) and the memory an idle workspace costs. Needs root and the agent binary:
//!
//! `cargo run --release -p berth-runtime-sandbox --example measure -- FILES`

#![expect(
    clippy::unwrap_used,
    reason = "a measuring tool stops at the first failure"
)]

use berth_core::{
    ExecRequest, Runtime, Spec, Workspace, WorkspaceId, WorkspacePath, WorkspaceState,
};
use berth_runtime_sandbox::{SandboxConfig, SandboxRuntime};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn workspace() -> Workspace {
    Workspace {
        id: WorkspaceId::generate(),
        name: "measure".into(),
        runtime: "sandbox".into(),
        spec: Spec::default(),
        state: WorkspaceState::Creating,
        runtime_info: serde_json::Value::Null,
        cache_key: None,
        error: None,
        owner_pid: None,
        created_at: 0,
        updated_at: 0,
    }
}

fn mem_available_kb() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A tree of `files` files of 4.6 KB in directories of 100.
fn make_tree(root: &Path, files: usize) {
    let body = "x".repeat(4600);
    for i in 0..files {
        let dir = root.join(format!("d{}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("f{i}.txt")), &body).unwrap();
    }
}

async fn run(rt: &SandboxRuntime, ws: &Workspace, script: &str) {
    let mut events = rt
        .exec(ws, ExecRequest::shell(script), CancellationToken::new())
        .await
        .unwrap();
    while events.recv().await.is_some() {}
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let files: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let home = tempfile::tempdir_in("/var/tmp").unwrap();
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap();
    let mut config = SandboxConfig::from_env(home.path());
    config.init_program = bin.join("berth-sandbox-init");
    // MEASURE_NO_AGENT=1 measures the sandbox alone: the init's reaper
    // as PID 1, commands through the init binary.
    config.agent_program =
        (std::env::var_os("MEASURE_NO_AGENT").is_none()).then(|| bin.join("berth-agent"));
    let rt = SandboxRuntime::new(config).unwrap();
    rt.available().await.unwrap();

    let repo = home.path().join("repo");
    make_tree(&repo, files);
    let copy_src = home.path().join("copy-src");
    make_tree(&copy_src, files);
    let start = Instant::now();
    let status = Command::new("cp")
        .arg("-a")
        .arg(&copy_src)
        .arg(home.path().join("copy-dst"))
        .status()
        .unwrap();
    assert!(status.success());
    let cp = start.elapsed();

    let ws = workspace();
    rt.create(&ws, None).await.unwrap();
    rt.import(&ws, &repo, &WorkspacePath::parse("repo").unwrap())
        .await
        .unwrap();
    rt.start(&ws).await.unwrap();
    run(&rt, &ws, "cd repo && git init -q && git add -A && git -c user.email=m@x -c user.name=m commit -qm base").await;
    rt.save_cache(&ws, "measure").await.unwrap();

    let mut news = Vec::new();
    for _ in 0..10 {
        let new = workspace();
        let start = Instant::now();
        rt.create(&new, Some("measure")).await.unwrap();
        let created = start.elapsed();
        rt.start(&new).await.unwrap();
        let started = start.elapsed();
        run(&rt, &new, "true").await;
        news.push(start.elapsed());
        if std::env::var_os("MEASURE_PHASES").is_some() {
            eprintln!(
                "create {} start {} first true {}",
                ms(created),
                ms(started - created),
                ms(start.elapsed() - started)
            );
        }
        rt.remove(&new).await.unwrap();
    }

    let mut trues = Vec::new();
    for _ in 0..100 {
        let start = Instant::now();
        run(&rt, &ws, "true").await;
        trues.push(start.elapsed());
    }
    let mut argv_trues = Vec::new();
    for _ in 0..100 {
        let start = Instant::now();
        let mut events = rt
            .exec(&ws, ExecRequest::argv(["true"]), CancellationToken::new())
            .await
            .unwrap();
        while events.recv().await.is_some() {}
        argv_trues.push(start.elapsed());
    }

    let edit =
        "cd repo && for i in 0 1 2 3 4 5 6 7 8 9; do echo changed >> d$i/f$((i*100)).txt; done";
    let mut changes = Vec::new();
    let mut resets = Vec::new();
    let mut git = Vec::new();
    for _ in 0..5 {
        run(&rt, &ws, edit).await;
        let start = Instant::now();
        let list = rt.changes(&ws).await.unwrap();
        changes.push(start.elapsed());
        assert_eq!(list.len(), 10);
        let start = Instant::now();
        rt.reset(&ws, None).await.unwrap();
        resets.push(start.elapsed());
    }
    // Idle workspaces: what each costs the host, from MemAvailable.
    let idle: usize = std::env::var("MEASURE_IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let before = mem_available_kb();
    let mut many = Vec::new();
    for _ in 0..idle {
        let new = workspace();
        rt.create(&new, Some("measure")).await.unwrap();
        rt.start(&new).await.unwrap();
        many.push(new);
    }
    let after = mem_available_kb();
    for new in &many {
        rt.remove(new).await.unwrap();
    }
    rt.remove(&ws).await.unwrap();

    // git status over the same tree on the host, with the same 10 edits.
    let git_in = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(&copy_src)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    git_in(&["init", "-q"]);
    git_in(&["add", "-A"]);
    git_in(&[
        "-c",
        "user.email=m@x",
        "-c",
        "user.name=m",
        "commit",
        "-qm",
        "base",
    ]);
    for i in 0..10 {
        let file = copy_src.join(format!("d{i}/f{}.txt", i * 100));
        std::fs::write(&file, "changed\n").unwrap();
    }
    for _ in 0..5 {
        let start = Instant::now();
        let out = git_in(&["status", "--porcelain"]);
        git.push(start.elapsed());
        assert_eq!(String::from_utf8_lossy(&out).lines().count(), 10);
    }

    println!("files in the cached repository: {files}");
    println!(
        "new workspace from cache (create + start + first `true`): {}",
        ms(median(news))
    );
    println!("cp -a of the same tree: {}", ms(cp));
    println!("`true` through the agent (sh -c): {}", ms(median(trues)));
    println!(
        "`true` through the agent (argv): {}",
        ms(median(argv_trues))
    );
    println!(
        "changes of 10 files: {}   git status: {}",
        ms(median(changes)),
        ms(median(git))
    );
    println!(
        "reset after 10 changed files (running workspace): {}",
        ms(median(resets))
    );
    println!(
        "{idle} idle workspaces: {} KiB of host memory each",
        before.saturating_sub(after) / idle.max(1) as u64
    );
}
