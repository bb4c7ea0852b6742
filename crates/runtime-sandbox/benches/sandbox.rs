//! The sandbox's hot paths on this machine, each against a peer measured in
//! the same run, with the goals of the sandbox runtime:
//!
//! - a new workspace from a cached spec whose repository holds 20,000
//!   files (create, start, first `true`), against `docker run` of an image
//!   holding the same tree and `cp -a` of the tree (goal 15 ms);
//! - `true` through the agent in a running workspace, against `docker
//!   exec` (goal 2 ms);
//! - reset after changing 10 files, in repositories of 1,000 to 100,000
//!   files (goal 5 ms, flat): a workspace's first reset (which starts a
//!   new instance), then later ones with its standby ready (made in the
//!   background after each reset), back to back (a reset may wait for the
//!   standby still being made), and with standbys off (each reset starts
//!   a new instance);
//! - the changes of 10 files in a 100,000-file repository, against `git
//!   status` of the same tree (goal 5 ms);
//! - many idle workspaces at once, and again once each has been reset
//!   (so that each keeps a standby), with the memory each costs: the larger
//!   of the growth of the kernel's own accounting (`/proc/meminfo`: anon,
//!   slab, stacks, page tables, vmalloc) and what its memory cgroup is
//!   charged plus its stage-1 init's share (goal 2 MiB); and, for
//!   reference, the shrinking of `MemAvailable`, which counts everything
//!   else on the host too.
//!
//! `cargo bench -p berth-runtime-sandbox --bench sandbox`, as root.
//! `BERTH_BENCH_PARTS` picks parts (`new,exec,reset,changes,idle`),
//! `BERTH_BENCH_IDLE` the number of idle workspaces (default 500) and
//! `BERTH_BENCH_RESET_SIZES` the repository sizes of the reset series.
//! The docker peers are left out, saying so, when no docker daemon answers.
//! The agent is the static one berth embeds, as both the stage-1 init and
//! each workspace's PID 1, as the `berth` binary runs it.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on any error"
)]

use berth_core::{ExecEvent, ExecRequest, Runtime, Spec, Workspace, WorkspacePath};
use berth_runtime_sandbox::{SandboxConfig, SandboxRuntime, cgroup};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const REPO_FILES: usize = 20_000;
const CHANGES_FILES: usize = 100_000;
const GOAL_NEW: Duration = Duration::from_millis(15);
const GOAL_EXEC: Duration = Duration::from_millis(2);
const GOAL_RESET: Duration = Duration::from_millis(5);
const GOAL_CHANGES: Duration = Duration::from_millis(5);
const GOAL_IDLE_KIB: u64 = 2048;

#[path = "../tests/support/mod.rs"]
mod support;

