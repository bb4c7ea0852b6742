//! Exec round trip through the HTTP API, against spawning the same command
//! directly.
//!
//! A `local` workspace runs `true` (as `/bin/sh -c true`) through
//! `POST /v1/workspaces/{id}/exec` (the non-streaming JSON form) over a
//! kept-alive loopback connection, timed from the client's send to its
//! parsed answer; the peer is `std::process::Command::new("sh").args(["-c",
//! "true"])` waited on in this process. The two alternate, run by run, so
//! that whatever else loads the machine weighs on both alike. Prints the
//! median and p95 of each and the ratio of the medians.
//!
//! Run with `cargo bench -p berth-server --bench exec_roundtrip`; set
//! `BERTH_BENCH_ITERATIONS` to change the number of runs of each (500).

use berth_provider::{Provider, ProviderConfig};
use berth_runtime_local::LocalRuntime;
use berth_server::{Listen, ServerConfig};
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token";
const WARMUP: usize = 20;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn main() -> Result<()> {
    let iterations = std::env::var("BERTH_BENCH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (http, direct) = runtime.block_on(measure(iterations))?;
    report("HTTP API exec `true` (local)", &http);
    report("spawn `sh -c true` directly", &direct);
    let ratio = median(&http).as_secs_f64() / median(&direct).as_secs_f64();
    println!("ratio of medians (HTTP API / direct spawn): {ratio:.2}x");
    Ok(())
}

async fn measure(iterations: usize) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let home = tempfile::tempdir()?;
    let provider = Provider::open(
        ProviderConfig::new(home.path()).runtime(Arc::new(LocalRuntime::new(home.path()))),
    )
    .await?;
    let server = berth_server::bind(
        provider,
        ServerConfig {
            listen: Listen::Tcp("127.0.0.1:0".parse()?),
            token: Some(TOKEN.into()),
            ..ServerConfig::default()
        },
    )
    .await?;
    let addr = server.local_addr().ok_or("the server has no TCP address")?;
    tokio::spawn(server.run_until(std::future::pending()));

    let client = reqwest::Client::builder().no_proxy().build()?;
    let base = format!("http://{addr}");
    let created: serde_json::Value = client
        .post(format!("{base}/v1/workspaces"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "spec": { "runtime": "local" } }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_str().ok_or("no workspace id")?;
    let exec = format!("{base}/v1/workspaces/{id}/exec");
    let body = serde_json::json!({ "command": "true" });

    let mut http = Vec::with_capacity(iterations);
    let mut direct = Vec::with_capacity(iterations);
    for i in 0..WARMUP + iterations {
        let start = Instant::now();
        let answer: serde_json::Value = client
            .post(&exec)
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let through_http = start.elapsed();
        if answer["exit"]["code"] != 0 {
            return Err(format!("`true` did not succeed: {answer}").into());
        }
        let spawned = tokio::task::spawn_blocking(spawn_directly).await??;
        if i >= WARMUP {
            http.push(through_http);
            direct.push(spawned);
        }
    }
    Ok((http, direct))
}

/// One `sh -c true`, timed from spawn to exit.
fn spawn_directly() -> std::io::Result<Duration> {
    let start = Instant::now();
    let status = std::process::Command::new("sh")
        .args(["-c", "true"])
        .status()?;
    let elapsed = start.elapsed();
    if status.success() {
        Ok(elapsed)
    } else {
        Err(std::io::Error::other("`sh -c true` failed"))
    }
}

fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 50)
}

fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or_default()
}

fn report(what: &str, samples: &[Duration]) {
    println!(
        "{what}: {} runs, median {:.3} ms, p95 {:.3} ms",
        samples.len(),
        median(samples).as_secs_f64() * 1e3,
        percentile(samples, 95).as_secs_f64() * 1e3,
    );
}
