//! `berth exec ID -- true` as a whole process, with 50 workspaces in the
//! registry, against `docker exec CONTAINER true` of a running container
//! in the same run. Prints both medians and the ratio; the goal is a
//! median of at most 5 ms.
//!
//! `cargo bench -p berth --bench cli_exec` (a release build);
//! `BERTH_BENCH_ITERATIONS` sets the iterations of each (default 100).
#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly on any error")]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{median, ok};

const WORKSPACES: usize = 50;
const WARM_UP: usize = 5;
const GOAL: Duration = Duration::from_millis(5);
const IMAGE: &str = "berth-bench/busybox:latest";

fn timed(iterations: usize, mut run: impl FnMut()) -> Duration {
    for _ in 0..WARM_UP {
        run();
    }
    median(
        (0..iterations)
            .map(|_| {
                let began = Instant::now();
                run();
                began.elapsed()
            })
            .collect(),
    )
}

/// A busybox image for `docker run`, imported once.
fn busybox_image(scratch: &Path) {
    let inspect = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    if inspect.success() {
        return;
    }
    let root = scratch.join("busybox-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "true", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let archive = scratch.join("busybox.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    ok(Command::new("docker")
        .args(["import"])
        .arg(&archive)
        .arg(IMAGE));
}

fn main() {
    let iterations: usize = std::env::var("BERTH_BENCH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
        .max(1);
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    let berth = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
        command
            .args(args)
            .env("BERTH_HOME", &home)
            .env_remove("BERTH_RUNTIME")
            .env_remove("BERTH_SERVER");
        command
    };
    let spec = scratch.path().join("spec.toml");
    std::fs::write(&spec, "runtime = \"sandbox\"\nimage = \"host\"\n").unwrap();
    let mut ids = Vec::new();
    for _ in 0..WORKSPACES {
        let out = ok(berth(&["up", spec.to_str().unwrap()]).stderr(Stdio::null()));
        ids.push(out.lines().last().unwrap().to_string());
    }
    let id = ids[WORKSPACES / 2].clone();

    busybox_image(scratch.path());
    let container = ok(Command::new("docker").args([
        "run",
        "-d",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "sleep",
        "3600",
    ]))
    .trim()
    .to_string();

    let exec = || {
        let status = berth(&["exec", &id, "--", "true"]).status().unwrap();
        assert!(status.success());
    };
    let docker_exec = || {
        let status = Command::new("docker")
            .args(["exec", &container, "true"])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let berth_median = timed(iterations, exec);
    let docker_median = timed(iterations, docker_exec);

    let _ = Command::new("docker")
        .args(["rm", "-f", &container])
        .stdout(Stdio::null())
        .status();
    for id in &ids {
        let _ = berth(&["rm", id]).stdout(Stdio::null()).status();
    }

    println!(
        "berth exec (whole process, {WORKSPACES} workspaces): median {:.2} ms over {iterations}",
        berth_median.as_secs_f64() * 1000.0
    );
    println!(
        "docker exec (whole process): median {:.2} ms",
        docker_median.as_secs_f64() * 1000.0
    );
    println!(
        "ratio: {:.1}x faster; goal: at most {} ms: {}",
        docker_median.as_secs_f64() / berth_median.as_secs_f64(),
        GOAL.as_millis(),
        if berth_median <= GOAL {
            "met"
        } else {
            "missed"
        }
    );
}