fn workspace() -> Workspace {
    support::workspace("bench", Spec::default())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn verdict(measured: Duration, goal: Duration) -> String {
    let met = if measured <= goal { "met" } else { "NOT met" };
    format!("goal {}: {met}", ms(goal))
}

fn ratio(peer: Duration, ours: Duration) -> String {
    format!("{:.1}x", peer.as_secs_f64() / ours.as_secs_f64())
}

/// The fields of `/proc/meminfo` that show where a workspace's memory
/// goes, in KiB.
const MEMINFO_FIELDS: [&str; 10] = [
    "MemAvailable",
    "MemFree",
    "VmallocUsed",
    "AnonPages",
    "Shmem",
    "Slab",
    "KernelStack",
    "PageTables",
    "Percpu",
    "Cached",
];

/// `/proc/meminfo` once the page cache is written back and dropped, so
/// that what remains is what the workspaces hold.
fn meminfo() -> Vec<u64> {
    rustix::fs::sync();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    MEMINFO_FIELDS
        .iter()
        .map(|field| {
            let line = info
                .lines()
                .find(|l| l.split(':').next() == Some(field))
                .unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        })
        .collect()
}

/// What the kernel charges to a workspace's memory cgroup (its processes,
/// their page tables, kernel stacks, sockets and namespaces, its files'
/// cache), in KiB.
fn charged_kib(layout: &cgroup::Layout, ws: &Workspace) -> u64 {
    let file = match layout {
        cgroup::Layout::V2 { .. } => "memory.current",
        cgroup::Layout::V1 { .. } => "memory.usage_in_bytes",
    };
    support::instances(layout, ws.id.as_str())
        .iter()
        .filter_map(|c| std::fs::read_to_string(c.dirs[0].join(file)).ok())
        .filter_map(|text| text.trim().parse::<u64>().ok())
        .sum::<u64>()
        / 1024
}

/// The proportional set size of the processes whose command line contains
/// `needle` and `marker`, in KiB.
fn pss_kib(needle: &str, marker: &str) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = entry.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !(cmdline.contains(needle) && cmdline.contains(marker)) {
            continue;
        }
        let rollup = std::fs::read_to_string(dir.join("smaps_rollup")).unwrap_or_default();
        total += rollup
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// A tree of `files` files of 4.6 KB (about 90 MB for 20,000) in
/// directories of 100.
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

/// Runs `git` in `dir` and returns its stdout.
fn git(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.email=bench@berth", "-c", "user.name=bench"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Changes one file in each of the first 10 directories.
const EDIT_10: &str =
    "cd repo && for i in 0 1 2 3 4 5 6 7 8 9; do echo changed >> d$i/f$((i*100)).txt; done";

async fn run(rt: &SandboxRuntime, ws: &Workspace, request: ExecRequest) {
    let mut events = rt
        .exec(ws, request, CancellationToken::new())
        .await
        .unwrap();
    while let Some(event) = events.recv().await {
        if let ExecEvent::Exit(status) = event {
            assert_eq!(status.code, Some(0), "a command failed: {status:?}");
        }
    }
}

async fn sh(rt: &SandboxRuntime, ws: &Workspace, script: &str) {
    run(rt, ws, ExecRequest::shell(script)).await;
}

async fn started_from(rt: &SandboxRuntime, key: &str) -> Workspace {
    let ws = workspace();
    rt.create(&ws, Some(key)).await.unwrap();
    rt.start(&ws).await.unwrap();
    ws
}

/// The first of 16 resets of a new workspace from `key`, each after
/// changing 10 files, and the median of the 15 others; with `ready`, each
/// once the standby is made.
async fn resets(rt: &SandboxRuntime, key: &str, ready: bool) -> (Duration, Duration) {
    let ws = started_from(rt, key).await;
    let mut resets = Vec::new();
    for _ in 0..16 {
        sh(rt, &ws, EDIT_10).await;
        if ready {
            rt.settle().await;
        }
        let began = Instant::now();
        rt.reset(&ws, None).await.unwrap();
        resets.push(began.elapsed());
        assert!(rt.changes(&ws).await.unwrap().is_empty());
    }
    rt.remove(&ws).await.unwrap();
    let first = resets.remove(0);
    (first, median(resets))
}

struct Bench {
    rt: SandboxRuntime,
    /// The same, with standbys off.
    plain: SandboxRuntime,
    scratch: tempfile::TempDir,
    docker: bool,
}

impl Bench {
    /// Caches a workspace whose `repo` holds a committed tree of `files`
    /// files, under the cache key `key`.
    async fn cache(&self, key: &str, files: usize) {
        if self.rt.has_cache(key).await {
            return;
        }
        let repo = self.scratch.path().join(key);
        make_tree(&repo, files);
        let ws = workspace();
        self.rt.create(&ws, None).await.unwrap();
        self.rt
            .import(&ws, &repo, &WorkspacePath::parse("repo").unwrap())
            .await
            .unwrap();
        self.rt.start(&ws).await.unwrap();
        sh(
            &self.rt,
            &ws,
            "cd repo && git init -q && git add -A && git -c user.email=b@x -c user.name=b commit -qm base",
        )
        .await;
        self.rt.save_cache(&ws, key).await.unwrap();
        self.rt.remove(&ws).await.unwrap();
        // The import may have moved the tree into the layer store.
        let _ = std::fs::remove_dir_all(&repo);
        // The setup's writes reach the disk before anything is measured,
        // rather than during it.
        rustix::fs::sync();
    }

    async fn started_from(&self, key: &str) -> Workspace {
        started_from(&self.rt, key).await
    }

    async fn new_workspace(&self) {
        self.cache("new", REPO_FILES).await;
        let mut news = Vec::new();
        for _ in 0..15 {
            let began = Instant::now();
            let ws = self.started_from("new").await;
            run(&self.rt, &ws, ExecRequest::argv(["true"])).await;
            news.push(began.elapsed());
            self.rt.remove(&ws).await.unwrap();
        }
        let ours = median(news);

        let tree = self.scratch.path().join("tree");
        make_tree(&tree, REPO_FILES);
        let began = Instant::now();
        let status = Command::new("cp")
            .arg("-a")
            .arg(&tree)
            .arg(self.scratch.path().join("tree-copy"))
            .status()
            .unwrap();
        assert!(status.success());
        let cp = began.elapsed();
        std::fs::remove_dir_all(self.scratch.path().join("tree-copy")).unwrap();

        println!(
            "new workspace from a cached spec, {REPO_FILES} files (create, start, first `true`):"
        );
        println!(
            "  berth sandbox: median {}  ({})",
            ms(ours),
            verdict(ours, GOAL_NEW)
        );
        println!(
            "  cp -a of the tree: {}  ({} the sandbox)",
            ms(cp),
            ratio(cp, ours)
        );
        if self.docker {
            let image = docker_image_with(&tree, self.scratch.path());
            let runs: Vec<Duration> = (0..5)
                .map(|_| {
                    let began = Instant::now();
                    docker(&["run", "--rm", "--network", "none", &image, "/bin/true"]);
                    began.elapsed()
                })
                .collect();
            let run = median(runs);
            println!(
                "  docker run --rm of the same tree: median {}  ({} the sandbox)",
                ms(run),
                ratio(run, ours)
            );
            docker(&["rmi", "-f", &image]);
        } else {
            println!("  docker run: no docker daemon answers, not measured");
        }
        std::fs::remove_dir_all(&tree).unwrap();
    }

    async fn exec(&self) {
        self.cache("new", REPO_FILES).await;
        let ws = self.started_from("new").await;
        for _ in 0..10 {
            run(&self.rt, &ws, ExecRequest::argv(["true"])).await;
        }
        let mut argv = Vec::new();
        let mut shell = Vec::new();
        for _ in 0..200 {
            let began = Instant::now();
            run(&self.rt, &ws, ExecRequest::argv(["true"])).await;
            argv.push(began.elapsed());
            let began = Instant::now();
            sh(&self.rt, &ws, "true").await;
            shell.push(began.elapsed());
        }
        let (argv, shell) = (median(argv), median(shell));
        println!("`true` through the agent in a running workspace:");
        println!(
            "  argv: median {}  ({})",
            ms(argv),
            verdict(argv, GOAL_EXEC)
        );
        println!("  sh -c: median {}", ms(shell));
        if self.docker {
            let name = format!("berth-bench-{}", std::process::id());
            let image = docker_image_with(&self.scratch.path().join("empty"), self.scratch.path());
            docker(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                "none",
                &image,
                "/bin/sleep",
                "3600",
            ]);
            let runs: Vec<Duration> = (0..30)
                .map(|_| {
                    let began = Instant::now();
                    docker(&["exec", &name, "/bin/true"]);
                    began.elapsed()
                })
                .collect();
            let exec = median(runs);
            println!(
                "  docker exec: median {}  ({} the agent)",
                ms(exec),
                ratio(exec, argv)
            );
            docker(&["rm", "-f", &name]);
            docker(&["rmi", "-f", &image]);
        } else {
            println!("  docker exec: no docker daemon answers, not measured");
        }
        self.rt.remove(&ws).await.unwrap();
    }

    async fn reset(&self, sizes: &[usize]) {
        println!(
            "reset after changing 10 files (running workspace, back to the provisioned state):"
        );
        let mut all = Vec::new();
        for &files in sizes {
            let key = format!("reset-{files}");
            self.cache(&key, files).await;
            let (first, ready) = resets(&self.rt, &key, true).await;
            let (_, back_to_back) = resets(&self.rt, &key, false).await;
            let (_, plain) = resets(&self.plain, &key, false).await;
            println!(
                "  {files:>7} files: median {} with the standby ready ({}); back to back {}; the first reset {}; without standbys {} ({} the standby)",
                ms(ready),
                verdict(ready, GOAL_RESET),
                ms(back_to_back),
                ms(first),
                ms(plain),
                ratio(plain, ready)
            );
            all.push(ready);
            self.rt.remove_cache(&key).await.unwrap();
        }
        if let (Some(min), Some(max)) = (all.iter().min(), all.iter().max()) {
            println!(
                "  largest / smallest: {:.2}",
                max.as_secs_f64() / min.as_secs_f64()
            );
        }
    }

    async fn changes(&self) {
        let key = "changes";
        self.cache(key, CHANGES_FILES).await;
        let ws = self.started_from(key).await;
        sh(&self.rt, &ws, EDIT_10).await;
        let mut ours = Vec::new();
        for _ in 0..15 {
            let began = Instant::now();
            let list = self.rt.changes(&ws).await.unwrap();
            ours.push(began.elapsed());
            assert_eq!(list.len(), 10);
        }
        let ours = median(ours);
        self.rt.remove(&ws).await.unwrap();
        self.rt.remove_cache(key).await.unwrap();

        // The same tree and edits on the host, in git.
        let tree = self.scratch.path().join("git-tree");
        make_tree(&tree, CHANGES_FILES);
        git(&tree, &["init", "-q"]);
        git(&tree, &["add", "-A"]);
        git(&tree, &["commit", "-qm", "base"]);
        for i in 0..10 {
            let file = tree.join(format!("d{i}/f{}.txt", i * 100));
            std::fs::write(&file, "changed\n").unwrap();
        }
        let mut status = Vec::new();
        for _ in 0..5 {
            let began = Instant::now();
            let out = git(&tree, &["status", "--porcelain"]);
            status.push(began.elapsed());
            assert_eq!(String::from_utf8_lossy(&out).lines().count(), 10);
        }
        let status = median(status);
        std::fs::remove_dir_all(&tree).unwrap();
        println!("changes of 10 files in a {CHANGES_FILES}-file repository:");
        println!(
            "  berth changes: median {}  ({})",
            ms(ours),
            verdict(ours, GOAL_CHANGES)
        );
        println!(
            "  git status: median {}  ({} berth)",
            ms(status),
            ratio(status, ours)
        );
    }

    async fn idle(&self, count: usize) {
        self.cache("new", REPO_FILES).await;
        self.idle_on(count, false).await;
        self.idle_on(count, true).await;
    }

    /// Starts `count` workspaces (`reset` once each, so that each keeps a
    /// standby) and measures what they cost when idle.
    async fn idle_on(&self, count: usize, reset: bool) {
        let rt = &self.rt;
        let before = meminfo();
        let began = Instant::now();
        let mut many = Vec::new();
        for _ in 0..count {
            let ws = started_from(rt, "new").await;
            if reset {
                rt.reset(&ws, None).await.unwrap();
            }
            many.push(ws);
        }
        rt.settle().await;
        let started = began.elapsed();
        // Idle means settled: each agent has done its detection.
        for ws in &many {
            let agent = rt.agent_socket(ws).unwrap();
            let client = berth_agent_client::AgentClient::connect(&agent, Duration::from_secs(30))
                .await
                .unwrap();
            client.info(false).await.unwrap();
        }
        let settled = began.elapsed();
        let after = meminfo();
        // Growth of each field per workspace (MemAvailable and MemFree shrink).
        let per = |i: usize| (after[i] as i64 - before[i] as i64) / count.max(1) as i64;
        let available = (-per(0)).max(0) as u64;
        let breakdown: Vec<String> = (1..MEMINFO_FIELDS.len())
            .map(|i| format!("{} {:+}", MEMINFO_FIELDS[i], per(i)))
            .collect();
        // The stage-1 init waits outside the workspace's cgroup, so its
        // share is added to what the cgroup is charged.
        let layout = cgroup::detect().unwrap();
        let charged: u64 = many.iter().map(|ws| charged_kib(&layout, ws)).sum();
        let home = self
            .scratch
            .path()
            .join("home")
            .to_string_lossy()
            .into_owned();
        let inits = pss_kib("sandbox-init", &home);
        let n = count.max(1) as u64;
        // What the kernel says it holds for them: anonymous memory, slab,
        // kernel stacks, page tables, vmalloc, per-cpu and shared memory.
        let accounted = (2..=8).map(per).sum::<i64>().max(0) as u64;
        let each = accounted.max((charged + inits) / n);
        for ws in &many {
            rt.remove(ws).await.unwrap();
        }
        let what = if reset {
            "each reset once, so with its standby"
        } else {
            "never reset, so without standbys"
        };
        println!("{count} idle workspaces at once, {what}:");
        println!(
            "  started in {:.1} s, settled in {:.1} s; {each} KiB each (goal {GOAL_IDLE_KIB} KiB: {})",
            started.as_secs_f64(),
            settled.as_secs_f64(),
            if each <= GOAL_IDLE_KIB {
                "met"
            } else {
                "NOT met"
            }
        );
        println!(
            "  the kernel's accounting grew {accounted} KiB per workspace; charged to its memory cgroup {} KiB, its stage-1 init's PSS {} KiB",
            charged / n,
            inits / n
        );
        println!(
            "  MemAvailable shrank {available} KiB per workspace (noisy: everything else on the host counts too); per field: {}",
            breakdown.join(", ")
        );
    }
}

/// Runs the docker CLI and asserts it succeeded.
fn docker(args: &[&str]) {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Imports an image of a static busybox with `tree` at `/repo` and
/// returns its name.
fn docker_image_with(tree: &Path, scratch: &Path) -> String {
    let root = scratch.join("docker-root");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(busybox(), bin.join("busybox")).unwrap();
    for applet in ["true", "sleep", "sh"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    std::fs::create_dir_all(tree).unwrap();
    let name = format!("berth-bench:{}", std::process::id());
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-cf", "-", "bin"])
        .arg("-C")
        .arg(tree.parent().unwrap())
        .arg(format!(
            "--transform=s,^{},repo,",
            tree.file_name().unwrap().to_string_lossy()
        ))
        .arg(tree.file_name().unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let status = Command::new("docker")
        .args(["import", "-", &name])
        .stdin(tar.stdout.take().unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success() && tar.wait().unwrap().success());
    std::fs::remove_dir_all(&root).unwrap();
    name
}

fn busybox() -> &'static str {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("busybox-static is installed (scripts/prepare installs it)")
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    let parts =
        std::env::var("BERTH_BENCH_PARTS").unwrap_or_else(|_| "new,exec,reset,changes,idle".into());
    let idle: usize = std::env::var("BERTH_BENCH_IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let sizes: Vec<usize> = std::env::var("BERTH_BENCH_RESET_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let home = scratch.path().join("home");
    let agent = berth_agent_bin::install(&home.join("bin")).unwrap();
    let mut config = SandboxConfig::from_env(&home);
    config.init_program = agent.clone();
    config.init_args = vec!["sandbox-init".into()];
    config.agent_program = Some(agent);
    config.standby = true;
    let plain = SandboxConfig {
        standby: false,
        ..config.clone()
    };
    let bench = Bench {
        rt: SandboxRuntime::new(config).unwrap(),
        plain: SandboxRuntime::new(plain).unwrap(),
        scratch,
        docker: docker_answers(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        bench.rt.available().await.unwrap();
        for part in parts.split(',') {
            match part.trim() {
                "new" => bench.new_workspace().await,
                "exec" => bench.exec().await,
                "reset" => bench.reset(&sizes).await,
                "changes" => bench.changes().await,
                "idle" => bench.idle(idle).await,
                other => panic!("unknown part `{other}` in BERTH_BENCH_PARTS"),
            }
        }
    });
}
