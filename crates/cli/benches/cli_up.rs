//! `berth up SPEC` as a whole process when the spec is cached and
//! upstream has not moved (a 20,000-file repository, sandbox runtime),
//! against `docker run --rm IMAGE true` of an image holding the same tree,
//! in the same run. Prints both medians; the goal is at most 30 ms.
//!
//! `cargo bench -p berth --bench cli_up` (a release build);
//! `BERTH_BENCH_ITERATIONS` sets the iterations of each (default 20).
#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly on any error")]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{median, ok};

const FILES: usize = 20_000;
const GOAL: Duration = Duration::from_millis(30);
const IMAGE: &str = "berth-bench/tree:latest";

/// A repository of `FILES` small files in nested directories.
fn make_repo(repo: &Path) {
    for i in 0..FILES {
        let dir = repo.join(format!("d{:02}/e{:02}", i % 50, (i / 50) % 20));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    let git = |args: &[&str]| ok(Command::new("git").arg("-C").arg(repo).args(args));
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&[
        "-c",
        "user.name=bench",
        "-c",
        "user.email=bench@localhost",
        "commit",
        "-qm",
        "tree",
    ]);
}

/// An image holding busybox and the same tree.
fn tree_image(scratch: &Path, repo: &Path) {
    let root = scratch.join("image-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    ok(Command::new("cp").arg("-a").arg(repo).arg(root.join("app")));
    let archive = scratch.join("tree.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    ok(Command::new("docker")
        .arg("import")
        .arg(&archive)
        .arg(IMAGE));
}

fn main() {
    let iterations: usize = std::env::var("BERTH_BENCH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
        .max(1);
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    let repo = scratch.path().join("repo");
    make_repo(&repo);
    let spec = scratch.path().join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            "runtime = \"sandbox\"\nimage = \"host\"\n[[repositories]]\nurl = \"{}\"\npath = \"app\"\n",
            repo.display()
        ),
    )
    .unwrap();
    let berth = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
        command
            .args(args)
            .env("BERTH_HOME", &home)
            .env_remove("BERTH_RUNTIME")
            .env_remove("BERTH_SERVER")
            .stderr(Stdio::null());
        command
    };
    let up = || {
        let began = Instant::now();
        let out = ok(&mut berth(&["up", spec.to_str().unwrap()]));
        let took = began.elapsed();
        let id = out.lines().last().unwrap().to_string();
        ok(&mut berth(&["rm", &id]));
        took
    };
    up(); // provisions and caches
    let berth_median = median((0..iterations).map(|_| up()).collect());

    tree_image(scratch.path(), &repo);
    let run = || {
        let began = Instant::now();
        ok(Command::new("docker").args(["run", "--rm", "--network", "none", IMAGE, "true"]));
        began.elapsed()
    };
    run();
    let docker_median = median((0..iterations).map(|_| run()).collect());
    let _ = Command::new("docker")
        .args(["image", "rm", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();

    println!(
        "berth up (whole process, cached {FILES}-file spec, upstream unmoved): median {:.1} ms over {iterations}",
        berth_median.as_secs_f64() * 1000.0
    );
    println!(
        "docker run --rm of the same tree: median {:.1} ms",
        docker_median.as_secs_f64() * 1000.0
    );
    println!(
        "ratio: {:.1}x; goal: at most {} ms: {}",
        docker_median.as_secs_f64() / berth_median.as_secs_f64(),
        GOAL.as_millis(),
        if berth_median <= GOAL {
            "met"
        } else {
            "missed"
        }
    );
}
