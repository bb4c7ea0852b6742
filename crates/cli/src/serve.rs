//! `berth serve`, and berth standing in for Derrick: started under the
//! name `derrick` (a link on `PATH`), berth reads Derrick's command line
//! (`derrick -p docker -w config.json -s http`) and serves Derrick's routes
//! on Derrick's address from Derrick's workspace config, so that Derrick's
//! clients run unchanged.

use anyhow::{Context, Result, bail};
use berth_core::Spec;
use berth_provider::Provider;
use clap::Parser;
use clap::builder::BoolishValueParser;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How often a controller looks for due tasks to hand to the cluster.
const DISPATCH_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Job tasks the server's workers run at once.
const JOB_SLOTS: usize = 8;

/// How often the server looks for scheduled times that came.
const SCHEDULE_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// The program name under which berth stands in for Derrick.
pub const DERRICK: &str = "derrick";

/// Derrick's provisioning mode for workspaces made on other hosts: berth
/// serves as the cluster's controller (`--remote`).
const REMOTE_NATS: &str = "remote_nats";

/// Where Derrick listened, and berth does for a Derrick config.
const DERRICK_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50080);

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; loopback by default (127.0.0.1:7433, or
    /// Derrick's 127.0.0.1:50080 with a Derrick config).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Listen on a unix socket instead of TCP.
    #[arg(long, conflicts_with = "listen")]
    socket: Option<PathBuf>,
    /// Bearer token demanded on TCP; generated and stored on first start.
    #[arg(long, env = "BERTH_TOKEN")]
    token: Option<String>,
    /// Accept requests without a token. Only allowed on a loopback address,
    /// and then only for requests addressed to it or to a loopback name.
    #[arg(long, env = "BERTH_INSECURE_NO_AUTH", value_parser = BoolishValueParser::new())]
    insecure_no_auth: bool,
    /// The runtime for workspaces whose spec names none (Derrick's flag);
    /// overrides BERTH_RUNTIME and the configuration file's `runtime`.
    /// `remote_nats` (with --nats) is --remote: workspaces are made on the
    /// cluster's nodes, in the runtime the spec, BERTH_RUNTIME or the
    /// configuration file names.
    #[arg(short = 'p', long = "provisioning-mode")]
    provisioning_mode: Option<String>,
    /// Front ends: `http`, `nats` or `http,nats` (Derrick's flag). With
    /// --nats the API is served over NATS too; `nats` alone serves no HTTP.
    #[arg(short = 's', long = "server-mode", default_value = "http")]
    server_mode: String,
    /// A Derrick workspace config, the spec of workspaces Derrick's routes
    /// make (Derrick's flag). Read as Derrick reads it: fields berth does
    /// not know are ignored, repository paths are in the workspace's
    /// filesystem.
    #[arg(short = 'w', long = "workspace-config-path")]
    workspace_config_path: Option<PathBuf>,
    /// The image for a config that names none: needed by `docker`; the
    /// sandbox uses the host's system directories without it.
    #[arg(long, env = "BERTH_IMAGE")]
    image: Option<String>,
    /// Serve the API over the NATS server at this URL (`nats://HOST:PORT`,
    /// under --nats-prefix), and run job tasks on the nodes of its cluster
    /// instead of inside the server.
    #[arg(long, env = "BERTH_NATS_URL")]
    nats: Option<String>,
    /// With --nats: serve the API (over NATS, and HTTP's workspace routes)
    /// as the cluster's controller, each workspace placed on a node and
    /// every request about it forwarded there, rather than from this
    /// host's provider.
    #[arg(long, requires = "nats")]
    remote: bool,
    /// Started as `derrick`: Derrick's clients send no token.
    #[arg(skip)]
    derrick: bool,
}

