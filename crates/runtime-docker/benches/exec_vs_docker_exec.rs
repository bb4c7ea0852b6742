//! `true` in one running container, from the client's call to the exit
//! code: through berth's agent (the docker runtime's `exec`) against the
//! `docker exec` CLI, as a user would compare them. Prints both medians
//! and the ratio; the goal is at least 20x.
//!
//! `cargo bench -p berth-runtime-docker --bench exec_vs_docker_exec`;
//! `BERTH_BENCH_ITERATIONS` sets the iterations of each (default 50).
#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly on any error")]

#[path = "../tests/support/mod.rs"]
#[expect(
    dead_code,
    reason = "the benchmark needs only part of the test support"
)]
mod support;

/// The engine the benchmark's workspaces run on.
const ENGINE: support::Engine = support::Engine::Docker;

use berth_core::{ExecEvent, ExecRequest, Runtime};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{TestImage, World, image, spec_for, workspace};
use tokio_util::sync::CancellationToken;

const WARM_UP: usize = 5;
const GOAL: f64 = 20.0;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let iterations: usize = std::env::var("BERTH_BENCH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50)
        .max(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let world = World::new();
    let ws = workspace(spec_for(image(TestImage::Busybox)));
    world.track(&ws);
    let docker = world.runtime.clone();
    runtime.block_on(async {
        docker.create(&ws, None).await.unwrap();
        docker.start(&ws).await.unwrap();
    });

    let agent_true = || {
        runtime.block_on(async {
            let began = Instant::now();
            let mut events = docker
                .exec(&ws, ExecRequest::argv(["true"]), CancellationToken::new())
                .await
                .unwrap();
            while let Some(event) = events.recv().await {
                if let ExecEvent::Exit(status) = event {
                    assert_eq!(status.code, Some(0));
                }
            }
            began.elapsed()
        })
    };
    let name = world.names().container(&ws.id);
    let docker_exec_true = || {
        let began = Instant::now();
        let status = Command::new("docker")
            .args(["exec", &name, "true"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        began.elapsed()
    };

    for _ in 0..WARM_UP {
        agent_true();
        docker_exec_true();
    }
    let agent: Vec<Duration> = (0..iterations).map(|_| agent_true()).collect();
    let cli: Vec<Duration> = (0..iterations).map(|_| docker_exec_true()).collect();
    let (agent, cli) = (median(agent), median(cli));
    let ratio = cli.as_secs_f64() / agent.as_secs_f64();
    println!("exec `true`, client to exit code, {iterations} iterations each:");
    println!(
        "  berth agent:  median {:>9.3} ms",
        agent.as_secs_f64() * 1e3
    );
    println!("  docker exec:  median {:>9.3} ms", cli.as_secs_f64() * 1e3);
    println!(
        "  ratio: {ratio:.1}x faster through the agent (goal >= {GOAL}x: {})",
        if ratio >= GOAL { "met" } else { "NOT met" }
    );
}
