//! Benchmark: `true` through the static agent, client to exit code, and
//! the agent's idle memory.
//!
//! `cargo run --release -p berth-agent-bin --example exec_latency [N]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_agent_client::AgentClient;
use berth_proto::ExecRequest;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(500, |n| n.parse().expect("N is a number of runs"));
    let dir = tempfile::tempdir().unwrap();
    let agent = berth_agent_bin::install(&dir.path().join("bin")).unwrap();
    let socket = dir.path().join("agent.sock");
    let mut child = std::process::Command::new(&agent)
        .arg("--socket")
        .arg(&socket)
        .arg("--root")
        .arg(dir.path().join("root"))
        .spawn()
        .unwrap();
    let client = AgentClient::connect(&socket, Duration::from_secs(10))
        .await
        .unwrap();
    let info = client.info(false).await.unwrap();
    println!(
        "agent {} ({} bytes, {}), idle RSS {} KiB",
        info.version,
        berth_agent_bin::agent_binary().len(),
        berth_agent_bin::TARGET,
        info.resources.agent_rss_bytes / 1024
    );
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let mut events = client
            .exec(ExecRequest::argv(["true"]), CancellationToken::new())
            .await
            .unwrap();
        let (_, _, status) = berth_agent_client::collect(&mut events).await;
        assert_eq!(status.code, Some(0));
        times.push(started.elapsed());
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / runs as u32;
    println!(
        "exec `true` x{runs}: mean {:?}, p50 {:?}, p99 {:?}",
        mean,
        times[runs / 2],
        times[runs * 99 / 100]
    );
    let _ = child.kill();
    let _ = child.wait();
}