/// berth started as `derrick`: Derrick's command line, with berth's own
/// few additions.
#[derive(Parser)]
#[command(
    name = "derrick",
    version,
    about = "berth standing in for Derrick: serves Derrick's HTTP routes from a Derrick \
             workspace config"
)]
pub struct DerrickCli {
    /// berth's state directory (registry, caches, workspaces).
    #[arg(long, env = "BERTH_HOME")]
    pub home: Option<PathBuf>,
    /// The runtime: `docker`, `sandbox` or `local`; or `remote_nats` (with
    /// --nats URL), workspaces made on the nodes of that cluster.
    #[arg(short = 'p', long)]
    provisioning_mode: String,
    /// Derrick's workspace config.
    #[arg(short = 'w', long)]
    workspace_config_path: PathBuf,
    /// The server mode: `http`, `nats` (with --nats URL) or `http,nats`.
    #[arg(short = 's', long)]
    server_mode: String,
    /// The NATS server to serve the API through, for `-s nats`, and the
    /// cluster for `-p remote_nats`.
    #[arg(long, env = "BERTH_NATS_URL", value_name = "URL")]
    nats: Option<String>,
    /// The image for a config that names none: needed by `docker`; the
    /// sandbox uses the host's system directories without it.
    #[arg(long, env = "BERTH_IMAGE")]
    image: Option<String>,
    /// Serve without a token (on loopback only), as Derrick did: its
    /// clients send none. Required: berth never drops its token unasked.
    #[arg(long, env = "BERTH_INSECURE_NO_AUTH", value_parser = BoolishValueParser::new())]
    insecure_no_auth: bool,
    /// Address to listen on.
    #[arg(long, default_value_t = DERRICK_LISTEN)]
    listen: SocketAddr,
}

impl DerrickCli {
    /// Whether this process was started under Derrick's name.
    pub fn invoked() -> bool {
        std::env::args_os()
            .next()
            .is_some_and(|arg0| Path::new(&arg0).file_name() == Some(DERRICK.as_ref()))
    }

    /// What `berth serve` is given to do the same.
    pub fn into_serve(self) -> ServeArgs {
        ServeArgs {
            listen: Some(self.listen),
            socket: None,
            token: None,
            insecure_no_auth: self.insecure_no_auth,
            provisioning_mode: Some(self.provisioning_mode),
            server_mode: self.server_mode,
            workspace_config_path: Some(self.workspace_config_path),
            image: self.image,
            nats: self.nats,
            remote: false,
            derrick: true,
        }
    }
}

impl ServeArgs {
    /// Whether to serve HTTP, and the NATS server to serve the API through
    /// if any.
    fn front_ends(&self) -> Result<(bool, Option<String>)> {
        let mode = self.server_mode.as_str();
        let (mut http, mut nats) = (false, false);
        for front_end in mode.split(',').map(str::trim) {
            match front_end {
                "http" => http = true,
                "nats" => nats = true,
                other => bail!(
                    "--server-mode: `{other}` is not a server mode; expected `http`, `nats` \
                     or `http,nats`"
                ),
            }
        }
        match self.nats.as_deref() {
            None if nats => bail!(
                "--server-mode {mode}: give the NATS server to serve through with --nats \
                 nats://HOST:PORT (or BERTH_NATS_URL)"
            ),
            url => Ok((http, url.map(str::to_owned))),
        }
    }

    /// The runtime for workspaces whose spec names none.
    pub fn default_runtime(&self) -> Option<String> {
        self.provisioning_mode
            .clone()
            .filter(|r| !r.is_empty() && r != REMOTE_NATS)
    }

    /// Whether this server is the cluster's controller: `--remote`, or
    /// Derrick's `-p remote_nats`.
    fn remote(&self) -> Result<bool> {
        let remote_nats = self.provisioning_mode.as_deref() == Some(REMOTE_NATS);
        if remote_nats && self.nats.is_none() {
            bail!(
                "--provisioning-mode {REMOTE_NATS}: give the cluster's NATS server with --nats \
                 nats://HOST:PORT (or BERTH_NATS_URL); its nodes (`berth node`) make the \
                 workspaces"
            );
        }
        Ok(self.remote || remote_nats)
    }
}

