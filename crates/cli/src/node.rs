//! `berth node`: runs this host's provider as a node of a NATS cluster. It
//! registers what it offers (runtimes, architecture, slots and load, the
//! provisioning cache keys it holds) under a TTL refreshed by its
//! heartbeat, runs job tasks pulled from the cluster's work queue, and
//! withdraws on SIGTERM or Ctrl-C. `berth nodes` lists the live nodes.

use crate::backend::Backend;
use crate::job::RunnerSettings;
use anyhow::{Context, Result, bail};
use berth_cluster::{Membership, NodeInfo, NodeQueue, QueueSettings};
use berth_core::{Clock, SystemClock};
use berth_jobs::{Jobs, Runner, RunnerConfig};
use berth_nats::NatsOptions;
use berth_provider::Provider;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a claim waits for a task before the runner looks around.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct NodeArgs {
    /// The cluster's NATS server: `nats://HOST:PORT`.
    #[arg(long, env = "BERTH_NATS_URL")]
    nats: String,
    /// The node's name (letters, digits, `-`, `_`); the host's name by
    /// default.
    #[arg(long)]
    name: Option<String>,
    /// Tasks at once.
    #[arg(long, default_value_t = 8)]
    slots: usize,
    /// Seconds the node's record lives without a heartbeat; it is
    /// refreshed three times within it.
    #[arg(long, default_value_t = 15)]
    ttl: u64,
    /// The runtimes the node offers, of those that work here
    /// (comma-separated); every one that works by default.
    #[arg(long, value_delimiter = ',')]
    pub runtimes: Option<Vec<String>>,
    /// Workspaces a controller places here at most; no limit by default.
    #[arg(long)]
    capacity: Option<usize>,
}

#[derive(clap::Args)]
pub struct NodesArgs {
    /// The cluster's NATS server: `nats://HOST:PORT`; not needed with
    /// `--server http://…` of a `berth serve --nats`, which lists them.
    #[arg(long, env = "BERTH_NATS_URL")]
    nats: Option<String>,
    #[arg(long)]
    json: bool,
}

/// The work queue's settings from the job settings of the environment:
/// the stall period is the ack wait, the reset limit bounds deliveries.
pub fn queue_settings(settings: &RunnerSettings) -> QueueSettings {
    QueueSettings {
        ack_wait: settings.stall,
        max_resets: settings.resets,
    }
}

pub async fn node(provider: Provider, nats: &NatsOptions, args: NodeArgs) -> Result<ExitCode> {
    let name = args.name.unwrap_or_else(crate::job::host_name);
    let settings = RunnerSettings::from_env()?;
    let client = nats
        .connect(&args.nats, &format!("berth node {name}"))
        .await
        .with_context(|| format!("cannot join the cluster at {}", args.nats))?;
    let membership = Membership::join(client.clone(), &name, Duration::from_secs(args.ttl))
        .await
        .context("cannot register the node")?;
    // The API for the workspaces controllers place here.
    let api = berth_cluster::node_prefix(&nats.prefix, &name);
    let service = berth_nats_api::start(
        client.clone(),
        provider.clone(),
        berth_nats_api::ServiceConfig {
            prefix: api.clone(),
            ..berth_nats_api::ServiceConfig::default()
        },
    )
    .await?;
    let queue = Arc::new(
        NodeQueue::open(client, queue_settings(&settings), CLAIM_WAIT)
            .await
            .context("cannot open the cluster's work queue")?,
    );
    let store = Arc::new(berth_store::Store::open(provider.home())?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let jobs = Jobs::new(store.clone(), queue.clone(), clock.clone());
    let mut config = RunnerConfig::new(name.clone());
    config.slots = args.slots.max(1);
    config.heartbeat = settings.heartbeat;
    config.poll = Duration::from_millis(10);
    let runner = Runner::new(provider.clone(), jobs, config);

    let runtimes = provider
        .runtimes()
        .await
        .into_iter()
        .filter(|r| r.available)
        .map(|r| r.name)
        .collect();
    let mut info = NodeInfo {
        name: name.clone(),
        arch: std::env::consts::ARCH.into(),
        runtimes,
        slots: args.slots.max(1),
        running: 0,
        cache_keys: Vec::new(),
        api: Some(api),
        capacity: args.capacity,
        started_at: clock.now_ms(),
        heartbeat_at: 0,
    };
    let refresh = |info: &mut NodeInfo| {
        info.running = queue.load();
        info.heartbeat_at = clock.now_ms();
        match store.cache_entries() {
            Ok(entries) => info.cache_keys = entries.into_iter().map(|e| e.key).collect(),
            Err(e) => tracing::warn!(error = %e, "cannot list the provisioning cache"),
        }
    };
    refresh(&mut info);
    membership.beat(&info).await?;
    eprintln!(
        "berth node {name}: joined {}, running up to {} tasks",
        args.nats, info.slots
    );

    let shutdown = CancellationToken::new();
    let api = tokio::spawn(service.run(shutdown.clone()));
    let serving = {
        let (runner, shutdown) = (runner.clone(), shutdown.clone());
        tokio::spawn(async move { runner.serve(shutdown).await })
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let mut beat = tokio::time::interval(membership.ttl() / 3);
    beat.tick().await;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = beat.tick() => {
                refresh(&mut info);
                if let Err(e) = membership.beat(&info).await {
                    tracing::warn!(error = %e, "cannot refresh the node's record");
                }
            }
        }
    }
    shutdown.cancel();
    let _ = serving.await;
    api.await??;
    // Tasks still held go to other nodes at once rather than after the
    // ack wait.
    queue.release_all().await;
    membership
        .leave()
        .await
        .context("cannot withdraw the node")?;
    eprintln!("berth node {name}: left");
    Ok(ExitCode::SUCCESS)
}

/// Lists the cluster's nodes: those the server of `--server` (HTTP or NATS)
/// reports, else those of the NATS server of `--nats`.
pub async fn nodes(backend: &Backend, nats: &NatsOptions, args: NodesArgs) -> Result<ExitCode> {
    let nodes = match (backend, &args.nats) {
        (Backend::Remote(client), _) => client.nodes().await?.with_context(|| {
            format!(
                "{} serves no cluster (one started with `berth serve --nats URL` does)",
                client.server()
            )
        })?,
        (Backend::Nats(client), _) => client.nodes().await?.with_context(|| {
            format!(
                "the berth service at {} serves no cluster (one started with `berth serve \
                 --nats URL` does)",
                client.server()
            )
        })?,
        (_, Some(url)) => {
            let client = nats
                .connect(url, "berth nodes")
                .await
                .with_context(|| format!("cannot reach the cluster at {url}"))?;
            berth_cluster::nodes::list(client).await?
        }
        (_, None) => bail!(
            "give the cluster's NATS server with --nats nats://HOST:PORT (or BERTH_NATS_URL), \
             or its berth server with --server http://HOST:PORT"
        ),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &nodes)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemClock.now_ms();
    writeln!(
        out,
        "{:<20} {:<8} {:<20} {:>5} {:>7} {:>5}  HEARTBEAT",
        "NODE", "ARCH", "RUNTIMES", "SLOTS", "RUNNING", "CACHE"
    )?;
    for node in nodes {
        let age = (now - node.heartbeat_at).max(0) as f64 / 1000.0;
        writeln!(
            out,
            "{:<20} {:<8} {:<20} {:>5} {:>7} {:>5}  {age:.1}s ago",
            node.name,
            node.arch,
            node.runtimes.join(","),
            node.slots,
            node.running,
            node.cache_keys.len()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
