//! `exec true` in one sandbox workspace through the NATS API, through the
//! HTTP API (both from a client in this process, to one `berth serve`
//! serving both), and as whole `berth exec` processes, locally and with
//! `--server nats://...`, in the same run. Prints the medians and the
//! ratios; the goal is a NATS API median of at most 2 ms.
//!
//! `cargo bench -p berth --bench nats_exec` (a release build; it needs the
//! nats-server of `scripts/prepare`); `BERTH_BENCH_ITERATIONS` sets the
//! iterations of each (default 200).
#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly on any error")]

mod support;

use berth_core::ExecRequest;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{median, ok};
use tokio_util::sync::CancellationToken;

const WARM_UP: usize = 10;
const GOAL: Duration = Duration::from_millis(2);
const TOKEN: &str = "bench-token-0123456789";

struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn timed<F: std::future::Future<Output = ()>>(
    iterations: usize,
    mut run: impl FnMut() -> F,
) -> Duration {
    for _ in 0..WARM_UP {
        run().await;
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let began = Instant::now();
        run().await;
        samples.push(began.elapsed());
    }
    median(samples)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let iterations: usize = std::env::var("BERTH_BENCH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
        .max(1);
    let nats = berth_testkit::NatsServer::start();
    let scratch = tempfile::tempdir().unwrap();
    let berth = |home: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
        command
            .env("BERTH_HOME", scratch.path().join(home))
            .env_remove("BERTH_RUNTIME")
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_NATS_URL");
        command
    };
    let spec = scratch.path().join("spec.toml");
    std::fs::write(&spec, "runtime = \"sandbox\"\nimage = \"host\"\n").unwrap();
    let spec = spec.to_str().unwrap();

    let addr = format!("127.0.0.1:{}", berth_testkit::free_port());
    let _server = Serving(
        berth("server")
            .args(["serve", "-s", "http,nats", "--nats", &nats.url()])
            .args(["--listen", &addr, "--token", TOKEN])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let over_nats = |args: &[&str]| {
        let mut command = berth("client");
        command.args(["--server", &nats.url()]).args(args);
        command
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !over_nats(&["ls"]).output().unwrap().status.success() {
        assert!(Instant::now() < deadline, "berth serve never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let up = ok(over_nats(&["up", spec]).stderr(Stdio::null()));
    let id = up.lines().last().unwrap().to_owned();
    let local_up = ok(berth("local").args(["up", spec]).stderr(Stdio::null()));
    let local_id = local_up.lines().last().unwrap().to_owned();

    let nats_client = berth_nats_api::NatsClient::new(
        berth_nats::async_nats::connect(nats.url()).await.unwrap(),
        berth_nats_api::DEFAULT_PREFIX,
        &nats.url(),
    );
    let http_client =
        berth_client::Client::new(&format!("http://{addr}"), Some(TOKEN.into())).unwrap();
    let request: ExecRequest =
        serde_json::from_value(serde_json::json!({ "command": ["true"] })).unwrap();

    let nats_api = timed(iterations, || async {
        let mut events = nats_client
            .exec(&id, &request, CancellationToken::new())
            .await
            .unwrap();
        let done = berth_core::output::collect(&mut events).await.unwrap();
        assert_eq!(done.exit.code, Some(0));
    })
    .await;
    let http_api = timed(iterations, || async {
        let mut events = http_client
            .exec(&id, &request, CancellationToken::new())
            .await
            .unwrap();
        let done = berth_core::output::collect(&mut events).await.unwrap();
        assert_eq!(done.exit.code, Some(0));
    })
    .await;
    let cli_nats = timed(iterations, || async {
        let status = over_nats(&["exec", &id, "--", "true"]).status().unwrap();
        assert!(status.success());
    })
    .await;
    let cli_local = timed(iterations, || async {
        let status = berth("local")
            .args(["exec", &local_id, "--", "true"])
            .status()
            .unwrap();
        assert!(status.success());
    })
    .await;

    let _ = over_nats(&["rm", &id]).stdout(Stdio::null()).status();
    let _ = berth("local")
        .args(["rm", &local_id])
        .stdout(Stdio::null())
        .status();

    println!("exec true, median over {iterations}:");
    println!("  NATS API (client in process):  {:.2} ms", ms(nats_api));
    println!("  HTTP API (client in process):  {:.2} ms", ms(http_api));
    println!("  berth --server nats:// exec:   {:.2} ms", ms(cli_nats));
    println!("  berth exec (local provider):   {:.2} ms", ms(cli_local));
    println!(
        "ratios: NATS/HTTP {:.2}, NATS/local CLI {:.2}; goal: NATS API at most {} ms: {}",
        nats_api.as_secs_f64() / http_api.as_secs_f64(),
        nats_api.as_secs_f64() / cli_local.as_secs_f64(),
        GOAL.as_millis(),
        if nats_api <= GOAL { "met" } else { "missed" }
    );
}