pub async fn serve(
    provider: Provider,
    args: ServeArgs,
    nats: &berth_nats::NatsOptions,
) -> Result<()> {
    let (http, nats_url) = args.front_ends()?;
    let remote = args.remote()?;
    if http && args.derrick && !args.insecure_no_auth {
        bail!(
            "Derrick's clients send no token: serve them without one (on loopback only) by \
             setting BERTH_INSECURE_NO_AUTH=1 or adding --insecure-no-auth"
        );
    }
    let default_spec = match &args.workspace_config_path {
        Some(path) => Some(derrick_spec(&provider, path, &args, remote).await?),
        None => None,
    };
    let listen = match (&args.socket, args.listen) {
        (Some(path), _) => berth_server::Listen::Unix(path.clone()),
        (None, Some(addr)) => berth_server::Listen::Tcp(addr),
        (None, None) if default_spec.is_some() => berth_server::Listen::Tcp(DERRICK_LISTEN),
        (None, None) => berth_server::Listen::default(),
    };
    // The workers: tasks of batch jobs run inside the server too, and
    // scheduled jobs start their runs here.
    let (local_jobs, runner) = crate::job::open(&provider, JOB_SLOTS)?;
    // With --nats, the job tasks run on the cluster's nodes, which the
    // dashboard lists.
    let cluster = match &args.nats {
        Some(url) => Some((
            url,
            nats.connect(url, "berth serve")
                .await
                .with_context(|| format!("cannot reach the cluster at {url}"))?,
        )),
        None => None,
    };
    let controller = match &cluster {
        Some((_, client)) => Some(controller(&provider, client.clone()).await?),
        None => None,
    };
    // With a cluster, runs are the cluster's: started, cancelled and
    // retried through its events stream, which every controller folds.
    let jobs = match &controller {
        Some(controller) => berth_jobs::Jobs::new(
            controller.store(),
            std::sync::Arc::new(berth_cluster::RunQueue::new(controller.clone())),
            controller.clock(),
        ),
        None => local_jobs,
    };
    let directory = match &cluster {
        Some((_, client)) => Some(std::sync::Arc::new(
            berth_cluster::Directory::open(client.clone())
                .await
                .context("cannot read the cluster's nodes")?,
        )
            as std::sync::Arc<dyn berth_server::cluster::NodeDirectory>),
        None => None,
    };
    // A controller's HTTP routes call its own NATS API, where the
    // workspaces are placed.
    let workspaces = match &cluster {
        Some((url, client)) if remote => {
            Some(
                std::sync::Arc::new(berth_cluster::Front::new(client.clone(), &nats.prefix, url))
                    as std::sync::Arc<dyn berth_server::workspaces::Workspaces>,
            )
        }
        _ => None,
    };
    // How to log in, told with the dashboard's address once it listens.
    let login = match (&args.token, args.insecure_no_auth) {
        (_, true) => "no login (--insecure-no-auth)".to_owned(),
        (Some(_), false) => "log in with the token given to --token (BERTH_TOKEN)".to_owned(),
        (None, false) => format!(
            "log in with the token in {}",
            provider.home().join(berth_server::TOKEN_FILE).display()
        ),
    };
    let config = berth_server::ServerConfig {
        listen,
        token: args.token,
        insecure_no_auth: args.insecure_no_auth,
        default_spec,
        jobs: Some(jobs.clone()),
        cluster: directory.clone(),
        workspaces,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let workers = match (controller, &args.nats) {
        (Some(controller), Some(url)) => {
            eprintln!("berth serve: job tasks run on the nodes of {url}");
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = controller.serve(shutdown).await {
                    eprintln!("berth serve: the cluster's work queue stopped: {e}");
                }
            })
        }
        _ => {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { runner.serve(shutdown).await })
        }
    };
    let scheduler = {
        let shutdown = shutdown.clone();
        let scheduler = berth_jobs::Scheduler::new(jobs.clone());
        tokio::spawn(async move { scheduler.serve(SCHEDULE_TICK, shutdown).await })
    };
    let api = match nats_url {
        Some(url) => {
            let connection = nats
                .connect(&url, "berth serve")
                .await
                .context("cannot serve the API through NATS")?;
            let config = berth_nats_api::ServiceConfig {
                prefix: nats.prefix.clone(),
                ..berth_nats_api::ServiceConfig::default()
            };
            let service = if remote {
                let router = berth_cluster::Router::open(
                    connection.clone(),
                    &nats.prefix,
                    &berth_nats::redacted(&url),
                    provider.default_runtime().map(str::to_owned),
                )
                .await
                .context("cannot open the cluster's registry of workspaces")?;
                eprintln!("berth serve: workspaces are placed on the nodes of the cluster");
                let api = api(router, &jobs, &provider, directory.as_ref());
                berth_nats_api::start(connection, api, config).await?
            } else {
                let api = api(provider.clone(), &jobs, &provider, directory.as_ref());
                berth_nats_api::start(connection, api, config).await?
            };
            eprintln!(
                "berth serve: the API is served through NATS at {} under {}",
                berth_nats::redacted(&url),
                nats.prefix
            );
            Some(tokio::spawn(service.run(shutdown.clone())))
        }
        None => None,
    };
    let served = if http {
        match berth_server::bind(provider, config).await {
            Ok(server) => {
                if let Some(addr) = server.local_addr() {
                    eprintln!("berth serve: the dashboard is at http://{addr}/; {login}");
                }
                server.run().await
            }
            Err(e) => Err(e),
        }
    } else {
        // The workspaces' deadlines are applied while the server runs.
        let reaper = tokio::spawn(provider.reap_forever());
        berth_server::shutdown_signal().await;
        reaper.abort();
        Ok(())
    };
    shutdown.cancel();
    let _ = workers.await;
    let _ = scheduler.await;
    if let Some(api) = api {
        api.await??;
    }
    served?;
    Ok(())
}

/// The NATS API: the workspaces' operations answered by `workspaces`
/// (this host's provider, or the cluster's router); jobs, and the
/// cluster's nodes, this server's own either way.
fn api<H: berth_nats_api::Handler>(
    workspaces: H,
    jobs: &berth_jobs::Jobs,
    provider: &Provider,
    directory: Option<&std::sync::Arc<dyn berth_server::cluster::NodeDirectory>>,
) -> berth_nats_api::Api<H> {
    let api = berth_nats_api::Api::new(workspaces).with_jobs(jobs.clone(), provider.clone());
    match directory {
        Some(directory) => api.with_nodes(directory.clone()),
        None => api,
    }
}

/// The controller of the cluster's job queue: hands this registry's due
/// tasks to the nodes and records what they report.
async fn controller(
    provider: &Provider,
    client: berth_nats::async_nats::Client,
) -> Result<berth_cluster::Controller> {
    let settings = crate::job::RunnerSettings::from_env()?;
    let store = std::sync::Arc::new(berth_store::Store::open(provider.home())?);
    berth_cluster::Controller::open(
        client,
        store,
        std::sync::Arc::new(berth_core::SystemClock),
        crate::node::queue_settings(&settings),
        DISPATCH_POLL,
    )
    .await
    .context("cannot open the cluster's work queue")
}

/// The spec of a Derrick config, with the runtime and image of the command
/// line where it names none, checked before anything is served: the
/// runtime must work here (on a controller, the nodes have their say when
/// a workspace is placed) and `docker` needs an image.
async fn derrick_spec(
    provider: &Provider,
    path: &Path,
    args: &ServeArgs,
    remote: bool,
) -> Result<Spec> {
    let config = Spec::from_derrick_file(path)?;
    if !config.ignored.is_empty() {
        eprintln!(
            "berth: {}: ignoring what berth does not read: {}",
            path.display(),
            config.ignored.join(", ")
        );
    }
    let mut spec = config.spec;
    if spec.runtime.is_none() {
        spec.runtime = provider.default_runtime().map(str::to_owned);
    }
    if spec.image.is_none() {
        spec.image = args.image.clone();
    }
    let Some(runtime) = spec.runtime.clone() else {
        if remote {
            bail!(
                "--provisioning-mode {REMOTE_NATS}: {} names no runtime for the nodes to make \
                 workspaces in; give one with BERTH_RUNTIME or `runtime` in berth's \
                 configuration file: docker, sandbox or local",
                path.display()
            );
        }
        bail!(
            "--provisioning-mode: {} names no runtime; give one: docker, sandbox or local",
            path.display()
        );
    };
    if !remote {
        let runtimes = provider.runtimes().await;
        match runtimes.iter().find(|r| r.name == runtime) {
            None => {
                let names: Vec<&str> = runtimes.iter().map(|r| r.name.as_str()).collect();
                bail!(
                    "--provisioning-mode: no runtime `{runtime}`; this berth has {}",
                    names.join(", ")
                );
            }
            Some(status) if !status.available => bail!(
                "--provisioning-mode {runtime}: the runtime is unavailable: {}",
                status.reason.as_deref().unwrap_or("no reason given")
            ),
            Some(_) => {}
        }
    }
    if runtime == "docker" && spec.image.is_none() {
        bail!(
            "--provisioning-mode docker: {} names no image; give one with --image IMAGE or \
             the BERTH_IMAGE variable: a local image with what the setup script and the \
             commands use (bash, git)",
            path.display()
        );
    }
    Ok(spec)
}
